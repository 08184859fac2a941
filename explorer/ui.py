"""The Gradio app: layout and short callbacks (UI values -> library calls -> figures).

:func:`build_app` returns a ``gr.Blocks``; launch it with ``demo.queue().launch(
**launch_options(), ...)`` (Gradio 6 takes theme, css and head in ``launch``).

One model per process (:class:`Explorer`), shared by every browser session; everything
that belongs to one user (traces, pending edits, the selected cell, RoSais results) lives
in ``gr.State``, and the ids of their background searches in ``gr.BrowserState`` so a
refreshed tab (or a restarted app) finds them again. Every event that runs the model
shares one concurrency slot (``concurrency_id="model"``). Errors reach the user as
``gr.Error`` messages, never as tracebacks.

Named API endpoints (see the app's "Use via API" page): ``trace``, ``generate``,
``rosais``, ``search_start``, ``search_status``, ``search_cancel``, ``routes``,
``replay``; each returns the same JSON object as the matching CLI ``--json`` command.
"""

from __future__ import annotations

import contextlib
import html
import logging
import math
import os
import queue
import secrets
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import gradio as gr
import pandas as pd

from . import plots
from .model import ModelLoadError, MoEModel, load_model
from .route import Route, RouteError

log = logging.getLogger(__name__)

MODEL_SLOT = dict(concurrency_limit=1, concurrency_id="model")
FREE = dict(concurrency_limit=None)
UI = dict(api_visibility="private")
DEFAULT_TARGET = "Sure, here is"
DEFAULT_THRESHOLD = math.log(0.8)
VIEWS = ("baseline", "re-routed")
MODE_CHOICES = [(v, k) for k, v in plots.COLOR_MODES.items()]

try:  # Hugging Face ZeroGPU: run model work inside spaces.GPU when available
    import spaces  # type: ignore
except Exception:  # noqa: BLE001 - optional
    spaces = None


def gpu(duration: int = 60):
    """``spaces.GPU(duration=...)`` when the ``spaces`` package is importable, else a no-op."""
    def deco(fn):
        return spaces.GPU(duration=duration)(fn) if spaces is not None else fn
    return deco


# -- errors --------------------------------------------------------------------------------
def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = str(exc.args[0])
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:400]


@contextlib.contextmanager
def user_errors(action: str):
    """Turn any exception into a ``gr.Error`` with a one-line message (no traceback)."""
    try:
        yield
    except gr.Error:
        raise
    except (RouteError, ModelLoadError, ValueError, LookupError, OSError) as exc:
        raise gr.Error(html.escape(_one_line(exc)), print_exception=False) from None
    except Exception as exc:  # noqa: BLE001 - the app must keep running
        log.exception("%s failed", action)
        raise gr.Error(html.escape(f"{action} failed: {type(exc).__name__}: {_one_line(exc)}"),
                       print_exception=False) from None


def _need_prompt(prompt: str | None) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise gr.Error("The prompt is empty: type a request first.", print_exception=False)
    return prompt


def _int(value, name: str, lo: int | None = None, hi: int | None = None) -> int:
    try:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            raise ValueError
        v = int(value)
        if v != value and not isinstance(value, str):
            raise ValueError
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a whole number, got {value!r}",
                       print_exception=False) from None
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"{lo if lo is not None else '-∞'}..{hi if hi is not None else '∞'}"
        raise gr.Error(f"{name} must lie in {rng}, got {v}", print_exception=False)
    return v


# -- the process-wide context ---------------------------------------------------------------
class Explorer:
    """The one model of this process, the route store and the background job manager."""

    def __init__(self, model: str | MoEModel | None = None, data_dir: str | os.PathLike | None = None,
                 device: str = "auto"):
        from .store import DB_NAME, RouteStore, default_data_dir
        self.data_dir = Path(data_dir) if data_dir else default_data_dir()
        self.store = RouteStore(self.data_dir / DB_NAME)
        self.device = device
        self.moe: MoEModel | None = None
        self.jobs = None
        self.error: str | None = None
        self._swap = threading.Lock()
        self._tokens: dict[tuple[str, str], list[str]] = {}
        try:
            self.set_model(model if isinstance(model, MoEModel) else load_model(model, device=device))
        except ModelLoadError as exc:
            self.error = _one_line(exc)
            log.warning("no model loaded: %s", self.error)

    def set_model(self, moe: MoEModel) -> None:
        """Make ``moe`` the model of the app; a running search is stopped (resumable)."""
        from .jobs import JobManager
        with self._swap:
            old = self.jobs
            if old is not None:
                old.shutdown(wait=True, timeout=30)
            self.moe, self.error = moe, None
            self.jobs = JobManager(moe, self.store)
            self._tokens.clear()

    def require(self) -> MoEModel:
        if self.moe is None:
            raise gr.Error("No model is loaded" + (f" ({html.escape(self.error)})" if self.error else "")
                           + ". Load one in the Model tab.", print_exception=False)
        return self.moe

    def require_jobs(self):
        self.require()
        return self.jobs

    def job_status(self, job_id: str) -> dict:
        if self.jobs is not None:
            return self.jobs.status(job_id)
        return self.store.get_job(job_id).to_dict()

    def prompt_tokens(self, prompt: str) -> list[str]:
        moe = self.require()
        key = (moe.name, prompt)
        if key not in self._tokens:
            if len(self._tokens) > 256:
                self._tokens.clear()
            self._tokens[key] = moe.token_strings(moe.encode(prompt))
        return self._tokens[key]

    def browser_secret(self) -> str:
        """A secret kept in the data folder, so BrowserState survives app restarts."""
        p = self.data_dir / ".browser_state_secret"
        try:
            return p.read_text().strip() or self._new_secret(p)
        except OSError:
            return self._new_secret(p)

    @staticmethod
    def _new_secret(p: Path) -> str:
        s = secrets.token_urlsafe(24)
        try:
            p.write_text(s)
            os.chmod(p, 0o600)
        except OSError:
            pass
        return s


# -- library calls ---------------------------------------------------------------------------
def stream_trace(moe, prompt: str, max_new_tokens: int, route: Route | None = None
                 ) -> Iterator[tuple[str, Any]]:
    """Run :func:`explorer.tracer.trace` in a thread; yield ``(text so far, None)`` per
    streamed piece, then ``(text, trace)``. Errors are re-raised here."""
    from .tracer import trace
    q: queue.Queue = queue.Queue()
    box: dict[str, Any] = {}

    def work():
        try:
            box["trace"] = trace(moe, prompt, max_new_tokens=max_new_tokens, route=route,
                                 on_token=q.put)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc
        finally:
            q.put(None)

    threading.Thread(target=work, name="explorer-trace", daemon=True).start()
    text = ""
    while True:
        piece = q.get()
        if piece is None:
            break
        text += piece
        yield text, None
    if "error" in box:
        raise box["error"]
    tr = box["trace"]
    yield tr.completion, tr


def _route_of(edits: list[dict] | None, info: dict | None = None) -> Route:
    return Route.from_dict({"edits": list(edits or []), "info": dict(info or {})})


def _verdict(prompt: str, text: str) -> str:
    from .judge import get_judge
    v = get_judge("keyword").judge(prompt, text)
    return "jailbroken (no refusal)" if v.jailbroken else ("refusal" if v.refusal else "empty")


