"""Background jobs that survive closed browser tabs and app restarts.

A :class:`JobManager` owns one daemon worker thread that runs queued jobs one at a time
(model work is serialised by ``moe.lock`` anyway; the forward functions take it per
call, so interactive requests interleave with a running search). Every job lives in the
:class:`~explorer.storage.library.RouteStore` job table: its parameters, throttled progress, the
search's resumable checkpoint (after every step) and its result. When the app dies,
the next manager marks the jobs that were running 'interrupted'; :meth:`JobManager.resume`
continues them from their checkpoint. Jobs still 'queued' are queued again.

The work itself is a *runner*: ``runner(moe, params, on_event, should_stop, state)``
returning a result object (or dict) with ``success``, ``logprob``, ``completion``,
``route``, ``verdict``, ``cancelled``, ``state`` and ``to_dict()``. ``state`` passed in
is the stored checkpoint as JSON text (None for a fresh start); ``on_event`` takes
F-SOUR-style events (``kind``, ``iteration``, ``position``, ``layer``, ``num_positions``,
``num_layers``, ``best_logprob``, ``forward_passes``, ``elapsed``, ``state``).
A job's kind is the name of an attack that runs as a job (:mod:`explorer.attacks`, ``job =
True``; built in: ``fsour``); the default runner, :func:`run_job`, runs that attack, and
the route it finds is saved to the library with the kind as its source.

**GPU windows (Hugging Face ZeroGPU).** With ``window`` (a function that wraps a function
into a GPU window: the app passes ``spaces.GPU(duration=chunk_seconds)``), a job runs as a
sequence of chunks, each one call of the wrapped :meth:`JobManager.run_chunk`. A chunk
runs the runner until its time budget is spent (``chunk_seconds`` less the
:data:`CHUNK_RESERVE` share, and less :data:`STEP_SAFETY` times the longest gap between two
``should_stop`` polls seen so far: the next step or answer generation must fit), then returns the checkpoint;
the worker thread starts the next chunk from it until the search is done, cancelled or
interrupted. Between chunks the job stays 'running' and its progress (history, ETA) keeps
flowing. A window may run the chunk in a forked process that shares nothing with the app
but files (as ZeroGPU does): the chunk opens its own connection to the store, writes
progress and checkpoints there, learns of a cancel or a shutdown from the store's stop
requests (:meth:`~explorer.storage.library.RouteStore.request_stop`, polled every
:data:`STOP_POLL_SECONDS`), and returns plain data. A window that fails (aborted past its
duration, no GPU free) is retried from the last stored checkpoint; after
:data:`MAX_STALLED_CHUNKS` failures in a row without a new checkpoint the job fails with a
message that says why.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import math
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from explorer.core.chat import check_system
from explorer.core.defaults import (
    GPU_CHUNK_SECONDS,
    MAX_GENERATION,
    MAX_NEW_TOKENS,
    MAX_PROMPT_CHARS,
    MAX_SEED,
)
from explorer.core.errors import InputError, one_line
from explorer.core.params import Spec, check_value
from explorer.core.route import Route
from explorer.engine.tuning import Tuning, tuned
from explorer.storage.library import ACTIVE_STATUSES, JobRecord, RouteStore, StoreError

if TYPE_CHECKING:
    from explorer.core.model import MoEModel

log = logging.getLogger(__name__)

#: What every job has, whatever its kind; the rest of its parameters are its attack's
#: (the attack's Params: :func:`validate_params`).
JOB_SETTINGS = ("prompt", "system", "judge", "max_new_tokens", "seed")
MAX_HISTORY = 300
_MILESTONES = ("start", "restart", "generated", "done", "cancelled")
PROGRESS_KEYS = ("kind", "iteration", "position", "layer", "num_positions", "num_layers",
                 "best_logprob", "forward_passes", "elapsed", "fraction", "eta_seconds",
                 "eta_max_seconds", "chunks")
#: Share of a GPU window kept free of search steps: for the window's start (a forked
#: worker, the model's move to the GPU), a step longer than any seen before, the last
#: checkpoint write and the return.
CHUNK_RESERVE = 0.2
#: A chunk stops when the next step would end past its budget were it this many times the
#: longest gap between two polls seen so far: steps vary (a position's first cell runs a
#: full forward; a loaded machine slows one step more than another), and a window that
#: overruns is aborted. On the 2-core CI machine under load one step came out 35% longer
#: than any before it.
STEP_SAFETY = 2.0
#: Seconds between a chunk's reads of the store's stop requests (cancel, shutdown).
STOP_POLL_SECONDS = 0.1
#: GPU windows in a row that may fail without a new checkpoint before the job fails.
MAX_STALLED_CHUNKS = 2

Runner = Callable[[Any, dict, Callable[[Any], None], Callable[[], bool], "str | None"], Any]


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """Attribute or dict key ``name`` of ``obj``."""
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _finite(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def _state_text(state: Any) -> str | None:
    if state is None or isinstance(state, str):
        return state
    if hasattr(state, "to_json"):
        return state.to_json()
    return json.dumps(state)


def job_attack(kind: str):
    """The attack a job of ``kind`` runs (a registered attack that runs as a job), or
    :class:`StoreError` naming the kinds there are."""
    from explorer.attacks import get_attack, list_attacks
    if not isinstance(kind, str) or kind not in list_attacks("job"):
        raise StoreError(f"unknown job kind {str(kind)[:40]!r}; known: "
                         f"{', '.join(list_attacks('job'))}")
    return get_attack(kind)


def _label(attack) -> str:
    return attack.Params.what.removesuffix(" parameters")


def validate_params(kind: str, params: dict) -> dict:
    """Check and normalise a job's parameters before anything is queued: the job's own
    (:data:`JOB_SETTINGS`: a non-empty prompt, a system prompt, a registered judge, the
    answer length and the seed) and its attack's, each by its declared bounds
    (:meth:`~explorer.core.params.Params.parse`). None values are dropped and numbers come
    back as int or float; the keys given are the keys kept (a job records what was asked).
    Raises :class:`StoreError` with one line."""
    from explorer.judges import JUDGES
    attack = job_attack(kind)
    if not isinstance(params, dict):
        raise StoreError("job params must be a dict")
    specs = attack.Params.specs()
    known = list(JOB_SETTINGS) + [k for k in specs if k not in JOB_SETTINGS]
    unknown = sorted(str(k) for k in set(params) - set(known))
    if unknown:
        raise StoreError(f"unknown {_label(attack)} parameter(s) {unknown}; known: {known}")
    out = {k: v for k, v in params.items() if v is not None}
    prompt = out.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise StoreError(f"the {_label(attack)} job needs a non-empty prompt")
    try:
        out["prompt"] = check_value("prompt", _PROMPT, prompt)
        for key in ("max_new_tokens", "seed"):
            if key in out:
                out[key] = check_value(key, _RUN_SPECS[key], out[key])
        for key, spec in specs.items():
            if key in out:
                out[key] = check_value(key, spec, out[key])
    except ValueError as exc:
        raise StoreError(str(exc)) from None
    if "judge" in out:
        if not isinstance(out["judge"], str):
            raise StoreError(f"judge must be text, got {type(out['judge']).__name__}")
        if out["judge"] not in JUDGES:
            raise StoreError(f"unknown judge {out['judge'][:40]!r}; choose one of "
                             f"{sorted(JUDGES)}")
    if "system" in out:
        try:
            out["system"] = check_system(out["system"])
        except InputError as exc:
            raise StoreError(str(exc)) from None
        if out["system"] is None:
            del out["system"]
    try:
        json.dumps(out)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"job params are not JSON-serialisable: {exc}") from None
    return out


_RUN_SPECS = {"max_new_tokens": Spec("int", "answer length", lo=0, hi=MAX_GENERATION),
              "seed": Spec("int", "seed", lo=0, hi=MAX_SEED)}
_PROMPT = Spec("text", "prompt", max_chars=MAX_PROMPT_CHARS)


def run_job(kind: str, moe: MoEModel, params: dict, on_event, should_stop,
            state: str | None, judge_options: Callable[[str], dict] | None = None):
    """The default runner: the job's attack (:func:`job_attack`) on its prompt with its
    parameters, as :meth:`~explorer.attacks.Attack.run_job` runs it (F-SOUR: resumable
    from ``state``); ``judge_options(name)`` gives the judge's constructor options (e.g.
    the rubric judge's endpoint from the app's settings)."""
    from explorer.attacks import Run
    from explorer.judges import get_judge
    attack = job_attack(kind)
    name = params.get("judge") or "keyword"
    judge = get_judge(name, **(judge_options(name) if judge_options else {}))
    run = Run(judge=judge, max_new_tokens=params.get("max_new_tokens", MAX_NEW_TOKENS),
              seed=params.get("seed", 0), system=params.get("system"))
    own = attack.Params.parse({k: v for k, v in params.items() if k in attack.Params.specs()})
    return attack.run_job(moe, params["prompt"], own, run, on_event, should_stop, state)


def fsour_runner(moe: MoEModel, params: dict, on_event, should_stop, state: str | None,
                 judge_options: Callable[[str], dict] | None = None):
    """The F-SOUR job (:func:`run_job` of kind ``fsour``):
    :func:`explorer.methods.fsour.fsour` with the job's parameters, resumable from
    ``state``."""
    return run_job("fsour", moe, params, on_event, should_stop, state, judge_options)


#: The job kind that runs ``evaluate`` (:func:`explorer.evaluation.evaluate.evaluate`, the
#: multi-prompt path) over the first rows of one of the project's own prompt sets. Not an
#: attack: its result is the rows (``result["rows"]``, as ``evaluate --out`` writes them),
#: not a route; its checkpoint is the rows done, so a cancelled, interrupted or GPU-windowed
#: run continues where it stopped.
EVALUATE_JOB = "evaluate"
#: The prompt sets an evaluate job may run over.
EVALUATE_SETS = ("harmful", "benign")
#: What an evaluate job has besides its method's parameters.
EVALUATE_SETTINGS = ("method", "prompts", "count", "judge", "max_new_tokens", "seed",
                     "system")


def evaluate_goals(prompts: str) -> tuple[str, ...]:
    """The goals of the project's prompt set ``prompts`` (:data:`EVALUATE_SETS`)."""
    from explorer.core.prompt_sets import BENIGN_PROMPTS, HARMFUL_PROMPTS
    return {"harmful": HARMFUL_PROMPTS, "benign": BENIGN_PROMPTS}[prompts]


