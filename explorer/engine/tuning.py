"""Internal tuning switches of the scoring engines, for contributors (see CONTRIBUTING.md).

The switches are keyword-only arguments of the engines (:class:`~explorer.engine.scoring.
FastEngine` ``narrow=``/``direct=``, :func:`~explorer.engine.batching.memory_batch_size`
``share=``). An entry point can set their defaults for everything it runs with the
:func:`tuned` context manager (the CLI does it from the ``EXPLORER_CONE_*`` /
``EXPLORER_BATCH_MEMORY_SHARE`` settings); the defaults live in a context variable, never
on the model, so other threads and callers are not affected.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class Tuning:
    """Defaults for the engines' tuning switches; None means "the engine decides" (on
    CPU: narrow and direct on; memory share 0.25)."""

    narrow: bool | None = None
    direct: bool | None = None
    memory_share: float | None = None
    #: token rows (batch rows x positions) per multi-prompt batch; None: 4096 per thread on CPU (larger
    #: products leave the CPU's caches and run slower), the memory cap alone on a GPU
    multi_tokens: int | None = None
    #: rows per cone batch at most (None: :data:`explorer.engine.batching.MAX_BATCH`); a
    #: server shared by many takes turns on the model between batches, so smaller batches
    #: make shorter turns (hosted mode: :data:`explorer.engine.batching.SHARED_ROWS`)
    max_rows: int | None = None


_ACTIVE: contextvars.ContextVar[Tuning] = contextvars.ContextVar("explorer_tuning",
                                                                  default=Tuning())


def active_tuning() -> Tuning:
    """The tuning defaults in force in this context."""
    return _ACTIVE.get()


@contextlib.contextmanager
def tuned(tuning: Tuning | None) -> Iterator[Tuning]:
    """Run the body with ``tuning`` as the engines' defaults (None: no change)."""
    token = _ACTIVE.set(tuning) if tuning is not None else None
    try:
        yield active_tuning()
    finally:
        if token is not None:
            _ACTIVE.reset(token)
