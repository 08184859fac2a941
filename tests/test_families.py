"""Acceptance of routing record and intervention on tiny random models of every family."""

from __future__ import annotations

import functools

import pytest
import torch
from tiny_models import FAMILIES, tiny_model

from explorer.core.forward import (expand_cache, generate, generate_recorded, logits_for_routes,
                                   prefill)
from explorer.core.model import MoEModel
from explorer.core.route import Route, RouteError

IDS = [5, 17, 33, 9, 64, 21, 40, 77, 12, 3]


@functools.lru_cache(maxsize=None)
def moe_for(family: str) -> MoEModel:
    model, _ = tiny_model(family, experts_implementation="eager")
    return MoEModel(model, None, family)


class DispatchOracle:
    """Independently records which experts each token was dispatched to, per MoE layer,
    by watching the experts modules' inputs (not through explorer's recorder)."""

    def __init__(self, moe: MoEModel):
        self.moe, self.seen, self.hooks = moe, {}, []

    def __enter__(self):
        for h in self.moe.handles:
            lay = h.info.index
            if h.capture == "experts-args":
                self.hooks.append(h.experts.register_forward_pre_hook(
                    lambda m, a, lay=lay: self.seen.setdefault(lay, []).append(
                        a[1].reshape(-1, a[1].shape[-1]).sort(-1).values.clone())))
            elif h.capture == "llama4-scores":
                # routed_in = hidden.repeat(E, 1) * scores: rows of unused experts are zero
                E = h.info.num_experts

                def pre(m, a, lay=lay, E=E):
                    rows = a[0].reshape(E, -1, a[0].shape[-1]).abs().sum(-1) > 0  # (E, N)
                    used = [torch.nonzero(rows[:, n]).flatten() for n in range(rows.shape[1])]
                    self.seen.setdefault(lay, []).append(torch.stack(used))
                self.hooks.append(h.experts.register_forward_pre_hook(pre))
            elif h.capture == "jetmoe-gating":
                block = self.moe.model.model.layers[lay].mlp
                state = {}
                self.hooks.append(block.register_forward_pre_hook(
                    lambda m, a, state=state: state.update(x=a[0].reshape(-1, a[0].shape[-1]))))

                def lin(m, a, lay=lay, state=state):
                    inputs, sizes = a[0], a[1]
                    x = state["x"]
                    tok = [int(torch.nonzero((x == row).all(-1))[0]) for row in inputs]
                    experts = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
                    sets = [[] for _ in range(x.shape[0])]
                    for t, e in zip(tok, experts.tolist()):
                        sets[t].append(e)
                    self.seen.setdefault(lay, []).append(torch.tensor([sorted(s) for s in sets]))
                self.hooks.append(block.input_linear.register_forward_pre_hook(lin))
        return self

    def __exit__(self, *a):
        for hk in self.hooks:
            hk.remove()


def _differs(h, natural: set[int]) -> list[int]:
    """k experts that are not the natural choice and satisfy group limits."""
    info = h.info
    others = [e for e in range(info.num_experts) if e not in natural]
    if info.n_group:
        g = info.group_of(others[0])
        others = [e for e in others if info.group_of(e) == g] + others
    return sorted(dict.fromkeys(others))[: info.top_k] if not info.n_group else \
        sorted(list(dict.fromkeys(others))[: info.top_k])


@pytest.fixture(params=FAMILIES)
def moe(request):
    return moe_for(request.param)


def test_recorded_experts_equal_dispatched(moe):
    with DispatchOracle(moe) as oracle, moe.control(record=True) as ctl, torch.no_grad():
        moe.model(torch.tensor([IDS]))
    assert set(oracle.seen) == set(moe.moe_layers)
    for lay in moe.moe_layers:
        rec = ctl.collected(lay)["experts"].reshape(-1, moe.handle(lay).info.top_k)
        assert torch.equal(rec.sort(-1).values, oracle.seen[lay][0]), lay
        assert ctl.collected(lay)["logits"].shape[-1] == moe.handle(lay).info.num_experts


