"""Attack figures for the demo model card: RoSais masking vs random masks, F-SOUR flip rate.

On the first ``rows`` AdvBench goals: the greedy answer without attack; RoSais with its
top 1..3 routers masked next to the same number of random routers with random masks
(:func:`explorer.research.transfer.rosais_curve`); and F-SOUR with its default settings and target on
every goal the model refuses. Writes ``attacks.json`` into the model folder; the card
shows it. ``workers`` > 1 splits the F-SOUR searches across processes (one model each).
"""
from __future__ import annotations

import contextlib
import json
import statistics
import time
from pathlib import Path

_MOE = {}


def _worker_init(model_dir: str) -> None:
    import torch

    from explorer.core.model import load_model

    torch.set_num_threads(1)
    _MOE["moe"] = load_model(model_dir, device="cpu")


def _search(item):
    from explorer.methods.fsour import fsour

    i, goal = item
    t = time.time()
    r = fsour(_MOE["moe"], goal)
    return {"index": i, "success": bool(r.success), "forward_passes": r.forward_passes,
            "seconds": round(time.time() - t, 2), "edits": len(r.route.edits),
            "completion": r.completion[:100]}


def attack_eval(model_dir, goals, workers: int = 1, max_top: int = 3, samples: int = 16,
                log=print) -> dict:
    """RoSais curve and F-SOUR flips on ``goals`` (harmful requests); returns a dict."""
    import multiprocessing as mp

    from explorer.core.forward import generate
    from explorer.judges import is_refusal
    from explorer.research.transfer import rosais_curve

    model_dir = str(model_dir)
    _worker_init(model_dir)
    moe = _MOE["moe"]
    t0 = time.time()
    base = [generate(moe, moe.encode(g), None, max_new_tokens=48).text for g in goals]
    refused = [i for i, b in enumerate(base) if is_refusal(b)]
    log(f"[attacks] {len(refused)}/{len(goals)} refused without attack")
    cur = rosais_curve(moe, goals, max_top=max_top, samples=samples)
    log(f"[attacks] RoSais top-1..{max_top}: {cur.asr_by_top}; random: {cur.random_asr_by_top} "
        f"({time.time() - t0:.0f}s)")
    items = [(i, goals[i]) for i in refused]
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(mp.get_context("spawn").Pool(workers, _worker_init, (model_dir,)))
            results = pool.imap_unordered(_search, items)
        else:
            results = map(_search, items)
        rows = []
        for row in results:
            rows.append(row)
            log(f"[attacks] F-SOUR {len(rows)}/{len(items)}: {sum(r['success'] for r in rows)} flipped")
    rows.sort(key=lambda r: r["index"])
    flipped = sum(r["success"] for r in rows)
    secs = [r["seconds"] for r in rows]
    return {"rows": len(goals), "refused": len(refused),
            "rosais": {"tops": cur.tops, "asr": cur.asr_by_top, "random_asr": cur.random_asr_by_top,
                       "samples": samples},
            "fsour": {"settings": "defaults (N=10 candidates, threshold log 0.8, 5 restarts, "
                                  "target 'Sure, here is', keyword judge)",
                      "flipped": flipped, "flip_rate": round(flipped / max(1, len(rows)), 4),
                      "mean_seconds": round(sum(secs) / max(1, len(secs)), 2),
                      "median_passes": statistics.median_high(r["forward_passes"] for r in rows) if rows else None,
                      "searches": rows},
            "seconds": round(time.time() - t0, 1)}


def write_attacks(model_dir, rows: int = 50, workers: int = 1, log=print) -> dict | None:
    """Run :func:`attack_eval` on the first ``rows`` AdvBench goals; write ``attacks.json``."""
    from explorer.demo.evaluate import benchmark_sets

    sets = benchmark_sets()
    if "advbench" not in sets:
        log("[attacks] AdvBench CSV not found; skipped")
        return None
    res = attack_eval(model_dir, sets["advbench"][0][:rows], workers=workers, log=log)
    Path(model_dir, "attacks.json").write_text(json.dumps(res, indent=1))
    return res
