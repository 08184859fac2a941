"""The app's process-wide context: :class:`Explorer` holds the one model of this process,
the route store, the background job manager, the hosted-mode policy and the settings;
every tab and endpoint receives it (``ctx``) and calls the library through it."""

from __future__ import annotations

import copy
import dataclasses
import html
import os
import secrets
import threading
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from explorer.app.common import (
    is_demo_model,
    keyword_verdict,
    log,
    need_prompt,
    one_line,
    session_of,
    stream_trace,
    whole_number,
)
from explorer.app.hosted import HostedPolicy, PolicyError
from explorer.core.model import ModelLoadError, MoEModel, load_model
from explorer.core.route import Route
from explorer.settings import Settings

HIDDEN_TOKEN = "…"  # what a redacted generated token shows in heatmaps and trace JSON


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


