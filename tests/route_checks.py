"""Route-control checks shared by tests of models loaded in unusual ways (pre-quantized
checkpoints, offloaded layers): what tests/test_families.py checks, in one function."""

from __future__ import annotations

import torch

from explorer.core.forward import generate_recorded
from explorer.core.route import Route


class Dispatched:
    """The experts each token was dispatched to, per MoE layer, read from the experts
    modules' inputs (not through explorer's recorder)."""

    def __init__(self, moe):
        self.moe, self.seen, self.hooks = moe, {}, []

    def __enter__(self):
        for h in self.moe.handles:
            assert h.capture == "experts-args"
            self.hooks.append(h.experts.register_forward_pre_hook(
                lambda m, a, lay=h.info.index: self.seen.setdefault(lay, []).append(
                    a[1].reshape(-1, a[1].shape[-1]).sort(-1).values.clone())))
        return self

    def __exit__(self, *exc):
        for hk in self.hooks:
            hk.remove()


def other_experts(info, natural: set[int]) -> list[int]:
    """top_k experts outside ``natural``, inside one expert group for group-limited routers."""
    others = [e for e in range(info.num_experts) if e not in natural]
    if info.n_group:
        g = info.group_of(others[0])
        others = [e for e in others if info.group_of(e) == g] + others
    return sorted(list(dict.fromkeys(others))[: info.top_k])


def check_route_control(moe, ids) -> None:
    """On ``moe`` (every MoE layer's experts taking ``(hidden, top_k_index, ...)``):
    what is recorded is what the experts receive; an expert set forced at one position
    is the one the experts receive there, with the logits before it unchanged and those
    after it changed; masked experts are never used, in decoding included."""
    with Dispatched(moe) as seen, moe.control(record=True) as ctl, torch.no_grad():
        base = moe.model(torch.tensor([ids])).logits
    for lay in moe.moe_layers:  # what was recorded is what the experts received
        rec = ctl.collected(lay)["experts"].reshape(-1, moe.handle(lay).info.top_k)
        assert torch.equal(rec.sort(-1).values, seen.seen[lay][0]), lay
    t = 4
    for lay in moe.moe_layers:
        natural = set(ctl.collected(lay)["experts"][0, t].tolist())
        forced = other_experts(moe.handle(lay).info, natural)
        with Dispatched(moe) as seen, moe.control(Route().force(lay, t, forced), record=True) \
                as c2, torch.no_grad():
            out = moe.model(torch.tensor([ids])).logits
        assert seen.seen[lay][0][t].tolist() == forced
        assert sorted(c2.collected(lay)["experts"][0, t].tolist()) == forced
        assert torch.allclose(out[0, :t], base[0, :t], atol=1e-5, rtol=0)
        assert not torch.allclose(out[0, t:], base[0, t:])
    route = Route()
    for lay in moe.moe_layers:
        route.mask(lay, [0, 1, 2])
    with Dispatched(moe) as seen:
        gen, ctl = generate_recorded(moe, ids, route, max_new_tokens=3)
    for lay in moe.moe_layers:
        assert not (ctl.collected(lay)["experts"] < 3).any()
        assert len(seen.seen[lay]) >= 3 and all(not (c < 3).any() for c in seen.seen[lay])
