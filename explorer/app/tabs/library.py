"""The "Route library" tab: filter the stored routes, replay one (on its prompt or another),
load it into Inspect, compare two, export, import and delete; hosted, share one. Every view
sees the library as its caller may (:func:`explorer.app.library_access.library`): hosted, a
visitor's own routes and the shared ones."""

from __future__ import annotations

import html
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from explorer.app.errors import fail, user_errors
from explorer.app.format import edits_box, routes_frame, verdict_badge, verdicts_html
from explorer.app.gate import Door, Event, Visit
from explorer.app.inputs import MAX_ROW_ID, whole_number
from explorer.app.library_access import Library, library
from explorer.app.state import InspectState, Shared
from explorer.app.streaming import stream_shown
from explorer.app.verdicts import answer_verdict
from explorer.attacks import list_attacks
from explorer.core.route import Route
from explorer.storage.library import SOURCES
from explorer.viz import figures as plots

#: What the tab says of privacy in hosted mode.
PRIVATE_NOTE = ("*Your routes (with their prompts, system prompts and searches) are private: "
                "only you see them until you **Share** one. Shared routes are listed to every "
                "visitor; only their owner can unshare or delete them.*")


#: The replay heatmap's placeholder (before a route is replayed).
EMPTY_REPLAY = "Click a route in the table and press Replay: its routing appears here"


def list_table(lib: Library, model_f, text, success, source):
    """The routes table of what ``lib``'s caller may see, under the given filters ("any"
    or blank: no filter); hosted, with whose each route is and whether it is shared."""
    with user_errors("Route library", detail=not lib.hosted):
        items = lib.list(
            model=None if model_f in (None, "", "any") else model_f,
            text=text or None,
            success={"yes": True, "no": False}.get(success),
            source=None if source in (None, "", "any") else source)
        return routes_frame(items, lib.access if lib.hosted else None)


def refresh(lib: Library, model_f, text, success, source):
    """(routes table, model filter dropdown with the models of the routes in sight)."""
    df = list_table(lib, model_f, text, success, source)
    return df, gr.Dropdown(choices=["any"] + lib.models(), value=model_f or "any")


@dataclass
class LibraryUI:
    """The tab's components."""

    tab: Any
    f_text: Any
    f_model: Any
    f_success: Any
    f_source: Any
    f_btn: Any
    table: Any
    route_id: Any
    other_prompt: Any
    replay_btn: Any
    load_btn: Any
    share_btn: Any
    unshare_btn: Any
    answer: Any
    verdict: Any
    info: Any
    heat: Any
    c_a: Any
    c_b: Any
    c_prompt: Any
    c_btn: Any
    c_ans_a: Any
    c_ans_b: Any
    c_verdict: Any
    c_diff: Any
    c_overlap: Any
    x_btn: Any
    x_file: Any
    d_btn: Any
    u_btn: Any
    deleted: Any
    i_file: Any
    i_text: Any
    i_btn: Any

    @property
    def filters(self) -> list:
        return [self.f_model, self.f_text, self.f_success, self.f_source]

    def replay_outputs(self) -> list:
        return [self.answer, self.info, self.heat, self.verdict]


