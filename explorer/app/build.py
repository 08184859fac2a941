"""The Gradio app: layout and short callbacks (UI values -> library calls -> figures).

:func:`build_app` returns a ``gr.Blocks``; launch it with ``demo.queue().launch(
**launch_options(), ...)`` (Gradio 6 takes theme, css and head in ``launch``).

One model per process (:class:`Explorer`), shared by every browser session; everything
that belongs to one user (traces, pending edits, the selected cell, RoSais results) lives
in ``gr.State``, and the ids of their background searches in ``gr.BrowserState`` so a
refreshed tab (or a restarted app) finds them again. Every event that runs the model
shares one concurrency slot (``concurrency_id="model"``). Errors reach the user as
``gr.Error`` messages, never as tracebacks. A :class:`~explorer.app.hosted.HostedPolicy`
(hosted mode) is applied by every callback and endpoint; with it off, its checks pass.

The tabs live in their own modules: ``ui_tour`` (guided tour), ``ui_inspect`` (inspect &
re-route), ``ui_rosais``, ``ui_search``, ``ui_library``, ``ui_model``; the named API
endpoints in ``ui_api``; shared helpers in ``ui_common`` and ``ui_format``. An optional
``ui_research.research_tab(ctx)`` adds a research tab when that module is present.

Named API endpoints (see the app's "Use via API" page): ``trace``, ``generate``,
``rosais``, ``search_start``, ``search_status``, ``search_cancel``, ``routes``,
``replay``; each returns the same JSON object as the matching CLI ``--json`` command.
"""

from __future__ import annotations

import copy
import dataclasses
import html
import os
import secrets
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import gradio as gr

from explorer.app.api import register_api
from explorer.app.common import (
    FREE,
    MODE_CHOICES,
    MODEL_SLOT,
    UI,
    VIEWS,
    gpu,
    is_demo_model,
    keyword_verdict,
    log,
    need_prompt,
    one_line,
    route_of_edits,
    session_of,
    spaces,
    stream_trace,
    usable_judges,
    user_errors,
    verdict_text,
    whole_number,
)
from explorer.app.format import (
    cell_info,
    edit_choices,
    edit_label,
    edits_box,
    job_label,
    job_progress_md,
    job_result_md,
    model_card,
    model_header,
    routes_frame,
)
from explorer.app.hosted import HostedPolicy, PolicyError
from explorer.app.tabs.inspect import BRIDGE_JS
from explorer.core.defaults import DEFAULT_TARGET, DEFAULT_THRESHOLD
from explorer.core.model import ModelLoadError, MoEModel, load_model
from explorer.core.route import Route
from explorer.settings import Settings

__all__ = [  # re-exported: scripts and tests import these from explorer.app.build
    "BRIDGE_JS", "CSS", "DEFAULT_TARGET", "DEFAULT_THRESHOLD", "Explorer", "FREE",
    "HIDDEN_TOKEN", "MODEL_SLOT", "MODE_CHOICES", "UI", "VIEWS", "build_app", "cell_info",
    "edit_label", "edits_box", "gpu", "job_label", "job_progress_md", "job_result_md",
    "launch_options", "model_card", "model_header", "routes_frame", "spaces",
    "stream_trace", "usable_judges", "user_errors", "register_api", "edit_choices", "route_of_edits",
    "verdict_text"]

HIDDEN_TOKEN = "…"  # what a redacted generated token shows in heatmaps and trace JSON


