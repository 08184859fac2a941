"""Packaging: pyproject.toml agrees with requirements.txt and with the package folders, and
a wheel built from the checkout works on its own, outside the checkout (library, bundled
demo model, the ``explorer`` console script)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
import tomllib
from importlib import metadata

import pytest

from conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _req(line: str) -> str:
    return re.sub(r"\s+", "", line.split("#")[0]).lower()


def test_requirements_txt_agrees_with_pyproject():
    project = PYPROJECT["project"]
    want = {_req(x) for x in project["dependencies"] + project["optional-dependencies"]["app"]}
    have = {_req(x) for x in (ROOT / "requirements.txt").read_text().splitlines()
            if _req(x) and not _req(x).startswith("-")}
    assert have == want
    dev = (ROOT / "requirements-dev.txt").read_text()
    assert "-r requirements.txt" in dev and "-e .[dev]" in dev


def test_every_package_folder_is_packaged():
    folders = {".".join(p.parent.relative_to(ROOT).parts)
               for p in (ROOT / "explorer").rglob("__init__.py")}
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert listed == folders | {"explorer.assets"}
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"explorer.assets": "assets"}


def test_installed_distribution_has_the_console_script():
    dist = metadata.distribution("sparse-safety-explorer")
    scripts = {e.name: e.value for e in dist.entry_points if e.group == "console_scripts"}
    assert scripts == {"explorer": "explorer.cli.main:run"}
    assert dist.version == __import__("explorer").__version__


CHILD = r"""
import json, sys
sys.path[:0] = [{target!r}]
sys.path += {site!r}
from importlib import metadata
import explorer
from explorer import DEMO_MODEL_DIR
assert explorer.__file__.startswith({target!r}), explorer.__file__
assert str(DEMO_MODEL_DIR).startswith({target!r}), DEMO_MODEL_DIR
(script,) = [e for e in metadata.distribution("sparse-safety-explorer").entry_points
             if e.name == "explorer"]
sys.argv = ["explorer", "trace", "--prompt", "hi", "--max-new-tokens", "2", "--json"]
script.load()()
"""


@pytest.mark.skipif(not (ROOT / "assets" / "demo-model" / "model.safetensors").exists(),
                    reason="the demo weights are not in this checkout")
def test_wheel_works_outside_the_checkout(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(wheels), str(ROOT)], check=True,
                   capture_output=True, cwd=tmp_path)
    (wheel,) = wheels.glob("sparse_safety_explorer-*.whl")
    import zipfile
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "explorer/assets/demo-model/model.safetensors" in names
    assert "explorer/assets/tour/route.json" in names
    assert "explorer/core/route.py" in names and "explorer/app/tabs/inspect.py" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", str(target), str(wheel)], check=True, capture_output=True)
    # `python -S`: no .pth files, so an editable install of this checkout cannot answer
    # for `explorer`; the dependencies come from this interpreter's site-packages.
    site = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    code = CHILD.format(target=str(target), site=site)
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    obj = json.loads(out.stdout)
    assert obj["model"] == "demo" and obj["tokens"] and len(obj["experts"]) == len(
        obj["moe_layers"])
