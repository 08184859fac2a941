"""The "Tour" tab: numbered steps a teacher clicks through to show a refusal flipping on the
demo model (the tour and its route ship in ``assets/tour``; see :mod:`explorer.demo.tour`).
The views are module-level functions of a :class:`~explorer.app.gate.Visit`; a visitor's
traces live in a :class:`~explorer.app.state.TourState`."""

from __future__ import annotations

import functools
import html
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from explorer.app.errors import fail
from explorer.app.format import edits_box, verdict_badge, verdicts_html
from explorer.app.gate import Door, Event, Visit, is_demo_model
from explorer.app.state import InspectState, Shared, TourState
from explorer.app.verdicts import answer_verdict
from explorer.demo.tour import Tour, TourError, baseline, changed_cells, load_tour, replayed
from explorer.viz import figures as plots


@functools.lru_cache(maxsize=1)
def shipped_tour() -> tuple[Tour | None, str | None]:
    """The shipped tour (read once), or None and why when it is broken: a broken tour must
    not stop the app."""
    try:
        return load_tour(), None
    except (TourError, ValueError) as exc:
        return None, str(exc).splitlines()[0]


@dataclass
class TourUI:
    """The tab's components (None when the tour is unavailable)."""

    tour: Tour | None
    buttons: dict = field(default_factory=dict)
    answer: Any = None
    heat: Any = None
    rosais: Any = None
    rerouted: Any = None
    heat_alt: Any = None
    diff: Any = None
    info: dict = field(default_factory=dict)
    state: Any = None


def _step_md(step) -> str:
    return f"#### {step.number}. {step.title}\n{step.text}"


def _press(tour: Tour, action: str) -> str:
    """The placeholder of a step's empty plot: which button fills it."""
    step = next((s for s in tour.steps if s.action == action and s.button), None)
    return f"Press “{step.button}” to fill this" if step else "This step fills this"


def layout() -> TourUI:
    """The tab (inside an open ``gr.Tabs``)."""
    tour, error = shipped_tour()
    ui = TourUI(tour)
    with gr.Tab("Tour", id="tour", elem_id="tour-tab"):
        if tour is None:
            gr.Markdown(f"The guided tour is unavailable: {html.escape(error or '')}")
            return ui
        ui.state = gr.State(TourState())
        gr.Markdown(f"### {tour.title}\n{tour.intro}\n\n**The prompt:** *{tour.prompt}* "
                    "(the tour always uses this prompt; it is also in the prompt box above)",
                    elem_id="tour-intro")
        for step in tour.steps:
            with gr.Group(elem_classes="sse-tour-step"):
                gr.Markdown(_step_md(step), elem_id=f"tour-step-{step.number}")
                if step.button:
                    ui.buttons[step.action] = gr.Button(
                        step.button, size="lg", variant="primary", elem_classes="sse-tour-btn",
                        elem_id=f"tour-{step.action}-btn")
                if step.action == "generate":
                    with gr.Row():
                        ui.answer = gr.Textbox(label="The demo model's answer", lines=3,
                                               interactive=False, elem_id="tour-baseline",
                                               elem_classes="sse-answer", scale=1)
                        ui.heat = gr.Plot(plots.heatmap(None, empty=_press(tour, "generate")),
                                          label="Routing heatmap", elem_id="tour-heatmap",
                                          scale=2)
                elif step.action == "rosais":
                    ui.rosais = gr.Plot(plots.rosais_bars(None, empty=_press(tour, "rosais")),
                                        label="RoSais per layer", elem_id="tour-rosais")
                elif step.action == "replay":
                    with gr.Row():
                        ui.rerouted = gr.Textbox(label="Answer with the saved route", lines=3,
                                                 interactive=False, elem_id="tour-rerouted",
                                                 elem_classes="sse-answer", scale=1)
                        ui.heat_alt = gr.Plot(plots.heatmap(None, empty=_press(tour, "replay")),
                                              label="Re-routed (stars: forced cells)",
                                              elem_id="tour-heatmap-alt", scale=2)
                elif step.action == "compare":
                    ui.diff = gr.Plot(plots.diff_heatmap(None, None,
                                                         empty=_press(tour, "compare")),
                                      label="changed cells", elem_id="tour-diff")
                ui.info[step.action] = gr.Markdown("", elem_id=f"tour-info-{step.action}")
    return ui


# -- views ------------------------------------------------------------------------------------
def _ready(visit: Visit) -> tuple[Tour, int]:
    """The tour and its answer length (the hosted cap applied), on the demo model only."""
    tour, error = shipped_tour()
    if tour is None:
        fail(f"The guided tour is unavailable: {error}")
    moe = visit.moe
    if not is_demo_model(moe):
        fail(f"The tour runs on the demo model; this app has `{moe.name}` loaded. Load the "
             "demo model in the Model tab (leave the name blank).")
    n = tour.max_new_tokens
    return tour, (min(n, visit.policy.max_new_tokens) if visit.policy.enabled else n)


def _badge(visit: Visit, tour: Tour, tr) -> str:
    """A step's badges (keyword verdict, log P(target)) for trace ``tr``."""
    return verdict_badge(answer_verdict(visit.moe, tour.prompt, tr.completion, tr.route),
                         "Keyword judge:")


def _traces(visit: Visit, tour: Tour, n: int, st: TourState | None) -> TourState:
    """The tour's baseline and re-routed traces: the visitor's when they are of this
    length, else computed."""
    st = st or TourState()
    base, alt = st.base, st.alt
    if base is None or base.info.get("max_new_tokens") != n:
        base = baseline(visit.moe, tour, n)
    if alt is None or alt.info.get("max_new_tokens") != n:
        alt = replayed(visit.moe, tour, n)
    return TourState(base, alt)


