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

from explorer.core.defaults import (
    ENGINE_NAMES,  # noqa: F401  (its home; a public name here too)
    TIE_BAND,
    TIE_BAND_EXACT,
    TIE_BAND_EXACT_REL,
    TIE_BAND_REL,
)
from explorer.core.errors import InputError
from explorer.core.forward import (
    cache_of,
    keep_kwargs,
    prefill,
    reusable,
    split_cache,
    stack_caches,
    target_logprob,
)
from explorer.core.layers import decoder_layers
from explorer.core.route import Route
from explorer.engine.batching import search_batch_size
from explorer.engine.cone import (
    EXACT_MIN_ROWS,
    capture_layer_inputs,
    capturing_inputs,
    capturing_rows,
    cone_target_logprob,
    exact_arithmetic,
    feed_forward_rows_hold,
    full_shape_prefix,
    multi_cone_target_logprob,
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


def _edits_before(route: Route | None, position: int) -> tuple:
    """The edits of ``route`` that can change positions < ``position`` (every edit at an
    earlier position, and those at every position), in order."""
    if route is None:
        return ()
    return tuple(e for e in route.edits if e.position is None or e.position < position)


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
    #: the batch's feed-forward rows at the edited position (``{decoder layer: [residual,
    #: block input]}``, each (B, 1, H)) for the layers above ``layer``, where captured
    rows: dict | None = None


#: The key under which a cone batch's captured feed-forward rows travel with its states.
ROWS = "feed-forward rows"
#: Marks a deferred exact-path prefix forward (see :meth:`FastEngine.begin_position`).
EXACT = "exact prefix"


class ReferenceEngine:
    """One full forward per candidate (the published implementation's cost model)."""

    name = "reference"

    def __init__(self, moe: MoEModel, prompt_ids: Sequence[int], target_ids: Sequence[int]):
        self.moe, self.prompt_ids, self.target_ids = moe, list(prompt_ids), list(target_ids)
        self.forward_passes = 0
        self.rechecks = 0  # near-tie decisions re-taken on reference scores (by the search)
        # the unbatched forwards those re-checks and each attempt's reported log-prob ran
        self.recheck_passes = 0
        self._exact: dict[tuple, float] = {}  # route edits -> reference score

    def tie_band(self, value: float) -> float:
        """Half-width of the near-tie band of a decision on log-prob ``value``: how far the
        engine's scores may lie from the reference computation's (per parameter precision,
        see :data:`explorer.core.defaults.TIE_BAND`). The reference engine's own scores are
        the reference; its band only makes it take the decisions the others re-check."""
        rel = TIE_BAND_REL.get(self.moe.info.dtype, TIE_BAND_REL["float16"])
        return TIE_BAND + rel * abs(value)

    def reference_score(self, route: Route) -> float:
        """The reference computation's score of ``route``: one unbatched full forward (the
        numbers every engine's near-tie decisions are taken on; memoised per route)."""
        key = tuple(route.edits)
        if key not in self._exact:
            if len(self._exact) > 4096:
                self._exact.clear()
            self._exact[key] = float(target_logprob(self.moe, self.prompt_ids,
                                                    self.target_ids, [route])[0])
            self.recheck_passes += 1
        return self._exact[key]

    def begin_position(self, route: Route, position: int) -> None:
        """Called when a search moves to ``position`` (``route`` is final below it)."""

    def score(self, routes: Sequence[Route], position: int | None = None,
              layer: int | None = None, base: Route | None = None) -> list[float]:
        """Joint target log-prob for each route. ``position``/``layer``: where the
        candidates differ from ``base`` (the route so far); engines may exploit it."""
        out = []
        for r in routes:
            x = float(target_logprob(self.moe, self.prompt_ids, self.target_ids, [r])[0])
            if len(self._exact) > 4096:
                self._exact.clear()
            self._exact[tuple(r.edits)] = x  # its own numbers are the reference
            out.append(x)
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
        # 11.6 s). Its one-query attention rounds differently from the full forward's, so
        # it is off where the arithmetic is exact (below); $EXPLORER_CONE_NARROW=1/0 forces it.
        forced = narrow if narrow is not None else active_tuning().narrow
        # exact: every score is the reference computation's to the bit (see exact_arithmetic)
        self.exact = cone and not forced and exact_arithmetic(moe)
        self.narrow = forced if forced is not None else (moe.device.type == "cpu" and not self.exact)
        # the exact narrow step: the edited layer's feed-forward block alone at the edited
        # position (its attention part is the base's), from the base's rows captured by a
        # full-shape forward; checked to the bit once per model (see feed_forward_rows_hold)
        self.ff_narrow = self.exact and forced is None and moe.cache.feed_forward_rows is not False
        self._rows: dict = {}
        self._rows_key: tuple | None = None
        # direct: the layers above the edited one are called one by one with inputs
        # captured once per position (no model call per batch: no embedding, mask or rotary
        # work). Checked against the model call on the first batch; any difference turns
        # it off for the search. Default: on for CPU (measured there), off for GPU (not
        # measured); $EXPLORER_CONE_DIRECT=1/0 forces it.
        self.direct = _cpu_default(direct, "direct", moe) and output_head(moe) is not None
        # checked once per model (the first batch of its first search): a model property,
        # so later searches, first cells included, can join multi-prompt batches at once
        self._direct_checked = self.direct and moe.cache.direct_head is not None
        if self._direct_checked:
            self.direct = moe.cache.direct_head
        self._last_layer = len(decoder_layers(moe.model)) - 1
        self._known: dict = {}  # route edits -> score, for the last batch and its base
        self._reset()

    def _reset(self) -> None:
        self._cache, self._cache_pos = None, 0
        self._cache_route: Route | None = None  # the route the exact path built the cache under
        self._extension: tuple | None = None  # (route, position): a deferred cache extension
        self._inputs, self._inputs_key = None, None
        # candidates whose states are known without a forward, by their edits
        self._pending: dict[tuple, SameStates | CapturedStates] = {}
        self._layer_kwargs: dict = {}  # rows -> direct layer-call inputs at the current position
        self._direct_kwargs: dict = {}  # (rows, prefix length) -> the same for the whole cone

    def tie_band(self, value: float) -> float:
        """Half-width of the near-tie band of a decision on log-prob ``value`` (see
        :func:`explorer.methods.fsour.choose`): how far this engine's score of a route may
        lie from the reference computation's. Exact arithmetic (see :func:`exact_arithmetic`):
        :data:`~explorer.core.defaults.TIE_BAND_EXACT` (a float32 ulp or so, a guard only);
        else the measured float noise of the model's precision."""
        if self.exact:
            return TIE_BAND_EXACT + TIE_BAND_EXACT_REL * abs(value)
        return super().tie_band(value)

    def begin_position(self, route: Route, position: int) -> None:
        self.flush()
        if self.exact:
            # the prefix cache and the kept states from one forward of the positions past
            # the kept cache (see _restart_at): a cache grown token by token (one-row
            # products) rounds differently from the reference's one call. Deferred to the
            # next use (flush), so that a multi-prompt scorer can run those of several
            # searches in one call
            self._extension = (EXACT, route, position)
            return
        key = tuple(route.edits)
        step = (self._cache is not None or self._cache_pos == 0) and position == self._cache_pos + 1
        if step and self.cone and self._resolve(key):
            # the prefix cache grows by token position-1 (final now), its kept row goes; the
            # extension itself waits for the next use of the cache (see flush), so that a
            # multi-prompt scorer can run the extensions of several searches in one call
            self._extension = (route, self._cache_pos)
            self._inputs = {i: h[:, 1:] for i, h in self._inputs.items()}
            self._cache_pos = position
            self._pending = {}
            self._layer_kwargs = {}
            self._direct_kwargs = {}
            return
        self._restart_at(route, position)

    def _exact_reuse(self, route: Route, position: int) -> bool:
        """Can the exact path's next forward start from the kept prefix cache?"""
        return (self._cache is not None and 0 < self._cache_pos <= position
                and _edits_before(self._cache_route, self._cache_pos)
                == _edits_before(route, self._cache_pos))

    def _adopt(self, cache, position: int, route: Route, inputs: dict, rows: dict) -> None:
        """Make ``cache``, ``inputs`` and ``rows`` (of ``route`` at ``position``) the kept ones."""
        self._reset()
        self._cache, self._cache_pos, self._cache_route = cache, position, route
        self._inputs, self._inputs_key = inputs, tuple(route.edits)
        self._rows, self._rows_key = rows, tuple(route.edits)

    def _restart_at(self, route: Route, position: int) -> None:
        # the prefix cache so far covers positions < its length, final under every later
        # route: the next one only runs the positions from there on
        if self.exact:
            rows: dict = {}
            reuse = self._exact_reuse(route, position)
            cache, inputs = full_shape_prefix(self.moe, scored_ids(self.prompt_ids, self.target_ids),
                                              route, position, rows if self.ff_narrow else None,
                                              self._cache if reuse else None,
                                              self._cache_pos if reuse else 0)
            if position == 0 or cache is not None:
                self._adopt(cache, position, route, inputs, rows)
                if self.ff_narrow and self.moe.cache.feed_forward_rows is None:
                    self.moe.cache.feed_forward_rows = feed_forward_rows_hold(
                        self.moe, route, position, inputs, rows, EXACT_MIN_ROWS)
                    self.ff_narrow = self.moe.cache.feed_forward_rows
                return
            self.exact = False  # a cache that cannot be cut: grow it token by token
        self._reset()
        if position > 0:
            _, cache = prefill(self.moe, self.prompt_ids[:position], route)
            if cache is not None and reusable(cache):
                self._cache, self._cache_pos = cache, position

    def flush(self) -> None:
        """Run a deferred prefix-cache extension (see :meth:`begin_position`)."""
        if self._extension is None:
            return
        if self._extension[0] is EXACT:
            _, route, position = self._extension
            self._extension = None
            self._restart_at(route, position)
            return
        route, prev = self._extension
        self._extension = None
        if not self._extend_cache(route, prev):
            self._restart_at(route, prev + 1)

    def _extended(self, cache) -> None:
        """A deferred extension done elsewhere (one row of a batched call): ``cache``."""
        self._extension = None
        self._cache = cache

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
            if self._rows_key == hit.base:
                self._rows_key = key
            self._inputs_key, self._pending = key, {}
            return True
        layer, seen, row = hit.layer, hit.seen, hit.row
        # a copy of the kept row: a view would keep the whole batch's states alive (with many
        # prompts per batch, one per search)
        self._inputs = {i: (h if i <= layer else seen[i][row:row + 1].clone())
                        for i, h in self._inputs.items()}
        if hit.rows is not None and self._rows_key == self._inputs_key:
            # the feed-forward rows: the base's up to the edited layer, the batch's above
            self._rows = {i: r for i, r in self._rows.items() if i <= layer}
            self._rows.update({i: [x[row:row + 1].clone() for x in v]
                               for i, v in hit.rows.items() if i > layer})
            self._rows_key = key
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
        ff = (self.ff_narrow and position == self._cache_pos and len(chunk) >= EXACT_MIN_ROWS
              and layer + 1 < len(decoder_layers(self.moe.model)))
        inputs = self._layer_inputs(base)  # a kept candidate's rows come with its states
        if ff and self._rows_key != tuple(base.edits):
            self._restart_at(base, position)  # the base's rows (one full-shape forward)
            inputs = self._layer_inputs(base)
        ff = ff and layer in self._rows
        seen: dict = {}
        # candidates differ from base only at (layer, position): see the API above
        narrow = (self.narrow or ff) and position == self._cache_pos and layer + 1 in inputs
        pre = self._cache_pos if use_cache else 0
        args = (self.moe, self.prompt_ids, self.target_ids, chunk, layer, inputs[layer],
                self._cache if use_cache else None, pre)
        kw = dict(validate=False, next_input=inputs[layer + 1] if narrow else None,
                  layer_kwargs=self._layer_kwargs.setdefault(len(chunk), {}) if narrow else None,
                  ff_rows=tuple(self._rows[layer]) if narrow and ff else None)
        direct = self._direct_kwargs.setdefault((len(chunk), pre), {}) if self.direct else None
        if direct is not None:  # one route control for the edited row and the layers above
            rows = {} if self.ff_narrow and position == self._cache_pos else None
            with self.moe.lock, self.moe.control(chunk, validate=False) as ctl, \
                    capturing_rows(self.moe, 0, rows, first=layer + 1):
                lp = cone_target_logprob(*args, capture=seen, direct_kwargs=direct, control=ctl, **kw)
            if rows:
                seen[ROWS] = rows
        else:
            lp = cone_target_logprob(*args, capture=seen, **kw)
        if direct is not None and not self._direct_checked:
            # once per search: the direct path must give the model call's numbers
            ref = cone_target_logprob(*args, **kw)
            self._direct_checked = True
            if not torch.allclose(lp, ref, rtol=1e-5, atol=1e-5):
                self.direct, seen = False, {}  # recompute: the capture came from the direct path
                lp = cone_target_logprob(*args, capture=seen, **kw)
            self.moe.cache.direct_head = self.direct
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

    def _shortcut(self, routes, position, layer, base) -> list[float] | None:
        """Scores known without a forward (see :meth:`_unread`), or None."""
        same = self._unread(position, layer, base)
        if same is None:
            return None
        key = tuple(base.edits)
        self.forward_passes += len(routes)
        if self._resolve(key):  # the kept states become the base's (a candidate the
            # last step kept may still be pending); the candidates share them
            self._pending = {tuple(r.edits): SameStates(key) for r in routes}
        self._known = {key: same, **{tuple(r.edits): same for r in routes}}
        return [same] * len(routes)

    def _settle(self, routes, base, out: list[float], pending: dict | None) -> list[float]:
        """Record a scored step: the captured states of its candidates (``pending``, for
        cone steps), the scores known for the next step, and the passes."""
        if pending is not None:
            self._pending = pending
        known = {tuple(r.edits): x for r, x in zip(routes, out)}
        if base is not None and tuple(base.edits) in self._known:
            known[tuple(base.edits)] = self._known[tuple(base.edits)]
        self._known = known
        self.forward_passes += len(routes)
        return out

    def score(self, routes: Sequence[Route], position: int | None = None,
              layer: int | None = None, base: Route | None = None) -> list[float]:
        self.flush()
        same = self._shortcut(routes, position, layer, base)
        if same is not None:
            return same
        use_cache = self._cache is not None and position is not None and position >= self._cache_pos
        use_cone = (self.cone and layer is not None and base is not None and position is not None
                    and position >= self._cache_pos)
        out: list[float] = []
        pending: dict[tuple, SameStates | CapturedStates] = {}
        for i in range(0, len(routes), self.batch_size):
            chunk = list(routes[i:i + self.batch_size])
            if use_cone:
                lp, seen = self._cone_batch(chunk, position, layer, base, use_cache)
                rows = seen.pop(ROWS, None)
                for j, r in enumerate(chunk):
                    pending[tuple(r.edits)] = CapturedStates(layer, seen, j, rows)
            elif use_cache:
                lp = target_logprob(self.moe, self.prompt_ids, self.target_ids, chunk,
                                    prefix_cache=self._cache, prefix_len=self._cache_pos)
            else:
                lp = target_logprob(self.moe, self.prompt_ids, self.target_ids, chunk)
            out.extend(float(x) for x in lp)
        return self._settle(routes, base, out, pending if use_cone else None)

    def suffix_len(self, prefix_len: int) -> int:
        """Positions a cone batch runs from ``prefix_len`` (prompt and target but the last
        target token)."""
        return len(self.prompt_ids) + len(self.target_ids) - 1 - prefix_len

    def _cone_part(self, routes, position, layer, base) -> ConePart | None:
        """This step as a part of a multi-prompt batch (see :func:`score_many`), or None
        where it must run alone: not a cone step, the direct path off or not yet checked
        against the model call, more rows than one batch, or a prefix cache that cannot
        be stacked."""
        self.flush()
        if not (self.cone and (self._direct_checked or not self.direct) and layer is not None
                and base is not None and position is not None and position >= self._cache_pos
                and len(routes) <= self.batch_size):
            return None
        inputs = self._layer_inputs(base)
        ff = (self.ff_narrow and self.direct and position == self._cache_pos
              and len(routes) >= EXACT_MIN_ROWS and layer + 1 in inputs
              and self._rows_key == tuple(base.edits) and layer in self._rows)
        narrow = (self.narrow or ff) and position == self._cache_pos and layer + 1 in inputs
        return ConePart(self, list(routes), position, layer, base, inputs, narrow, self.direct,
                        self._cache_pos if self._cache is not None else 0, self._cache,
                        tuple(self._rows[layer]) if ff else None)


@dataclass
class ConePart:
    """One prompt's share of a multi-prompt cone batch: its engine, candidates, cell, base
    route, the states its base keeps, and its prefix (length and cache)."""

    engine: FastEngine
    routes: list
    position: int
    layer: int
    base: Route
    inputs: dict
    narrow: bool
    direct: bool
    prefix_len: int
    cache: object
    #: the base's feed-forward rows at the cell (the exact narrow step), or None
    ff_rows: tuple | None = None


class MultiScorer:
    """Scores the steps of several searches together (see :func:`score_many`); holds the
    per-shape layer arguments and the last stacked prefix cache between calls.
    ``max_rows``: rows per batch (default: the smallest of the engines' batch sizes);
    ``max_tokens``: rows x positions per batch (default: the active tuning's
    ``multi_tokens``, else :data:`CPU_MULTI_TOKENS` per torch thread on CPU and no limit
    on a GPU). ``batches``, ``rows`` and
    ``tokens`` count the multi-prompt batches run, their rows and their padded positions."""

    def __init__(self, moe: MoEModel, max_rows: int | None = None, max_tokens: int | None = None):
        self.moe, self.max_rows = moe, max_rows
        if max_tokens is None:
            max_tokens = active_tuning().multi_tokens
        if max_tokens is None and moe.device.type == "cpu":
            max_tokens = CPU_MULTI_TOKENS * max(1, torch.get_num_threads())
        self.max_tokens = max_tokens
        self.tokens = 0
        self._memo: dict = {}
        self._stacked: tuple | None = None  # ((cache, first keys, rows) per part, stacked)
        self.batches = self.rows = 0

    def _stack(self, parts: list[ConePart]):
        if parts[0].prefix_len == 0:
            return None
        sig = [(p.cache, p.cache.layers[0].keys if p.cache.layers else None, len(p.routes))
               for p in parts]
        if self._stacked is not None and len(self._stacked[0]) == len(sig) and all(
                a[0] is b[0] and a[1] is b[1] and a[2] == b[2]
                for a, b in zip(self._stacked[0], sig)):
            return self._stacked[1]
        stacked = stack_caches([p.cache for p in parts], [len(p.routes) for p in parts])
        self._stacked = (sig, stacked) if stacked is not None else None
        return stacked

    def _run_into(self, batch: list[tuple[int, ConePart]], results: list) -> None:
        """Score one batch of ``(request index, part)`` into ``results``."""
        for (i, _), scores in zip(batch, self._run([p for _, p in batch])):
            results[i] = scores

    def _run(self, parts: list[ConePart]) -> list[list[float]]:
        """The parts' scores: one multi-prompt batch, or each engine alone where the
        batch has one part or the prefix caches cannot be stacked."""
        p0 = parts[0]
        cache = self._stack(parts) if len(parts) > 1 else None
        if len(parts) == 1 or (p0.prefix_len and cache is None):
            return [p.engine.score(p.routes, p.position, p.layer, p.base) for p in parts]
        seen: dict = {}
        ff = p0.ff_rows is not None
        rows: dict | None = {} if ff else None
        lps = multi_cone_target_logprob(
            self.moe, [(p.engine.prompt_ids, p.engine.target_ids, p.routes, p.inputs)
                       for p in parts],
            p0.layer, p0.prefix_len, cache, narrow=p0.narrow, memo=self._memo, capture=seen,
            direct=p0.direct, ff_rows=[p.ff_rows for p in parts] if ff else None,
            capture_rows=rows)
        self.batches += 1
        self.rows += sum(len(p.routes) for p in parts)
        self.tokens += sum(len(p.routes) for p in parts) * max(p.engine.suffix_len(p.prefix_len)
                                                               for p in parts)
        out, r0 = [], 0
        for p, lp in zip(parts, lps):
            n = len(p.routes)
            mine = {i: h[r0:r0 + n] for i, h in seen.items()}
            my_rows = ({i: [x[r0:r0 + n] for x in v] for i, v in rows.items()}
                       if rows else None)
            pending = {tuple(r.edits): CapturedStates(p.layer, mine, j, my_rows)
                       for j, r in enumerate(p.routes)}
            out.append(p.engine._settle(p.routes, p.base, [float(x) for x in lp], pending))
            r0 += n
        return out

    def extend(self, engines: Sequence) -> None:
        """Run the deferred prefix-cache extensions of ``engines`` (see
        :meth:`FastEngine.begin_position`): those at the same prefix length in one call with
        a row per engine, each row under its engine's route; the rest one by one."""
        waiting: dict[int, list] = {}
        exact: dict[tuple, list] = {}
        for eng in engines:
            ext = getattr(eng, "_extension", None)
            if ext is None:
                continue
            if ext[0] is EXACT:  # batched where they share a kept prefix length and position
                if eng._exact_reuse(ext[1], ext[2]) and self.moe.cache.feed_forward_rows is not None:
                    exact.setdefault((eng._cache_pos, ext[2]), []).append(eng)
                else:
                    eng.flush()
                continue
            waiting.setdefault(ext[1], []).append(eng)
        for (start, position), engs in exact.items():
            self._exact_prefixes(engs, start, position)
        for prev, engs in waiting.items():
            if len(engs) < 2:
                engs[0].flush()
                continue
            stacked = None if prev == 0 else stack_caches([e._cache for e in engs], [1] * len(engs))
            if prev and stacked is None:
                for e in engs:
                    e.flush()
                continue
            dev = self.moe.device
            ids = torch.tensor([[e.prompt_ids[prev]] for e in engs], device=dev)
            kw = {"cache": stacked} if stacked is not None else {}
            with self.moe.lock, torch.inference_mode(), \
                    self.moe.control([e._extension[0] for e in engs], validate=False):
                out = self.moe.model(input_ids=ids, use_cache=True,
                                     position_ids=torch.full((len(engs), 1), prev, device=dev),
                                     **kw, **keep_kwargs(self.moe, 1))
            parts = split_cache(cache_of(out), len(engs))
            for e, c in zip(engs, parts):
                if c is None or not reusable(c):
                    e.flush()
                else:
                    e._extended(c)

    def _exact_prefixes(self, engs: list, start: int, position: int) -> None:
        """The exact path's per-position forwards of ``engs`` (each with a kept prefix cache
        of ``start`` positions, moving to ``position``) in one call: suffixes right-padded,
        each row under its engine's route (the same bits as each alone: see
        :func:`~explorer.engine.cone.exact_arithmetic`)."""
        caches = [e._cache for e in engs]
        stacked = stack_caches(caches, [1] * len(engs)) if len(engs) > 1 else None
        if stacked is None:
            for e in engs:
                e.flush()
            return
        seqs = [scored_ids(e.prompt_ids, e.target_ids)[start:] for e in engs]
        S = max(len(x) for x in seqs)
        dev = self.moe.device
        ids = torch.tensor([x + [0] * (S - len(x)) for x in seqs], device=dev)
        seen: dict = {}
        rows: dict = {}
        ff = self.moe.cache.feed_forward_rows is True
        with self.moe.lock, torch.inference_mode(), capturing_inputs(self.moe, seen), \
                capturing_rows(self.moe, position - start, rows if ff else None), \
                self.moe.control([e._extension[1] for e in engs], validate=False):
            out = self.moe.model(input_ids=ids, cache=stacked, use_cache=True,
                                 position_ids=torch.arange(start, start + S, device=dev)
                                 .unsqueeze(0).expand(len(engs), -1),
                                 attention_mask=torch.ones(len(engs), start + S, dtype=torch.long,
                                                           device=dev),
                                 **keep_kwargs(self.moe, 1))
        for b, (e, c, x) in enumerate(zip(engs, split_cache(cache_of(out), len(engs)), seqs)):
            route = e._extension[1]
            e._extension = None
            if c is None:
                e._restart_at(route, position)
                continue
            c.crop(position - (start + S))
            e._adopt(c, position, route,
                     {i: h[b:b + 1, position - start:len(x)] for i, h in seen.items()},
                     {i: [v[b:b + 1] for v in r] for i, r in rows.items()})

    def score(self, requests: Sequence[tuple]) -> list[list[float]]:
        """Scores for ``requests``, each ``(engine, routes, position, layer, base)``, as
        each engine's own :meth:`~FastEngine.score` would return them (up to float
        rounding): steps of different prompts at the same position and layer share
        batches; the rest run alone."""
        results: list = [None] * len(requests)
        self.extend([r[0] for r in requests if isinstance(r[0], FastEngine)])
        groups: dict[tuple, list[tuple[int, ConePart]]] = {}
        for i, (eng, routes, position, layer, base) in enumerate(requests):
            if isinstance(eng, FastEngine):
                same = eng._shortcut(routes, position, layer, base)
                if same is not None:
                    results[i] = same
                    continue
                part = eng._cone_part(routes, position, layer, base)
                if part is not None:
                    key = (part.position, part.layer, part.prefix_len, part.narrow, part.direct,
                           part.ff_rows is not None)
                    groups.setdefault(key, []).append((i, part))
                    continue
            results[i] = eng.score(routes, position=position, layer=layer, base=base)
        for members in groups.values():
            # longest suffix first, so that each batch pads little; a batch closes at the
            # row cap or the token budget (rows x the batch's longest suffix)
            members.sort(key=lambda m: -m[1].engine.suffix_len(m[1].prefix_len))
            cap = self.max_rows or min(p.engine.batch_size for _, p in members)
            batch: list[tuple[int, ConePart]] = []
            rows = 0
            for item in members:
                n = len(item[1].routes)
                width = (batch or [item])[0][1].engine.suffix_len(item[1].prefix_len)
                if batch and (rows + n > cap or (self.max_tokens is not None
                                                 and (rows + n) * width > self.max_tokens)):
                    self._run_into(batch, results)
                    batch, rows = [], 0
                batch.append(item)
                rows += n
            if batch:
                self._run_into(batch, results)
        return results


#: Token rows per multi-prompt batch on CPU, per torch thread (demo model, 16 AdvBench rows x
#: 10 candidates, 1 thread: a cap of 4096 ran x1.51-1.72 the one-at-a-time speed, 2048
#: x1.44, 1024 x1.05, no cap x1.33-1.56: larger products leave the CPU's caches; 2 threads:
#: 8192 x2.16, no cap x2.24).
CPU_MULTI_TOKENS = 4096

ENGINES = {"reference": ReferenceEngine, "fast": FastEngine}


def make_engine(name: str, moe, prompt_ids, target_ids):
    """An engine by name (``fast`` or ``reference``)."""
    try:
        return ENGINES[name](moe, prompt_ids, target_ids)
    except KeyError:
        raise InputError(f"unknown engine {name!r}; choose {' or '.join(ENGINE_NAMES)}") \
            from None
