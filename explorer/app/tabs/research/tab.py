"""The app's Research tab (issue #7): views beyond the paper, on top of the library.

:func:`research_tab` adds a ``Research`` tab with five sub-tabs:

- **Utility cost**: what a route (library ids or route JSON) or RoSais top-L masks do to
  benign requests (refusal rate, log-likelihood per token of the model's own answers),
  next to their ASR on harmful requests (:func:`explorer.research.utility.utility_cost`).
- **Transfer**: routes x prompts heatmap and a candidate universal route's ASR on held-out
  prompts (:mod:`explorer.research.transfer`).
- **Minimal route**: before / after edit counts and the kept edits (:mod:`explorer.research.minimal`).
- **Defense**: ASR of no attack / RoSais masking / a fresh F-SOUR search without and with a
  derived route-disabling defense, and its utility cost (:mod:`explorer.research.defense`).
- **RoSais uncertainty**: per-layer spread of the random-mask scores and ASR against the
  number of masked routers (:func:`explorer.research.transfer.rosais_curve`).

This module holds the layout and the event table. Each view is a module-level function
``*_view(visit, ...)`` (a :class:`~explorer.app.gate.Visit`) in :mod:`explorer.app.tabs.research.views`
(utility, transfer, minimal), :mod:`explorer.app.tabs.research.defense` and
:mod:`explorer.app.tabs.research.curve`, re-exported here; their shared input checks are in
:mod:`explorer.app.tabs.research.common`. Defaults are small (a few prompts, few masks) so each
view finishes in well under a minute on the demo model on a CPU; long calls report
progress while they run.
"""

from __future__ import annotations

import html

import gradio as gr
import pandas as pd

from explorer.app.gate import Door, Event, Visit
from explorer.app.library_access import Library, library
from explorer.app.tabs.research.common import (
    ROSAIS_SOURCE,
    ROUTE_SOURCE,
    attack_choices,
    collect_routes,
    judge_choices,
    parse_prompts,
    parse_route_json,
    verdict_word,
)
from explorer.app.tabs.research.curve import (
    CURVE_COLUMNS,
    merge_curves,
    redraw_distribution,
    rosais_uncertainty_view,
)
from explorer.app.tabs.research.defense import DEFENSE_COLUMNS, defense_view
from explorer.app.tabs.research.views import (
    TRANSFER_COLUMNS,
    UTILITY_COLUMNS,
    minimal_view,
    transfer_view,
    utility_view,
)
from explorer.core.defaults import DEFAULT_TARGET
from explorer.core.layout import MAPPINGS
from explorer.core.prompt_sets import BENIGN_PROMPTS, HARMFUL_PROMPTS
from explorer.defenses import get_defense, list_defenses
from explorer.viz import research as pr

__all__ = ["collect_routes", "defense_view", "merge_curves", "minimal_view", "parse_prompts",
           "parse_route_json", "research_tab", "rosais_uncertainty_view", "transfer_view",
           "utility_view", "ROSAIS_SOURCE", "ROUTE_SOURCE", "UTILITY_COLUMNS",
           "library_md", "redraw_distribution"]


def library_md(lib: Library, limit: int = 12) -> str:
    """A short list of the newest library routes ``lib``'s caller may see (ids to type into
    the views)."""
    try:
        items = lib.list(limit=limit)
    except Exception as exc:  # noqa: BLE001 - a broken store must not break the tab
        return f"Route library unavailable: {html.escape(str(exc).splitlines()[0][:200])}"
    if not items:
        return ("The route library is empty: find routes in the **Search** tab (they are "
                "saved there), or paste route JSON.")
    rows = [f"`#{r.id}` {html.escape(r.prompt[:50])} · {r.n_edits} edits · "
            f"{verdict_word(r.success, '?')} · {r.source}" for r in items]
    return "**Newest library routes:**  \n" + "  \n".join(rows)


def _event(btn: gr.Button, view, duration: int, inputs: list, outputs: list) -> Event:
    """``btn`` runs ``view`` as model work (in the model slot, a ZeroGPU window of
    ``duration`` seconds where there is one)."""
    name = view.__name__.removesuffix("_view").replace("_", " ").capitalize()
    return Event(btn.click, view, inputs, outputs, Door(name, "model", gpu=duration))


