"""The fast engine computes only what a target score reads: no last target token, the
last layer's feed-forward block on the scored rows only, and no work at all for edits
at the last layer before the scored rows."""

from __future__ import annotations

import pytest
import torch
from tiny_models import FAMILIES, tiny_model

from explorer.core.forward import prefill, target_logprob
from explorer.core.layers import decoder_layers
from explorer.core.route import Route
from explorer.engine.cone import (
    _mlp_block,
    capture_layer_inputs,
    cone_logits_direct,
    cone_target_logprob,
    exact_arithmetic,
    scored_ids,
)
from explorer.engine.scoring import FastEngine


def as_ids(moe):
    prompt = moe.encode("How do I pick a lock?")
    target = moe.tokenizer("Sure, here is", add_special_tokens=False)["input_ids"]
    return prompt, target


def _other(moe, lay: int, used: set[int]) -> list[int]:
    info = moe.handle(lay).info
    return [e for e in range(info.num_experts) if e not in used][:info.top_k]


def test_scored_ids_leave_out_the_last_target_token_and_scores_stay_exact(tiny):
    prompt, target = as_ids(tiny)
    assert scored_ids(prompt, target) == prompt + target[:-1]
    t = 2
    _, cache = prefill(tiny, prompt[:t], Route())
    for lay in tiny.moe_layers:
        routes = [Route().with_force(lay, t, _other(tiny, lay, {e})) for e in range(3)]
        want = target_logprob(tiny, prompt, target, routes)
        full = capture_layer_inputs(tiny, prompt + target, Route(), cache, t)  # one row longer
        cut = capture_layer_inputs(tiny, scored_ids(prompt, target), Route(), cache, t)
        for states in (full, cut):
            got = cone_target_logprob(tiny, prompt, target, routes, lay, states[lay], cache, t)
            assert torch.allclose(got, want, atol=1e-5, rtol=0)


def test_last_layer_feed_forward_runs_on_the_scored_rows_only(tiny):
    prompt, target = as_ids(tiny)
    ids = scored_ids(prompt, target)
    last = decoder_layers(tiny.model)[-1]
    mlp = _mlp_block(last)
    assert mlp is not None
    rows_seen: list[int] = []  # router inputs are flattened: (rows x positions, H)
    router = tiny.handle(len(decoder_layers(tiny.model)) - 1).router
    probe = router.register_forward_pre_hook(lambda m, a: rows_seen.append(a[0].reshape(-1, a[0].shape[-1]).shape[0]))
    try:
        inputs = capture_layer_inputs(tiny, ids, Route())
        lay = tiny.moe_layers[0]
        routes = [Route().with_force(lay, 1, _other(tiny, lay, {e})) for e in range(2)]
        n = len(target)
        rows_seen.clear()
        only = cone_logits_direct(tiny, ids, routes, lay, inputs[lay], None, 0, keep=n,
                                  layer_kwargs={})
        assert rows_seen == [2 * n]  # the last layer's block saw the scored rows alone
        rows_seen.clear()
        every = cone_logits_direct(tiny, ids, routes, lay, inputs[lay], None, 0, keep=n,
                                   layer_kwargs={}, last_rows_only=False)
        assert rows_seen == [2 * len(ids)]
        assert only.shape == every.shape == (2, n, tiny.text_config.vocab_size)
        assert torch.allclose(only, every, atol=1e-5, rtol=0)
    finally:
        probe.remove()
    assert not mlp._forward_pre_hooks and not mlp._forward_hooks  # slicing hooks gone


def test_edits_at_the_last_layer_before_the_scored_rows_cost_no_forward(tiny):
    prompt, target = as_ids(tiny)
    lay = decoder_layers(tiny.model).__len__() - 1
    assert lay in tiny.moe_layers
    eng = FastEngine(tiny, prompt, target)
    base_score = eng.score([Route()], position=None)[0]
    calls: list[int] = []
    hooks = [layer.register_forward_pre_hook(lambda m, a, k: calls.append(1), with_kwargs=True)
             for layer in decoder_layers(tiny.model)]
    try:
        for t, computed in ((0, False), (len(prompt) - 2, False), (len(prompt) - 1, True)):
            eng.begin_position(Route(), t)
            eng.flush()  # the position's own prefix forward (deferred), not the candidates'
            calls.clear()
            routes = [Route().with_force(lay, t, _other(tiny, lay, {e})) for e in range(3)]
            got = eng.score(routes, position=t, layer=lay, base=Route())
            layers_run = sum(calls)
            want = target_logprob(tiny, prompt, target, routes)
            assert torch.allclose(torch.tensor(got, dtype=want.dtype), want, atol=1e-5, rtol=0)
            if computed:  # the last prompt position predicts the first target token
                assert calls and len(set(got)) > 1
            else:
                assert got == [base_score] * 3 and eng.forward_passes > 0
            assert (layers_run > 0) == computed
    finally:
        for h in hooks:
            h.remove()
    # a candidate kept after a skipped step reuses the base's states (no new forward)
    eng.begin_position(Route(), 0)
    first = tiny.moe_layers[0]
    eng.score([Route().with_force(first, 0, _other(tiny, first, set()))], position=0,
              layer=first, base=Route())  # computed: captures the base's states
    kept = Route().with_force(lay, 0, _other(tiny, lay, set()))
    eng.score([kept], position=0, layer=lay, base=Route())
    states = eng._inputs
    assert eng._resolve(tuple(kept.edits)) and eng._inputs is states