def usable_judges() -> list[str]:
    """Judges that can be set up here without options (the rubric judge needs its URL in
    the environment, the classifier a model path): the Search tab offers these."""
    from .judge import JUDGES, get_judge
    out = []
    for name in sorted(JUDGES):
        try:
            get_judge(name)
        except Exception:  # noqa: BLE001 - not configured on this server
            continue
        out.append(name)
    return out or ["keyword"]


# -- formatting ------------------------------------------------------------------------------
def model_header(ctx: Explorer) -> str:
    moe = ctx.moe
    if moe is None:
        return (f"**No model loaded.** {html.escape(ctx.error or '')} "
                "Load one in the **Model** tab.")
    i = moe.info
    moe_l = [lay for lay in i.layers if lay.is_moe]
    e = sorted({lay.num_experts for lay in moe_l})
    k = sorted({lay.top_k for lay in moe_l})
    return (f"**Model:** `{moe.name}` · {i.num_layers} layers ({len(moe_l)} MoE) · "
            f"{'/'.join(map(str, e))} experts, top-{'/'.join(map(str, k))} · "
            f"{i.device} {i.dtype}")


def model_card(ctx: Explorer) -> tuple[str, pd.DataFrame]:
    cols = ["layer", "type", "experts", "top-k", "shared experts", "router", "groups"]
    moe = ctx.moe
    if moe is None:
        return (f"No model loaded. {html.escape(ctx.error or '')}", pd.DataFrame(columns=cols))
    i = moe.info
    md = (f"### `{moe.name}`\n"
          f"- family: `{i.model_type}` · {i.parameters / 1e6:.1f}M parameters\n"
          f"- device: **{i.device}** · dtype: **{i.dtype}**\n"
          f"- layers: {i.num_layers} ({len(i.moe_layers)} MoE: {i.moe_layers}"
          + (f"; dense: {i.dense_layers}" if i.dense_layers else "") + ")\n"
          f"- transformers {i.transformers_version}"
          + (f" · revision `{i.revision}`" if i.revision else "")
          + (f" · chat template `{i.chat_template_hash}`" if i.chat_template_hash else
             " · no chat template (raw prompts)"))
    rows = [[lay.index, "MoE" if lay.is_moe else "dense",
             lay.num_experts if lay.is_moe else "", lay.top_k if lay.is_moe else "",
             lay.shared_experts if lay.is_moe else "", lay.router_kind if lay.is_moe else "",
             f"{lay.n_group} pick {lay.topk_group}" if lay.n_group else ""] for lay in i.layers]
    return md, pd.DataFrame(rows, columns=cols)


def edit_label(e: dict, tokens: list[str] | None = None) -> str:
    where = "every position" if e.get("position") is None else f"pos {e['position']}"
    if e.get("position") is not None and tokens and 0 <= e["position"] < len(tokens):
        where += f" {tokens[e['position']]!r}"
    return f"{e['mode']} L{e['layer']} @ {where} → experts {', '.join(map(str, e['experts']))}"


def _edit_choices(edits: list[dict], tokens: list[str] | None):
    return [(f"#{i + 1} {edit_label(e, tokens)}", i) for i, e in enumerate(edits or [])]


def edits_box(edits: list[dict] | None, tokens: list[str] | None = None):
    """The pending-edits checkbox list (an update for the CheckboxGroup)."""
    n = len(edits or [])
    return gr.CheckboxGroup(choices=_edit_choices(edits or [], tokens), value=[],
                            label=f"Pending edits ({n}; tick to remove)" if n else
                            "Pending edits (tick to remove)")


def cell_info(tr, layer: int, position: int) -> str:
    row = tr.layer_row(layer)
    ex, w = tr.experts[row][position], tr.weights[row][position]
    kind = "prompt" if position < tr.prompt_tokens else "generated"
    pairs = ", ".join(f"**{e}** ({x:.2f})" for e, x in sorted(zip(ex, w), key=lambda p: -p[1]))
    md = (f"**Selected:** layer {layer}, position {position} ({kind} token "
          f"``{tr.tokens[position]!r}``) · experts used: {pairs}")
    if tr.logits is not None:
        lg = tr.logits[row][position]
        top = sorted(range(len(lg)), key=lambda j: -lg[j])[:6]
        md += " · router logits: " + ", ".join(f"{j}: {lg[j]:.2f}" for j in top)
    if kind == "generated":
        md += ("\n\n*Generated tokens can't be edited one by one (a route addresses prompt "
               "positions); tick **every position** to edit the whole layer.*")
    return md


def job_label(st: dict) -> str:
    p = st.get("params") or {}
    created = (st.get("created") or "")[11:19]
    prompt = (p.get("prompt") or "")[:40]
    return f"{created} · {st.get('status')} · {prompt}"


def job_progress_md(st: dict, tokens: list[str] | None = None) -> str:
    p = st.get("progress") or {}
    params = st.get("params") or {}
    status = st.get("status")
    lines = [f"**Search `{st.get('id', '')[:8]}` · {status}**"]
    it, pos, lay = p.get("iteration"), p.get("position"), p.get("layer")
    npos, nl = p.get("num_positions"), p.get("num_layers")
    max_iters = params.get("max_iters")
    if it is not None and status == "done":
        lines.append(f"finished in restart {min(it + 1, max_iters or it + 1)}"
                     + (f" of at most {max_iters}" if max_iters else ""))
    elif it is not None:
        where = f"restart {min(it + 1, max_iters or it + 1)}/{max_iters or '?'}"
        if pos is not None and npos:
            pos = min(pos, npos - 1)
        if pos is not None:
            tok = f" ``{tokens[pos]!r}``" if tokens and 0 <= pos < len(tokens) else ""
            where += f" · token {pos + 1}/{npos or '?'}{tok}"
        if lay is not None:
            where += f" · layer {lay}" + (f" (of {nl} MoE layers)" if nl else "")
        lines.append(where)
    best = p.get("best_logprob")
    thr = params.get("threshold", DEFAULT_THRESHOLD)
    if best is not None:
        lines.append(f"best log P(target) = **{best:.3f}** (P = {math.exp(best):.3f}) · "
                     f"threshold {thr:.3f} (P = {math.exp(thr):.2f})")
    bits = []
    if p.get("forward_passes") is not None:
        bits.append(f"forward passes {p['forward_passes']:,}")
    if p.get("elapsed") is not None:
        bits.append(f"elapsed {p['elapsed']:.1f} s")
    if status == "running" and p.get("eta_seconds") is not None:
        eta = f"remaining ≈ {p['eta_seconds']:.0f} s for this restart"
        if p.get("eta_max_seconds"):
            eta += f" (≤ {p['eta_max_seconds']:.0f} s if every restart runs)"
        bits.append(eta)
    if bits:
        lines.append(" · ".join(bits))
    if status == "failed" and st.get("error"):
        lines.append(f"**Error:** {html.escape(st['error'])}")
    if status == "interrupted":
        lines.append("The app stopped while this search ran: press **Resume** to continue "
                     "from its last checkpoint.")
    return "  \n".join(lines)


