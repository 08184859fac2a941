"""The "RoSais" tab: router safety importance per MoE layer, then "mask the top-L routers
and regenerate" beside the baseline answer. A visitor's result stays a
:class:`~explorer.methods.rosais.RosaisResult` in its state."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from explorer.app.errors import fail
from explorer.app.format import verdicts_html
from explorer.app.gate import Door, Event, Visit
from explorer.app.inputs import whole_number
from explorer.app.state import Shared
from explorer.app.streaming import stream_shown
from explorer.app.verdicts import answer_verdict
from explorer.attacks import get_attack
from explorer.methods.rosais import ranking
from explorer.viz import figures as plots
from explorer.viz.text import BY_ROSAIS, layer_list


def affirmative_text(res) -> str:
    """The affirmative words RoSais scored, each with the first token that stands for it
    and that token's unmasked log-prob: “Sure” (token 'Sure': -7.79) · “Certainly” (first
    token 'C': -21.21)."""
    words = getattr(res, "affirmative_words", None) or []
    if not words:  # a result saved before the words were recorded
        return "first tokens " + ", ".join(map(repr, res.affirmative_tokens))
    out = []
    for w in words:
        whole = w["token"].strip() == w["word"].strip()
        tok = f"token {w['token']!r}" if whole else f"first token {w['token']!r}"
        out.append(f"“{html.escape(w['word'], False)}” ({html.escape(tok, False)}: "
                   f"{w['logprob']:.2f})")
    return " · ".join(out)


def rosais_summary(res) -> str:
    """Markdown: the baseline p (what RoSais scores, word by word), the top layers, the
    ranking and the cost."""
    ranked = sorted(zip(res.moe_layers, res.scores), key=lambda q: -q[1])
    return (f"Baseline **p = {res.baseline_logprob:.3f}**: the largest log-prob that the "
            "answer starts with an affirmative word's first token (what RoSais scores, as "
            "in the paper; each mask's score is its increase of this). Words: "
            + affirmative_text(res)
            + ".  \nThe badges below show another quantity, log P of the whole opening "
            "“Sure, here is” (teacher-forced); the two agree when the model, having said "
            "“Sure”, goes on with “, here is” almost surely."
            f"  \nTop: **{layer_list(res.top_layers, BY_ROSAIS)}** · ranking: "
            + ", ".join(f"L{lay} {s:+.2f}" for lay, s in ranked)
            + f" · {res.forward_passes} forward passes in {res.seconds:.1f} s")


@dataclass
class RosaisUI:
    """The tab's components."""

    samples: Any
    top: Any
    ratio: Any
    seed: Any
    btn: Any
    plot: Any
    md: Any
    mask_btn: Any
    base: Any
    masked: Any
    verdict: Any
    state: Any


def layout(n_moe: int) -> RosaisUI:
    """The tab (inside an open ``gr.Tabs``); ``n_moe``: the model's MoE layers (the top-L
    slider's range)."""
    from explorer.attacks.rosais import RosaisParams
    spec = RosaisParams.specs()
    with gr.Tab("RoSais", id="rosais"):
        gr.Markdown("Router Safety importance score: for each MoE layer, random masks over "
                    "its router; the score is the largest increase of the affirmative "
                    "first-token log-prob. High = masking this router pushes the model "
                    "towards complying.")
        with gr.Row():
            samples = gr.Slider(1, 256, value=RosaisParams.samples, step=1,
                                label="random masks per layer", info=spec["samples"].help,
                                elem_id="rosais-samples")
            top = gr.Slider(0, n_moe, value=min(2, n_moe), step=1,
                            label="top-L layers to mask", elem_id="rosais-top")
            ratio = gr.Slider(0.05, 0.95, value=RosaisParams.mask_ratio, step=0.05,
                              label="mask ratio")
            seed = gr.Number(0, precision=0, label="seed")
            btn = gr.Button("Run RoSais", variant="primary", elem_id="rosais-btn")
        plot = gr.Plot(plots.rosais_bars(None), label="RoSais per layer", elem_id="rosais-plot")
        md = gr.Markdown("", elem_id="rosais-summary")
        mask_btn = gr.Button("Mask the top-L routers and regenerate", elem_id="rosais-mask-btn")
        with gr.Row():
            base = gr.Textbox(label="Baseline answer", lines=4, interactive=False,
                              elem_classes="sse-answer")
            masked = gr.Textbox(label="Answer with the top-L routers masked", lines=4,
                                interactive=False, elem_id="rosais-masked",
                                elem_classes="sse-answer")
        verdict = gr.HTML("", elem_id="rosais-verdicts")
        state = gr.State(None)  # inside the tab: a component right under gr.Tabs is a tab
    return RosaisUI(samples, top, ratio, seed, btn, plot, md, mask_btn, base, masked, verdict,
                    state)