def test_forced_experts_are_used_and_prefix_unchanged(moe):
    with moe.control(record=True) as ctl, torch.no_grad():
        base = moe.model(torch.tensor([IDS])).logits
    t = 4
    for lay in moe.moe_layers:
        h = moe.handle(lay)
        natural = set(ctl.collected(lay)["experts"][0, t].tolist())
        forced = _differs(h, natural)
        route = Route().force(lay, t, forced)
        with DispatchOracle(moe) as oracle, moe.control(route, record=True) as c2, torch.no_grad():
            out = moe.model(torch.tensor([IDS])).logits
        assert oracle.seen[lay][0][t].tolist() == forced
        assert sorted(c2.collected(lay)["experts"][0, t].tolist()) == forced
        assert torch.allclose(out[0, :t], base[0, :t], atol=1e-5, rtol=0)
        assert not torch.allclose(out[0, t:], base[0, t:])  # the change is real


def test_masked_experts_never_used_incl_decoding(moe):
    route = Route()
    for lay in moe.moe_layers:
        route.mask(lay, [0, 1, 2])
    with DispatchOracle(moe) as oracle:
        gen, ctl = generate_recorded(moe, IDS, route, max_new_tokens=4)
    assert len(gen.ids) == len(IDS) + 4
    for lay in moe.moe_layers:
        used = ctl.collected(lay)["experts"]
        assert used.shape[1] == len(gen.ids)
        assert not (used < 3).any()
        assert all(not (chunk < 3).any() for chunk in oracle.seen[lay])
        assert len(oracle.seen[lay]) >= 4  # prefill + decoding steps were all watched


def test_batched_routes_equal_single_rows(moe):
    lay0, lay1 = moe.moe_layers[0], moe.moe_layers[-1]
    h0, h1 = moe.handle(lay0), moe.handle(lay1)
    routes = [Route(),
              Route().force(lay0, 2, _differs(h0, set())).mask(lay1, [3]),
              Route().force(lay1, 6, _differs(h1, {0, 1})).force(lay0, 7, _differs(h0, {0, 1}))]
    batched = logits_for_routes(moe, IDS, routes)
    for b, r in enumerate(routes):
        single = logits_for_routes(moe, IDS, [r])
        assert torch.allclose(batched[b], single[0], atol=1e-5, rtol=0), b
    assert not torch.allclose(batched[0], batched[1])


def test_prefix_cache_reuse_matches_full_recompute(moe):
    lay = moe.moe_layers[-1]
    h = moe.handle(lay)
    t = 5
    routes = [Route().force(lay, t, _differs(h, {e})) for e in range(3)]
    full = logits_for_routes(moe, IDS, routes)
    _, cache = prefill(moe, IDS[:t])
    part = logits_for_routes(moe, IDS, routes, prefix_cache=cache, prefix_len=t)
    assert part.shape[1] == len(IDS) - t
    assert torch.allclose(full[:, t:], part, atol=1e-5, rtol=0)
    again = logits_for_routes(moe, IDS, routes, prefix_cache=cache, prefix_len=t)
    assert torch.equal(part, again)  # the shared prefix cache was not mutated
    assert expand_cache(cache, 2) is not cache


def test_generate_with_route_changes_continuation_and_is_deterministic(moe):
    lay = moe.moe_layers[0]
    route = Route().mask(lay, list(range(moe.handle(lay).info.num_experts - 2)))
    a = generate(moe, IDS, route, max_new_tokens=5)
    b = generate(moe, IDS, route, max_new_tokens=5)
    assert a.ids == b.ids and len(a.ids) == len(IDS) + 5


