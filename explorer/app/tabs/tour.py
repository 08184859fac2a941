"""The "Tour" tab: numbered steps a teacher clicks through to show a refusal flipping on the
demo model (the tour and its route ship in ``assets/tour``; see :mod:`explorer.demo.tour`)."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import gradio as gr

from explorer.app.common import (
    MODEL_SLOT,
    UI,
    answer_verdict,
    fail,
    gpu,
    is_demo_model,
    user_errors,
)
from explorer.app.format import edits_box, verdict_badge, verdicts_html
from explorer.core.errors import ExplorerError
from explorer.demo.tour import Tour, baseline, changed_cells, load_tour, replayed
from explorer.viz import figures as plots

if TYPE_CHECKING:
    from types import SimpleNamespace

    from explorer.app.context import Explorer


def _step_md(step) -> str:
    return f"#### {step.number}. {step.title}\n{step.text}"


def load(p: SimpleNamespace) -> Tour | None:
    """Read the shipped tour into ``p.tour`` (None and ``p.tour_error`` when it is broken:
    a broken tour must not stop the app). The app opens on the tour when there is one."""
    try:
        p.tour = load_tour()
        p.tour_error = None
    except ExplorerError as exc:  # TourError, or a RouteError from the tour's route
        p.tour, p.tour_error = None, str(exc).splitlines()[0]
    return p.tour


def _press(tour: Tour, action: str) -> str:
    """The placeholder of a step's empty plot: which button fills it."""
    step = next((s for s in tour.steps if s.action == action and s.button), None)
    return f"Press “{step.button}” to fill this" if step else "This step fills this"


def layout(p: SimpleNamespace) -> None:
    if not hasattr(p, "tour"):
        load(p)
    with gr.Tab("Tour", id="tour", elem_id="tour-tab") as p.tour_tab:
        tour: Tour | None = p.tour
        if tour is None:
            gr.Markdown(f"The guided tour is unavailable: {html.escape(p.tour_error)}")
            return
        p.t_base, p.t_alt = gr.State(None), gr.State(None)
        gr.Markdown(f"### {tour.title}\n{tour.intro}\n\n**The prompt:** *{tour.prompt}* "
                    "(the tour always uses this prompt; it is also in the prompt box above)",
                    elem_id="tour-intro")
        p.t_btn = {}
        for step in tour.steps:
            with gr.Group(elem_classes="sse-tour-step"):
                gr.Markdown(_step_md(step), elem_id=f"tour-step-{step.number}")
                if step.button:
                    p.t_btn[step.action] = gr.Button(step.button, size="lg", variant="primary",
                                                     elem_classes="sse-tour-btn",
                                                     elem_id=f"tour-{step.action}-btn")
                if step.action == "generate":
                    with gr.Row():
                        p.t_answer = gr.Textbox(label="The demo model's answer", lines=3,
                                                interactive=False, elem_id="tour-baseline",
                                                elem_classes="sse-answer", scale=1)
                        p.t_heat = gr.Plot(plots.heatmap(None, empty=_press(tour, "generate")),
                                           label="Routing heatmap",
                                           elem_id="tour-heatmap", scale=2)
                elif step.action == "rosais":
                    p.t_rosais = gr.Plot(plots.rosais_bars(None, empty=_press(tour, "rosais")),
                                         label="RoSais per layer",
                                         elem_id="tour-rosais")
                elif step.action == "replay":
                    with gr.Row():
                        p.t_rerouted = gr.Textbox(label="Answer with the saved route",
                                                  lines=3, interactive=False,
                                                  elem_id="tour-rerouted",
                                                  elem_classes="sse-answer", scale=1)
                        p.t_heat_alt = gr.Plot(plots.heatmap(None,
                                                             empty=_press(tour, "replay")),
                                               label="Re-routed (stars: forced cells)",
                                               elem_id="tour-heatmap-alt", scale=2)
                elif step.action == "compare":
                    p.t_diff = gr.Plot(plots.diff_heatmap(None, None,
                                                          empty=_press(tour, "compare")),
                                       label="changed cells", elem_id="tour-diff")
                md_id = f"tour-info-{step.action}"
                setattr(p, f"t_md_{step.action}", gr.Markdown("", elem_id=md_id))


