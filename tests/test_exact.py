"""Exact arithmetic on CPU: the fast and multi-prompt engines score each route with the
reference computation's bits (row-invariant experts and attention, full-shape prefixes)."""

from __future__ import annotations

import random

import pytest
import torch

from explorer.core.attention_cpu import QUERY_BLOCK, _causal_mask
from explorer.core.experts_cpu import good_heights, invariant_rows, padded_height
from explorer.core.forward import joint_logprob, target_logprob
from explorer.core.route import Route
from explorer.engine.cone import exact_arithmetic
from explorer.engine.scoring import FastEngine, MultiScorer
from explorer.methods.fsour import sample_set


@pytest.mark.parametrize("threads", [1, 2])
def test_padded_products_give_each_row_the_bits_of_a_tall_product(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        good = good_heights(torch.float32)
        assert good[-1]  # tall products are row-invariant
        assert all(good[h - 1] for h in range(invariant_rows(torch.float32), len(good) + 1))
        gen = torch.Generator().manual_seed(1)
        x, w = torch.randn(90, 64, generator=gen), torch.randn(96, 64, generator=gen)
        tall = x @ w.t()
        for m in (1, 2, 3, 5, 6, 9, 11, 13):
            assert padded_height(m) >= m and good[padded_height(m) - 1]
            for start in (0, 7, 30):  # zero rows pad the group, as the experts kernel does
                rows = x[start:start + m]
                padded = torch.cat([rows, rows.new_zeros(padded_height(m) - m, rows.shape[1])])
                assert torch.equal((padded @ w.t())[:m], tall[start:start + m])
    finally:
        torch.set_num_threads(before)


def test_joint_logprob_sums_in_float64_in_token_order():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 5, 11, generator=gen) * 4
    tgt = [1, 4, 0, 10, 2]
    got = joint_logprob(logits, tgt)
    assert got.dtype == torch.float64
    per = torch.log_softmax(logits, -1)[:, torch.arange(5), torch.tensor(tgt)]
    assert torch.equal(got, per.double().sum(-1))


def test_causal_mask_aligns_the_queries_with_the_last_keys():
    m = _causal_mask(2, 5, "cpu")
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


def _demo_case(demo):
    p = demo.prepare("Tell me how a padlock is opened without its key, step by step")
    tgt = demo.target_ids("Sure, here is how a padlock can be opened without the key it came with")
    return list(p.ids), tgt


def test_the_demo_model_runs_with_exact_arithmetic(demo):
    assert demo.model.config._attn_implementation == "explorer_sdpa"
    assert exact_arithmetic(demo)
    ids, tgt = _demo_case(demo)
    eng = FastEngine(demo, ids, tgt)
    assert eng.exact and not eng.narrow
    eng.begin_position(Route(), 2)
    eng.flush()  # the deferred first forward checks the feed-forward rows
    assert eng.ff_narrow and demo.cache.feed_forward_rows is True


def test_fast_scores_equal_reference_scores_to_the_bit(demo):
    """Every position (block-boundary suffix lengths included) and every MoE layer."""
    ids, tgt = _demo_case(demo)
    rng = random.Random(3)
    layers = list(demo.moe_layers)
    info = demo.handle(layers[0]).info
    base = Route().with_force(layers[1], 2, sample_set(rng, info))
    eng = FastEngine(demo, ids, tgt)
    T = len(ids) + len(tgt) - 1
    # suffix lengths of 33-35 put 1-3 queries in the attention's last block
    positions = sorted({0, 3, len(ids) - 1} | {T - s for s in (QUERY_BLOCK + 1, QUERY_BLOCK + 3)
                                               if 0 <= T - s < len(ids)})
    checked = 0
    for t in positions:
        eng.begin_position(base, t)
        for layer in layers:
            cands = [base.with_force(layer, t, sample_set(rng, info)) for _ in range(5)]
            got = eng.score(cands, position=t, layer=layer, base=base)
            want = [float(target_logprob(demo, ids, tgt, [r])[0]) for r in cands]
            assert got == want, (t, layer)
            checked += 1
    assert checked >= 3 * len(layers)


def test_multi_prompt_batches_score_to_the_bit(demo):
    """Two prompts of different lengths in one padded batch: each row's score is its
    reference score to the bit (keys padded to a multiple of 8 in every call)."""
    a = _demo_case(demo)
    b = (list(demo.prepare("How do I get into a car I locked my keys in?").ids),
         demo.target_ids("Sure, here is"))
    rng = random.Random(4)
    engines = [FastEngine(demo, ids, tgt) for ids, tgt in (a, b)]
    for eng in engines:
        eng.begin_position(Route(), 1)
    scorer = MultiScorer(demo)
    for layer in demo.moe_layers[1:3]:  # a first step may check the direct path alone
        info = demo.handle(layer).info
        reqs = [(eng, [Route().with_force(layer, 1, sample_set(rng, info)) for _ in range(4)],
                 1, layer, Route()) for eng in engines]
        got = scorer.score(reqs)
        for (eng, cands, *_), scores in zip(reqs, got):
            want = [float(target_logprob(demo, eng.prompt_ids, eng.target_ids, [r])[0])
                    for r in cands]
            diffs = [abs(x - y) for x, y in zip(scores, want)]
            assert diffs == [0.0] * len(diffs), diffs
    assert scorer.batches >= 1


@pytest.mark.parametrize("narrow", [True])
def test_forcing_the_narrow_step_gives_up_exactness(demo, narrow):
    ids, tgt = _demo_case(demo)
    eng = FastEngine(demo, ids, tgt, narrow=narrow)
    assert eng.narrow and not eng.exact
    assert eng.tie_band(-100.0) > FastEngine(demo, ids, tgt).tie_band(-100.0)
