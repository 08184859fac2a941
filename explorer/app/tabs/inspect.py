"""The "Inspect & re-route" tab: generate with the routing heatmap, select a cell (a plotly
click bridged to Python), force or mask experts, re-run beside the baseline, save.

The views are module-level functions of a :class:`~explorer.app.gate.Visit` and the UI
values; the visitor's state is one :class:`~explorer.app.state.InspectState` (traces and
the pending :class:`~explorer.core.route.Route` as objects). :func:`events` wires them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from explorer.app.errors import fail
from explorer.app.format import cell_info, edits_box, verdicts_html
from explorer.app.gate import Door, Event, Visit
from explorer.app.inputs import whole_number
from explorer.app.library_access import library
from explorer.app.state import Cell, InspectState, Shared
from explorer.app.streaming import stream_shown
from explorer.app.tabs import experts as experts_tab
from explorer.app.tabs import why
from explorer.app.verdicts import answer_verdict
from explorer.core.route import Route
from explorer.viz import figures as plots

VIEWS = ("baseline", "re-routed")
MODE_CHOICES = [(v, k) for k, v in plots.COLOR_MODES.items()]

# -- JS bridge: plotly_click on the routing heatmap -> a 'select' event on the HTML block ---
BRIDGE_JS = """
const bind = () => {
  const gd = document.querySelector('#route-heatmap div[data-testid="plotly"]');
  if (!gd || typeof gd.on !== 'function' || gd.__sseBound) return;
  gd.__sseBound = true;
  gd.on('plotly_click', (ev) => {
    const p = ev && ev.points && ev.points[0];
    if (!p) return;
    const cd = Array.isArray(p.customdata) ? p.customdata : null;
    const data = {layer: cd ? cd[0] : null, position: cd ? cd[1] : null,
                  row: p.y, column: p.x};
    const msg = element.querySelector('.sse-bridge-msg');
    if (msg) msg.textContent = 'Selected layer ' + data.layer + ', position ' + data.position;
    trigger('select', data);
  });
};
bind();
new MutationObserver(bind).observe(document.body, {childList: true, subtree: true});
setInterval(bind, 1500);
// the hint follows the selection the server confirmed (a click or a typed cell)
let shown = '';
const follow = () => {
  const info = document.querySelector('#cell-info');
  const m = info && /Selected:\\s*layer (\\d+), position (\\d+)/.exec(info.innerText);
  const msg = element.querySelector('.sse-bridge-msg');
  if (!m || !msg || m[0] === shown) return;
  shown = m[0];
  msg.textContent = 'Selected layer ' + m[1] + ', position ' + m[2];
};
new MutationObserver(follow).observe(document.body, {childList: true, subtree: true,
                                                     characterData: true});
"""

#: Runs in the browser before Generate's callback: open the Inspect tab (where the trace
#: streams), then hand the inputs on unchanged.
SHOW_INSPECT = """(...args) => {
  const tab = document.querySelector('#main-tabs button[role=tab][data-tab-id="inspect"]');
  if (tab && tab.getAttribute('aria-selected') !== 'true') tab.click();
  return args;
}"""


@dataclass
class InspectUI:
    """The tab's components."""

    base_ans: Any
    alt_ans: Any
    verdict: Any
    mode: Any
    view: Any
    heat: Any
    usage: Any
    bridge: Any
    sel_layer: Any
    sel_pos: Any
    sel_btn: Any
    sel_md: Any
    experts: Any
    edit_mode: Any
    every: Any
    add_btn: Any
    edit_list: Any
    rm_btn: Any
    clear_btn: Any
    rerun_btn: Any
    save_btn: Any
    link_btn: Any
    link: Any
    state: Any
    links: Any = None  # the Experts tab's links (explorer.app.tabs.experts.InspectLinks)
    min_btn: Any = None  # Minimize (its event: explorer.app.minimize)
    min_md: Any = None
    why: Any = None  # the "Why it flips" panel (explorer.app.tabs.why)

    def run_outputs(self) -> list:
        """What Generate writes (see :func:`on_generate`)."""
        return [self.base_ans, self.alt_ans, self.heat, self.usage, self.state, self.view,
                self.mode, self.verdict]

    def rerun_outputs(self) -> list:
        """What Re-run writes (see :func:`on_rerun`): the re-routed answer first."""
        return [self.alt_ans, self.base_ans, self.heat, self.usage, self.state, self.view,
                self.mode, self.verdict]