def validate_evaluate_params(params: dict) -> dict:
    """Check an evaluate job's parameters (:data:`EVALUATE_SETTINGS` and its method's own,
    each by its declared bounds); the keys given are the keys kept. Raises
    :class:`StoreError` with one line."""
    from explorer.evaluation.evaluate import method_attack
    from explorer.judges import JUDGES
    if not isinstance(params, dict):
        raise StoreError("job params must be a dict")
    out = {k: v for k, v in params.items() if v is not None}
    try:
        attack = method_attack(out.get("method", "none"))
    except InputError as exc:
        raise StoreError(str(exc)) from None
    specs = attack.Params.specs()
    unknown = sorted(str(k) for k in set(out) - set(EVALUATE_SETTINGS) - set(specs))
    if unknown:
        raise StoreError(f"unknown evaluate parameter(s) {unknown}; known: "
                         f"{list(EVALUATE_SETTINGS) + list(specs)}")
    out.setdefault("method", attack.name)
    out.setdefault("prompts", "harmful")
    if out["prompts"] not in EVALUATE_SETS:
        raise StoreError(f"prompts must be one of {list(EVALUATE_SETS)}")
    size = len(evaluate_goals(out["prompts"]))
    try:
        out["count"] = check_value("count", Spec("int", "prompts", lo=1, hi=size),
                                   out.get("count", size))
        for key in ("max_new_tokens", "seed"):
            if key in out:
                out[key] = check_value(key, _RUN_SPECS[key], out[key])
        for key, spec in specs.items():
            if key in out:
                out[key] = check_value(key, spec, out[key])
    except ValueError as exc:
        raise StoreError(str(exc)) from None
    if "judge" in out and (not isinstance(out["judge"], str) or out["judge"] not in JUDGES):
        raise StoreError(f"unknown judge; choose one of {sorted(JUDGES)}")
    if "system" in out:
        try:
            out["system"] = check_system(out["system"])
        except InputError as exc:
            raise StoreError(str(exc)) from None
        if out["system"] is None:
            del out["system"]
    return out


