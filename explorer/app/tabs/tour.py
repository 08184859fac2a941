"""The "Tour" tab: numbered steps a teacher clicks through to show a refusal flipping on the
demo model (the tour and its route ship in ``assets/tour``; see :mod:`explorer.demo.tour`).
The views are module-level functions of a :class:`~explorer.app.gate.Visit`; a visitor's
traces and the numbers its steps computed live in a :class:`~explorer.app.state.TourState`.

Every number the tour's text states is computed: the texts hold placeholders
(:data:`explorer.demo.tour.PLACEHOLDERS`) filled when the tab is built (the cheap ones: the
prompt's cells and the shipped route's size, on the loaded demo model) and again by each
step's view with what it computed (RoSais, the changed cells). The tour answers with its
own length (``max_new_tokens`` of ``tour.json``) and never changes the app's slider."""

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
from explorer.demo.tour import (
    Tour,
    TourError,
    baseline,
    cell_facts,
    changed_cells,
    compare_facts,
    fill,
    load_tour,
    replayed,
    rosais_facts,
    route_facts,
)
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
    texts: dict = field(default_factory=dict)
    state: Any = None


def _step_md(step, facts: dict) -> str:
    """A step's heading and text, its placeholders filled from ``facts``."""
    return f"#### {step.number}. {fill(step.title, facts)}\n{fill(step.text, facts)}"


def static_facts(moe, tour: Tour) -> dict:
    """The numbers known without running the model: the prompt's cells and the shipped
    route's size on ``moe`` when it is the demo model (else only the tour's own)."""
    facts = {"steps": len(tour.steps), "tour_tokens": tour.max_new_tokens}
    if moe is None or not is_demo_model(moe):
        return facts
    try:
        cells = cell_facts(moe, tour)
        return {**facts, **cells, **route_facts(tour.route(), cells["prompt_cells"])}
    except Exception:  # noqa: BLE001 - a broken model or route: its step will say why
        return facts


def _press(tour: Tour, action: str) -> str:
    """The placeholder of a step's empty plot: which button fills it."""
    step = next((s for s in tour.steps if s.action == action and s.button), None)
    return f"Press “{step.button}” to fill this" if step else "This step fills this"


def layout(moe=None) -> TourUI:
    """The tab (inside an open ``gr.Tabs``); ``moe``: the loaded model (its numbers fill the
    tour's text where they need no forward pass)."""
    tour, error = shipped_tour()
    ui = TourUI(tour)
    with gr.Tab("Tour", id="tour", elem_id="tour-tab"):
        if tour is None:
            gr.Markdown(f"The guided tour is unavailable: {html.escape(error or '')}")
            return ui
        facts = static_facts(moe, tour)
        ui.state = gr.State(TourState(facts=dict(facts)))
        gr.Markdown(f"### {fill(tour.title, facts)}\n{fill(tour.intro, facts)}\n\n**The prompt:** *{tour.prompt}* "
                    "(the tour always uses this prompt; it is also in the prompt box above)",
                    elem_id="tour-intro")
        for step in tour.steps:
            with gr.Group(elem_classes="sse-tour-step"):
                ui.texts[step.action] = gr.Markdown(_step_md(step, facts),
                                                    elem_id=f"tour-step-{step.number}")
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


def _facts(visit: Visit, tour: Tour, st: TourState | None) -> dict:
    """The visitor's facts with the cheap ones (the prompt's cells, the route's size)
    computed on the loaded model."""
    facts = dict((st.facts if st is not None else None) or {})
    facts.update(cell_facts(visit.moe, tour))
    facts.update(route_facts(tour.route(), facts["prompt_cells"]))
    return facts


def _text(tour: Tour, action: str, facts: dict) -> str:
    return _step_md(tour.step(action), facts)


def _traces(visit: Visit, tour: Tour, n: int, st: TourState | None) -> TourState:
    """The tour's baseline and re-routed traces: the visitor's when they are of this
    length, else computed."""
    st = st or TourState()
    base, alt = st.base, st.alt
    if base is None or base.info.get("max_new_tokens") != n:
        base = baseline(visit.moe, tour, n)
    if alt is None or alt.info.get("max_new_tokens") != n:
        alt = replayed(visit.moe, tour, n)
    return TourState(base, alt, _facts(visit, tour, st))


def step_generate(visit: Visit, st: TourState):
    """Step 1: the baseline answer and its routing: (state, answer, heatmap, badges, the
    step's text)."""
    tour, n = _ready(visit)
    tr = baseline(visit.moe, tour, n)
    facts = _facts(visit, tour, st)
    return (TourState(tr, (st or TourState()).alt, facts), tr.completion,
            plots.heatmap(tr, "expert", title="Baseline routing"),
            _badge(visit, tour, tr) + f" · {tr.prompt_tokens} prompt tokens, "
            f"{len(tr.moe_layers)} MoE layers", _text(tour, "generate", facts))


def _one_line(text: str) -> str:
    """An answer inside a markdown line: escaped, its line breaks shown as " / "."""
    return html.escape(" / ".join(x.strip() for x in text.splitlines() if x.strip()))


