"""The Gradio app: the layout of every tab and the table of its events, each registered
through the gate.

:func:`build_app` returns a ``gr.Blocks``; launch it with
``demo.queue(**queue_options(policy)).launch(**launch_options(demo), ...)`` (Gradio 6
takes theme, css and the middleware in ``launch``).

One model per process (:class:`~explorer.app.context.Explorer`: the model host, the
owners of searches and the gate), shared by every browser session. What belongs to one
user lives in typed ``gr.State`` values (:mod:`explorer.app.state`) and, for their
searches' ids, in ``gr.BrowserState`` so a refreshed tab (or a restarted app) finds them
again. Each tab module builds its components (``layout``) and lists its events
(``events``): module-level views, each behind a :class:`~explorer.app.gate.Door`; cross-tab
events name the other tabs' components they write. The gate (:mod:`explorer.app.gate`)
admits, caps, redacts and turns failures into one line for every one of them, the page
load, the timer and the named API endpoints (:mod:`explorer.app.api`) included.
"""

from __future__ import annotations

import os
from typing import Any

import gradio as gr

from explorer.app.context import Explorer
from explorer.app.format import edits_box, model_card, model_header
from explorer.app.gate import COSTS, Door, Event, Visit
from explorer.app.hosted import HostedPolicy
from explorer.app.library_access import library as library_of
from explorer.app.state import InspectState, Shared
from explorer.core.errors import one_line
from explorer.core.model import MoEModel
from explorer.core.prompt_sets import BENIGN_PROMPTS, HARMFUL_PROMPTS
from explorer.core.route import Route
from explorer.settings import Settings

__all__ = ["CSS", "EXAMPLES", "PAGE_JS", "PRESENT_JS", "build_app", "launch_options", "queue_options"]

#: The example prompts under the prompt box (the project's own sets).
EXAMPLES = tuple(HARMFUL_PROMPTS[:6] + BENIGN_PROMPTS[:3])

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
.sse-table th, .sse-table th * { white-space: normal; word-break: keep-all; }
.sse-table .table-wrap, .sse-table .table-container { overflow-x: auto; max-width: 100%; }
/* a plot's label badge sits above the figure, not over its title (or under plotly's toolbar) */
.block:has(> div[data-testid="plotly"]) > label[data-testid="block-label"] {
  position: static; margin: 0 0 4px 0; width: fit-content; }
#prompt-block .sse-prompt-extras { flex-wrap: wrap; }
#system-acc, #examples-acc { flex: 1 1 300px; min-width: min(300px, 100%); }
#prompt-block > .label-wrap { font-weight: 600; }
/* toasts at the bottom right: at the top they covered buttons and sliders near the tabs */
.toast-wrap { top: auto !important; bottom: var(--size-4, 16px); max-width: min(420px, 94vw); }
/* presenter mode (the toggle, or ?present=1): large type, one column */
.sse-present .gradio-container { --text-xxs: 13px; --text-xs: 15px; --text-sm: 17px;
  --text-md: 20px; --text-lg: 23px; --text-xl: 28px; --text-xxl: 34px; font-size: 20px; }