def job_result_md(st: dict) -> str:
    r = st.get("result") or {}
    if st.get("status") not in ("done", "cancelled", "interrupted") or not r:
        return ""
    head = "Jailbroken" if r.get("success") else "Not jailbroken"
    if st.get("status") != "done":
        head = f"Best so far ({st.get('status')})"
    bits = [f"judge: {r.get('judge') or 'keyword'}"]
    if isinstance(r.get("logprob"), (int, float)):
        bits.append(f"log P(target) = {r['logprob']:.3f}")
    bits.append(f"{len((r.get('route') or {}).get('edits', []))} forced cells")
    bits.append(f"{r.get('forward_passes') or 0:,} forward passes")
    bits.append(f"{r.get('seconds') or 0:.1f} s")
    md = f"**{head}** · " + " · ".join(bits)
    if st.get("route_id") is not None:
        md += f"  \nSaved to the library as route **#{st['route_id']}**."
    if r.get("completion"):
        md += "\n\n> " + html.escape(r["completion"]).replace("\n", "\n> ")
    return md


def routes_frame(items) -> pd.DataFrame:
    cols = ["id", "prompt", "model", "edits", "target log-prob", "success", "source", "created"]
    rows = []
    for r in items:
        lp = r.target_logprob
        rows.append([r.id, r.prompt if len(r.prompt) <= 80 else r.prompt[:79] + "…", r.model,
                     r.n_edits, round(lp, 3) if isinstance(lp, float) else None,
                     {True: "yes", False: "no", None: "—"}[r.success], r.source,
                     (r.created or "")[:19].replace("T", " ")])
    return pd.DataFrame(rows, columns=cols)


# -- JS bridge: plotly_click on the routing heatmap -> a 'select' event on the HTML block ---
BRIDGE_JS = """
const bind = () => {
  const gd = document.querySelector('#route-heatmap div[data-testid="plotly"]');
  if (!gd || typeof gd.on !== 'function' || gd.__sseBound) return;
  gd.__sseBound = true;
  gd.on('plotly_click', (ev) => {
    const p = ev && ev.points && ev.points[0];
    if (!p) return;
    const cd = Array.isArray(p.customdata) ? p.customdata : null;
    const data = {layer: cd ? cd[0] : null, position: cd ? cd[1] : null,
                  row: p.y, column: p.x};
    const msg = element.querySelector('.sse-bridge-msg');
    if (msg) msg.textContent = 'Selected layer ' + data.layer + ', position ' + data.position;
    trigger('select', data);
  });
};
bind();
new MutationObserver(bind).observe(document.body, {childList: true, subtree: true});
setInterval(bind, 1500);
"""

CSS = """
#route-heatmap, #usage-plot { min-height: 320px; }
.sse-bridge-msg { font-size: 0.85em; color: var(--body-text-color-subdued); }
#sse-header p { margin: 0; }
.sse-answer textarea { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
#pending-edits .wrap { max-height: 190px; overflow-y: auto; }
"""


def launch_options() -> dict[str, Any]:
    """Keyword arguments for ``launch()`` (theme and css moved there in Gradio 6)."""
    return {"theme": gr.themes.Soft(primary_hue="indigo", secondary_hue="rose"), "css": CSS}


