"""Models split by accelerate's ``device_map``: some decoder layers kept on the CPU, the
others offloaded to disk (their weights loaded into the layer for each call by
accelerate's hooks). Route control must see the routers of offloaded layers too."""

from __future__ import annotations

import functools
import tempfile

import pytest
import torch
from route_checks import check_route_control
from tiny_models import tiny_model

from explorer.core.errors import ModelLoadError
from explorer.core.model import load_model

IDS = [5, 17, 33, 9, 64, 21, 40, 77, 12, 3]
FAMILIES = ["mixtral", "deepseek_v3", "gpt_oss"]  # plain, selection bias + groups, bias


def split_map(num_layers: int) -> dict[str, str]:
    """Even decoder layers on the CPU, odd ones offloaded to disk."""
    out = {name: "cpu" for name in ("model.embed_tokens", "model.norm", "model.rotary_emb",
                                    "lm_head")}
    out.update({f"model.layers.{i}": "disk" if i % 2 else "cpu" for i in range(num_layers)})
    return out


@functools.lru_cache(maxsize=None)
def _checkpoint(family: str) -> str:
    path = tempfile.mkdtemp(prefix=f"explorer-offload-{family}-")
    tiny_model(family)[0].save_pretrained(path)
    return path


@functools.lru_cache(maxsize=None)
def _offloaded(family: str):
    path = _checkpoint(family)
    n = tiny_model(family)[1].num_hidden_layers
    return load_model(path, device="cpu", device_map=split_map(n),
                      offload_folder=tempfile.mkdtemp(prefix="explorer-offload-"))


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


def test_offloaded_layers_give_the_same_logits_and_routes(family):
    moe = _offloaded(family)
    disk = [i for i in moe.moe_layers if i % 2]
    assert disk, "the map offloads no MoE layer"
    for i in disk:  # really offloaded: the router's weight is an empty placeholder
        assert moe.handle(i).router.weight.device.type == "meta"
        assert hasattr(moe.handle(i).router, "_hf_hook")
    plain = load_model(_checkpoint(family), device="cpu")
    with torch.no_grad():
        assert torch.allclose(moe.model(torch.tensor([IDS])).logits,
                              plain.model(torch.tensor([IDS])).logits, atol=1e-5, rtol=0)
    check_route_control(moe, IDS)


def test_disk_offload_without_a_folder_is_one_line():
    with pytest.raises(ModelLoadError, match="offload_folder") as err:
        load_model(_checkpoint("mixtral"), device="cpu", device_map=split_map(3))
    assert "\n" not in str(err.value)
