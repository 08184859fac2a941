"""Scoring engines: the joint target log-prob of a prompt under B candidate routes.

``reference`` runs one full, unbatched forward per candidate, as the authors' code does.
``fast`` evaluates all candidates of a step in one batched forward and reuses the KV
cache of the positions before the edited one (they cannot change). Both return the same
numbers up to float rounding; the searches consume randomness identically, so they
pick the same routes.
"""

from __future__ import annotations

from typing import Sequence

from .cone import capture_layer_inputs, cone_target_logprob
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

    def score(self, routes: Sequence[Route], position: int | None = None,
              layer: int | None = None, base: Route | None = None) -> list[float]:
        """Joint target log-prob for each route. ``position``/``layer``: where the
        candidates differ from ``base`` (the route so far); engines may exploit it."""
        out = []
        for r in routes:
            out.append(float(target_logprob(self.moe, self.prompt_ids, self.target_ids, [r])[0]))
            self.forward_passes += 1
        return out


class FastEngine(ReferenceEngine):
    """Batched candidates over the causal cone only: a prefix KV cache for positions < t
    and the captured hidden states entering layer l, so each batch of candidates runs
    decoder layers >= l over positions >= t (see :mod:`explorer.cone`)."""

    name = "fast"

    def __init__(self, moe, prompt_ids, target_ids, batch_size: int = 64, cone: bool = True):
        super().__init__(moe, prompt_ids, target_ids)
        self.batch_size = batch_size
        self.cone = cone
        self.capture_passes = 0
        self._cache = None
        self._cache_pos = 0
        self._inputs = None
        self._inputs_key = None

    def begin_position(self, route: Route, position: int) -> None:
        self._cache, self._cache_pos = None, 0
        self._inputs, self._inputs_key = None, None
        if position > 0:
            _, cache = prefill(self.moe, self.prompt_ids[:position], route)
            if cache is not None and reusable(cache):
                self._cache, self._cache_pos = cache, position

    def _layer_inputs(self, base: Route):
        key = tuple(base.edits)
        if self._inputs_key != key:
            ids = self.prompt_ids + self.target_ids
            self._inputs = capture_layer_inputs(self.moe, ids, base, self._cache, self._cache_pos)
            self._inputs_key = key
            self.capture_passes += 1
        return self._inputs

    def score(self, routes: Sequence[Route], position: int | None = None,
              layer: int | None = None, base: Route | None = None) -> list[float]:
        use_cache = self._cache is not None and position is not None and position >= self._cache_pos
        use_cone = (self.cone and layer is not None and base is not None and position is not None
                    and position >= self._cache_pos)
        out: list[float] = []
        for i in range(0, len(routes), self.batch_size):
            chunk = list(routes[i:i + self.batch_size])
            if use_cone:
                inputs = self._layer_inputs(base)
                lp = cone_target_logprob(self.moe, self.prompt_ids, self.target_ids, chunk,
                                         layer, inputs[layer], self._cache if use_cache else None,
                                         self._cache_pos if use_cache else 0)
            elif use_cache:
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
