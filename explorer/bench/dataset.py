"""``bench --dataset``: one-at-a-time vs multi-prompt F-SOUR over dataset rows.

Both runs search the same rows with the same seeds and settings; the report gives, for
each, seconds per prompt, prompts per hour, the fraction of the ideal (the causal cone's
FLOPs at the device's dense matrix rate, over the run's seconds, generation included), the
peak memory, and whether every row's route, passes and answer came out identical. A
logged rerun of the first few rows (:class:`~explorer.bench.flops.ProductLog`) gives the
rows per matrix product (mean GEMM height) of each path.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from explorer.bench.cost import ConeCost, matmul_rate, peak_memory_mb, reset_peak
from explorer.core.defaults import DEFAULT_TARGET, FSOUR_CANDIDATES, MAX_NEW_TOKENS
from explorer.core.forward import generate

if TYPE_CHECKING:
    from explorer.core.model import MoEModel


def refused_rows(moe: MoEModel, rows: list[dict], limit: int, judge) -> list[dict]:
    """The first ``limit`` rows whose unattacked greedy answer the judge calls a refusal."""
    out = []
    for row in rows:
        if len(out) >= limit:
            break
        text = generate(moe, moe.encode(row["goal"]), None, max_new_tokens=MAX_NEW_TOKENS).text
        if judge.judge(row["goal"], text).refusal:
            out.append(row)
    return out


def _cone_flops(moe: MoEModel, prompt: str, target: str, steps, candidates: int) -> float:
    n = len(moe.target_ids(target))
    cost = ConeCost(moe, len(moe.encode(prompt)) + n, n)
    total = 0.0
    for pos, lay in steps:
        total += cost.full() if lay is None else candidates * cost.cone(pos, lay)
    return total


def _gemm_rows(log) -> dict:
    """Mean rows (M) of the recorded matrix products: per product, and FLOP-weighted."""
    prods = [p for p in log.calls if p.kind in ("mm", "grouped")]
    if not prods:
        return {"products": 0, "mean_rows": None, "flop_weighted_rows": None}
    flops = sum(p.flops for p in prods)
    return {"products": len(prods),
            "mean_rows": sum(p.a[0] for p in prods) / len(prods),
            "flop_weighted_rows": sum(p.a[0] * p.flops for p in prods) / max(flops, 1)}


def _summary(res) -> dict:
    return {"route": res.route.to_dict()["edits"], "passes": res.forward_passes,
            "completion": res.completion, "success": bool(res.success),
            "logprob": res.logprob, "rechecks": int(res.info.get("rechecks", 0))}


def dataset_bench(moe: MoEModel, rows: list[dict], *, target: str | None = None,
                  candidates: int = FSOUR_CANDIDATES, max_iters: int = 1, seed: int = 0,
                  prompt_batch: int | None = None, judge=None,
                  max_new_tokens: int = MAX_NEW_TOKENS, count_products: int = 4) -> dict:
    """Run F-SOUR over ``rows`` one prompt at a time (the fast engine) and all together
    (:func:`explorer.methods.fsour.fsour_many`) and compare; returns a JSON-ready dict.

    ``target``: one target for every row (default: each row's own, else "Sure, here is").
    ``count_products``: rerun that many rows of each path under a product log for the
    GEMM heights (0: skip).
    """
    from explorer.bench.flops import ProductLog
    from explorer.judges import get_judge
    from explorer.methods.fsour import fsour, fsour_many, prompt_batch_size
    judge = judge if judge is not None and not isinstance(judge, str) else get_judge(judge or "keyword")
    prompts = [r["goal"] for r in rows]
    targets = [target or r.get("target") or DEFAULT_TARGET for r in rows]
    opts = dict(candidates=candidates, max_iters=max_iters, seed=seed, judge=judge,
                max_new_tokens=max_new_tokens)
    k = prompt_batch or prompt_batch_size(moe, prompts, targets[0] if targets else DEFAULT_TARGET,
                                          candidates)
    dev = moe.device
    steps: list[list] = [[] for _ in prompts]

    def record(i):
        def on_event(ev):
            if ev.kind in ("step", "improved"):
                steps[i].append((ev.position, ev.layer))
            elif ev.kind == "restart":
                steps[i].append((-1, None))
        return on_event

    reset_peak(dev)
    t, c = time.perf_counter(), time.process_time()
    lone = [fsour(moe, p, target=tg, on_event=record(i), **opts)
            for i, (p, tg) in enumerate(zip(prompts, targets))]
    lone_s, lone_cpu = time.perf_counter() - t, time.process_time() - c
    lone_peak = peak_memory_mb(dev)
    reset_peak(dev)
    stats: dict = {}
    t, c = time.perf_counter(), time.process_time()
    many = fsour_many(moe, prompts, targets, prompt_batch=k, stats=stats, **opts)
    many_s, many_cpu = time.perf_counter() - t, time.process_time() - c
    many_peak = peak_memory_mb(dev)
    a, b = [_summary(r) for r in lone], [_summary(r) for r in many]
    same = [x["route"] == y["route"] and x["passes"] == y["passes"]
            and x["completion"] == y["completion"] for x, y in zip(a, b)]
    cone = sum(_cone_flops(moe, p, tg, st, candidates)
               for p, tg, st in zip(prompts, targets, steps))
    rate = matmul_rate(moe)
    ideal = cone / rate
    n = max(1, len(prompts))
    out = {"model": moe.name, "device": str(dev), "dtype": moe.info.dtype,
           "quantization": moe.info.quantization, "weight_bytes": moe.info.weight_bytes,
           "threads": torch.get_num_threads(), "prompts": len(prompts), "prompt_batch": k,
           "candidates": candidates, "max_iters": max_iters, "seed": seed,
           "target": target or "per row",
           "one_at_a_time": {"seconds": lone_s, "cpu_seconds": lone_cpu,
                             "seconds_per_prompt": lone_s / n,
                             "prompts_per_hour": 3600 * n / max(lone_s, 1e-9),
                             "fraction_of_ideal": ideal / max(lone_s, 1e-9),
                             "peak_memory_mb": lone_peak},
           "multi_prompt": {"seconds": many_s, "cpu_seconds": many_cpu,
                            "seconds_per_prompt": many_s / n,
                            "prompts_per_hour": 3600 * n / max(many_s, 1e-9),
                            "fraction_of_ideal": ideal / max(many_s, 1e-9),
                            "peak_memory_mb": many_peak, "batches": stats.get("batches", 0),
                            "rows_per_batch": stats.get("rows", 0) / max(1, stats.get("batches", 0))},
           "speedup": lone_s / max(many_s, 1e-9),
           "identical_rows": sum(same), "all_identical": all(same),
           "max_logprob_difference": max((abs(x["logprob"] - y["logprob"]) for x, y in zip(a, b)
                                          if x["logprob"] is not None and y["logprob"] is not None),
                                         default=0.0),
           "rechecks": {"one_at_a_time": sum(x["rechecks"] for x in a),
                        "multi_prompt": sum(y["rechecks"] for y in b)},
           "cells": sum(sum(1 for _, lay in st if lay is not None) for st in steps),
           "asr": sum(x["success"] for x in a) / n,
           "cone_gflop": cone / 1e9, "matmul_gflop_s": rate / 1e9, "ideal_seconds": ideal}
    if prompts:  # operator calls of one search (the first row's), as run one at a time
        from explorer.bench.flops import OperatorCount
        with OperatorCount() as ops:
            fsour(moe, prompts[0], target=targets[0], **opts)
        out["operator_calls"] = {"per_search": ops.calls, "besides_views": ops.calls - ops.views,
                                 "row": 0}
    m = min(count_products, len(prompts))
    if m:
        with ProductLog(moe.model) as log_a:
            for p, tg in zip(prompts[:m], targets[:m]):
                fsour(moe, p, target=tg, **opts)
        with ProductLog(moe.model) as log_b:
            fsour_many(moe, prompts[:m], targets[:m], prompt_batch=min(k, m), **opts)
        out["one_at_a_time"]["gemm"] = dict(_gemm_rows(log_a), rows_logged=m)
        out["multi_prompt"]["gemm"] = dict(_gemm_rows(log_b), rows_logged=m)
    return out


def weights_text(b: dict) -> str:
    """The weights line of a bench report (:func:`dataset_bench` or
    :func:`~explorer.bench.runner.run_bench`): the quantization and the bytes as stored."""
    return (f"weights: {b.get('quantization') or 'not quantized'}, "
            f"{b.get('weight_bytes', 0) / 2**20:.1f} MiB as stored")


def dataset_bench_text(b: dict) -> str:
    """The text report of :func:`dataset_bench`."""
    lines = [f"model {b['model']} on {b['device']} ({b['dtype']}, {b['threads']} threads): "
             f"{b['prompts']} prompts, N = {b['candidates']}, {b['max_iters']} restart(s), "
             f"target {b['target']}, {b['cells']} cells searched, ASR {b['asr']:.2f}",
             weights_text(b)]
    for key, name in (("one_at_a_time", "one at a time"), ("multi_prompt", "multi-prompt")):
        r = b[key]
        line = (f"{name:14s} {r['seconds']:8.1f} s = {r['seconds_per_prompt']:.2f} s/prompt, "
                f"{r['prompts_per_hour']:.0f} prompts/h, {100 * r['fraction_of_ideal']:.0f}% of "
                f"ideal, peak {r['peak_memory_mb']:.0f} MB")
        if "gemm" in r and r["gemm"]["mean_rows"] is not None:
            line += (f", {r['gemm']['mean_rows']:.0f} rows per product "
                     f"({r['gemm']['flop_weighted_rows']:.0f} FLOP-weighted)")
        if key == "multi_prompt":
            line += f"; {b['prompt_batch']} prompts per batch, {r['rows_per_batch']:.0f} rows per batch"
        lines.append(line)
    lines.append(f"multi-prompt vs one at a time: x{b['speedup']:.2f} prompts per hour; identical "
                 f"rows {b['identical_rows']}/{b['prompts']}; log-probs within "
                 f"{b['max_logprob_difference']:.1e}; near-tie re-checks "
                 f"{b['rechecks']['one_at_a_time']} / {b['rechecks']['multi_prompt']} "
                 f"({100 * b['rechecks']['one_at_a_time'] / max(1, b['cells']):.2f}% of cells); ideal "
                 f"{b['ideal_seconds']:.1f} s ({b['cone_gflop']:.1f} GFLOP at "
                 f"{b['matmul_gflop_s']:.1f} GFLOP/s)")
    if "operator_calls" in b:
        o = b["operator_calls"]
        lines.append(f"operator calls of one search (row {o['row']}): {o['per_search']:,} "
                     f"({o['besides_views']:,} besides views)")
    return "\n".join(lines)