def layout() -> InspectUI:
    """The tab (inside an open ``gr.Tabs``)."""
    with gr.Tab("Inspect & re-route", id="inspect"):
        with gr.Row():
            base_ans = gr.Textbox(label="Baseline answer", lines=4, interactive=False,
                                  elem_id="baseline-answer", elem_classes="sse-answer")
            alt_ans = gr.Textbox(label="Re-routed answer (with the pending edits)",
                                 lines=4, interactive=False, elem_id="rerouted-answer",
                                 elem_classes="sse-answer")
        verdict = gr.HTML("", elem_id="answer-verdicts")
        why_ui = why.layout()
        with gr.Row():
            mode = gr.Radio(MODE_CHOICES, value="expert", label="Colour", scale=3)
            view = gr.Radio(list(VIEWS), value="baseline", label="Show trace", scale=1)
        with gr.Row():
            heat = gr.Plot(plots.heatmap(None), label="Routing heatmap", scale=3,
                           elem_id="route-heatmap")
            usage = gr.Plot(plots.usage(None), label="Expert usage", scale=1,
                            elem_id="usage-plot")
        bridge = gr.HTML("<span class='sse-bridge-msg'>Click a heatmap cell to select "
                         "it (or type a layer and position below).</span>",
                         js_on_load=BRIDGE_JS, elem_id="heatmap-bridge")
        gr.Markdown("#### Re-route: select a cell, choose experts, add edits, re-run")
        with gr.Row():
            with gr.Column(scale=1, min_width=200):
                with gr.Row():
                    sel_layer = gr.Number(label="layer", precision=0, minimum=0,
                                          min_width=80, elem_id="sel-layer")
                    sel_pos = gr.Number(label="position", precision=0, minimum=0,
                                        min_width=80, elem_id="sel-pos")
                sel_btn = gr.Button("Select cell", size="sm", elem_id="select-btn")
            with gr.Column(scale=3):
                sel_md = gr.Markdown("No cell selected.", elem_id="cell-info")
                experts = gr.CheckboxGroup([], label="experts", elem_id="expert-choices")
                links = experts_tab.inspect_links()
                with gr.Row():
                    edit_mode = gr.Radio(["force", "mask"], value="force", label="edit",
                                         info="force: exactly top-k experts; "
                                              "mask: forbid them", elem_id="edit-mode")
                    every = gr.Checkbox(label="every position of this layer", value=False,
                                        elem_id="every-pos")
                    with gr.Column(min_width=140):
                        add_btn = gr.Button("Add edit", elem_id="add-edit-btn")
        with gr.Row():
            edit_list = gr.CheckboxGroup([], label="Pending edits (tick to remove)",
                                         scale=4, elem_id="pending-edits")
            with gr.Column(scale=1, min_width=160):
                rm_btn = gr.Button("Remove ticked", size="sm")
                clear_btn = gr.Button("Clear all", size="sm")
        with gr.Row():
            rerun_btn = gr.Button("Re-run with edits", variant="primary", elem_id="rerun-btn")
            save_btn = gr.Button("Save edits as a route", elem_id="save-route-btn")
            link_btn = gr.Button("Copy link", elem_id="copy-link-btn")
            min_btn = gr.Button("Minimize", elem_id="minimize-btn")
        min_md = gr.Markdown("", elem_id="minimize-info")
        link = gr.Textbox(label="Link to this view (prompt and route; saved routes by id)",
                          interactive=False, buttons=["copy"], elem_id="share-link")
        state = gr.State(InspectState())  # inside the tab: right under gr.Tabs it is a tab
    return InspectUI(base_ans, alt_ans, verdict, mode, view, heat, usage, bridge, sel_layer,
                     sel_pos, sel_btn, sel_md, experts, edit_mode, every, add_btn, edit_list,
                     rm_btn, clear_btn, rerun_btn, save_btn, link_btn, link, state, links,
                     min_btn=min_btn, min_md=min_md, why=why_ui)


