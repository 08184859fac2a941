"""The "Route library" tab: filter the stored routes, replay one (on its prompt or another),
load it into Inspect, compare two, export, import and delete."""

from __future__ import annotations

import html
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr

from explorer.app.common import (
    FREE,
    MAX_ROW_ID,
    MODEL_SLOT,
    UI,
    answer_verdict,
    fail,
    gpu,
    user_errors,
    whole_number,
)
from explorer.app.format import edits_box, routes_frame, verdict_badge, verdicts_html
from explorer.core.route import Route
from explorer.viz import figures as plots

if TYPE_CHECKING:
    from types import SimpleNamespace

    from explorer.app.context import Explorer


def list_table(ctx: Explorer, model_f, text, success, source):
    """The routes table under the given filters ("any" or blank: no filter)."""
    with user_errors("Route library"):
        items = ctx.store.list_routes(
            model=None if model_f in (None, "", "any") else model_f,
            text=text or None,
            success={"yes": True, "no": False}.get(success),
            source=None if source in (None, "", "any") else source)
        return routes_frame(items)


def refresh(ctx: Explorer, model_f, text, success, source):
    """(routes table, model filter dropdown with the models in the library)."""
    df = list_table(ctx, model_f, text, success, source)
    models = sorted({r.model for r in ctx.store.list_routes(limit=2000) if r.model})
    return df, gr.Dropdown(choices=["any"] + models, value=model_f or "any")


def layout(p: SimpleNamespace) -> None:
    with gr.Tab("Route library", id="library") as p.lib_tab:
        with gr.Row():
            p.f_text = gr.Textbox(label="search prompt / target / completion", scale=2)
            p.f_model = gr.Dropdown(["any"], value="any", label="model", allow_custom_value=True)
            p.f_success = gr.Radio(["any", "yes", "no"], value="any", label="jailbroken")
            p.f_source = gr.Dropdown(["any", "fsour", "manual", "rosais", "import"],
                                     value="any", label="source")
            p.f_btn = gr.Button("Refresh", scale=0)
        p.table = gr.Dataframe(routes_frame([]), interactive=False, wrap=True, max_height=320,
                               elem_id="routes-table",
                               column_widths=["6%", "34%", "18%", "7%", "10%", "8%", "7%",
                                              "10%"])
        with gr.Row(equal_height=True):
            p.l_id = gr.Number(label="route id (click a row)", precision=0,
                               elem_id="lib-route-id")
            p.l_prompt = gr.Textbox(label="replay on prompt (blank: the route's own)", scale=3)
            p.l_replay = gr.Button("Replay", variant="primary", elem_id="lib-replay")
            p.l_load = gr.Button("Edit in Inspect")
        with gr.Row():
            p.l_answer = gr.Textbox(label="Replayed answer", lines=4, interactive=False,
                                    elem_id="lib-answer", elem_classes="sse-answer")
            with gr.Column():
                p.l_verdict = gr.HTML("", elem_id="lib-verdict")
                p.l_info = gr.Markdown("", elem_id="lib-info")
        p.l_heat = gr.Plot(plots.heatmap(None), label="Replayed routing (stars: forced cells)")
        with gr.Accordion("Compare two routes", open=False):
            with gr.Row(equal_height=True):
                p.c_a = gr.Number(label="route A", precision=0, elem_id="cmp-a")
                p.c_b = gr.Number(label="route B", precision=0, elem_id="cmp-b")
                p.c_prompt = gr.Textbox(label="on prompt (blank: the routes' own, when they "
                                        "share one)", scale=3, elem_id="cmp-prompt")
                p.c_btn = gr.Button("Compare", elem_id="cmp-btn")
            with gr.Row():
                p.c_ans_a = gr.Textbox(label="A's answer", lines=4, interactive=False,
                                       elem_id="cmp-ans-a")
                p.c_ans_b = gr.Textbox(label="B's answer", lines=4, interactive=False,
                                       elem_id="cmp-ans-b")
            p.c_verdict = gr.HTML("", elem_id="cmp-verdicts")
            p.c_diff = gr.Plot(plots.diff_heatmap(None, None), label="routing differences",
                               elem_id="cmp-diff")
            p.c_overlap = gr.Plot(plots.empty_figure("Forced-cell overlap appears here"),
                                  label="forced (layer, expert) overlap")
        with gr.Accordion("Export, import, delete", open=False):
            with gr.Row():
                p.x_btn = gr.Button("Export route JSON", elem_id="export-btn")
                p.x_file = gr.File(label="exported route", interactive=False,
                                   elem_id="export-file")
                p.d_btn = gr.Button("Delete route", variant="stop", elem_id="delete-btn")
                p.u_btn = gr.Button("Undo delete", visible=False, elem_id="undo-delete-btn")
            p.st_deleted = gr.State(None)  # the last deleted route (StoredRoute.to_dict())
            with gr.Row():
                p.i_file = gr.File(label="route JSON file", file_types=[".json"],
                                   type="filepath")
                p.i_text = gr.Code(label="…or paste route JSON", language="json", lines=6,
                                   elem_id="import-json")
                p.i_btn = gr.Button("Import", elem_id="import-btn")
    p.filters = [p.f_model, p.f_text, p.f_success, p.f_source]