# -- the app ---------------------------------------------------------------------------------
def build_app(model: str | MoEModel | None = None, *, data_dir: str | os.PathLike | None = None,
              device: str = "auto") -> gr.Blocks:
    """Build the explorer app on ``model`` (demo model by default; a hub id, local folder or
    a loaded :class:`MoEModel`). ``data_dir`` holds the route library (default
    ``$EXPLORER_DATA_DIR``). If the model can't be loaded the app still starts and says why.
    """
    ctx = Explorer(model, data_dir=data_dir, device=device)
    from .prompts import BENIGN_PROMPTS, HARMFUL_PROMPTS
    judges = usable_judges()

    with gr.Blocks(title="Sparse Safety Explorer") as demo:
        demo.explorer = ctx  # for tests and scripts
        st_base = gr.State(None)    # RoutingTrace without edits
        st_alt = gr.State(None)     # RoutingTrace with the pending edits
        st_edits = gr.State([])     # pending edits: list of edit dicts
        st_sel = gr.State(None)     # {"layer", "position"}
        st_rosais = gr.State(None)  # RosaisResult.to_dict()
        browser = gr.BrowserState({"client": None, "jobs": []}, storage_key="sse-explorer-jobs",
                                  secret=ctx.browser_secret())

        gr.Markdown("## Sparse Safety Explorer · unsafe routes in Mixture-of-Experts LLMs")
        header = gr.Markdown(model_header(ctx), elem_id="sse-header")
        with gr.Row():
            prompt = gr.Textbox(label="Prompt (user message; the chat template is applied)",
                                value=HARMFUL_PROMPTS[0], lines=2, scale=4,
                                elem_id="prompt-box")
            with gr.Column(scale=1, min_width=220):
                max_new = gr.Slider(0, 256, value=48, step=1, label="max new tokens (greedy)",
                                    elem_id="prompt-max-new")
                gen_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
        gr.Examples([[p] for p in HARMFUL_PROMPTS[:6] + BENIGN_PROMPTS[:3]], inputs=[prompt],
                    label="Example prompts")

        with gr.Tabs(elem_id="main-tabs") as tabs:
            # ---------------------------------------------------------------- inspect
            with gr.Tab("Inspect & re-route", id="inspect"):
                with gr.Row():
                    base_ans = gr.Textbox(label="Baseline answer", lines=4, interactive=False,
                                          elem_id="baseline-answer", elem_classes="sse-answer")
                    alt_ans = gr.Textbox(label="Re-routed answer (with the pending edits)",
                                         lines=4, interactive=False, elem_id="rerouted-answer",
                                         elem_classes="sse-answer")
                with gr.Row():
                    mode = gr.Radio(MODE_CHOICES, value="expert", label="Colour", scale=3)
                    view = gr.Radio(list(VIEWS), value="baseline", label="Show trace", scale=1)
                with gr.Row():
                    heat = gr.Plot(plots.heatmap(None), label="Routing heatmap", scale=3,
                                   elem_id="route-heatmap")
                    usage = gr.Plot(plots.usage(None), label="Expert usage", scale=1,
                                    elem_id="usage-plot")
                bridge = gr.HTML("<span class='sse-bridge-msg'>Click a heatmap cell to select "
                                 "it (or type a layer and position below).</span>",
                                 js_on_load=BRIDGE_JS, elem_id="heatmap-bridge")
                gr.Markdown("#### Re-route: select a cell, choose experts, add edits, re-run")
                with gr.Row():
                    with gr.Column(scale=1, min_width=200):
                        with gr.Row():
                            sel_layer = gr.Number(label="layer", precision=0, minimum=0,
                                                  min_width=80, elem_id="sel-layer")
                            sel_pos = gr.Number(label="position", precision=0, minimum=0,
                                                min_width=80, elem_id="sel-pos")
                        sel_btn = gr.Button("Select cell", size="sm", elem_id="select-btn")
                    with gr.Column(scale=3):
                        sel_md = gr.Markdown("No cell selected.", elem_id="cell-info")
                        experts = gr.CheckboxGroup([], label="experts", elem_id="expert-choices")
                        with gr.Row():
                            edit_mode = gr.Radio(["force", "mask"], value="force", label="edit",
                                                 info="force: exactly top-k experts; "
                                                      "mask: forbid them", elem_id="edit-mode")
                            every = gr.Checkbox(label="every position of this layer",
                                                value=False, elem_id="every-pos")
                            with gr.Column(min_width=140):
                                add_btn = gr.Button("Add edit", elem_id="add-edit-btn")
                with gr.Row():
                    edit_list = gr.CheckboxGroup([], label="Pending edits (tick to remove)",
                                                 scale=4, elem_id="pending-edits")
                    with gr.Column(scale=1, min_width=160):
                        rm_btn = gr.Button("Remove ticked", size="sm")
                        clear_btn = gr.Button("Clear all", size="sm")
                with gr.Row():
                    rerun_btn = gr.Button("Re-run with edits", variant="primary",
                                          elem_id="rerun-btn")
                    save_btn = gr.Button("Save edits as a route", elem_id="save-route-btn")

            # ---------------------------------------------------------------- rosais
            with gr.Tab("RoSais", id="rosais"):
                gr.Markdown("Router Safety importance score: for each MoE layer, random masks "
                            "over its router; the score is the largest increase of the "
                            "affirmative first-token log-prob. High = masking this router "
                            "pushes the model towards complying.")
                with gr.Row():
                    r_samples = gr.Slider(1, 256, value=32, step=1, label="random masks per layer",
                                          elem_id="rosais-samples")
                    r_top = gr.Slider(0, 32, value=2, step=1, label="top-L layers to mask")
                    r_ratio = gr.Slider(0.05, 0.95, value=0.5, step=0.05, label="mask ratio")
                    r_seed = gr.Number(0, precision=0, label="seed")
                    r_btn = gr.Button("Run RoSais", variant="primary", elem_id="rosais-btn")
                r_plot = gr.Plot(plots.rosais_bars(None), label="RoSais per layer",
                                 elem_id="rosais-plot")
                r_md = gr.Markdown("")
                r_mask_btn = gr.Button("Mask the top-L routers and regenerate",
                                       elem_id="rosais-mask-btn")
                with gr.Row():
                    r_base = gr.Textbox(label="Baseline answer", lines=4, interactive=False,
                                        elem_classes="sse-answer")
                    r_masked = gr.Textbox(label="Answer with the top-L routers masked", lines=4,
                                          interactive=False, elem_id="rosais-masked",
                                          elem_classes="sse-answer")

            # ---------------------------------------------------------------- search
            with gr.Tab("Search", id="search"):
                gr.Markdown("F-SOUR: token-by-token, layer-by-layer random search for forced "
                            "experts that make the model start its answer with the target. "
                            "Searches run in the background: close the tab and come back.")
                with gr.Row():
                    s_target = gr.Textbox(DEFAULT_TARGET, label="target answer prefix", scale=2)
                    s_n = gr.Slider(1, 64, value=10, step=1, label="candidates per cell (N)",
                                    elem_id="search-n")
                    s_thr = gr.Slider(0.01, 0.99, value=0.8, step=0.01,
                                      label="threshold: P(target)",
                                      elem_id="search-thr")
                    s_iters = gr.Slider(1, 20, value=5, step=1, label="max restarts",
                                        elem_id="search-iters")
                with gr.Row():
                    s_seed = gr.Number(0, precision=0, label="seed")
                    s_engine = gr.Radio(["fast", "reference"], value="fast", label="engine")
                    s_judge = gr.Dropdown(judges, value="keyword", label="judge",
                                          elem_id="search-judge")
                    s_start = gr.Button("Start search", variant="primary", elem_id="search-start")
                with gr.Row():
                    s_jobs = gr.Dropdown([], label="Your searches", scale=3,
                                         elem_id="search-jobs")
                    with gr.Column(scale=1, min_width=160):
                        s_stop = gr.Button("Stop", variant="stop", size="sm",
                                           elem_id="search-stop")
                        s_resume = gr.Button("Resume", size="sm", elem_id="search-resume")
                        s_open = gr.Button("Open in library", size="sm", elem_id="search-open")
                s_md = gr.Markdown("No search yet.", elem_id="search-progress")
                s_plot = gr.Plot(plots.search_progress(None), label="best log-prob over time",
                                 elem_id="search-plot")
                s_result = gr.Markdown("", elem_id="search-result")
                timer = gr.Timer(1.0, active=False)

            # ---------------------------------------------------------------- library
            with gr.Tab("Route library", id="library") as lib_tab:
                with gr.Row():
                    f_text = gr.Textbox(label="search prompt / target / completion", scale=2)
                    f_model = gr.Dropdown(["any"], value="any", label="model",
                                          allow_custom_value=True)
                    f_success = gr.Radio(["any", "yes", "no"], value="any", label="jailbroken")
                    f_source = gr.Dropdown(["any", "fsour", "manual", "rosais", "import"],
                                           value="any", label="source")
                    f_btn = gr.Button("Refresh", scale=0)
                table = gr.Dataframe(routes_frame([]), interactive=False, wrap=True,
                                     max_height=320, elem_id="routes-table",
                                     column_widths=["6%", "34%", "18%", "7%", "10%", "8%",
                                                    "7%", "10%"])
                with gr.Row(equal_height=True):
                    l_id = gr.Number(label="route id (click a row)", precision=0,
                                     elem_id="lib-route-id")
                    l_prompt = gr.Textbox(label="replay on prompt (blank: the route's own)",
                                          scale=3)
                    l_replay = gr.Button("Replay", variant="primary", elem_id="lib-replay")
                    l_load = gr.Button("Edit in Inspect")
                with gr.Row():
                    l_answer = gr.Textbox(label="Replayed answer", lines=4, interactive=False,
                                          elem_id="lib-answer", elem_classes="sse-answer")
                    l_info = gr.Markdown("")
                l_heat = gr.Plot(plots.heatmap(None), label="Replayed routing (stars: forced cells)")
                with gr.Accordion("Compare two routes", open=False):
                    with gr.Row(equal_height=True):
                        c_a = gr.Number(label="route A", precision=0, elem_id="cmp-a")
                        c_b = gr.Number(label="route B", precision=0, elem_id="cmp-b")
                        c_prompt = gr.Textbox(label="on prompt (blank: each route's own)",
                                              scale=3)
                        c_btn = gr.Button("Compare", elem_id="cmp-btn")
                    with gr.Row():
                        c_ans_a = gr.Textbox(label="A's answer", lines=4, interactive=False,
                                             elem_id="cmp-ans-a")
                        c_ans_b = gr.Textbox(label="B's answer", lines=4, interactive=False,
                                             elem_id="cmp-ans-b")
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
                    with gr.Row():
                        i_file = gr.File(label="route JSON file", file_types=[".json"],
                                         type="filepath")
                        i_text = gr.Code(label="…or paste route JSON", language="json", lines=6,
                                         elem_id="import-json")
                        i_btn = gr.Button("Import", elem_id="import-btn")

            # ---------------------------------------------------------------- model
            with gr.Tab("Model", id="model"):
                with gr.Row():
                    m_name = gr.Textbox(label="hub id or local folder (blank: the demo model)",
                                        scale=4, elem_id="model-name")
                    with gr.Column(scale=1, min_width=160):
                        m_btn = gr.Button("Load model", variant="primary",
                                          elem_id="load-model-btn")
                m_status = gr.Markdown("", elem_id="model-status")
                card_md, card_df = model_card(ctx)
                m_card = gr.Markdown(card_md)
                m_layers = gr.Dataframe(card_df, interactive=False, label="layers")

        # ============================================================ callbacks: inspect
        def tokens_of(tr):
            return tr.tokens if tr is not None else None

        def shown(view_v, base, alt):
            return alt if (view_v == "re-routed" and alt is not None) else base

        def figs(view_v, mode_v, base, alt, edits, sel):
            tr = shown(view_v, base, alt)
            cmp = base if tr is alt else alt
            return (plots.heatmap(tr, mode_v, baseline=cmp, edits=edits, selected=sel),
                    plots.usage(tr))

        @gpu(60)
        def on_generate(prompt_v, max_new_v, mode_v, edits, sel):
            with user_errors("Generate"):
                moe = ctx.require()
                _need_prompt(prompt_v)
                n = _int(max_new_v, "max new tokens", 0, 4096)
                for text, tr in stream_trace(moe, prompt_v, n):
                    if tr is None:
                        yield (text, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(),
                               gr.skip(), gr.skip())
                    else:
                        m = "expert" if mode_v == "changed" else mode_v
                        yield (text, "", plots.heatmap(tr, m, edits=edits, selected=sel),
                               plots.usage(tr), tr, None, "baseline", m)

        gen_evt = dict(fn=on_generate, inputs=[prompt, max_new, mode, st_edits, st_sel],
                       outputs=[base_ans, alt_ans, heat, usage, st_base, st_alt, view, mode],
                       **MODEL_SLOT, **UI)
        gen_btn.click(**gen_evt)
        prompt.submit(**gen_evt)

        def on_redraw(view_v, mode_v, base, alt, edits, sel):
            return figs(view_v, mode_v, base, alt, edits, sel)

        for comp in (mode, view):
            comp.input(on_redraw, [view, mode, st_base, st_alt, st_edits, st_sel], [heat, usage],
                       **FREE, **UI)

        def select(layer, position, view_v, mode_v, base, alt, edits):
            with user_errors("Select"):
                tr = shown(view_v, base, alt)
                if tr is None:
                    raise gr.Error("Generate first: there is no routing to select from.",
                                   print_exception=False)
                layer = _int(layer, "layer", 0)
                position = _int(position, "position", 0)
                if layer not in tr.moe_layers:
                    raise gr.Error(f"layer {layer} is not an MoE layer (MoE layers: "
                                   f"{tr.moe_layers})", print_exception=False)
                if position >= tr.num_tokens:
                    raise gr.Error(f"position {position} is out of range (0..{tr.num_tokens - 1})",
                                   print_exception=False)
                sel = {"layer": layer, "position": position}
                row = tr.layer_row(layer)
                n = tr.num_experts[row]
                current = sorted(tr.experts[row][position])
                hm, us = figs(view_v, mode_v, base, alt, edits, sel)
                return (sel, layer, position, cell_info(tr, layer, position),
                        gr.CheckboxGroup(choices=list(range(n)), value=current,
                                         label=f"experts at layer {layer} (top-{tr.top_k[row]};"
                                               f" ticked: used now)"),
                        hm, us)

        sel_outputs = [st_sel, sel_layer, sel_pos, sel_md, experts, heat, usage]
        sel_btn.click(select, [sel_layer, sel_pos, view, mode, st_base, st_alt, st_edits],
                      sel_outputs, **FREE, **UI)

        def on_cell(view_v, mode_v, base, alt, edits, evt: gr.EventData):
            data = getattr(evt, "_data", None) or {}
            layer, position = data.get("layer"), data.get("position")
            tr = shown(view_v, base, alt)
            if layer is None and tr is not None and data.get("row") is not None:
                row = int(round(float(data["row"])))
                layer = tr.moe_layers[row] if 0 <= row < len(tr.moe_layers) else None
            if position is None and data.get("column") is not None:
                position = int(round(float(data["column"])))
            return select(layer, position, view_v, mode_v, base, alt, edits)

        bridge.select(on_cell, [view, mode, st_base, st_alt, st_edits], sel_outputs,
                      **FREE, **UI)

        def add_edit(sel, chosen, mode_v, every_v, edits, base, alt, view_v, color):
            with user_errors("Add edit"):
                moe = ctx.require()
                if not sel:
                    raise gr.Error("Select a cell first (click the heatmap).",
                                   print_exception=False)
                layer, pos = sel["layer"], (None if every_v else sel["position"])
                chosen = sorted(int(x) for x in (chosen or []))
                info = moe.handle(layer).info
                if mode_v == "force" and len(chosen) != info.top_k:
                    raise gr.Error(f"Forcing needs exactly top-k = {info.top_k} experts at "
                                   f"layer {layer}; {len(chosen)} are ticked.",
                                   print_exception=False)
                if not chosen:
                    raise gr.Error("Tick at least one expert to mask.", print_exception=False)
                n_prompt = base.prompt_tokens if base is not None else None
                if pos is not None and n_prompt is not None and pos >= n_prompt:
                    raise gr.Error(f"Position {pos} is a generated token; a route edits prompt "
                                   f"positions (0..{n_prompt - 1}) or every position of a "
                                   "layer (tick 'every position').", print_exception=False)
                route = _route_of(edits)
                route.force(layer, pos, chosen) if mode_v == "force" else route.mask(layer, chosen, pos)
                route.validate(moe.info, num_tokens=n_prompt)
                new = route.to_dict()["edits"]
                hm, us = figs(view_v, color, base, alt, new, sel)
                return new, edits_box(new, tokens_of(base)), hm

        add_btn.click(add_edit, [st_sel, experts, edit_mode, every, st_edits, st_base, st_alt,
                                 view, mode], [st_edits, edit_list, heat], **FREE, **UI)

        def remove_edits(ticked, edits, base, alt, view_v, mode_v, sel, clear=False):
            ticked = set(ticked or [])
            new = [] if clear else [e for i, e in enumerate(edits or []) if i not in ticked]
            hm, _ = figs(view_v, mode_v, base, alt, new, sel)
            return new, edits_box(new, tokens_of(base)), hm

        rm_inputs = [edit_list, st_edits, st_base, st_alt, view, mode, st_sel]
        rm_btn.click(remove_edits, rm_inputs, [st_edits, edit_list, heat], **FREE, **UI)
        clear_btn.click(lambda *a: remove_edits(*a, clear=True), rm_inputs,
                        [st_edits, edit_list, heat], **FREE, **UI)

        @gpu(120)
        def rerun(prompt_v, max_new_v, edits, base, sel):
            with user_errors("Re-run"):
                moe = ctx.require()
                _need_prompt(prompt_v)
                n = _int(max_new_v, "max new tokens", 0, 4096)
                if not edits:
                    raise gr.Error("There are no pending edits: select a cell and add one.",
                                   print_exception=False)
                route = _route_of(edits, moe.info.provenance())
                yield ("", gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(),
                       gr.skip())
                if (base is None or base.prompt != prompt_v or
                        base.info.get("model") != moe.name or
                        base.info.get("max_new_tokens") != n):
                    for text, tr in stream_trace(moe, prompt_v, n):
                        yield (gr.skip(), text, gr.skip(), gr.skip(), gr.skip(), gr.skip(),
                               gr.skip(), gr.skip())
                    base = tr
                    yield (gr.skip(), "", gr.skip(), gr.skip(), base, gr.skip(), gr.skip(),
                           gr.skip())
                route.validate(moe.info, num_tokens=base.prompt_tokens)
                for text, tr in stream_trace(moe, prompt_v, n, route):
                    if tr is None:
                        yield (text, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(),
                               gr.skip(), gr.skip())
                    else:
                        yield (text, base.completion,
                               plots.heatmap(tr, "changed", baseline=base, edits=edits,
                                             selected=sel), plots.usage(tr), base, tr,
                               "re-routed", "changed")

        rerun_btn.click(rerun, [prompt, max_new, st_edits, st_base, st_sel],
                        [alt_ans, base_ans, heat, usage, st_base, st_alt, view, mode],
                        **MODEL_SLOT, **UI)

        def save_edits(prompt_v, edits, alt):
            with user_errors("Save route"):
                moe = ctx.require()
                _need_prompt(prompt_v)
                if not edits:
                    raise gr.Error("There are no pending edits to save.", print_exception=False)
                route = _route_of(edits, dict(moe.info.provenance(), source="manual",
                                              prompt=prompt_v))
                completion = alt.completion if (alt is not None and alt.prompt == prompt_v) else None
                rid = ctx.store.save_route(route, prompt_v, moe.name, completion=completion,
                                           source="manual")
                gr.Info(f"Saved as route #{rid} in the library.")
                return rid

        save_btn.click(save_edits, [prompt, st_edits, st_alt], [l_id], **FREE, **UI)

        # ============================================================ callbacks: rosais
        @gpu(180)
        def run_rosais(prompt_v, samples, top, ratio, seed, max_new_v, progress=gr.Progress()):
            with user_errors("RoSais"):
                from .rosais import rosais
                moe = ctx.require()
                _need_prompt(prompt_v)
                top = min(_int(top, "top-L", 0), len(moe.moe_layers))
                progress(0, desc="scoring routers")
                res = rosais(moe, prompt_v, samples=_int(samples, "samples", 1), top=top,
                             mask_ratio=float(ratio), seed=_int(seed, "seed"),
                             max_new_tokens=_int(max_new_v, "max new tokens", 0, 4096),
                             on_progress=lambda d, t: progress(d / max(t, 1),
                                                               desc=f"layer {d}/{t}"))
                d = res.to_dict()
                ranked = sorted(zip(res.moe_layers, res.scores), key=lambda p: -p[1])
                md = (f"Baseline affirmative log-prob **{res.baseline_logprob:.3f}** "
                      f"(tokens: {', '.join(map(repr, res.affirmative_tokens))}) · top layers "
                      f"**{res.top_layers}** · ranking: "
                      + ", ".join(f"L{l} {s:+.2f}" for l, s in ranked)
                      + f" · {res.forward_passes} forward passes in {res.seconds:.1f} s")
                return (d, plots.rosais_bars(d), md, res.baseline_completion,
                        res.completion + f"\n\n[{_verdict(prompt_v, res.completion)}]")

        r_btn.click(run_rosais, [prompt, r_samples, r_top, r_ratio, r_seed, max_new],
                    [st_rosais, r_plot, r_md, r_base, r_masked], **MODEL_SLOT, **UI)

        @gpu(60)
        def rosais_mask(prompt_v, top, max_new_v, res):
            with user_errors("Masked generation"):
                from .rosais import RosaisResult
                moe = ctx.require()
                if not res:
                    raise gr.Error("Run RoSais first.", print_exception=False)
                if res.get("prompt") != prompt_v:
                    raise gr.Error("The prompt changed since RoSais ran: run RoSais again.",
                                   print_exception=False)
                result = RosaisResult.from_dict(res)
                route = result.route_for(min(_int(top, "top-L", 0), len(result.moe_layers)))
                n = _int(max_new_v, "max new tokens", 0, 4096)
                base_text = ""
                for base_text, tr in stream_trace(moe, prompt_v, n):
                    yield gr.skip(), base_text
                for text, tr in stream_trace(moe, prompt_v, n, route):
                    yield text, gr.skip()
                yield (text + f"\n\n[{_verdict(prompt_v, text)} · masked layers "
                              f"{route.layers}]", base_text)

        r_mask_btn.click(rosais_mask, [prompt, r_top, max_new, st_rosais], [r_masked, r_base],
                         **MODEL_SLOT, **UI)

        # ============================================================ callbacks: search
        def ensure_client(b):
            b = dict(b or {})
            if not b.get("client"):
                b["client"] = secrets.token_hex(8)
            b["jobs"] = [j for j in (b.get("jobs") or []) if isinstance(j, str)][-50:]
            return b

        def job_view(b, job_id):
            """Everything the search panel shows for the browser's jobs and the chosen one."""
            statuses = []
            for j in reversed(b.get("jobs") or []):
                try:
                    statuses.append(ctx.job_status(j))
                except Exception:  # noqa: BLE001 - a job the store no longer knows
                    continue
            known = {s["id"] for s in statuses}
            b = dict(b, jobs=[j for j in b.get("jobs") or [] if j in known])
            if job_id not in known:
                job_id = statuses[0]["id"] if statuses else None
            active = any(s["status"] in ("queued", "running") for s in statuses)
            dd = gr.Dropdown(choices=[(job_label(s), s["id"]) for s in statuses], value=job_id)
            st = next((s for s in statuses if s["id"] == job_id), None)
            if st is None:
                return (b, dd, "No search yet.", plots.search_progress(None), "",
                        gr.Timer(active=active))
            try:
                toks = ctx.prompt_tokens(st["params"]["prompt"]) if ctx.moe else None
            except Exception:  # noqa: BLE001
                toks = None
            thr = (st.get("params") or {}).get("threshold", DEFAULT_THRESHOLD)
            return (b, dd, job_progress_md(st, toks),
                    plots.search_progress(st["progress"].get("history"), thr),
                    job_result_md(st), gr.Timer(active=active))

        job_outputs = [browser, s_jobs, s_md, s_plot, s_result, timer]

        def start_search(prompt_v, target, n, thr, iters, seed, engine, judge, max_new_v, b):
            with user_errors("Start search"):
                jobs = ctx.require_jobs()
                _need_prompt(prompt_v)
                if not (target or "").strip():
                    raise gr.Error("The target is empty.", print_exception=False)
                b = ensure_client(b)
                params = {"prompt": prompt_v, "target": target, "candidates": _int(n, "N", 1),
                          "threshold": math.log(float(thr)), "max_iters": _int(iters, "restarts", 1),
                          "seed": _int(seed, "seed"), "engine": engine,
                          "max_new_tokens": _int(max_new_v, "max new tokens", 1, 4096),
                          "judge": judge or "keyword"}
                job_id = jobs.submit("fsour", params, session=b["client"])
                b["jobs"] = b["jobs"] + [job_id]
                gr.Info("Search queued: it runs in the background.")
                return job_view(b, job_id)

        s_start.click(start_search, [prompt, s_target, s_n, s_thr, s_iters, s_seed, s_engine,
                                     s_judge, max_new, browser], job_outputs, **FREE, **UI)

        def poll(b, job_id):
            with user_errors("Search status"):
                return job_view(ensure_client(b), job_id)

        timer.tick(poll, [browser, s_jobs], job_outputs, show_progress="hidden", **FREE, **UI)
        s_jobs.input(poll, [browser, s_jobs], job_outputs, **FREE, **UI)

        def stop(b, job_id):
            with user_errors("Stop"):
                if not job_id:
                    raise gr.Error("No search selected.", print_exception=False)
                ctx.require_jobs().cancel(job_id)
                return job_view(ensure_client(b), job_id)

        def resume(b, job_id):
            with user_errors("Resume"):
                if not job_id:
                    raise gr.Error("No search selected.", print_exception=False)
                ctx.require_jobs().resume(job_id)
                return job_view(ensure_client(b), job_id)

        s_stop.click(stop, [browser, s_jobs], job_outputs, **FREE, **UI)
        s_resume.click(resume, [browser, s_jobs], job_outputs, **FREE, **UI)

        def open_in_library(job_id):
            with user_errors("Open"):
                if not job_id:
                    raise gr.Error("No search selected.", print_exception=False)
                st = ctx.job_status(job_id)
                if st.get("route_id") is None:
                    raise gr.Error("This search has not saved a route (yet).",
                                   print_exception=False)
                return st["route_id"], gr.Tabs(selected="library"), list_table("any", "", "any", "any")

        # ============================================================ callbacks: library
        def list_table(model_f, text, success, source):
            with user_errors("Route library"):
                items = ctx.store.list_routes(
                    model=None if model_f in (None, "", "any") else model_f,
                    text=text or None,
                    success={"yes": True, "no": False}.get(success),
                    source=None if source in (None, "", "any") else source)
                return routes_frame(items)

        def refresh(model_f, text, success, source):
            df = list_table(model_f, text, success, source)
            models = sorted({r.model for r in ctx.store.list_routes(limit=2000) if r.model})
            return df, gr.Dropdown(choices=["any"] + models, value=model_f or "any")

        filters = [f_model, f_text, f_success, f_source]
        for ev in (f_btn.click, f_text.submit, f_success.input, f_source.input, f_model.input,
                   lib_tab.select):
            ev(refresh, filters, [table, f_model], **FREE, **UI)

        s_open.click(open_in_library, [s_jobs], [l_id, tabs, table], **FREE, **UI)

        def pick_row(df, evt: gr.SelectData):
            try:
                row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
                return int(df.iloc[row]["id"])
            except Exception:  # noqa: BLE001 - clicking a header etc.
                return gr.skip()

        table.select(pick_row, [table], [l_id], **FREE, **UI)

        def stored(route_id):
            return ctx.store.get_route(_int(route_id, "route id", 1))

        @gpu(60)
        def replay_ui(route_id, other_prompt, max_new_v):
            with user_errors("Replay"):
                moe = ctx.require()
                sr = stored(route_id)
                p = other_prompt if (other_prompt or "").strip() else sr.prompt
                _need_prompt(p)
                n = _int(max_new_v, "max new tokens", 0, 4096)
                for text, tr in stream_trace(moe, p, n, sr.route):
                    if tr is None:
                        yield text, gr.skip(), gr.skip()
                    else:
                        edits = sr.route.to_dict()["edits"]
                        md = (f"Route **#{sr.id}** ({sr.n_edits} edits, {sr.source}, model "
                              f"`{sr.model}`) on "
                              f"{'its own prompt' if p == sr.prompt else 'another prompt'} · "
                              f"keyword judge: **{_verdict(p, text)}**")
                        if sr.model and sr.model != moe.name:
                            md += (f"  \n⚠ saved for `{sr.model}`, replayed on "
                                   f"`{moe.name}`")
                        yield text, md, plots.heatmap(tr, "expert", edits=edits,
                                                      title="Replayed routing")

        l_replay.click(replay_ui, [l_id, l_prompt, max_new], [l_answer, l_info, l_heat],
                       **MODEL_SLOT, **UI)

        def load_into_inspect(route_id):
            with user_errors("Load route"):
                sr = stored(route_id)
                edits = sr.route.to_dict()["edits"]
                toks = ctx.prompt_tokens(sr.prompt) if sr.prompt and ctx.moe else None
                gr.Info(f"Route #{sr.id} loaded as pending edits: press Generate, then Re-run.")
                return (sr.prompt or gr.skip(), edits,
                        edits_box(edits, toks),
                        gr.Tabs(selected="inspect"))

        l_load.click(load_into_inspect, [l_id], [prompt, st_edits, edit_list, tabs], **FREE, **UI)

        @gpu(120)
        def compare(a_id, b_id, other_prompt, max_new_v):
            with user_errors("Compare"):
                from .tracer import trace
                moe = ctx.require()
                ra, rb = stored(a_id), stored(b_id)
                n = _int(max_new_v, "max new tokens", 0, 4096)
                pa = other_prompt if (other_prompt or "").strip() else ra.prompt
                pb = other_prompt if (other_prompt or "").strip() else rb.prompt
                ta = trace(moe, _need_prompt(pa), max_new_tokens=n, route=ra.route)
                tb = trace(moe, _need_prompt(pb), max_new_tokens=n, route=rb.route)
                names = (f"#{ra.id}", f"#{rb.id}")
                E = max(max(ta.num_experts), 1)
                if pa != pb:
                    gr.Warning("The two routes have different prompts: the diff compares "
                               "token positions, not the same tokens.")
                return (ta.completion, tb.completion, plots.diff_heatmap(ta, tb, names),
                        plots.overlap_figure(ra.route, rb.route, ta.moe_layers, E, names))

        c_btn.click(compare, [c_a, c_b, c_prompt, max_new],
                    [c_ans_a, c_ans_b, c_diff, c_overlap], **MODEL_SLOT, **UI)

        def export(route_id):
            with user_errors("Export"):
                sr = stored(route_id)
                path = ctx.store.export_route(sr.id)
                out = Path(tempfile.mkdtemp(prefix="sse-export-")) / path.name
                shutil.copyfile(path, out)
                return str(out)

        x_btn.click(export, [l_id], [x_file], **FREE, **UI)

        def do_import(file_path, text, *filt):
            with user_errors("Import"):
                from .store import MAX_IMPORT_BYTES
                if file_path:
                    p = Path(file_path)
                    if p.stat().st_size > MAX_IMPORT_BYTES:
                        raise gr.Error("That file is too large to be a route.",
                                       print_exception=False)
                    payload = p.read_bytes()
                elif (text or "").strip():
                    payload = text
                else:
                    raise gr.Error("Choose a route JSON file or paste route JSON.",
                                   print_exception=False)
                rid = ctx.store.import_route(payload)
                gr.Info(f"Imported as route #{rid}.")
                return rid, None, list_table(*filt)

        i_btn.click(do_import, [i_file, i_text] + filters, [l_id, i_file, table], **FREE, **UI)

        def delete(route_id, *filt):
            with user_errors("Delete"):
                sr = stored(route_id)
                ctx.store.delete_route(sr.id)
                gr.Info(f"Deleted route #{sr.id}.")
                return None, list_table(*filt)

        d_btn.click(delete, [l_id] + filters, [l_id, table], **FREE, **UI)

        # ============================================================ callbacks: model
        def load_new(name, progress=gr.Progress(track_tqdm=True)):
            with user_errors("Load model"):
                label = (name or "").strip() or "the demo model"
                progress(0, desc=f"Loading {label}…")
                moe = load_model((name or "").strip() or None, device=ctx.device)
                progress(0.95, desc="Starting the job manager…")
                ctx.set_model(moe)
                md, df = model_card(ctx)
                gr.Info(f"Loaded {moe.name}.")
                return (f"Loaded `{moe.name}`.", md, df, model_header(ctx),
                        None, None, [], gr.CheckboxGroup(choices=[], value=[]), None, "", "")

        m_btn.click(load_new, [m_name],
                    [m_status, m_card, m_layers, header, st_base, st_alt, st_edits, edit_list,
                     st_sel, base_ans, alt_ans], **MODEL_SLOT, **UI)

        # ============================================================ page load
        def on_load(b, *filt):
            b = ensure_client(b)
            out = job_view(b, None)
            df, dd = refresh(*filt)
            return (*out, df, dd, model_header(ctx), *model_card(ctx))

        demo.load(on_load, [browser] + filters,
                  job_outputs + [table, f_model, header, m_card, m_layers], **FREE, **UI)

        # ============================================================ API endpoints
        _api(ctx)
    return demo