def _route_inputs(prefix: str, visible: bool = True):
    with gr.Row():
        ids = gr.Textbox(label="route library ids (comma-separated)", placeholder="e.g. 1, 2",
                         scale=1, elem_id=f"{prefix}-ids", visible=visible)
        js = gr.Textbox(label="or route JSON (a route, a list, JSON lines, or F-SOUR / RoSais "
                              "--json output)", lines=3, max_lines=12, scale=2,
                        elem_id=f"{prefix}-json", visible=visible)
    return ids, js


def on_utility_source(visit: Visit, source):
    """Utility cost's inputs for the chosen route source: RoSais' prompt and settings, or
    the route ids and JSON (the other source's inputs hidden)."""
    rosais = source != ROUTE_SOURCE
    return (*(gr.update(visible=rosais) for _ in range(4)),
            *(gr.update(visible=not rosais) for _ in range(2)))


def _table(columns: list[str], **kw) -> gr.Dataframe:
    return gr.Dataframe(pd.DataFrame(columns=columns), interactive=False,
                        elem_classes="sse-table", **kw)


def _utility_tab(n_moe: int, max_new, judge, harm4: str, who: list) -> list[Event]:
    with gr.Tab("Utility cost", id="research-utility"):
        gr.Markdown("How much a route hurts normal use: the benign refusal rate and the "
                    "log-likelihood per token of the model's own benign answers, with and "
                    "without the route, next to the route's ASR.")
        source = gr.Radio([ROSAIS_SOURCE, ROUTE_SOURCE], value=ROSAIS_SOURCE,
                          label="route source", elem_id="utility-source")
        with gr.Row():
            prompt = gr.Textbox(HARMFUL_PROMPTS[0], label="RoSais: harmful prompt to score "
                                "routers on", scale=3, elem_id="utility-rosais-prompt")
            top = gr.Slider(1, n_moe, value=min(2, n_moe),
                            step=1, label="top-L routers masked")
            sweep = gr.Checkbox(False, label="every L from 1 to L")
            samples = gr.Slider(1, 128, value=16, step=1, label="masks per router")
        ids, js = _route_inputs("utility", visible=False)  # the source starts as RoSais
        with gr.Row():
            benign = gr.Textbox("\n".join(BENIGN_PROMPTS[:4]), lines=4, label="benign prompts")
            harm = gr.Textbox(harm4, lines=4, label="harmful prompts for the ASR (empty: skip)")
        btn = gr.Button("Measure utility cost", variant="primary", elem_id="utility-btn")
        plot = gr.Plot(pr.utility_asr_figure(None), label="ASR vs utility cost")
        md = gr.Markdown("")
        table = _table(UTILITY_COLUMNS, wrap=True, elem_id="utility-table")
    return [_event(btn, utility_view, 120, [source, prompt, top, sweep, samples, ids, js, benign,
                                        harm, max_new, judge] + who, [plot, table, md]),
            Event(source.change, on_utility_source, [source],
                  [prompt, top, sweep, samples, ids, js], Door("Utility source"))]


def _transfer_tab(n_moe: int, max_new, judge, harm4: str, who: list) -> list[Event]:
    with gr.Tab("Transfer", id="research-transfer"):
        gr.Markdown("Replay routes found on one prompt on other prompts (positions moved by "
                    "the mapping); a route's own prompt is outlined. A candidate universal "
                    "route keeps the cells that recur across routes and is measured on "
                    "held-out prompts.")
        ids, js = _route_inputs("transfer")
        with gr.Row():
            prompts = gr.Textbox(harm4, lines=4, label="prompts to replay on", scale=2)
            with gr.Column(scale=1):
                own = gr.Checkbox(True, label="also the routes' own prompts")
                mapping = gr.Radio(list(MAPPINGS), value="end",
                                   label="position mapping")
                target = gr.Textbox(DEFAULT_TARGET, label="target answer prefix")
        with gr.Row():
            umin = gr.Slider(0, 10, value=2, step=1, label="universal route: cells in at "
                             "least this many routes (0 = off)")
            held = gr.Textbox("", lines=2, label="held-out prompts (empty: the prompts that "
                              "are no route's own)", scale=2)
        btn = gr.Button("Run transfer", variant="primary", elem_id="transfer-btn")
        plot = gr.Plot(pr.transfer_figure(None), label="routes x prompts")
        md = gr.Markdown("")
        table = _table(TRANSFER_COLUMNS, wrap=True)
        with gr.Accordion("Universal route JSON", open=False):
            univ = gr.Code("", language="json")
    return [_event(btn, transfer_view, 120, [ids, js, prompts, own, mapping, umin, held, max_new,
                                         judge, target] + who, [plot, table, md, univ])]


