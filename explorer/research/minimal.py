"""Minimal unsafe route: the fewest edits of a found route that still jailbreak.

Greedy backward elimination. A route *succeeds* on its prompt when the target's joint
log-prob (teacher-forced) reaches the threshold AND the judge calls the greedy answer
jailbroken. Each round scores every leave-one-out route in one batched forward, then
tries the removals best log-prob first (at most ``checks`` generations per round) and
keeps the first that still succeeds. It stops when no single edit can go.

When the original route does not reach ``threshold`` itself (F-SOUR may stop below it and
still jailbreak), the bar is its own log-prob: the minimal route must do at least as well
(``threshold_used``). A route that does not succeed at all is reported unchanged.

The result says which cells matter: ``necessity`` gives, for every edit of the minimal
route, the log-prob lost when that edit alone is removed, with its layer, position,
distance from the end, token and whether it is a chat-template token.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from explorer.core.defaults import DEFAULT_TARGET, DEFAULT_THRESHOLD, RESEARCH_MAX_NEW_TOKENS
from explorer.core.errors import InputError
from explorer.core.forward import generate
from explorer.core.route import Route, RouteEdit
from explorer.research.common import (
    ResultMixin,
    as_route,
    batched_logprob,
    defense_dict,
    judge_name,
    map_route,
    prompt_layout,
    resolve_judge,
)

if TYPE_CHECKING:
    from explorer.core.model import MoEModel


@dataclass
class MinimalResult(ResultMixin):
    """Before / after of :func:`minimize` (see the module docs)."""

    prompt: str
    target: str
    threshold: float
    threshold_used: float
    route_before: dict
    route: dict
    edits_before: int
    edits_after: int
    logprob_before: float
    logprob_after: float
    jailbroken_before: bool
    jailbroken_after: bool
    completion_before: str
    completion_after: str
    removed: list[dict]
    necessity: list[dict]
    layers: list[dict]
    forward_passes: int
    generations: int
    seconds: float
    judge: str
    info: dict = field(default_factory=dict)

    @property
    def minimal_route(self) -> Route:
        return Route.from_dict(self.route)


def minimize_cost(edits: int, checks: int, max_new_tokens: int) -> int:
    """The forward passes a server budgets for :func:`minimize` of a route of ``edits``
    edits (the app's hosted-mode check: two scoring passes per edit and ``checks``
    generations of ``max_new_tokens``, four passes a token)."""
    return 2 * edits + checks * max_new_tokens * 4


def minimize(moe: MoEModel, prompt: str | None, route, target: str = DEFAULT_TARGET,
             threshold: float = DEFAULT_THRESHOLD, judge=None, max_new_tokens: int = RESEARCH_MAX_NEW_TOKENS,
             checks: int = 3, mapping: str = "end", system: str | None = None) -> MinimalResult:
    """Greedily remove edits from ``route`` while it still succeeds on ``prompt``.

    ``prompt`` defaults to the route's own (``info["prompt"]``), ``system`` to the route's
    own system prompt (``info["system"]``); a route from another prompt or system prompt
    is mapped first (``mapping``). ``checks``: generations tried per round before giving
    up on that round.
    """
    route = as_route(route)
    prompt = prompt or route.info.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("no prompt: pass one or use a route whose info names its prompt")
    if checks < 1:
        raise InputError("checks must be at least 1")
    system = system if system is not None else route.system
    route = map_route(moe, route, prompt, mapping, system=system)
    judge = resolve_judge(judge)
    ids = moe.encode(prompt, system)
    tgt = moe.target_ids(target)
    t0 = time.perf_counter()
    passes, gens = 0, 0

    def lp(routes: Sequence[Route]) -> list[float]:
        nonlocal passes
        passes += len(routes)
        return batched_logprob(moe, ids, tgt, list(routes))

    def answer(r: Route):
        nonlocal gens
        gens += 1
        g = generate(moe, ids, r, max_new_tokens=max_new_tokens)
        return bool(judge.judge(prompt, g.text).jailbroken), g.text

    lp0 = lp([route])[0]
    jb0, text0 = answer(route)
    bar = min(threshold, lp0)
    cur: list[RouteEdit] = list(route.edits)
    cur_lp, cur_text, cur_jb = lp0, text0, jb0
    removed: list[dict] = []
    while jb0 and cur:
        cands = [cur[:i] + cur[i + 1:] for i in range(len(cur))]
        scores = lp([Route(c) for c in cands])
        order = sorted(range(len(cands)), key=lambda i: (-scores[i], i))
        done = False
        for i in order[:checks]:
            if scores[i] < bar:
                break
            jb, text = answer(Route(cands[i]))
            if jb:
                removed.append({**cur[i].to_dict(), "logprob_after": scores[i]})
                cur, cur_lp, cur_text, cur_jb = cands[i], scores[i], text, jb
                done = True
                break
        if not done:
            break
    final = Route(cur, dict(route.info, method="minimal", minimized_from=len(route)))
    lay = prompt_layout(moe, prompt, system)
    toks = moe.token_strings(ids)
    necessity = []
    if cur:
        without = lp([Route(cur[:i] + cur[i + 1:]) for i in range(len(cur))])
        for e, w in zip(cur, without):
            necessity.append({**e.to_dict(), "logprob_without": w, "drop": cur_lp - w,
                              "from_end": None if e.position is None else len(ids) - e.position,
                              "token": None if e.position is None else toks[e.position],
                              "template": None if e.position is None
                              else lay.is_template(e.position)})
    per_layer = Counter(e.layer for e in cur)
    return MinimalResult(
        prompt=prompt, target=target, threshold=threshold, threshold_used=bar,
        route_before=route.to_dict(), route=final.to_dict(), edits_before=len(route),
        edits_after=len(cur), logprob_before=lp0, logprob_after=cur_lp,
        jailbroken_before=jb0, jailbroken_after=cur_jb, completion_before=text0,
        completion_after=cur_text, removed=removed, necessity=necessity,
        layers=[{"layer": k, "edits": per_layer[k]} for k in sorted(per_layer)],
        forward_passes=passes, generations=gens,
        seconds=round(time.perf_counter() - t0, 3), judge=judge_name(judge),
        info=dict(moe.provenance(system), max_new_tokens=max_new_tokens, checks=checks,
                  mapping=mapping, defense=defense_dict(moe)))
