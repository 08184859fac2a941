"""What the Research tab's views share: settings, input checks (numbers, prompts, routes
from library ids or JSON, the judge), the attacks they offer (from the registry) and a
progress bar for long library calls.

Bad input raises ``gr.Error`` with one line (:func:`~explorer.app.errors.fail`); the gate
turns anything else into one line too.
"""

from __future__ import annotations

import math
import re
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from explorer.app.errors import fail
from explorer.app.inputs import MAX_ROW_ID, text_arg, whole_number
from explorer.app.library_access import Library, library
from explorer.attacks import get_attack, list_attacks
from explorer.core.errors import InputError, one_line
from explorer.core.route import Route

if TYPE_CHECKING:
    from explorer.app.gate import Visit

MAX_PROMPTS = 50
HOSTED_MAX_PROMPTS = 8  # hosted mode (explorer.app.hosted): keep each run short
ROSAIS_SOURCE = "RoSais top-L masks"
ROUTE_SOURCE = "routes (library ids / JSON)"
VERDICT_WORDS = {True: "jailbroken", False: "not jailbroken"}

__all__ = ["HOSTED_MAX_PROMPTS", "MAX_PROMPTS", "ROSAIS_SOURCE", "ROUTE_SOURCE",
           "attack_choices", "collect_routes", "library_routes", "parse_ids",
           "parse_prompts", "parse_route_json", "run_with_progress"]


def attack_choices() -> list[tuple[str, str]]:
    """The attacks a defense is measured against, as (label, name) choices: the registry's
    (:func:`explorer.attacks.list_attacks`, ``"defend"``)."""
    return [(get_attack(a).label or a, a) for a in list_attacks("defend")]


def judge_choices(app) -> list[str]:
    """The judges the views offer: those this server can set up and, hosted, allows."""
    judges = app.host.usable_judges()
    if app.policy.enabled:
        judges = [j for j in judges if j in app.policy.allowed_judges] or ["keyword"]
    return judges


def generation_settings(visit: Visit, max_new, judge: str | None):
    """(max new tokens, judge) for a view's generations: the tokens capped by the
    hosted-mode policy when it is on, the judge one the server allows."""
    hi = int(visit.policy.max_new_tokens) if visit.policy.enabled else 512
    return whole_number(max_new, "max new tokens", 1, hi), visit.judge(judge)


# -- prompts and routes -----------------------------------------------------------------------
def at_most(items: list, what: str, limit: int = MAX_PROMPTS) -> list:
    if len(items) > limit:
        fail(f"Too many {what} ({len(items)}); at most {limit} per run.")
    return items


def parse_prompts(text: str | None, what: str = "prompts", required: bool = True,
                  limit: int = MAX_PROMPTS) -> list[str]:
    """One prompt per line (blank lines and ``#`` comments skipped, duplicates dropped)."""
    out = list(dict.fromkeys(ln.strip() for ln in (text or "").splitlines()
                             if ln.strip() and not ln.lstrip().startswith("#")))
    if required and not out:
        fail(f"No {what}: type one per line.")
    return at_most(out, what, limit)


def prompt_lines(visit: Visit, text, what, required=True) -> list[str]:
    """The prompts of ``text`` (one a line), each checked like any other prompt (the
    hosted caps on characters and tokens included) and prepared once."""
    out = parse_prompts(text_arg(text, what), what, required,
                        HOSTED_MAX_PROMPTS if visit.policy.enabled else MAX_PROMPTS)
    for p in out:
        visit.prompt(p)
    return out


def prompt_tokens(visit: Visit, prompts: list[str]) -> int:
    """The largest templated length of ``prompts`` (for cost estimates)."""
    moe = visit.moe
    return max((moe.prepare(p).num_tokens for p in prompts), default=0)


def parse_ids(text: str | None) -> list[int]:
    """Route library ids from ``"3, 5 #7"``-like text."""
    out = []
    for tok in re.split(r"[\s,;]+", text_arg(text, "route ids").strip()):
        if not tok:
            continue
        tok = tok.lstrip("#")
        if not tok.isdigit() or not 1 <= int(tok) <= MAX_ROW_ID:
            fail(f"A route id must be a positive whole number, got {tok[:30]!r}")
        out.append(int(tok))
    return list(dict.fromkeys(out))


def rosais_route(res, top: int | None = None) -> Route:
    """A RoSais result's top-L masks (all its top layers by default), with its prompt."""
    r = res.route if top is None else res.route_for(top)
    r.info.setdefault("prompt", res.prompt)
    return r


def parse_route_json(text: str | None) -> list[Route]:
    """Routes from JSON text: one route object, a list of them, JSON lines, or F-SOUR /
    RoSais / minimize result objects (``--json`` output of the CLI), read by the parser
    the CLI uses (:func:`explorer.research.common.routes_from_objects`)."""
    from explorer.research.common import json_objects, routes_from_objects
    text = (text or "").strip()
    if not text:
        return []
    try:
        objs = json_objects(text)
    except InputError as exc:
        fail(f"The route JSON does not parse: {exc}")
    try:
        return routes_from_objects(objs)
    except InputError as exc:
        fail(one_line(exc))


def library_routes(lib: Library, ids: list[int]) -> list[Route]:
    """Stored routes by id (those ``lib``'s caller may see: another's private id is
    answered like an unknown one), each with its prompt and success in ``info``."""
    out = []
    for i in ids:
        sr = lib.get(i)
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


def collect_routes(visit: Visit, ids_text: str | None, json_text: str | None,
                   required: bool = True, browser: Any = None) -> list[Route]:
    """Routes from library ids (those the caller, of ``browser``, may see) and route JSON,
    validated against the loaded model (and, hosted, the route size cap of their own
    prompts)."""
    routes = (library_routes(library(visit, browser), parse_ids(ids_text))
              + parse_route_json(json_text))
    if required and not routes:
        fail("No route given: type route library ids or paste route JSON (find routes in "
             "the Search tab; they are saved to the library).")
    at_most(routes, "routes")
    moe = visit.moe
    for r in routes:
        p = r.info.get("prompt")
        visit.route(r, visit.prompt(p, r.system) if isinstance(p, str) and p.strip()
                    else None)
        r.validate(moe.info)
    return routes


# -- results ----------------------------------------------------------------------------------
def route_name(r: Route, i: int) -> str:
    lib = r.info.get("library_id")
    return f"route {i}" + (f" (library #{lib})" if lib else "")


def verdict_word(jailbroken: bool | None, unknown: str = "—") -> str:
    return VERDICT_WORDS.get(jailbroken, unknown)


def run_with_progress(progress, fn: Callable[[], Any], desc: str, lo: float = 0.0,
                      hi: float = 1.0, expected_s: float = 10.0):
    """Run ``fn()`` in a worker thread; meanwhile move the bar from ``lo`` towards ``hi``
    (an exponential approach with time constant ``expected_s``) and show the elapsed time.
    Re-raises ``fn``'s exception here."""
    from explorer.engine.tuning import active_tuning, tuned
    box: dict[str, Any] = {}
    tuning = active_tuning()  # a thread starts without the caller's context

    def work():
        try:
            with tuned(tuning):
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
