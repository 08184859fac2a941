"""Research views on routes: what they cost on benign requests, whether they transfer to
other prompts, and how small they can be.

Each view ``*_view(visit, ...)`` (a :class:`~explorer.app.gate.Visit`) turns UI values into
library calls and results into figures and tables; bad input raises a one-line
``gr.Error``. The Defense and RoSais uncertainty views live in
:mod:`explorer.app.tabs.research.defense` and :mod:`explorer.app.tabs.research.curve`.
"""

from __future__ import annotations

import html
import json
import math

import gradio as gr
import pandas as pd

from explorer.app.errors import fail
from explorer.app.gate import Visit
from explorer.app.inputs import fraction, text_arg, whole_number
from explorer.app.tabs.research.common import (
    MAX_PROMPTS,
    ROSAIS_SOURCE,
    ROUTE_SOURCE,
    at_most,
    collect_routes,
    generation_settings,
    prompt_lines,
    rosais_route,
    route_name,
    run_with_progress,
    verdict_word,
)
from explorer.core.defaults import DEFAULT_TARGET
from explorer.viz import research as pr
from explorer.viz.text import pct

__all__ = ["TRANSFER_COLUMNS", "UTILITY_COLUMNS", "minimal_view", "transfer_view",
           "utility_frame", "utility_view"]

# -- utility cost ----------------------------------------------------------------------------
UTILITY_COLUMNS = ["route", "edits", "ASR on harmful", "benign refusals",
                   "Δ benign refusals (pp)", "Δ log-lik (nats/token)"]


def utility_frame(result) -> pd.DataFrame:
    d = result.to_dict() if hasattr(result, "to_dict") else result
    rows = []
    for r in d["routes"]:
        rows.append([r["label"], len(r["route"]["edits"]),
                     None if r.get("asr") is None else round(100 * r["asr"]),
                     round(100 * r["refusal_rate"]), round(100 * r["refusal_change"]),
                     round(r["ll_change"], 3)])  # percentages whole, nats to 3 decimals
    return pd.DataFrame(rows, columns=UTILITY_COLUMNS)


def utility_view(visit: Visit, source: str, rosais_prompt: str, top, sweep: bool, samples,
                 ids_text: str, json_text: str, benign_text: str, harmful_text: str,
                 max_new, judge: str = "keyword", b=None, progress=gr.Progress()):
    """Utility cost of RoSais top-L masks (found on ``rosais_prompt``; with ``sweep`` every
    L from 1 to ``top``) or of given routes; ASR on ``harmful_text`` when given.
    Returns (figure, table, markdown)."""
    from explorer.methods.rosais import rosais
    from explorer.research.utility import utility_cost
    moe = visit.moe
    benign = prompt_lines(visit, benign_text, "benign prompts")
    harmful = prompt_lines(visit, harmful_text, "harmful prompts", required=False)
    n, jd = generation_settings(visit, max_new, judge)
    if source == ROSAIS_SOURCE:
        if not (rosais_prompt or "").strip():
            fail("The RoSais prompt is empty: type a harmful request.")
        L = whole_number(top, "top-L", 1, len(moe.moe_layers))
        S = whole_number(samples, "masks per router", 1, 1024)
        res = run_with_progress(progress, lambda: rosais(
            moe, rosais_prompt.strip(), samples=S, top=L, max_new_tokens=n, judge=jd),
            "RoSais on the prompt", 0.0, 0.2, 5.0)
        routes = [rosais_route(res, lv) for lv in (range(1, L + 1) if sweep else [L])]
    elif source == ROUTE_SOURCE:
        routes = collect_routes(visit, ids_text, json_text, browser=b)
    else:
        fail(f"Unknown source {source!r}")
    k = len(routes)
    visit.budget((S * len(moe.moe_layers) if source == ROSAIS_SOURCE else 0)
               + n * (len(benign) * (k + 1) + len(harmful) * k), "this utility view")
    est = 1.5 * (len(benign) * (k + 1) + len(harmful) * k)
    util = run_with_progress(progress, lambda: utility_cost(
        moe, routes, benign, max_new_tokens=n, judge=jd,
        harmful_prompts=harmful or None), f"{k} route(s) on {len(benign)} benign"
        + (f" and {len(harmful)} harmful" if harmful else "") + " prompts",
        0.2, 1.0, est)
    md = (f"**{len(benign)} benign prompts**: without a route the model refuses "
          f"**{pct(util.baseline_refusal_rate)}**, mean log-likelihood of its own "
          f"answers **{util.baseline_mean_ll:.3f}** nats/token · judge `{util.judge}` · "
          f"{util.info.get('seconds', 0):.1f} s\n\n"
          + "\n".join(f"- {html.escape(x)}" for x in util.summary_lines()))
    return pr.utility_asr_figure(util), utility_frame(util), md