def evaluate_rows(params: dict) -> list[dict]:
    """The dataset rows an evaluate job with (checked) ``params`` runs over."""
    goals = evaluate_goals(params["prompts"])[:params["count"]]
    return [{"index": i, "goal": g, "target": None, "meta": {}} for i, g in enumerate(goals)]


class _Stopped(Exception):
    """An evaluate job asked to stop between two rows."""


@dataclasses.dataclass
class EvaluateOutcome:
    """What :func:`evaluate_runner` returns: the job's ``result`` (:meth:`to_dict`), its
    checkpoint ``state`` (the rows done, as JSON text; None when finished) and whether it
    stopped early (``cancelled``)."""

    result: dict
    state: str | None = None
    cancelled: bool = False

    def to_dict(self) -> dict:
        """The job's ``result`` (a copy)."""
        return dict(self.result)


def evaluate_runner(moe: MoEModel, params: dict, on_event, should_stop, state: str | None,
                    judge_options: Callable[[str], dict] | None = None) -> EvaluateOutcome:
    """The evaluate job (see :data:`EVALUATE_JOB`): ``evaluate`` over its rows, continuing
    from the rows in ``state``; stops between two rows when ``should_stop()``. Its result
    holds ``rows``, ``summary`` (when finished), ``method`` and ``prompts``."""
    import tempfile
    from pathlib import Path

    from explorer.core.jsonl import read_jsonl, write_jsonl
    from explorer.evaluation.evaluate import evaluate
    from explorer.judges import get_judge
    name = params.get("judge") or "keyword"
    judge = get_judge(name, **(judge_options(name) if judge_options else {}))
    rows = evaluate_rows(params)
    done = list(json.loads(state)["rows"]) if state else []
    own = {k: v for k, v in params.items() if k not in EVALUATE_SETTINGS}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sse-evaluate-") as folder:
        out = Path(folder) / "rows.jsonl"
        write_jsonl(out, done)
        kept = list(done)
        on_event({"kind": "start", "elapsed": 0.0, "fraction": len(done) / len(rows)})

        def on_row(k: int, total: int, rec: dict, skipped: bool) -> None:
            if skipped:
                return
            kept.append(rec)
            on_event({"kind": "row", "iteration": None, "fraction": k / total,
                      "forward_passes": sum(int(r.get("forward_passes") or 0) for r in kept),
                      "elapsed": time.perf_counter() - t0, "rows": k, "total": total,
                      "state": json.dumps({"rows": kept})})
            if k < total and should_stop():
                raise _Stopped

        try:
            ev = evaluate(moe, rows, params["method"], judge, out=out, resume=True,
                          on_row=on_row, max_new_tokens=params.get("max_new_tokens"),
                          seed=params.get("seed"), system=params.get("system"), **own)
        except _Stopped:
            kept = sorted(read_jsonl(out), key=lambda r: r["index"])
            state_text = json.dumps({"rows": kept})
            on_event({"kind": "cancelled", "elapsed": time.perf_counter() - t0,
                      "state": state_text})
            return EvaluateOutcome({"rows": kept, "method": params["method"],
                                    "prompts": params["prompts"]}, state_text, True)
    on_event({"kind": "done", "elapsed": time.perf_counter() - t0, "fraction": 1.0})
    return EvaluateOutcome({"rows": ev.rows, "summary": ev.summary(),
                            "method": params["method"], "prompts": params["prompts"]})


