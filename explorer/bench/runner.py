"""``python -m explorer bench``: latency and search-engine figures on one model.

Prints: trace latency (prompt only and with generation), the overhead of recording
routing on a forward pass (ratio), RoSais time, and F-SOUR fast vs reference on the same
prompts and seed (wall-clock ratio, forward passes, identical-route check).
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING

import torch

from explorer.bench.cost import median_seconds

if TYPE_CHECKING:
    from explorer.core.model import MoEModel

from explorer.bench.prompts import BENCH_PROMPTS


def recording_overhead(moe: MoEModel, prompt: str, repeat: int = 10) -> dict:
    """Median forward time without hooks, with routing recorded, and their ratio."""
    ids = torch.tensor([moe.encode(prompt)], device=moe.device)

    def plain():
        with torch.inference_mode():
            moe.model(input_ids=ids, use_cache=False)

    def recorded():
        with torch.inference_mode(), moe.control(record=True):
            moe.model(input_ids=ids, use_cache=False)
    a, b = median_seconds(plain, repeat), median_seconds(recorded, repeat)
    return {"forward_s": a, "recorded_forward_s": b, "ratio": b / a, "tokens": ids.shape[1]}


def _search_row(moe: MoEModel, prompt: str, engine: str, seed: int, candidates: int, max_iters: int,
                judge=None):
    """One F-SOUR run with its cost figures (FLOPs of full forwards and of the cone)."""
    from explorer.bench.cost import ConeCost, peak_memory_mb, reset_peak
    from explorer.core.defaults import DEFAULT_TARGET
    from explorer.engine.batching import search_batch_size
    from explorer.methods.fsour import fsour
    steps: list[tuple[int, int | None]] = []

    def on_event(ev):
        if ev.kind in ("step", "improved"):
            steps.append((ev.position, ev.layer))
        elif ev.kind == "restart":
            steps.append((-1, None))
    reset_peak(moe.device)
    t = time.perf_counter()
    c = time.process_time()
    res = fsour(moe, prompt, candidates=candidates, max_iters=max_iters, seed=seed,
                engine=engine, max_new_tokens=16, on_event=on_event, judge=judge)
    cpu, wall = time.process_time() - c, time.perf_counter() - t
    n_tgt = len(moe.target_ids(DEFAULT_TARGET))
    cost = ConeCost(moe, len(moe.encode(prompt)) + n_tgt, n_tgt)
    full = cone = 0.0
    for pos, lay in steps:
        if lay is None:
            full += cost.full()
            cone += cost.full()
        else:
            full += candidates * cost.full()
            cone += candidates * cost.cone(pos, lay)
    return {"seconds": wall, "cpu_seconds": cpu, "success": res.success,
            "forward_passes": res.forward_passes, "candidates_per_s": res.forward_passes / wall,
            "cells": len(res.route), "logprob": res.logprob,
            "rechecks": res.info.get("rechecks", 0),
            "recheck_passes": res.info.get("recheck_passes", 0),
            "route": res.route.to_dict()["edits"], "peak_memory_mb": peak_memory_mb(moe.device),
            "full_gflop": full / 1e9, "cone_gflop": cone / 1e9,
            "batch_rows": search_batch_size(moe, cost.T - n_tgt, n_tgt)}


def _counted(moe: MoEModel, rows, seed, candidates, max_iters, judge, cone, fast_seconds) -> dict:
    """The fast engine's searches once more under a :class:`~explorer.bench.flops.ProductLog`:
    the FLOPs its products really performed and how long those products take alone
    (``counted_same_routes``: the logged searches found the timed searches' routes)."""
    from collections import Counter

    from explorer.bench.flops import ProductLog, replay_in_order_seconds, replay_seconds
    logs, same = [], True
    for row in rows:
        with ProductLog(moe.model) as log:
            again = _search_row(moe, row["prompt"], "fast", seed, candidates, max_iters, judge)
        logs.append(log)
        same = same and again["route"] == row["fast"]["route"]
    kinds: Counter = Counter()
    for log in logs:
        kinds.update(log.by_kind())
    counted = sum(kinds.values())
    products = sum(replay_seconds(log) for log in logs)
    in_order = sum(replay_in_order_seconds(log) for log in logs)
    return {"counted_gflop": counted / 1e9,
            "counted_gflop_by_kind": {k: v / 1e9 for k, v in kinds.items()},
            "work_ratio": counted / max(cone, 1.0), "products_seconds": products,
            "products_share": products / max(fast_seconds, 1e-9),
            "products_in_order_seconds": in_order,
            "products_in_order_share": in_order / max(fast_seconds, 1e-9),
            "counted_same_routes": same}


def run_bench(moe: MoEModel, prompts=BENCH_PROMPTS, seed: int = 0, candidates: int = 10,
              max_iters: int = 1, samples: int = 32, reference: bool = True,
              sizes=(64, 512, 2048), orders: int = 0, full_budget: bool = False,
              repeat: int = 1, search: bool = True) -> dict:
    """All figures as one dict (see module docs). ``repeat``: run each F-SOUR search that
    many times, the engines taking turns, and report the median seconds (the runs' times
    are kept in ``seconds_all``): timings on a shared machine are noisy. ``search=False``:
    latencies only (no RoSais, F-SOUR or cone figures), e.g. for a wide model on CPU."""
    from explorer.bench.cost import compare_orders, latencies, matmul_rate
    from explorer.core.trace import trace
    from explorer.judges import NeverJudge
    from explorer.methods.rosais import rosais
    out: dict = {"model": moe.name, "device": str(moe.device), "device_name": _device_name(moe),
                 "dtype": str(next(moe.model.parameters()).dtype).replace("torch.", ""),
                 "quantization": moe.info.quantization, "weight_bytes": moe.info.weight_bytes,
                 "threads": torch.get_num_threads()}
    p0 = prompts[0]
    out["trace_prompt_s"] = median_seconds(lambda: trace(moe, p0, max_new_tokens=0), 3)
    out["trace_generate16_s"] = median_seconds(lambda: trace(moe, p0, max_new_tokens=16), 3)
    out["recording"] = recording_overhead(moe, p0)
    out["latency"] = latencies(moe, sizes) if sizes else []
    if not search:
        return out
    out["rosais"] = {"samples": samples}
    times: dict = {}
    for _ in range(max(1, repeat)):  # engines taking turns, median seconds
        for eng in (("fast", "reference") if reference else ("fast",)):
            t = time.perf_counter()
            r = rosais(moe, p0, samples=samples, seed=seed, top=5, max_new_tokens=16, engine=eng)
            times.setdefault(eng, []).append(time.perf_counter() - t)
            out["rosais"][eng] = {"seconds": statistics.median(times[eng]),
                                  "seconds_all": times[eng], "forward_passes": r.forward_passes}
    out["rosais"]["seconds"] = out["rosais"]["fast"]["seconds"]
    out["rosais"]["forward_passes"] = out["rosais"]["fast"]["forward_passes"]
    rows = []
    judge = NeverJudge() if full_budget else None  # a never-judge walks the whole grid
    engines = ("fast", "reference") if reference else ("fast",)
    for p in prompts:
        row = {"prompt": p}
        runs: dict = {eng: [] for eng in engines}
        for _ in range(max(1, repeat)):
            for eng in engines:
                runs[eng].append(_search_row(moe, p, eng, seed, candidates, max_iters, judge))
        for eng in engines:
            row[eng] = dict(runs[eng][-1], seconds_all=[x["seconds"] for x in runs[eng]])
            row[eng]["seconds"] = statistics.median(row[eng]["seconds_all"])
            row[eng]["cpu_seconds"] = statistics.median(x["cpu_seconds"] for x in runs[eng])
            row[eng]["candidates_per_s"] = row[eng]["forward_passes"] / row[eng]["seconds"]
        if reference:
            row["identical_route"] = row["fast"]["route"] == row["reference"]["route"]
            row["speedup"] = row["reference"]["seconds"] / max(row["fast"]["seconds"], 1e-9)
        rows.append(row)
    out["fsour"] = rows
    out["repeat"] = max(1, repeat)
    rate = matmul_rate(moe)
    tf = sum(r["fast"]["seconds"] for r in rows)
    cone = sum(r["fast"]["cone_gflop"] for r in rows) * 1e9
    full = sum(r["fast"]["full_gflop"] for r in rows) * 1e9
    out["cone"] = {"matmul_gflop_s": rate / 1e9, "cone_gflop": cone / 1e9,
                   "full_gflop": full / 1e9, "flop_ratio_full_to_cone": full / max(cone, 1.0),
                   "ideal_seconds": cone / rate, "fast_seconds": tf,
                   "fraction_of_ideal": (cone / rate) / max(tf, 1e-9)}
    out["cone"].update(_counted(moe, rows, seed, candidates, max_iters, judge, cone, tf))
    if reference:
        tr = sum(r["reference"]["seconds"] for r in rows)
        out["fsour_speedup"] = tr / max(tf, 1e-9)
        out["fsour_cpu_speedup"] = (sum(r["reference"]["cpu_seconds"] for r in rows)
                                    / max(sum(r["fast"]["cpu_seconds"] for r in rows), 1e-9))
        out["fsour_identical_routes"] = all(r["identical_route"] for r in rows)
        out["cone"]["reference_seconds"] = tr
    if orders:
        from explorer.core.prompt_sets import HARMFUL_PROMPTS
        out["orders"] = compare_orders(moe, list(HARMFUL_PROMPTS)[:orders], candidates, 3, seed)
    return out


def _device_name(moe: MoEModel) -> str:
    if moe.device.type == "cuda":
        return torch.cuda.get_device_name(moe.device)
    import platform
    return platform.processor() or platform.machine()
