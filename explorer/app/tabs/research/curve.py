"""The Research tab's RoSais uncertainty view: how much RoSais's best-of-S random masks
depend on luck (per-layer score spread) and the ASR against the number of masked routers.

``rosais_uncertainty_view(visit, ...)`` runs :func:`explorer.research.transfer.rosais_curve` prompt by
prompt (so the bar moves) and merges the per-prompt curves; bad input raises a one-line
``gr.Error``.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from explorer.app.gate import Visit
from explorer.app.inputs import fraction, whole_number
from explorer.app.tabs.research.common import (
    generation_settings,
    prompt_lines,
    run_with_progress,
)
from explorer.core.defaults import MAX_SEED
from explorer.core.errors import InputError
from explorer.viz import research as pr
from explorer.viz.text import pct

__all__ = ["CURVE_COLUMNS", "curve_frame", "merge_curves", "redraw_distribution",
           "rosais_uncertainty_view"]

CURVE_COLUMNS = ["MoE layer", "mean best score", "median mask score", "IQR low", "IQR high",
                 "max"]


def merge_curves(curves: list[dict]) -> dict:
    """One :class:`~explorer.research.transfer.RosaisCurve` dict from per-prompt ones (same model
    and settings): prompts and per-prompt rows concatenated, score distributions pooled,
    ASR and mean scores recomputed."""
    if not curves:
        raise InputError("no curves")
    out = dict(curves[0])
    per = [row for c in curves for row in c["per_prompt"]]
    out["prompts"] = [p for c in curves for p in c["prompts"]]
    out["per_prompt"] = per
    out["distributions"] = [sum((c["distributions"][i] for c in curves), [])
                            for i in range(len(out["moe_layers"]))]
    n = len(per)
    out["asr_by_top"] = [sum(r["jailbroken"][t] for r in per) / n
                         for t in range(len(out["tops"]))]
    out["mean_scores"] = [sum(r["scores"][i] for r in per) / n
                          for i in range(len(out["moe_layers"]))]
    return out


def _quantile(xs: list[float], f: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(f * len(s)))]


def curve_frame(curve: dict) -> pd.DataFrame:
    rows = [[lay, round(m, 2), round(_quantile(d, 0.5), 2), round(_quantile(d, 0.25), 2),
             round(_quantile(d, 0.75), 2), round(max(d), 2)]  # log-prob gains: 2 decimals
            for lay, d, m in zip(curve["moe_layers"], curve["distributions"],
                                 curve["mean_scores"])]
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def rosais_uncertainty_view(visit: Visit, prompts_text: str, max_top, samples, seed, ratio,
                            kind: str, max_new, judge: str = "keyword",
                            progress=gr.Progress()):
    """RoSais on each prompt: per-layer spread of the random-mask scores (box or violin)
    and ASR with the top 1..``max_top`` routers masked.
    Returns (distribution figure, curve figure, table, markdown, curve dict)."""
    from explorer.research.transfer import rosais_curve
    moe = visit.moe
    prompts = prompt_lines(visit, prompts_text, "prompts")
    L = whole_number(max_top, "max routers masked", 1, len(moe.moe_layers))
    S = whole_number(samples, "masks per router", 1, 1024)
    sd = whole_number(seed, "seed", 0, MAX_SEED)
    r = fraction(ratio, "mask ratio", "a number")
    n, jd = generation_settings(visit, max_new, judge)
    visit.budget(len(prompts) * (S * len(moe.moe_layers) + 2 * L * n),
               f"RoSais with {S} masks on {len(prompts)} prompts")
    curves = []
    for i, p in enumerate(prompts):
        c = run_with_progress(progress, lambda p=p: rosais_curve(
            moe, [p], max_top=L, samples=S, seed=sd, mask_ratio=r, max_new_tokens=n,
            judge=jd), f"prompt {i + 1}/{len(prompts)}: RoSais + {L} masked generations",
            i / len(prompts), (i + 1) / len(prompts), 2.0 + 0.7 * L)
        curves.append(c.to_dict())
    curve = merge_curves(curves)
    rank = sorted(zip(curve["moe_layers"], curve["mean_scores"]), key=lambda x: -x[1])
    md = (f"**{len(prompts)} prompts**, {S} random masks per router (ratio {r:g}, seed "
          f"{sd}), judge `{curve['judge']}` · ASR by routers masked: "
          + ", ".join(f"L={t}: {pct(a)}" for t, a in zip(curve["tops"],
                                                        curve["asr_by_top"]))
          + " · layers by mean best score: "
          + ", ".join(f"L{lay} {s:+.2f}" for lay, s in rank))
    return (pr.rosais_distribution_figure(curve, kind=_kind(kind)),
            pr.asr_curve_figure(curve), curve_frame(curve), md, curve)


def _kind(kind: str | None) -> str:
    return "violin" if kind == "violin" else "box"


def redraw_distribution(curve: dict | None, kind: str):
    """The distribution figure for another plot kind, without recomputing."""
    return pr.rosais_distribution_figure(curve, kind=_kind(kind))
