"""Utility cost of a route: what it does to benign requests.

For each benign prompt the model first answers greedily without the route (its OWN
answer). Then, with the route mapped onto the prompt (:func:`explorer.research.transfer.map_route`,
end-anchored by default; whole-prompt masks such as RoSais's apply unchanged):

- compliance: the judge's refusal flag on the greedy answer with the route versus
  without it; ``refusal_change`` is the difference of refusal rates (positive = the route
  makes the model refuse benign requests more often);
- likelihood: the mean log-likelihood per token of the model's own unmodified answer,
  teacher-forced under the route versus without it; ``ll_change`` (nats per token,
  negative = the route makes the model's normal answers less likely).

With ``harmful_prompts`` each route's ASR on them is measured too, for the summary line
"flips N% of harmful prompts at the cost of +X pp benign refusals, ΔLL Y nats/token".
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from explorer.core.chat import check_system
from explorer.core.defaults import RESEARCH_MAX_NEW_TOKENS
from explorer.core.errors import InputError
from explorer.core.forward import generate, target_logprob
from explorer.core.paths import shared_data_dir
from explorer.core.route import Route
from explorer.research.common import (
    ResultMixin,
    as_route,
    defense_dict,
    judge_name,
    map_route,
    prompt_list,
    resolve_judge,
)
from explorer.research.transfer import asr

if TYPE_CHECKING:
    from explorer.core.model import MoEModel


def benign_prompts(include_jbb: bool = True, limit: int | None = None,
                   data_dir: str | Path | None = None) -> list[str]:
    """The project's BENIGN_PROMPTS, plus JailbreakBench's benign split when its CSV
    (``jbb_benign_behaviors.csv`` in ``data_dir``, default
    :func:`~explorer.core.paths.shared_data_dir`) is present."""
    from explorer.core.prompt_sets import BENIGN_PROMPTS
    out = list(BENIGN_PROMPTS)
    d = shared_data_dir(data_dir)
    if include_jbb and d is not None and (d / "jbb_benign_behaviors.csv").exists():
        from explorer.evaluation.datasets import load_goals
        out += [r["goal"] for r in load_goals(d / "jbb_benign_behaviors.csv")]
    return out[:limit] if limit else out


@dataclass
class UtilityResult(ResultMixin):
    """Benign-prompt cost of one or more routes (see the module docs).

    ``baseline[j]``: the unrouted answer to ``prompts[j]`` (``completion``, ``refusal``,
    ``answer_tokens``, ``mean_ll``). ``routes[i]``: ``label``, ``route`` (JSON),
    ``refusal_rate``, ``refusal_change``, ``mean_ll``, ``ll_change``, ``asr`` (or None)
    and ``rows`` (per prompt: ``refusal``, ``completion``, ``mean_ll``, ``delta_ll``,
    ``edits_kept``). ``refusal_change`` / ``ll_change`` at the top level are means over
    routes.
    """

    prompts: list[str]
    baseline: list[dict]
    routes: list[dict]
    baseline_refusal_rate: float
    baseline_mean_ll: float
    refusal_change: float
    ll_change: float
    mapping: str
    judge: str
    harmful_prompts: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def summary_lines(self) -> list[str]:
        """One line per route: "flips N% of harmful prompts at the cost of ..."."""
        out = []
        for r in self.routes:
            cost = (f"{100 * r['refusal_change']:+.1f} pp benign refusals "
                    f"({100 * self.baseline_refusal_rate:.0f}% -> {100 * r['refusal_rate']:.0f}%)"
                    f", ΔLL {r['ll_change']:+.3f} nats/token on the model's own answers")
            head = (f"flips {100 * r['asr']:.0f}% of {len(self.harmful_prompts)} harmful prompts "
                    f"at the cost of " if r.get("asr") is not None else "costs ")
            out.append(f"{r['label']}: {head}{cost}")
        return out


def _routes_of(route_or_routes, top: int | None) -> list[Route]:
    from explorer.methods.rosais import RosaisResult
    items = (route_or_routes if isinstance(route_or_routes, (list, tuple))
             else [route_or_routes])
    out = []
    for x in items:
        if isinstance(x, RosaisResult):
            r = x.route_for(top if top is not None else len(x.top_layers))
            r.info.setdefault("prompt", x.prompt)
            out.append(r)
        else:
            out.append(as_route(x))
    if not out:
        raise InputError("no routes")
    return out


def _label(r: Route, i: int) -> str:
    m = r.info.get("method") or "route"
    extra = f" top-{r.info['top']}" if m == "rosais" and "top" in r.info else ""
    src = r.info.get("prompt")
    src = f" from {src[:40]!r}" if isinstance(src, str) else ""
    return f"#{i} {m}{extra}{src} ({len(r)} edits)"


def utility_cost(moe: MoEModel, route_or_routes, benign_prompts: Sequence[str], max_new_tokens: int = RESEARCH_MAX_NEW_TOKENS,
                 mapping: str = "end", judge=None, harmful_prompts: Sequence[str] | None = None,
                 top: int | None = None, batch_size: int = 16,
                 system: str | None = None) -> UtilityResult:
    """The benign-prompt cost of a route, a RoSais result (its top-``top`` masks) or a list
    of them (see the module docs). ``harmful_prompts`` adds each route's ASR. Prompts are
    templated with ``system``; a defense with a system prompt of its own
    (:attr:`~explorer.core.route.Route.defense_system`, e.g. the self-reminder) is measured
    with the prompts templated under it (:meth:`~explorer.core.route.Route.system_under`),
    its likelihoods are those of the model's own undefended answers after that prompt.

    Runs under whatever defense is in force (``with moe.defended(...)``, both with and
    without the route): to measure a defense's own cost, run it undefended and pass the
    defense here.
    """
    routes = _routes_of(route_or_routes, top)
    prompts = prompt_list(benign_prompts)
    judge = resolve_judge(judge)
    system = check_system(system)
    systems = [r.system_under(system) for r in routes]
    t0 = time.perf_counter()
    baseline, per = [], [[] for _ in routes]
    for p in prompts:
        ids = moe.encode(p, system)
        gen = generate(moe, ids, None, max_new_tokens=max_new_tokens)
        ans = gen.ids[gen.prompt_len:]
        v = judge.judge(p, gen.text)
        mapped = [map_route(moe, r, p, mapping, system=s) for r, s in zip(routes, systems)]
        own_ids = {system: ids}
        own_ids.update((s, moe.encode(p, s)) for s in systems if s not in own_ids)
        lls = [0.0] * (len(routes) + 1)  # an empty answer has no likelihood to compare
        if ans:
            # routes that template the prompt alike share batches (the unrouted one first)
            for s, rids in own_ids.items():
                idx = [i for i, x in enumerate(systems) if x == s]
                batch = ([Route()] if s == system else []) + [mapped[i] for i in idx]
                out = []
                for i in range(0, len(batch), batch_size):
                    out.extend(float(x) / len(ans) for x in
                               target_logprob(moe, rids, ans, batch[i:i + batch_size]))
                if s == system:
                    lls[0], out = out[0], out[1:]
                for i, x in zip(idx, out):
                    lls[i + 1] = x
        baseline.append({"completion": gen.text, "refusal": bool(v.refusal),
                         "answer_tokens": len(ans), "mean_ll": lls[0]})
        for i, r in enumerate(mapped):
            changed = len(r) or systems[i] != system
            g = generate(moe, own_ids[systems[i]], r, max_new_tokens=max_new_tokens) \
                if changed else gen
            vr = judge.judge(p, g.text) if changed else v
            per[i].append({"refusal": bool(vr.refusal), "completion": g.text,
                           "mean_ll": lls[i + 1], "delta_ll": lls[i + 1] - lls[0],
                           "edits_kept": len(r)})
    n = len(prompts)
    scored = [b for b in baseline if b["answer_tokens"]] or baseline
    base_rate = sum(b["refusal"] for b in baseline) / n
    base_ll = sum(b["mean_ll"] for b in scored) / len(scored)
    harm = prompt_list(harmful_prompts) if harmful_prompts else []
    out_routes = []
    for i, (r, rows) in enumerate(zip(routes, per)):
        rate = sum(x["refusal"] for x in rows) / n
        use = [x for x, b in zip(rows, baseline) if b["answer_tokens"]] or rows
        ll = sum(x["mean_ll"] for x in use) / len(use)
        a = (asr(moe, r, harm, judge=judge, mapping=mapping, max_new_tokens=max_new_tokens,
                 system=systems[i]).asr if harm else None)
        out_routes.append({"label": _label(r, i), "route": r.to_dict(), "refusal_rate": rate,
                           "refusal_change": rate - base_rate, "mean_ll": ll,
                           "ll_change": ll - base_ll, "asr": a, "rows": rows})
    k = len(out_routes)
    return UtilityResult(
        prompts=prompts, baseline=baseline, routes=out_routes,
        baseline_refusal_rate=base_rate, baseline_mean_ll=base_ll,
        refusal_change=sum(r["refusal_change"] for r in out_routes) / k,
        ll_change=sum(r["ll_change"] for r in out_routes) / k,
        mapping=mapping, judge=judge_name(judge), harmful_prompts=harm,
        info=dict(moe.provenance(system), max_new_tokens=max_new_tokens, top=top,
                  seconds=round(time.perf_counter() - t0, 3), defense=defense_dict(moe)))
