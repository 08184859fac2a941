"""The teaching walkthrough (notebooks/walkthrough.ipynb) runs end to end on the demo model.

Executed with nbclient in a ``python3`` kernel whose working directory is the repository
root, with one torch thread (``EXPLORER_THREADS`` and ``OMP_NUM_THREADS`` are set from
``$EXPLORER_TEST_THREADS``, default 1, as in conftest.py) and at most ``CELL_TIMEOUT``
seconds per cell. Skips cleanly when the demo model's weights or nbformat / nbclient /
ipykernel are missing. The committed notebook must carry no outputs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "walkthrough.ipynb"
WEIGHTS = ROOT / "assets" / "demo-model" / "model.safetensors"
CELL_TIMEOUT = 300
PLOTLY_MIME = "application/vnd.plotly.v1+json"


def _outputs(nb, output_type: str | None = None):
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            if output_type is None or out.get("output_type") == output_type:
                yield out


def _text(out) -> str:
    if out.get("output_type") == "stream":
        return out.get("text", "")
    return str(out.get("data", {}).get("text/plain", ""))


def _is_plotly(out) -> bool:
    data = out.get("data", {})
    return PLOTLY_MIME in data or "plotly" in str(data.get("text/html", "")).lower()


def test_committed_notebook_has_no_outputs():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the walkthrough has no code cells"
    for i, cell in enumerate(code):
        assert cell.get("outputs") == [], f"code cell {i} was committed with outputs"
        assert cell.get("execution_count") is None, f"code cell {i} has an execution count"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


def test_walkthrough_executes(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    if not WEIGHTS.exists():
        pytest.skip("demo model weights (assets/demo-model/model.safetensors) are missing")

    # the kernel inherits this process's environment: one thread, library importable
    threads = os.environ.get("EXPLORER_TEST_THREADS", "1")  # as conftest.py: default 1
    monkeypatch.setenv("EXPLORER_THREADS", threads)
    monkeypatch.setenv("OMP_NUM_THREADS", threads)
    monkeypatch.setenv("MKL_NUM_THREADS", threads)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", allow_errors=False,
        resources={"metadata": {"path": str(ROOT)}})
    start = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as exc:  # show the failing cell's error
        pytest.fail(f"the walkthrough failed:\n{str(exc)[-3000:]}")
    seconds = time.perf_counter() - start
    print(f"\nwalkthrough executed in {seconds:.1f}s")

    errors = list(_outputs(nb, "error"))
    assert not errors, [f"{e.get('ename')}: {e.get('evalue')}" for e in errors]
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        assert cell.get("execution_count") is not None, f"code cell {i} did not run"

    figures = [o for o in _outputs(nb) if _is_plotly(o)]
    assert len(figures) >= 4, f"expected plotly figures (routing, RoSais, search, changes), got {len(figures)}"

    text = "\n".join(_text(o) for o in _outputs(nb))
    assert "F-SOUR result: success=" in text
    assert "routers by importance" in text
    assert "candidate passes" in text  # F-SOUR progress lines were printed
    assert "walkthrough finished" in text