.sse-present .gradio-container .prose, .sse-present .gradio-container .prose * { font-size: 20px; }
.sse-present .gradio-container .prose h2, .sse-present .gradio-container .prose h3 { font-size: 28px; }
.sse-present #main-tabs .row { flex-direction: column; }
.sse-present #main-tabs .row > * { width: 100%; max-width: 100%; }
@media (max-width: 640px) {
  .gradio-container { padding-left: 6px !important; padding-right: 6px !important; }
  #sse-title-row { flex-wrap: wrap; gap: 4px; }
  #sse-title { min-width: 100% !important; }
  #sse-title h2 { font-size: 1.3em; margin: 0; }
}
"""

#: Runs once in the page: a rotated token axis shows only labels that do not overlap (a
#: phone shows every k-th token; the hover still names each).
PAGE_JS = """() => {
  const thin = (gd) => {
    const ax = gd._fullLayout && gd._fullLayout.xaxis;
    if (!ax || !ax.tickangle || ax.tickangle === 'auto') return;
    const texts = [...gd.querySelectorAll('.xaxislayer-above .xtick text')];
    let last = -Infinity;
    const gap = 1.25 * (ax.tickfont ? ax.tickfont.size : 10);
    for (const t of texts) {
      const x = t.getBoundingClientRect().right;
      const keep = x - last >= gap;
      t.style.visibility = keep ? '' : 'hidden';
      if (keep) last = x;
    }
  };
  const bind = () => document.querySelectorAll('div[data-testid="plotly"]').forEach((gd) => {
    if (typeof gd.on !== 'function') return;
    if (!gd.__sseThin) { gd.__sseThin = true; gd.on('plotly_afterplot', () => thin(gd)); }
    thin(gd);
  });
  new MutationObserver(bind).observe(document.body, {childList: true, subtree: true});
  bind();
}"""

#: Runs in the browser when the presenter toggle changes: large type and one column.
PRESENT_JS = """(on) => {
  document.body.classList.toggle('sse-present', !!on);
  return on;
}"""


def launch_options(demo: gr.Blocks | None = None) -> dict[str, Any]:
    """Keyword arguments for ``launch()`` (theme and css moved there in Gradio 6). With
    the app ``demo``, its HTTP edge too (:class:`explorer.app.http.Edge`: only the app's
    routes, bounded bodies and uploads, the hosted policy's admission of uploads and
    shares of the queue, unknown API names and missing arguments answered with one line),
    Gradio's own upload limit and ``show_error``: a value Gradio itself cannot take (text in
    a slider, say) is answered with Gradio's one-line reason instead of ``{"error": null}``.
    Every view's failures become one-line messages at the gate, so no internal detail
    travels this way."""
    out: dict[str, Any] = {"theme": gr.themes.Soft(primary_hue="indigo", secondary_hue="rose"),
                           "css": CSS, "js": PAGE_JS}
    if demo is not None:
        from starlette.middleware import Middleware

        from explorer.app.http import MAX_UPLOAD_BYTES, Edge
        policy = demo.explorer.policy if hasattr(demo, "explorer") else None
        out["app_kwargs"] = {"middleware": [Middleware(Edge, blocks=lambda: demo,
                                                       policy=lambda: policy)]}
        out["show_error"] = True
        out["max_file_size"] = MAX_UPLOAD_BYTES
    return out


def queue_options(policy: HostedPolicy | None = None) -> dict[str, Any]:
    """Keyword arguments for ``demo.queue()``: Gradio's direct ``/run/`` and ``/api/`` routes
    closed (the edge answers them 404 anyway), one event at a time unless a door says
    otherwise, and in hosted mode a bounded queue."""
    hosted = policy is not None and policy.enabled
    return {"default_concurrency_limit": 1, "api_open": False,
            "max_size": 64 if hosted else None}


def _hosted_note(policy: HostedPolicy) -> str:
    return (f"*Hosted server: prompts up to {policy.max_prompt_tokens} tokens, answers up to "
            f"{policy.max_new_tokens} new tokens, searches up to {policy.max_search_budget:,} "
            f"candidate evaluations, {policy.max_jobs_per_session} searches at a time, "
            f"{policy.rate * 60:g} requests a minute.*")


# -- page-level views ---------------------------------------------------------------------------
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


def on_present(visit: Visit, on):
    """Presenter mode on or off (the page's type and columns change in the browser first,
    :data:`PRESENT_JS`): the prompt block folds away while presenting."""
    return gr.Accordion(open=not bool(on))


def present_from_link(visit: Visit):
    """After a page load: ``?present=1`` turns presenter mode on (a malformed address was
    already reported by the page load)."""
    return True if opened_link(visit.request, quiet=True).get("present") else gr.skip()


def pick_example(visit: Visit, index):
    """The example prompt picked (by its index: the text comes from the server)."""
    from explorer.app.inputs import whole_number
    return EXAMPLES[whole_number(index, "example", 0, len(EXAMPLES) - 1)]


def on_load(visit: Visit, b, model_f, text_f, success_f, source_f, st: InspectState):
    """A page load: the browser's searches, the library, the model card, and what the
    address asks to open (a search, a saved route or a prompt with its route). Outputs:
    the search panel, the library table and model filter, the header, the model card, the
    tabs, the library's route id, the prompt, the answer length, Inspect's state and edits
    list, the system prompt."""
    from explorer.app.tabs import library, search
    app = visit.app
    b = app.owners.ensure_client(b)
    lib = library_of(visit, b)
    skip = gr.skip()
    tab = skip
    view = (skip,) * 6  # route id, prompt, max new tokens, Inspect's state, edits, system
    job = None
    try:
        link = opened_link(visit.request)
        if "job" in link:  # a search of this browser only (every job view checks)
            app.owners.owned_job(app.store, link["job"], search.owner_of(app, b))
            job, tab = link["job"], gr.Tabs(selected="search")
            b = dict(b, jobs=[j for j in b["jobs"] if j != job] + [job])
        elif "route" in link:  # a route this browser may see (its own or a shared one),
            sr = lib.get(link["route"])  # with its prompt and system prompt in their boxes
            view = (sr.id, sr.prompt or skip, link.get("n", skip), skip, skip,
                    sr.route.system or "")
            tab = gr.Tabs(selected="library")
        elif "edits" in link:
            route = Route.from_dict({"edits": list(link["edits"]), "info": {}})
            prompt = visit.prompt(link["prompt"], link.get("system"))
            visit.route(route, prompt)
            st = (st or InspectState()).with_(route=route)
            view = (skip, prompt.text, link.get("n", skip), st,
                    edits_box(st.edit_dicts(), app.host.token_strings(prompt)),
                    prompt.system or "")
            tab = gr.Tabs(selected="inspect")
    except Exception as exc:  # noqa: BLE001 - a bad link must not stop the page
        gr.Warning(f"This link cannot be opened: {one_line(exc)}", title="Error")
    out = search.job_view(app, b, job)
    df, dd = library.refresh(lib, model_f, text_f, success_f, source_f)
    return (*out, df, dd, model_header(app), *model_card(app), tab, *view)


def follow_route_link(visit: Visit, max_new_v, b=None):
    """After a page load: a saved route's link replays it in the library on its own prompt
    and system prompt (if this browser may see it; the page load put both in their
    boxes)."""
    from explorer.app.tabs.library import replay_route
    link = opened_link(visit.request, quiet=True)
    if "route" not in link:
        yield (gr.skip(),) * 4
        return
    visit.charge(COSTS["model"])  # the model work a followed link asks for
    yield from replay_route(visit, link["route"], "", max_new_v, b)


def follow_edits_link(visit: Visit, prompt_v, system_v, max_new_v, st: InspectState):
    """After a page load: a link to a prompt and an unsaved route re-runs it in Inspect."""
    from explorer.app.tabs.inspect import on_rerun
    if "edits" not in opened_link(visit.request, quiet=True) or not (st and st.route.edits):
        yield (gr.skip(),) * 8
        return
    visit.charge(COSTS["model"])  # the model work a followed link asks for
    yield from on_rerun(visit, prompt_v, system_v, max_new_v, st)


# -- the app ----------------------------------------------------------------------------------
def build_app(model: str | MoEModel | None = None, *, data_dir: str | os.PathLike | None = None,
              device: str = "auto", policy: HostedPolicy | None = None,
              settings: Settings | None = None) -> gr.Blocks:
    """Build the explorer app on ``model`` (demo model by default; a hub id, local folder or
    a loaded :class:`MoEModel`). ``data_dir`` holds the route library (default: the
    settings' ``data_dir``, see :func:`explorer.storage.library.default_data_dir`);
    ``policy`` the hosted-mode limits (default: the settings' policy, else hosted mode off);
    ``settings`` (:class:`explorer.settings.Settings`, default: all defaults; ``app.py``
    reads them from the environment) the rest. If the model can't be loaded the app still
    starts and says why. ``demo.explorer`` is the app's :class:`Explorer`.
    """
    from explorer.app import minimize
    from explorer.app.api import register_api
    from explorer.app.tabs import experts as experts_tab
    from explorer.app.tabs import inspect, library, results, rosais, search, tour, why
    from explorer.app.tabs import model as model_tab
    from explorer.app.tabs.research.common import judge_choices
    from explorer.app.tabs.research.tab import research_tab
    app = Explorer(model, data_dir=data_dir, device=device, policy=policy, settings=settings)
    gate, policy = app.gate, app.policy
    max_tokens = policy.max_new_tokens if policy.enabled else 256
    n_moe = max(1, len(app.moe.moe_layers)) if app.moe is not None else 16
    shipped, _ = tour.shipped_tour()

    with gr.Blocks(title="Sparse Safety Explorer") as demo:
        demo.explorer = app  # for tests and scripts
        browser = gr.BrowserState({"client": None, "jobs": []}, storage_key="sse-explorer-jobs",
                                  secret=app.owners.browser_secret())
        with gr.Row(equal_height=False, elem_id="sse-title-row"):
            gr.Markdown("## Sparse Safety Explorer · unsafe routes in Mixture-of-Experts LLMs",
                        elem_id="sse-title")
            # outside the prompt block, which presenter mode folds away
            present = gr.Checkbox(False, label="Presenter mode", elem_id="presenter-toggle",
                                  info="large type, one column", scale=0, min_width=170)
        header = gr.Markdown(model_header(app), elem_id="sse-header")
        if policy.enabled:
            gr.Markdown(_hosted_note(policy), elem_id="hosted-note")
        # the prompt block: one line at 1400 px, its extras folded (they pushed every tab
        # about 600 px down); presenters fold it all
        with gr.Accordion("Prompt", open=True, elem_id="prompt-block") as prompt_block:
            with gr.Row(equal_height=False):
                prompt = gr.Textbox(label="Prompt (user message; the chat template is applied)",
                                    value=shipped.prompt if shipped else HARMFUL_PROMPTS[0],
                                    lines=1, max_lines=6, scale=4,
                                    info="Enter generates; Shift+Enter starts a new line.",
                                    elem_id="prompt-box")
                with gr.Column(scale=1, min_width=340):
                    max_new = gr.Slider(0, max_tokens, value=min(48, max_tokens), step=1,
                                        label="max new tokens (greedy)",
                                        elem_id="prompt-max-new")
                    gen_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
            with gr.Row(elem_classes="sse-prompt-extras"):
                with gr.Accordion("System prompt (optional)", open=False, elem_id="system-acc"):
                    system = gr.Textbox(
                        label="System prompt", lines=2, max_lines=8, elem_id="system-box",
                        placeholder="e.g. You are a helpful assistant.",
                        info="Goes in the chat template's system turn (merged before the "
                             "user message where the template has none). Used by Inspect, "
                             "RoSais and Search; the Tour keeps its own setup. Routes record "
                             "it, and positions count its tokens.")
                with gr.Accordion("Example prompts", open=False, elem_id="examples-acc"):
                    examples = gr.Dataset(components=[prompt], samples=[[x] for x in EXAMPLES],
                                          type="index", label="Example prompts",
                                          elem_id="examples")

        with gr.Tabs(elem_id="main-tabs", selected="tour" if shipped else "inspect") as tabs:
            shared = Shared(prompt, system, max_new, gen_btn, tabs, header, browser)
            tour_ui = tour.layout(app.moe)
            inspect_ui = inspect.layout()
            rosais_ui = rosais.layout(n_moe)
            search_ui = search.layout(judge_choices(app))
            library_ui = library.layout(hosted=policy.enabled)
            results_ui = results.layout()
            model_ui = model_tab.layout(app)
            experts_ui = experts_tab.layout()
            research_events = research_tab(app, n_moe, browser)

        # the event table: every door of the page, each through the gate
        table: list[Event] = [Event(examples.click, pick_example, [examples], [prompt],
                                    Door("Example")),
                              Event(present.change, on_present, [present], [prompt_block],
                                    Door("Presenter mode"), {"js": PRESENT_JS})]
        table += tour.events(tour_ui, shared, inspect_ui)
        table += inspect.events(inspect_ui, shared, library_ui.route_id)
        table += rosais.events(rosais_ui, shared)
        table += search.events(search_ui, shared, library_ui)
        table += library.events(library_ui, shared, inspect_ui)
        table += results.events(results_ui, shared, inspect_ui)
        table += why.events(inspect_ui.why, inspect_ui.state)
        table += model_tab.events(model_ui, shared, inspect_ui, rosais_ui)
        table += research_events
        table += experts_tab.events(experts_ui, shared, inspect_ui, inspect_ui.links,
                                    rosais_ui.state)
        table += minimize.events(search_ui, inspect_ui, shared)
        for event in table:
            gate.on(event)
        gate.on(inspect.share_event(inspect_ui, shared)).then(
            None, [inspect_ui.link], None, js=inspect.COPY_LINK_JS)

        loaded = gate.register(
            demo.load, on_load, [browser] + library_ui.filters + [inspect_ui.state],
            search_ui.job_outputs(shared) + [library_ui.table, library_ui.f_model, header,
                                             model_ui.card, model_ui.layers, tabs,
                                             library_ui.route_id, prompt, max_new,
                                             inspect_ui.state, inspect_ui.edit_list, system],
            Door("Page load", "page"))
        # after every page load, in the model's slot; they charge model work only when
        # the address holds a link to follow
        follow = dict(work="model", cost=COSTS["poll"])
        gate.register(loaded.then, follow_route_link, [max_new, browser],
                      library_ui.replay_outputs(),
                      Door("Open a route link", gpu=60, **follow))
        gate.register(loaded.then, follow_edits_link, [prompt, system, max_new,
                                                        inspect_ui.state],
                      inspect_ui.rerun_outputs(), Door("Open a route link", gpu=120, **follow))
        gate.register(loaded.then, present_from_link, [], [present],
                      Door("Presenter link", cost=COSTS["poll"]))
        register_api(gate)
    return demo