# -- the process-wide context ---------------------------------------------------------------
class Explorer:
    """The one model of this process, the route store, the background job manager and the
    hosted-mode policy (off unless ``policy.enabled``)."""

    def __init__(self, model: str | MoEModel | None = None, data_dir: str | os.PathLike | None = None,
                 device: str = "auto", policy: HostedPolicy | None = None,
                 settings: Settings | None = None):
        from explorer.storage.library import DB_NAME, RouteStore, default_data_dir
        self.settings = settings if settings is not None else Settings()
        policy = policy if policy is not None else self.settings.policy
        self.policy = policy if policy is not None else HostedPolicy()
        self.data_dir = Path(data_dir) if data_dir else default_data_dir(self.settings.data_dir)
        self.store = RouteStore(self.data_dir / DB_NAME)
        self.device = device
        self.moe: MoEModel | None = None
        self.jobs = None
        self.error: str | None = None
        self._swap = threading.Lock()
        self._tokens: dict[tuple[str, str], list[str]] = {}
        try:
            self.set_model(model if isinstance(model, MoEModel) else self.load_model(model))
        except ModelLoadError as exc:
            self.error = one_line(exc)
            log.warning("no model loaded: %s", self.error)

    def load_model(self, name: str | None) -> MoEModel:
        """Load ``name`` on this app's device with its settings (prompt cap, kernel)."""
        return load_model(name, device=self.device,
                          max_prompt_tokens=self.settings.max_prompt_tokens,
                          experts_impl=self.settings.experts_impl)

    def judge(self, name: str | None):
        """The judge ``name`` (default keyword), set up from this app's settings."""
        from explorer.judges import get_judge
        name = name or "keyword"
        return get_judge(name, **self.settings.judge_options(name))

    def set_model(self, moe: MoEModel) -> None:
        """Make ``moe`` the model of the app; a running search is stopped (resumable)."""
        from explorer.storage.jobs import JobManager
        with self._swap:
            old = self.jobs
            if old is not None:
                old.shutdown(wait=True, timeout=30)
            self.moe, self.error = moe, None
            self.jobs = JobManager(moe, self.store, judge_options=self.settings.judge_options)
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
        """A job's status dict, with its answers redacted as hosted mode asks."""
        st = self.jobs.status(job_id) if self.jobs is not None else \
            self.store.get_job(job_id).to_dict()
        return self.shown_job(st)

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

    # -- hosted mode: checks (PolicyError is a ValueError: user_errors shows one line) -------
    def admit(self, request: Any = None) -> None:
        """Count one request against the session's rate limit (hosted mode)."""
        self.policy.check_rate(session_of(request))

    def check_prompt(self, prompt: Any) -> int:
        """The prompt's token count; refuses empty, too long (hosted caps) prompts."""
        need_prompt(prompt)
        return self.policy.check_prompt(self.require(), prompt)

    def new_tokens(self, value: Any, name: str = "max new tokens") -> int:
        """A generation length, within 0..4096 and the hosted cap."""
        return self.policy.check_generation(whole_number(value, name, 0, 4096))

    def check_rosais(self, samples: int) -> None:
        """RoSais runs ``samples`` forwards per MoE layer: hosted mode caps the total with
        the search budget."""
        moe = self.require()
        total = samples * len(moe.moe_layers)
        if self.policy.enabled and total > self.policy.max_search_budget:
            raise PolicyError(f"RoSais with {samples} masks x {len(moe.moe_layers)} layers = "
                              f"{total} forward passes is above this server's limit of "
                              f"{self.policy.max_search_budget}; use fewer masks")

    def check_search(self, params: dict, session: str) -> None:
        """Hosted caps of an F-SOUR job: prompt, budget, judge, jobs of ``session``."""
        from explorer.storage.library import ACTIVE_STATUSES
        positions = self.check_prompt(params.get("prompt"))
        self.policy.check_search(params, positions)
        if self.policy.enabled:
            active = self.store.list_jobs(session=session, status=ACTIVE_STATUSES,
                                          limit=self.policy.max_jobs_per_session + 1)
            self.policy.check_jobs(len(active))

    def check_model(self, name: str | None) -> str | None:
        """The model name to load ("demo" for the demo model), or PolicyError in hosted mode
        for local paths and hub ids off the allowlist."""
        return self.policy.check_model((name or "").strip() or None)

    # -- hosted mode: what users see of generated text ----------------------------------------
    def shown(self, prompt: str, text: str) -> str:
        """``text`` as this server shows it (first sentence only for a real model's harmful
        answer in hosted mode; unchanged otherwise)."""
        if not self.policy.enabled or not text or self.moe is None:
            return text
        return self.policy.redact(text, keyword_verdict(prompt or "", text),
                                  is_demo_model(self.moe))

    def stream(self, prompt: str, max_new_tokens: int, route: Route | None = None
               ) -> Iterator[tuple[str, Any]]:
        """:func:`stream_trace` on the app's model, with the text as :meth:`shown`."""
        for text, tr in stream_trace(self.require(), prompt, max_new_tokens, route):
            yield self.shown(prompt, text), tr

    def shown_trace(self, tr):
        """A trace for figures: generated tokens hidden when its answer is redacted."""
        if tr is None or not self.policy.enabled:
            return tr
        text = self.shown(tr.prompt, tr.completion)
        if text == tr.completion:
            return tr
        n = tr.prompt_tokens
        return dataclasses.replace(tr, tokens=tr.tokens[:n] + [HIDDEN_TOKEN] * (tr.num_tokens - n),
                                   completion=text)

    def shown_json(self, d: dict, prompt: str) -> dict:
        """A ``trace --json`` object with its answer (and generated tokens) redacted."""
        text = self.shown(prompt, d.get("completion") or "")
        if text == d.get("completion"):
            return d
        n = d["prompt_tokens"]
        return dict(d, completion=text,
                    tokens=d["tokens"][:n] + [HIDDEN_TOKEN] * (len(d["tokens"]) - n),
                    token_ids=d["token_ids"][:n] + [-1] * (len(d["token_ids"]) - n))

    def shown_job(self, st: dict) -> dict:
        """A job status dict with the answers in its result redacted."""
        res = st.get("result")
        if not self.policy.enabled or not isinstance(res, dict):
            return st
        prompt = (st.get("params") or {}).get("prompt") or res.get("prompt") or ""
        st = copy.deepcopy(st)
        res = st["result"]
        if res.get("completion"):
            res["completion"] = self.shown(prompt, res["completion"])
        for a in res.get("attempts") or []:
            if isinstance(a, dict) and a.get("completion"):
                a["completion"] = self.shown(prompt, a["completion"])
        return st