def step_rosais(visit: Visit, st: TourState):
    """Step 2: RoSais per router, then the top 1, 2, ... routers masked until the answer
    flips: (state, bars, summary with both answers, the step's text)."""
    from explorer.app.tabs.rosais import rosais_summary
    from explorer.methods.rosais import ranking, rosais
    tour, n = _ready(visit)
    moe = visit.moe
    top = max(1, min(tour.rosais_top, len(moe.moe_layers)))
    visit.budget(tour.rosais_samples * len(moe.moe_layers) + top, "the tour's RoSais step")
    res = rosais(moe, tour.prompt, samples=tour.rosais_samples, top=top, seed=0,
                 max_new_tokens=n, curve=True)
    rf = rosais_facts(res)
    st = st or TourState()
    facts = dict(_facts(visit, tour, st), **rf)
    L = rf["rosais_top"]
    res.top_layers = ranking(res)[:L] if L else []  # the bars mark the routers masked
    shown = res.by_top[L - 1] if L else res.by_top[-1]
    masked = ", ".join(f"L{x}" for x in ranking(res)[:shown["top"]])
    md = (rosais_summary(res) + "\n\n**Baseline answer:** "
          + _one_line(visit.shown(tour.prompt, res.baseline_completion))
          + f"\n\n**With the top {shown['top']} routers masked ({masked}):** "
          + _one_line(visit.shown(tour.prompt, shown["completion"]))
          + f" ({'jailbroken' if shown['jailbroken'] else 'not jailbroken'}, keyword judge)")
    return (TourState(st.base, st.alt, facts), plots.rosais_bars(res.to_dict()), md,
            _text(tour, "rosais", facts))


def step_replay(visit: Visit, st: TourState):
    """Step 3: the answer with the shipped (minimal) route: (state, answer, heatmap,
    badges, the step's text)."""
    tour, n = _ready(visit)
    tr = replayed(visit.moe, tour, n)
    edits = tr.route.to_dict()["edits"] if tr.route is not None else []
    facts = _facts(visit, tour, st)
    return (TourState((st or TourState()).base, tr, facts), tr.completion,
            plots.heatmap(tr, "expert", edits=edits, title="Routing with the route"),
            _badge(visit, tour, tr) + f" · {len(edits)} forced cells of "
            f"{facts['prompt_cells']} prompt cells ({html.escape(tour.route_file)})",
            _text(tour, "replay", facts))


def step_compare(visit: Visit, st: TourState):
    """Step 4: where the routing changed: (state, changed-cells heatmap, summary, the
    step's text)."""
    tour, n = _ready(visit)
    st = _traces(visit, tour, n, st)
    base, alt = st.base, st.alt
    cf = compare_facts(base, alt)
    st.facts.update(cf)
    _, _, first = changed_cells(base, alt)
    forced = len(alt.route.edits) if alt.route is not None else 0
    md = (f"**{cf['changed_cells']}** of {cf['compared_cells']} cells route differently "
          f"({cf['changed_prompt_cells']} in the prompt; {forced} forced by the route; the "
          "rest follow, because every later layer and token sees different inputs)")
    if first is not None:
        md += f"; the first change is at token {first} (``{alt.tokens[first]!r}``)"
    md += "."
    return (st, plots.heatmap(alt, "changed", baseline=base, edits=alt.route.to_dict()["edits"],
                              title="Changed vs the baseline"), md,
            _text(tour, "compare", st.facts))


def step_explain(visit: Visit, st: TourState, max_new_v=None):
    """Step 5: the tour's prompt, route and both answers in Inspect; the app's max new
    tokens (``max_new_v``) is left as it is, and the note says both lengths. Outputs: the
    prompt, Inspect's state and edits list, the tabs, this step's note, then Inspect's
    answers, heatmap, usage, trace radio, colour radio and badges, then the step's text."""
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
    yours = ""
    if max_new_v is not None:
        from explorer.app.inputs import whole_number
        mine = whole_number(max_new_v, "max new tokens", 0)
        if mine != n:
            yours = (f" Your max new tokens stays at {mine}: Re-run there answers with "
                     f"{mine} new tokens.")
    return (tour.prompt, inspect, edits_box(edits, base.tokens), gr.Tabs(selected="inspect"),
            (f"Loaded into **Inspect & re-route**: {len(edits)} pending edits, the baseline "
             f"and the re-routed answer ({n} new tokens each, the tour's length).{yours}"),
            *shown, heat, plots.usage(alt), "re-routed", "changed", panel,
            _text(tour, "explain", st.facts))


def events(ui: TourUI, shared: Shared, inspect) -> list[Event]:
    """The tab's events; ``inspect``: the Inspect tab's components (step 5 fills them).
    No step writes the app's max new tokens."""
    if ui.tour is None:
        return []
    b, info, text = ui.buttons, ui.info, ui.texts
    out = []
    if "generate" in b:
        out.append(Event(b["generate"].click, step_generate, [ui.state],
                         [ui.state, ui.answer, ui.heat, info["generate"], text["generate"]],
                         Door("Tour", "model", gpu=60)))
    if "rosais" in b:
        out.append(Event(b["rosais"].click, step_rosais, [ui.state],
                         [ui.state, ui.rosais, info["rosais"], text["rosais"]],
                         Door("Tour", "model", gpu=120)))
    if "replay" in b:
        out.append(Event(b["replay"].click, step_replay, [ui.state],
                         [ui.state, ui.rerouted, ui.heat_alt, info["replay"], text["replay"]],
                         Door("Tour", "model", gpu=60)))
    if "compare" in b:
        out.append(Event(b["compare"].click, step_compare, [ui.state],
                         [ui.state, ui.diff, info["compare"], text["compare"]],
                         Door("Tour", "model", gpu=120)))
    if "explain" in b:
        out.append(Event(b["explain"].click, step_explain, [ui.state, shared.max_new],
                         [shared.prompt, inspect.state, inspect.edit_list, shared.tabs,
                          info["explain"], inspect.base_ans, inspect.alt_ans, inspect.heat,
                          inspect.usage, inspect.view, inspect.mode, inspect.verdict,
                          text["explain"]], Door("Tour", "model", gpu=120)))
    return out
