"""Transfer: replay routes found on one prompt on other prompts; universal routes; ASR.

Position mapping
----------------
A route's positions index the templated prompt it was found on (its *source*, named by
``route.info["prompt"]``, or only its length ``route.info["prompt_tokens"]``). Replayed on
another prompt (the *target*), each edit is moved by one of three mappings
(:data:`MAPPINGS`):

``end`` (default)
    Align from the END of the templated prompts: an edit ``d`` tokens before the source's
    last token lands ``d`` tokens before the target's last token
    (``new = p - P_source + P_target``). The chat template's tail (``<|end|>``, the
    assistant header, its newline) is the same for every prompt, so edits there land on
    the same template tokens; edits on user content land on whatever content token sits
    at that distance from the end. Edits that would fall before position 0 (the target is
    shorter) are dropped.
``template``
    Keep only edits on chat-template tokens: the leading template tokens (e.g.
    ``<|user|>``, newline, BOS) map to the same index counted from the start, the trailing
    ones (``<|end|>``, assistant header) from the end. Edits on user-content tokens are
    dropped. When the source is only known by its length (universal routes), an edit is
    kept if it lands within the target's trailing template tokens.
``absolute``
    Keep positions as they are; drop those at or beyond the target's length.

Edits with ``position`` null (every position: masks such as RoSais's) are kept unchanged
by every mapping. Template tokens are found from the tokenizer's character offsets: a token
is a template token when it does not overlap the user message inside the templated text
(fallback without offsets: the prefix and suffix shared with other templated prompts).
Replaying a route on its own source prompt leaves it unchanged.

Also here: :func:`transfer_matrix` (routes x prompts), :func:`universal_route` (cells that
recur across successful routes), :func:`asr` (a route on a prompt set) and
:func:`rosais_curve` (RoSais ASR against the number of masked routers, with the score
distributions). The helpers the research modules share live in :mod:`explorer.research.common`.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from explorer.core.defaults import DEFAULT_TARGET, RESEARCH_MAX_NEW_TOKENS
from explorer.core.errors import InputError
from explorer.core.forward import generate
from explorer.core.route import Route, RouteEdit, RouteError
from explorer.research.common import (
    ResultMixin,
    as_route,
    batched_logprob,
    defense_dict,
    judge_name,
    map_route,
    prompt_list,
    resolve_judge,
    source_length,
)

if TYPE_CHECKING:
    from explorer.core.model import MoEModel


@dataclass
class AsrResult(ResultMixin):
    """A route (or no route) replayed on a prompt set: ``asr`` = jailbroken fraction."""

    asr: float
    n: int
    rows: list[dict]
    route: dict | None
    mapping: str
    judge: str
    info: dict = field(default_factory=dict)


def asr(moe: MoEModel, route: Route | None, prompts: Sequence[str], judge=None, mapping: str = "end",
        max_new_tokens: int = RESEARCH_MAX_NEW_TOKENS, target: str | None = None,
        system: str | None = None) -> AsrResult:
    """Attack success rate of ``route`` (mapped onto each prompt) on ``prompts``.

    ``route=None`` measures the unattacked model. With ``target`` each row also has the
    target's joint log-prob under the mapped route. ``system``: the system prompt every
    prompt is templated with.
    """
    prompts = prompt_list(prompts)
    judge = resolve_judge(judge)
    tgt = moe.target_ids(target) if target else None
    rows = []
    for p in prompts:
        ids = moe.encode(p, system)
        r = map_route(moe, route, p, mapping, system=system) if route is not None else None
        gen = generate(moe, ids, r, max_new_tokens=max_new_tokens)
        v = judge.judge(p, gen.text)
        row = {"prompt": p, "jailbroken": bool(v.jailbroken), "refusal": bool(v.refusal),
               "completion": gen.text,
               "edits_kept": len(r) if r is not None else 0}
        if tgt is not None:
            row["target_logprob"] = batched_logprob(moe, ids, tgt, [r or Route()])[0]
        rows.append(row)
    n = len(rows)
    return AsrResult(asr=sum(r["jailbroken"] for r in rows) / n, n=n, rows=rows,
                     route=route.to_dict() if route is not None else None, mapping=mapping,
                     judge=judge_name(judge),
                     info=dict(moe.provenance(system), max_new_tokens=max_new_tokens,
                               target=target, defense=defense_dict(moe)))


# -- transfer matrix ----------------------------------------------------------------------
@dataclass
class TransferResult(ResultMixin):
    """Routes (rows) replayed on prompts (columns).

    ``cells[i][j]``: ``jailbroken``, ``refusal``, ``target_logprob``, ``edits_kept``,
    ``completion``. ``baseline[j]``: the same without a route. ``sources[i]``: the prompt
    route i was found on (None if unnamed). ``transfer_rate``: jailbroken fraction of the
    cells whose prompt is not the route's source; ``own_rate``: the cells where it is.
    """

    routes: list[dict]
    prompts: list[str]
    sources: list[str | None]
    cells: list[list[dict]]
    baseline: list[dict]
    target: str
    mapping: str
    judge: str
    transfer_rate: float | None = None
    own_rate: float | None = None
    baseline_asr: float = 0.0
    mean_logprob_gain: float | None = None
    info: dict = field(default_factory=dict)

    def row_rates(self) -> list[float | None]:
        """Per route: jailbroken fraction on the prompts that are not its source."""
        out = []
        for i, row in enumerate(self.cells):
            cs = [c["jailbroken"] for j, c in enumerate(row) if self.prompts[j] != self.sources[i]]
            out.append(sum(cs) / len(cs) if cs else None)
        return out


def transfer_matrix(moe: MoEModel, routes: Sequence[Route], prompts: Sequence[str],
                    target: str = DEFAULT_TARGET, judge=None, mapping: str = "end",
                    max_new_tokens: int = RESEARCH_MAX_NEW_TOKENS,
                    system: str | None = None) -> TransferResult:
    """Replay every route on every prompt (see the module docs for the mapping), each
    prompt templated with ``system``."""
    routes = [as_route(r) for r in routes]
    if not routes:
        raise InputError("no routes to transfer")
    prompts = prompt_list(prompts)
    judge = resolve_judge(judge)
    tgt = moe.target_ids(target)
    t0 = time.perf_counter()
    cells: list[list[dict]] = [[] for _ in routes]
    baseline = []
    for p in prompts:
        ids = moe.encode(p, system)
        mapped = [map_route(moe, r, p, mapping, system=system) for r in routes]
        lps = batched_logprob(moe, ids, tgt, [Route()] + mapped)
        gen = generate(moe, ids, None, max_new_tokens=max_new_tokens)
        v = judge.judge(p, gen.text)
        baseline.append({"jailbroken": bool(v.jailbroken), "refusal": bool(v.refusal),
                         "target_logprob": lps[0], "completion": gen.text})
        for i, r in enumerate(mapped):
            if len(r) == 0:  # nothing survived the mapping: the unattacked answer
                c = dict(baseline[-1])
            else:
                g = generate(moe, ids, r, max_new_tokens=max_new_tokens)
                v = judge.judge(p, g.text)
                c = {"jailbroken": bool(v.jailbroken), "refusal": bool(v.refusal),
                     "completion": g.text}
            c.update(target_logprob=lps[i + 1], edits_kept=len(r))
            cells[i].append(c)
    sources = [r.info.get("prompt") if isinstance(r.info.get("prompt"), str) else None
               for r in routes]
    off = [c for i, row in enumerate(cells) for j, c in enumerate(row)
           if prompts[j] != sources[i]]
    own = [c for i, row in enumerate(cells) for j, c in enumerate(row)
           if prompts[j] == sources[i]]
    gains = [c["target_logprob"] - baseline[j]["target_logprob"]
             for i, row in enumerate(cells) for j, c in enumerate(row)
             if prompts[j] != sources[i] and math.isfinite(c["target_logprob"])
             and math.isfinite(baseline[j]["target_logprob"])]
    return TransferResult(
        routes=[r.to_dict() for r in routes], prompts=prompts, sources=sources, cells=cells,
        baseline=baseline, target=target, mapping=mapping, judge=judge_name(judge),
        transfer_rate=sum(c["jailbroken"] for c in off) / len(off) if off else None,
        own_rate=sum(c["jailbroken"] for c in own) / len(own) if own else None,
        baseline_asr=sum(b["jailbroken"] for b in baseline) / len(baseline),
        mean_logprob_gain=sum(gains) / len(gains) if gains else None,
        info=dict(moe.provenance(system), max_new_tokens=max_new_tokens,
                  seconds=round(time.perf_counter() - t0, 3), defense=defense_dict(moe)))


# -- universal route ----------------------------------------------------------------------
def universal_route(routes: Sequence[Route], min_count: int = 2, moe=None,
                    key: str = "set", successful_only: bool = True) -> Route:
    """A candidate universal route from cells that recur across ``routes``.

    Each route's positional edits become (layer, distance from the end, expert set, mode)
    cells (the end-anchored mapping); every route counts once per cell. Cells found in at
    least ``min_count`` routes are kept. ``key="set"`` counts identical expert sets;
    ``key="cell"`` counts forced (layer, distance) cells whatever the set and keeps the most
    frequent set there. Where several forced sets qualify at one cell the most frequent
    wins. Whole-prompt edits (position null) recur by (layer, experts, mode).
    ``successful_only`` skips routes whose ``info["success"]`` is False.

    The result is anchored at the end: its ``info["prompt_tokens"]`` is a reference length
    R and an edit at distance d sits at R - d, so :func:`map_route` (mapping ``end``) places
    it d tokens before any target prompt's end. ``info["support"]`` lists each kept cell
    with its count. Source lengths come from ``info["prompt_tokens"]`` or, given ``moe``,
    from encoding ``info["prompt"]``.
    """
    if min_count < 1:
        raise InputError("min_count must be at least 1")
    if key not in ("set", "cell"):
        raise InputError("key must be 'set' or 'cell'")
    routes = [as_route(r) for r in routes]
    used = [r for r in routes if not (successful_only and r.info.get("success") is False)]
    counts: Counter = Counter()
    sets: dict[tuple, Counter] = {}
    for r in used:
        P = None
        cells = set()
        for e in r.edits:
            if e.position is None:
                cells.add((e.layer, None, e.experts, e.mode))
                continue
            if P is None:
                P = (r.info.get("prompt_tokens") if moe is None or not r.info.get("prompt")
                     else source_length(moe, r))
                if not isinstance(P, int):
                    raise RouteError("universal_route needs each route's source length: "
                                     "pass moe (to encode info.prompt) or set "
                                     "info.prompt_tokens")
            back = P - e.position
            if back < 1:
                continue
            if key == "cell" and e.mode == "force":
                cells.add((e.layer, back, None, "force"))
                sets.setdefault((e.layer, back), Counter())[e.experts] += 1
            else:
                cells.add((e.layer, back, e.experts, e.mode))
        counts.update(cells)
    kept = sorted(((c, n) for c, n in counts.items() if n >= min_count),
                  key=lambda cn: (-cn[1], cn[0][0], cn[0][1] or 0, str(cn[0][2])))
    forced_at: set[tuple[int, int]] = set()
    chosen = []
    for (layer, back, experts, mode), n in kept:
        if mode == "force":
            if (layer, back) in forced_at:
                continue  # a more frequent set already holds this cell
            forced_at.add((layer, back))
            if experts is None:
                experts = sorted(sets[(layer, back)].items(), key=lambda x: (-x[1], x[0]))[0][0]
        chosen.append((layer, back, tuple(experts), mode, n))
    R = max([b for _, b, _, _, _ in chosen if b is not None], default=0)
    out = Route(info={"method": "universal", "anchor": "end", "prompt_tokens": R,
                      "min_count": min_count, "key": key, "routes": len(used),
                      "support": [{"layer": l, "from_end": b, "experts": list(x), "mode": m,
                                   "count": n} for l, b, x, m, n in chosen]})
    first = next((r.info for r in used if r.info.get("model")), {})
    for k in ("model", "revision", "transformers_version", "chat_template_hash"):
        if k in first:
            out.info[k] = first[k]
    def order(c):
        return (c[1] is None, -(c[1] or 0), c[0])
    for layer, back, experts, mode, _ in sorted(chosen, key=order):
        out.edits.append(RouteEdit(layer, None if back is None else R - back, experts, mode))
    return out


# -- RoSais uncertainty -------------------------------------------------------------------
@dataclass
class RosaisCurve(ResultMixin):
    """RoSais over a prompt set: ASR against the number of masked routers, and the spread
    of each router's scores over its random masks.

    ``asr_by_top[L]``: jailbroken fraction with the top-L routers masked (L = 0: no mask).
    ``distributions[i]``: every mask's score at ``moe_layers[i]``, pooled over prompts
    (box / violin data). ``per_prompt``: each prompt's scores, top layers and by-L verdicts.
    """

    prompts: list[str]
    moe_layers: list[int]
    tops: list[int]
    asr_by_top: list[float]
    distributions: list[list[float]]
    mean_scores: list[float]
    per_prompt: list[dict]
    judge: str
    info: dict = field(default_factory=dict)
    random_asr_by_top: list[float] = field(default_factory=list)


def rosais_curve(moe: MoEModel, prompts: Sequence[str], max_top: int = 5, samples: int = 16,
                 seed: int = 0, mask_ratio: float = 0.5, max_new_tokens: int = RESEARCH_MAX_NEW_TOKENS,
                 judge=None, system: str | None = None) -> RosaisCurve:
    """Run RoSais on each prompt (templated with ``system``) and generate with its top
    1..``max_top`` routers masked."""
    from explorer.methods.rosais import ranking, rosais
    if max_top < 1:
        raise InputError("max_top must be at least 1")
    prompts = prompt_list(prompts)
    judge = resolve_judge(judge)
    L = min(max_top, len(moe.moe_layers))
    per, pooled = [], [[] for _ in moe.moe_layers]
    for p in prompts:
        res = rosais(moe, p, samples=samples, seed=seed, top=L, mask_ratio=mask_ratio,
                     max_new_tokens=max_new_tokens, judge=judge, curve=True, system=system)
        v0 = judge.judge(p, res.baseline_completion)
        jb = [bool(v0.jailbroken)] + [bool(b["jailbroken"]) for b in res.by_top]
        ctl = [bool(v0.jailbroken)]  # control: as many routers, random, random masks
        rng = random.Random(seed * 7919 + len(per))
        ids = moe.encode(p, system)
        for t in range(1, L + 1):
            text = generate(moe, ids, res.random_route(t, rng),
                            max_new_tokens=max_new_tokens).text
            ctl.append(bool(judge.judge(p, text).jailbroken))
        per.append({"prompt": p, "scores": list(res.scores), "ranking": ranking(res),
                    "jailbroken": jb, "random_jailbroken": ctl,
                    "forward_passes": res.forward_passes})
        for i, d in enumerate(res.distributions):
            pooled[i].extend(d)
    n = len(per)
    return RosaisCurve(
        prompts=prompts, moe_layers=list(moe.moe_layers), tops=list(range(L + 1)),
        asr_by_top=[sum(r["jailbroken"][t] for r in per) / n for t in range(L + 1)],
        distributions=pooled,
        mean_scores=[sum(r["scores"][i] for r in per) / n for i in range(len(moe.moe_layers))],
        per_prompt=per, judge=judge_name(judge),
        random_asr_by_top=[sum(r["random_jailbroken"][t] for r in per) / n for t in range(L + 1)],
        info=dict(moe.provenance(system), samples=samples, seed=seed, mask_ratio=mask_ratio,
                  max_new_tokens=max_new_tokens, defense=defense_dict(moe)))
