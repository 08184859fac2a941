"""Pre-quantized checkpoints (fine-grained FP8, MXFP4, compressed-tensors) loaded with
``load_model`` on CPU: dequantized to the values the format stores, recorded in the
provenance, and routed exactly as full-precision models are.

The checkpoints are tiny random models written here in each format
(tests/prequant_checkpoints.py); the reference for the loaded weights is a float
checkpoint of the same quantized values, expanded by our own code.
"""

from __future__ import annotations

import functools
import sys
import tempfile

import pytest
import torch
from prequant_checkpoints import save_compressed, save_fp8, save_mxfp4
from route_checks import check_route_control
from tiny_models import tiny_model

from explorer.core.errors import ModelLoadError
from explorer.core.model import load_model
from explorer.core.prequantized import Prequantized, checkpoint_format, plan_load

IDS = [5, 17, 33, 9, 64, 21, 40, 77, 12, 3]
FOUR = ["mixtral", "olmoe", "qwen3_moe", "deepseek_v3"]
CASES = ([("fp8", f) for f in FOUR] + [("compressed-tensors", f) for f in FOUR]
         + [("mxfp4", "gpt_oss")])
WRITERS = {"fp8": save_fp8, "compressed-tensors": save_compressed,
           "mxfp4": lambda family, path, **kw: save_mxfp4(path, **kw)}


def _needs(fmt):
    if fmt == "compressed-tensors":
        pytest.importorskip("compressed_tensors", reason="the compressed-tensors package "
                            "is not installed (pip install compressed-tensors)")


@functools.lru_cache(maxsize=None)
def _checkpoint(fmt: str, family: str, expanded: bool = False) -> str:
    path = tempfile.mkdtemp(prefix=f"explorer-{fmt}-{family}-")
    WRITERS[fmt](family, path, expanded=expanded)
    return path


@functools.lru_cache(maxsize=None)
def _loaded(fmt: str, family: str):
    return load_model(_checkpoint(fmt, family), device="cpu")


@pytest.fixture(params=CASES, ids=[f"{a}-{b}" for a, b in CASES])
def case(request):
    fmt, family = request.param
    _needs(fmt)
    return fmt, family, _loaded(fmt, family)


def test_loads_dequantized_to_the_stored_values_with_provenance(case):
    fmt, family, moe = case
    assert moe.info.quantization == fmt and moe.info.dequantized is True
    prov = moe.provenance()
    assert prov["quantization"] == fmt and prov["dequantized"] is True
    assert moe.info.to_dict()["dequantized"] is True
    assert {p.dtype for p in moe.model.parameters()} == {torch.float32}
    assert moe.model.config.model_type == family
    reference = load_model(_checkpoint(fmt, family, expanded=True), device="cpu")
    assert reference.info.quantization is None and "dequantized" not in reference.provenance()
    with torch.no_grad():
        got = moe.model(torch.tensor([IDS])).logits
        want = reference.model(torch.tensor([IDS])).logits
    assert torch.allclose(got, want, atol=1e-5, rtol=0), float((got - want).abs().max())
    with torch.no_grad():  # and the quantization was real: the full-precision model differs
        full = tiny_model(family, 0)[0](torch.tensor([IDS])).logits
    assert not torch.allclose(got, full, atol=1e-3, rtol=0)


def test_route_control_on_a_prequantized_checkpoint(case):
    check_route_control(case[2], IDS)


def test_plan_and_format_of_checkpoints():
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(_checkpoint("fp8", "mixtral"))
    assert checkpoint_format(cfg) == "fp8"
    plan = plan_load(cfg, "cpu", "m")
    assert plan.dequantize is True
    assert plan.kwargs["config"].quantization_config["dequantize"] is True
    assert "dequantize" not in cfg.quantization_config  # the caller's config is not changed
    # on a GPU, FP8 stays FP8 where transformers can run it; MXFP4 is always expanded
    assert plan_load(cfg, "cuda", "m").kwargs == {}
    mx = AutoConfig.from_pretrained(_checkpoint("mxfp4", "gpt_oss"))
    assert plan_load(mx, "cuda", "m").dequantize is True
    plain = AutoConfig.from_pretrained(_checkpoint("fp8", "mixtral", expanded=True))
    assert checkpoint_format(plain) is None and plan_load(plain, "cpu", "m").kwargs == {}
    p = Prequantized("fp8", True)
    assert Prequantized.from_dict(p.to_dict()) == p


def test_compressed_tensors_without_the_package_is_one_line(monkeypatch):
    _needs("compressed-tensors")
    path = _checkpoint("compressed-tensors", "olmoe")
    monkeypatch.setitem(sys.modules, "compressed_tensors", None)  # import fails
    with pytest.raises(ModelLoadError, match="pip install compressed-tensors") as err:
        load_model(path, device="cpu")
    assert "\n" not in str(err.value)