def test_clear_errors(moe):
    info = moe.info
    lay = moe.moe_layers[0]
    h = moe.handle(lay)
    k, E = h.info.top_k, h.info.num_experts
    cases = [Route().force(info.num_layers + 3, 0, range(k)),
             Route().force(lay, 0, [E] + list(range(k - 1))),
             Route().force(lay, 0, range(k + 1)),
             Route().mask(lay, range(E - k + 1)),
             Route().force(lay, 50, range(k))]
    if info.dense_layers:
        cases.append(Route().force(info.dense_layers[0], 0, range(k)))
    if h.info.n_group:
        size = E // h.info.n_group
        spread = [g * size for g in range(h.info.topk_group + 1)][:k]
        if len({h.info.group_of(e) for e in spread}) > h.info.topk_group:
            cases.append(Route().force(lay, 0, spread))
    for r in cases:
        with pytest.raises(RouteError):
            r.validate(info, num_tokens=len(IDS))


def test_hooks_are_removed_even_after_errors(moe):
    def count():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in moe.model.modules())
    before = count()
    with pytest.raises(RuntimeError):
        with moe.control(Route().force(moe.moe_layers[0], 1, range(moe.handle(moe.moe_layers[0]).info.top_k))):
            raise RuntimeError("boom")
    assert count() == before
    with pytest.raises(RouteError):  # 2 routes for a batch of 3 rows: fails inside forward
        with moe.control([Route(), Route()]), torch.no_grad():
            moe.model(torch.tensor([IDS] * 3))
    assert count() == before
    assert torch._C._len_torch_function_stack() == 0


def test_causal_cone_recompute_matches_full_recompute(moe):
    from explorer.engine.cone import capture_layer_inputs, cone_logits
    t = 4
    for lay in moe.moe_layers:
        h = moe.handle(lay)
        base = Route().force(moe.moe_layers[0], 1, _differs(h, set()))
        routes = [base.with_force(lay, t, _differs(h, {e})) for e in range(3)]
        full = logits_for_routes(moe, IDS, routes)
        _, cache = prefill(moe, IDS[:t], base)
        from explorer.core.forward import reusable
        cache, plen = (cache, t) if reusable(cache) else (None, 0)
        inputs = capture_layer_inputs(moe, IDS, base, cache, plen)
        part = cone_logits(moe, IDS, routes, lay, inputs[lay], cache, plen)
        assert torch.allclose(full[:, plen:], part, atol=1e-5, rtol=0), lay
    from explorer.core.layers import decoder_layers
    layers = decoder_layers(moe.model)
    assert all("forward" not in layer.__dict__ for layer in layers)  # patches removed


def test_narrow_cone_one_row_at_the_edited_layer_matches_full_recompute(moe):
    """Candidates that differ only at (layer l, position t): layer l is computed at t alone,
    layers > l from the base's states with that row swapped in (the fast engine's path)."""
    from explorer.core.forward import reusable, target_logprob
    from explorer.core.layers import decoder_layers
    from explorer.engine.cone import capture_layer_inputs, cone_target_logprob
    prompt, target = IDS[:7], IDS[7:]
    n_layers = len(decoder_layers(moe.model))
    for t in (0, 4):
        base = Route().force(moe.moe_layers[0], 0, _differs(moe.handle(moe.moe_layers[0]), set()))
        cache, plen = None, 0
        if t:
            _, c = prefill(moe, prompt[:t], base)
            if not reusable(c):
                continue  # the engine only narrows with a shareable prefix cache
            cache, plen = c, t
        inputs = capture_layer_inputs(moe, prompt + target, base, cache, plen)
        shared: dict = {}  # direct layer-call inputs, captured once for this position, reused
        for lay in moe.moe_layers:
            if lay + 1 >= n_layers:
                continue
            h = moe.handle(lay)
            routes = [base.with_force(lay, t, _differs(h, {e})) for e in range(3)]
            full = target_logprob(moe, prompt, target, routes)
            for kw in (None, shared):
                seen: dict = {}
                narrow = cone_target_logprob(moe, prompt, target, routes, lay, inputs[lay], cache,
                                             plen, capture=seen, next_input=inputs[lay + 1],
                                             layer_kwargs=kw)
                assert torch.allclose(full, narrow, atol=1e-4, rtol=0), (t, lay, full, narrow)
                assert set(seen) >= {lay + 1} and seen[lay + 1].shape[0] == 3
    assert all("forward" not in layer.__dict__ for layer in decoder_layers(moe.model))
    assert not any(layer._forward_pre_hooks for layer in decoder_layers(moe.model))  # capture hooks gone