def _checkpoint_position(state_text: str) -> dict:
    """Iteration, position and forward passes of a stored search checkpoint (progress is
    written at most every ``progress_interval``; the checkpoint at every step)."""
    try:
        st = json.loads(state_text)
    except (TypeError, ValueError):
        return {}
    if not isinstance(st, dict):
        return {}
    out = {"iteration": st.get("iteration"), "position": st.get("t_index"),
           "forward_passes": st.get("forward_passes")}
    return {k: v for k, v in out.items() if isinstance(v, int) and not isinstance(v, bool)}


class _Progress:
    """Turns runner events into the progress dict (ETA, thinned log-prob history)."""

    def __init__(self, previous: dict | None, max_iters: int | None):
        prev = dict(previous or {})
        self.data = {k: prev.get(k) for k in PROGRESS_KEYS}
        self.data["history"] = [list(p) for p in prev.get("history") or []]
        self.restart_started = prev.get("restart_started")
        self.max_iters = max_iters

    def update(self, ev: Any) -> dict:
        d = self.data
        kind, it = _get(ev, "kind"), _get(ev, "iteration")
        elapsed = _finite(_get(ev, "elapsed")) or 0.0
        if kind == "restart" or self.restart_started is None or (
                it is not None and it != d["iteration"]):
            self.restart_started = elapsed
        for key in ("iteration", "position", "layer", "num_positions", "num_layers",
                    "forward_passes"):
            d[key] = _get(ev, key, d[key])
        best = _finite(_get(ev, "best_logprob"))
        d.update(kind=kind, best_logprob=best, elapsed=round(elapsed, 3))
        frac = _get(ev, "fraction")
        if frac is None:
            P, L = d["num_positions"] or 0, d["num_layers"] or 0
            li = _get(ev, "layer_index")  # the cell a step's event reports is searched
            frac = (d["position"] or 0) * L + (0 if li is None else li + 1)
            frac = min(1.0, frac / (P * L)) if P and L else None
        d["fraction"] = frac
        d["eta_seconds"] = d["eta_max_seconds"] = None
        if kind in ("done", "cancelled"):
            d["eta_seconds"] = d["eta_max_seconds"] = 0.0 if kind == "done" else None
        elif frac and frac > 0:
            per_restart = (elapsed - self.restart_started) / frac
            d["eta_seconds"] = round(per_restart * (1 - frac), 2)
            if self.max_iters:
                left = max(0, self.max_iters - (d["iteration"] or 0) - 1)
                d["eta_max_seconds"] = round(per_restart * (1 - frac + left), 2)
        h = d["history"]
        if best is not None and (not h or h[-1][1] != best or kind == "restart"):
            h.append([round(elapsed, 3), best])
            if len(h) > MAX_HISTORY:
                d["history"] = h[:-1:2] + [h[-1]]
        return self.snapshot()

    def snapshot(self) -> dict:
        return dict(self.data, history=[list(p) for p in self.data["history"]],
                    restart_started=self.restart_started)


def _outcome(result: Any, params: dict) -> dict:
    """What a job keeps of a runner's result, as plain JSON-able data (it may come back
    from a GPU window's process): the result dict, the checkpoint text, whether it was
    cancelled, and the fields the saved route needs."""
    to_dict = getattr(result, "to_dict", None)
    result_dict = to_dict() if callable(to_dict) else dict(result)
    route = _get(result, "route")
    route = route.to_dict() if isinstance(route, Route) else (route or {"edits": []})
    verdict = _get(result, "verdict")
    return {"result": result_dict, "state": _state_text(_get(result, "state")),
            "cancelled": bool(_get(result, "cancelled", False)), "route": route,
            "target": _get(result, "target") or params.get("target"),
            "logprob": _finite(_get(result, "logprob")), "success": _get(result, "success"),
            "judge": _get(verdict, "judge") if verdict is not None else params.get("judge"),
            "completion": _get(result, "completion"),
            "forward_passes": _get(result, "forward_passes"), "seconds": _get(result, "seconds")}


