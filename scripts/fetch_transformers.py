"""Install the other supported transformers release beside the one in use, for
tests/test_transformers_versions.py (CI runs this from .ci/run).

The project supports transformers 5.24 and 5.25 (``transformers>=5.24,<5.26``). Whichever
is installed, this puts the other one, without its dependencies (both releases share
them), into a cache folder outside the repository; the test runs the family tests with
that folder first on ``PYTHONPATH``:

    python scripts/fetch_transformers.py [--cache DIR]

The folder is ``$EXPLORER_ALT_TRANSFORMERS``, else
``~/.cache/sparse-safety-explorer/transformers-<version>``. Prints one line; exits 0 when
the folder is ready, 1 when pip could not install it (the test then skips).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

#: The supported releases, oldest first: the pins in requirements.txt and pyproject.toml.
SUPPORTED = ("5.24.0", "5.25.0")
DEFAULT_CACHE = Path("~/.cache/sparse-safety-explorer")


def installed_version() -> str:
    from importlib.metadata import version
    return version("transformers")


def other_version(current: str | None = None) -> str:
    """The supported release whose minor version differs from ``current`` (default: the
    installed one): 5.25.0 beside 5.24.x, 5.24.0 beside 5.25.x."""
    current = current or installed_version()
    minor = ".".join(current.split(".")[:2])
    return next(v for v in reversed(SUPPORTED) if not v.startswith(minor + "."))


def cache_dir(cache: str | os.PathLike | None = None, version: str | None = None) -> Path:
    """The folder for ``version`` (default: :func:`other_version`): ``cache``, else
    ``$EXPLORER_ALT_TRANSFORMERS``, else the default under ``~/.cache``."""
    given = cache or os.environ.get("EXPLORER_ALT_TRANSFORMERS")
    if given:
        return Path(given).expanduser()
    return (DEFAULT_CACHE / f"transformers-{version or other_version()}").expanduser()


def ready(folder: Path, version: str) -> bool:
    """Whether ``folder`` holds transformers ``version``."""
    return any(folder.glob(f"transformers-{version}.dist-info"))


def fetch(cache: str | os.PathLike | None = None) -> tuple[bool, str]:
    version = other_version()
    folder = cache_dir(cache, version)
    if ready(folder, version):
        return True, f"transformers {version}: cached in {folder}"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade",
           "--target", str(folder), f"transformers=={version}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not ready(folder, version):
        last = (done.stderr or done.stdout).strip().splitlines()
        why = last[-1] if last else "pip failed"
        return False, f"transformers {version}: not installed ({why})"
    return True, f"transformers {version}: installed in {folder}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", help="the folder (default: $EXPLORER_ALT_TRANSFORMERS or "
                                    f"{DEFAULT_CACHE}/transformers-<version>)")
    ok, line = fetch(ap.parse_args().cache)
    print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