def layout(hosted: bool = False) -> LibraryUI:
    """The tab (inside an open ``gr.Tabs``); ``hosted``: routes are private unless shared
    (a note, an access column, Share and Unshare)."""
    sources = list(dict.fromkeys(list(SOURCES) + list_attacks("job")))
    widths = ["6%", "34%", "18%", "7%", "10%", "8%", "7%", "10%"]
    if hosted:
        widths = ["6%", "10%", "30%", "14%", "6%", "9%", "8%", "7%", "10%"]
    with gr.Tab("Route library", id="library") as tab:
        if hosted:
            gr.Markdown(PRIVATE_NOTE, elem_id="library-private-note")
        with gr.Row():
            f_text = gr.Textbox(label="search prompt / target / completion", scale=2)
            f_model = gr.Dropdown(["any"], value="any", label="model", allow_custom_value=True)
            f_success = gr.Radio(["any", "yes", "no"], value="any", label="jailbroken")
            f_source = gr.Dropdown(["any"] + sources, value="any", label="source")
            f_btn = gr.Button("Refresh", scale=0)
        empty = routes_frame([], (lambda r: "") if hosted else None)
        table = gr.Dataframe(empty, interactive=False, wrap=True, max_height=320,
                             elem_id="routes-table", column_widths=widths)
        with gr.Row(equal_height=True):
            route_id = gr.Number(label="route id (click a row)", precision=0,
                                 elem_id="lib-route-id")
            other = gr.Textbox(label="replay on prompt (blank: the route's own)", scale=3)
            replay_btn = gr.Button("Replay", variant="primary", elem_id="lib-replay")
            load_btn = gr.Button("Edit in Inspect")
            share_btn = gr.Button("Share", visible=hosted, elem_id="lib-share")
            unshare_btn = gr.Button("Unshare", visible=hosted, elem_id="lib-unshare")
        with gr.Row():
            answer = gr.Textbox(label="Replayed answer", lines=4, interactive=False,
                                elem_id="lib-answer", elem_classes="sse-answer")
            with gr.Column():
                verdict = gr.HTML("", elem_id="lib-verdict")
                info = gr.Markdown("", elem_id="lib-info")
        heat = gr.Plot(plots.heatmap(None, empty=EMPTY_REPLAY),
                       label="Replayed routing (stars: forced cells)", elem_id="lib-heat")
        with gr.Accordion("Compare two routes", open=False):
            with gr.Row(equal_height=True):
                c_a = gr.Number(label="route A", precision=0, elem_id="cmp-a")
                c_b = gr.Number(label="route B", precision=0, elem_id="cmp-b")
                c_prompt = gr.Textbox(label="on prompt (blank: the routes' own, when they "
                                      "share one)", scale=3, elem_id="cmp-prompt")
                c_btn = gr.Button("Compare", elem_id="cmp-btn")
            with gr.Row():
                c_ans_a = gr.Textbox(label="A's answer", lines=4, interactive=False,
                                     elem_id="cmp-ans-a")
                c_ans_b = gr.Textbox(label="B's answer", lines=4, interactive=False,
                                     elem_id="cmp-ans-b")
            c_verdict = gr.HTML("", elem_id="cmp-verdicts")
            c_diff = gr.Plot(plots.diff_heatmap(None, None), label="routing differences",
                             elem_id="cmp-diff")
            c_overlap = gr.Plot(plots.empty_figure("Forced-cell overlap appears here"),
                                label="forced (layer, expert) overlap")
        with gr.Accordion("Export, import, delete", open=False):
            with gr.Row():
                x_btn = gr.Button("Export route JSON", elem_id="export-btn")
                x_file = gr.File(label="exported route", interactive=False,
                                 elem_id="export-file")
                d_btn = gr.Button("Delete route", variant="stop", elem_id="delete-btn")
                u_btn = gr.Button("Undo delete", visible=False, elem_id="undo-delete-btn")
            deleted = gr.State(None)  # the last deleted route (a StoredRoute)
            with gr.Row():
                i_file = gr.File(label="route JSON file", file_types=[".json"], type="filepath")
                i_text = gr.Code(label="…or paste route JSON", language="json", lines=6,
                                 elem_id="import-json")
                i_btn = gr.Button("Import", elem_id="import-btn")
    return LibraryUI(tab, f_text, f_model, f_success, f_source, f_btn, table, route_id,
                     other, replay_btn, load_btn, share_btn, unshare_btn, answer, verdict, info, heat, c_a, c_b,
                     c_prompt, c_btn, c_ans_a, c_ans_b, c_verdict, c_diff, c_overlap, x_btn,
                     x_file, d_btn, u_btn, deleted, i_file, i_text, i_btn)


