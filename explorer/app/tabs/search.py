"""The "Search" tab: background searches (queue, poll with a timer, stop, resume, open the
found route in the library). Its methods are the attacks of the registry that run as jobs
(:func:`explorer.attacks.list_attacks`, ``"job"``): F-SOUR with its own controls, any other
with its parameters as JSON (prefilled with its defaults). The browser's job ids live in
its BrowserState."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import gradio as gr

from explorer.app import searches
from explorer.app.errors import fail
from explorer.app.format import job_label, job_progress_md, job_result_md
from explorer.app.gate import Door, Event, Visit
from explorer.app.inputs import text_arg, whole_number
from explorer.app.library_access import library
from explorer.app.state import Shared
from explorer.attacks import get_attack, list_attacks
from explorer.core.defaults import DEFAULT_TARGET, DEFAULT_THRESHOLD, ENGINE_NAMES, MAX_SEED
from explorer.viz import figures as plots


def owner_of(app, b) -> str:
    """The owner key of this browser (from its signed BrowserState client id; a missing or
    forged one is a fresh id that owns nothing)."""
    return app.owners.owner(client=app.owners.ensure_client(b)["client"])


def job_buttons(st: dict | None):
    """Stop and Resume, enabled only when they apply to the chosen job (Stop: queued or
    running; Resume: interrupted or cancelled)."""
    status = (st or {}).get("status")
    return (gr.Button(interactive=status in ("queued", "running")),
            gr.Button(interactive=status in ("interrupted", "cancelled")))


def job_view(app, b, job_id):
    """Everything the search panel shows for the browser's jobs and the chosen one:
    (browser state, job dropdown, progress markdown, plot, result markdown, timer, Stop,
    Resume)."""
    statuses = []
    owner = owner_of(app, b)
    for j in reversed(b.get("jobs") or []):
        try:
            statuses.append(searches.status(app, j, owner))
        except Exception:  # noqa: BLE001 - a job the store no longer knows
            continue
    known = {s["id"] for s in statuses}
    b = dict(b, jobs=[j for j in b.get("jobs") or [] if j in known])
    if job_id not in known:
        job_id = statuses[0]["id"] if statuses else None
    active = any(s["status"] in ("queued", "running") for s in statuses)
    dd = gr.Dropdown(choices=[(job_label(s), s["id"]) for s in statuses], value=job_id)
    st = next((s for s in statuses if s["id"] == job_id), None)
    if st is None:
        return (b, dd, "No search yet.", plots.search_progress(None), "",
                gr.Timer(active=active), *job_buttons(None))
    toks = None
    if app.moe is not None:
        params = st.get("params") or {}
        try:
            toks = app.host.token_strings(app.moe.prepare(params["prompt"],
                                                          params.get("system")))
        except Exception:  # noqa: BLE001 - a prompt this model cannot take any more
            toks = None
    thr = (st.get("params") or {}).get("threshold", DEFAULT_THRESHOLD)
    return (b, dd, job_progress_md(st, toks),
            plots.search_progress(st["progress"].get("history"), thr),
            job_result_md(st), gr.Timer(active=active), *job_buttons(st))


@dataclass
class SearchUI:
    """The tab's components."""

    method: Any
    fsour_box: Any
    target: Any
    n: Any
    thr: Any
    iters: Any
    engine: Any
    params: Any
    seed: Any
    judge: Any
    start: Any
    jobs: Any
    stop: Any
    resume: Any
    open: Any
    md: Any
    plot: Any
    result: Any
    timer: Any
    minimize: Any = None  # its event: explorer.app.minimize

    def job_outputs(self, shared: Shared) -> list:
        """What :func:`job_view` fills."""
        return [shared.browser, self.jobs, self.md, self.plot, self.result, self.timer,
                self.stop, self.resume]


