"""Per-model memo tables, owned by one :class:`~explorer.core.model.MoEModel`.

Nothing here changes what a computation returns: the tables only remember pure results
(a route's allowed-expert rows, whether the model's forward takes ``logits_to_keep``) so
that a search does not recompute them for every candidate. Each model owns its own
:class:`ModelCache` (``moe.cache``); no table lives at module level.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class ModelCache:
    """Bounded memo tables of one model (thread-safe)."""

    #: (num_experts, edits of one route at one layer) -> (glob (E,), table (P, E), P)
    route_rows: dict = field(default_factory=dict)
    #: (system, prompt, thinking mode) -> its template layout
    #: (:func:`explorer.research.common.prompt_layout`)
    layouts: dict = field(default_factory=dict)
    #: (prompt text, system prompt, thinking mode) -> its prepared
    #: :class:`~explorer.core.prompt.Prompt` (:meth:`~explorer.core.model.MoEModel.prepare`)
    prompts: dict = field(default_factory=dict)
    #: (a route's edits, its pinned layers) -> True once the route validated against this
    #: model (:class:`~explorer.core.control.RouteControl` validates each route once)
    valid_routes: dict = field(default_factory=dict)
    #: whether ``model.forward`` accepts ``logits_to_keep`` (None: not probed yet)
    logits_to_keep: bool | None = None
    #: whether the model's cache is of full-attention or sliding-window layers only, so
    #: that left-padded prompts can generate in one batch (None: not probed yet)
    paddable_cache: bool | None = None
    #: whether the fast engine's direct cone (decoder layers called one by one, then the
    #: final norm and the output projection) gives the model call's scores on this model
    #: (None: not checked yet; see :class:`explorer.engine.scoring.FastEngine`)
    direct_head: bool | None = None
    #: whether a decoder layer's output at one position equals, to the bit, its residual
    #: plus its feed-forward block run on that row alone (None: not checked yet; see
    #: :func:`explorer.engine.cone.feed_forward_rows_hold`)
    feed_forward_rows: bool | None = None
    #: where the chat template puts a system prompt: "role" or "merged" (None: not probed)
    system_placement: str | None = None
    #: what the chat template was probed for, by name (absent: not probed yet):
    #: "thinking" (the default of its thinking switch, None: no switch) and "end_of_turn"
    #: (the token id that ends an assistant turn, None: none found); see MoEModel
    template_probes: dict = field(default_factory=dict)
    #: pure results of methods on this model, keyed by what they were computed from (the
    #: expert statistics of a prompt-set pair, a SAFEx selection, an L3 classifier), so that
    #: an attack run over many prompts computes them once
    results: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def memo(self, table: dict, key: Any, build: Callable[[], Any], limit: int = 8192) -> Any:
        """``table[key]`` (one of this cache's tables), built with ``build()`` on a miss;
        the table is emptied when it reaches ``limit`` entries."""
        hit = table.get(key)
        if hit is not None:
            return hit
        value = build()
        with self._lock:
            if len(table) >= limit:
                table.clear()
            table[key] = value
        return value

    def rows(self, key: Any, build: Callable[[], Any]) -> Any:
        """``route_rows[key]`` (see :meth:`memo`)."""
        return self.memo(self.route_rows, key, build)

    def clear(self) -> None:
        """Forget every table."""
        with self._lock:
            self.route_rows.clear()
            self.layouts.clear()
            self.prompts.clear()
            self.valid_routes.clear()
            self.results.clear()
            self.logits_to_keep = None
            self.paddable_cache = None
            self.direct_head = None
            self.feed_forward_rows = None
            self.system_placement = None
            self.template_probes.clear()
