"""The app's Research tab (issue #7): views beyond the paper, on top of the library.

:func:`research_tab` adds a ``Research`` tab with five sub-tabs:

- **Utility cost**: what a route (library ids or route JSON) or RoSais top-L masks do to
  benign requests (refusal rate, log-likelihood per token of the model's own answers),
  next to their ASR on harmful requests (:func:`explorer.utility.utility_cost`).
- **Transfer**: routes x prompts heatmap and a candidate universal route's ASR on held-out
  prompts (:mod:`explorer.transfer`).
- **Minimal route**: before / after edit counts and the kept edits (:mod:`explorer.minimal`).
- **Defense**: ASR of no attack / RoSais masking / a fresh F-SOUR search without and with a
  derived route-disabling defense, and its utility cost (:mod:`explorer.defense`).
- **RoSais uncertainty**: per-layer spread of the random-mask scores and ASR against the
  number of masked routers (:func:`explorer.transfer.rosais_curve`).

Each view is a module-level function ``*_view(ctx, ...)`` (``ctx``: the app's
``Explorer``) that turns UI values into library calls and results into figures and
tables; the tab wires them to buttons. Bad input raises ``gr.Error`` with one line.
Defaults are small (a few prompts, few masks) so each view finishes in well under a
minute on the demo model on a CPU; long calls report progress while they run.
"""

from __future__ import annotations

import html
import json
import math
import re
import threading
import time
from typing import Any, Callable

import gradio as gr
import pandas as pd

from . import plots_research as pr
from .prompts import BENIGN_PROMPTS, HARMFUL_PROMPTS
from .route import Route

MODEL_SLOT = dict(concurrency_limit=1, concurrency_id="model")
FREE = dict(concurrency_limit=None)
UI = dict(api_visibility="private")
DEFAULT_TARGET = "Sure, here is"
MAX_PROMPTS = 50
HOSTED_MAX_PROMPTS = 8  # hosted mode (explorer.hosted): keep each run short
ROSAIS_SOURCE = "RoSais top-L masks"
ROUTE_SOURCE = "routes (library ids / JSON)"
ATTACK_CHOICES = [("no attack", "none"), ("RoSais top-L masking", "rosais"),
                  ("fresh F-SOUR search", "fsour"), ("replay the library routes", "replay")]


# -- helpers shared with the other tabs (explorer.ui_common after the split, else ui) -----
def _common(name: str):
    try:
        from . import ui_common as mod  # type: ignore[attr-defined]
        return getattr(mod, name)
    except (ImportError, AttributeError):
        from . import ui as mod
        return getattr(mod, name)


def user_errors(action: str):
    """The app's ``user_errors`` context manager: any exception -> a one-line ``gr.Error``."""
    return _common("user_errors")(action)


def _gpu(duration: int):
    try:
        return _common("gpu")(duration)
    except (ImportError, AttributeError):
        return lambda fn: fn


def _judges() -> list[str]:
    try:
        return list(_common("usable_judges")())
    except Exception:  # noqa: BLE001 - the keyword judge always works offline
        return ["keyword"]


def _fail(message: str):
    raise gr.Error(html.escape(message), print_exception=False)


# -- input parsing -------------------------------------------------------------------------
def _int(value, name: str, lo: int | None = None, hi: int | None = None) -> int:
    try:
        if value is None or isinstance(value, bool):
            raise ValueError
        f = float(value)
        if not math.isfinite(f) or f != int(f):
            raise ValueError
        v = int(f)
    except (TypeError, ValueError):
        _fail(f"{name} must be a whole number, got {value!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        _fail(f"{name} must lie in {lo if lo is not None else '-∞'}.."
              f"{hi if hi is not None else '∞'}, got {v}")
    return v