def wire(ctx: Explorer, p: SimpleNamespace) -> None:
    tour: Tour | None = p.tour
    if tour is None:
        return

    def ready(request) -> int:
        """Checks before a step runs: the demo model, the hosted limits; returns the
        number of new tokens to generate."""
        moe = ctx.require()
        if not is_demo_model(moe):
            fail(f"The tour runs on the demo model; this app has `{moe.name}` loaded. Load "
                 "the demo model in the Model tab (leave the name blank).")
        ctx.admit(request)
        n = tour.max_new_tokens
        return min(n, ctx.policy.max_new_tokens) if ctx.policy.enabled else n

    def verdict_md(tr) -> str:
        """The step's badges (keyword verdict, log P(target)) for trace ``tr``."""
        return verdict_badge(answer_verdict(ctx.moe, tour.prompt, tr.completion, tr.route),
                             "Keyword judge:")

    @gpu(60)
    def step_generate(request: gr.Request = None):
        with user_errors("Tour"):
            n = ready(request)
            tr = baseline(ctx.moe, tour, n)
            return (tr, tr.completion, plots.heatmap(tr, "expert", title="Baseline routing"),
                    verdict_md(tr) + f" · {tr.prompt_tokens} prompt tokens, "
                    f"{len(tr.moe_layers)} MoE layers")

    if "generate" in p.t_btn:
        p.t_btn["generate"].click(step_generate, [], [p.t_base, p.t_answer, p.t_heat,
                                                      p.t_md_generate], **MODEL_SLOT, **UI)

    @gpu(120)
    def step_rosais(request: gr.Request = None):
        with user_errors("Tour"):
            from explorer.app.tabs.rosais import rosais_summary
            from explorer.methods.rosais import rosais
            n = ready(request)
            ctx.check_rosais(tour.rosais_samples)
            res = rosais(ctx.moe, tour.prompt, samples=tour.rosais_samples,
                         top=min(tour.rosais_top, len(ctx.moe.moe_layers)), seed=0,
                         max_new_tokens=n)
            d = res.to_dict()
            return plots.rosais_bars(d), rosais_summary(res)

    if "rosais" in p.t_btn:
        p.t_btn["rosais"].click(step_rosais, [], [p.t_rosais, p.t_md_rosais],
                                **MODEL_SLOT, **UI)

    @gpu(60)
    def step_replay(request: gr.Request = None):
        with user_errors("Tour"):
            n = ready(request)
            tr = replayed(ctx.moe, tour, n)
            edits = tr.route.to_dict()["edits"] if tr.route is not None else []
            return (tr, tr.completion,
                    plots.heatmap(tr, "expert", edits=edits, title="Routing with the route"),
                    verdict_md(tr) + f" · {len(edits)} forced cells "
                    f"({html.escape(tour.route_file)})")

    if "replay" in p.t_btn:
        p.t_btn["replay"].click(step_replay, [], [p.t_alt, p.t_rerouted, p.t_heat_alt,
                                                  p.t_md_replay], **MODEL_SLOT, **UI)

    @gpu(120)
    def step_compare(base, alt, request: gr.Request = None):
        with user_errors("Tour"):
            n = ready(request)
            if base is None or base.info.get("max_new_tokens") != n:
                base = baseline(ctx.moe, tour, n)
            if alt is None or alt.info.get("max_new_tokens") != n:
                alt = replayed(ctx.moe, tour, n)
            changed, total, first = changed_cells(base, alt)
            forced = len(alt.route.edits) if alt.route is not None else 0
            md = (f"**{changed}** of {total} cells route differently ({forced} forced by the "
                  "route; the rest follow, because every later layer and token sees "
                  "different inputs)")
            if first is not None:
                md += f"; the first change is at token {first} (``{alt.tokens[first]!r}``)"
            md += "."
            return (base, alt, plots.heatmap(alt, "changed", baseline=base,
                                             edits=alt.route.to_dict()["edits"],
                                             title="Changed vs the baseline"), md)

    if "compare" in p.t_btn:
        p.t_btn["compare"].click(step_compare, [p.t_base, p.t_alt],
                                 [p.t_base, p.t_alt, p.t_diff, p.t_md_compare],
                                 **MODEL_SLOT, **UI)

    @gpu(120)
    def open_in_inspect(base, alt, request: gr.Request = None):
        """Step 5: the tour's prompt, route, baseline and re-routed answers, in Inspect."""
        with user_errors("Tour"):
            n = ready(request)
            if base is None or base.info.get("max_new_tokens") != n:
                base = baseline(ctx.moe, tour, n)
            if alt is None or alt.info.get("max_new_tokens") != n:
                alt = replayed(ctx.moe, tour, n)
            edits = alt.route.to_dict()["edits"]
            heat = plots.heatmap(ctx.shown_trace(alt), "changed", baseline=base, edits=edits)
            shown = ctx.shown(tour.prompt, base.completion), ctx.shown(tour.prompt, alt.completion)
            panel = verdicts_html(answer_verdict(ctx.moe, tour.prompt, base.completion),
                                  answer_verdict(ctx.moe, tour.prompt, alt.completion,
                                                 alt.route), texts=shown)
            return (tour.prompt, n, edits, edits_box(edits, base.tokens),
                    gr.Tabs(selected="inspect"),
                    (f"Loaded into **Inspect & re-route**: {len(edits)} pending edits, the "
                     "baseline and the re-routed answer."),
                    *shown, heat, plots.usage(alt), base, alt, "re-routed", "changed", panel)

    if "explain" in p.t_btn:
        p.t_btn["explain"].click(open_in_inspect, [p.t_base, p.t_alt],
                                 [p.prompt, p.max_new, p.st_edits, p.edit_list, p.tabs,
                                  p.t_md_explain, p.base_ans, p.alt_ans, p.heat, p.usage,
                                  p.st_base, p.st_alt, p.view, p.mode, p.verdict],
                                 **MODEL_SLOT, **UI)
