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
distributions), plus the small helpers the other research modules share.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable, Sequence

from .batching import memory_batch_size
from .forward import generate, prefill, reusable, target_logprob
from .route import Route, RouteEdit, RouteError

MAPPINGS = ("end", "template", "absolute")
DEFAULT_TARGET = "Sure, here is"


# -- shared helpers -----------------------------------------------------------------------
class ResultMixin:
    """``to_dict`` / ``to_json`` / ``from_dict`` / ``from_json`` for JSON-ready dataclasses.

    Fields hold only JSON types (lists, dicts with string keys, numbers, strings, None), so
    ``from_dict(to_dict(x)) == x`` and the JSON form is the CLI's ``--json`` object.
    """

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))


def resolve_judge(judge):
    """A judge object from a name, an object or None (keyword)."""
    from .judge import get_judge
    if judge is None or isinstance(judge, str):
        return get_judge(judge or "keyword")
    return judge


def judge_name(judge) -> str:
    return getattr(judge, "name", type(judge).__name__)


def target_ids(moe, target: str) -> list[int]:
    if not target or not target.strip():
        raise ValueError("the target answer is empty")
    ids = list(moe.tokenizer(target, add_special_tokens=False)["input_ids"])
    if not ids:
        raise ValueError("the target answer has no tokens")
    return ids


def shared_prefix(routes: Sequence[Route], n_prompt: int) -> int:
    """Prompt positions before every route's first edit (routes agree there); at most
    ``n_prompt - 1`` so that at least one prompt token is recomputed."""
    first = min((0 if e.position is None else e.position for r in routes for e in r.edits),
                default=n_prompt)
    return max(0, min(first, n_prompt - 1))


def batched_logprob(moe, ids, tgt, routes: Sequence[Route], batch_size: int | None = None) -> list[float]:
    """Joint target log-prob for each route, in batches of ``batch_size`` (default: sized
    to the free memory). The positions before the earliest edit of any route are computed
    once (a shared prefix KV cache) where the model's cache allows it."""
    routes = list(routes)
    cache, plen = None, shared_prefix(routes, len(ids))
    if plen > 0:
        _, cache = prefill(moe, list(ids)[:plen], Route())
        if cache is None or not reusable(cache):
            cache, plen = None, 0
    T = len(ids) + len(tgt)
    batch_size = batch_size or memory_batch_size(moe, T - plen, T, len(tgt))
    out: list[float] = []
    for i in range(0, len(routes), batch_size):
        out.extend(float(x) for x in target_logprob(moe, ids, tgt, routes[i:i + batch_size],
                                                    prefix_cache=cache, prefix_len=plen))
    return out


def harmful_prompts() -> list[str]:
    """The project's own harmful requests (:data:`explorer.prompts.HARMFUL_PROMPTS`)."""
    from .prompts import HARMFUL_PROMPTS
    return list(HARMFUL_PROMPTS)


def as_route(x) -> Route:
    """A :class:`Route` from a Route, its JSON dict, a RoSais result or an F-SOUR result."""
    if isinstance(x, Route):
        return x
    if isinstance(x, dict):
        return Route.from_dict(x)
    r = getattr(x, "route", None)
    if isinstance(r, Route):
        out = r.copy()
        out.info.setdefault("prompt", getattr(x, "prompt", None))
        if hasattr(x, "success"):
            out.info.setdefault("success", bool(x.success))
        return out
    raise TypeError(f"cannot make a route from {type(x).__name__}")


# -- prompt layout and position mapping ---------------------------------------------------
@dataclass
class Layout:
    """A templated prompt's length and its leading / trailing chat-template token counts."""

    num_tokens: int
    prefix: int
    suffix: int

    @property
    def content(self) -> range:
        return range(self.prefix, self.num_tokens - self.suffix)

    def is_template(self, position: int) -> bool:
        return position < self.prefix or position >= self.num_tokens - self.suffix


_LAYOUTS: dict[tuple, Layout] = {}


