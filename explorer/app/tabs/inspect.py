"""The "Inspect & re-route" tab: generate with the routing heatmap, select a cell (a plotly
click bridged to Python), force or mask experts, re-run beside the baseline, save."""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from explorer.app.common import (
    FREE,
    MODE_CHOICES,
    MODEL_SLOT,
    UI,
    VIEWS,
    answer_verdict,
    fail,
    gpu,
    route_of_edits,
    user_errors,
    whole_number,
)
from explorer.app.format import cell_info, edits_box, verdicts_html
from explorer.viz import figures as plots

if TYPE_CHECKING:
    from types import SimpleNamespace

    from explorer.app.context import Explorer

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
"""


#: Runs in the browser before Generate's callback: open the Inspect tab (where the trace
#: streams), then hand the inputs on unchanged.
SHOW_INSPECT = """(...args) => {
  const tab = document.querySelector('#main-tabs button[role=tab][data-tab-id="inspect"]');
  if (tab && tab.getAttribute('aria-selected') !== 'true') tab.click();
  return args;
}"""


def layout(p: SimpleNamespace) -> None:
    with gr.Tab("Inspect & re-route", id="inspect"):
        with gr.Row():
            p.base_ans = gr.Textbox(label="Baseline answer", lines=4, interactive=False,
                                    elem_id="baseline-answer", elem_classes="sse-answer")
            p.alt_ans = gr.Textbox(label="Re-routed answer (with the pending edits)",
                                   lines=4, interactive=False, elem_id="rerouted-answer",
                                   elem_classes="sse-answer")
        p.verdict = gr.HTML("", elem_id="answer-verdicts")
        with gr.Row():
            p.mode = gr.Radio(MODE_CHOICES, value="expert", label="Colour", scale=3)
            p.view = gr.Radio(list(VIEWS), value="baseline", label="Show trace", scale=1)
        with gr.Row():
            p.heat = gr.Plot(plots.heatmap(None), label="Routing heatmap", scale=3,
                             elem_id="route-heatmap")
            p.usage = gr.Plot(plots.usage(None), label="Expert usage", scale=1,
                              elem_id="usage-plot")
        p.bridge = gr.HTML("<span class='sse-bridge-msg'>Click a heatmap cell to select "
                           "it (or type a layer and position below).</span>",
                           js_on_load=BRIDGE_JS, elem_id="heatmap-bridge")
        gr.Markdown("#### Re-route: select a cell, choose experts, add edits, re-run")
        with gr.Row():
            with gr.Column(scale=1, min_width=200):
                with gr.Row():
                    p.sel_layer = gr.Number(label="layer", precision=0, minimum=0,
                                            min_width=80, elem_id="sel-layer")
                    p.sel_pos = gr.Number(label="position", precision=0, minimum=0,
                                          min_width=80, elem_id="sel-pos")
                p.sel_btn = gr.Button("Select cell", size="sm", elem_id="select-btn")
            with gr.Column(scale=3):
                p.sel_md = gr.Markdown("No cell selected.", elem_id="cell-info")
                p.experts = gr.CheckboxGroup([], label="experts", elem_id="expert-choices")
                with gr.Row():
                    p.edit_mode = gr.Radio(["force", "mask"], value="force", label="edit",
                                           info="force: exactly top-k experts; "
                                                "mask: forbid them", elem_id="edit-mode")
                    p.every = gr.Checkbox(label="every position of this layer",
                                          value=False, elem_id="every-pos")
                    with gr.Column(min_width=140):
                        p.add_btn = gr.Button("Add edit", elem_id="add-edit-btn")
        with gr.Row():
            p.edit_list = gr.CheckboxGroup([], label="Pending edits (tick to remove)",
                                           scale=4, elem_id="pending-edits")
            with gr.Column(scale=1, min_width=160):
                p.rm_btn = gr.Button("Remove ticked", size="sm")
                p.clear_btn = gr.Button("Clear all", size="sm")
        with gr.Row():
            p.rerun_btn = gr.Button("Re-run with edits", variant="primary",
                                    elem_id="rerun-btn")
            p.save_btn = gr.Button("Save edits as a route", elem_id="save-route-btn")
            p.link_btn = gr.Button("Copy link", elem_id="copy-link-btn")
        p.link = gr.Textbox(label="Link to this view (prompt and route; saved routes by id)",
                            interactive=False, buttons=["copy"], elem_id="share-link")


def wire(ctx: Explorer, p: SimpleNamespace) -> None:
    skip = gr.skip

    def tokens_of(tr):
        return tr.tokens if tr is not None else None

    def shown(view_v, base, alt):
        return alt if (view_v == "re-routed" and alt is not None) else base

    def figs(view_v, mode_v, base, alt, edits, sel):
        tr = shown(view_v, base, alt)
        cmp = base if tr is alt else alt
        return (plots.heatmap(ctx.shown_trace(tr), mode_v, baseline=cmp, edits=edits,
                              selected=sel), plots.usage(tr))

    @gpu(60)
    def on_generate(prompt_v, system_v, max_new_v, mode_v, edits, sel,
                    request: gr.Request = None):
        with user_errors("Generate"):
            sp = ctx.system(system_v)
            ctx.check_prompt(prompt_v, sp)
            n = ctx.new_tokens(max_new_v)
            ctx.admit(request)
            for text, tr in ctx.stream(prompt_v, n, system=sp):
                if tr is None:
                    yield (text, skip(), skip(), skip(), skip(), skip(), skip(), skip(), skip())
                else:
                    m = "expert" if mode_v == "changed" else mode_v
                    v = answer_verdict(ctx.moe, prompt_v, tr.completion, system=sp)
                    yield (text, "", plots.heatmap(ctx.shown_trace(tr), m, edits=edits,
                                                   selected=sel),
                           plots.usage(tr), tr, None, "baseline", m, verdicts_html(v))

    gen_evt = dict(fn=on_generate, inputs=[p.prompt, p.system, p.max_new, p.mode, p.st_edits,
                                           p.st_sel],
                   outputs=[p.base_ans, p.alt_ans, p.heat, p.usage, p.st_base, p.st_alt,
                            p.view, p.mode, p.verdict], **MODEL_SLOT, **UI)
    for trigger in (p.gen_btn.click, p.prompt.submit):  # Enter in the prompt box generates
        trigger(**gen_evt, js=SHOW_INSPECT)

    def on_redraw(view_v, mode_v, base, alt, edits, sel):
        return figs(view_v, mode_v, base, alt, edits, sel)

    for comp in (p.mode, p.view):
        comp.input(on_redraw, [p.view, p.mode, p.st_base, p.st_alt, p.st_edits, p.st_sel],
                   [p.heat, p.usage], **FREE, **UI)

    def select(layer, position, view_v, mode_v, base, alt, edits):
        with user_errors("Select"):
            tr = shown(view_v, base, alt)
            if tr is None:
                fail("Generate first: there is no routing to select from.")
            layer = whole_number(layer, "layer", 0)
            position = whole_number(position, "position", 0)
            if layer not in tr.moe_layers:
                fail(f"layer {layer} is not an MoE layer (MoE layers: {tr.moe_layers})")
            if position >= tr.num_tokens:
                fail(f"position {position} is out of range (0..{tr.num_tokens - 1})")
            sel = {"layer": layer, "position": position}
            row = tr.layer_row(layer)
            n = tr.num_experts[row]
            current = sorted(tr.experts[row][position])
            hm, us = figs(view_v, mode_v, base, alt, edits, sel)
            return (sel, layer, position, cell_info(ctx.shown_trace(tr), layer, position),
                    gr.CheckboxGroup(choices=list(range(n)), value=current,
                                     label=f"experts at layer {layer} (top-{tr.top_k[row]};"
                                           f" ticked: used now)"),
                    hm, us)

    sel_outputs = [p.st_sel, p.sel_layer, p.sel_pos, p.sel_md, p.experts, p.heat, p.usage]
    p.sel_btn.click(select, [p.sel_layer, p.sel_pos, p.view, p.mode, p.st_base, p.st_alt,
                             p.st_edits], sel_outputs, **FREE, **UI)

    def on_cell(view_v, mode_v, base, alt, edits, evt: gr.EventData):
        data = getattr(evt, "_data", None) or {}
        layer, position = data.get("layer"), data.get("position")
        tr = shown(view_v, base, alt)
        if layer is None and tr is not None and data.get("row") is not None:
            row = int(round(float(data["row"])))
            layer = tr.moe_layers[row] if 0 <= row < len(tr.moe_layers) else None
        if position is None and data.get("column") is not None:
            position = int(round(float(data["column"])))
        return select(layer, position, view_v, mode_v, base, alt, edits)

    p.bridge.select(on_cell, [p.view, p.mode, p.st_base, p.st_alt, p.st_edits], sel_outputs,
                    **FREE, **UI)

    def add_edit(sel, chosen, mode_v, every_v, edits, base, alt, view_v, color):
        with user_errors("Add edit"):
            moe = ctx.require()
            if not sel:
                fail("Select a cell first (click the heatmap).")
            layer, pos = sel["layer"], (None if every_v else sel["position"])
            chosen = sorted(int(x) for x in (chosen or []))
            info = moe.handle(layer).info
            if mode_v == "force" and len(chosen) != info.top_k:
                fail(f"Forcing needs exactly top-k = {info.top_k} experts at layer {layer}; "
                     f"{len(chosen)} are ticked.")
            if not chosen:
                fail("Tick at least one expert to mask.")
            n_prompt = base.prompt_tokens if base is not None else None
            if pos is not None and n_prompt is not None and pos >= n_prompt:
                fail(f"Position {pos} is a generated token; a route edits prompt positions "
                     f"(0..{n_prompt - 1}) or every position of a layer (tick 'every "
                     "position').")
            route = route_of_edits(edits)
            route.force(layer, pos, chosen) if mode_v == "force" else route.mask(layer, chosen, pos)
            route.validate(moe.info, num_tokens=n_prompt)
            new = route.to_dict()["edits"]
            hm, us = figs(view_v, color, base, alt, new, sel)
            return new, edits_box(new, tokens_of(base)), hm

    p.add_btn.click(add_edit, [p.st_sel, p.experts, p.edit_mode, p.every, p.st_edits,
                               p.st_base, p.st_alt, p.view, p.mode],
                    [p.st_edits, p.edit_list, p.heat], **FREE, **UI)

    def remove_edits(ticked, edits, base, alt, view_v, mode_v, sel, clear=False):
        ticked = set(ticked or [])
        new = [] if clear else [e for i, e in enumerate(edits or []) if i not in ticked]
        hm, _ = figs(view_v, mode_v, base, alt, new, sel)
        return new, edits_box(new, tokens_of(base)), hm

    rm_inputs = [p.edit_list, p.st_edits, p.st_base, p.st_alt, p.view, p.mode, p.st_sel]
    p.rm_btn.click(remove_edits, rm_inputs, [p.st_edits, p.edit_list, p.heat], **FREE, **UI)
    p.clear_btn.click(lambda *a: remove_edits(*a, clear=True), rm_inputs,
                      [p.st_edits, p.edit_list, p.heat], **FREE, **UI)

    @gpu(120)
    def rerun(prompt_v, system_v, max_new_v, edits, base, sel, request: gr.Request = None):
        with user_errors("Re-run"):
            moe = ctx.require()
            sp = ctx.system(system_v)
            n_prompt = ctx.check_prompt(prompt_v, sp)
            n = ctx.new_tokens(max_new_v)
            if not edits:
                fail("There are no pending edits: select a cell and add one.")
            ctx.admit(request)
            route = route_of_edits(edits, moe.provenance(sp))
            stale = (base is None or base.prompt != prompt_v or base.system != sp or
                     base.info.get("model") != moe.name or
                     base.info.get("max_new_tokens") != n)
            route.validate(moe.info, num_tokens=n_prompt)  # before anything is cleared
            keep = (skip(),) * 6
            yield ("", skip(), *keep, skip())
            if stale:
                for text, tr in ctx.stream(prompt_v, n, system=sp):
                    yield (skip(), text, *keep, skip())
                base = tr
                yield (skip(), "", skip(), skip(), base, skip(), skip(), skip(), skip())
            for text, tr in ctx.stream(prompt_v, n, route, sp):
                if tr is None:
                    yield (text, *keep, skip(), skip())
                else:
                    shown_base = ctx.shown(prompt_v, base.completion)
                    panel = verdicts_html(
                        answer_verdict(ctx.moe, prompt_v, base.completion, system=sp),
                        answer_verdict(ctx.moe, prompt_v, tr.completion, route, system=sp),
                        texts=(shown_base, text))
                    yield (text, shown_base,
                           plots.heatmap(ctx.shown_trace(tr), "changed", baseline=base,
                                         edits=edits, selected=sel), plots.usage(tr), base, tr,
                           "re-routed", "changed", panel)

    p.rerun_btn.click(rerun, [p.prompt, p.system, p.max_new, p.st_edits, p.st_base, p.st_sel],
                      [p.alt_ans, p.base_ans, p.heat, p.usage, p.st_base, p.st_alt, p.view,
                       p.mode, p.verdict], **MODEL_SLOT, **UI)

    def save_edits(prompt_v, system_v, edits, alt, request: gr.Request = None):
        with user_errors("Save route"):
            moe = ctx.require()
            sp = ctx.system(system_v)
            ctx.check_prompt(prompt_v, sp)
            if not edits:
                fail("There are no pending edits to save.")
            ctx.admit(request)
            route = route_of_edits(edits, dict(moe.provenance(sp), source="manual",
                                               prompt=prompt_v))
            completion = alt.completion if (alt is not None and alt.prompt == prompt_v
                                            and alt.system == sp) else None
            same = ctx.store.find_route(route, prompt_v, moe.name)
            if same is not None:
                gr.Info(f"These edits are already in the library as route #{same} (same prompt "
                        "and model): not saved again.")
                return same
            rid = ctx.store.save_route(route, prompt_v, moe.name, completion=completion,
                                       source="manual")
            gr.Info(f"Saved as route #{rid} in the library.")
            return rid

    p.save_btn.click(save_edits, [p.prompt, p.system, p.st_edits, p.st_alt], [p.l_id],
                     **FREE, **UI)

    def share(prompt_v, system_v, max_new_v, edits, request: gr.Request = None):
        with user_errors("Copy link"):
            from explorer.app.links import edits_link, page_base, route_link
            moe = ctx.require()
            sp = ctx.system(system_v)
            ctx.check_prompt(prompt_v, sp)
            n = ctx.new_tokens(max_new_v)
            if not edits:
                fail("There are no pending edits: a link shares a prompt with its route.")
            base = page_base(request)
            same = ctx.store.find_route(route_of_edits(edits, moe.provenance(sp)), prompt_v,
                                        moe.name)
            link = route_link(base, same, n) if same is not None else \
                edits_link(base, prompt_v, edits, n, sp)
            gr.Info("Link copied: it opens this prompt and route"
                    + (f" (saved route #{same})." if same is not None else "."))
            return link

    p.link_btn.click(share, [p.prompt, p.system, p.max_new, p.st_edits], [p.link], **FREE,
                     **UI).then(
        None, [p.link], None, js="(link) => { if (link && navigator.clipboard) "
        "navigator.clipboard.writeText(link).catch(() => {}); return []; }")
    p.rerun_fn = rerun  # links to an unsaved route re-run it (explorer.app.build)
