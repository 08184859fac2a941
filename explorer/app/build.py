"""The Gradio app: layout and short callbacks (UI values -> library calls -> figures).

:func:`build_app` returns a ``gr.Blocks``; launch it with ``demo.queue().launch(
**launch_options(), ...)`` (Gradio 6 takes theme, css and head in ``launch``).

One model per process (:class:`Explorer`), shared by every browser session; everything
that belongs to one user (traces, pending edits, the selected cell, RoSais results) lives
in ``gr.State``, and the ids of their background searches in ``gr.BrowserState`` so a
refreshed tab (or a restarted app) finds them again. Every event that runs the model
shares one concurrency slot (``concurrency_id="model"``). Errors reach the user as
``gr.Error`` messages, never as tracebacks. A :class:`~explorer.app.hosted.HostedPolicy`
(hosted mode) is applied by every callback and endpoint; with it off, its checks pass.

The process-wide context is :class:`explorer.app.context.Explorer`. The tabs live in
their own modules under :mod:`explorer.app.tabs` (``tour``, ``inspect``, ``rosais``,
``search``, ``library``, ``model``, ``research``); the named API endpoints in
:mod:`explorer.app.api`; shared helpers in :mod:`explorer.app.common` and
:mod:`explorer.app.format`.

Named API endpoints (see the app's "Use via API" page): ``trace``, ``generate``,
``rosais``, ``search_start``, ``search_status``, ``search_cancel``, ``routes``,
``replay``; each returns the same JSON object as the matching CLI ``--json`` command.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import gradio as gr

from explorer.app.api import register_api
from explorer.app.common import (
    FREE,
    MODE_CHOICES,
    MODEL_SLOT,
    UI,
    VIEWS,
    errors_as_toasts,
    gpu,
    route_of_edits,
    spaces,
    stream_trace,
    usable_judges,
    user_errors,
    verdict_text,
)
from explorer.app.context import HIDDEN_TOKEN, Explorer
from explorer.app.format import (
    cell_info,
    edit_choices,
    edit_label,
    edits_box,
    job_label,
    job_progress_md,
    job_result_md,
    model_card,
    model_header,
    routes_frame,
)
from explorer.app.hosted import HostedPolicy
from explorer.app.tabs.inspect import BRIDGE_JS
from explorer.core.defaults import DEFAULT_TARGET, DEFAULT_THRESHOLD
from explorer.core.errors import one_line
from explorer.core.model import MoEModel
from explorer.settings import Settings

__all__ = [  # re-exported: scripts and tests import these from explorer.app.build
    "BRIDGE_JS", "CSS", "DEFAULT_TARGET", "DEFAULT_THRESHOLD", "Explorer", "FREE",
    "HIDDEN_TOKEN", "MODEL_SLOT", "MODE_CHOICES", "UI", "VIEWS", "build_app", "cell_info",
    "edit_label", "edits_box", "gpu", "job_label", "job_progress_md", "job_result_md",
    "launch_options", "model_card", "model_header", "routes_frame", "spaces",
    "stream_trace", "usable_judges", "user_errors", "register_api", "edit_choices", "route_of_edits",
    "verdict_text"]

CSS = """
#route-heatmap, #usage-plot { min-height: 320px; }
.sse-bridge-msg { font-size: 0.85em; color: var(--body-text-color-subdued); }
#sse-header p { margin: 0; }
.sse-answer textarea { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
#pending-edits .wrap { max-height: 190px; overflow-y: auto; }
.sse-tour-step { border-left: 3px solid var(--color-accent); padding-left: 0.6em; }
.sse-tour-btn { font-size: 1.05em; min-height: 44px; margin: 0.3em 0; }
.sse-verdicts { font-size: 0.95em; line-height: 1.8; }
.sse-badge { padding: 0.1em 0.55em; border-radius: 0.8em; color: #fff; font-weight: 600; }
.sse-badge.sse-jailbroken { background: #b91c1c; }
.sse-badge.sse-refusal { background: #15803d; }
.sse-badge.sse-empty { background: #6b7280; }
.sse-lp { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.9em; }
.sse-diff { margin-top: 0.3em; white-space: pre-wrap; }
.sse-diff del { background: #fee2e2; color: #991b1b; }
.sse-diff ins { background: #dcfce7; color: #166534; text-decoration: none; }
.sse-table th, .sse-table th * { white-space: nowrap; word-break: keep-all; }
#route-heatmap { overflow-x: auto; }
#route-heatmap .js-plotly-plot, #route-heatmap div[data-testid="plotly"] { min-width: 640px; }
"""


def launch_options(demo: gr.Blocks | None = None) -> dict[str, Any]:
    """Keyword arguments for ``launch()`` (theme and css moved there in Gradio 6). With
    the app ``demo``, its HTTP edge too (:class:`explorer.app.http.RequestCheck`: bounded
    bodies, unknown API names and missing arguments answered with one line) and
    ``show_error``: a value Gradio itself cannot take (text in a slider, say) is answered
    with Gradio's one-line reason instead of ``{"error": null}``. Every callback turns its
    own failures into one-line messages (:func:`~explorer.app.common.user_errors`), so no
    internal detail travels this way."""
    out: dict[str, Any] = {"theme": gr.themes.Soft(primary_hue="indigo", secondary_hue="rose"),
                           "css": CSS}
    if demo is not None:
        from starlette.middleware import Middleware

        from explorer.app.http import RequestCheck
        out["app_kwargs"] = {"middleware": [Middleware(RequestCheck, blocks=lambda: demo)]}
        out["show_error"] = True
    return out


def opened_link(request: Any, quiet: bool = False) -> dict:
    """What the page's address asks to open (:func:`explorer.app.links.parse_link`); {}
    for none. Raises :class:`~explorer.app.links.LinkError` for a malformed one (``quiet``:
    {} instead; the page load already said why)."""
    from explorer.app.links import LinkError, parse_link
    try:
        return parse_link(getattr(request, "query_params", None))
    except LinkError:
        if quiet:
            return {}
        raise


def _hosted_note(policy: HostedPolicy) -> str:
    if not policy.enabled:
        return ""
    return (f"*Hosted server: prompts up to {policy.max_prompt_tokens} tokens, answers up to "
            f"{policy.max_new_tokens} new tokens, searches up to {policy.max_search_budget:,} "
            f"candidate evaluations, {policy.max_jobs_per_session} searches at a time, "
            f"{policy.rate * 60:g} requests a minute.*")


# -- the app ---------------------------------------------------------------------------------
def build_app(model: str | MoEModel | None = None, *, data_dir: str | os.PathLike | None = None,
              device: str = "auto", policy: HostedPolicy | None = None,
              settings: Settings | None = None) -> gr.Blocks:
    """Build the explorer app on ``model`` (demo model by default; a hub id, local folder or
    a loaded :class:`MoEModel`). ``data_dir`` holds the route library (default: the
    settings' ``data_dir``, see :func:`explorer.storage.library.default_data_dir`);
    ``policy`` the hosted-mode limits (default: the settings' policy, else hosted mode off);
    ``settings`` (:class:`explorer.settings.Settings`, default: all defaults; ``app.py``
    reads them from the environment) the rest. If the model can't be loaded the app still
    starts and says why.
    """
    from explorer.app.tabs import inspect as ui_inspect
    from explorer.app.tabs import library as ui_library
    from explorer.app.tabs import model as ui_model
    from explorer.app.tabs import rosais as ui_rosais
    from explorer.app.tabs import search as ui_search
    from explorer.app.tabs import tour as ui_tour
    from explorer.app.tabs.research.tab import research_tab
    from explorer.core.prompt_sets import BENIGN_PROMPTS, HARMFUL_PROMPTS
    ctx = Explorer(model, data_dir=data_dir, device=device, policy=policy, settings=settings)
    policy = ctx.policy
    max_tokens = policy.max_new_tokens if policy.enabled else 256

    with gr.Blocks(title="Sparse Safety Explorer") as demo:
        demo.explorer = ctx  # for tests and scripts
        p = SimpleNamespace(ctx=ctx)  # the components the tabs share
        p.st_base = gr.State(None)    # RoutingTrace without edits
        p.st_alt = gr.State(None)     # RoutingTrace with the pending edits
        p.st_edits = gr.State([])     # pending edits: list of edit dicts
        p.st_sel = gr.State(None)     # {"layer", "position"}
        p.st_rosais = gr.State(None)  # RosaisResult.to_dict()
        p.browser = gr.BrowserState({"client": None, "jobs": []},
                                    storage_key="sse-explorer-jobs",
                                    secret=ctx.browser_secret())

        gr.Markdown("## Sparse Safety Explorer · unsafe routes in Mixture-of-Experts LLMs")
        p.header = gr.Markdown(model_header(ctx), elem_id="sse-header")
        if policy.enabled:
            gr.Markdown(_hosted_note(policy), elem_id="hosted-note")
        tour = ui_tour.load(p)  # the landing tab, when the shipped tour is readable
        with gr.Row():
            p.prompt = gr.Textbox(label="Prompt (user message; the chat template is applied)",
                                  value=tour.prompt if tour else HARMFUL_PROMPTS[0],
                                  lines=1, max_lines=6, scale=4,
                                  info="Enter generates; Shift+Enter starts a new line.",
                                  elem_id="prompt-box")
            with gr.Column(scale=1, min_width=220):
                p.max_new = gr.Slider(0, max_tokens, value=min(48, max_tokens), step=1,
                                      label="max new tokens (greedy)", elem_id="prompt-max-new")
                p.gen_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
        with gr.Accordion("System prompt (optional)", open=False, elem_id="system-acc"):
            p.system = gr.Textbox(
                label="System prompt", lines=2, max_lines=8, elem_id="system-box",
                placeholder="e.g. You are a helpful assistant.",
                info="Goes in the chat template's system turn (merged before the user "
                     "message where the template has none). Used by Inspect, RoSais and "
                     "Search; the Tour keeps its own setup. Routes record it, and positions "
                     "count its tokens.")
        gr.Examples([[x] for x in HARMFUL_PROMPTS[:6] + BENIGN_PROMPTS[:3]], inputs=[p.prompt],
                    label="Example prompts")

        with gr.Tabs(elem_id="main-tabs", selected="tour" if tour else "inspect") as p.tabs:
            ui_tour.layout(p)
            ui_inspect.layout(p)
            ui_rosais.layout(p)
            ui_search.layout(p)
            ui_library.layout(p)
            ui_model.layout(p)
            research_tab(ctx)

        for tab in (ui_inspect, ui_tour, ui_rosais, ui_search, ui_library, ui_model):
            tab.wire(ctx, p)

        def on_load(b, model_f, text_f, success_f, source_f, request: gr.Request = None):
            # (named, not *filt: Gradio passes no request to a function with *args)
            filt = (model_f, text_f, success_f, source_f)
            b = ui_search.ensure_client(b)
            tab = skip = gr.skip()
            view = (skip,) * 6  # route id, prompt, max new tokens, edits, the edits list, system
            job = None
            try:
                link = opened_link(request)
                if "job" in link:  # a search of this browser only (every job view checks)
                    ctx.owned_job(link["job"], ui_search.owner_of(ctx, b))
                    job, tab = link["job"], gr.Tabs(selected="search")
                    b = dict(b, jobs=[j for j in b["jobs"] if j != job] + [job])
                elif "route" in link:
                    sr = ctx.store.get_route(link["route"])
                    view = (sr.id, skip, link.get("n", skip), skip, skip, skip)
                    tab = gr.Tabs(selected="library")
                elif "edits" in link:
                    route = route_of_edits(link["edits"])
                    sp = ctx.system(link.get("system"))
                    ctx.check_route(route, ctx.check_prompt(link["prompt"], sp), sp)
                    edits = route.to_dict()["edits"]
                    view = (skip, link["prompt"], link.get("n", skip), edits,
                            edits_box(edits, ctx.prompt_tokens(link["prompt"], sp)),
                            sp or "")
                    tab = gr.Tabs(selected="inspect")
            except Exception as exc:  # noqa: BLE001 - a bad link must not stop the page
                gr.Warning(f"This link cannot be opened: {one_line(exc)}", title="Error")
            out = ui_search.job_view(ctx, b, job)
            df, dd = ui_library.refresh(ctx, *filt)
            return (*out, df, dd, model_header(ctx), *model_card(ctx), tab, *view)

        loaded = demo.load(on_load, [p.browser] + p.filters,
                           p.job_outputs + [p.table, p.f_model, p.header, p.m_card, p.m_layers,
                                            p.tabs, p.l_id, p.prompt, p.max_new, p.st_edits,
                                            p.edit_list, p.system], **FREE, **UI)

        def follow_route_link(max_new_v, request: gr.Request = None):
            link = opened_link(request, quiet=True)  # (the route id box may be empty: None)
            if "route" in link:
                yield from p.replay_fn(link["route"], "", max_new_v, request)
            else:
                yield (gr.skip(),) * 4

        def follow_edits_link(prompt_v, system_v, max_new_v, edits, base, sel,
                              request: gr.Request = None):
            if "edits" in opened_link(request, quiet=True) and edits:
                yield from p.rerun_fn(prompt_v, system_v, max_new_v, edits, base, sel, request)
            else:
                yield (gr.skip(),) * 9

        loaded.then(follow_route_link, [p.max_new],
                    [p.l_answer, p.l_info, p.l_heat, p.l_verdict], **MODEL_SLOT, **UI)
        loaded.then(follow_edits_link, [p.prompt, p.system, p.max_new, p.st_edits, p.st_base,
                                        p.st_sel],
                    [p.alt_ans, p.base_ans, p.heat, p.usage, p.st_base, p.st_alt, p.view,
                     p.mode, p.verdict], **MODEL_SLOT, **UI)
        register_api(ctx)
    errors_as_toasts(demo)  # after every event is wired
    return demo
