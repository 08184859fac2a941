"""Where the project's files are: the bundled assets and the benchmark data folder.

The assets (the demo model and the tour) ship inside the package when it is installed
(``explorer/assets``) and beside it in a checkout (``assets/``); both layouts work.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
CHECKOUT_DIR = PACKAGE_DIR.parent


def assets_dir() -> Path:
    """The bundled assets: ``explorer/assets`` in an installed package, else the
    checkout's ``assets/``."""
    installed = PACKAGE_DIR / "assets"
    return installed if installed.is_dir() else CHECKOUT_DIR / "assets"


ASSETS_DIR = assets_dir()
DEMO_MODEL_DIR = ASSETS_DIR / "demo-model"
TOUR_DIR = ASSETS_DIR / "tour"


def shared_data_dir(override: str | os.PathLike | None = None) -> Path | None:
    """The benchmark CSV folder: ``override`` when given (the ``EXPLORER_SHARED_DATA``
    setting), else ``../shared/data`` next to a checkout; None when it does not exist."""
    cands = ([Path(override)] if override else []) + [CHECKOUT_DIR.parent / "shared" / "data",
                                                      CHECKOUT_DIR / "shared" / "data"]
    return next((c for c in cands if c.is_dir()), None)
