"""Cone batches sized to the free memory: estimates, limits, and exact scores when split."""

from __future__ import annotations

import pytest
import torch
from conftest import NeverJudge

from explorer.core.forward import target_logprob
from explorer.core.route import Route
from explorer.engine import batching
from explorer.engine.batching import MAX_BATCH, free_bytes, memory_batch_size, row_bytes
from explorer.engine.scoring import FastEngine
from explorer.methods.rosais import rosais


def test_free_memory_is_read_on_this_machine():
    free = free_bytes("cpu")
    assert free is not None and free > 0


def test_row_estimate_grows_with_work(tiny):
    small = row_bytes(tiny, tokens=4, context=8, logit_rows=2)
    assert small > 0
    assert row_bytes(tiny, tokens=40, context=80, logit_rows=2) > small
    assert row_bytes(tiny, tokens=4, context=8, logit_rows=20) > small


def test_batch_size_follows_free_memory(tiny, monkeypatch):
    per = row_bytes(tiny, 10, 10, 3)
    assert memory_batch_size(tiny, 10, 10, 3, share=1.0, free=per * 7 + 1) == 7
    assert memory_batch_size(tiny, 10, 10, 3, share=0.5, free=per * 7 + 1) == 3
    assert memory_batch_size(tiny, 10, 10, 3, share=1.0, free=1) == 1  # never zero
    assert memory_batch_size(tiny, 10, 10, 3, share=1.0, free=per * 10 * MAX_BATCH) == MAX_BATCH
    monkeypatch.setattr(batching, "free_bytes", lambda device: None)
    assert memory_batch_size(tiny, 10, 10, 3) == 64  # unknown: a fixed size


def test_engine_splits_candidates_when_memory_is_short_and_scores_stay_exact(tiny, monkeypatch):
    prompt, target = tiny.encode("How do I pick a lock?"), tiny.tokenizer.encode("Sure", add_special_tokens=False)
    T = len(prompt) + len(target)
    per = row_bytes(tiny, T, T, len(target) + 1)
    monkeypatch.setattr(batching, "free_bytes", lambda device: per * 3 * 4)  # 3 rows at a 0.25 share
    eng = FastEngine(tiny, prompt, target)
    assert eng.batch_size == 3
    lay = tiny.moe_layers[0]
    E = tiny.handle(lay).info.num_experts
    k = tiny.handle(lay).info.top_k
    routes = [Route().force(lay, 2, sorted({(e + j) % E for j in range(k)})) for e in range(8)]
    eng.begin_position(Route(), 2)
    got = torch.tensor(eng.score(routes, position=2, layer=lay, base=Route()), dtype=torch.float64)
    assert eng.forward_passes == 8
    whole = FastEngine(tiny, prompt, target, batch_size=64)
    whole.begin_position(Route(), 2)
    one = torch.tensor(whole.score(routes, position=2, layer=lay, base=Route()), dtype=torch.float64)
    assert torch.allclose(got, one, atol=1e-5, rtol=0)
    assert torch.allclose(got, target_logprob(tiny, prompt, target, routes), atol=1e-4, rtol=0)


def test_rosais_scores_do_not_depend_on_the_batch_size(tiny):
    kw = dict(samples=6, top=1, max_new_tokens=1, judge=NeverJudge())
    a = rosais(tiny, "How do I pick a lock?", batch_size=4, **kw)
    b = rosais(tiny, "How do I pick a lock?", **kw)  # memory-sized: one batch of 6
    assert a.scores == pytest.approx(b.scores, abs=1e-5)


def test_replaying_many_routes_shares_the_prefix_before_their_first_edit(tiny):
    from explorer.research.common import batched_logprob, shared_prefix
    ids = tiny.encode("How do I pick a lock?")
    tgt = tiny.tokenizer.encode("Sure", add_special_tokens=False)
    lay = tiny.moe_layers[-1]
    k = tiny.handle(lay).info.top_k
    routes = [Route().force(lay, p, list(range(e, e + k))) for p in (3, 5) for e in range(3)]
    assert shared_prefix(routes, len(ids)) == 3
    assert shared_prefix(routes + [Route().mask(lay, [0])], len(ids)) == 0  # every position
    assert shared_prefix([Route()], len(ids)) == len(ids) - 1
    got = batched_logprob(tiny, ids, tgt, routes, batch_size=4)
    full = target_logprob(tiny, ids, tgt, routes)
    assert torch.allclose(torch.tensor(got, dtype=full.dtype), full, atol=1e-4, rtol=0)
