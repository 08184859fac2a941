"""Scoring engines: the joint target log-prob of a prompt under B candidate routes.

``reference`` runs one full, unbatched forward per candidate, as the authors' code does.
``fast`` evaluates all candidates of a step in one batched forward and reuses the KV
cache of the positions before the edited one (they cannot change). Both return the same
numbers up to float rounding; the searches consume randomness identically, so they
pick the same routes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from explorer.core.forward import cache_of, prefill, reusable, target_logprob
from explorer.core.layers import decoder_layers
from explorer.core.route import Route
from explorer.engine.batching import search_batch_size
from explorer.engine.cone import (
    capture_layer_inputs,
    cone_target_logprob,
    keep_kwargs,
    output_head,
    scored_ids,
)
from explorer.engine.tuning import active_tuning

if TYPE_CHECKING:
    from explorer.core.model import MoEModel


def _cpu_default(value: bool | None, switch: str, moe) -> bool:
    """``value`` if given, else the active :class:`~explorer.engine.tuning.Tuning`'s
    ``switch`` when set, else whether ``moe`` is on CPU."""
    if value is not None:
        return value
    tuned = getattr(active_tuning(), switch)
    return tuned if tuned is not None else moe.device.type == "cpu"


@dataclass(frozen=True)
class SameStates:
    """A candidate whose kept states equal those of the base route ``base`` (it differs
    from it only where nothing scored reads)."""

    base: tuple


@dataclass(frozen=True)
class CapturedStates:
    """A candidate whose states entering the layers above ``layer`` were captured during
    its batch: row ``row`` of ``seen`` (``{decoder layer: (B, S, H)}``)."""

    layer: int
    seen: dict
    row: int


class ReferenceEngine:
    """One full forward per candidate (the published implementation's cost model)."""

    name = "reference"

    def __init__(self, moe: MoEModel, prompt_ids: Sequence[int], target_ids: Sequence[int]):
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
    """Batched candidates over the causal cone only.

    Candidates go in batches of ``batch_size`` rows (default: sized to the free memory,
    see :mod:`explorer.engine.batching`). A prefix KV cache covers positions < t; the hidden
    states entering each layer at
    positions >= t under the route so far are kept, so a batch of candidates at (t, l)
    runs decoder layers >= l over positions >= t only (with ``narrow``, layer l at
    position t alone), with logits for the target rows only (see :mod:`explorer.engine.cone`). The states entering the layers above l are captured
    for every candidate during that batch: when the search keeps one, its states become
    the new base without another forward. Moving on to position t + 1 extends the cache
    by one token and drops one row of the kept states.

    Only what a score reads is computed: the final target token is not run (see
    :func:`explorer.engine.cone.scored_ids`), the last layer's feed-forward block runs on the
    scored rows only (direct path), and candidates that differ from their base only at the
    last layer before the scored rows get the base's score without a forward.
    """

    name = "fast"

    def __init__(self, moe: MoEModel, prompt_ids, target_ids, batch_size: int | None = None, cone: bool = True,
                 *, narrow: bool | None = None, direct: bool | None = None):
        super().__init__(moe, prompt_ids, target_ids)
        # rows per batch: sized to the free memory (worst case: the whole prompt recomputed)
        self.batch_size = batch_size or search_batch_size(moe, len(self.prompt_ids),
                                                          len(self.target_ids))
        self.cone = cone
        # narrow: the edited layer at the edited position only, in a model call of its own.
        # It saves FLOPs (15% of CPU time on a wider model) but costs launches: on a GPU,
        # where the search is launch-bound, it was slower (H100, olmoe-wide: 15.1 s vs
        # 11.6 s). Default: on for CPU, off for GPU; $EXPLORER_CONE_NARROW=1/0 forces it.
        self.narrow = _cpu_default(narrow, "narrow", moe)
        # direct: the layers above the edited one are called one by one with inputs
        # captured once per position (no model call per batch: no embedding, mask or rotary
        # work). Checked against the model call on the first batch; any difference turns
        # it off for the search. Default: on for CPU (measured there), off for GPU (not
        # measured); $EXPLORER_CONE_DIRECT=1/0 forces it.
        self.direct = _cpu_default(direct, "direct", moe) and output_head(moe) is not None
        self._direct_checked = False
        self._last_layer = len(decoder_layers(moe.model)) - 1
        self._known: dict = {}  # route edits -> score, for the last batch and its base
        self._reset()

    def _reset(self) -> None:
        self._cache, self._cache_pos = None, 0
        self._inputs, self._inputs_key = None, None
        # candidates whose states are known without a forward, by their edits
        self._pending: dict[tuple, SameStates | CapturedStates] = {}
        self._layer_kwargs: dict = {}  # rows -> direct layer-call inputs at the current position
        self._direct_kwargs: dict = {}  # (rows, prefix length) -> the same for the whole cone

    def begin_position(self, route: Route, position: int) -> None:
        key = tuple(route.edits)
        step = (self._cache is not None or self._cache_pos == 0) and position == self._cache_pos + 1
        if step and self.cone and self._resolve(key):
            # extend the prefix cache by token position-1 (final now) and drop its row
            prev = self._cache_pos
            if self._extend_cache(route, prev):
                self._inputs = {i: h[:, 1:] for i, h in self._inputs.items()}
                self._cache_pos = position
                self._pending = {}
                self._layer_kwargs = {}
                self._direct_kwargs = {}
                return
        self._reset()
        if position > 0:
            _, cache = prefill(self.moe, self.prompt_ids[:position], route)
            if cache is not None and reusable(cache):
                self._cache, self._cache_pos = cache, position

    def _extend_cache(self, route: Route, pos: int) -> bool:
        """Append token ``pos`` (routed by ``route``) to the prefix cache, in place."""
        dev = self.moe.device
        with self.moe.lock, torch.inference_mode(), self.moe.control(route, validate=False):
            out = self.moe.model(input_ids=torch.tensor([[self.prompt_ids[pos]]], device=dev),
                                 cache=self._cache, use_cache=True,
                                 position_ids=torch.tensor([[pos]], device=dev),
                                 **keep_kwargs(self.moe, 1))
        cache = cache_of(out)
        if cache is None or not reusable(cache):
            return False
        self._cache = cache
        return True

    def _resolve(self, key: tuple) -> bool:
        """Make the kept states those of route ``key`` from a captured candidate, if any."""
        if self._inputs is not None and self._inputs_key == key:
            return True
        hit = self._pending.get(key)
        if hit is None or self._inputs is None:
            return False
        if isinstance(hit, SameStates):  # the states of the base the candidate came from
            if self._inputs_key != hit.base:
                return False
            self._inputs_key, self._pending = key, {}
            return True
        layer, seen, row = hit.layer, hit.seen, hit.row
        self._inputs = {i: (h if i <= layer else seen[i][row:row + 1])
                        for i, h in self._inputs.items()}
        self._inputs_key = key
        self._pending = {}
        return True

    def _layer_inputs(self, base: Route):
        key = tuple(base.edits)
        if not self._resolve(key):
            ids = scored_ids(self.prompt_ids, self.target_ids)
            self._inputs = capture_layer_inputs(self.moe, ids, base, self._cache, self._cache_pos)
            self._inputs_key = key
            self._pending = {}
        return self._inputs

    def _cone_batch(self, chunk: list[Route], position: int, layer: int, base: Route,
                    use_cache: bool):
        """Scores of one batch over the causal cone, and the states it captured."""
        inputs = self._layer_inputs(base)
        seen: dict = {}
        # candidates differ from base only at (layer, position): see the API above
        narrow = self.narrow and position == self._cache_pos and layer + 1 in inputs
        pre = self._cache_pos if use_cache else 0
        args = (self.moe, self.prompt_ids, self.target_ids, chunk, layer, inputs[layer],
                self._cache if use_cache else None, pre)
        kw = dict(validate=False, next_input=inputs[layer + 1] if narrow else None,
                  layer_kwargs=self._layer_kwargs.setdefault(len(chunk), {}) if narrow else None)
        direct = self._direct_kwargs.setdefault((len(chunk), pre), {}) if self.direct else None
        if direct is not None:  # one route control for the edited row and the layers above
            with self.moe.lock, self.moe.control(chunk, validate=False) as ctl:
                lp = cone_target_logprob(*args, capture=seen, direct_kwargs=direct, control=ctl, **kw)
        else:
            lp = cone_target_logprob(*args, capture=seen, **kw)
        if direct is not None and not self._direct_checked:
            # once per search: the direct path must give the model call's numbers
            ref = cone_target_logprob(*args, **kw)
            self._direct_checked = True
            if not torch.allclose(lp, ref, rtol=1e-5, atol=1e-5):
                self.direct, seen = False, {}  # recompute: the capture came from the direct path
                lp = cone_target_logprob(*args, capture=seen, **kw)
        return lp, seen

    def _unread(self, position: int | None, layer: int | None, base: Route | None) -> float | None:
        """The base's score where candidates differ from it only at the last decoder layer
        before the scored positions (the rows predicting target tokens): nothing scored
        reads that layer's output there (its keys and values come from its input), so
        every such candidate scores exactly as the base. None where unknown."""
        if (not self.cone or layer != self._last_layer or base is None or position is None
                or position >= len(self.prompt_ids) - 1):
            return None
        return self._known.get(tuple(base.edits))

    def score(self, routes: Sequence[Route], position: int | None = None,
              layer: int | None = None, base: Route | None = None) -> list[float]:
        same = self._unread(position, layer, base)
        if same is not None:
            key = tuple(base.edits)
            self.forward_passes += len(routes)
            if self._resolve(key):  # the kept states become the base's (a candidate the
                # last step kept may still be pending); the candidates share them
                self._pending = {tuple(r.edits): SameStates(key) for r in routes}
            self._known = {key: same, **{tuple(r.edits): same for r in routes}}
            return [same] * len(routes)
        use_cache = self._cache is not None and position is not None and position >= self._cache_pos
        use_cone = (self.cone and layer is not None and base is not None and position is not None
                    and position >= self._cache_pos)
        out: list[float] = []
        pending: dict[tuple, SameStates | CapturedStates] = {}
        for i in range(0, len(routes), self.batch_size):
            chunk = list(routes[i:i + self.batch_size])
            if use_cone:
                lp, seen = self._cone_batch(chunk, position, layer, base, use_cache)
                for j, r in enumerate(chunk):
                    pending[tuple(r.edits)] = CapturedStates(layer, seen, j)
            elif use_cache:
                lp = target_logprob(self.moe, self.prompt_ids, self.target_ids, chunk,
                                    prefix_cache=self._cache, prefix_len=self._cache_pos)
            else:
                lp = target_logprob(self.moe, self.prompt_ids, self.target_ids, chunk)
            out.extend(float(x) for x in lp)
            self.forward_passes += len(chunk)
        if use_cone:
            self._pending = pending
        known = {tuple(r.edits): x for r, x in zip(routes, out)}
        if base is not None and tuple(base.edits) in self._known:
            known[tuple(base.edits)] = self._known[tuple(base.edits)]
        self._known = known
        return out


ENGINES = {"reference": ReferenceEngine, "fast": FastEngine}
#: The engine names a search accepts.
ENGINE_NAMES = ("fast", "reference")


def make_engine(name: str, moe, prompt_ids, target_ids):
    """An engine by name (``fast`` or ``reference``)."""
    try:
        return ENGINES[name](moe, prompt_ids, target_ids)
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; choose fast or reference") from None
