"""A stand-in for Hugging Face's ``spaces`` package that keeps ZeroGPU's constraints, for
tests (put ``tests/fake_spaces`` on ``sys.path`` or ``PYTHONPATH``).

``GPU(duration=...)`` runs each call of the wrapped function in a worker process forked
from the caller (reused while it lives, as ZeroGPU reuses an idle worker), so nothing the
call changes in memory reaches the caller and nothing the caller changes after the fork
reaches the worker; arguments and the return value travel pickled. A call that runs past
``duration`` seconds (counted from the call, the fork included) has its worker killed and
raises :class:`GPUAborted`, as ZeroGPU aborts it. An exception inside the call is raised
in the caller. Every call is recorded in :data:`CALLS`.
"""

from __future__ import annotations

import functools
import multiprocessing
import threading
import time
from dataclasses import dataclass

_FORK = multiprocessing.get_context("fork")
_forked = False  # True inside a worker: nested GPU calls run inline, as on ZeroGPU


@dataclass
class Call:
    """One call of a wrapped function: its name, the duration it asked for, when it started
    (``time.monotonic()``) and the seconds it took in the caller's clock, the worker's pid
    and whether it was aborted."""

    name: str
    duration: float
    started: float
    seconds: float
    pid: int | None
    aborted: bool


CALLS: list[Call] = []
_workers: list[_Worker] = []


class GPUAborted(RuntimeError):
    """The call ran past its duration and its worker was killed."""


def _serve(fn, conn) -> None:
    global _forked
    _forked = True
    while True:
        try:
            args, kwargs = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply = ("ok", fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            reply = ("error", exc)
        try:
            conn.send(reply)
        except Exception as exc:  # noqa: BLE001 - an unpicklable result
            conn.send(("error", RuntimeError(f"the result could not be pickled: {exc}")))


class _Worker:
    def __init__(self, fn):
        self.conn, child = _FORK.Pipe()
        self.proc = _FORK.Process(target=_serve, args=(fn, child), daemon=True)
        self.proc.start()
        child.close()
        _workers.append(self)

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()
        if self in _workers:
            _workers.remove(self)


def GPU(task=None, *, duration: float = 60, **_ignored):
    """``@GPU``, ``@GPU(duration=N)`` or ``GPU(duration=N)(fn)`` (see the module docs)."""
    if task is None:
        return functools.partial(GPU, duration=duration)
    lock = threading.Lock()
    box: dict[str, _Worker | None] = {"worker": None}

    @functools.wraps(task)
    def call(*args, **kwargs):
        if _forked:
            return task(*args, **kwargs)
        with lock:
            t0 = time.monotonic()
            worker = box["worker"]
            if worker is None or not worker.proc.is_alive():
                worker = box["worker"] = _Worker(task)
            pid = worker.proc.pid
            worker.conn.send((args, kwargs))
            ready = worker.conn.poll(max(0.0, duration - (time.monotonic() - t0)))
            reply = None
            if ready:
                try:
                    reply = worker.conn.recv()
                except (EOFError, OSError):
                    reply = None
            seconds = time.monotonic() - t0
            if reply is None:
                worker.kill()
                box["worker"] = None
                CALLS.append(Call(task.__name__, duration, t0, seconds, pid, True))
                raise GPUAborted(f"GPU task aborted: {task.__name__} ran past its "
                                 f"{duration} s")
            CALLS.append(Call(task.__name__, duration, t0, seconds, pid, False))
            kind, value = reply
            if kind == "error":
                raise value
            return value

    call.duration = duration
    return call


def close_workers() -> None:
    """Kill every worker (tests call it when they are done with a wrapped function)."""
    while _workers:
        _workers[-1].kill()


def in_worker() -> bool:
    """Whether this process is a GPU worker."""
    return _forked


__all__ = ["CALLS", "GPU", "GPUAborted", "close_workers", "in_worker"]
