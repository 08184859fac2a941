"""The "RoSais" tab: router safety importance per MoE layer, then "mask the top-L routers
and regenerate" beside the baseline answer."""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from explorer.app.common import (
    MODEL_SLOT,
    UI,
    answer_verdict,
    fail,
    gpu,
    moe_layer_count,
    user_errors,
    whole_number,
)
from explorer.app.format import verdicts_html
from explorer.viz import figures as plots

if TYPE_CHECKING:
    from types import SimpleNamespace

    from explorer.app.context import Explorer


def rosais_summary(res) -> str:
    """One markdown line: baseline log-prob, top layers, ranking, cost."""
    ranked = sorted(zip(res.moe_layers, res.scores), key=lambda q: -q[1])
    return (f"Baseline affirmative log-prob **{res.baseline_logprob:.3f}**: log P(the answer's "
            "first token is an affirmative one; the demo tokenizer's affirmative first "
            f"tokens are {', '.join(map(repr, res.affirmative_tokens))}) · top layers "
            f"**{res.top_layers}** · ranking: "
            + ", ".join(f"L{lay} {s:+.2f}" for lay, s in ranked)
            + f" · {res.forward_passes} forward passes in {res.seconds:.1f} s")


def layout(p: SimpleNamespace) -> None:
    with gr.Tab("RoSais", id="rosais"):
        gr.Markdown("Router Safety importance score: for each MoE layer, random masks "
                    "over its router; the score is the largest increase of the "
                    "affirmative first-token log-prob. High = masking this router "
                    "pushes the model towards complying.")
        with gr.Row():
            p.r_samples = gr.Slider(1, 256, value=32, step=1, label="random masks per layer",
                                    elem_id="rosais-samples")
            n_moe = moe_layer_count(p.ctx)
            p.r_top = gr.Slider(0, n_moe, value=min(2, n_moe), step=1,
                                label="top-L layers to mask", elem_id="rosais-top")
            p.r_ratio = gr.Slider(0.05, 0.95, value=0.5, step=0.05, label="mask ratio")
            p.r_seed = gr.Number(0, precision=0, label="seed")
            p.r_btn = gr.Button("Run RoSais", variant="primary", elem_id="rosais-btn")
        p.r_plot = gr.Plot(plots.rosais_bars(None), label="RoSais per layer",
                           elem_id="rosais-plot")
        p.r_md = gr.Markdown("")
        p.r_mask_btn = gr.Button("Mask the top-L routers and regenerate",
                                 elem_id="rosais-mask-btn")
        with gr.Row():
            p.r_base = gr.Textbox(label="Baseline answer", lines=4, interactive=False,
                                  elem_classes="sse-answer")
            p.r_masked = gr.Textbox(label="Answer with the top-L routers masked", lines=4,
                                    interactive=False, elem_id="rosais-masked",
                                    elem_classes="sse-answer")
        p.r_verdict = gr.HTML("", elem_id="rosais-verdicts")


def wire(ctx: Explorer, p: SimpleNamespace) -> None:

    @gpu(180)
    def run_rosais(prompt_v, system_v, samples, top, ratio, seed, max_new_v,
                   progress=gr.Progress(), request: gr.Request = None):
        with user_errors("RoSais"):
            from explorer.methods.rosais import rosais
            moe = ctx.require()
            sp = ctx.system(system_v)
            ctx.check_prompt(prompt_v, sp)
            top = min(whole_number(top, "top-L", 0), len(moe.moe_layers))
            samples = whole_number(samples, "samples", 1)
            ctx.check_rosais(samples)
            n = ctx.new_tokens(max_new_v)
            ctx.admit(request)
            progress(0, desc="scoring routers")
            res = rosais(moe, prompt_v, samples=samples, top=top,
                         mask_ratio=float(ratio), seed=whole_number(seed, "seed"), max_new_tokens=n,
                         on_progress=lambda d, t: progress(d / max(t, 1),
                                                           desc=f"layer {d}/{t}"), system=sp)
            d = res.to_dict()
            texts = (ctx.shown(prompt_v, res.baseline_completion),
                     ctx.shown(prompt_v, res.completion))
            return (d, plots.rosais_bars(d), rosais_summary(res), *texts,
                    masked_panel(prompt_v, res.baseline_completion, res.completion,
                                 res.route_for(len(res.top_layers)), texts, sp))

    def masked_panel(prompt_v, base_text, masked_text, route, texts, sp=None):
        return verdicts_html(answer_verdict(ctx.moe, prompt_v, base_text, system=sp),
                             answer_verdict(ctx.moe, prompt_v, masked_text, route, system=sp),
                             labels=("Baseline", "Masked"), texts=texts,
                             note=f"masked layers {route.layers}")

    p.r_btn.click(run_rosais, [p.prompt, p.system, p.r_samples, p.r_top, p.r_ratio, p.r_seed,
                               p.max_new],
                  [p.st_rosais, p.r_plot, p.r_md, p.r_base, p.r_masked, p.r_verdict],
                  **MODEL_SLOT, **UI)

    @gpu(60)
    def rosais_mask(prompt_v, system_v, top, max_new_v, res, request: gr.Request = None):
        with user_errors("Masked generation"):
            from explorer.methods.rosais import RosaisResult
            ctx.require()
            if not res:
                fail("Run RoSais first.")
            sp = ctx.system(system_v)
            if res.get("prompt") != prompt_v or (res.get("info") or {}).get("system") != sp:
                fail("The prompt or the system prompt changed since RoSais ran: run RoSais "
                     "again.")
            ctx.check_prompt(prompt_v, sp)
            result = RosaisResult.from_dict(res)
            route = result.route_for(min(whole_number(top, "top-L", 0), len(result.moe_layers)))
            n = ctx.new_tokens(max_new_v)
            ctx.admit(request)
            base_text = ""
            for base_text, base in ctx.stream(prompt_v, n, system=sp):
                yield gr.skip(), base_text, gr.skip()
            for text, tr in ctx.stream(prompt_v, n, route, sp):
                yield text, gr.skip(), gr.skip()
            yield text, base_text, masked_panel(prompt_v, base.completion, tr.completion, route,
                                                (base_text, text), sp)

    p.r_mask_btn.click(rosais_mask, [p.prompt, p.system, p.r_top, p.max_new, p.st_rosais],
                       [p.r_masked, p.r_base, p.r_verdict], **MODEL_SLOT, **UI)