def prompt_layout(moe, prompt: str) -> Layout:
    """Where the chat template's own tokens are in ``moe.encode(prompt)`` (cached)."""
    key = (id(moe), moe.name, moe.info.chat_template_hash, prompt)
    hit = _LAYOUTS.get(key)
    if hit is not None:
        return hit
    ids = moe.encode(prompt)
    lay = _layout_from_offsets(moe, prompt, ids) or _layout_from_probes(moe, ids)
    if len(_LAYOUTS) > 4096:
        _LAYOUTS.clear()
    _LAYOUTS[key] = lay
    return lay


def _layout_from_offsets(moe, prompt: str, ids: list[int]) -> Layout | None:
    try:
        text = moe.template(prompt)
        start = text.find(prompt)
        if start < 0:
            return None
        end = start + len(prompt)
        enc = moe.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if list(enc["input_ids"]) != list(ids):
            return None
        content = [a < end and b > start and b > a for a, b in enc["offset_mapping"]]
    except Exception:  # noqa: BLE001 - slow tokenizers have no offsets: use the fallback
        return None
    if not any(content):
        return None
    first = content.index(True)
    last = len(content) - 1 - content[::-1].index(True)
    return Layout(len(ids), first, len(ids) - 1 - last)


def _layout_from_probes(moe, ids: list[int]) -> Layout:
    pre, suf = len(ids), len(ids)
    for probe in ("Hello there.", "What is 7?"):
        other = moe.encode(probe)
        n = 0
        while n < min(len(ids), len(other)) and ids[n] == other[n]:
            n += 1
        m = 0
        while m < min(len(ids), len(other)) - n and ids[-1 - m] == other[-1 - m]:
            m += 1
        pre, suf = min(pre, n), min(suf, m)
    suf = min(suf, len(ids) - pre)
    return Layout(len(ids), pre, suf)


def source_length(moe, route: Route) -> int:
    """The templated length of the prompt ``route`` was found on."""
    p = route.info.get("prompt")
    if isinstance(p, str) and p.strip():
        return len(moe.encode(p))
    n = route.info.get("prompt_tokens")
    if isinstance(n, int) and n > 0:
        return n
    raise RouteError("the route does not name its source prompt (info.prompt or "
                     "info.prompt_tokens): pass source_prompt")


def map_route(moe, route: Route, prompt: str, mapping: str = "end",
              source_prompt: str | None = None) -> Route:
    """``route`` moved onto ``prompt`` by ``mapping`` (see the module docs).

    The copy's ``info`` names the new ``prompt`` and its ``prompt_tokens``, the source
    (``mapped_from``), the ``mapping`` and ``edits_dropped``.
    """
    if mapping not in MAPPINGS:
        raise ValueError(f"unknown mapping {mapping!r}; choose one of {list(MAPPINGS)}")
    src = source_prompt if source_prompt is not None else route.info.get("prompt")
    positional = any(e.position is not None for e in route.edits)
    tgt = prompt_layout(moe, prompt)
    info = dict(route.info)
    if src == prompt or not positional:
        info.update(prompt=prompt, prompt_tokens=tgt.num_tokens)
        info.setdefault("edits_dropped", 0)
        return Route(list(route.edits), info)
    if isinstance(src, str) and src.strip():
        slay: Layout | None = prompt_layout(moe, src)
        P = slay.num_tokens
    else:
        slay, P = None, source_length(moe, route)
    kept: list[RouteEdit] = []
    for e in route.edits:
        if e.position is None:
            kept.append(e)
            continue
        if not 0 <= e.position < P:
            continue
        back = P - e.position  # 1 = the last token
        if mapping == "end":
            new = tgt.num_tokens - back
        elif mapping == "absolute":
            new = e.position
        elif slay is not None and e.position < slay.prefix:
            new = e.position if e.position < tgt.prefix else -1
        elif slay is not None and e.position >= P - slay.suffix:
            new = tgt.num_tokens - back if back <= tgt.suffix else -1
        elif slay is None and back <= tgt.suffix:
            new = tgt.num_tokens - back
        else:
            new = -1
        if 0 <= new < tgt.num_tokens:
            kept.append(RouteEdit(e.layer, new, e.experts, e.mode))
    info.update(prompt=prompt, prompt_tokens=tgt.num_tokens, mapped_from=src,
                mapping=mapping, edits_dropped=len(route.edits) - len(kept))
    return Route(kept, info)