CSS = """
#route-heatmap, #usage-plot { min-height: 320px; }
.sse-bridge-msg { font-size: 0.85em; color: var(--body-text-color-subdued); }
#sse-header p { margin: 0; }
.sse-answer textarea { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
#pending-edits .wrap { max-height: 190px; overflow-y: auto; }
.sse-tour-step { border-left: 3px solid var(--color-accent); padding-left: 0.6em; }
"""


def launch_options() -> dict[str, Any]:
    """Keyword arguments for ``launch()`` (theme and css moved there in Gradio 6)."""
    return {"theme": gr.themes.Soft(primary_hue="indigo", secondary_hue="rose"), "css": CSS}


def _hosted_note(policy: HostedPolicy) -> str:
    if not policy.enabled:
        return ""
    return (f"*Hosted server: prompts up to {policy.max_prompt_tokens} tokens, answers up to "
            f"{policy.max_new_tokens} new tokens, searches up to {policy.max_search_budget:,} "
            f"candidate evaluations, {policy.max_jobs_per_session} searches at a time, "
            f"{policy.rate * 60:g} requests a minute.*")


# -- the app ---------------------------------------------------------------------------------
def build_app(model: str | MoEModel | None = None, *, data_dir: str | os.PathLike | None = None,
              device: str = "auto", policy: HostedPolicy | None = None,
              settings: Settings | None = None) -> gr.Blocks:
    """Build the explorer app on ``model`` (demo model by default; a hub id, local folder or
    a loaded :class:`MoEModel`). ``data_dir`` holds the route library (default: the
    settings' ``data_dir``, see :func:`explorer.storage.library.default_data_dir`);
    ``policy`` the hosted-mode limits (default: the settings' policy, else hosted mode off);
    ``settings`` (:class:`explorer.settings.Settings`, default: all defaults; ``app.py``
    reads them from the environment) the rest. If the model can't be loaded the app still
    starts and says why.
    """
    from explorer.app.tabs import inspect as ui_inspect
    from explorer.app.tabs import library as ui_library
    from explorer.app.tabs import model as ui_model
    from explorer.app.tabs import rosais as ui_rosais
    from explorer.app.tabs import search as ui_search
    from explorer.app.tabs import tour as ui_tour
    from explorer.evaluation.prompts import BENIGN_PROMPTS, HARMFUL_PROMPTS
    ctx = Explorer(model, data_dir=data_dir, device=device, policy=policy, settings=settings)
    policy = ctx.policy
    max_tokens = policy.max_new_tokens if policy.enabled else 256

    with gr.Blocks(title="Sparse Safety Explorer") as demo:
        demo.explorer = ctx  # for tests and scripts
        p = SimpleNamespace(ctx=ctx)  # the components the tabs share
        p.st_base = gr.State(None)    # RoutingTrace without edits
        p.st_alt = gr.State(None)     # RoutingTrace with the pending edits
        p.st_edits = gr.State([])     # pending edits: list of edit dicts
        p.st_sel = gr.State(None)     # {"layer", "position"}
        p.st_rosais = gr.State(None)  # RosaisResult.to_dict()
        p.browser = gr.BrowserState({"client": None, "jobs": []},
                                    storage_key="sse-explorer-jobs",
                                    secret=ctx.browser_secret())

        gr.Markdown("## Sparse Safety Explorer · unsafe routes in Mixture-of-Experts LLMs")
        p.header = gr.Markdown(model_header(ctx), elem_id="sse-header")
        if policy.enabled:
            gr.Markdown(_hosted_note(policy), elem_id="hosted-note")
        with gr.Row():
            p.prompt = gr.Textbox(label="Prompt (user message; the chat template is applied)",
                                  value=HARMFUL_PROMPTS[0], lines=2, scale=4,
                                  elem_id="prompt-box")
            with gr.Column(scale=1, min_width=220):
                p.max_new = gr.Slider(0, max_tokens, value=min(48, max_tokens), step=1,
                                      label="max new tokens (greedy)", elem_id="prompt-max-new")
                p.gen_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
        gr.Examples([[x] for x in HARMFUL_PROMPTS[:6] + BENIGN_PROMPTS[:3]], inputs=[p.prompt],
                    label="Example prompts")

        with gr.Tabs(elem_id="main-tabs") as p.tabs:
            ui_inspect.layout(p)
            ui_tour.layout(p)
            ui_rosais.layout(p)
            ui_search.layout(p)
            ui_library.layout(p)
            ui_model.layout(p)
            try:
                from explorer.app.tabs.research.tab import research_tab
            except ImportError as exc:  # optional; say so if it exists but is broken
                if getattr(exc, "name", None) != f"{__package__}.ui_research":
                    log.warning("the research tab is unavailable: %s", exc)
                research_tab = None
            if research_tab is not None:
                research_tab(ctx)

        for tab in (ui_inspect, ui_tour, ui_rosais, ui_search, ui_library, ui_model):
            tab.wire(ctx, p)

        def on_load(b, *filt):
            out = ui_search.job_view(ctx, ui_search.ensure_client(b), None)
            df, dd = ui_library.refresh(ctx, *filt)
            return (*out, df, dd, model_header(ctx), *model_card(ctx))

        demo.load(on_load, [p.browser] + p.filters,
                  p.job_outputs + [p.table, p.f_model, p.header, p.m_card, p.m_layers],
                  **FREE, **UI)
        register_api(ctx)
    return demo