def test_direct_cone_matches_model_call_or_engine_falls_back(moe):
    """The layers above the edited one called directly (no model call) give the model
    call's logits; where a model post-processes its logits (scaling, capping), the fast
    engine's one-time check turns the direct path off and its scores stay exact."""
    from explorer.core.forward import reusable
    from explorer.core.layers import decoder_layers
    from explorer.engine.cone import capture_layer_inputs, cone_logits, cone_logits_direct
    t = 4
    _, cache = prefill(moe, IDS[:t], Route())
    cache, plen = (cache, t) if reusable(cache) else (None, 0)
    inputs = capture_layer_inputs(moe, IDS, Route(), cache, plen)
    same = []
    for lay in moe.moe_layers:
        h = moe.handle(lay)
        routes = [Route().with_force(lay, t, _differs(h, {e})) for e in range(3)]
        call = cone_logits(moe, IDS, routes, lay, inputs[lay], cache, plen, keep=4)
        shared: dict = {}
        for _ in range(2):  # the second call reuses the captured layer inputs
            seen: dict = {}
            direct = cone_logits_direct(moe, IDS, routes, lay, inputs[lay], cache, plen, keep=4,
                                        layer_kwargs=shared, capture=seen)
            assert direct is not None and direct.shape == call.shape
            same.append(torch.allclose(call, direct, atol=1e-5, rtol=0))
            assert set(seen) == set(range(lay + 1, len(decoder_layers(moe.model))))
    assert all(same), same
    _engine_scores_exact(moe, expect_direct=True)


def _engine_scores_exact(moe, expect_direct: bool):
    from explorer.core.forward import target_logprob
    from explorer.core.layers import decoder_layers
    from explorer.engine.scoring import FastEngine
    prompt, target = IDS[:7], IDS[7:]
    eng = FastEngine(moe, prompt, target, direct=True)
    eng.begin_position(Route(), 0)
    lay = moe.moe_layers[-1]
    routes = [Route().with_force(lay, 0, _differs(moe.handle(lay), {e})) for e in range(3)]
    got = torch.tensor(eng.score(routes, position=0, layer=lay, base=Route()), dtype=torch.float64)
    assert eng.direct == expect_direct
    assert torch.allclose(got, target_logprob(moe, prompt, target, routes), atol=1e-4, rtol=0)
    assert not any(layer._forward_pre_hooks for layer in decoder_layers(moe.model))


def test_direct_cone_falls_back_where_the_model_scales_its_logits():
    """Granite MoE divides its logits by ``logits_scaling`` after the projection: the
    direct path's logits differ, the engine's check notices and uses the model call."""
    from explorer.engine.cone import capture_layer_inputs, cone_logits, cone_logits_direct
    model, _ = tiny_model("granitemoe", experts_implementation="eager")
    model.config.logits_scaling = 4.0
    moe = MoEModel(model, None, "granitemoe")
    inputs = capture_layer_inputs(moe, IDS, Route())
    lay = moe.moe_layers[0]
    call = cone_logits(moe, IDS, [Route()], lay, inputs[lay], keep=3)
    direct = cone_logits_direct(moe, IDS, [Route()], lay, inputs[lay], None, 0, keep=3, layer_kwargs={})
    assert not torch.allclose(call, direct, atol=1e-3)
    assert torch.allclose(call, direct / 4.0, atol=1e-5)
    _engine_scores_exact(moe, expect_direct=False)