# -- ASR on a prompt set ------------------------------------------------------------------
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


def asr(moe, route: Route | None, prompts: Sequence[str], judge=None, mapping: str = "end",
        max_new_tokens: int = 32, target: str | None = None) -> AsrResult:
    """Attack success rate of ``route`` (mapped onto each prompt) on ``prompts``.

    ``route=None`` measures the unattacked model. With ``target`` each row also has the
    target's joint log-prob under the mapped route.
    """
    prompts = _prompt_list(prompts)
    judge = resolve_judge(judge)
    tgt = target_ids(moe, target) if target else None
    rows = []
    for p in prompts:
        ids = moe.encode(p)
        r = map_route(moe, route, p, mapping) if route is not None else None
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
                     info=dict(moe.info.provenance(), max_new_tokens=max_new_tokens,
                               target=target, defense=_defense_dict(moe)))


def _defense_dict(moe):
    d = getattr(moe, "defense", None)
    return d.to_dict() if d is not None and d.defends else None


def _prompt_list(prompts: Iterable[str]) -> list[str]:
    out = [p for p in prompts if isinstance(p, str) and p.strip()]
    if not out:
        raise ValueError("no prompts")
    return out


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


def transfer_matrix(moe, routes: Sequence[Route], prompts: Sequence[str],
                    target: str = DEFAULT_TARGET, judge=None, mapping: str = "end",
                    max_new_tokens: int = 32) -> TransferResult:
    """Replay every route on every prompt (see the module docs for the mapping)."""
    routes = [as_route(r) for r in routes]
    if not routes:
        raise ValueError("no routes to transfer")
    prompts = _prompt_list(prompts)
    judge = resolve_judge(judge)
    tgt = target_ids(moe, target)
    t0 = time.perf_counter()
    cells: list[list[dict]] = [[] for _ in routes]
    baseline = []
    for p in prompts:
        ids = moe.encode(p)
        mapped = [map_route(moe, r, p, mapping) for r in routes]
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
        info=dict(moe.info.provenance(), max_new_tokens=max_new_tokens,
                  seconds=round(time.perf_counter() - t0, 3), defense=_defense_dict(moe)))


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
        raise ValueError("min_count must be at least 1")
    if key not in ("set", "cell"):
        raise ValueError("key must be 'set' or 'cell'")
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


def rosais_distributions(result) -> dict[str, Any]:
    """Box/violin data of one RoSais result: per MoE layer, every mask's score."""
    return {"moe_layers": list(result.moe_layers),
            "distributions": [list(d) for d in result.distributions],
            "scores": list(result.scores), "top_layers": list(result.top_layers)}


def rosais_curve(moe, prompts: Sequence[str], max_top: int = 5, samples: int = 16,
                 seed: int = 0, mask_ratio: float = 0.5, max_new_tokens: int = 32,
                 judge=None) -> RosaisCurve:
    """Run RoSais on each prompt and generate with its top 1..``max_top`` routers masked."""
    from .rosais import ranking, rosais
    if max_top < 1:
        raise ValueError("max_top must be at least 1")
    prompts = _prompt_list(prompts)
    judge = resolve_judge(judge)
    L = min(max_top, len(moe.moe_layers))
    per, pooled = [], [[] for _ in moe.moe_layers]
    for p in prompts:
        res = rosais(moe, p, samples=samples, seed=seed, top=L, mask_ratio=mask_ratio,
                     max_new_tokens=max_new_tokens, judge=judge, curve=True)
        v0 = judge.judge(p, res.baseline_completion)
        jb = [bool(v0.jailbroken)] + [bool(b["jailbroken"]) for b in res.by_top]
        ctl = [bool(v0.jailbroken)]  # control: as many routers, random, random masks
        rng = random.Random(seed * 7919 + len(per))
        ids = moe.encode(p)
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
        info=dict(moe.info.provenance(), samples=samples, seed=seed, mask_ratio=mask_ratio,
                  max_new_tokens=max_new_tokens, defense=_defense_dict(moe)))