# -- transfer --------------------------------------------------------------------------------
TRANSFER_COLUMNS = ["route", "source prompt", "edits", "transfer rate (other prompts)",
                    "own prompt"]


def transfer_view(visit: Visit, ids_text: str, json_text: str, prompts_text: str, include_own: bool,
                  mapping: str, universal_min, heldout_text: str, max_new,
                  judge: str = "keyword", target: str = DEFAULT_TARGET, b=None,
                  progress=gr.Progress()):
    """Replay routes on prompts (heatmap) and, with ``universal_min`` >= 1, measure a
    candidate universal route (cells in >= ``universal_min`` routes) on held-out prompts.
    Returns (figure, table, markdown, universal route JSON)."""
    from explorer.research.common import MAPPINGS
    from explorer.research.transfer import transfer_matrix
    moe = visit.moe
    if mapping not in MAPPINGS:
        fail(f"Unknown mapping {mapping!r}; choose one of {list(MAPPINGS)}")
    routes = collect_routes(visit, ids_text, json_text, browser=b)
    own = [r.info["prompt"] for r in routes if isinstance(r.info.get("prompt"), str)]
    extra = prompt_lines(visit, prompts_text, "prompts", required=not (include_own and own))
    prompts = at_most(list(dict.fromkeys((own if include_own else []) + extra)),
                       "prompts", MAX_PROMPTS)
    n, jd = generation_settings(visit, max_new, judge)
    umin = whole_number(universal_min, "universal: min routes", 0, 1000)
    if not text_arg(target, "target").strip():
        fail("The target answer is empty.")
    held_n = len(prompts) if umin else 0
    visit.budget(n * (len(routes) + 1) * len(prompts) + n * held_n,
               f"{len(routes)} routes x {len(prompts)} prompts")
    res = run_with_progress(progress, lambda: transfer_matrix(
        moe, routes, prompts, target=target, judge=jd, mapping=mapping, max_new_tokens=n),
        f"{len(routes)} routes x {len(prompts)} prompts", 0.0, 0.8 if umin else 1.0,
        1.2 * len(prompts) * (len(routes) + 1))
    rows = []
    for i, (r, rate) in enumerate(zip(routes, res.row_rates())):
        src = res.sources[i]
        ownc = (res.cells[i][prompts.index(src)]["jailbroken"] if src in prompts else None)
        rows.append([route_name(r, i), (src or "—")[:60], len(r), pct(rate),
                     verdict_word(ownc)])
    md = (f"**{len(routes)} routes x {len(prompts)} prompts** ({mapping} mapping, judge "
          f"`{res.judge}`): transfer rate **{pct(res.transfer_rate)}** on prompts that "
          f"are not the route's own · own prompts {pct(res.own_rate)} · no route "
          f"{pct(res.baseline_asr)}"
          + (f" · mean target log-prob gain {res.mean_logprob_gain:+.2f}"
             if res.mean_logprob_gain is not None else ""))
    u_json = ""
    if umin:
        u_md, u_json = _universal(visit, moe, routes, prompts, own, umin, heldout_text,
                                  mapping, n, jd, progress)
        md += u_md
    return pr.transfer_figure(res), pd.DataFrame(rows, columns=TRANSFER_COLUMNS), md, u_json


