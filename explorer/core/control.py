"""RouteControl: record what the routers do and intervene on their choices.

Mechanism (one for every family, see DESIGN.md): a forward pre-hook on each router
pushes a :class:`torch.overrides.TorchFunctionMode` that lives only while that router's
forward runs. The mode recognises the router's own ``F.linear`` by its weight (and aliases
made by ``.float()``, ``.type()``, ``.to()`` ...), records its output (the raw router
logits) and adds a per-token additive mask (0 = allowed, -inf = forbidden). Routers that
add a selection-only bias after the softmax/sigmoid (deepseek_v3, glm4_moe, ernie4_5_moe)
also get a finite mask on that biased "choice" score. The forward hook pops the mode.
What the model dispatched is read from the experts module's inputs (or the router's
outputs for llama4 and jetmoe).

The router sees a flattened (batch x seq) input. A pre-hook on the decoder maps rows to
(batch row, absolute position) from the cache length, so routes work with cached decoding
and with a prefix cache shared by B candidate rows (one route per row).

Hooks exist only inside ``with RouteControl(...)``; ``__exit__`` always removes them.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from explorer.core.cache import ModelCache
from explorer.core.layers import LayerHandles, ModelInfo, choice_biases, router_weight
from explorer.core.route import Route, RouteError


class RoutedModel(Protocol):
    """What :class:`RouteControl` needs of a model: its description, its MoE layers' hook
    sites, its own cache and the decoder base (:class:`~explorer.core.model.MoEModel`
    has them all)."""

    info: ModelInfo
    handles: list[LayerHandles]
    cache: ModelCache
    base: torch.nn.Module

NEG_INF = float("-inf")
CHOICE_MASK = -1.0e4  # finite: selection biases are added after a sigmoid/softmax
_LINEARS = {F.linear, torch._C._nn.linear}
_ALIAS_OPS = {"type", "float", "to", "squeeze", "contiguous", "view", "reshape", "detach",
              "t", "transpose", "bfloat16", "half", "double", "clone", "__get__"}
_ADD_OPS = {"add", "__add__", "__radd__", "add_", "__iadd__"}


class _RouterMode(TorchFunctionMode):
    """Active only during one router forward: masks its logits and choice scores."""

    def __init__(self, ctl: "RouteControl", handles: LayerHandles):
        super().__init__()
        self.ctl, self.h = ctl, handles
        self.weights = {id(handles.weight): handles.weight}
        self.biases = {id(b): b for b in handles.choice_biases}
        self.done = False
        # accelerate's offload hook (device_map with "cpu"/"disk" entries) puts fresh
        # tensors in the router inside its forward, after this mode is entered: look them
        # up as the router's ops run
        self.offloaded = hasattr(handles.router, "_hf_hook")

    def _refresh(self) -> None:
        w = router_weight(self.h.router)
        self.weights.setdefault(id(w), w)
        for b in choice_biases(self.h.router):
            self.biases.setdefault(id(b), b)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.offloaded and not self.done and args:
            self._refresh()
        if (func in _LINEARS and not self.done and len(args) >= 2
                and id(args[1]) in self.weights):
            self.done = True
            return self.ctl._on_logits(self.h, func(*args, **kwargs))
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if args and isinstance(out, torch.Tensor):
            if name in _ALIAS_OPS:
                if id(args[0]) in self.weights:
                    self.weights[id(out)] = out
                elif id(args[0]) in self.biases:
                    self.biases[id(out)] = out
            elif name in _ADD_OPS and self.biases and any(
                    id(a) in self.biases for a in args[:2]):
                out = self.ctl._on_choice(self.h, out)
        return out


def cache_length(cache) -> int:
    """Tokens already in ``cache``: the longest layer (hybrid caches have empty layers)."""
    if cache is None:
        return 0
    layers = getattr(cache, "layers", None)
    if layers:
        lens = [int(lay.get_seq_length()) for lay in layers if hasattr(lay, "get_seq_length")]
        if lens:
            return max(lens)
    return int(cache.get_seq_length()) if hasattr(cache, "get_seq_length") else 0


def _as_routes(routes: Route | Sequence[Route | None] | None) -> list[Route] | None:
    if routes is None:
        return None
    if isinstance(routes, Route):
        return [routes]
    return [r if r is not None else Route() for r in routes]


_DEFENSE: contextvars.ContextVar[Route | None] = contextvars.ContextVar("explorer_defense",
                                                                        default=None)


def active_defense() -> Route | None:
    """The defense in force in this context (see :func:`defended`), or None."""
    return _DEFENSE.get()


@contextlib.contextmanager
def defended(defense: Route | None) -> Iterator[Route | None]:
    """Run the body with ``defense`` (a route of model-wide mask edits, e.g. from
    :func:`explorer.research.defense.derive_defense`) composed with every route that
    :class:`RouteControl` applies in this thread or task; None lifts any defense.

    The defense lives in a context variable, never on the model: other threads using the
    same model are not defended, and the previous defense is back after the block.
    """
    token = _DEFENSE.set(defense if defense is not None and defense.defends else None)
    try:
        yield active_defense()
    finally:
        _DEFENSE.reset(token)


def _route_rows(edits: tuple, E: int, cache: ModelCache | None = None):
    """Allowed experts of one route at one layer: every position (E,) and per position
    (P, E); edits compose by intersection. Cached in ``cache`` (the model's own): a
    search's candidates share most of their layers with the route so far."""
    if cache is not None:
        return cache.rows((E, edits), lambda: _route_rows(edits, E))
    P = 1 + max((e.position for e in edits if e.position is not None), default=-1)
    glob = np.ones(E, dtype=bool)
    table = np.ones((max(P, 1), E), dtype=bool)
    for e in edits:
        ex = list(e.experts)
        if e.mode == "mask":
            if e.position is None:
                glob[ex] = False
            else:
                table[e.position, ex] = False
        else:
            keep = np.zeros(E, dtype=bool)
            keep[ex] = True
            if e.position is None:
                glob &= keep
            else:
                table[e.position] &= keep
    return glob, table, P


def _layer_table(per_row: list[tuple], E: int, cache: ModelCache | None = None):
    """(glob (B,E), table (B,P,E), P) for one layer from each row's edits there; (1,E) and
    (1,P,E) when every row has the same edits (a search's candidates, at all but one layer)."""
    first = per_row[0]
    if all(r == first for r in per_row[1:]):  # identity-first compares: cheaper than hashing
        per_row = [first]
    rows = [_route_rows(edits, E, cache) for edits in per_row]
    P = max(r[2] for r in rows)
    glob = np.stack([r[0] for r in rows])
    table = np.ones((len(rows), max(P, 1), E), dtype=bool)
    for b, (_, t, p) in enumerate(rows):
        if p > 0:
            table[b, :p] = t
    return torch.from_numpy(glob), torch.from_numpy(table), P


@dataclass
class RouterRecord:
    """What one MoE layer's router did in one forward: the router logits (recorded when its
    ``F.linear`` runs, before any mask; None when not recorded) and the experts dispatched
    with their gate weights (None until the experts run). Shapes: (B, S, E) and (B, S, k);
    ``offset`` is the absolute position of the forward's first token."""

    logits: torch.Tensor | None = None
    experts: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    offset: int = 0


def validity_key(route: Route) -> tuple:
    """What a route's validity against a model depends on: its edits and pinned layers."""
    return tuple(route.edits), repr(route.info.get("protect_layers"))


def remember_valid(moe, route: Route) -> None:
    """Record that ``route`` validated against ``moe`` (by a caller that validated it, with
    the prompt's length too): :class:`RouteControl` then does not validate it again."""
    cache = getattr(moe, "cache", None)
    if cache is not None:
        cache.memo(cache.valid_routes, validity_key(route), lambda: True, limit=4096)


class RouteControl:
    """Record routing and/or apply routes while active (a context manager).

    ``routes``: one :class:`Route` for every batch row, or a list with one route per row
    (B candidate routes in one forward). ``record`` keeps, per MoE layer and forward, the
    experts used, their gate weights and (``record_logits``) the raw router logits.
    ``pad_offsets[b]`` is the number of left-padding tokens of row b (positions in a route
    are positions in that row's own templated prompt). ``defense``: model-wide mask edits
    composed with every route (default: the one :func:`defended` put in force, if any).
    """

    def __init__(self, moe: RoutedModel, routes=None, record: bool = False,
                 record_logits: bool = True, pad_offsets: Sequence[int] | None = None,
                 validate: bool = True, defense: Route | None = None):
        self.moe = moe
        self.defense = defense if defense is not None else active_defense()
        self.record = record
        self.record_logits = record_logits
        self.pad_offsets = list(pad_offsets) if pad_offsets is not None else None
        self.validate = validate
        self.records: dict[int, list[RouterRecord]] = {}
        self._hooks: list = []
        self._modes: list[_RouterMode] = []
        self._state: dict = {}
        self._tables: dict[int, tuple] = {}
        self._mask_cache: dict = {}
        self.set_routes(routes)

    # -- routes -> per-layer tables -------------------------------------------------
    def set_routes(self, routes) -> None:
        """Replace the active routes (validated against the model)."""
        self.routes = _as_routes(routes)
        defense = self.defense
        if defense is not None and defense.defends:
            self.routes = [r.under_defense(defense) for r in (self.routes or [Route()])]
        self._tables.clear()
        self._mask_cache.clear()
        if not self.routes:
            return
        info = self.moe.info
        if self.validate:
            cache = getattr(self.moe, "cache", None)
            for r in self.routes:
                if cache is None:
                    r.validate(info)
                    continue
                # a route valid for this model stays valid: validated once per model
                cache.memo(cache.valid_routes, validity_key(r),
                           lambda r=r: r.validate(info) or True, limit=4096)
        B = len(self.routes)
        by_layer: dict[int, list[list]] = {}
        for b, r in enumerate(self.routes):
            for e in r.edits:
                rows = by_layer.get(e.layer)
                if rows is None:
                    rows = by_layer[e.layer] = [[] for _ in range(B)]
                rows[b].append(e)
        for h in self.moe.handles:
            lay = h.info.index
            if lay in by_layer:
                self._tables[lay] = _layer_table([tuple(x) for x in by_layer[lay]],
                                                 h.info.num_experts, self.moe.cache)

    # -- context manager --------------------------------------------------------------
    def __enter__(self) -> "RouteControl":
        try:
            self._install()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._remove()

    def _install(self) -> None:
        base = self.moe.base
        self._hooks.append(base.register_forward_pre_hook(self._on_decoder, with_kwargs=True))
        for h in self.moe.handles:
            self._hooks.append(h.router.register_forward_pre_hook(
                lambda mod, args, h=h: self._enter_router(h)))
            self._hooks.append(h.router.register_forward_hook(
                lambda mod, args, out, h=h: self._exit_router(h, out)))
            if self.record and h.capture == "experts-args" and h.experts is not None:
                self._hooks.append(h.experts.register_forward_pre_hook(
                    lambda mod, args, kwargs, h=h: self._on_experts(h, args, kwargs),
                    with_kwargs=True))

    def _remove(self) -> None:
        while self._modes:
            self._modes.pop().__exit__(None, None, None)
        for hk in self._hooks:
            hk.remove()
        self._hooks.clear()

    # -- hooks ------------------------------------------------------------------------------
    def _on_decoder(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        emb = kwargs.get("inputs_embeds")
        ref = ids if ids is not None else emb
        B, S = int(ref.shape[0]), int(ref.shape[1])
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self.set_window(B, S, cache_length(cache))

    def set_window(self, batch: int, tokens: int, offset: int) -> None:
        """Declare the rows, tokens and first position of the next call to a decoder layer.

        The model's own forward does this through a hook; a caller that runs a decoder
        layer directly (see :func:`explorer.engine.cone.layer_output_at`) must say it here.
        """
        if self.routes is not None and len(self.routes) not in (1, batch):
            raise RouteError(f"{len(self.routes)} routes given for a batch of {batch} rows")
        self._state = {"B": batch, "S": tokens, "offset": offset}

    def _enter_router(self, h: LayerHandles):
        mode = _RouterMode(self, h)
        mode.__enter__()
        self._modes.append(mode)

    def _exit_router(self, h: LayerHandles, out):
        if self._modes:
            self._modes.pop().__exit__(None, None, None)
        if not self.record:
            return
        if h.capture == "llama4-scores":
            scores = out[0]
            w, idx = torch.topk(scores.float(), h.info.top_k, dim=-1)
            self._store(h, idx, w)
        elif h.capture == "jetmoe-gating":
            sorted_idx, batch_index, gates, sizes = out[0], out[1], out[2], out[3]
            k = h.info.top_k
            n = sorted_idx.numel() // k
            experts = torch.repeat_interleave(
                torch.arange(len(sizes), device=sorted_idx.device),
                torch.as_tensor(sizes, device=sorted_idx.device))
            idx = torch.empty(n, k, dtype=torch.long, device=sorted_idx.device)
            w = torch.empty(n, k, dtype=gates.dtype, device=sorted_idx.device)
            idx[batch_index, sorted_idx % k] = experts
            w[batch_index, sorted_idx % k] = gates
            self._store(h, idx, w)

    def _on_experts(self, h: LayerHandles, args, kwargs):
        cands = list(args[1:]) + list(kwargs.values())
        idx = next((t for t in cands if isinstance(t, torch.Tensor)
                    and not t.is_floating_point()), None)
        w = next((t for t in cands if isinstance(t, torch.Tensor) and t.is_floating_point()
                  and idx is not None and t.shape == idx.shape), None)
        if idx is not None:
            self._store(h, idx, w)

    def _store(self, h: LayerHandles, idx, w):
        B, S = self._state.get("B", 1), self._state.get("S", idx.shape[0])
        rec = self.records.setdefault(h.info.index, [])
        if not rec or rec[-1].experts is not None:  # no router logits waiting for it
            rec.append(RouterRecord())
        entry = rec[-1]
        entry.experts = idx.detach().reshape(B, S, -1).cpu()
        entry.weights = w.detach().float().reshape(B, S, -1).cpu() if w is not None else None
        entry.offset = self._state.get("offset", 0)

    # -- masks ------------------------------------------------------------------------------
    def _allowed(self, h: LayerHandles, n_rows: int, device) -> torch.Tensor | None:
        lay = h.info.index
        tab = self._tables.get(lay)
        if tab is None:
            return None
        st = self._state
        B, S, offset = st.get("B", 1), st.get("S", n_rows), st.get("offset", 0)
        if B * S != n_rows:  # a router call we cannot map (should not happen)
            raise RouteError(f"router at layer {lay} saw {n_rows} rows, expected {B}x{S}")
        key = (lay, B, S, offset, str(device))
        hit = self._mask_cache.get(key)
        if hit is not None:
            return hit
        glob, table, P = tab
        if glob.shape[0] == 1 and B > 1:
            glob, table = glob.expand(B, -1), table.expand(B, -1, -1)
        pos = torch.arange(S).unsqueeze(0) + offset
        if self.pad_offsets is not None:
            pos = pos - torch.tensor(self.pad_offsets).unsqueeze(1)
        pos = pos.expand(B, S)
        inside = (pos >= 0) & (pos < P)
        spec = table[torch.arange(B).unsqueeze(1), pos.clamp(0, max(P - 1, 0))]
        spec = torch.where(inside.unsqueeze(-1), spec, torch.ones_like(spec))
        allowed = (glob.unsqueeze(1) & spec).reshape(B * S, -1).to(device)
        if len(self._mask_cache) > 256:
            self._mask_cache.clear()
        self._mask_cache[key] = allowed
        return allowed

    def _on_logits(self, h: LayerHandles, logits: torch.Tensor) -> torch.Tensor:
        if self.record and self.record_logits:
            B, S = self._state.get("B", 1), self._state.get("S", logits.shape[0])
            self.records.setdefault(h.info.index, []).append(
                RouterRecord(logits=logits.detach().float().reshape(B, S, -1).cpu()))
        return self._masked(h, logits, NEG_INF)

    def _on_choice(self, h: LayerHandles, scores: torch.Tensor) -> torch.Tensor:
        return self._masked(h, scores, CHOICE_MASK)

    def _masked(self, h: LayerHandles, x: torch.Tensor, value: float) -> torch.Tensor:
        """``x`` (rows x experts) plus ``value`` wherever an expert is not allowed."""
        allowed = self._allowed(h, x.reshape(-1, x.shape[-1]).shape[0], x.device)
        if allowed is None:
            return x
        mask = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device)
        mask.masked_fill_(~allowed, value)
        return x + mask.reshape(x.shape)

    # -- results -----------------------------------------------------------------------------
    def clear(self) -> None:
        self.records.clear()

    def collected(self, layer: int) -> dict[str, torch.Tensor]:
        """Concatenate a layer's records over forwards: experts/weights (B,T,k), logits (B,T,E)."""
        rec = [r for r in self.records.get(layer, []) if r.experts is not None]
        if not rec:
            raise RouteError(f"nothing was recorded at layer {layer}: is its router still "
                             f"recognised by this transformers version?")
        out = {"experts": torch.cat([r.experts for r in rec], dim=1)}
        if all(r.weights is not None for r in rec):
            out["weights"] = torch.cat([r.weights for r in rec], dim=1)
        if all(r.logits is not None for r in rec):
            out["logits"] = torch.cat([r.logits for r in rec], dim=1)
        return out