def _minimal_tab(n_moe: int, max_new, judge, who: list) -> list[Event]:
    with gr.Tab("Minimal route", id="research-minimal"):
        gr.Markdown("Greedy backward elimination: drop edits while the route still reaches "
                    "the target and the judge still calls the answer jailbroken. Cost grows "
                    "with the size of the route (on the demo model: seconds for 40 edits, up "
                    "to a minute or so for 100).")
        ids, js = _route_inputs("minimal")
        with gr.Row():
            prompt = gr.Textbox("", label="prompt (empty: the route's own)", scale=2)
            target = gr.Textbox("", label="target (empty: the route's own, else "
                                f"{DEFAULT_TARGET!r})")
            thr = gr.Slider(0.01, 0.99, value=0.8, step=0.01, label="threshold P(target)")
            checks = gr.Slider(1, 10, value=2, step=1, label="generations tried per round")
        btn = gr.Button("Minimise", variant="primary", elem_id="minimal-btn")
        md = gr.Markdown("")
        with gr.Row():
            cells = gr.Plot(pr.route_cells_figure(None, None, []), label="kept edits", scale=3)
            nec = gr.Plot(pr.minimal_figure(None), label="what each kept edit is worth",
                          scale=2)
        with gr.Accordion("Minimal route JSON", open=False):
            route = gr.Code("", language="json")
    return [_event(btn, minimal_view, 240, [ids, js, prompt, thr, checks, max_new, judge, target]
                   + who, [cells, nec, md, route])]


def _defense_tab(n_moe: int, max_new, judge, who: list) -> list[Event]:
    with gr.Tab("Defense", id="research-defense"):
        gr.Markdown("Defenses against unsafe routes, each measured by attacking held-out "
                    "prompts without and with it. " + " ".join(
                        f"**{d}**: {get_defense(d).summary}." for d in list_defenses("defend"))
                    + " Derived defenses read RoSais and F-SOUR on the evidence prompts and "
                    "library routes; the hardened checkpoint is built by `python -m explorer "
                    "harden` (bundled for the demo model).")
        with gr.Row():
            derive = gr.Textbox("\n".join(HARMFUL_PROMPTS[:2]), lines=3,
                                label="evidence prompts (RoSais + F-SOUR)")
            prompts = gr.Textbox("\n".join(HARMFUL_PROMPTS[2:4]), lines=3,
                                 label="held-out harmful prompts to attack")
            benign = gr.Textbox("\n".join(BENIGN_PROMPTS[:3]), lines=3,
                                label="benign prompts (utility cost; empty: skip)")
        with gr.Row():
            ids = gr.Textbox("", label="evidence: library route ids")
            js = gr.Textbox("", lines=2, label="or a defense route JSON to evaluate (mask "
                            "edits and/or info.protect_layers)", scale=2)
        with gr.Row():
            attacks = gr.CheckboxGroup(attack_choices(), value=["none", "rosais", "fsour"],
                                       label="attacks", scale=2)
            samples = gr.Slider(1, 64, value=8, step=1, label="RoSais masks per router")
            top = gr.Slider(1, n_moe, value=min(2, n_moe),
                            step=1, label="RoSais top-L")
            cand = gr.Slider(1, 32, value=4, step=1, label="F-SOUR candidates")
            iters = gr.Slider(1, 5, value=1, step=1, label="F-SOUR restarts")
            mode = gr.Radio(list_defenses("defend"), value="protect",
                            label="defense mode", elem_id="defense-mode")
        btn = gr.Button("Derive and evaluate", variant="primary", elem_id="defense-btn")
        plot = gr.Plot(pr.defense_overview_figure(None), label="ASR and cost")
        md = gr.Markdown("")
        table = _table(DEFENSE_COLUMNS)
        with gr.Accordion("Defense route JSON", open=False):
            route = gr.Code("", language="json")
    return [_event(btn, defense_view, 240, [derive, ids, js, prompts, benign, attacks, samples,
                                        top, cand, iters, max_new, judge, mode] + who,
          [plot, table, md, route])]


