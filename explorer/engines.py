"""Scoring engines: the joint target log-prob of a prompt under B candidate routes.

``reference`` runs one full, unbatched forward per candidate, as the authors' code does.
``fast`` evaluates all candidates of a step in one batched forward and reuses the KV
cache of the positions before the edited one (they cannot change). Both return the same
numbers up to float rounding; the searches consume randomness identically, so they
pick the same routes.
"""

from __future__ import annotations

from typing import Sequence

from .forward import prefill, reusable, target_logprob
from .route import Route


class ReferenceEngine:
    """One full forward per candidate (the published implementation's cost model)."""

    name = "reference"

    def __init__(self, moe, prompt_ids: Sequence[int], target_ids: Sequence[int]):
        self.moe, self.prompt_ids, self.target_ids = moe, list(prompt_ids), list(target_ids)
        self.forward_passes = 0

    def begin_position(self, route: Route, position: int) -> None:
        """Called when a search moves to ``position`` (``route`` is final below it)."""

    def score(self, routes: Sequence[Route], position: int | None = None) -> list[float]:
        out = []
        for r in routes:
            out.append(float(target_logprob(self.moe, self.prompt_ids, self.target_ids, [r])[0]))
            self.forward_passes += 1
        return out


class FastEngine(ReferenceEngine):
    """Batched candidates plus a prefix KV cache shared by every candidate of a position."""

    name = "fast"

    def __init__(self, moe, prompt_ids, target_ids, batch_size: int = 64):
        super().__init__(moe, prompt_ids, target_ids)
        self.batch_size = batch_size
        self._cache = None
        self._cache_pos = 0

    def begin_position(self, route: Route, position: int) -> None:
        self._cache, self._cache_pos = None, 0
        if position > 0:
            _, cache = prefill(self.moe, self.prompt_ids[:position], route)
            if cache is not None and reusable(cache):
                self._cache, self._cache_pos = cache, position

    def score(self, routes: Sequence[Route], position: int | None = None) -> list[float]:
        use_cache = self._cache is not None and position is not None and position >= self._cache_pos
        out: list[float] = []
        for i in range(0, len(routes), self.batch_size):
            chunk = list(routes[i:i + self.batch_size])
            if use_cache:
                lp = target_logprob(self.moe, self.prompt_ids, self.target_ids, chunk,
                                    prefix_cache=self._cache, prefix_len=self._cache_pos)
            else:
                lp = target_logprob(self.moe, self.prompt_ids, self.target_ids, chunk)
            out.extend(float(x) for x in lp)
            self.forward_passes += len(chunk)
        return out


ENGINES = {"reference": ReferenceEngine, "fast": FastEngine}


def make_engine(name: str, moe, prompt_ids, target_ids):
    """An engine by name (``fast`` or ``reference``)."""
    try:
        return ENGINES[name](moe, prompt_ids, target_ids)
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; choose fast or reference") from None
