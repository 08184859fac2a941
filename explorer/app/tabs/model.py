"""The "Model" tab: load another checkpoint (hub id or local folder; hosted mode allows only
the demo model and the allowlist, and only while no search runs) and show its model
card; before a load, "Plan" shows what the model needs from its config alone
(:mod:`explorer.bench.plan`: parameters by part, weights per precision, GPUs, the search's
memory and forward passes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from explorer.app.format import model_card, model_header
from explorer.app.gate import Door, Event, Visit, is_demo_model
from explorer.app.hosted import PolicyError
from explorer.app.inputs import text_arg, whole_number
from explorer.bench.plan import PRECISIONS
from explorer.core.defaults import PLAN_GPU_GB, PLAN_PROMPT_TOKENS
from explorer.app.state import InspectState, Shared


@dataclass
class ModelUI:
    """The tab's components."""

    name: Any
    btn: Any
    status: Any
    card: Any
    layers: Any
    plan_btn: Any = None
    gpu: Any = None
    precision: Any = None
    prompt_tokens: Any = None
    plan: Any = None


def layout(app) -> ModelUI:
    """The tab (inside an open ``gr.Tabs``)."""
    policy = app.policy
    label = ("hub id or local folder (blank: the demo model)" if not policy.enabled else
             "model (blank: the demo model; allowed here: "
             + ", ".join(("demo",) + policy.model_allowlist) + ")")
    with gr.Tab("Model", id="model"):
        with gr.Row():
            name = gr.Textbox(label=label, scale=4, elem_id="model-name")
            with gr.Column(scale=1, min_width=160):
                btn = gr.Button("Load model", variant="primary", elem_id="load-model-btn")
                plan_btn = gr.Button("Plan", elem_id="plan-model-btn")
        with gr.Row():
            gpu = gr.Number(PLAN_GPU_GB, label="GPU memory (GB)", precision=0, minimum=1,
                            elem_id="plan-gpu")
            precision = gr.Dropdown(list(PRECISIONS), value="bf16", label="precision",
                                    elem_id="plan-precision")
            prompt_tokens = gr.Number(PLAN_PROMPT_TOKENS, label="prompt tokens", precision=0,
                                      minimum=1, elem_id="plan-prompt-tokens")
        plan = gr.Markdown("", elem_id="model-plan")
        status = gr.Markdown("", elem_id="model-status")
        card_md, card_df = model_card(app)
        card = gr.Markdown(card_md)
        layers = gr.Dataframe(card_df, interactive=False, label="layers",
                              elem_id="model-layers")
    return ModelUI(name, btn, status, card, layers, plan_btn, gpu, precision, prompt_tokens,
                   plan)


def plan_view(visit: Visit, name, gpu, precision, prompt_tokens) -> str:
    """The plan of the model named in the box (blank: the demo model) as Markdown, from its
    config only (nothing downloaded or loaded; hosted mode plans only the models it could
    load)."""
    from explorer.bench.plan import plan_markdown, plan_model
    wanted = visit.policy.check_model((text_arg(name, "model name") or "").strip() or None)
    gb = whole_number(gpu, "GPU memory (GB)", 1, 100_000)
    n = whole_number(prompt_tokens, "prompt tokens", 1, 1_000_000)
    plan = plan_model(None if wanted == "demo" else wanted, gpu_memory_gb=float(gb),
                      prompt_tokens=n, precision=text_arg(precision, "precision") or None)
    return plan_markdown(plan)


def check_swap(visit: Visit, wanted: str) -> None:
    """Hosted mode: a visitor may switch the one model only when the operator allowed other
    models (``--allow-model``), to another model than the loaded one, and while nobody's
    search is queued or running (a swap would interrupt them)."""
    from explorer.storage.library import ACTIVE_STATUSES
    policy = visit.policy
    if not policy.model_allowlist:
        raise PolicyError("loading models is turned off on this public server: the "
                          "operator chooses the model")
    current = visit.app.moe
    if current is not None and (wanted == current.name or
                                (wanted == "demo" and is_demo_model(current))):
        raise PolicyError(f"{wanted} is already loaded")
    if visit.app.store.list_jobs(status=ACTIVE_STATUSES, limit=1):
        raise PolicyError("searches are running on the loaded model; try again when "
                          "they are done")


def load_new(visit: Visit, name, progress=gr.Progress(track_tqdm=True)):
    """Load another model and make it the app's: (status, card, layers, header, Inspect's
    state, its edits list and answers and badges, RoSais's top-L slider)."""
    app = visit.app
    wanted = visit.policy.check_model((text_arg(name, "model name") or "").strip() or None)
    if visit.policy.enabled:  # one model serves every visitor
        check_swap(visit, wanted)
    label = (name or "").strip() or "the demo model"
    progress(0, desc=f"Loading {label}…")
    moe = app.load_model(wanted)
    progress(0.95, desc="Starting the job manager…")
    app.set_model(moe)
    md, df = model_card(app)
    gr.Info(f"Loaded {moe.name}.")
    n = max(1, len(moe.moe_layers))
    return (f"Loaded `{moe.name}`.", md, df, model_header(app), InspectState(),
            gr.CheckboxGroup(choices=[], value=[]), "", "", "",
            gr.Slider(maximum=n, value=min(2, n)))


def events(ui: ModelUI, shared: Shared, inspect, rosais) -> list[Event]:
    """The tab's events; a new model resets Inspect (``inspect``) and RoSais's top-L
    slider (``rosais``)."""
    return [Event(ui.btn.click, load_new, [ui.name],
                  [ui.status, ui.card, ui.layers, shared.header, inspect.state,
                   inspect.edit_list, inspect.base_ans, inspect.alt_ans, inspect.verdict,
                   rosais.top],
                  Door("Load model", "model")),
            Event(ui.plan_btn.click, plan_view, [ui.name, ui.gpu, ui.precision, ui.prompt_tokens],
                  [ui.plan], Door("Plan model", "light"))]