# -- views ------------------------------------------------------------------------------------
def _figs(visit: Visit, view_v, mode_v, st: InspectState):
    tr = st.shown(view_v)
    cmp = st.base if tr is st.alt else st.alt
    return (plots.heatmap(visit.app.gate.shown_trace(tr), mode_v, baseline=cmp,
                          edits=st.edit_dicts(), selected=st.selected_dict()),
            plots.usage(tr))


def _tokens(visit: Visit, tr) -> list[str] | None:
    return tr.tokens if tr is not None else None


def on_generate(visit: Visit, prompt_v, system_v, max_new_v, mode_v, st: InspectState):
    """Generate: the baseline answer streamed, then its heatmap, usage and badges.
    Outputs: :meth:`InspectUI.run_outputs`."""
    prompt = visit.prompt(prompt_v, system_v)
    n = visit.tokens(max_new_v)
    skip = gr.skip()
    st = st or InspectState()
    for text, tr in stream_shown(visit, prompt, n):
        if tr is None:
            yield (text, skip, skip, skip, skip, skip, skip, skip)
        else:
            m = "expert" if mode_v == "changed" else mode_v
            badge = answer_verdict(visit.moe, prompt, tr.completion)
            st = st.with_(base=tr, base_badge=badge, alt=None)
            yield (text, "", plots.heatmap(visit.app.gate.shown_trace(tr), m,
                                           edits=st.edit_dicts(), selected=st.selected_dict()),
                   plots.usage(tr), st, "baseline", m, verdicts_html(badge))


def on_redraw(visit: Visit, view_v, mode_v, st: InspectState):
    """Another colour or trace: (heatmap, usage)."""
    return _figs(visit, view_v, mode_v, st or InspectState())


def on_select(visit: Visit, layer, position, view_v, mode_v, st: InspectState):
    """Select (layer, position): (state, layer, position, cell panel, expert choices,
    heatmap, usage)."""
    st = st or InspectState()
    tr = st.shown(view_v)
    if tr is None:
        fail("Generate first: there is no routing to select from.")
    layer = whole_number(layer, "layer", 0)
    position = whole_number(position, "position", 0)
    if layer not in tr.moe_layers:
        fail(f"layer {layer} is not an MoE layer (MoE layers: {tr.moe_layers})")
    if position >= tr.num_tokens:
        fail(f"position {position} is out of range (0..{tr.num_tokens - 1})")
    st = st.with_(selected=Cell(layer, position))
    row = tr.layer_row(layer)
    hm, us = _figs(visit, view_v, mode_v, st)
    return (st, layer, position, cell_info(visit.app.gate.shown_trace(tr), layer, position),
            gr.CheckboxGroup(choices=list(range(tr.num_experts[row])),
                             value=sorted(tr.experts_at(layer, position)),
                             label=f"experts at layer {layer} (top-{tr.top_k[row]}; "
                                   f"ticked: used now)"),
            hm, us)


def on_cell(visit: Visit, view_v, mode_v, st: InspectState, evt: gr.EventData):
    """A heatmap click (through the bridge): :func:`on_select` of the clicked cell."""
    data = getattr(evt, "_data", None) or {}
    layer, position = data.get("layer"), data.get("position")
    tr = (st or InspectState()).shown(view_v)
    if layer is None and tr is not None and data.get("row") is not None:
        row = int(round(float(data["row"])))
        layer = tr.moe_layers[row] if 0 <= row < len(tr.moe_layers) else None
    if position is None and data.get("column") is not None:
        position = int(round(float(data["column"])))
    return on_select(visit, layer, position, view_v, mode_v, st)


def on_add_edit(visit: Visit, chosen, mode_v, every_v, view_v, color, st: InspectState):
    """Add a force or mask edit at the selected cell (or its whole layer): (state, the
    pending edits list, heatmap). The route is checked like any other: against the model,
    the prompt's length and (hosted) the edits a prompt of that length may have."""
    moe = visit.moe
    st = st or InspectState()
    if st.selected is None:
        fail("Select a cell first (click the heatmap).")
    layer, pos = st.selected.layer, (None if every_v else st.selected.position)
    chosen = sorted(int(x) for x in (chosen or []))
    info = moe.handle(layer).info
    if mode_v == "force" and len(chosen) != info.top_k:
        fail(f"Forcing needs exactly top-k = {info.top_k} experts at layer {layer}; "
             f"{len(chosen)} are ticked.")
    if not chosen:
        fail("Tick at least one expert to mask.")
    n_prompt = st.base.prompt_tokens if st.base is not None else None
    if pos is not None and n_prompt is not None and pos >= n_prompt:
        fail(f"Position {pos} is a generated token; a route edits prompt positions "
             f"(0..{n_prompt - 1}) or every position of a layer (tick 'every position').")
    route = st.route.copy()
    route.force(layer, pos, chosen) if mode_v == "force" else route.mask(layer, pos, chosen)
    visit.route(route, n_prompt)
    st = st.with_(route=route)
    hm, _ = _figs(visit, view_v, color, st)
    return st, edits_box(st.edit_dicts(), _tokens(visit, st.base)), hm


