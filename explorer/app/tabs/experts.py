"""The "Experts" tab: expert pages. What an expert of an MoE layer is chosen for, how much
more often on harmful than on benign requests (with its uncertainty), the tokens routed to
it, the library's routes that force or mask it, and its layer's RoSais when one is at hand.

The statistics (:mod:`explorer.research.experts`) are computed once per model on the
project's own prompt sets and kept in ``<data dir>/experts/``. A page opens from the
search box ("3 6", "L3 E6"), from a bar of the layer overview, and from Inspect: an
expert of the selected cell (:func:`inspect_links`' radio) or a cell of the usage plot.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, replace
from typing import Any

import gradio as gr

from explorer.app.errors import fail
from explorer.app.gate import Door, Event, Visit
from explorer.app.library_access import library
from explorer.app.state import InspectState, Shared
from explorer.research.experts import ExpertStats, cached_expert_stats
from explorer.viz import experts as eplots
from explorer.viz.figures import token_label

#: What the tab says an expert is (teachers' first question).
INTRO = (
    "An **expert** is one of the small feed-forward networks inside a Mixture-of-Experts "
    "layer. For every token, the layer's **router** scores all experts and sends the token "
    "to the top-k of them; the others do nothing for that token. An expert page shows what "
    "one expert is chosen for: how often on the project's harmful requests and on its "
    "benign ones (the **safety relevance** is the difference, with a 95% bootstrap "
    "interval over prompts), the tokens routed to it most, with their context, and the "
    "routes in the library that force or mask it. A high score says the router picks the "
    "expert more for harmful requests, not that the expert causes refusals: masking or "
    "forcing it (Inspect) tests that.")

# -- JS bridges: plotly_click on a figure -> a 'select' event on the HTML block -----------
_BRIDGE = """
const bind = () => {
  const gd = document.querySelector('#%(plot)s div[data-testid="plotly"]');
  if (!gd || typeof gd.on !== 'function' || gd.%(flag)s) return;
  gd.%(flag)s = true;
  gd.on('plotly_click', (ev) => {
    const p = ev && ev.points && ev.points[0];
    if (!p) return;
    const cd = Array.isArray(p.customdata) ? p.customdata : [p.customdata];
    trigger('select', %(data)s);
  });
};
bind();
new MutationObserver(bind).observe(document.body, {childList: true, subtree: true});
setInterval(bind, 1500);
"""
#: The overview's bars carry ``customdata = [expert, layer, ...]``.
OVERVIEW_BRIDGE_JS = _BRIDGE % {"plot": "expert-overview", "flag": "__sseExperts",
                                "data": "{expert: cd[0], layer: cd[1]}"}
#: Inspect's usage plot: y is the expert, ``customdata`` the layer.
USAGE_BRIDGE_JS = _BRIDGE % {"plot": "usage-plot", "flag": "__sseUsage",
                             "data": "{expert: p.y, layer: cd[0]}"}

_QUERY = re.compile(r"\s*(?:l(?:ayer)?\s*)?(\d{1,6})(?:\s*[,/:\s]\s*(?:e(?:xpert)?\s*)?"
                    r"(\d{1,6}))?\s*", re.IGNORECASE)


def parse_query(text: Any) -> tuple[int, int | None]:
    """``(layer, expert)`` from the search box: "3 6", "3/6", "L3 E6", "layer 3 expert 6"
    (or a layer alone: "3", "L3"); a one-line error otherwise."""
    m = _QUERY.fullmatch(text) if isinstance(text, str) and len(text) <= 60 else None
    if m is None:
        fail("Type a layer and an expert, e.g. '3 6' or 'L3 E6' (or a layer alone).")
    return int(m.group(1)), (int(m.group(2)) if m.group(2) is not None else None)


@dataclass
class ExpertsState:
    """One visitor's Experts tab: the statistics shown (per model, from the disk cache)
    and the page open (``layer``, ``expert``: None before one is opened)."""

    stats: ExpertStats | None = None
    layer: int | None = None
    expert: int | None = None


@dataclass
class ExpertsUI:
    """The tab's components."""

    query: Any
    open_btn: Any
    overview: Any
    bridge: Any
    header: Any
    freqs: Any
    tokens: Any
    routes: Any
    export_btn: Any
    files: Any
    state: Any

    def page_outputs(self) -> list:
        """What opening a page writes (see :func:`open_page`)."""
        return [self.state, self.query, self.overview, self.header, self.freqs, self.tokens,
                self.routes]


