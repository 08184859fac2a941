"""The model host: the one model of this process, the route library and the background job
manager, with the settings they run under. Loading another model swaps all three safely
(running searches stop, resumable)."""

from __future__ import annotations

import html
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr

from explorer.app.gpu import gpu_window
from explorer.core.errors import one_line
from explorer.core.model import ModelLoadError, MoEModel, load_model

if TYPE_CHECKING:
    from explorer.app.hosted import HostedPolicy
    from explorer.core.prompt import Prompt
    from explorer.settings import Settings

log = logging.getLogger("explorer.app")


class ModelHost:
    """The one model of this process (``moe``; None with ``error`` saying why when it could
    not be loaded), the route ``store`` in ``data_dir`` and the job manager ``jobs``.
    ``policy`` sizes the job caps (hosted mode: its per-session and per-address caps) and,
    hosted, makes a finished search's route its owner's;
    ``settings`` give the device, quantization, prompt cap, experts kernel, judge options,
    the engine's tuning (in force in the job threads) and ZeroGPU's window length."""

    def __init__(self, model: str | MoEModel | None, *, data_dir: Path, device: str,
                 settings: Settings, policy: HostedPolicy):
        from explorer.storage.library import DB_NAME, RouteStore
        self.settings, self.device, self.policy = settings, device, policy
        self.data_dir = Path(data_dir)
        self.store = RouteStore(self.data_dir / DB_NAME)
        self.moe: MoEModel | None = None
        self.jobs = None
        self.error: str | None = None
        self._swap = threading.Lock()
        self._tokens: dict[tuple, list[str]] = {}
        self._hardened: tuple[str, MoEModel] | None = None
        try:
            self.set_model(model if isinstance(model, MoEModel) else self.load_model(model))
        except ModelLoadError as exc:
            self.error = one_line(exc)
            log.warning("no model loaded: %s", self.error)

    def load_model(self, name: str | None) -> MoEModel:
        """Load ``name`` on this host's device with its settings (quantization, prompt cap,
        kernel)."""
        return load_model(name, device=self.device, quantize=self.settings.quantize,
                          max_prompt_tokens=self.settings.max_prompt_tokens,
                          experts_impl=self.settings.experts_impl)

    def hardened(self, path) -> MoEModel:
        """The hardened checkpoint at ``path`` (the Defense view's ``hardened`` mode), loaded
        with this host's settings on first use and kept (one at a time)."""
        key = str(path)
        with self._swap:
            if self._hardened is None or self._hardened[0] != key:
                self._hardened = (key, self.load_model(key))
            return self._hardened[1]

    def set_model(self, moe: MoEModel) -> None:
        """Make ``moe`` the model; a running search is stopped (resumable)."""
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
                window=gpu_window(seconds), chunk_seconds=seconds,
                tuning=self.tuning, owned_routes=hosted)
            self._tokens.clear()

    @property
    def tuning(self):
        """The engines' tuning for this app's work: the settings', and on a shared
        (hosted) server batches of at most :data:`~explorer.engine.batching.SHARED_ROWS`
        rows, so that requests take short turns on the model."""
        import dataclasses

        from explorer.engine.batching import SHARED_ROWS
        t = self.settings.tuning
        if self.policy.enabled and t.max_rows is None:
            t = dataclasses.replace(t, max_rows=SHARED_ROWS)
        return t

    def require(self) -> MoEModel:
        """The model, or a one-line "No model is loaded" error."""
        if self.moe is None:
            raise gr.Error("No model is loaded" + (f" ({html.escape(self.error)})"
                                                   if self.error else "")
                           + ". Load one in the Model tab.", print_exception=False)
        return self.moe

    def require_jobs(self):
        """The job manager (a model must be loaded)."""
        self.require()
        return self.jobs

    def judge(self, name: str | None):
        """The judge ``name`` (default keyword), set up from the settings."""
        from explorer.judges import get_judge
        name = name or "keyword"
        return get_judge(name, **self.settings.judge_options(name))

    def usable_judges(self) -> list[str]:
        """The judges users may pick that can be set up here (the rubric judge needs its
        URL in the settings, the classifier a model path)."""
        from explorer.judges import list_judges
        out = []
        for name in list_judges():
            try:
                self.judge(name)
            except Exception:  # noqa: BLE001 - not configured on this server
                continue
            out.append(name)
        return out or ["keyword"]

    def token_strings(self, prompt: Prompt) -> list[str]:
        """A prepared prompt's tokens as text (remembered per model and prompt)."""
        moe = self.require()
        key = (moe.name, prompt.system or "", prompt.thinking, prompt.text)
        if key not in self._tokens:
            if len(self._tokens) > 256:
                self._tokens.clear()
            self._tokens[key] = moe.token_strings(list(prompt.ids))
        return self._tokens[key]


def data_folder(data_dir: str | os.PathLike | None, settings: Settings) -> Path:
    """The route library's folder: ``data_dir``, else the settings'
    (:func:`explorer.storage.library.default_data_dir`)."""
    from explorer.storage.library import default_data_dir
    return Path(data_dir) if data_dir else default_data_dir(settings.data_dir)