def wire(ctx: Explorer, p: SimpleNamespace) -> None:
    filters = p.filters

    def on_refresh(*filt):
        return refresh(ctx, *filt)

    for ev in (p.f_btn.click, p.f_text.submit, p.f_success.input, p.f_source.input,
               p.f_model.input, p.lib_tab.select):
        ev(on_refresh, filters, [p.table, p.f_model], **FREE, **UI)

    def pick_row(df, evt: gr.SelectData):
        try:
            row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
            return int(df.iloc[row]["id"])
        except Exception:  # noqa: BLE001 - clicking a header etc.
            return gr.skip()

    p.table.select(pick_row, [p.table], [p.l_id], **FREE, **UI)

    def stored(route_id):
        return ctx.store.get_route(whole_number(route_id, "route id", 1, MAX_ROW_ID))

    @gpu(60)
    def replay_ui(route_id, other_prompt, max_new_v, request: gr.Request = None):
        with user_errors("Replay"):
            moe = ctx.require()
            sr = stored(route_id)
            q = other_prompt if (other_prompt or "").strip() else sr.prompt
            sp = sr.route.system  # a route replays under the system prompt it was made with
            ctx.check_prompt(q, sp)
            n = ctx.new_tokens(max_new_v)
            ctx.admit(request)
            for text, tr in ctx.stream(q, n, sr.route, sp):
                if tr is None:
                    yield text, gr.skip(), gr.skip(), gr.skip()
                else:
                    edits = sr.route.to_dict()["edits"]
                    md = (f"Route **#{sr.id}** ({sr.n_edits} edits, {sr.source}, model "
                          f"`{sr.model}`) on "
                          f"{'its own prompt' if q == sr.prompt else 'another prompt'}")
                    if sp:
                        md += f" · system prompt: *{html.escape(sp[:80])}*"
                    md += f" · [link to this route](?route={sr.id}&n={n})"
                    if sr.model and sr.model != moe.name:
                        md += f"  \n⚠ saved for `{sr.model}`, replayed on `{moe.name}`"
                    badge = verdict_badge(answer_verdict(moe, q, tr.completion, sr.route,
                                                         system=sp),
                                          "Keyword judge:")
                    yield text, md, plots.heatmap(ctx.shown_trace(tr), "expert", edits=edits,
                                                  title="Replayed routing"), badge

    p.replay_fn = replay_ui  # links to a saved route replay it (explorer.app.build)
    p.l_replay.click(replay_ui, [p.l_id, p.l_prompt, p.max_new],
                     [p.l_answer, p.l_info, p.l_heat, p.l_verdict], **MODEL_SLOT, **UI)

    def load_into_inspect(route_id):
        with user_errors("Load route"):
            sr = stored(route_id)
            edits = sr.route.to_dict()["edits"]
            sp = sr.route.system
            toks = ctx.prompt_tokens(sr.prompt, sp) if sr.prompt and ctx.moe else None
            gr.Info(f"Route #{sr.id} loaded as pending edits: press Generate, then Re-run.")
            return (sr.prompt or gr.skip(), edits, edits_box(edits, toks),
                    gr.Tabs(selected="inspect"), sp or "")

    p.l_load.click(load_into_inspect, [p.l_id], [p.prompt, p.st_edits, p.edit_list, p.tabs,
                                                  p.system], **FREE, **UI)

    @gpu(120)
    def compare(a_id, b_id, other_prompt, max_new_v, request: gr.Request = None):
        with user_errors("Compare"):
            from explorer.core.trace import trace
            moe = ctx.require()
            ra, rb = stored(a_id), stored(b_id)
            n = ctx.new_tokens(max_new_v)
            pa = other_prompt if (other_prompt or "").strip() else ra.prompt
            pb = other_prompt if (other_prompt or "").strip() else rb.prompt
            sa, sb = ra.route.system, rb.route.system
            ctx.check_prompt(pa, sa)
            ctx.check_prompt(pb, sb)
            if pa != pb:
                fail(f"Routes #{ra.id} and #{rb.id} were made for different prompts, so their "
                     "token positions point at different tokens and a cell-by-cell diff would "
                     "mislead: type one prompt under 'on prompt' to compare both on it.")
            if sa != sb:
                fail(f"Routes #{ra.id} and #{rb.id} were made with different system prompts, "
                     "so their token positions point at different tokens: compare routes "
                     "made with the same system prompt.")
            ctx.admit(request)
            ta = trace(moe, pa, max_new_tokens=n, route=ra.route, system=sa)
            tb = trace(moe, pb, max_new_tokens=n, route=rb.route, system=sb)
            names = (f"#{ra.id}", f"#{rb.id}")
            E = max(max(ta.num_experts), 1)
            texts = (ctx.shown(pa, ta.completion), ctx.shown(pb, tb.completion))
            panel = verdicts_html(answer_verdict(moe, pa, ta.completion, ra.route, system=sa),
                                  answer_verdict(moe, pb, tb.completion, rb.route, system=sb),
                                  labels=(f"A {names[0]}", f"B {names[1]}"), texts=texts)
            return (*texts, panel,
                    plots.diff_heatmap(ctx.shown_trace(ta), ctx.shown_trace(tb), names),
                    plots.overlap_figure(ra.route, rb.route, ta.moe_layers, E, names))

    p.c_btn.click(compare, [p.c_a, p.c_b, p.c_prompt, p.max_new],
                  [p.c_ans_a, p.c_ans_b, p.c_verdict, p.c_diff, p.c_overlap],
                  **MODEL_SLOT, **UI)

    def export(route_id, request: gr.Request = None):
        with user_errors("Export"):
            sr = stored(route_id)
            ctx.admit(request)
            path = ctx.store.export_route(sr.id)
            out = Path(tempfile.mkdtemp(prefix="sse-export-")) / path.name
            data = json.loads(path.read_text(encoding="utf-8"))
            info = data.get("info") or {}
            if isinstance(info.get("completion"), str):  # what this server shows, no more
                info["completion"] = ctx.shown(sr.prompt, info["completion"])
            out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
            return str(out)

    p.x_btn.click(export, [p.l_id], [p.x_file], **FREE, **UI)

    def do_import(file_path, text, model_f, text_f, success, source,
                  request: gr.Request = None):
        filt = (model_f, text_f, success, source)
        with user_errors("Import"):
            ctx.admit(request)
            from explorer.storage.library import MAX_IMPORT_BYTES
            if file_path:
                f = Path(file_path)
                if f.stat().st_size > MAX_IMPORT_BYTES:
                    fail("That file is too large to be a route.")
                payload = f.read_bytes()
            elif (text or "").strip():
                payload = text
            else:
                fail("Choose a route JSON file or paste route JSON.")
            newest = max((r.id for r in ctx.store.list_routes(limit=1)), default=0)
            rid = ctx.store.import_route(payload, check=ctx.check_import)
            gr.Info(f"That route is already in the library as route #{rid}." if rid <= newest
                    else f"Imported as route #{rid}.")
            return rid, None, list_table(ctx, *filt)

    p.i_btn.click(do_import, [p.i_file, p.i_text] + filters, [p.l_id, p.i_file, p.table],
                  **FREE, **UI)

    def delete(route_id, model_f, text_f, success, source, request: gr.Request = None):
        filt = (model_f, text_f, success, source)
        with user_errors("Delete"):
            if ctx.policy.enabled:  # the library is shared and routes have no owner
                fail("Deleting routes is turned off on this public server (the route "
                     "library is shared by every visitor).")
            sr = stored(route_id)
            ctx.admit(request)
            ctx.store.delete_route(sr.id)
            gr.Info(f"Deleted route #{sr.id}: press Undo delete to bring it back.")
            return (None, list_table(ctx, *filt), sr.to_dict(),
                    gr.Button(f"Undo delete of #{sr.id}", visible=True))

    p.d_btn.click(delete, [p.l_id] + filters, [p.l_id, p.table, p.st_deleted, p.u_btn],
                  **FREE, **UI)

    def undo_delete(gone, model_f, text_f, success, source, request: gr.Request = None):
        with user_errors("Undo delete"):
            from explorer.storage.library import StoredRoute
            if not gone:
                fail("Nothing to undo.")
            ctx.admit(request)
            d = dict(gone, route=Route.from_dict(gone["route"]))
            rid = ctx.store.restore_route(StoredRoute(**d))
            gr.Info(f"Route #{rid} is back in the library.")
            return (rid, list_table(ctx, model_f, text_f, success, source), None,
                    gr.Button(visible=False))

    p.u_btn.click(undo_delete, [p.st_deleted] + filters,
                  [p.l_id, p.table, p.st_deleted, p.u_btn], **FREE, **UI)