def _curve_tab(n_moe: int, max_new, judge, harm4: str) -> list[Event]:
    with gr.Tab("RoSais uncertainty", id="research-rosais"):
        gr.Markdown("RoSais keeps only the best of S random masks per router: the spread "
                    "shows how much that best depends on luck. The curve masks the top 1..L "
                    "routers of each prompt's ranking.")
        with gr.Row():
            prompts = gr.Textbox(harm4, lines=4, label="harmful prompts", scale=2,
                                 elem_id="rosais-curve-prompts")
            with gr.Column(scale=1):
                top = gr.Slider(1, n_moe, value=min(4, n_moe),
                                step=1, label="max routers masked",
                                elem_id="rosais-curve-top")
                samples = gr.Slider(1, 128, value=16, step=1, label="masks per router",
                                    elem_id="rosais-curve-samples")
                ratio = gr.Slider(0.05, 0.95, value=0.5, step=0.05, label="mask ratio")
                seed = gr.Number(0, precision=0, label="seed")
                kind = gr.Radio(["box", "violin"], value="box", label="plot")
        btn = gr.Button("Run RoSais on the prompts", variant="primary",
                        elem_id="rosais-curve-btn")
        md = gr.Markdown("", elem_id="rosais-curve-md")
        with gr.Row():
            dist = gr.Plot(pr.rosais_distribution_figure(None), label="mask scores per layer",
                           elem_id="rosais-curve-dist")
            curve = gr.Plot(pr.asr_curve_figure(None), label="ASR vs routers masked",
                            elem_id="rosais-curve-asr")
        table = _table(CURVE_COLUMNS)
        state = gr.State(None)
    return [_event(btn, rosais_uncertainty_view, 120, [prompts, top, samples, seed, ratio, kind,
                                                   max_new, judge],
          [dist, curve, table, md, state]),
            Event(kind.change, on_redraw_distribution, [state, kind], [dist], Door("Redraw"))]


def on_redraw_distribution(visit: Visit, curve, kind):
    """The distribution figure for another plot kind, without recomputing."""
    return redraw_distribution(curve, kind)


def research_tab(app, n_moe: int, browser=None) -> list[Event]:
    """Add the ``Research`` tab (inside an open ``gr.Blocks`` / ``gr.Tabs``); its events.
    ``n_moe``: the model's MoE layers (the sliders' range); ``browser``: the page's
    BrowserState (whose library routes the views may use; hosted mode needs it)."""
    who = [] if browser is None else [browser]
    judges = judge_choices(app)
    harm4 = "\n".join(HARMFUL_PROMPTS[:4])
    with gr.Tab("Research", id="research") as tab:
        gr.Markdown("Beyond the paper: what routes cost on benign requests, whether they "
                    "transfer, how small they can be, whether disabling the experts they use "
                    "defends the model, and how noisy RoSais is. Prompts: one per line. "
                    "Defaults are small so each view finishes in well under a minute on the "
                    "demo model.")
        with gr.Row():
            judge = gr.Dropdown(judges, value="keyword", label="judge", scale=1,
                                elem_id="research-judge")
            hi = min(128, int(app.policy.max_new_tokens)) if app.policy.enabled else 128
            max_new = gr.Slider(min(4, hi), hi, value=min(24, hi), step=1,
                                label="max new tokens (greedy answers judged)", scale=2,
                                elem_id="research-max-new")
        with gr.Accordion("Route library", open=False):
            # hosted, the list is filled for each visitor (when the tab is selected)
            lib = gr.Markdown("" if app.policy.enabled else library_md(Library(app.store)))
            lib_btn = gr.Button("Refresh", size="sm")
        with gr.Tabs():
            events = (_utility_tab(n_moe, max_new, judge, harm4, who)
                      + _transfer_tab(n_moe, max_new, judge, harm4, who)
                      + _minimal_tab(n_moe, max_new, judge, who)
                      + _defense_tab(n_moe, max_new, judge, who)
                      + _curve_tab(n_moe, max_new, judge, harm4))
    return events + [Event(trigger, refresh_library, who, [lib], Door("Research library"))
                     for trigger in (lib_btn.click, tab.select)]


def refresh_library(visit: Visit, browser=None):
    """The newest library routes the caller may see, again."""
    return library_md(library(visit, browser))
