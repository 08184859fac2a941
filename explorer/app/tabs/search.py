"""The "Search" tab: F-SOUR jobs in the background (queue, poll with a timer, stop,
resume, open the found route in the library). The browser's job ids live in BrowserState."""

from __future__ import annotations

import math
import secrets
from typing import TYPE_CHECKING

import gradio as gr

from explorer.app.common import FREE, UI, fail, user_errors, whole_number
from explorer.app.format import job_label, job_progress_md, job_result_md
from explorer.core.defaults import DEFAULT_TARGET, DEFAULT_THRESHOLD
from explorer.viz import figures as plots

if TYPE_CHECKING:
    from types import SimpleNamespace

    from explorer.app.context import Explorer


def ensure_client(b):
    """The BrowserState value with a client id and at most 50 job ids."""
    b = dict(b or {})
    if not b.get("client"):
        b["client"] = secrets.token_hex(8)
    b["jobs"] = [j for j in (b.get("jobs") or []) if isinstance(j, str)][-50:]
    return b


def owner_of(ctx: Explorer, b) -> str:
    """The owner key of this browser's jobs (from its signed BrowserState client id)."""
    return ctx.owner(client=ensure_client(b)["client"])


def job_buttons(st: dict | None):
    """Stop and Resume, enabled only when they apply to the chosen job (Stop: queued or
    running; Resume: interrupted or cancelled)."""
    status = (st or {}).get("status")
    return (gr.Button(interactive=status in ("queued", "running")),
            gr.Button(interactive=status in ("interrupted", "cancelled")))


def job_view(ctx: Explorer, b, job_id):
    """Everything the search panel shows for the browser's jobs and the chosen one:
    (browser state, job dropdown, progress markdown, plot, result markdown, timer, Stop,
    Resume)."""
    statuses = []
    owner = owner_of(ctx, b)
    for j in reversed(b.get("jobs") or []):
        try:
            statuses.append(ctx.job_status(j, owner))
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
    try:
        params = st["params"]
        toks = ctx.prompt_tokens(params["prompt"], params.get("system")) if ctx.moe else None
    except Exception:  # noqa: BLE001
        toks = None
    thr = (st.get("params") or {}).get("threshold", DEFAULT_THRESHOLD)
    return (b, dd, job_progress_md(st, toks),
            plots.search_progress(st["progress"].get("history"), thr),
            job_result_md(st), gr.Timer(active=active), *job_buttons(st))


def layout(p: SimpleNamespace) -> None:
    from explorer.app.common import usable_judges
    judges = usable_judges(p.ctx)
    with gr.Tab("Search", id="search"):
        gr.Markdown("F-SOUR: token-by-token, layer-by-layer random search for forced "
                    "experts that make the model start its answer with the target. "
                    "Searches run in the background: close the tab and come back.")
        with gr.Row():
            p.s_target = gr.Textbox(DEFAULT_TARGET, label="target answer prefix", scale=2)
            p.s_n = gr.Slider(1, 64, value=10, step=1, label="candidates per cell (N)",
                              elem_id="search-n")
            p.s_thr = gr.Slider(0.01, 0.99, value=0.8, step=0.01, label="threshold: P(target)",
                                elem_id="search-thr")
            p.s_iters = gr.Slider(1, 20, value=5, step=1, label="max restarts",
                                  elem_id="search-iters")
        with gr.Row():
            p.s_seed = gr.Number(0, precision=0, label="seed")
            p.s_engine = gr.Radio(["fast", "reference"], value="fast", label="engine")
            p.s_judge = gr.Dropdown(judges, value="keyword", label="judge",
                                    elem_id="search-judge")
            p.s_start = gr.Button("Start search", variant="primary", elem_id="search-start")
        with gr.Row():
            p.s_jobs = gr.Dropdown([], label="Your searches", scale=3, elem_id="search-jobs")
            with gr.Column(scale=1, min_width=160):
                p.s_stop = gr.Button("Stop", variant="stop", size="sm", elem_id="search-stop",
                                     interactive=False)
                p.s_resume = gr.Button("Resume", size="sm", elem_id="search-resume",
                                       interactive=False)
                p.s_open = gr.Button("Open in library", size="sm", elem_id="search-open")
        p.s_md = gr.Markdown("No search yet.", elem_id="search-progress")
        p.s_plot = gr.Plot(plots.search_progress(None), label="best log-prob over time",
                           elem_id="search-plot")
        p.s_result = gr.Markdown("", elem_id="search-result")
        p.timer = gr.Timer(1.0, active=False)
    p.job_outputs = [p.browser, p.s_jobs, p.s_md, p.s_plot, p.s_result, p.timer, p.s_stop,
                     p.s_resume]


