"""The app's process-wide context: :class:`Explorer` holds the one model of this process,
the route store, the background job manager, the hosted-mode policy and the settings;
every tab and endpoint receives it (``ctx``) and calls the library through it."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import hmac
import html
import os
import re
import secrets
import threading
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from explorer.app.common import (
    gpu_window,
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
from explorer.core.defaults import DEFAULT_TARGET
from explorer.core.model import ModelLoadError, MoEModel, load_model
from explorer.core.route import Route, RouteError
from explorer.settings import Settings
from explorer.storage.library import StoreError

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
        self._secret: bytes | None = None
        try:
            self.set_model(model if isinstance(model, MoEModel) else self.load_model(model))
        except ModelLoadError as exc:
            self.error = one_line(exc)
            log.warning("no model loaded: %s", self.error)

    def load_model(self, name: str | None) -> MoEModel:
        """Load ``name`` on this app's device with its settings (quantization, prompt cap,
        kernel)."""
        return load_model(name, device=self.device, quantize=self.settings.quantize,
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
            hosted = self.policy.enabled
            seconds = self.settings.gpu_chunk_seconds  # ZeroGPU: searches in GPU windows
            self.jobs = JobManager(
                moe, self.store, judge_options=self.settings.judge_options,
                max_queued_per_session=self.policy.max_jobs_per_session if hosted else 4,
                max_queued_per_group=self.policy.max_jobs_per_address if hosted else 8,
                window=gpu_window(seconds), chunk_seconds=seconds)
            self._tokens.clear()

    def require(self) -> MoEModel:
        if self.moe is None:
            raise gr.Error("No model is loaded" + (f" ({html.escape(self.error)})" if self.error else "")
                           + ". Load one in the Model tab.", print_exception=False)
        return self.moe

    def require_jobs(self):
        self.require()
        return self.jobs

    # -- ownership: jobs belong to a key derived here, never sent to anyone ------------------
    def owner(self, request: Any = None, client: str | None = None) -> str:
        """The owner key of a caller: an HMAC, with a secret only this server knows, of the
        browser's client id (the UI; kept in its signed BrowserState) or of the Gradio
        session (API clients). It is stored with the caller's jobs and never shown."""
        ident = f"ui:{client}" if client else f"api:{session_of(request, 'anonymous')}"
        return "o:" + hmac.new(self._owner_secret(), ident.encode("utf-8"),
                               hashlib.sha256).hexdigest()[:32]

    def _owner_secret(self) -> bytes:
        if self._secret is None:
            self._secret = hmac.new(self.browser_secret().encode(), b"job owners",
                                    hashlib.sha256).digest()
        return self._secret

    def owned_job(self, job_id: Any, owner: str):
        """The stored job ``job_id`` if ``owner`` owns it; otherwise the same "no job"
        error as for an unknown id (so ids cannot be probed)."""
        if not isinstance(job_id, str) or not re.fullmatch(r"[0-9a-f]{32}", job_id):
            raise StoreError("no job with that id")
        try:
            rec = self.store.get_job(job_id)
        except StoreError:
            rec = None
        if rec is None or not hmac.compare_digest(str(rec.session or ""), owner):
            raise StoreError("no job with that id")
        return rec

    def job_status(self, job_id: str, owner: str) -> dict:
        """A job's status dict for its ``owner`` (answers redacted as hosted mode asks; no
        owner key in it)."""
        self.owned_job(job_id, owner)
        st = self.jobs.status(job_id) if self.jobs is not None else \
            self.store.get_job(job_id).to_dict()
        return self.shown_job(st)

    def prompt_tokens(self, prompt: str, system: str | None = None) -> list[str]:
        """The templated prompt's tokens as text (remembered per model, system prompt and
        prompt)."""
        moe = self.require()
        key = (moe.name, system or "", prompt)
        if key not in self._tokens:
            if len(self._tokens) > 256:
                self._tokens.clear()
            self._tokens[key] = moe.token_strings(moe.encode(prompt, system))
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

    # -- hosted mode: checks (PolicyError is an InputError: user_errors shows one line) ----
    def admit(self, request: Any = None, cost: float = 1.0) -> None:
        """The one admission of every door that runs the model or queues work: count
        ``cost`` requests against the caller's session, its client address and the whole
        server (hosted mode; see :meth:`HostedPolicy.check_rate`)."""
        self.policy.check_rate(session_of(request), cost, self.policy.address_of(request))

    def check_budget(self, passes: int, what: str) -> None:
        """Refuse (hosted mode) work of more than the search budget in forward passes."""
        if self.policy.enabled and passes > self.policy.max_search_budget:
            raise PolicyError(f"{what} would run about {passes} forward passes, above this "
                              f"server's limit of {self.policy.max_search_budget}; ask for "
                              f"less")

    def check_prompt(self, prompt: Any, system: Any = None) -> int:
        """The prompt's token count (templated with the ``system`` prompt, see
        :meth:`system`); refuses empty, too long (hosted caps) prompts."""
        need_prompt(prompt)
        return self.policy.check_prompt(self.require(), prompt, self.system(system))

    @staticmethod
    def system(value: Any) -> str | None:
        """A system prompt from the UI or an endpoint: None for none (None, empty or blank
        text); ``InputError`` (a one-line refusal) for anything but text, too long text or
        lone surrogates."""
        from explorer.core.chat import check_system
        return check_system(value)

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

    def check_search(self, params: dict, session: str) -> dict:
        """The F-SOUR job ``params`` checked and normalised before anything is queued: the
        bounds of every mode (:func:`explorer.storage.jobs.validate_params`; the target's
        tokens), then the hosted caps (prompt, budget over prompt and target tokens, judge).
        The job caps (per ``session``, per address, in all) are the job manager's, which
        :meth:`set_model` sizes from the policy."""
        from explorer.core.defaults import MAX_TARGET_TOKENS
        from explorer.storage.jobs import validate_params
        params = validate_params("fsour", params)
        positions = self.check_prompt(params.get("prompt"), params.get("system"))
        target = params.get("target") or DEFAULT_TARGET
        n_target = len(self.require().tokenizer(target, add_special_tokens=False)["input_ids"])
        if not 0 < n_target <= MAX_TARGET_TOKENS:
            raise PolicyError(f"the target has {n_target} tokens; it needs 1 to "
                              f"{MAX_TARGET_TOKENS}")
        self.policy.check_search(params, positions, target_tokens=n_target)
        return params

    def submit_search(self, params: dict, owner: str, request: Any = None) -> str:
        """Check (:meth:`check_search`), admit (:meth:`admit`) and queue an F-SOUR job
        owned by ``owner``; returns its id."""
        jobs = self.require_jobs()
        params = self.check_search(params, owner)
        self.admit(request)
        return jobs.submit("fsour", params, session=owner,
                           group=self.policy.address_of(request) if self.policy.enabled else None)

    def cancel_job(self, job_id: Any, owner: str) -> dict:
        """Cancel ``owner``'s job ``job_id``; its status."""
        self.owned_job(job_id, owner)
        self.require_jobs().cancel(job_id)
        return self.job_status(job_id, owner)

    def resume_job(self, job_id: Any, owner: str, request: Any = None) -> dict:
        """Queue ``owner``'s interrupted or cancelled job again, checked and admitted like a
        new one (it counts against the same caps); its status."""
        rec = self.owned_job(job_id, owner)
        jobs = self.require_jobs()
        self.check_search(dict(rec.params), owner)
        self.admit(request)
        jobs.resume(job_id, group=self.policy.address_of(request) if self.policy.enabled
                    else None)
        return self.job_status(job_id, owner)

    def check_route(self, route: Route | None, num_tokens: int | None = None,
                    system: str | None = None) -> str | None:
        """Validate ``route`` against the model (and a prompt of ``num_tokens``, as
        :meth:`check_prompt` counted them, templated with ``system``); in hosted mode also
        refuse routes with more edits than two per (MoE layer, prompt token) cell. Returns
        the provenance note (route made for another model, chat template or system prompt)
        when the route still fits, else None."""
        if route is None:
            return
        moe = self.require()
        n = num_tokens
        if self.policy.enabled:
            cap = max(64, 2 * len(moe.moe_layers) * (n or 1))
            if len(route.edits) > cap:
                raise PolicyError(f"the route has {len(route.edits)} edits; this server "
                                  f"allows {cap} for this prompt")
        return route.check_fits(moe.info, num_tokens=n, system=self.system(system))  # as the CLI

    def check_import(self, route: Route) -> None:
        """An imported route must name its prompt and fit the loaded model and that prompt
        (the CLI's checks and messages); a route without a model is taken as made for the
        loaded one."""
        moe = self.require()
        prompt = route.info.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise RouteError('the route names no prompt (its "info" has no "prompt"): its '
                             "positions refer to one prompt's tokens, so it cannot be "
                             "replayed; add the prompt, or load the edits in Inspect")
        self.check_route(route, self.check_prompt(prompt, route.system), route.system)
        if not isinstance(route.info.get("model"), str) or not route.info["model"].strip():
            route.info["model"] = moe.name

    def check_swap(self, wanted: str) -> None:
        """Hosted mode: a visitor may switch the one model only when the operator allowed
        other models (``--allow-model``), to another model than the loaded one, and while
        nobody's search is queued or running (a swap would interrupt them)."""
        from explorer.storage.library import ACTIVE_STATUSES
        if not self.policy.model_allowlist:
            raise PolicyError("loading models is turned off on this public server: the "
                              "operator chooses the model")
        current = self.moe
        if current is not None and (wanted == current.name or
                                    (wanted == "demo" and is_demo_model(current))):
            raise PolicyError(f"{wanted} is already loaded")
        if self.store.list_jobs(status=ACTIVE_STATUSES, limit=1):
            raise PolicyError("searches are running on the loaded model; try again when "
                              "they are done")

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

    def stream(self, prompt: str, max_new_tokens: int, route: Route | None = None,
               system: str | None = None) -> Iterator[tuple[str, Any]]:
        """:func:`stream_trace` on the app's model (the prompt templated with ``system``),
        with the text as :meth:`shown`."""
        for text, tr in stream_trace(self.require(), prompt, max_new_tokens, route,
                                     self.system(system)):
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

    def shown_route(self, d: dict) -> dict:
        """A stored route's dict as visitors see it: in hosted mode without the id of the
        job that saved it, and with its answer redacted."""
        d = dict(d)
        if isinstance(d.get("completion"), str):
            d["completion"] = self.shown(d.get("prompt") or "", d["completion"])
        if self.policy.enabled and isinstance(d.get("meta"), dict):
            d["meta"] = {k: v for k, v in d["meta"].items() if k not in ("job_id", "session")}
        return d

    def shown_job(self, st: dict) -> dict:
        """A job status dict with the answers in its result redacted (never its owner)."""
        st = {k: v for k, v in st.items() if k != "session"}
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


