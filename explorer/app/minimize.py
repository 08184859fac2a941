"""Minimize: the fewest edits of a route that still flip the answer, from Inspect (the
pending edits) or from Search (the chosen search's route).

Both run :func:`explorer.research.minimal.minimize` as model work in the model's slot,
through the gate, with progress; in hosted mode the route is capped and the work budgeted
like the Research tab's Minimal route (:func:`~explorer.research.minimal.minimize_cost`).
The minimal route becomes Inspect's pending edits and is re-run there beside the
baseline (:func:`explorer.app.tabs.inspect.on_rerun`), with a one-line summary.
"""

from __future__ import annotations

import html

import gradio as gr

from explorer.app.errors import fail
from explorer.app.format import edits_box
from explorer.app.gate import Door, Event, Visit
from explorer.app.state import InspectState, Shared
from explorer.core.defaults import DEFAULT_TARGET, DEFAULT_THRESHOLD
from explorer.core.route import Route

#: Generations tried per round of the greedy removal (the Research tab's default).
CHECKS = 3


def _minimize(visit: Visit, prompt, route: Route, n: int, progress, target: str | None = None,
              threshold: float | None = None, judge: str | None = None):
    """The minimal form of ``route`` on the prepared ``prompt`` (its answers ``n`` tokens
    long) and the summary line. A route that does not flip the answer is refused."""
    from explorer.app.tabs.research.common import run_with_progress
    from explorer.research.minimal import minimize, minimize_cost
    moe = visit.moe
    jd = visit.judge(judge)
    visit.budget(minimize_cost(len(route), CHECKS, n), "minimising this route")
    tgt = target or route.info.get("target") or DEFAULT_TARGET
    thr = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    route = Route(list(route.edits), dict(route.info, prompt=prompt.text))  # its own prompt
    m = run_with_progress(progress, lambda: minimize(
        moe, prompt.text, route, target=tgt, threshold=thr, judge=jd, max_new_tokens=n,
        checks=CHECKS, system=prompt.system), f"minimising {len(route)} edits", 0.0, 1.0,
        2.5 * max(len(route), 1))
    if not m.jailbroken_before:
        fail(f"These {len(route)} edits do not flip the answer (judge {m.judge}, "
             f"{n} new tokens): there is nothing to minimise.")
    cells = prompt.num_tokens * len(moe.moe_layers)
    md = (f"**Minimized: {m.edits_before} → {m.edits_after} edits** "
          f"({m.edits_after} of {cells} prompt cells) · log P({html.escape(tgt)!r}) "
          f"{m.logprob_before:.2f} → {m.logprob_after:.2f} · still jailbroken: "
          f"**{'yes' if m.jailbroken_after else 'no'}** (judge {m.judge}) · "
          f"{m.forward_passes:,} forward passes, {m.generations} generations, "
          f"{m.seconds:.1f} s")
    kept = Route(m.minimal_route.edits, dict(route.info))
    return m, kept, md


def _then_rerun(visit: Visit, prompt, n: int, st: InspectState, head: tuple):
    """``head`` (the outputs before Inspect's) with each of Re-run's yields."""
    from explorer.app.tabs.inspect import on_rerun
    skip = (gr.skip(),) * len(head)
    first = True
    for out in on_rerun(visit, prompt.text, prompt.system or "", n, st):
        yield (head if first else skip) + tuple(out)
        first = False


def on_minimize(visit: Visit, prompt_v, system_v, max_new_v, st: InspectState,
                progress=gr.Progress()):  # noqa: B008 - how Gradio passes it
    """Inspect's Minimize: the pending edits minimised on the prompt, then re-run.
    Outputs: the summary, the edits list, then :meth:`InspectUI.rerun_outputs`."""
    from explorer.app.tabs.inspect import pending
    st = st or InspectState()
    n = visit.tokens(max_new_v)
    prompt, route = pending(visit, prompt_v, system_v, st,
                            "There are no pending edits to minimise: add edits or open a "
                            "route first.")
    _, kept, md = _minimize(visit, prompt, route, n, progress)
    st = st.with_(route=kept, alt=None)
    box = edits_box(st.edit_dicts(), visit.app.host.token_strings(prompt))
    yield from _then_rerun(visit, prompt, n, st, (md, box))


def on_minimize_search(visit: Visit, b, job_id, max_new_v, st: InspectState,
                       progress=gr.Progress()):  # noqa: B008 - how Gradio passes it  # noqa: B008 - how Gradio passes it
    """Search's Minimize: the chosen search's route minimised on its prompt (with its
    target, threshold and judge), then opened in Inspect and re-run there. Outputs: the
    prompt, the system prompt, the tabs, Inspect's summary and edits list, then
    :meth:`InspectUI.rerun_outputs`."""
    from explorer.app import searches
    from explorer.app.tabs.search import owner_of
    if not job_id:
        fail("No search selected.")
    status = searches.status(visit.app, job_id, owner_of(visit.app, b))
    result = status.get("result") if isinstance(status.get("result"), dict) else {}
    found = result.get("route")
    if not isinstance(found, dict) or not found.get("edits"):
        fail("This search has not found a route (yet): minimise it when it has one.")
    params = status.get("params") or {}
    prompt = visit.prompt(params.get("prompt"), params.get("system"))
    route = Route.from_dict(found)
    visit.route(route, prompt)
    n = visit.tokens(max_new_v)
    _, kept, md = _minimize(visit, prompt, route, n, progress, target=params.get("target"),
                            threshold=params.get("threshold"), judge=params.get("judge"))
    st = (st or InspectState()).with_(route=kept, alt=None, selected=None)
    box = edits_box(st.edit_dicts(), visit.app.host.token_strings(prompt))
    head = (prompt.text, prompt.system or "", gr.Tabs(selected="inspect"), md, box)
    yield from _then_rerun(visit, prompt, n, st, head)


def events(search, inspect, shared: Shared) -> list[Event]:
    """The Minimize buttons of Search (``search``: its components) and Inspect
    (``inspect``: its components): model work in the model's slot."""
    door = Door("Minimize", "model", gpu=240)
    return [
        Event(inspect.min_btn.click, on_minimize,
              [shared.prompt, shared.system, shared.max_new, inspect.state],
              [inspect.min_md, inspect.edit_list] + inspect.rerun_outputs(), door),
        Event(search.minimize.click, on_minimize_search,
              [shared.browser, search.jobs, shared.max_new, inspect.state],
              [shared.prompt, shared.system, shared.tabs, inspect.min_md, inspect.edit_list]
              + inspect.rerun_outputs(), door),
    ]