def wire(ctx: Explorer, p: SimpleNamespace) -> None:
    from explorer.app.tabs.library import list_table
    job_outputs = p.job_outputs

    def start_search(prompt_v, system_v, target, n, thr, iters, seed, engine, judge, max_new_v,
                     b, request: gr.Request = None):
        with user_errors("Start search"):
            ctx.require_jobs()
            sp = ctx.system(system_v)
            ctx.check_prompt(prompt_v, sp)
            if not (target or "").strip():
                fail("The target is empty.")
            b = ensure_client(b)
            params = {"prompt": prompt_v, "target": target, "candidates": whole_number(n, "N", 1),
                      "threshold": math.log(float(thr)), "max_iters": whole_number(iters, "restarts", 1),
                      "seed": whole_number(seed, "seed"), "engine": engine,
                      "max_new_tokens": whole_number(max_new_v, "max new tokens", 1, 4096),
                      "judge": judge or "keyword", "system": sp}
            job_id = ctx.submit_search(params, owner_of(ctx, b), request)
            b["jobs"] = b["jobs"] + [job_id]
            gr.Info("Search queued: it runs in the background.")
            return job_view(ctx, b, job_id)

    p.s_start.click(start_search, [p.prompt, p.system, p.s_target, p.s_n, p.s_thr, p.s_iters,
                                   p.s_seed, p.s_engine, p.s_judge, p.max_new, p.browser],
                    job_outputs,
                    **FREE, **UI)

    def poll(b, job_id):
        with user_errors("Search status"):
            return job_view(ctx, ensure_client(b), job_id)

    p.timer.tick(poll, [p.browser, p.s_jobs], job_outputs, show_progress="hidden", **FREE, **UI)
    p.s_jobs.input(poll, [p.browser, p.s_jobs], job_outputs, **FREE, **UI)

    def stop(b, job_id):
        with user_errors("Stop"):
            if not job_id:
                fail("No search selected.")
            ctx.cancel_job(job_id, owner_of(ctx, b))
            return job_view(ctx, ensure_client(b), job_id)

    def resume(b, job_id, request: gr.Request = None):
        with user_errors("Resume"):
            if not job_id:
                fail("No search selected.")
            b = ensure_client(b)
            ctx.resume_job(job_id, owner_of(ctx, b), request)
            return job_view(ctx, b, job_id)

    p.s_stop.click(stop, [p.browser, p.s_jobs], job_outputs, **FREE, **UI)
    p.s_resume.click(resume, [p.browser, p.s_jobs], job_outputs, **FREE, **UI)

    def open_in_library(b, job_id):
        with user_errors("Open"):
            if not job_id:
                fail("No search selected.")
            st = ctx.job_status(job_id, owner_of(ctx, b))
            if st.get("route_id") is None:
                fail("This search has not saved a route (yet).")
            return (st["route_id"], gr.Tabs(selected="library"),
                    list_table(ctx, "any", "", "any", "any"))

    p.s_open.click(open_in_library, [p.browser, p.s_jobs], [p.l_id, p.tabs, p.table], **FREE, **UI)