class _Reporter:
    """A job's ``on_event``: the progress tracker (and ``live``, this process's view), the
    checkpoint to the store at every event, progress every ``interval`` s and at milestones.
    ``lost()`` is called when the store refuses a write: the job is no longer 'running'
    (someone else took it over, e.g. marked it interrupted)."""

    def __init__(self, store: RouteStore, job_id: str, tracker: _Progress, interval: float,
                 live: dict, lost: Callable[[], None]):
        self.store, self.job_id, self.tracker, self.interval = store, job_id, tracker, interval
        self.live, self.lost, self.last_write = live, lost, 0.0

    def __call__(self, ev: Any, quiet: bool = False) -> None:
        """Record ``ev``; ``quiet``: store its checkpoint only (the progress stays as it
        was: a GPU window's budget, not a user, stopped the search)."""
        progress = self.tracker.snapshot() if quiet else self.tracker.update(ev)
        self.live[self.job_id] = progress
        fields: dict[str, Any] = {}
        state = _get(ev, "state")
        if state is not None:
            fields["state"] = _state_text(state)
        now = time.monotonic()
        if not quiet and (now - self.last_write >= self.interval
                          or _get(ev, "kind") in _MILESTONES):
            fields["progress"], self.last_write = progress, now
        if fields and not self.store.update_job(self.job_id, where_status="running", **fields):
            self.lost()


class _ChunkClock:
    """``should_stop`` of one GPU window: a stop request (``stopped()``, polled every
    ``poll`` s), a lost job, or the window's ``budget`` (seconds): after at least one step,
    the chunk stops when the next step would end past the budget, were it :data:`STEP_SAFETY`
    times the longest gap between two polls seen so far (``longest``, carried from chunk to chunk;
    a gap holds a step, and at a restart's end the answer generation). ``reason`` says why
    it stopped: 'stop', 'lost' or 'budget'."""

    def __init__(self, budget: float, longest: float, stopped: Callable[[], bool],
                 poll: float = STOP_POLL_SECONDS):
        self.start = self.last = time.monotonic()
        self.budget, self.longest, self.stopped, self.poll = budget, longest, stopped, poll
        self.checked = -math.inf
        self.polls = 0
        self.reason: str | None = None

    def lose(self) -> None:
        self.reason = self.reason or "lost"

    def should_stop(self) -> bool:
        if self.reason is not None:
            return True
        now = time.monotonic()
        self.longest = max(self.longest, now - self.last)
        self.last = now
        self.polls += 1
        if now - self.checked >= self.poll:
            self.checked = now
            if self.stopped():
                self.reason = "stop"
                return True
        if self.polls > 1 and now - self.start + STEP_SAFETY * self.longest > self.budget:
            self.reason = "budget"
        return self.reason is not None


