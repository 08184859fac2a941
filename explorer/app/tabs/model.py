"""The "Model" tab: load another checkpoint (hub id or local folder; hosted mode allows
only the demo model and the allowlist) and show its model card."""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from explorer.app.common import MODEL_SLOT, UI, moe_layer_count, text_arg, user_errors
from explorer.app.format import model_card, model_header

if TYPE_CHECKING:
    from types import SimpleNamespace

    from explorer.app.context import Explorer


def layout(p: SimpleNamespace) -> None:
    ctx = p.ctx
    policy = ctx.policy
    label = ("hub id or local folder (blank: the demo model)" if not policy.enabled else
             "model (blank: the demo model; allowed here: "
             + ", ".join(("demo",) + policy.model_allowlist) + ")")
    with gr.Tab("Model", id="model"):
        with gr.Row():
            p.m_name = gr.Textbox(label=label, scale=4, elem_id="model-name")
            with gr.Column(scale=1, min_width=160):
                p.m_btn = gr.Button("Load model", variant="primary", elem_id="load-model-btn")
        p.m_status = gr.Markdown("", elem_id="model-status")
        card_md, card_df = model_card(ctx)
        p.m_card = gr.Markdown(card_md)
        p.m_layers = gr.Dataframe(card_df, interactive=False, label="layers",
                                  elem_id="model-layers")


def wire(ctx: Explorer, p: SimpleNamespace) -> None:

    def load_new(name, progress=gr.Progress(track_tqdm=True), request: gr.Request = None):
        with user_errors("Load model"):
            wanted = ctx.check_model(text_arg(name, "model name"))
            if ctx.policy.enabled:  # one model serves every visitor
                ctx.check_swap(wanted)
            ctx.admit(request)
            label = (name or "").strip() or "the demo model"
            progress(0, desc=f"Loading {label}…")
            moe = ctx.load_model(wanted)
            progress(0.95, desc="Starting the job manager…")
            ctx.set_model(moe)
            md, df = model_card(ctx)
            gr.Info(f"Loaded {moe.name}.")
            return (f"Loaded `{moe.name}`.", md, df, model_header(ctx),
                    None, None, [], gr.CheckboxGroup(choices=[], value=[]), None, "", "", "",
                    gr.Slider(maximum=moe_layer_count(ctx), value=min(2, moe_layer_count(ctx))))

    p.m_btn.click(load_new, [p.m_name],
                  [p.m_status, p.m_card, p.m_layers, p.header, p.st_base, p.st_alt,
                   p.st_edits, p.edit_list, p.st_sel, p.base_ans, p.alt_ans, p.verdict,
                   p.r_top],
                  **MODEL_SLOT, **UI)