def on_remove_edits(visit: Visit, ticked, view_v, mode_v, st: InspectState):
    """Drop the ticked pending edits: (state, the list, heatmap)."""
    st = st or InspectState()
    gone = set(ticked or [])
    route = Route([e for i, e in enumerate(st.route.edits) if i not in gone],
                  dict(st.route.info))
    st = st.with_(route=route)
    hm, _ = _figs(visit, view_v, mode_v, st)
    return st, edits_box(st.edit_dicts(), _tokens(visit, st.base)), hm


def on_clear_edits(visit: Visit, ticked, view_v, mode_v, st: InspectState):
    """Drop every pending edit: (state, the list, heatmap)."""
    st = (st or InspectState()).with_(route=Route())
    hm, _ = _figs(visit, view_v, mode_v, st)
    return st, edits_box([], _tokens(visit, st.base)), hm


def pending(visit: Visit, prompt_v, system_v, st: InspectState, empty: str,
            saved: bool = False):
    """(the prepared prompt, the pending edits as a route with its provenance) for Re-run,
    Save and Copy link: the prompt checked and prepared once, the route capped and
    validated once; ``empty``: the refusal when there are no pending edits; ``saved``: the
    route's provenance also names its source ("manual") and prompt, as the library keeps."""
    prompt = visit.prompt(prompt_v, system_v)
    if not st.route.edits:
        fail(empty)
    info = dict(prompt.info, source="manual", prompt=prompt.text) if saved else prompt.info
    route = Route(list(st.route.edits), dict(info))
    visit.route(route, prompt)
    return prompt, route


def on_rerun(visit: Visit, prompt_v, system_v, max_new_v, st: InspectState):
    """Re-run with the pending edits beside the baseline (regenerated when the prompt,
    system prompt, model or length changed). The prompt is prepared once and the route
    validated once; the baseline's badge is kept from Generate. Outputs:
    :meth:`InspectUI.rerun_outputs`."""
    moe = visit.moe
    st = st or InspectState()
    n = visit.tokens(max_new_v)
    prompt, route = pending(visit, prompt_v, system_v, st,  # before anything is cleared
                            "There are no pending edits: select a cell and add one.")
    base, badge = st.base, st.base_badge
    stale = (base is None or base.prompt != prompt.text or base.system != prompt.system
             or base.info.get("model") != moe.name or base.info.get("max_new_tokens") != n)
    skip = gr.skip()
    keep = (skip,) * 5
    yield ("", skip, *keep, skip)
    if stale:
        for text, tr in stream_shown(visit, prompt, n):
            yield (skip, text, *keep, skip)
        base, badge = tr, None
    if badge is None:
        badge = answer_verdict(moe, prompt, base.completion)
    st = st.with_(base=base, base_badge=badge)
    for text, tr in stream_shown(visit, prompt, n, route):
        if tr is None:
            yield (text, *keep, skip, skip)
        else:
            shown_base = visit.shown(prompt.text, base.completion)
            panel = verdicts_html(badge, answer_verdict(moe, prompt, tr.completion, route),
                                  texts=(shown_base, text))
            st = st.with_(alt=tr)
            yield (text, shown_base,
                   plots.heatmap(visit.app.gate.shown_trace(tr), "changed", baseline=base,
                                 edits=st.edit_dicts(), selected=st.selected_dict()),
                   plots.usage(tr), st, "re-routed", "changed", panel)


