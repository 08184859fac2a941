"""The product log: FLOPs counted from the products a computation really runs."""

from __future__ import annotations

import torch

from explorer.bench.cost import layer_flops
from explorer.bench.flops import Product, ProductLog, replay_in_order_seconds, replay_seconds
from explorer.bench.runner import _search_row
from explorer.judges import NeverJudge
from explorer.methods.fsour import DEFAULT_TARGET


def test_a_forward_counts_what_the_cost_model_says(tiny):
    """Counted products of one forward equal the analytic count term by term: projections,
    router and the k routed experts (layer_flops without attention context), logits for
    every row, and attention over the whole T x T rectangle."""
    ids = tiny.encode("Steal a car.") + tiny.tokenizer(DEFAULT_TARGET, add_special_tokens=False)["input_ids"]
    T = len(ids)
    with torch.inference_mode(), ProductLog() as log:
        tiny.model(input_ids=torch.tensor([ids]), use_cache=False)
    c = tiny.text_config
    L = len(tiny.info.layers)
    per_token = sum(layer_flops(tiny, i, 0) for i in range(L))
    head = 2 * c.hidden_size * c.vocab_size * T
    kinds = log.by_kind()
    needed = T * per_token + head
    # the CPU experts kernel runs each used expert's products on at least invariant_rows
    # rows (zero padding, see explorer.core.experts_cpu): at most that many rows less one
    # extra per expert and layer
    from explorer.core.experts_cpu import invariant_rows
    pad = sum((invariant_rows(torch.float32) - 1) * 2 * (m.down_proj.numel() + (
        m.gate_up_proj if m.has_gate else m.up_proj).numel())
              for m in tiny.model.modules() if getattr(m, "down_proj", None) is not None
              and getattr(m.down_proj, "dim", lambda: 0)() == 3)
    assert needed <= kinds["mm"] + kinds.get("grouped", 0) <= needed + pad
    hd = c.hidden_size // c.num_attention_heads
    assert kinds["attention"] == L * 2 * c.num_attention_heads * T * T * 2 * hd
    assert kinds.get("bmm", 0) < 0.01 * log.flops()  # rotary angles only
    assert log.flops() == sum(kinds.values())


def test_logging_changes_no_number(tiny):
    """The log decomposes composite ops as the dispatcher does: bit-identical logits."""
    ids = torch.tensor([tiny.encode("Steal a car.")])
    with torch.inference_mode():
        plain = tiny.model(input_ids=ids, use_cache=False).logits
        with ProductLog() as log:
            logged = tiny.model(input_ids=ids, use_cache=False).logits
    assert len(log.calls) > 0 and torch.equal(plain, logged)


def test_fast_engine_does_near_the_cone_and_far_less_than_the_reference(tiny):
    counted, rows = {}, {}
    for eng in ("fast", "reference"):
        with ProductLog() as log:
            rows[eng] = _search_row(tiny, "Steal a car.", eng, 0, 4, 1, NeverJudge())
        counted[eng] = log.flops() / 1e9
    cone, full = rows["fast"]["cone_gflop"], rows["fast"]["full_gflop"]
    assert rows["fast"]["route"] == rows["reference"]["route"]
    # near-tie re-checks run full reference forwards (as many FLOPs as the reference's own)
    per_ref = counted["reference"] / rows["reference"]["forward_passes"]
    searched = counted["fast"] - rows["fast"]["recheck_passes"] * per_ref
    # cone-only, with per-position extras: exact arithmetic adds one full forward of the
    # scored sequence per position (its prefix cache and feed-forward rows)
    P = len(tiny.encode("Steal a car."))
    assert cone <= searched < 2 * cone + P * per_ref
    assert counted["reference"] >= full  # full forwards (logits for every row, too)
    assert searched < counted["reference"] / 3
    assert rows["reference"]["recheck_passes"] == 0  # its own numbers are the reference


def test_replay_times_products_and_leaves_attention_out():
    log = ProductLog()
    log.calls += [Product("mm", (8, 16), (16, 32)), Product("mm", (8, 16), (16, 32), b_t=True),
                  Product("bmm", (2, 8, 16), (2, 16, 4)),
                  Product("grouped", (8, 16), (3, 16, 32), offs=(2, 2, 8)),
                  Product("attention", (1, 2, 8, 4), (1, 2, 8, 4), offs=(4,))]
    log.weights += [None] * len(log.calls)
    assert log.by_kind() == {"mm": 2 * 2 * 8 * 16 * 32, "bmm": 2 * 2 * 8 * 16 * 4,
                             "grouped": 2 * 8 * 16 * 32, "attention": 2 * 2 * 8 * 8 * 8}
    assert replay_seconds(log) > 0
    only_attention = ProductLog()
    only_attention.calls.append(log.calls[-1])
    only_attention.weights.append(None)
    assert replay_seconds(only_attention) == 0.0 == replay_in_order_seconds(only_attention)
    assert replay_in_order_seconds(log) > 0


def test_in_order_replay_uses_the_models_own_weights(tiny):
    """Calls whose weight is a model parameter keep that very tensor (no copy); the others
    (rotary angles, activations) keep nothing."""
    with torch.inference_mode(), ProductLog(tiny.model) as log:
        tiny.model(input_ids=torch.tensor([tiny.encode("Steal a car.")]), use_cache=False)
    ptrs = {p.untyped_storage().data_ptr() for p in tiny.model.parameters()}
    kept = [w for w in log.weights if w is not None]
    assert len(log.weights) == len(log.calls)
    assert kept and all(w.untyped_storage().data_ptr() in ptrs for w in kept)
    experts = {t.untyped_storage().data_ptr() for m in tiny.model.modules()
               if getattr(m, "down_proj", None) is not None and m.down_proj.dim() == 3
               for t in (m.down_proj, m.gate_up_proj if m.has_gate else m.up_proj)}
    assert any(w.untyped_storage().data_ptr() in experts for w in kept)  # expert weights
    grouped = [w for p, w in zip(log.calls, log.weights) if p.kind == "grouped"]
    assert all(w is not None for w in grouped)
    assert all(w is None for p, w in zip(log.calls, log.weights) if p.kind == "attention")
    assert ProductLog().weights == [] and replay_in_order_seconds(log) > 0
