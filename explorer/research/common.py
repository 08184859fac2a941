"""What the research modules share: result serialisation, judges, target ids, batched
log-probs, the project's harmful prompts, routes from objects and JSON, and the prompt
layout and position mapping that replay a route on another prompt (see
:mod:`explorer.research.transfer` for the mappings).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from explorer.core.control import active_defense
from explorer.core.errors import InputError, RouteError, one_line
from explorer.core.forward import prefill, reusable, target_logprob
from explorer.core.layout import (  # noqa: F401  (their home; public names here too)
    MAPPINGS,
    Layout,
    layout_from_probes,
    map_route,
    prompt_layout,
    source_length,
)
from explorer.core.result import ResultMixin  # noqa: F401  (its home is core; public here too)
from explorer.core.route import Route
from explorer.engine.batching import memory_batch_size

if TYPE_CHECKING:
    from explorer.core.model import MoEModel

# -- shared helpers -----------------------------------------------------------------------
def resolve_judge(judge):
    """A judge object from a name, an object or None (keyword)."""
    from explorer.judges import get_judge
    if judge is None or isinstance(judge, str):
        return get_judge(judge or "keyword")
    return judge


def judge_name(judge) -> str:
    return getattr(judge, "name", type(judge).__name__)


def shared_prefix(routes: Sequence[Route], n_prompt: int) -> int:
    """Prompt positions before every route's first edit (routes agree there); at most
    ``n_prompt - 1`` so that at least one prompt token is recomputed."""
    first = min((0 if e.position is None else e.position for r in routes for e in r.edits),
                default=n_prompt)
    return max(0, min(first, n_prompt - 1))


def batched_logprob(moe: MoEModel, ids, tgt, routes: Sequence[Route],
                    batch_size: int | None = None) -> list[float]:
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
    """The project's own harmful requests (:data:`explorer.core.prompt_sets.HARMFUL_PROMPTS`)."""
    from explorer.core.prompt_sets import HARMFUL_PROMPTS
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
    raise InputError(f"cannot make a route from {type(x).__name__}")


def json_objects(text: str) -> list:
    """The JSON values in ``text``: one JSON document (a list gives its items) or JSON
    lines. Raises ``InputError`` naming where the text stops parsing."""
    try:
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    except json.JSONDecodeError as exc:
        try:
            return [json.loads(ln) for ln in text.splitlines() if ln.strip()]
        except json.JSONDecodeError:
            raise InputError(f"neither JSON nor JSON lines: {exc.msg} (line {exc.lineno}, "
                             f"column {exc.colno})") from None


def routes_from_objects(objs: Iterable[Any], top: int | None = None,
                        where: str = "route JSON") -> list[Route]:
    """Routes from parsed JSON objects, the one parser the CLI and the app share: route
    objects (``{"edits": ...}``), ``fsour --json`` results and ``evaluate`` rows (their
    ``route``, with the prompt or goal, success and target in ``info``), ``rosais --json``
    results (their top-``top`` masks, all top layers by default) and ``minimize --json``
    output (each minimal route). Rows without a route (``evaluate --method none``) are
    skipped. Raises :class:`RouteError` for anything else, naming ``where``."""
    from explorer.methods.rosais import RosaisResult
    expanded: list[Any] = []
    for obj in objs:  # `minimize --json` holds a list of results
        if isinstance(obj, dict) and isinstance(obj.get("results"), list):
            expanded += [dict(x, success=x.get("jailbroken_after", True))
                         for x in obj["results"] if isinstance(x, dict)]
        else:
            expanded.append(obj)
    out = []
    for obj in expanded:
        if not isinstance(obj, dict):
            raise RouteError(f"{where}: expected JSON objects like {{\"edits\": [...], "
                             f"\"info\": {{...}}}}, got {type(obj).__name__}")
        if "edits" in obj:
            out.append(Route.from_dict(obj))
        elif "best_masks" in obj:
            try:
                res = RosaisResult.from_dict(obj)
                r = res.route_for(top if top is not None else len(res.top_layers))
            except RouteError:
                raise
            except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
                # a malformed object (missing or unknown fields, wrong types), not a bug
                raise RouteError(f"{where}: not a usable RoSais result: "
                                 f"{one_line(exc, limit=200)}") from None
            r.info.setdefault("prompt", res.prompt)
            out.append(r)
        elif isinstance(obj.get("route"), dict):
            r = Route.from_dict(obj["route"])
            prompt = obj.get("prompt") or obj.get("goal")
            if isinstance(prompt, str) and prompt and not r.info.get("prompt"):
                r.info["prompt"] = prompt
            if "success" in obj:
                r.info["success"] = bool(obj["success"])
            elif "jailbroken" in obj:
                r.info.setdefault("success", bool(obj["jailbroken"]))
            if isinstance(obj.get("target"), str) and obj["target"] and \
                    not r.info.get("target"):
                r.info["target"] = obj["target"]
            out.append(r)
        elif "route" in obj and obj["route"] is None:
            continue  # an evaluate row without a route (method none)
        else:
            raise RouteError(f"{where}: not a route, search result or evaluate row "
                             f"(expected an object with 'edits', or an F-SOUR / RoSais / "
                             f"minimize result)")
    return out


# -- ASR on a prompt set ------------------------------------------------------------------


def defense_dict(moe=None):
    """The defense in force (:func:`explorer.core.control.defended`) as JSON, or None:
    results record it in their provenance."""
    d = active_defense()
    return d.to_dict() if d is not None and d.defends else None


def prompt_list(prompts: Iterable[str]) -> list[str]:
    """The usable prompts of ``prompts`` (non-empty text); InputError when none is left."""
    out = [p for p in prompts if isinstance(p, str) and p.strip()]
    if not out:
        raise InputError("no prompts")
    return out