def on_save(visit: Visit, prompt_v, system_v, st: InspectState, b=None):
    """Save the pending edits as a route of the library (hosted: this browser's, private
    until shared): its id (for the library's id box); the same edits on the same prompt
    and model are not saved twice."""
    moe = visit.moe
    st = st or InspectState()
    prompt, route = pending(visit, prompt_v, system_v, st,
                            "There are no pending edits to save.", saved=True)
    alt = st.alt
    completion = alt.completion if (alt is not None and alt.prompt == prompt.text
                                    and alt.system == prompt.system) else None
    lib = library(visit, b)
    same = lib.find(route, prompt.text, moe.name)
    if same is not None:
        gr.Info(f"These edits are already in the library as route #{same} (same prompt and "
                "model): not saved again.")
        return same
    rid = lib.save(route, prompt.text, moe.name, completion=completion, source="manual")
    gr.Info(f"Saved as route #{rid} in the library.")
    return rid


def on_share(visit: Visit, prompt_v, system_v, max_new_v, st: InspectState, b=None):
    """A link to this prompt and route (a saved route by its id, where everyone who opens
    the link may see it: hosted, only a shared route)."""
    from explorer.app.links import edits_link, page_base, route_link
    moe = visit.moe
    st = st or InspectState()
    n = visit.tokens(max_new_v)
    prompt, route = pending(visit, prompt_v, system_v, st,
                            "There are no pending edits: a link shares a prompt with its route.")
    base = page_base(visit.request)
    lib = library(visit, b)
    same = lib.find(route, prompt.text, moe.name)
    if same is not None and lib.hosted and not lib.get(same).shared:
        same = None  # a private route's link would open for its owner only
    link = route_link(base, same, n) if same is not None else \
        edits_link(base, prompt.text, st.edit_dicts(), n, prompt.system)
    gr.Info("Link copied: it opens this prompt and route"
            + (f" (saved route #{same})." if same is not None else "."))
    return link


COPY_LINK_JS = ("(link) => { if (link && navigator.clipboard) "
                "navigator.clipboard.writeText(link).catch(() => {}); return []; }")


def events(ui: InspectUI, shared: Shared, library_id) -> list[Event]:
    """The tab's events; ``library_id``: the library tab's route id box (Save fills it)."""
    run_in = [shared.prompt, shared.system, shared.max_new]
    redraw_in = [ui.view, ui.mode, ui.state]
    sel_out = [ui.state, ui.sel_layer, ui.sel_pos, ui.sel_md, ui.experts, ui.heat, ui.usage]
    edit_out = [ui.state, ui.edit_list, ui.heat]
    generate = Door("Generate", "model", gpu=60)
    out = [Event(trigger, on_generate, run_in + [ui.mode, ui.state], ui.run_outputs(),
                 generate, {"js": SHOW_INSPECT})
           for trigger in (shared.gen_btn.click, shared.prompt.submit)]  # Enter generates
    out += [Event(c.input, on_redraw, redraw_in, [ui.heat, ui.usage], Door("Redraw"))
            for c in (ui.mode, ui.view)]
    out += [
        Event(ui.sel_btn.click, on_select, [ui.sel_layer, ui.sel_pos] + redraw_in, sel_out,
              Door("Select")),
        Event(ui.bridge.select, on_cell, redraw_in, sel_out, Door("Select")),
        Event(ui.add_btn.click, on_add_edit,
              [ui.experts, ui.edit_mode, ui.every, ui.view, ui.mode, ui.state], edit_out,
              Door("Add edit")),
        Event(ui.rm_btn.click, on_remove_edits, [ui.edit_list] + redraw_in, edit_out,
              Door("Remove edits")),
        Event(ui.clear_btn.click, on_clear_edits, [ui.edit_list] + redraw_in, edit_out,
              Door("Clear edits")),
        Event(ui.rerun_btn.click, on_rerun, run_in + [ui.state], ui.rerun_outputs(),
              Door("Re-run", "model", gpu=120)),
        Event(ui.save_btn.click, on_save, [shared.prompt, shared.system, ui.state,
                                           shared.browser],
              [library_id], Door("Save route", "write")),
    ]
    return out


def share_event(ui: InspectUI, shared: Shared) -> Event:
    """Copy link (its ``.then`` copies the link in the browser: see the build)."""
    return Event(ui.link_btn.click, on_share, [shared.prompt, shared.system, shared.max_new,
                                                ui.state, shared.browser], [ui.link],
                 Door("Copy link"))