@dataclass
class InspectLinks:
    """What the Experts tab adds to Inspect: the selected cell's experts as page links,
    and the bridge of the usage plot."""

    pages: Any
    usage_bridge: Any


def layout() -> ExpertsUI:
    """The tab (inside an open ``gr.Tabs``)."""
    with gr.Tab("Experts", id="experts"):
        gr.Markdown(INTRO, elem_id="experts-intro")
        with gr.Row():
            query = gr.Textbox(label="Expert (layer and expert, e.g. 3 6 or L3 E6)",
                               placeholder="3 6", scale=3, max_lines=1,
                               elem_id="expert-query")
            open_btn = gr.Button("Open", variant="primary", scale=1, elem_id="expert-open-btn")
        overview = gr.Plot(eplots.expert_overview(None, 0), label="Layer overview",
                           elem_id="expert-overview")
        bridge = gr.HTML("<span class='sse-bridge-msg'>Click a bar to open that expert's "
                         "page.</span>", js_on_load=OVERVIEW_BRIDGE_JS,
                         elem_id="expert-overview-bridge")
        header = gr.Markdown("Open an expert: type its layer and number above, click a bar, "
                             "or click an expert of a cell in Inspect.", elem_id="expert-header")
        with gr.Row():
            freqs = gr.Plot(eplots.expert_frequencies(None, 0, 0), label="Frequencies",
                            elem_id="expert-freqs", scale=1)
            tokens = gr.HTML("", elem_id="expert-tokens")
        routes = gr.HTML("", elem_id="expert-routes")
        with gr.Row():
            export_btn = gr.Button("Export the statistics (CSV and JSON)", size="sm",
                                   elem_id="expert-export-btn")
            files = gr.File(label="Exports", file_count="multiple", interactive=False,
                            height=120, elem_id="expert-files")
        state = gr.State(ExpertsState())  # inside the tab: right under gr.Tabs it is a tab
    return ExpertsUI(query, open_btn, overview, bridge, header, freqs, tokens, routes,
                     export_btn, files, state)


def inspect_links() -> InspectLinks:
    """Inspect's links to expert pages (built inside Inspect's layout, under the cell
    panel)."""
    pages = gr.Radio([], label="Expert pages: click an expert of this cell", value=None,
                     elem_id="cell-expert-pages")
    usage_bridge = gr.HTML("", js_on_load=USAGE_BRIDGE_JS, elem_id="usage-bridge",
                           padding=False)
    return InspectLinks(pages, usage_bridge)


# -- views ------------------------------------------------------------------------------------
def stats_of(visit: Visit, st: ExpertsState) -> ExpertStats:
    """The statistics of the app's model: the visitor's when they are this model's, else
    from the disk cache (computed there once per model)."""
    moe = visit.moe
    s = st.stats
    prov = moe.provenance()
    if s is not None and s.model == moe.name and all(
            s.info.get(k) == v for k, v in prov.items()):
        return s
    return cached_expert_stats(moe, visit.app.store.data_dir / "experts")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def header_md(stats: ExpertStats, page: dict) -> str:
    """The page's headline: score, interval, rank, frequencies and the layer's RoSais."""
    lay, e = page["layer"], page["expert"]
    sign = ("chosen more on harmful requests" if page["low"] > 0 else
            "chosen more on benign requests" if page["high"] < 0 else
            "no clear difference (the interval includes 0)")
    ro = page["rosais"]
    ro_line = (f"Layer {lay}'s RoSais: **{ro['score']:.3f}** (rank {ro['rank']} of "
               f"{ro['layers']} layers, from the RoSais tab's last run)" if ro is not None
               else "Layer RoSais: run the RoSais tab on a prompt to see this layer's score.")
    return (f"### Expert {e} · layer {lay}\n"
            f"Safety relevance **{page['score']:+.3f}** (95% interval {page['low']:+.3f} … "
            f"{page['high']:+.3f}; rank {page['rank']} of {page['num_experts']}): {sign}.  \n"
            f"Chosen for {_pct(page['harmful_token_freq'])} of harmful-prompt tokens and "
            f"{_pct(page['benign_token_freq'])} of benign-prompt tokens; at least once in "
            f"{_pct(page['harmful_prompt_freq'])} of harmful and "
            f"{_pct(page['benign_prompt_freq'])} of benign prompts "
            f"({page['prompts']['harmful']} + {page['prompts']['benign']} prompts, top-"
            f"{page['top_k']} of {page['num_experts']} experts).  \n{ro_line}")


