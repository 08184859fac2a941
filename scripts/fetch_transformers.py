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


def missing_requirements(folder: Path, version: str) -> list[str]:
    """The requirements of transformers ``version`` in ``folder`` (its own, not its extras')
    that neither this environment nor ``folder`` satisfies (5.25 needs ``kernels``, which
    5.24 does not)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    from packaging.requirements import Requirement
    meta = next(folder.glob(f"transformers-{version}.dist-info"), None)
    if meta is None:
        return []
    out = []
    for line in (meta / "METADATA").read_text(encoding="utf-8").splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is not None and "extra" in str(req.marker):
            continue
        names = [p.name[:-len(".dist-info")].split("-") for p in folder.glob("*.dist-info")]
        have = [n[1] for n in names
                if len(n) > 1 and n[0].lower().replace("_", "-") == req.name.lower()]
        try:
            have.append(installed(req.name))
        except PackageNotFoundError:
            pass
        if not any(req.specifier.contains(v, prereleases=True) for v in have):
            out.append(str(req))
    return out


def fetch(cache: str | os.PathLike | None = None) -> tuple[bool, str]:
    version = other_version()
    folder = cache_dir(cache, version)
    if ready(folder, version) and not missing_requirements(folder, version):
        return True, f"transformers {version}: cached in {folder}"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade",
           "--target", str(folder)]
    done = subprocess.run(pip + [f"transformers=={version}"], capture_output=True, text=True)
    extra = missing_requirements(folder, version) if done.returncode == 0 else []
    if extra:  # its own requirements this environment lacks, beside it
        done = subprocess.run(pip + extra, capture_output=True, text=True)
    if done.returncode != 0 or not ready(folder, version) or \
            missing_requirements(folder, version):
        last = (done.stderr or done.stdout).strip().splitlines()
        why = last[-1] if last else "pip failed"
        return False, f"transformers {version}: not installed ({why})"
    return True, f"transformers {version}: installed in {folder}" + \
        (f" with {', '.join(extra)}" if extra else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", help="the folder (default: $EXPLORER_ALT_TRANSFORMERS or "
                                    f"{DEFAULT_CACHE}/transformers-<version>)")
    ok, line = fetch(ap.parse_args().cache)
    print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