# -- views ------------------------------------------------------------------------------------
def _stored(lib: Library, route_id):
    return lib.get(whole_number(route_id, "route id", 1, MAX_ROW_ID))


def on_refresh(visit: Visit, model_f, text, success, source, browser=None):
    """(routes table, model filter)."""
    return refresh(library(visit, browser), model_f, text, success, source)


def pick_row(visit: Visit, df, evt: gr.SelectData):
    """A clicked table row's route id (a header click: nothing)."""
    try:
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        return int(df.iloc[row]["id"])
    except Exception:  # noqa: BLE001 - clicking a header etc.
        return gr.skip()


def replay_route(visit: Visit, route_id, other_prompt, max_new_v, browser=None):
    """Replay a stored route the caller may see on its own prompt (or another), under the
    system prompt it was made with: (answer streamed, info, heatmap, badge)."""
    moe = visit.moe
    lib = library(visit, browser)
    sr = _stored(lib, route_id)
    q = other_prompt if (other_prompt or "").strip() else sr.prompt
    prompt = visit.prompt(q, sr.route.system)
    n = visit.tokens(max_new_v)
    visit.route(sr.route, prompt)
    for text, tr in stream_shown(visit, prompt, n, sr.route):
        if tr is None:
            yield text, gr.skip(), gr.skip(), gr.skip()
            continue
        edits = sr.route.to_dict()["edits"]
        md = (f"Route **#{sr.id}** ({sr.n_edits} edits, {sr.source}, model `{sr.model}`) on "
              f"{'its own prompt' if prompt.text == sr.prompt else 'another prompt'}")
        if prompt.system:
            md += f" · system prompt: *{html.escape(prompt.system[:80])}*"
        md += f" · [link to this route](?route={sr.id}&n={n})"
        if lib.hosted and not sr.shared:
            md += " (it opens for you only, until you share the route)"
        if sr.model and sr.model != moe.name:
            md += f"  \n⚠ saved for `{sr.model}`, replayed on `{moe.name}`"
        badge = verdict_badge(answer_verdict(moe, prompt, tr.completion, sr.route),
                              "Keyword judge:")
        yield text, md, plots.heatmap(visit.app.gate.shown_trace(tr), "expert", edits=edits,
                                      title="Replayed routing"), badge


def load_into_inspect(visit: Visit, route_id, st: InspectState, browser=None):
    """A stored route as Inspect's pending edits, with its prompt and system prompt:
    (prompt, Inspect's state, its edits list, tabs, system prompt)."""
    sr = _stored(library(visit, browser), route_id)
    sp = sr.route.system
    toks = None
    if sr.prompt and visit.app.moe is not None:
        toks = visit.app.host.token_strings(visit.prompt(sr.prompt, sp))
    st = (st or InspectState()).with_(route=Route(list(sr.route.edits), dict(sr.route.info)))
    gr.Info(f"Route #{sr.id} loaded as pending edits: press Generate, then Re-run.")
    return (sr.prompt or gr.skip(), st, edits_box(st.edit_dicts(), toks),
            gr.Tabs(selected="inspect"), sp or "")