def tokens_html(page: dict) -> str:
    """The top tokens with their counts and contexts (HTML, every text escaped)."""
    if not page["top_tokens"]:
        return "<p>No token of these prompts was routed to this expert.</p>"

    def esc(s: str) -> str:
        return html.escape(s.replace("\n", "↵"))
    rows = []
    for t in page["top_tokens"]:
        ctx = "<br>".join(f"<span class='sse-lp'>{esc(c['left'])}<b><u>{esc(c['token'])}</u>"
                          f"</b>{esc(c['right'])}</span> <small>({c['set']})</small>"
                          for c in t["contexts"])
        rows.append(f"<tr><td class='sse-lp'>{html.escape(token_label(t['token']))}</td>"
                    f"<td>{t['harmful']}</td><td>{t['benign']}</td><td>{ctx}</td></tr>")
    return ("<table class='sse-table' id='expert-token-table'><thead><tr><th>token</th>"
            "<th>harmful</th><th>benign</th><th>in context</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def routes_html(rows: list[dict], hosted: bool) -> str:
    """The library's routes that force or mask the expert (HTML)."""
    whose = "your routes" if hosted else "the library"
    if not rows:
        return f"<p>No route in {whose} forces or masks this expert.</p>"
    items = "".join(f"<li>route #{r['id']}: <b>{r['mode']}</b> · "
                    f"{html.escape(r['prompt'][:80])}</li>" for r in rows)
    return f"<p>Routes in {whose} that force or mask this expert:</p><ul>{items}</ul>"


def show(visit: Visit, st: ExpertsState, layer: Any, expert: Any, rosais_res=None,
         b=None) -> tuple:
    """Open ``expert`` of ``layer`` (the layer's overview alone when ``expert`` is None).
    Outputs: :meth:`ExpertsUI.page_outputs`."""
    from explorer.app.inputs import whole_number
    from explorer.research.experts import route_rows
    st = st or ExpertsState()
    layer = whole_number(layer, "layer", 0)
    stats = stats_of(visit, st)
    try:
        stats.row(layer)
    except Exception as exc:  # noqa: BLE001 - one line for the visitor
        fail(str(exc))
    skip = gr.skip()
    if expert is None:
        st = replace(st, stats=stats, layer=layer, expert=None)
        return (st, f"L{layer}", eplots.expert_overview(stats, layer), skip, skip, skip, skip)
    expert = whole_number(expert, "expert", 0, stats.num_experts[stats.row(layer)] - 1)
    lib = library(visit, b)
    routes = route_rows(lib.with_expert(visit.moe.name, layer, expert))
    page = stats.page(layer, expert, routes=routes, rosais=rosais_res)
    st = replace(st, stats=stats, layer=layer, expert=expert)
    return (st, f"L{layer} E{expert}", eplots.expert_overview(stats, layer, selected=expert),
            header_md(stats, page), eplots.expert_frequencies(stats, layer, expert),
            tokens_html(page), routes_html(routes, lib.hosted))


def open_page(visit: Visit, query, st: ExpertsState, rosais_res=None, b=None):
    """The search box: open the page of the typed layer and expert."""
    layer, expert = parse_query(query)
    return show(visit, st, layer, expert, rosais_res, b)


def _clicked(evt: Any) -> tuple[Any, Any]:
    data = getattr(evt, "_data", None) or {}
    if not isinstance(data, dict):
        fail("That click did not name an expert.")
    return data.get("layer"), data.get("expert")


def on_bar(visit: Visit, st: ExpertsState, rosais_res, b, evt: gr.EventData):
    """A click on a bar of the overview: that expert's page."""
    layer, expert = _clicked(evt)
    if expert is None:
        fail("That click did not name an expert.")
    return show(visit, st, layer, expert, rosais_res, b)


def from_usage(visit: Visit, st: ExpertsState, rosais_res, b, evt: gr.EventData):
    """A click on Inspect's usage plot: that expert's page, in the Experts tab."""
    layer, expert = _clicked(evt)
    if expert is None or layer is None:
        fail("That click did not name an expert.")
    return (*show(visit, st, layer, expert, rosais_res, b), gr.Tabs(selected="experts"))


def cell_pages(visit: Visit, view_v, ist: InspectState):
    """The selected cell's experts as the choices of Inspect's page links."""
    ist = ist or InspectState()
    tr = ist.shown(view_v)
    s = ist.selected
    if tr is None or s is None or s.layer not in tr.moe_layers or s.position >= tr.num_tokens:
        return gr.Radio(choices=[], value=None)
    return gr.Radio(choices=[(f"expert {e} (layer {s.layer})", e)
                             for e in sorted(tr.experts_at(s.layer, s.position))],
                    value=None)


def from_cell(visit: Visit, choice, ist: InspectState, st: ExpertsState, rosais_res=None,
              b=None):
    """An expert of Inspect's selected cell: its page, in the Experts tab."""
    ist = ist or InspectState()
    if choice is None or ist.selected is None:
        return (*(gr.skip(),) * 7, gr.skip())
    return (*show(visit, st, ist.selected.layer, choice, rosais_res, b),
            gr.Tabs(selected="experts"))


def export(visit: Visit, st: ExpertsState):
    """The statistics of the app's model as CSV and JSON files (for download)."""
    import tempfile
    from pathlib import Path
    stats = stats_of(visit, st or ExpertsState())
    folder = Path(tempfile.mkdtemp(prefix="sse-experts-"))
    csv_path, json_path = folder / "experts.csv", folder / "experts.json"
    csv_path.write_text(stats.to_csv(), encoding="utf-8")
    json_path.write_text(stats.to_json(), encoding="utf-8")
    return [str(csv_path), str(json_path)]


def events(ui: ExpertsUI, shared: Shared, inspect_ui, links: InspectLinks,
           rosais_state) -> list[Event]:
    """The tab's events, and Inspect's links to it (``inspect_ui``: Inspect's components,
    ``links``: what :func:`inspect_links` added there; ``rosais_state``: the RoSais tab's
    last result, for the layer's score)."""
    door = Door("Expert page", "model", gpu=60)  # the first page of a model computes
    ctx = [ui.state, rosais_state, shared.browser]
    to_tab = ui.page_outputs() + [shared.tabs]
    return [
        Event(ui.open_btn.click, open_page, [ui.query] + ctx, ui.page_outputs(), door),
        Event(ui.query.submit, open_page, [ui.query] + ctx, ui.page_outputs(), door),
        Event(ui.bridge.select, on_bar, ctx, ui.page_outputs(), door),
        Event(ui.export_btn.click, export, [ui.state], [ui.files],
              Door("Export expert statistics", "model", gpu=60)),
        Event(inspect_ui.state.change, cell_pages, [inspect_ui.view, inspect_ui.state],
              [links.pages], Door("Cell experts")),
        Event(links.pages.input, from_cell, [links.pages, inspect_ui.state] + ctx, to_tab,
              door),
        Event(links.usage_bridge.select, from_usage, ctx, to_tab, door),
    ]