def _prob(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        _fail(f"{name} must be a probability, got {value!r}")
    if not 0.0 < v < 1.0:
        _fail(f"{name} must lie strictly between 0 and 1, got {v}")
    return v


def _hosted(ctx) -> bool:
    pol = getattr(ctx, "policy", None)
    return bool(pol is not None and getattr(pol, "enabled", False))


def _max_new(ctx, value) -> int:
    """Max new tokens, capped by the hosted-mode policy when it is on."""
    hi = int(ctx.policy.max_new_tokens) if _hosted(ctx) else 512
    return _int(value, "max new tokens", 1, hi)


def parse_prompts(text: str | None, what: str = "prompts", required: bool = True,
                  limit: int = MAX_PROMPTS) -> list[str]:
    """One prompt per line (blank lines and ``#`` comments skipped, duplicates dropped)."""
    out = list(dict.fromkeys(ln.strip() for ln in (text or "").splitlines()
                             if ln.strip() and not ln.lstrip().startswith("#")))
    if required and not out:
        _fail(f"No {what}: type one per line.")
    if len(out) > limit:
        _fail(f"Too many {what} ({len(out)}); at most {limit} per run.")
    return out


def _prompts(ctx, text, what, required=True) -> list[str]:
    return parse_prompts(text, what, required,
                         HOSTED_MAX_PROMPTS if _hosted(ctx) else MAX_PROMPTS)


def parse_ids(text: str | None) -> list[int]:
    """Route library ids from ``"3, 5 #7"``-like text."""
    out = []
    for tok in re.split(r"[\s,;]+", (text or "").strip()):
        if not tok:
            continue
        tok = tok.lstrip("#")
        if not tok.isdigit() or int(tok) < 1:
            _fail(f"A route id must be a positive whole number, got {tok!r}")
        out.append(int(tok))
    return list(dict.fromkeys(out))


def _route_from_obj(obj: Any) -> Route | None:
    from .rosais import RosaisResult
    if not isinstance(obj, dict):
        _fail("Route JSON must hold objects like {\"edits\": [...], \"info\": {...}}.")
    if "edits" in obj:
        return Route.from_dict(obj)
    if "best_masks" in obj:  # a RoSais result: its own top-L masks
        res = RosaisResult.from_dict(obj)
        r = res.route
        r.info.setdefault("prompt", res.prompt)
        return r
    if isinstance(obj.get("route"), dict):  # an F-SOUR result or an evaluate row
        r = Route.from_dict(obj["route"])
        p = obj.get("prompt") or obj.get("goal")
        if isinstance(p, str) and not r.info.get("prompt"):
            r.info["prompt"] = p
        if "success" in obj:
            r.info["success"] = bool(obj["success"])
        return r
    if "route" in obj and obj["route"] is None:
        return None
    _fail("Not a route: expected an object with 'edits' (or an F-SOUR / RoSais result).")


def parse_route_json(text: str | None) -> list[Route]:
    """Routes from JSON text: one route object, a list of them, JSON lines, or F-SOUR /
    RoSais result objects (``--json`` output of the CLI)."""
    text = (text or "").strip()
    if not text:
        return []
    try:
        data = json.loads(text)
        objs = data if isinstance(data, list) else [data]
    except json.JSONDecodeError as exc:
        try:
            objs = [json.loads(ln) for ln in text.splitlines() if ln.strip()]
        except json.JSONDecodeError:
            _fail(f"The route JSON does not parse: {exc.msg} (line {exc.lineno}, "
                  f"column {exc.colno})")
    return [r for r in (_route_from_obj(o) for o in objs) if r is not None]


def library_routes(ctx, ids: list[int]) -> list[Route]:
    """Stored routes by id, each with its prompt and success in ``info``."""
    out = []
    for i in ids:
        sr = ctx.store.get_route(i)
        r = sr.route.copy()
        if sr.prompt and not isinstance(r.info.get("prompt"), str):
            r.info["prompt"] = sr.prompt
        if sr.success is not None:
            r.info.setdefault("success", bool(sr.success))
        if sr.target and not r.info.get("target"):
            r.info["target"] = sr.target
        r.info.setdefault("library_id", sr.id)
        out.append(r)
    return out


def collect_routes(ctx, ids_text: str | None, json_text: str | None, moe=None,
                   required: bool = True) -> list[Route]:
    """Routes from library ids and route JSON, validated against the loaded model."""
    routes = library_routes(ctx, parse_ids(ids_text)) + parse_route_json(json_text)
    if required and not routes:
        _fail("No route given: type route library ids or paste route JSON "
              "(find routes in the Search tab; they are saved to the library).")
    if len(routes) > MAX_PROMPTS:
        _fail(f"Too many routes ({len(routes)}); at most {MAX_PROMPTS} per run.")
    if moe is not None:
        for r in routes:
            r.validate(moe.info)
    return routes


def _judge(ctx, name: str | None):
    from .transfer import resolve_judge
    name = name or "keyword"
    if _hosted(ctx) and name not in tuple(getattr(ctx.policy, "allowed_judges", ("keyword",))):
        _fail(f"The judge {name!r} is not allowed on this server.")
    return resolve_judge(name)


def _route_name(r: Route, i: int) -> str:
    lib = r.info.get("library_id")
    return f"route {i}" + (f" (library #{lib})" if lib else "")


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


# -- progress while a library call runs -----------------------------------------------------
def run_with_progress(progress, fn: Callable[[], Any], desc: str, lo: float = 0.0,
                      hi: float = 1.0, expected_s: float = 10.0):
    """Run ``fn()`` in a worker thread; meanwhile move the bar from ``lo`` towards ``hi``
    (an exponential approach with time constant ``expected_s``) and show the elapsed time.
    Re-raises ``fn``'s exception here."""
    box: dict[str, Any] = {}

    def work():
        try:
            box["out"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["err"] = exc

    t = threading.Thread(target=work, name="explorer-research", daemon=True)
    t0 = time.monotonic()
    progress(lo, desc=desc)
    t.start()
    while t.is_alive():
        t.join(0.5)
        el = time.monotonic() - t0
        progress(lo + (hi - lo) * (1 - math.exp(-el / max(expected_s, 1e-3))),
                 desc=f"{desc} · {el:.0f} s")
    if "err" in box:
        raise box["err"]
    return box["out"]


# -- (1) utility cost ------------------------------------------------------------------------
UTILITY_COLUMNS = ["route", "edits", "ASR on harmful", "benign refusals",
                   "Δ benign refusals (pp)", "Δ log-lik (nats/token)"]


def utility_frame(result) -> pd.DataFrame:
    d = result.to_dict() if hasattr(result, "to_dict") else result
    rows = []
    for r in d["routes"]:
        rows.append([r["label"], len(r["route"]["edits"]),
                     None if r.get("asr") is None else round(100 * r["asr"], 1),
                     round(100 * r["refusal_rate"], 1), round(100 * r["refusal_change"], 1),
                     round(r["ll_change"], 4)])
    return pd.DataFrame(rows, columns=UTILITY_COLUMNS)


def utility_view(ctx, source: str, rosais_prompt: str, top, sweep: bool, samples,
                 ids_text: str, json_text: str, benign_text: str, harmful_text: str,
                 max_new, judge: str = "keyword", progress=gr.Progress()):
    """Utility cost of RoSais top-L masks (found on ``rosais_prompt``; with ``sweep`` every
    L from 1 to ``top``) or of given routes; ASR on ``harmful_text`` when given.
    Returns (figure, table, markdown)."""
    with user_errors("Utility cost"):
        from .rosais import rosais
        from .utility import utility_cost
        moe = ctx.require()
        benign = _prompts(ctx, benign_text, "benign prompts")
        harmful = _prompts(ctx, harmful_text, "harmful prompts", required=False)
        n = _max_new(ctx, max_new)
        jd = _judge(ctx, judge)
        if source == ROSAIS_SOURCE:
            if not (rosais_prompt or "").strip():
                _fail("The RoSais prompt is empty: type a harmful request.")
            L = _int(top, "top-L", 1, len(moe.moe_layers))
            S = _int(samples, "masks per router", 1, 1024)
            res = run_with_progress(progress, lambda: rosais(
                moe, rosais_prompt.strip(), samples=S, top=L, max_new_tokens=n, judge=jd),
                "RoSais on the prompt", 0.0, 0.2, 5.0)
            routes = []
            for lv in (range(1, L + 1) if sweep else [L]):
                r = res.route_for(lv)
                r.info.setdefault("prompt", res.prompt)
                routes.append(r)
        elif source == ROUTE_SOURCE:
            routes = collect_routes(ctx, ids_text, json_text, moe)
        else:
            _fail(f"Unknown source {source!r}")
        k = len(routes)
        est = 1.5 * (len(benign) * (k + 1) + len(harmful) * k)
        util = run_with_progress(progress, lambda: utility_cost(
            moe, routes, benign, max_new_tokens=n, judge=jd,
            harmful_prompts=harmful or None), f"{k} route(s) on {len(benign)} benign"
            + (f" and {len(harmful)} harmful" if harmful else "") + " prompts",
            0.2, 1.0, est)
        md = (f"**{len(benign)} benign prompts**: without a route the model refuses "
              f"**{_pct(util.baseline_refusal_rate)}**, mean log-likelihood of its own "
              f"answers **{util.baseline_mean_ll:.3f}** nats/token · judge `{util.judge}` · "
              f"{util.info.get('seconds', 0):.1f} s\n\n"
              + "\n".join(f"- {html.escape(x)}" for x in util.summary_lines()))
        return pr.utility_asr_figure(util), utility_frame(util), md


# -- (2) transfer ----------------------------------------------------------------------------
TRANSFER_COLUMNS = ["route", "source prompt", "edits", "transfer rate (other prompts)",
                    "own prompt"]


def transfer_view(ctx, ids_text: str, json_text: str, prompts_text: str, include_own: bool,
                  mapping: str, universal_min, heldout_text: str, max_new,
                  judge: str = "keyword", target: str = DEFAULT_TARGET,
                  progress=gr.Progress()):
    """Replay routes on prompts (heatmap) and, with ``universal_min`` >= 1, measure a
    candidate universal route (cells in >= ``universal_min`` routes) on held-out prompts.
    Returns (figure, table, markdown, universal route JSON)."""
    with user_errors("Transfer"):
        from .transfer import MAPPINGS, asr, transfer_matrix, universal_route
        moe = ctx.require()
        if mapping not in MAPPINGS:
            _fail(f"Unknown mapping {mapping!r}; choose one of {list(MAPPINGS)}")
        routes = collect_routes(ctx, ids_text, json_text, moe)
        own = [r.info["prompt"] for r in routes if isinstance(r.info.get("prompt"), str)]
        extra = _prompts(ctx, prompts_text, "prompts", required=not (include_own and own))
        prompts = list(dict.fromkeys((own if include_own else []) + extra))
        if len(prompts) > MAX_PROMPTS:
            _fail(f"Too many prompts ({len(prompts)}); at most {MAX_PROMPTS} per run.")
        n = _max_new(ctx, max_new)
        umin = _int(universal_min, "universal: min routes", 0, 1000)
        if not (target or "").strip():
            _fail("The target answer is empty.")
        jd = _judge(ctx, judge)
        res = run_with_progress(progress, lambda: transfer_matrix(
            moe, routes, prompts, target=target, judge=jd, mapping=mapping, max_new_tokens=n),
            f"{len(routes)} routes x {len(prompts)} prompts", 0.0, 0.8 if umin else 1.0,
            1.2 * len(prompts) * (len(routes) + 1))
        rates = res.row_rates()
        rows = []
        for i, (r, rate) in enumerate(zip(routes, rates)):
            src = res.sources[i]
            ownc = (res.cells[i][prompts.index(src)]["jailbroken"] if src in prompts else None)
            rows.append([_route_name(r, i), (src or "—")[:60], len(r),
                         _pct(rate), {True: "jailbroken", False: "not jailbroken",
                                      None: "—"}[ownc]])
        md = (f"**{len(routes)} routes x {len(prompts)} prompts** ({mapping} mapping, judge "
              f"`{res.judge}`): transfer rate **{_pct(res.transfer_rate)}** on prompts that "
              f"are not the route's own · own prompts {_pct(res.own_rate)} · no route "
              f"{_pct(res.baseline_asr)}"
              + (f" · mean target log-prob gain {res.mean_logprob_gain:+.2f}"
                 if res.mean_logprob_gain is not None else ""))
        u_json = ""
        if umin:
            u = universal_route(routes, umin, moe=moe)
            u_json = u.to_json(indent=2)
            held = (_prompts(ctx, heldout_text, "held-out prompts", required=False)
                    or [p for p in prompts if p not in own])
            if len(u) and held:
                a = run_with_progress(progress, lambda: asr(
                    moe, u, held, judge=jd, mapping=mapping, max_new_tokens=n),
                    f"universal route on {len(held)} held-out prompts", 0.8, 1.0,
                    1.2 * len(held))
                md += (f"\n\n**Universal route** ({len(u)} edits in >= {umin} routes): ASR "
                       f"**{_pct(a.asr)}** on {a.n} held-out prompts "
                       f"(mean edits kept after mapping "
                       f"{sum(r['edits_kept'] for r in a.rows) / a.n:.1f})")
            elif not len(u):
                md += (f"\n\n**Universal route**: no cell recurs in >= {umin} routes "
                       "(lower the minimum or add routes).")
            else:
                md += ("\n\n**Universal route**: no held-out prompt (every prompt is a "
                       "route's own): type held-out prompts.")
        return pr.transfer_figure(res), pd.DataFrame(rows, columns=TRANSFER_COLUMNS), md, u_json


# -- (3) minimal route -----------------------------------------------------------------------
def minimal_view(ctx, ids_text: str, json_text: str, prompt: str, threshold_p, checks,
                 max_new, judge: str = "keyword", target: str = "",
                 progress=gr.Progress()):
    """Greedy minimal form of one route on its own prompt (or ``prompt``).
    Returns (kept-edits heatmap, necessity bars, markdown, minimal route JSON)."""
    with user_errors("Minimal route"):
        from .minimal import minimize
        moe = ctx.require()
        routes = collect_routes(ctx, ids_text, json_text, moe)
        if len(routes) != 1:
            _fail(f"Give exactly one route to minimise (got {len(routes)}).")
        route = routes[0]
        p = (prompt or "").strip() or route.info.get("prompt")
        if not isinstance(p, str) or not p.strip():
            _fail("The route does not name its prompt: type the prompt.")
        tgt = (target or "").strip() or route.info.get("target") or DEFAULT_TARGET
        thr = math.log(_prob(threshold_p, "threshold P(target)"))
        c = _int(checks, "checks per round", 1, 50)
        n = _max_new(ctx, max_new)
        jd = _judge(ctx, judge)
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
        md += ("\n\n**Before:** " + html.escape(m.completion_before[:300])
               + "\n\n**After:** " + html.escape(m.completion_after[:300]))
        return cells, pr.minimal_figure(m), md, json.dumps(m.route, indent=2)


# -- (4) defense -----------------------------------------------------------------------------
DEFENSE_COLUMNS = ["attack", "prompts", "ASR without defense", "ASR with defense"]


def defense_view(ctx, derive_text: str, ids_text: str, defense_json: str, attack_text: str,
                 benign_text: str, attacks, samples, top, candidates, max_iters, max_new,
                 judge: str = "keyword", progress=gr.Progress()):
    """Derive a defense from evidence (RoSais + F-SOUR on ``derive_text`` prompts, library
    routes) or take ``defense_json``; measure each attack's ASR on ``attack_text`` without
    and with it, and its utility cost on ``benign_text``.
    Returns (figure, table, markdown, defense route JSON)."""
    with user_errors("Defense"):
        from .defense import derive_defense, evaluate_defense, gather_evidence
        from .utility import utility_cost
        moe = ctx.require()
        attacks = [a for a in (attacks or []) if a]
        valid = {v for _, v in ATTACK_CHOICES}
        bad = [a for a in attacks if a not in valid]
        if bad or not attacks:
            _fail(f"Unknown attack {bad[0]!r}" if bad else "Tick at least one attack.")
        derive = _prompts(ctx, derive_text, "evidence prompts", required=False)
        routes = library_routes(ctx, parse_ids(ids_text))
        harmful = _prompts(ctx, attack_text, "harmful prompts to attack")
        benign = _prompts(ctx, benign_text, "benign prompts", required=False)
        S = _int(samples, "RoSais masks per router", 1, 1024)
        L = _int(top, "RoSais top-L", 1, len(moe.moe_layers))
        N = _int(candidates, "F-SOUR candidates", 1, 256)
        It = _int(max_iters, "F-SOUR restarts", 1, 20)
        n = _max_new(ctx, max_new)
        jd = _judge(ctx, judge)
        if "replay" in attacks and not routes:
            _fail("The replay attack needs library routes (type their ids).")
        given = parse_route_json(defense_json)
        if len(given) > 1:
            _fail("Paste one defense route.")
        if not given and not (derive or routes):
            _fail("Give evidence (prompts to attack, or library route ids) or a defense "
                  "route.")
        steps = (0 if given else len(derive)) + 1 + len(attacks) + bool(benign)
        done = 0
        rosais_results: list = []
        for p in derive if not given else []:
            r2, f2 = run_with_progress(progress, lambda p=p: gather_evidence(
                moe, [p], samples=S, candidates=N, max_iters=It, max_new_tokens=n, judge=jd),
                f"evidence: RoSais + F-SOUR on {p[:30]!r}", done / steps, (done + 1) / steps,
                3.0 + 3.0 * N * It)
            rosais_results += r2
            routes += f2
            done += 1
        if given:
            defense = given[0]
            defense.validate(moe.info)
            if any(e.mode != "mask" for e in defense.edits):
                _fail("A defense route holds only mask edits.")
        else:
            defense = derive_defense(moe, rosais_results, routes)
        done += 1
        if not len(defense):
            _fail("The evidence names no cell to forbid: add evidence prompts or routes "
                  f"(found {len(routes)} successful routes, {len(rosais_results)} RoSais "
                  "results).")
        insample = sorted(set(harmful) & (set(derive) | {r.info.get("prompt") for r in routes}))
        table, out_attacks = {}, []
        for a in attacks:
            per = (S * len(moe.moe_layers) / 30 + 2) if a == "rosais" else \
                (3.0 * N * It if a == "fsour" else 1.0)
            res = run_with_progress(progress, lambda a=a: evaluate_defense(
                moe, defense, harmful, None, attacks=[a],
                routes=routes if a == "replay" else (), rosais_top=L, samples=S,
                candidates=N, max_iters=It, max_new_tokens=n, judge=jd),
                f"attack {a!r} without and with the defense", done / steps,
                (done + 1) / steps, 2 * per * len(harmful))
            table.update(res.table)
            out_attacks += res.attacks
            done += 1
        util = None
        if benign:
            util = run_with_progress(progress, lambda: utility_cost(
                moe, defense, benign, max_new_tokens=n, judge=jd),
                f"utility cost on {len(benign)} benign prompts", done / steps, 1.0,
                2.0 * len(benign)).to_dict()
        result = {"defense": defense.to_dict(), "prompts": harmful, "attacks": out_attacks,
                  "table": table, "utility": util}
        rows = []
        for a, t in table.items():
            n_rows = next((x["n"] for x in out_attacks if x["attack"] == a), 0)
            rows.append([a, n_rows, _pct(t.get("before")), _pct(t.get("after"))])
        cells = "; ".join(f"L{e.layer} forbid {list(e.experts)}" for e in defense.edits)
        md = (f"**Defense:** {cells} (evidence: {len(routes)} routes, {len(rosais_results)} "
              f"RoSais results{'; given route' if given else ''}) · {len(harmful)} harmful "
              f"prompts attacked · judge `{jd.name if hasattr(jd, 'name') else 'keyword'}`")
        if util:
            md += (f"\n\n**Utility cost** on {len(benign)} benign prompts: refusals "
                   f"{_pct(util['baseline_refusal_rate'])} → "
                   f"{_pct(util['routes'][0]['refusal_rate'])}, ΔLL "
                   f"{util['ll_change']:+.3f} nats/token")
        if insample:
            md += (f"\n\n⚠ {len(insample)} attacked prompt(s) also gave evidence: those "
                   "figures are in-sample.")
        return (pr.defense_overview_figure(result), pd.DataFrame(rows, columns=DEFENSE_COLUMNS),
                md, defense.to_json(indent=2))


# -- (5) RoSais uncertainty ----------------------------------------------------------------
CURVE_COLUMNS = ["MoE layer", "mean best score", "median mask score", "IQR low", "IQR high",
                 "max"]


def merge_curves(curves: list[dict]) -> dict:
    """One :class:`~explorer.transfer.RosaisCurve` dict from per-prompt ones (same model
    and settings): prompts and per-prompt rows concatenated, score distributions pooled,
    ASR and mean scores recomputed."""
    if not curves:
        raise ValueError("no curves")
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
    rows = [[lay, round(m, 4), round(_quantile(d, 0.5), 4), round(_quantile(d, 0.25), 4),
             round(_quantile(d, 0.75), 4), round(max(d), 4)]
            for lay, d, m in zip(curve["moe_layers"], curve["distributions"],
                                 curve["mean_scores"])]
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def rosais_uncertainty_view(ctx, prompts_text: str, max_top, samples, seed, ratio,
                            kind: str, max_new, judge: str = "keyword",
                            progress=gr.Progress()):
    """RoSais on each prompt: per-layer spread of the random-mask scores (box or violin)
    and ASR with the top 1..``max_top`` routers masked.
    Returns (distribution figure, curve figure, table, markdown, curve dict)."""
    with user_errors("RoSais uncertainty"):
        from .transfer import rosais_curve
        moe = ctx.require()
        prompts = _prompts(ctx, prompts_text, "prompts")
        L = _int(max_top, "max routers masked", 1, len(moe.moe_layers))
        S = _int(samples, "masks per router", 1, 1024)
        sd = _int(seed, "seed", 0, 2**32 - 1)
        try:
            r = float(ratio)
        except (TypeError, ValueError):
            _fail(f"mask ratio must be a number, got {ratio!r}")
        if not 0.0 < r < 1.0:
            _fail("mask ratio must lie strictly between 0 and 1")
        n = _max_new(ctx, max_new)
        jd = _judge(ctx, judge)
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
              + ", ".join(f"L={t}: {_pct(a)}" for t, a in zip(curve["tops"],
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


# -- the tab ---------------------------------------------------------------------------------
def library_md(ctx, limit: int = 12) -> str:
    """A short list of the newest library routes (ids to type into the views)."""
    try:
        items = ctx.store.list_routes(limit=limit)
    except Exception as exc:  # noqa: BLE001 - a broken store must not break the tab
        return f"Route library unavailable: {html.escape(str(exc).splitlines()[0][:200])}"
    if not items:
        return ("The route library is empty: find routes in the **Search** tab (they are "
                "saved there), or paste route JSON.")
    rows = [f"`#{r.id}` {html.escape(r.prompt[:50])} · {r.n_edits} edits · "
            f"{ {True: 'jailbroken', False: 'not jailbroken', None: '?'}[r.success]} · "
            f"{r.source}" for r in items]
    return "**Newest library routes:**  \n" + "  \n".join(rows)


def _route_inputs(prefix: str):
    with gr.Row():
        ids = gr.Textbox(label="route library ids (comma-separated)", placeholder="e.g. 1, 2",
                         scale=1, elem_id=f"{prefix}-ids")
        js = gr.Textbox(label="or route JSON (a route, a list, JSON lines, or F-SOUR / RoSais "
                              "--json output)", lines=3, max_lines=12, scale=2,
                        elem_id=f"{prefix}-json")
    return ids, js


def research_tab(ctx) -> None:
    """Add the ``Research`` tab (inside an open ``gr.Blocks`` / ``gr.Tabs``)."""
    judges = _judges()
    if _hosted(ctx):
        allowed = tuple(getattr(ctx.policy, "allowed_judges", ("keyword",)))
        judges = [j for j in judges if j in allowed] or ["keyword"]
    harm4 = "\n".join(HARMFUL_PROMPTS[:4])
    with gr.Tab("Research", id="research") as tab:
        gr.Markdown("Beyond the paper: what routes cost on benign requests, whether they "
                    "transfer, how small they can be, whether disabling the experts they use "
                    "defends the model, and how noisy RoSais is. Prompts: one per line. "
                    "Defaults are small so each view finishes in well under a minute on the "
                    "demo model.")
        with gr.Row():
            judge = gr.Dropdown(judges, value="keyword", label="judge", scale=1,
                                elem_id="research-judge")
            hi = min(128, int(ctx.policy.max_new_tokens)) if _hosted(ctx) else 128
            max_new = gr.Slider(min(4, hi), hi, value=min(24, hi), step=1,
                                label="max new tokens (greedy answers judged)", scale=2,
                                elem_id="research-max-new")
        with gr.Accordion("Route library", open=False):
            lib = gr.Markdown(library_md(ctx))
            lib_btn = gr.Button("Refresh", size="sm")
        with gr.Tabs():
            # ---------------------------------------------------------- utility
            with gr.Tab("Utility cost", id="research-utility"):
                gr.Markdown("How much a route hurts normal use: the benign refusal rate and "
                            "the log-likelihood per token of the model's own benign answers, "
                            "with and without the route, next to the route's ASR.")
                u_source = gr.Radio([ROSAIS_SOURCE, ROUTE_SOURCE], value=ROSAIS_SOURCE,
                                    label="route source", elem_id="utility-source")
                with gr.Row():
                    u_prompt = gr.Textbox(HARMFUL_PROMPTS[0], label="RoSais: harmful prompt "
                                          "to score routers on", scale=3)
                    u_top = gr.Slider(1, 16, value=2, step=1, label="top-L routers masked")
                    u_sweep = gr.Checkbox(False, label="every L from 1 to L")
                    u_samples = gr.Slider(1, 128, value=16, step=1, label="masks per router")
                u_ids, u_json = _route_inputs("utility")
                with gr.Row():
                    u_benign = gr.Textbox("\n".join(BENIGN_PROMPTS[:4]), lines=4,
                                          label="benign prompts")
                    u_harm = gr.Textbox(harm4, lines=4, label="harmful prompts for the ASR "
                                        "(empty: skip)")
                u_btn = gr.Button("Measure utility cost", variant="primary",
                                  elem_id="utility-btn")
                u_plot = gr.Plot(pr.utility_asr_figure(None), label="ASR vs utility cost")
                u_md = gr.Markdown("")
                u_table = gr.Dataframe(pd.DataFrame(columns=UTILITY_COLUMNS),
                                       interactive=False, wrap=True)

            # ---------------------------------------------------------- transfer
            with gr.Tab("Transfer", id="research-transfer"):
                gr.Markdown("Replay routes found on one prompt on other prompts (positions "
                            "moved by the mapping); a route's own prompt is outlined. A "
                            "candidate universal route keeps the cells that recur across "
                            "routes and is measured on held-out prompts.")
                t_ids, t_json = _route_inputs("transfer")
                with gr.Row():
                    t_prompts = gr.Textbox(harm4, lines=4, label="prompts to replay on",
                                           scale=2)
                    with gr.Column(scale=1):
                        t_own = gr.Checkbox(True, label="also the routes' own prompts")
                        t_map = gr.Radio(["end", "template", "absolute"], value="end",
                                         label="position mapping")
                        t_target = gr.Textbox(DEFAULT_TARGET, label="target answer prefix")
                with gr.Row():
                    t_umin = gr.Slider(0, 10, value=2, step=1, label="universal route: cells "
                                       "in at least this many routes (0 = off)")
                    t_held = gr.Textbox("", lines=2, label="held-out prompts (empty: the "
                                        "prompts that are no route's own)", scale=2)
                t_btn = gr.Button("Run transfer", variant="primary", elem_id="transfer-btn")
                t_plot = gr.Plot(pr.transfer_figure(None), label="routes x prompts")
                t_md = gr.Markdown("")
                t_table = gr.Dataframe(pd.DataFrame(columns=TRANSFER_COLUMNS),
                                       interactive=False, wrap=True)
                with gr.Accordion("Universal route JSON", open=False):
                    t_univ = gr.Code("", language="json")

            # ---------------------------------------------------------- minimal
            with gr.Tab("Minimal route", id="research-minimal"):
                gr.Markdown("Greedy backward elimination: drop edits while the route still "
                            "reaches the target and the judge still calls the answer "
                            "jailbroken. Cost grows with the size of the route (on the demo "
                            "model: seconds for 40 edits, up to a minute or so for 100).")
                m_ids, m_json = _route_inputs("minimal")
                with gr.Row():
                    m_prompt = gr.Textbox("", label="prompt (empty: the route's own)", scale=2)
                    m_target = gr.Textbox("", label="target (empty: the route's own, else "
                                          f"{DEFAULT_TARGET!r})")
                    m_thr = gr.Slider(0.01, 0.99, value=0.8, step=0.01,
                                      label="threshold P(target)")
                    m_checks = gr.Slider(1, 10, value=2, step=1,
                                         label="generations tried per round")
                m_btn = gr.Button("Minimise", variant="primary", elem_id="minimal-btn")
                m_md = gr.Markdown("")
                with gr.Row():
                    m_cells = gr.Plot(pr.route_cells_figure(None, None, []),
                                      label="kept edits", scale=3)
                    m_nec = gr.Plot(pr.minimal_figure(None), label="what each kept edit is "
                                    "worth", scale=2)
                with gr.Accordion("Minimal route JSON", open=False):
                    m_route = gr.Code("", language="json")

            # ---------------------------------------------------------- defense
            with gr.Tab("Defense", id="research-defense"):
                gr.Markdown("Safety-aware route disabling: forbid, model-wide, the (layer, "
                            "expert) cells that attacks rely on (from RoSais and F-SOUR on the "
                            "evidence prompts, and from library routes), then attack held-out "
                            "prompts without and with the defense.")
                with gr.Row():
                    d_derive = gr.Textbox("\n".join(HARMFUL_PROMPTS[:2]), lines=3,
                                          label="evidence prompts (RoSais + F-SOUR)")
                    d_prompts = gr.Textbox("\n".join(HARMFUL_PROMPTS[2:4]), lines=3,
                                           label="held-out harmful prompts to attack")
                    d_benign = gr.Textbox("\n".join(BENIGN_PROMPTS[:3]), lines=3,
                                          label="benign prompts (utility cost; empty: skip)")
                with gr.Row():
                    d_ids = gr.Textbox("", label="evidence: library route ids")
                    d_json = gr.Textbox("", lines=2, label="or a defense route JSON to "
                                        "evaluate (mask edits)", scale=2)
                with gr.Row():
                    d_attacks = gr.CheckboxGroup(ATTACK_CHOICES, value=["none", "rosais",
                                                                        "fsour"],
                                                 label="attacks", scale=2)
                    d_samples = gr.Slider(1, 64, value=8, step=1, label="RoSais masks per "
                                          "router")
                    d_top = gr.Slider(1, 16, value=2, step=1, label="RoSais top-L")
                    d_cand = gr.Slider(1, 32, value=4, step=1, label="F-SOUR candidates")
                    d_iters = gr.Slider(1, 5, value=1, step=1, label="F-SOUR restarts")
                d_btn = gr.Button("Derive and evaluate", variant="primary",
                                  elem_id="defense-btn")
                d_plot = gr.Plot(pr.defense_overview_figure(None), label="ASR and cost")
                d_md = gr.Markdown("")
                d_table = gr.Dataframe(pd.DataFrame(columns=DEFENSE_COLUMNS),
                                       interactive=False)
                with gr.Accordion("Defense route JSON", open=False):
                    d_route = gr.Code("", language="json")

            # ---------------------------------------------------------- rosais uncertainty
            with gr.Tab("RoSais uncertainty", id="research-rosais"):
                gr.Markdown("RoSais keeps only the best of S random masks per router: the "
                            "spread shows how much that best depends on luck. The curve "
                            "masks the top 1..L routers of each prompt's ranking.")
                with gr.Row():
                    c_prompts = gr.Textbox(harm4, lines=4, label="harmful prompts", scale=2)
                    with gr.Column(scale=1):
                        c_top = gr.Slider(1, 16, value=4, step=1, label="max routers masked")
                        c_samples = gr.Slider(1, 128, value=16, step=1,
                                              label="masks per router")
                        c_ratio = gr.Slider(0.05, 0.95, value=0.5, step=0.05,
                                            label="mask ratio")
                        c_seed = gr.Number(0, precision=0, label="seed")
                        c_kind = gr.Radio(["box", "violin"], value="box", label="plot")
                c_btn = gr.Button("Run RoSais on the prompts", variant="primary",
                                  elem_id="rosais-curve-btn")
                c_md = gr.Markdown("")
                with gr.Row():
                    c_dist = gr.Plot(pr.rosais_distribution_figure(None),
                                     label="mask scores per layer")
                    c_curve = gr.Plot(pr.asr_curve_figure(None), label="ASR vs routers masked")
                c_table = gr.Dataframe(pd.DataFrame(columns=CURVE_COLUMNS), interactive=False)
                c_state = gr.State(None)

        # -------------------------------------------------------------- wiring
        def refresh_lib():
            return library_md(ctx)

        lib_btn.click(refresh_lib, None, [lib], **FREE, **UI)
        tab.select(refresh_lib, None, [lib], **FREE, **UI)

        @_gpu(120)
        def on_utility(source, prompt, top, sweep, samples, ids, js, benign, harm, n, jd,
                       progress=gr.Progress()):
            return utility_view(ctx, source, prompt, top, sweep, samples, ids, js, benign,
                                harm, n, jd, progress=progress)

        u_btn.click(on_utility, [u_source, u_prompt, u_top, u_sweep, u_samples, u_ids, u_json,
                                 u_benign, u_harm, max_new, judge],
                    [u_plot, u_table, u_md], **MODEL_SLOT, **UI)

        @_gpu(120)
        def on_transfer(ids, js, prompts, own, mapping, umin, held, n, jd, target,
                        progress=gr.Progress()):
            return transfer_view(ctx, ids, js, prompts, own, mapping, umin, held, n, jd,
                                 target, progress=progress)

        t_btn.click(on_transfer, [t_ids, t_json, t_prompts, t_own, t_map, t_umin, t_held,
                                  max_new, judge, t_target],
                    [t_plot, t_table, t_md, t_univ], **MODEL_SLOT, **UI)

        @_gpu(240)
        def on_minimal(ids, js, prompt, thr, checks, n, jd, target, progress=gr.Progress()):
            return minimal_view(ctx, ids, js, prompt, thr, checks, n, jd, target,
                                progress=progress)

        m_btn.click(on_minimal, [m_ids, m_json, m_prompt, m_thr, m_checks, max_new, judge,
                                 m_target],
                    [m_cells, m_nec, m_md, m_route], **MODEL_SLOT, **UI)

        @_gpu(240)
        def on_defense(derive, ids, js, prompts, benign, attacks, samples, top, cand, iters,
                       n, jd, progress=gr.Progress()):
            return defense_view(ctx, derive, ids, js, prompts, benign, attacks, samples, top,
                                cand, iters, n, jd, progress=progress)

        d_btn.click(on_defense, [d_derive, d_ids, d_json, d_prompts, d_benign, d_attacks,
                                 d_samples, d_top, d_cand, d_iters, max_new, judge],
                    [d_plot, d_table, d_md, d_route], **MODEL_SLOT, **UI)

        @_gpu(120)
        def on_curve(prompts, top, samples, seed, ratio, kind, n, jd, progress=gr.Progress()):
            return rosais_uncertainty_view(ctx, prompts, top, samples, seed, ratio, kind, n,
                                           jd, progress=progress)

        c_btn.click(on_curve, [c_prompts, c_top, c_samples, c_seed, c_ratio, c_kind, max_new,
                               judge],
                    [c_dist, c_curve, c_table, c_md, c_state], **MODEL_SLOT, **UI)
        c_kind.change(redraw_distribution, [c_state, c_kind], [c_dist], **FREE, **UI)


__all__ = ["collect_routes", "defense_view", "merge_curves", "minimal_view", "parse_prompts",
           "parse_route_json", "research_tab", "rosais_uncertainty_view", "transfer_view",
           "utility_view"]