def compare(visit: Visit, a_id, b_id, other_prompt, max_new_v, browser=None):
    """Two stored routes on one prompt: (A's answer, B's answer, badges, differences
    heatmap, forced-cell overlap)."""
    from explorer.core.trace import trace
    moe = visit.moe
    lib = library(visit, browser)
    ra, rb = _stored(lib, a_id), _stored(lib, b_id)
    n = visit.tokens(max_new_v)
    pa = other_prompt if (other_prompt or "").strip() else ra.prompt
    pb = other_prompt if (other_prompt or "").strip() else rb.prompt
    sa, sb = ra.route.system, rb.route.system
    qa, qb = visit.prompt(pa, sa), visit.prompt(pb, sb)
    if pa != pb:
        fail(f"Routes #{ra.id} and #{rb.id} were made for different prompts, so their token "
             "positions point at different tokens and a cell-by-cell diff would mislead: "
             "type one prompt under 'on prompt' to compare both on it.")
    if sa != sb:
        fail(f"Routes #{ra.id} and #{rb.id} were made with different system prompts, so "
             "their token positions point at different tokens: compare routes made with the "
             "same system prompt.")
    visit.route(ra.route, qa)
    visit.route(rb.route, qb)
    ta = trace(moe, qa, max_new_tokens=n, route=ra.route, validate=False)
    tb = trace(moe, qb, max_new_tokens=n, route=rb.route, validate=False)
    names = (f"#{ra.id}", f"#{rb.id}")
    E = max(max(ta.num_experts), 1)
    gate = visit.app.gate
    texts = (visit.shown(pa, ta.completion), visit.shown(pb, tb.completion))
    panel = verdicts_html(answer_verdict(moe, qa, ta.completion, ra.route),
                          answer_verdict(moe, qb, tb.completion, rb.route),
                          labels=(f"A {names[0]}", f"B {names[1]}"), texts=texts)
    return (*texts, panel, plots.diff_heatmap(gate.shown_trace(ta), gate.shown_trace(tb), names),
            plots.overlap_figure(ra.route, rb.route, ta.moe_layers, E, names))


def export(visit: Visit, route_id, browser=None):
    """A stored route the caller may see as a JSON file to download (its answer as the
    server shows it; hosted, written where no other visitor can name it)."""
    lib = library(visit, browser)
    sr = _stored(lib, route_id)
    path = lib.export(sr.id)
    out = Path(tempfile.mkdtemp(prefix="sse-export-")) / path.name
    data = json.loads(path.read_text(encoding="utf-8"))
    info = data.get("info") or {}
    if isinstance(info.get("completion"), str):  # what this server shows, no more
        info["completion"] = visit.shown(sr.prompt, info["completion"])
    out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return str(out)


def check_import(visit: Visit, route: Route) -> None:
    """An imported route must name its prompt and fit the loaded model and that prompt (the
    CLI's checks and messages); a route without a model is taken as made for the loaded
    one."""
    from explorer.core.errors import RouteError
    moe = visit.moe
    prompt = route.info.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RouteError('the route names no prompt (its "info" has no "prompt"): its '
                         "positions refer to one prompt's tokens, so it cannot be "
                         "replayed; add the prompt, or load the edits in Inspect")
    visit.route(route, visit.prompt(prompt, route.system))
    if not isinstance(route.info.get("model"), str) or not route.info["model"].strip():
        route.info["model"] = moe.name


def do_import(visit: Visit, file_path, text, model_f, text_f, success, source, browser=None):
    """Import a route JSON file or pasted JSON (hosted: as the caller's, private): (route
    id, the file box, routes table)."""
    from explorer.storage.library import MAX_IMPORT_BYTES
    lib = library(visit, browser)
    if file_path:
        f = Path(file_path)
        if f.stat().st_size > MAX_IMPORT_BYTES:
            fail("That file is too large to be a route.")
        payload = f.read_bytes()
    elif (text or "").strip():
        payload = text
    else:
        fail("Choose a route JSON file or paste route JSON.")
    # an identical route of the caller's keeps its id, at most the newest one in sight
    newest = max((r.id for r in lib.list(limit=1)), default=0)
    rid = lib.import_route(payload, check=lambda r: check_import(visit, r))
    gr.Info(f"That route is already in the library as route #{rid}." if rid <= newest
            else f"Imported as route #{rid}.")
    return rid, None, list_table(lib, model_f, text_f, success, source)