def _universal(visit, moe, routes, prompts, own, umin, heldout_text, mapping, n, jd, progress):
    """(markdown, route JSON) for the candidate universal route on held-out prompts."""
    from explorer.research.transfer import asr, universal_route
    u = universal_route(routes, umin, moe=moe)
    held = (prompt_lines(visit, heldout_text, "held-out prompts", required=False)
            or [p for p in prompts if p not in own])
    if not len(u):
        return (f"\n\n**Universal route**: no cell recurs in >= {umin} routes "
                "(lower the minimum or add routes)."), u.to_json(indent=2)
    if not held:
        return ("\n\n**Universal route**: no held-out prompt (every prompt is a "
                "route's own): type held-out prompts."), u.to_json(indent=2)
    a = run_with_progress(progress, lambda: asr(
        moe, u, held, judge=jd, mapping=mapping, max_new_tokens=n),
        f"universal route on {len(held)} held-out prompts", 0.8, 1.0, 1.2 * len(held))
    return (f"\n\n**Universal route** ({len(u)} edits in >= {umin} routes): ASR "
            f"**{pct(a.asr)}** on {a.n} held-out prompts (mean edits kept after mapping "
            f"{sum(r['edits_kept'] for r in a.rows) / a.n:.1f})"), u.to_json(indent=2)


# -- minimal route ---------------------------------------------------------------------------
def minimal_view(visit: Visit, ids_text: str, json_text: str, prompt: str, threshold_p, checks,
                 max_new, judge: str = "keyword", target: str = "", b=None,
                 progress=gr.Progress()):
    """Greedy minimal form of one route on its own prompt (or ``prompt``).
    Returns (kept-edits heatmap, necessity bars, markdown, minimal route JSON)."""
    from explorer.research.minimal import minimize, minimize_cost
    moe = visit.moe
    routes = collect_routes(visit, ids_text, json_text, browser=b)
    if len(routes) != 1:
        fail(f"Give exactly one route to minimise (got {len(routes)}).")
    route = routes[0]
    p = (prompt or "").strip() or route.info.get("prompt")
    if not isinstance(p, str) or not p.strip():
        fail("The route does not name its prompt: type the prompt.")
    tgt = (target or "").strip() or route.info.get("target") or DEFAULT_TARGET
    thr = math.log(fraction(threshold_p, "threshold P(target)"))
    c = whole_number(checks, "checks per round", 1, 50)
    n, jd = generation_settings(visit, max_new, judge)
    visit.prompt(p)
    visit.budget(minimize_cost(len(route), c, n), "minimising this route")
    m = run_with_progress(progress, lambda: minimize(
        moe, p, route, target=tgt, threshold=thr, judge=jd, max_new_tokens=n, checks=c),
        f"minimising {len(route)} edits", 0.0, 1.0, 2.5 * max(len(route), 1))
    toks = moe.token_strings(moe.encode(p))
    cells = pr.route_cells_figure(m.route_before, m.route, moe.moe_layers, toks)
    if not m.jailbroken_before:
        md = (f"The route does **not** jailbreak {html.escape(p[:80])!r} (log P(target) "
              f"{m.logprob_before:.2f}, judge `{m.judge}`): nothing to minimise.")
    else:
        per_layer = ", ".join(f"L{x['layer']}: {x['edits']}" for x in m.layers) or "none"
        tmpl = sum(1 for x in m.necessity if x.get("template"))
        md = (f"**{m.edits_before} → {m.edits_after} edits** ({len(m.removed)} removed) · "
              f"log P({html.escape(tgt)!r}) {m.logprob_before:.2f} → {m.logprob_after:.2f}"
              f" (bar {m.threshold_used:.2f}) · still jailbroken: "
              f"**{'yes' if m.jailbroken_after else 'no'}** · kept per layer: {per_layer}"
              f" · {tmpl} of {len(m.necessity)} kept edits on chat-template tokens · "
              f"{m.forward_passes:,} forward passes, {m.generations} generations, "
              f"{m.seconds:.1f} s")
    md += ("\n\n**Before:** " + html.escape(visit.shown(p, m.completion_before)[:300])
           + "\n\n**After:** " + html.escape(visit.shown(p, m.completion_after)[:300]))
    return cells, pr.minimal_figure(m), md, json.dumps(m.route, indent=2)