@pytest.mark.parametrize("family", FAMILIES)
def test_cpu_experts_kernel_equals_grouped_mm(family):
    """explorer_cpu (one-token calls over the used experts only) gives grouped_mm's
    numbers: a prefill and three decoding steps of every family that takes it."""
    from explorer.core.experts_cpu import register
    model, _ = tiny_model(family)
    if not hasattr(model, "set_experts_implementation"):
        pytest.skip("no experts interface")
    outs = {}
    for impl in ("grouped_mm", register()):
        try:
            model.set_experts_implementation(impl)
        except (ValueError, NotImplementedError, KeyError):
            pytest.skip(f"{family} has no decorated experts module")
        with torch.no_grad():
            outs[impl] = model.generate(torch.tensor([[5, 9, 14, 3, 7]]), max_new_tokens=3,
                                        do_sample=False, output_logits=True,
                                        return_dict_in_generate=True)
    a, b = outs.values()
    assert torch.equal(a.sequences, b.sequences)
    for x, y in zip(a.logits, b.logits):
        assert torch.allclose(x, y, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family,scaling", [("olmoe", None), ("granitemoe", 4.0)])
def test_rosais_cone_is_direct_where_it_matches_the_model_call(family, scaling):
    """RoSais's fast path calls the layers directly (last layer's block on the last row
    only) after one check against the model call; Granite's scaled logits fail the check
    and every later call goes through the model, with the model's numbers."""
    import random

    from explorer.core.model import MoEModel
    from explorer.engine.cone import cone_logits
    from explorer.methods.rosais import _cone_last_logits, random_mask
    model, _ = tiny_model(family, experts_implementation="eager")
    if scaling:
        model.config.logits_scaling = scaling
    moe = MoEModel(model, None, family)
    ids = [5, 9, 14, 3, 7, 11, 2, 8]
    inputs = capture_layer_inputs(moe, ids, None)
    direct: dict = {"on": True, "checked": False}
    for lay in moe.moe_layers:
        info = moe.handle(lay).info
        rng = random.Random(lay)
        routes = [Route().mask(lay, random_mask(rng, info, 0.5)) for _ in range(3)]
        got = _cone_last_logits(moe, ids, routes, lay, inputs[lay], direct)
        want = cone_logits(moe, ids, routes, lay, inputs[lay], keep=1, validate=False)[:, -1]
        assert torch.allclose(got, want.float(), atol=1e-5, rtol=0)
    assert direct["checked"] and direct["on"] == (scaling is None)


@pytest.mark.parametrize("exact", [False, True])
def test_a_search_captures_states_once_and_extends_its_cache(tiny, monkeypatch, exact):
    """Growing the cache (the narrow step forced: no exact arithmetic): the kept states
    follow the search from position to position (one capture, no prefill after the first
    position), including across skipped last-layer steps. Exact arithmetic: one
    full-shape forward per position walked, nothing else."""
    from conftest import NeverJudge

    import explorer.engine.scoring as engines
    from explorer.engine.tuning import Tuning, tuned
    from explorer.methods.fsour import fsour
    calls = {"capture": 0, "prefill": 0, "full": 0}

    def counted(name, fn):
        def wrapper(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapper
    monkeypatch.setattr(engines, "capture_layer_inputs", counted("capture", engines.capture_layer_inputs))
    monkeypatch.setattr(engines, "prefill", counted("prefill", engines.prefill))
    monkeypatch.setattr(engines, "full_shape_prefix", counted("full", engines.full_shape_prefix))
    with tuned(None if exact else Tuning(narrow=True)):
        res = fsour(tiny, "How do I pick a lock?", candidates=3, max_iters=1, seed=3,
                    engine="fast", judge=NeverJudge(), threshold=0.0, max_new_tokens=1)
    P = len(tiny.encode("How do I pick a lock?"))
    assert res.forward_passes >= 3 * P * len(tiny.moe_layers)  # every position was walked
    if exact:
        assert exact_arithmetic(tiny)
        assert calls == {"capture": 0, "prefill": 0, "full": P}
    else:
        assert calls == {"capture": 1, "prefill": 0, "full": 0}