def layout(judges: list[str]) -> SearchUI:
    """The tab (inside an open ``gr.Tabs``); ``judges``: those the server offers."""
    from explorer.attacks.fsour import FsourParams
    spec = FsourParams.specs()
    methods = list_attacks("job")
    with gr.Tab("Search", id="search"):
        gr.Markdown("F-SOUR: token-by-token, layer-by-layer random search for forced experts "
                    "that make the model start its answer with the target. Searches run in "
                    "the background: close the tab and come back.")
        method = gr.Dropdown([(get_attack(m).label or m, m) for m in methods], value="fsour",
                             label="method", visible=len(methods) > 1, elem_id="search-method")
        with gr.Row(visible=True) as fsour_box:
            target = gr.Textbox(DEFAULT_TARGET, label="target answer prefix", scale=2)
            n = gr.Slider(1, 64, value=FsourParams.candidates, step=1,
                          label="candidates per cell (N)", info=spec["candidates"].help,
                          elem_id="search-n")
            thr = gr.Slider(0.01, 0.99, value=round(math.exp(DEFAULT_THRESHOLD), 2), step=0.01,
                            label="threshold: P(target)", elem_id="search-thr")
            iters = gr.Slider(1, 20, value=FsourParams.max_iters, step=1,
                              label="max restarts", elem_id="search-iters")
        params = gr.Code("{}", language="json", label="the method's parameters (JSON; "
                         "missing ones take their defaults)", visible=False,
                         elem_id="search-params")
        with gr.Row():
            seed = gr.Number(0, precision=0, label="seed")
            engine = gr.Radio(list(ENGINE_NAMES), value="fast", label="engine")
            judge = gr.Dropdown(judges, value="keyword", label="judge", elem_id="search-judge")
            start = gr.Button("Start search", variant="primary", elem_id="search-start")
        with gr.Row():
            jobs = gr.Dropdown([], label="Your searches", scale=3, elem_id="search-jobs")
            with gr.Column(scale=1, min_width=160):
                stop = gr.Button("Stop", variant="stop", size="sm", elem_id="search-stop",
                                 interactive=False)
                resume = gr.Button("Resume", size="sm", elem_id="search-resume",
                                   interactive=False)
                open_ = gr.Button("Open in library", size="sm", elem_id="search-open")
                minimize = gr.Button("Minimize", size="sm", elem_id="search-minimize")
        md = gr.Markdown("No search yet.", elem_id="search-progress")
        plot = gr.Plot(plots.search_progress(None), label="best log-prob over time",
                       elem_id="search-plot")
        result = gr.Markdown("", elem_id="search-result")
        timer = gr.Timer(1.0, active=False)
    return SearchUI(method, fsour_box, target, n, thr, iters, engine, params, seed, judge,
                    start, jobs, stop, resume, open_, md, plot, result, timer,
                    minimize=minimize)


# -- views ------------------------------------------------------------------------------------
def on_method(visit: Visit, method):
    """Another method: F-SOUR's controls or the JSON box prefilled with the method's
    defaults: (F-SOUR's row, the JSON box, the engine radio)."""
    attack = get_attack(text_arg(method, "method") or "fsour")
    if attack.name == "fsour":
        return gr.Row(visible=True), gr.Code(visible=False), gr.Radio(visible=True)
    defaults = json.dumps(attack.Params.defaults(), indent=2)
    return gr.Row(visible=False), gr.Code(value=defaults, visible=True), gr.Radio(visible=False)


