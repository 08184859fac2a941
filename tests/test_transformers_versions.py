"""The other supported transformers release: the family tests (every family's router
recognised, recorded, forced and masked) and the chat-template tests, run in a
subprocess with that release first on PYTHONPATH.

``python scripts/fetch_transformers.py`` (CI's .ci/run runs it) installs it into a cache
folder; without it this test skips and says how to get it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
from conftest import ROOT

#: What runs on the other release: routers of all families, and real chat templates
#: (those skip there too when the tokenizers are not fetched).
SUBSET = ["tests/test_families.py", "tests/test_real_templates.py", "-k",
          "recorded or forced or masked or batched or prefix_cache or template or thinking"
          " or system or end_of_turn"]


def _fetcher():
    spec = importlib.util.spec_from_file_location(
        "fetch_transformers", ROOT / "scripts" / "fetch_transformers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_family_and_template_tests_pass_on_the_other_transformers_release():
    fetch = _fetcher()
    version = fetch.other_version()
    folder = fetch.cache_dir(version=version)
    if not fetch.ready(folder, version):
        pytest.skip(f"transformers {version} is not in {folder}: run "
                    f"python scripts/fetch_transformers.py")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(folder), *filter(None, [os.environ.get("PYTHONPATH")])]))
    seen = subprocess.run([sys.executable, "-c", "import transformers; "
                           "print(transformers.__version__)"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert seen.stdout.strip() == version, seen.stderr[-2000:]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          *SUBSET], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
    tail = (run.stdout + run.stderr)[-3000:]
    assert run.returncode == 0, tail
    assert " passed" in tail and " failed" not in tail, tail


def test_the_other_release_is_the_other_minor_version(tmp_path, monkeypatch):
    fetch = _fetcher()
    assert fetch.other_version("5.24.0") == "5.25.0"
    assert fetch.other_version("5.25.1") == "5.24.0"
    monkeypatch.setenv("EXPLORER_ALT_TRANSFORMERS", str(tmp_path))
    assert fetch.cache_dir() == tmp_path and not fetch.ready(tmp_path, "5.25.0")
    monkeypatch.delenv("EXPLORER_ALT_TRANSFORMERS")
    assert fetch.cache_dir(version="5.25.0").name == "transformers-5.25.0"