def _api(ctx: Explorer) -> None:
    """Named endpoints: each returns the matching CLI ``--json`` object."""
    from .commands import trace_json

    def _route_arg(route: str) -> Route | None:
        return Route.from_json(route) if (route or "").strip() else None

    @gpu(60)
    def trace(prompt: str, max_new_tokens: int = 32, route: str = "") -> dict:
        """Record the experts every token uses (optionally under a route JSON); the CLI
        `trace --json` object: tokens, prompt_tokens, moe_layers, experts, weights..."""
        with user_errors("trace"):
            from .tracer import trace as run
            moe = ctx.require()
            tr = run(moe, _need_prompt(prompt), max_new_tokens=_int(max_new_tokens,
                     "max_new_tokens", 0, 4096), route=_route_arg(route), record_logits=False)
            return trace_json(moe, tr)

    @gpu(60)
    def generate(prompt: str, max_new_tokens: int = 48, route: str = "") -> dict:
        """Greedy generation, streamed: {"model", "prompt", "completion" (text so far),
        "route", "done"}; the last message has done = true."""
        with user_errors("generate"):
            moe = ctx.require()
            r = _route_arg(route)
            n = _int(max_new_tokens, "max_new_tokens", 0, 4096)
            if r is not None:
                r.validate(moe.info, num_tokens=len(moe.encode(_need_prompt(prompt))))
            for text, tr in stream_trace(moe, _need_prompt(prompt), n, r):
                yield {"model": moe.name, "prompt": prompt, "completion": text,
                       "route": r.to_dict() if r is not None else None, "done": tr is not None}

    @gpu(180)
    def rosais(prompt: str, samples: int = 32, top: int = 5, mask_ratio: float = 0.5,
               seed: int = 0, max_new_tokens: int = 48) -> dict:
        """RoSais per MoE layer and the top-L masked answer; the CLI `rosais --json` object."""
        with user_errors("rosais"):
            from .rosais import rosais as run
            moe = ctx.require()
            return run(moe, _need_prompt(prompt), samples=_int(samples, "samples", 1),
                       top=_int(top, "top", 0), mask_ratio=float(mask_ratio),
                       seed=_int(seed, "seed"),
                       max_new_tokens=_int(max_new_tokens, "max_new_tokens", 0, 4096)).to_dict()

    def search_start(prompt: str, target: str = DEFAULT_TARGET, candidates: int = 10,
                     threshold: float = DEFAULT_THRESHOLD, max_iters: int = 5, seed: int = 0,
                     engine: str = "fast", max_new_tokens: int = 48,
                     judge: str = "keyword") -> dict:
        """Queue an F-SOUR search in the background; returns {"job_id": ...}. `threshold`
        is a log-probability (default log 0.8)."""
        with user_errors("search_start"):
            jobs = ctx.require_jobs()
            if not (target or "").strip():
                raise gr.Error("the target is empty", print_exception=False)
            if not isinstance(threshold, (int, float)) or threshold > 0:
                raise gr.Error("the threshold is a log-probability: it must be <= 0",
                               print_exception=False)
            from .judge import get_judge
            get_judge(judge)  # unknown or unconfigured judges fail here, with their message
            params = {"prompt": _need_prompt(prompt), "target": target,
                      "candidates": candidates, "threshold": threshold,
                      "max_iters": max_iters, "seed": seed, "engine": engine,
                      "max_new_tokens": max_new_tokens, "judge": judge}
            return {"job_id": jobs.submit("fsour", params, session="api")}

    def search_status(job_id: str) -> dict:
        """A search's status: id, kind, status, params, progress, result (the CLI
        `fsour --json` object once done), error, route_id, created, updated."""
        with user_errors("search_status"):
            return ctx.job_status(job_id)

    def search_cancel(job_id: str) -> dict:
        """Cancel a queued or running search (resumable); returns its status."""
        with user_errors("search_cancel"):
            return ctx.require_jobs().cancel(job_id)

    def routes(model: str = "", text: str = "", success: str = "", source: str = "",
               limit: int = 500) -> list:
        """Routes in the library (newest first), filtered by model, text, success
        ("true"/"false") and source; each a StoredRoute dict."""
        with user_errors("routes"):
            ok = {"true": True, "yes": True, "1": True, "false": False, "no": False,
                  "0": False}.get(str(success).strip().lower())
            return [r.to_dict() for r in ctx.store.list_routes(
                model=model or None, text=text or None, success=ok, source=source or None,
                limit=_int(limit, "limit", 1, 100_000))]

    @gpu(60)
    def replay(route_id: int = 0, prompt: str = "", route: str = "",
               max_new_tokens: int = 48) -> dict:
        """Replay a stored route (route_id) or a route JSON on its prompt or `prompt`;
        the CLI `trace --json` object of the replayed run."""
        with user_errors("replay"):
            from .tracer import trace as run
            moe = ctx.require()
            if (route or "").strip():
                r = Route.from_json(route)
                p = prompt if (prompt or "").strip() else r.info.get("prompt")
            else:
                sr = ctx.store.get_route(_int(route_id, "route_id", 1))
                r, p = sr.route, (prompt if (prompt or "").strip() else sr.prompt)
            tr = run(moe, _need_prompt(p), max_new_tokens=_int(max_new_tokens,
                     "max_new_tokens", 0, 4096), route=r, record_logits=False)
            return trace_json(moe, tr)

    for fn, slot in ((trace, MODEL_SLOT), (generate, MODEL_SLOT), (rosais, MODEL_SLOT),
                     (search_start, FREE), (search_status, FREE), (search_cancel, FREE),
                     (routes, FREE), (replay, MODEL_SLOT)):
        gr.api(fn, api_name=fn.__name__, **slot)