def start_search(visit: Visit, method, prompt_v, system_v, target, n, thr, iters, seed, engine,
                 judge, max_new_v, params_json, b):
    """Queue a search of ``method`` (F-SOUR: the tab's controls; another: its JSON
    parameters), owned by this browser; the panel (:func:`job_view`)."""
    method = searches.job_method(text_arg(method, "method") or "fsour")
    if method == "fsour":
        p = text_arg(target, "target")
        values = {"target": p, "candidates": n, "max_iters": iters, "engine": engine,
                  "threshold": math.log(_probability(thr))}
    else:
        values = searches.params_from_json(text_arg(params_json, "parameters"), "Parameters")
    b = visit.app.owners.ensure_client(b)
    params = {**values, "prompt": prompt_v, "system": visit.system(system_v),
              "seed": whole_number(seed, "seed", 0, MAX_SEED), "judge": judge or "keyword",
              "max_new_tokens": visit.tokens(max_new_v)}
    job_id = searches.submit(visit, method, params, owner_of(visit.app, b))
    b["jobs"] = b["jobs"] + [job_id]
    gr.Info("Search queued: it runs in the background.")
    return job_view(visit.app, b, job_id)


def _probability(value) -> float:
    from explorer.app.inputs import fraction
    return fraction(value, "the threshold P(target)")


def poll(visit: Visit, b, job_id):
    """The timer's (and the job list's) refresh of the panel."""
    return job_view(visit.app, visit.app.owners.ensure_client(b), job_id)


def stop(visit: Visit, b, job_id):
    """Stop the chosen search (resumable)."""
    if not job_id:
        fail("No search selected.")
    searches.cancel(visit.app, job_id, owner_of(visit.app, b))
    return job_view(visit.app, visit.app.owners.ensure_client(b), job_id)


def resume(visit: Visit, b, job_id):
    """Resume the chosen search from its checkpoint (checked like a new one)."""
    if not job_id:
        fail("No search selected.")
    b = visit.app.owners.ensure_client(b)
    searches.resume(visit, job_id, owner_of(visit.app, b))
    return job_view(visit.app, b, job_id)


def open_in_library(visit: Visit, b, job_id, max_new_v):
    """The chosen search's saved route replayed in the library, as a saved route's link
    opens it: its id picked, the library tab open, the table refreshed and the route's
    prompt and system prompt in their boxes, then the replay streamed. Outputs: (route id,
    tabs, routes table, prompt, system prompt, then the library's replay outputs)."""
    from explorer.app.tabs.library import list_table, replay_route
    if not job_id:
        fail("No search selected.")
    st = searches.status(visit.app, job_id, owner_of(visit.app, b))
    if st.get("route_id") is None:
        fail("This search has not saved a route (yet).")
    lib = library(visit, b)
    sr = lib.get(int(st["route_id"]))
    skip = (gr.skip(),) * 5
    yield ((sr.id, gr.Tabs(selected="library"), list_table(lib, "any", "", "any", "any"),
            sr.prompt or gr.skip(), sr.route.system or "") + (gr.skip(),) * 4)
    for out in replay_route(visit, sr.id, "", max_new_v, b):
        yield skip + tuple(out)


def events(ui: SearchUI, shared: Shared, library) -> list[Event]:
    """The tab's events; ``library``: the library tab's components (Open fills them)."""
    out = ui.job_outputs(shared)
    picked = [shared.browser, ui.jobs]
    return [
        Event(ui.method.input, on_method, [ui.method], [ui.fsour_box, ui.params, ui.engine],
              Door("Method")),
        Event(ui.start.click, start_search,
              [ui.method, shared.prompt, shared.system, ui.target, ui.n, ui.thr, ui.iters,
               ui.seed, ui.engine, ui.judge, shared.max_new, ui.params, shared.browser], out,
              Door("Start search", "job")),
        Event(ui.timer.tick, poll, picked, out, Door("Search status", "poll"),
              {"show_progress": "hidden"}),
        Event(ui.jobs.input, poll, picked, out, Door("Search status")),
        Event(ui.stop.click, stop, picked, out, Door("Stop")),
        Event(ui.resume.click, resume, picked, out, Door("Resume", "job")),
        Event(ui.open.click, open_in_library, picked + [shared.max_new],
              [library.route_id, shared.tabs, library.table, shared.prompt, shared.system]
              + library.replay_outputs(), Door("Open in library", "model", gpu=60)),
    ]