class JobManager:
    """Queue, run, cancel and resume background jobs for one model (see module docs).

    ``max_queued_per_session``: queued + running jobs one session may have;
    ``max_queued_total``: the same for everyone together; ``max_queued_per_group``: the
    same for the jobs submitted with one ``group`` key; ``runner``: the job function for
    every kind (default: :func:`run_job` of the job's kind, with ``judge_options`` for its
    judges); ``tuning``: the engine's internal switches
    (:class:`~explorer.engine.tuning.Tuning`, the settings' ``tuning``) in force while a
    job runs, in the worker thread and in a GPU window's process alike;
    ``progress_interval``: seconds between progress writes to the store. ``window``: a
    function that wraps a function into a GPU window of ``chunk_seconds`` seconds (e.g.
    ``spaces.GPU(duration=chunk_seconds)``): each job then runs as a sequence of such
    windows, each resuming from the last checkpoint (see module docs); None (default), or
    a window that returns the function itself: a job runs in one call in the worker
    thread. ``owned_routes``: a finished job's route is saved as its session's (the owner
    key the job was submitted with: private to it until shared, see
    :mod:`explorer.storage.library`); False (default): with no owner.
    """

    def __init__(self, moe: MoEModel, store: RouteStore, *, max_queued_per_session: int = 4,
                 max_queued_total: int = 64, max_queued_per_group: int = 8,
                 runner: Runner | None = None,
                 progress_interval: float = 0.5,
                 judge_options: Callable[[str], dict] | None = None,
                 window: Callable[[Callable], Callable] | None = None,
                 chunk_seconds: float = GPU_CHUNK_SECONDS, tuning: Tuning | None = None,
                 owned_routes: bool = False):
        if window is not None and not (isinstance(chunk_seconds, (int, float))
                                       and math.isfinite(chunk_seconds) and chunk_seconds > 0):
            raise InputError(f"chunk_seconds must be a positive number, got {chunk_seconds!r}")
        self.moe, self.store = moe, store
        self.owned_routes = owned_routes
        self.runner = runner
        self.judge_options = judge_options
        self.tuning = tuning if tuning is not None else Tuning()
        self.max_queued_per_session = max_queued_per_session
        self.max_queued_total = max_queued_total
        self.max_queued_per_group = max_queued_per_group
        self._groups: dict[str, str] = {}  # job id -> group (client address), in memory
        self.progress_interval = progress_interval
        self.window, self.chunk_seconds = window, float(chunk_seconds)
        chunk = self.run_chunk
        wrapped = window(chunk) if window is not None else chunk
        # a window that wraps nothing (``spaces`` outside ZeroGPU): jobs run in one piece
        self._windowed = wrapped if wrapped is not chunk else None
        self._pid = os.getpid()
        self._lock = threading.Condition(threading.RLock())
        self._queue: collections.deque[str] = collections.deque()
        self._cancel: dict[str, threading.Event] = {}
        self._user_cancelled: set[str] = set()
        self._live: dict[str, dict] = {}
        self._current: str | None = None
        self._stopping = False
        self.interrupted = store.mark_interrupted()
        for rec in store.list_jobs(status="queued", limit=10_000, oldest_first=True):
            self._enqueue(rec.id)
        self._thread = threading.Thread(target=self._work, name="explorer-jobs", daemon=True)
        self._thread.start()

    # -- public API -----------------------------------------------------------------------
    def submit(self, kind: str, params: dict, session: str | None = None,
               group: str | None = None, *, checked: bool = False) -> str:
        """Queue a job of ``kind`` (an attack that runs as a job, e.g. 'fsour'); returns its
        id. ``session``: its owner (stored with it); ``group``: a wider key that shares a
        cap (the app passes the client address). Raises :class:`StoreError` for bad
        parameters or when the session, the group or the server already has its limit of
        queued/running jobs. ``checked``: ``params`` come from :func:`validate_params`
        already (the app checks them once, with its caps)."""
        if kind == EVALUATE_JOB:
            params = params if checked else validate_evaluate_params(params)
        elif checked:
            job_attack(kind)
        else:
            params = validate_params(kind, params)
        with self._lock:
            self._check_room(session, group)
            job_id = self.store.create_job(kind, params, session)
            if group is not None:
                self._groups[job_id] = group
            self._enqueue(job_id)
        return job_id

    def status(self, job_id: str) -> dict:
        """The job as a JSON-able dict: id, kind, session, status, params, progress
        (iteration, position, layer, num_positions, num_layers, best_logprob,
        forward_passes, elapsed, eta_seconds, history, chunks: the GPU windows it has
        used, None without windows...), result, error, route_id, created, updated."""
        return self._as_dict(self.store.get_job(job_id))

    def list(self, session: str | None = None, limit: int = 100) -> list[dict]:
        """Jobs (newest first) as :meth:`status` dicts, for one session or all."""
        return [self._as_dict(r) for r in self.store.list_jobs(session=session, limit=limit)]

    def cancel(self, job_id: str) -> dict:
        """Cancel a job: a queued one at once, a running one at its next check (stored
        'cancelled' with its checkpoint, so it can be resumed). Returns its status."""
        with self._lock:
            rec = self.store.get_job(job_id)
            if rec.status == "queued":
                self.store.update_job(job_id, status="cancelled", where_status="queued")
                if job_id in self._queue:
                    self._queue.remove(job_id)
            elif rec.status == "running":
                self._user_cancelled.add(job_id)
                self._cancel.setdefault(job_id, threading.Event()).set()
                self.store.request_stop(job_id, "cancel")  # for a chunk in another process
        return self.status(job_id)

    def resume(self, job_id: str, group: str | None = None) -> dict:
        """Queue an 'interrupted' or 'cancelled' job again; it continues from its stored
        checkpoint and counts against the same caps as a new job. Returns its status."""
        with self._lock:
            rec = self.store.get_job(job_id)
            if rec.status not in ("interrupted", "cancelled"):
                raise StoreError(f"job {job_id} is {rec.status}; only interrupted or "
                                 "cancelled jobs can be resumed")
            self._check_room(rec.session, group)
            if group is not None:
                self._groups[job_id] = group
            if self.store.update_job(job_id, status="queued", error=None,
                                     where_status=("interrupted", "cancelled")):
                self._enqueue(job_id)
        return self.status(job_id)

    def shutdown(self, wait: bool = False, timeout: float | None = None) -> None:
        """Stop the worker: no new jobs; a running job is asked to stop and stored as
        'interrupted' (resumable); queued jobs stay queued for the next manager."""
        with self._lock:
            self._stopping = True
            if self._current is not None:
                self._cancel.setdefault(self._current, threading.Event()).set()
                try:
                    self.store.request_stop(self._current, "shutdown")
                except Exception:  # noqa: BLE001 - the in-process flag is set anyway
                    log.exception("job %s: could not store the stop request", self._current)
            self._lock.notify_all()
        if wait:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """Whether the worker thread is running."""
        return self._thread.is_alive()

    @property
    def chunked(self) -> bool:
        """Whether jobs run as a sequence of GPU windows (a ``window`` that wraps)."""
        return self._windowed is not None

    def run_chunk(self, job_id: str, longest: float = 0.0) -> dict:
        """Run the 'running' job ``job_id`` for one GPU window of :attr:`chunk_seconds`
        (what ``window`` wraps; see the module docs) and return its outcome as plain data:
        ``result``, ``state`` (the checkpoint text), ``cancelled``, the route's fields,
        ``stop`` (why it stopped early: 'budget', 'stop', 'lost' or None), ``longest``
        (the longest gap between two polls, for the next chunk), ``progress``; or
        ``{"error": one line}`` when the search failed, ``{"lost": True}`` when the job is
        not running. It may run in a forked process: it reaches the job only through the
        store's file, with a connection of its own there (an SQLite connection must not
        cross a fork), and learns of a cancel or a shutdown from the store's stop
        requests. ``longest``: the longest gap of the chunks before (seconds)."""
        here = os.getpid() == self._pid
        store = self.store if here else None
        try:
            store = store or RouteStore(self.store.path)
            return self._chunk(store, job_id, float(longest), here)
        except BaseException as exc:  # noqa: BLE001 - any failure ends this job only
            return {"error": one_line(exc, limit=500, with_type=True)}
        finally:
            if not here and store is not None:
                store.close()

    # -- internals ------------------------------------------------------------------------
    def _runner(self, kind: str) -> Runner:
        if self.runner is not None:
            return self.runner
        if kind == EVALUATE_JOB:
            return functools.partial(evaluate_runner, judge_options=self.judge_options)
        return functools.partial(run_job, kind, judge_options=self.judge_options)

    def _check_room(self, session: str | None, group: str | None = None) -> None:
        if self._stopping:
            raise StoreError("the job manager is shutting down; try again later")
        if session is not None:
            n = len(self.store.list_jobs(session=session, status=ACTIVE_STATUSES,
                                         limit=self.max_queued_per_session + 1))
            if n >= self.max_queued_per_session:
                raise StoreError(f"this session already has {n} queued or running jobs "
                                 f"(limit {self.max_queued_per_session}); wait for one to "
                                 "finish or cancel one")
        active = self.store.list_jobs(status=ACTIVE_STATUSES, limit=self.max_queued_total + 1)
        if group is not None:
            n = sum(1 for r in active if self._groups.get(r.id) == group)
            if n >= self.max_queued_per_group:
                raise StoreError(f"your address already has {n} queued or running jobs "
                                 f"(limit {self.max_queued_per_group}); wait for one to "
                                 "finish or cancel one")
        n = len(active)
        if n >= self.max_queued_total:
            raise StoreError(f"the server already has {n} queued or running jobs; "
                             "try again later")

    def _enqueue(self, job_id: str) -> None:
        with self._lock:
            self._cancel[job_id] = threading.Event()
            self._user_cancelled.discard(job_id)
            self._queue.append(job_id)
            self._lock.notify_all()

    def _as_dict(self, rec) -> dict:
        d = rec.to_dict()
        live = self._live.get(rec.id)
        progress = dict(live if live is not None and rec.status == "running" else d["progress"])
        progress.pop("restart_started", None)
        if rec.status in ("interrupted", "cancelled") and rec.state:
            progress.update(_checkpoint_position(rec.state))  # where a resume starts
        for key in PROGRESS_KEYS:
            progress.setdefault(key, None)
        progress.setdefault("history", [])
        d["progress"] = progress
        return d

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return
                job_id = self._queue.popleft()
                try:
                    self.store.clear_stop(job_id)  # a request a crash left behind
                    started = self.store.update_job(job_id, status="running",
                                                    where_status="queued")
                except Exception:  # noqa: BLE001 - the worker must keep serving
                    log.exception("job %s could not be started", job_id)
                    started = False
                if not started:
                    continue
                self._current = job_id
            try:
                if self._windowed is None:
                    self._run(job_id)
                else:
                    self._run_chunked(job_id)
            except BaseException as exc:  # noqa: BLE001 - store trouble while failing a job
                log.exception("job %s: bookkeeping failed", job_id)
                try:
                    self.store.update_job(job_id, status="failed", error=one_line(exc, limit=500, with_type=True),
                                          where_status="running")
                except Exception:  # noqa: BLE001
                    pass
            finally:
                with self._lock:
                    self._current = None
                    self._live.pop(job_id, None)
                    self._cancel.pop(job_id, None)
                    self._user_cancelled.discard(job_id)
                    try:
                        self.store.clear_stop(job_id)
                    except Exception:  # noqa: BLE001 - a stale request is cleared at the next run
                        log.exception("job %s: could not clear its stop request", job_id)

    def _run(self, job_id: str) -> None:
        """The job in one call of the runner, in this thread."""
        rec = self.store.get_job(job_id)
        stop = self._cancel.setdefault(job_id, threading.Event())
        params = rec.params
        tracker = _Progress(rec.progress, params.get("max_iters"))
        report = _Reporter(self.store, job_id, tracker, self.progress_interval, self._live,
                           stop.set)  # lost: someone else took the job over
        try:
            with tuned(self.tuning):
                result = self._runner(rec.kind)(self.moe, params, report, stop.is_set,
                                                rec.state)
        except BaseException as exc:  # noqa: BLE001 - any failure ends this job only
            # (SystemExit, KeyboardInterrupt raised by a runner included: here they would
            # kill the worker thread, leave the job 'running' and stall the queue)
            log.warning("job %s failed: %s", job_id, one_line(exc, limit=500, with_type=True))
            self._fail(job_id, one_line(exc, limit=500, with_type=True), tracker.snapshot())
            return
        self._finish(rec, params, _outcome(result, params), tracker.snapshot())

    def _run_chunked(self, job_id: str) -> None:
        """The job as a sequence of GPU windows (see the module docs)."""
        rec = self.store.get_job(job_id)
        stop = self._cancel.setdefault(job_id, threading.Event())
        longest, stalled, out = 0.0, 0, None
        while not stop.is_set():
            before = rec.state
            try:
                out = self._windowed(job_id, longest)
            except Exception as exc:  # noqa: BLE001 - the window failed (past its duration,
                # no GPU free, quota): the chunk wrote its checkpoints, the next one resumes
                rec, out = self.store.get_job(job_id), None
                if rec.status != "running":
                    return
                stalled = 0 if rec.state != before else stalled + 1
                why = one_line(exc, limit=300, with_type=True)
                log.warning("job %s: a GPU window failed (%s)", job_id, why)
                if stalled >= MAX_STALLED_CHUNKS:
                    self._fail(job_id, (
                        f"{stalled} GPU windows in a row ended without a new checkpoint "
                        f"(last: {why}); one search step or answer generation may take "
                        f"longer than the {self.chunk_seconds:g} s window: give it more "
                        "seconds (EXPLORER_GPU_CHUNK_SECONDS), fewer candidates or fewer "
                        "new tokens"))
                    return
                continue
            if out.get("error") is not None:
                log.warning("job %s failed: %s", job_id, out["error"])
                self._fail(job_id, out["error"], out.get("progress"))
                return
            if out.get("lost"):
                return  # someone else took the job over: nothing of ours to store
            stalled, longest = 0, max(longest, out["longest"])
            if not (out["cancelled"] and out["stop"] == "budget"):
                break  # done, or stopped by a cancel or a shutdown
            rec = self.store.get_job(job_id)
        if out is None:  # stopped after a failed window: the stored checkpoint stays
            self.store.update_job(job_id, status=self._stop_status(job_id),
                                  where_status="running")
        elif out["cancelled"] and out["stop"] == "budget":  # stopped between two windows
            self._finish(rec, rec.params, out,
                         dict(out["progress"], kind="cancelled", eta_seconds=None,
                              eta_max_seconds=None))
        else:
            self._finish(rec, rec.params, out, out["progress"])

    def _chunk(self, store: RouteStore, job_id: str, longest: float, here: bool) -> dict:
        rec = store.get_job(job_id)
        if rec.status != "running":
            return {"lost": True}
        params = rec.params
        tracker = _Progress(rec.progress, params.get("max_iters"))
        tracker.data["chunks"] = (tracker.data.get("chunks") or 0) + 1
        event = self._cancel.get(job_id) if here else None  # another process's is a copy
        clock = _ChunkClock(self.chunk_seconds * (1 - CHUNK_RESERVE), longest,
                            lambda: (event is not None and event.is_set())
                            or store.stop_requested(job_id) is not None)
        live = self._live if here else {}  # another process's copy would only grow
        report = _Reporter(store, job_id, tracker, self.progress_interval, live, clock.lose)
        if not store.update_job(job_id, where_status="running", progress=tracker.snapshot()):
            return {"lost": True}

        def on_event(ev: Any) -> None:
            report(ev, quiet=clock.reason == "budget" and _get(ev, "kind") == "cancelled")

        with tuned(self.tuning):
            result = self._runner(rec.kind)(self.moe, params, on_event, clock.should_stop,
                                            rec.state)
        out = _outcome(result, params)
        if out["cancelled"] and clock.reason == "budget":
            fields = {"state": out["state"]} if out["state"] is not None else {}
            if not store.update_job(job_id, where_status="running",
                                    progress=tracker.snapshot(), **fields):
                clock.lose()
        out.update(stop=clock.reason, longest=clock.longest, progress=tracker.snapshot(),
                   lost=clock.reason == "lost")
        return out

    def _fail(self, job_id: str, error: str, progress: dict | None = None) -> None:
        fields = {"progress": progress} if progress is not None else {}
        self.store.update_job(job_id, status="failed", error=error, where_status="running",
                              **fields)

    def _stop_status(self, job_id: str) -> str:
        return "cancelled" if job_id in self._user_cancelled or not self._stopping \
            else "interrupted"

    def _finish(self, rec: JobRecord, params: dict, out: dict, progress: dict) -> None:
        """Store a runner's outcome for job ``rec``: 'cancelled' or 'interrupted' with its
        checkpoint, or 'done' with its route saved to the library (its source: the job's
        kind; its owner: the job's session when :attr:`owned_routes`)."""
        job_id, kind = rec.id, rec.kind
        extra = {"state": out["state"]} if out["state"] is not None else {}
        if out["cancelled"]:
            self.store.update_job(job_id, status=self._stop_status(job_id),
                                  result=out["result"], progress=progress,
                                  where_status="running", **extra)
            return
        if kind == EVALUATE_JOB:  # its result is the rows: no route to save
            self.store.update_job(job_id, status="done", result=out["result"], error=None,
                                  progress=progress, where_status="running", **extra)
            return
        route = Route.from_dict(out["route"])
        self.store.finish_job(
            job_id, route, params["prompt"], getattr(self.moe, "name", "") or "",
            route_fields={
                "target": out["target"], "target_logprob": out["logprob"],
                "success": out["success"], "judge": out["judge"],
                "completion": out["completion"], "source": kind,
                "meta": {"job_id": job_id, "params": params,
                         "forward_passes": out["forward_passes"],
                         "seconds": out["seconds"]}},
            where_status="running", status="done", result=out["result"], error=None,
            progress=progress, owner=rec.session if self.owned_routes else None, **extra)