def delete(visit: Visit, route_id, model_f, text_f, success, source, browser=None):
    """Delete a stored route (undoable; hosted, only one's own): (route id, table, the
    deleted route, Undo)."""
    lib = library(visit, browser)
    sr = lib.delete(_stored(lib, route_id).id)
    gr.Info(f"Deleted route #{sr.id}: press Undo delete to bring it back.")
    return (None, list_table(lib, model_f, text_f, success, source), sr,
            gr.Button(f"Undo delete of #{sr.id}", visible=True))


def undo_delete(visit: Visit, gone, model_f, text_f, success, source, browser=None):
    """Bring the last deleted route back: (route id, table, nothing to undo, Undo)."""
    if gone is None:
        fail("Nothing to undo.")
    lib = library(visit, browser)
    rid = lib.restore(gone)
    gr.Info(f"Route #{rid} is back in the library.")
    return (rid, list_table(lib, model_f, text_f, success, source), None,
            gr.Button(visible=False))


def _set_shared(visit: Visit, route_id, shared: bool, filters, browser):
    lib = library(visit, browser)
    sr = lib.share(_stored(lib, route_id).id, shared)
    gr.Info(f"Route #{sr.id} is shared: every visitor can list, replay and export it."
            if shared else f"Route #{sr.id} is private again: only you can see it.")
    return list_table(lib, *filters)


def share_route(visit: Visit, route_id, model_f, text_f, success, source, browser=None):
    """Share one's own route with every visitor (hosted): the routes table."""
    return _set_shared(visit, route_id, True, (model_f, text_f, success, source), browser)


def unshare_route(visit: Visit, route_id, model_f, text_f, success, source, browser=None):
    """Make one's own shared route private again: the routes table."""
    return _set_shared(visit, route_id, False, (model_f, text_f, success, source), browser)


def events(ui: LibraryUI, shared: Shared, inspect) -> list[Event]:
    """The tab's events; ``inspect``: the Inspect tab's components (Edit in Inspect fills
    them)."""
    filters, who = ui.filters, [shared.browser]
    out = [Event(ev, on_refresh, filters + who, [ui.table, ui.f_model], Door("Route library"))
           for ev in (ui.f_btn.click, ui.f_text.submit, ui.f_success.input, ui.f_source.input,
                      ui.f_model.input, ui.tab.select)]
    out += [
        Event(ui.table.select, pick_row, [ui.table], [ui.route_id], Door("Pick a route")),
        Event(ui.replay_btn.click, replay_route,
              [ui.route_id, ui.other_prompt, shared.max_new] + who,
              ui.replay_outputs(), Door("Replay", "model", gpu=60)),
        Event(ui.load_btn.click, load_into_inspect, [ui.route_id, inspect.state] + who,
              [shared.prompt, inspect.state, inspect.edit_list, shared.tabs, shared.system],
              Door("Load route")),
        Event(ui.c_btn.click, compare, [ui.c_a, ui.c_b, ui.c_prompt, shared.max_new] + who,
              [ui.c_ans_a, ui.c_ans_b, ui.c_verdict, ui.c_diff, ui.c_overlap],
              Door("Compare", "model", gpu=120)),
        Event(ui.x_btn.click, export, [ui.route_id] + who, [ui.x_file],
              Door("Export", "write")),
        Event(ui.i_btn.click, do_import, [ui.i_file, ui.i_text] + filters + who,
              [ui.route_id, ui.i_file, ui.table], Door("Import", "write")),
        Event(ui.d_btn.click, delete, [ui.route_id] + filters + who,
              [ui.route_id, ui.table, ui.deleted, ui.u_btn], Door("Delete", "write")),
        Event(ui.u_btn.click, undo_delete, [ui.deleted] + filters + who,
              [ui.route_id, ui.table, ui.deleted, ui.u_btn], Door("Undo delete", "write")),
        Event(ui.share_btn.click, share_route, [ui.route_id] + filters + who, [ui.table],
              Door("Share route", "write")),
        Event(ui.unshare_btn.click, unshare_route, [ui.route_id] + filters + who, [ui.table],
              Door("Unshare route", "write")),
    ]
    return out