# -- views ------------------------------------------------------------------------------------
def _panel(visit: Visit, prompt, base_text, masked_text, route, texts, res):
    moe = visit.moe
    top = ranking(res)[:len(route.layers)]
    return verdicts_html(answer_verdict(moe, prompt, base_text),
                         answer_verdict(moe, prompt, masked_text, route),
                         labels=("Baseline", "Masked"), texts=texts,
                         note=f"masked: {layer_list(top, BY_ROSAIS)}")


def run_rosais(visit: Visit, prompt_v, system_v, samples, top, ratio, seed, max_new_v,
               progress=gr.Progress()):
    """RoSais on the prompt: (result, bars, summary, baseline answer, masked answer,
    badges). Its parameters are RoSais's (one check), its cost checked against the hosted
    budget."""
    from explorer.methods.rosais import rosais
    moe = visit.moe
    attack = get_attack("rosais")
    prompt = visit.prompt(prompt_v, system_v)
    n = visit.tokens(max_new_v)
    params = attack.Params.parse({
        "samples": whole_number(samples, "samples", 1),
        "top": min(whole_number(top, "top-L", 0), len(moe.moe_layers)), "mask_ratio": ratio})
    seed = whole_number(seed, "seed", 0)
    visit.afford(attack, params, prompt, n,
                 f"RoSais with {params.samples} masks x {len(moe.moe_layers)} layers")
    progress(0, desc="scoring routers")
    res = rosais(moe, prompt, samples=params.samples, top=params.top,
                 mask_ratio=params.mask_ratio, seed=seed, max_new_tokens=n,
                 on_progress=lambda d, t: progress(d / max(t, 1), desc=f"layer {d}/{t}"))
    texts = (visit.shown(prompt.text, res.baseline_completion),
             visit.shown(prompt.text, res.completion))
    return (res, plots.rosais_bars(res.to_dict()), rosais_summary(res), *texts,
            _panel(visit, prompt, res.baseline_completion, res.completion,
                   res.route_for(len(res.top_layers)), texts, res))


def mask_and_regenerate(visit: Visit, prompt_v, system_v, top, max_new_v, res):
    """The answer with the top-L routers of the last RoSais result masked, streamed beside
    the baseline: (masked answer, baseline answer, badges)."""
    if res is None:
        fail("Run RoSais first.")
    prompt = visit.prompt(prompt_v, system_v)
    if res.prompt != prompt.text or (res.info or {}).get("system") != prompt.system:
        fail("The prompt or the system prompt changed since RoSais ran: run RoSais again.")
    route = res.route_for(min(whole_number(top, "top-L", 0), len(res.moe_layers)))
    n = visit.tokens(max_new_v)
    visit.route(route, prompt)
    base_text = ""
    for base_text, base in stream_shown(visit, prompt, n):
        yield gr.skip(), base_text, gr.skip()
    for text, tr in stream_shown(visit, prompt, n, route):
        yield text, gr.skip(), gr.skip()
    yield text, base_text, _panel(visit, prompt, base.completion, tr.completion, route,
                                  (base_text, text), res)


def events(ui: RosaisUI, shared: Shared) -> list[Event]:
    """The tab's events."""
    return [
        Event(ui.btn.click, run_rosais,
              [shared.prompt, shared.system, ui.samples, ui.top, ui.ratio, ui.seed,
               shared.max_new],
              [ui.state, ui.plot, ui.md, ui.base, ui.masked, ui.verdict],
              Door("RoSais", "model", gpu=180)),
        Event(ui.mask_btn.click, mask_and_regenerate,
              [shared.prompt, shared.system, ui.top, shared.max_new, ui.state],
              [ui.masked, ui.base, ui.verdict], Door("Masked generation", "model", gpu=60)),
    ]