def step_generate(visit: Visit, st: TourState):
    """Step 1: the baseline answer and its routing: (state, answer, heatmap, badges)."""
    tour, n = _ready(visit)
    tr = baseline(visit.moe, tour, n)
    return (TourState(tr, (st or TourState()).alt), tr.completion,
            plots.heatmap(tr, "expert", title="Baseline routing"),
            _badge(visit, tour, tr) + f" · {tr.prompt_tokens} prompt tokens, "
            f"{len(tr.moe_layers)} MoE layers")


def step_rosais(visit: Visit):
    """Step 2: RoSais per router: (bars, summary)."""
    from explorer.app.tabs.rosais import rosais_summary
    from explorer.methods.rosais import rosais
    tour, n = _ready(visit)
    moe = visit.moe
    visit.budget(tour.rosais_samples * len(moe.moe_layers), "the tour's RoSais step")
    res = rosais(moe, tour.prompt, samples=tour.rosais_samples,
                 top=min(tour.rosais_top, len(moe.moe_layers)), seed=0, max_new_tokens=n)
    return plots.rosais_bars(res.to_dict()), rosais_summary(res)


def step_replay(visit: Visit, st: TourState):
    """Step 3: the answer with the shipped route: (state, answer, heatmap, badges)."""
    tour, n = _ready(visit)
    tr = replayed(visit.moe, tour, n)
    edits = tr.route.to_dict()["edits"] if tr.route is not None else []
    return (TourState((st or TourState()).base, tr), tr.completion,
            plots.heatmap(tr, "expert", edits=edits, title="Routing with the route"),
            _badge(visit, tour, tr) + f" · {len(edits)} forced cells "
            f"({html.escape(tour.route_file)})")


def step_compare(visit: Visit, st: TourState):
    """Step 4: where the routing changed: (state, changed-cells heatmap, summary)."""
    tour, n = _ready(visit)
    st = _traces(visit, tour, n, st)
    base, alt = st.base, st.alt
    changed, total, first = changed_cells(base, alt)
    forced = len(alt.route.edits) if alt.route is not None else 0
    md = (f"**{changed}** of {total} cells route differently ({forced} forced by the "
          "route; the rest follow, because every later layer and token sees different "
          "inputs)")
    if first is not None:
        md += f"; the first change is at token {first} (``{alt.tokens[first]!r}``)"
    md += "."
    return (st, plots.heatmap(alt, "changed", baseline=base, edits=alt.route.to_dict()["edits"],
                              title="Changed vs the baseline"), md)


def step_explain(visit: Visit, st: TourState):
    """Step 5: the tour's prompt, route and both answers in Inspect. Outputs: the prompt,
    the answer length, Inspect's state and edits list, the tabs, this step's note, then
    Inspect's answers, heatmap, usage, trace radio, colour radio and badges."""
    tour, n = _ready(visit)
    st = _traces(visit, tour, n, st)
    base, alt = st.base, st.alt
    gate, moe = visit.app.gate, visit.moe
    heat = plots.heatmap(gate.shown_trace(alt), "changed", baseline=base,
                         edits=alt.route.to_dict()["edits"])
    shown = visit.shown(tour.prompt, base.completion), visit.shown(tour.prompt, alt.completion)
    badge = answer_verdict(moe, tour.prompt, base.completion)
    panel = verdicts_html(badge, answer_verdict(moe, tour.prompt, alt.completion, alt.route),
                          texts=shown)
    inspect = InspectState(base=base, base_badge=badge, alt=alt, route=alt.route.copy())
    edits = inspect.edit_dicts()
    return (tour.prompt, n, inspect, edits_box(edits, base.tokens), gr.Tabs(selected="inspect"),
            (f"Loaded into **Inspect & re-route**: {len(edits)} pending edits, the baseline "
             "and the re-routed answer."),
            *shown, heat, plots.usage(alt), "re-routed", "changed", panel)


def events(ui: TourUI, shared: Shared, inspect) -> list[Event]:
    """The tab's events; ``inspect``: the Inspect tab's components (step 5 fills them)."""
    if ui.tour is None:
        return []
    b, info = ui.buttons, ui.info
    out = []
    if "generate" in b:
        out.append(Event(b["generate"].click, step_generate, [ui.state],
                         [ui.state, ui.answer, ui.heat, info["generate"]],
                         Door("Tour", "model", gpu=60)))
    if "rosais" in b:
        out.append(Event(b["rosais"].click, step_rosais, [], [ui.rosais, info["rosais"]],
                         Door("Tour", "model", gpu=120)))
    if "replay" in b:
        out.append(Event(b["replay"].click, step_replay, [ui.state],
                         [ui.state, ui.rerouted, ui.heat_alt, info["replay"]],
                         Door("Tour", "model", gpu=60)))
    if "compare" in b:
        out.append(Event(b["compare"].click, step_compare, [ui.state],
                         [ui.state, ui.diff, info["compare"]], Door("Tour", "model", gpu=120)))
    if "explain" in b:
        out.append(Event(b["explain"].click, step_explain, [ui.state],
                         [shared.prompt, shared.max_new, inspect.state, inspect.edit_list,
                          shared.tabs, info["explain"], inspect.base_ans, inspect.alt_ans,
                          inspect.heat, inspect.usage, inspect.view, inspect.mode,
                          inspect.verdict], Door("Tour", "model", gpu=120)))
    return out
