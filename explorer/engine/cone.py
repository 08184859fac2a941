"""Causal-cone recomputation: evaluate candidates that differ only from (layer l, position t).

A candidate route that changes routing at (layer l, position t) changes hidden states only
at positions >= t from layer l onwards. So: positions < t come from a prefix KV cache, and
the hidden states entering layer l at positions >= t (identical for every candidate) are
captured once; each candidate batch then runs only decoder layers >= l over positions >= t.
Layers below l are skipped by temporarily replacing their ``forward`` with one that
returns the captured hidden states (restored in ``finally``).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Sequence

import torch

from explorer.core.experts_quant import is_quantized
from explorer.core.forward import as_ids, expand_cache, joint_logprob, keep_kwargs, token_logprobs
from explorer.core.layers import decoder_layers
from explorer.core.route import Route

if TYPE_CHECKING:
    from explorer.core.model import MoEModel


def _suffix_kwargs(ids: torch.Tensor, B: int, prefix_cache, prefix_len: int,
                   stacked: bool = False) -> dict:
    """Model-call arguments for B rows of ``ids`` from ``prefix_len`` on. ``stacked``: the
    cache already has B rows (see :func:`explorer.core.forward.stack_caches`)."""
    T = ids.shape[1]
    kw = {"use_cache": True,
          "position_ids": torch.arange(prefix_len, T, device=ids.device).unsqueeze(0).expand(B, -1),
          "attention_mask": torch.ones(B, T, dtype=torch.long, device=ids.device)}
    kw["cache"] = (expand_cache(prefix_cache, 1 if stacked else B)
                   if prefix_cache is not None else None)
    if prefix_cache is None:
        kw.pop("cache")
        kw["use_cache"] = False
    return kw


@contextlib.contextmanager
def _capturing(moe: MoEModel, first: int, seen: dict):
    """Record the hidden states entering decoder layers >= ``first`` into ``seen``."""
    hooks = []
    try:
        for i, layer in enumerate(decoder_layers(moe.model)):
            if i < first:
                continue

            def pre(mod, args, kwargs, i=i):
                h = args[0] if args else kwargs["hidden_states"]
                seen[i] = h.detach()
            hooks.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        yield seen
    finally:
        for h in hooks:
            h.remove()


def capturing_inputs(moe: MoEModel, seen: dict):
    """Record the hidden states entering every decoder layer into ``seen`` ({i: (B, S, H)})."""
    return _capturing(moe, 0, seen)


def capture_layer_inputs(moe: MoEModel, ids, route: Route | None, prefix_cache=None,
                         prefix_len: int = 0) -> dict[int, torch.Tensor]:
    """Hidden states entering every decoder layer for positions >= prefix_len: {i: (1,S,H)}."""
    ids = as_ids(moe, ids)
    seen: dict[int, torch.Tensor] = {}
    with moe.lock, torch.inference_mode(), _capturing(moe, 0, seen), moe.control(route):
        moe.model(input_ids=ids[:, prefix_len:], **keep_kwargs(moe, 1),
                  **_suffix_kwargs(ids, 1, prefix_cache, prefix_len))
    return seen


@contextlib.contextmanager
def _replaced_forwards(modules, forward):
    """``forward`` stands in for each module's own while active (restored after)."""
    patched = []
    try:
        for mod in modules:
            mod.forward = forward
            patched.append(mod)
        yield
    finally:
        for mod in patched:
            mod.__dict__.pop("forward", None)


def skip_layers_below(moe: MoEModel, layer: int, hidden: torch.Tensor):
    """Decoder layers < ``layer`` return ``hidden`` instead of computing (restored after)."""
    return _replaced_forwards(decoder_layers(moe.model)[:layer], lambda *a, **k: hidden)


def _layer_kwargs(moe: MoEModel, ids, B: int, prefix_cache, prefix_len: int, hidden: torch.Tensor,
                  stacked: bool = False):
    """What the model passes each decoder layer for B rows of the tokens of ``ids`` from ``prefix_len``.

    Returns ``{layer: (args, kwargs)}`` captured from a model call in which every decoder
    layer is skipped (pre-hooks still see their inputs): embeddings, masks and rotary
    tables are built once and reused by direct layer calls. The cache argument is
    replaced by a fresh view for each call (attention appends to it).
    """
    seen: dict = {}
    layers = decoder_layers(moe.model)
    hooks = [lay.register_forward_pre_hook(lambda m, a, k, i=i: seen.__setitem__(i, (a, k)), with_kwargs=True)
             for i, lay in enumerate(layers)]
    try:
        with torch.inference_mode(), skip_layers_below(moe, len(layers), hidden):
            moe.model(input_ids=ids[:, prefix_len:].expand(B, -1), **keep_kwargs(moe, 1),
                      **_suffix_kwargs(ids, B, prefix_cache, prefix_len, stacked))
    finally:
        for h in hooks:
            h.remove()
    return seen


def _controlled(moe: MoEModel, routes, validate: bool, control):
    """``control`` (an active route control for these routes) or a new one."""
    if control is not None:
        return contextlib.nullcontext(control)
    return moe.control(list(routes), validate=validate)


def _mlp_block(layer: torch.nn.Module) -> torch.nn.Module | None:
    """The feed-forward (MoE or dense) block of a decoder layer, where it has a known name."""
    for name in ("mlp", "block_sparse_moe", "feed_forward", "moe", "ffn"):
        mod = getattr(layer, name, None)
        if isinstance(mod, torch.nn.Module):
            return mod
    return None


@contextlib.contextmanager
def _mlp_last_rows(ctl, layer: torch.nn.Module, batch: int, tokens: int, offset: int, rows: int):
    """While active, ``layer``'s feed-forward block runs on the last ``rows`` positions only
    (its other rows come out as zeros) and the route control is told so.

    For the last decoder layer of a cone: its outputs are read at the scored rows only, and
    the positions before them need nothing from it but their keys and values, which
    attention computes before the block. Inputs that are not (batch, tokens, H) pass unchanged.
    """
    mlp = _mlp_block(layer)
    if mlp is None or rows >= tokens:
        yield
        return
    sliced: list[bool] = []

    def pre(mod, args, kwargs):
        h = args[0] if args else kwargs.get("hidden_states")
        if not isinstance(h, torch.Tensor) or h.dim() != 3 or tuple(h.shape[:2]) != (batch, tokens):
            return None
        sliced.append(True)
        ctl.set_window(batch, rows, offset + tokens - rows)
        h = h[:, -rows:].contiguous()
        if args:
            return (h, *args[1:]), kwargs
        return args, dict(kwargs, hidden_states=h)

    def post(mod, args, kwargs, out):
        if not sliced:
            return None
        sliced.clear()
        first = out[0] if isinstance(out, tuple) else out
        full = first.new_zeros(batch, tokens, first.shape[-1])
        full[:, -rows:] = first.reshape(batch, rows, -1)  # some blocks return (B*S, H)
        if first.dim() == 2:
            full = full.reshape(batch * tokens, -1)
        return (full, *out[1:]) if isinstance(out, tuple) else full

    hooks = [mlp.register_forward_pre_hook(pre, with_kwargs=True),
             mlp.register_forward_hook(post, with_kwargs=True)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def _call_layer(ctl, module, hidden: torch.Tensor, captured: tuple, cache, offset: int,
                mlp_rows: int | None = None) -> torch.Tensor:
    """Call one decoder layer on ``hidden`` with the arguments the model would pass it
    (``captured`` = (args, kwargs) from :func:`_layer_kwargs`; its cache replaced by
    ``cache``), after declaring the call's window to the route control ``ctl``.
    ``mlp_rows``: run the layer's feed-forward block on that many last positions only
    (see :func:`_mlp_last_rows`; the other rows of the output are then not meaningful)."""
    args, kwargs = captured
    kwargs = dict(kwargs)
    for name in ("cache", "past_key_values"):
        if kwargs.get(name) is not None:
            kwargs[name] = cache
    B, S = hidden.shape[0], hidden.shape[1]
    ctl.set_window(B, S, offset)
    rows = contextlib.nullcontext() if mlp_rows is None else _mlp_last_rows(ctl, module, B, S, offset, mlp_rows)
    with rows:
        if "hidden_states" in kwargs:
            kwargs["hidden_states"] = hidden
            out = module(*args, **kwargs)
        else:
            out = module(hidden, *args[1:], **kwargs)
    return out[0] if isinstance(out, tuple) else out


def layer_output_at(moe: MoEModel, ids, routes: Sequence[Route], layer: int, row_input: torch.Tensor,
                    prefix_cache, prefix_len: int, validate: bool = True,
                    layer_kwargs: dict | None = None, control=None) -> torch.Tensor:
    """(B, 1, H): what decoder ``layer`` outputs at position ``prefix_len`` under B routes.

    ``row_input`` (1, 1, H) is the hidden state entering ``layer`` there; the layer attends
    to ``prefix_cache`` (positions < prefix_len). One token, one layer, called directly:
    the model's embeddings, masks and rotary tables for this call come from
    ``layer_kwargs`` (a dict that :func:`_layer_kwargs` fills on first use; pass the same
    dict again for the same rows and position to skip that step). ``control``: an active
    route control for ``routes`` to use instead of a new one.
    """
    ids = as_ids(moe, ids)[:, :prefix_len + 1]
    B = len(routes)
    hidden = row_input.expand(B, -1, -1)
    with moe.lock:
        kw = layer_kwargs if layer_kwargs is not None else {}
        if not kw:
            kw.update(_layer_kwargs(moe, ids, B, prefix_cache, prefix_len, hidden))
        cache = expand_cache(prefix_cache, B) if prefix_cache is not None else None
        with torch.inference_mode(), _controlled(moe, routes, validate, control) as ctl:
            return _call_layer(ctl, decoder_layers(moe.model)[layer], hidden, kw[layer], cache,
                               prefix_len)


def cone_logits(moe: MoEModel, ids, routes: Sequence[Route], layer: int, layer_input: torch.Tensor,
                prefix_cache=None, prefix_len: int = 0, *, keep: int | None = None,
                capture: dict | None = None, validate: bool = True) -> torch.Tensor:
    """Logits (B, T - prefix_len, V) of B routes that agree below ``layer``.

    ``layer_input`` is the (1, S, H) hidden state entering ``layer`` at positions >=
    ``prefix_len`` (from :func:`capture_layer_inputs` under a route that agrees with every
    candidate below ``layer`` and before ``prefix_len``). ``keep``: only the last ``keep``
    rows get logits (when the model supports ``logits_to_keep``; check the returned
    shape). ``capture``: a dict that receives the (B, S, H) hidden states entering every
    layer above ``layer``, so a chosen candidate's states can seed the next step.
    ``validate=False`` skips route validation (for candidates built valid by a search).
    """
    ids = as_ids(moe, ids)
    B = len(routes)
    hidden = layer_input.expand(B, -1, -1) if layer_input.shape[0] == 1 else layer_input
    seen = capture if capture is not None else {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(moe.lock)
        stack.enter_context(torch.inference_mode())
        stack.enter_context(skip_layers_below(moe, layer, hidden))
        if capture is not None:
            stack.enter_context(_capturing(moe, layer + 1, seen))
        stack.enter_context(moe.control(list(routes), validate=validate))
        out = moe.model(input_ids=ids[:, prefix_len:].expand(B, -1), **keep_kwargs(moe, keep),
                        **_suffix_kwargs(ids, B, prefix_cache, prefix_len))
    return out.logits


def output_head(moe: MoEModel):
    """The decoder's final norm and the output projection, or None where not found."""
    norm = getattr(moe.base, "norm", None)
    if norm is None:
        norm = getattr(moe.base, "norm_f", None)
    head = moe.model.get_output_embeddings()
    if norm is None or head is None:
        return None
    return norm, head


def cone_logits_direct(moe: MoEModel, ids, routes: Sequence[Route], layer: int, layer_input: torch.Tensor,
                       prefix_cache, prefix_len: int, *, keep: int, layer_kwargs: dict,
                       capture: dict | None = None, validate: bool = True,
                       last_rows_only: bool = True, control=None) -> torch.Tensor | None:
    """:func:`cone_logits` without the model call: decoder layers >= ``layer`` are called
    directly, then the final norm and the output projection on the last ``keep`` rows.

    ``layer_kwargs`` (one dict per batch size and position; filled on first use) holds
    what the model passes each layer: embeddings, masks and rotary tables are built once
    per position instead of once per candidate batch. ``last_rows_only``: the last decoder
    layer's feed-forward block runs on the ``keep`` rows only (the other positions of that
    layer are read by nothing). ``control``: an active route control for ``routes`` to use
    instead of a new one. Returns None where the model's
    head is not a plain norm + projection (the caller then uses :func:`cone_logits`);
    models that scale or cap their logits after the projection need that check (see
    :class:`explorer.engine.scoring.FastEngine`, which compares both paths once per search).
    """
    parts = output_head(moe)
    if parts is None:
        return None
    ids = as_ids(moe, ids)
    B = len(routes)
    hidden = layer_input.expand(B, -1, -1) if layer_input.shape[0] == 1 else layer_input
    layers = decoder_layers(moe.model)
    with moe.lock, torch.inference_mode():
        if not layer_kwargs:
            layer_kwargs.update(_layer_kwargs(moe, ids, B, prefix_cache, prefix_len, hidden))
        cache = expand_cache(prefix_cache, B) if prefix_cache is not None else None
        with _controlled(moe, routes, validate, control) as ctl:
            for i in range(layer, len(layers)):
                if capture is not None and i > layer:
                    capture[i] = hidden
                last = i == len(layers) - 1 and last_rows_only
                hidden = _call_layer(ctl, layers[i], hidden, layer_kwargs[i], cache, prefix_len,
                                     mlp_rows=keep if last else None)
        norm, head = parts
        return head(norm(hidden[:, -keep:]))


def scored_ids(prompt_ids, target_ids) -> list[int]:
    """The tokens a joint target log-prob depends on: the prompt and every target token but
    the last (the last one's own position predicts nothing that is scored, and no scored
    position attends to it)."""
    return list(prompt_ids) + list(target_ids)[:-1]


def cone_target_logprob(moe: MoEModel, prompt_ids, target_ids, routes, layer, layer_input,
                        prefix_cache=None, prefix_len: int = 0, *, capture: dict | None = None,
                        validate: bool = True, next_input: torch.Tensor | None = None,
                        layer_kwargs: dict | None = None,
                        direct_kwargs: dict | None = None, control=None,
                        ff_rows: tuple | None = None) -> torch.Tensor:
    """Joint target log-prob per route (B,), computed over the causal cone only; logits
    only for the target rows.

    The cone covers :func:`scored_ids` (the last target token is not run); ``layer_input``
    and ``next_input`` may cover it or not (states of the full prompt + target are cut).
    ``next_input`` (1, S, H), the hidden state entering layer + 1 under the routes' common
    base, narrows the cone further when the routes differ from that base only at
    (``layer``, ``prefix_len``): layer ``layer`` then changes nothing but its output at
    ``prefix_len`` (attention there reads its inputs, the MoE is per token), so that one
    row is computed and layers > ``layer`` run from the base's states with it swapped in.
    ``layer_kwargs``: passed on to :func:`layer_output_at` for that row (reuse one dict per
    batch size and position). ``ff_rows``: the base's (residual, feed-forward input) at
    that cell (see :func:`feed_forward_row`): with ``next_input``, only the layer's
    feed-forward block runs for that row (the same bits as the whole layer, see
    :func:`feed_forward_rows_hold`). ``direct_kwargs``: a dict (one per batch size and position)
    that turns on :func:`cone_logits_direct` for the layers above (no model call); there
    the last layer's feed-forward block runs on the target rows only. ``control``: an
    active route control for ``routes``, shared by the edited row and the direct layers
    (only with ``direct_kwargs`` on a model with a plain head: see :func:`output_head`).
    """
    if control is not None and (direct_kwargs is None or output_head(moe) is None):
        # a bare ValueError: the engine passes a control only with the direct path, so
        # reaching this is a bug in the caller, not bad input
        raise ValueError("a shared route control needs the direct path (direct_kwargs)")
    ids = scored_ids(prompt_ids, target_ids)
    n = len(target_ids)
    S = len(ids) - prefix_len
    layer_input = layer_input[:, :S]
    if next_input is not None:
        next_input = next_input[:, :S]
        if ff_rows is not None:  # the attention part is the base's: the block alone
            with moe.lock, torch.inference_mode(), \
                    _controlled(moe, routes, validate, control) as ctl:
                row = feed_forward_row(ctl, moe, layer, ff_rows, len(routes), prefix_len)
        else:
            row = layer_output_at(moe, ids, routes, layer, layer_input[:, :1], prefix_cache,
                                  prefix_len, validate, layer_kwargs, control)
        hidden = next_input.expand(len(routes), -1, -1).clone()
        hidden[:, :1] = row
        if capture is not None:
            capture[layer + 1] = hidden
        layer, layer_input = layer + 1, hidden
    logits = None
    if direct_kwargs is not None:
        logits = cone_logits_direct(moe, ids, routes, layer, layer_input, prefix_cache, prefix_len,
                                    keep=n, layer_kwargs=direct_kwargs, capture=capture,
                                    validate=validate, control=control)
    if logits is None:
        logits = cone_logits(moe, ids, routes, layer, layer_input, prefix_cache, prefix_len,
                             keep=n, capture=capture, validate=validate)
    start = logits.shape[1] - n  # the row predicting the first target token
    return joint_logprob(logits[:, start:], target_ids)


def _padded(h: torch.Tensor, rows: int, length: int) -> torch.Tensor:
    """(1, >=rows, H) states cut to ``rows`` positions and right-padded to ``length`` by
    repeating the last one (causal attention never lets a real position see the padding)."""
    h = h[:, :rows]
    if rows < length:
        h = torch.cat([h, h[:, -1:].expand(1, length - rows, h.shape[-1])], dim=1)
    return h


def multi_cone_target_logprob(moe: MoEModel, parts: Sequence[tuple], layer: int, prefix_len: int,
                              cache, *, narrow: bool, memo: dict, capture: dict | None = None,
                              direct: bool = True, ff_rows: list | None = None,
                              capture_rows: dict | None = None) -> list[torch.Tensor]:
    """:func:`cone_target_logprob` for several prompts in one batch (the direct path).

    ``parts``: one ``(prompt_ids, target_ids, routes, inputs)`` per prompt, where
    ``inputs`` maps each decoder layer to the (1, S, H) states entering it at positions >=
    ``prefix_len`` under that prompt's base route; every prompt shares ``prefix_len`` and
    ``layer`` (its routes differ from its base only at (``layer``, ``prefix_len``)).
    ``cache``: the prompts' prefix caches stacked row by row (see
    :func:`explorer.core.forward.stack_caches`; None when ``prefix_len`` is 0). Suffixes
    are right-padded to the longest; each row gets its own route, and its target rows are
    gathered for the log-softmax. ``narrow``: layer ``layer`` runs at ``prefix_len`` alone
    (``inputs`` must hold layer + 1). ``direct``: the layers above are called one by one
    (see :func:`cone_logits_direct`), else through one model call whose lower layers are
    skipped (for models whose head is more than a norm and a projection). ``memo``: a dict
    reused across calls for the layer arguments per batch shape. ``capture`` receives the
    (B, S, H) states entering every layer above ``layer``. Returns one (N_p,) tensor of
    joint target log-probs per part. ``ff_rows`` (with ``narrow`` and ``direct``): each
    part's base feed-forward rows at the cell, so that the edited layer runs its
    feed-forward block alone there (see :func:`feed_forward_row`); ``capture_rows`` then
    receives the batch's rows of the layers above (see :func:`capturing_rows`).
    """
    parts = list(parts)
    layers = decoder_layers(moe.model)
    sizes = [len(scored_ids(p, t)) - prefix_len for p, t, _, _ in parts]
    counts = [len(r) for _, _, r, _ in parts]
    S, B = max(sizes), sum(counts)
    routes = [r for _, _, rs, _ in parts for r in rs]
    dev = moe.device

    def stacked(i: int) -> torch.Tensor:
        return torch.cat([_padded(inp[i], n, S).expand(c, -1, -1)
                          for (_, _, _, inp), n, c in zip(parts, sizes, counts)])

    def kwargs(tokens: int, hidden: torch.Tensor) -> dict:
        key = (B, tokens, prefix_len)
        if key not in memo:
            if len(memo) > 32:
                memo.clear()
            ids = torch.zeros(1, prefix_len + tokens, dtype=torch.long, device=dev)
            memo[key] = _layer_kwargs(moe, ids, B, cache, prefix_len, hidden, stacked=True)
        return memo[key]

    def fresh():
        return expand_cache(cache, 1) if cache is not None else None

    # the target rows of each part: its last n real positions, in its block of rows
    starts = [sum(counts[:q]) for q in range(len(parts))]
    b_idx, s_idx, tgt = [], [], []
    for (_, t_ids, _, _), n, c, r0 in zip(parts, sizes, counts, starts):
        k = len(t_ids)
        for b in range(r0, r0 + c):
            b_idx += [b] * k
            s_idx += range(n - k, n)
            tgt += list(t_ids)
    keep = S - min(n - len(t) for (_, t, _, _), n in zip(parts, sizes))
    with moe.lock, torch.inference_mode(), moe.control(routes, validate=False) as ctl:
        if narrow and ff_rows is not None:  # the edited layer's feed-forward block alone
            stacked_rows = tuple(torch.cat([r[i].expand(c, -1, -1) for r, c in zip(ff_rows, counts)])
                                 for i in (0, 1))
            row = feed_forward_row(ctl, moe, layer, stacked_rows, B, prefix_len)
        elif narrow:
            row_in = torch.cat([inp[layer][:, :1].expand(c, -1, -1)
                                for (_, _, _, inp), c in zip(parts, counts)])
            row = _call_layer(ctl, layers[layer], row_in, kwargs(1, row_in)[layer], fresh(),
                              prefix_len)
        if narrow:
            hidden = stacked(layer + 1).clone()
            hidden[:, :1] = row
            if capture is not None:
                capture[layer + 1] = hidden
            first = layer + 1
        else:
            hidden, first = stacked(layer), layer
        if direct:
            kw = kwargs(S, hidden)
            cache_now = fresh()
            with capturing_rows(moe, 0, capture_rows, first=layer + 1):
                for i in range(first, len(layers)):
                    if capture is not None and i > layer:
                        capture[i] = hidden
                    last = i == len(layers) - 1
                    hidden = _call_layer(ctl, layers[i], hidden, kw[i], cache_now, prefix_len,
                                         mlp_rows=keep if last else None)
            norm, head = output_head(moe)
            rows_out, offset = hidden, 0
        else:  # one model call; its layers below ``first`` return ``hidden``
            ids = torch.cat([torch.tensor([(scored_ids(p, t)[prefix_len:] + [0] * S)[:S]],
                                          device=dev).expand(c, -1)
                             for (p, t, _, _), c in zip(parts, counts)])
            seen = capture if capture is not None else {}
            with contextlib.ExitStack() as stack:
                stack.enter_context(skip_layers_below(moe, first, hidden))
                if capture is not None:
                    stack.enter_context(_capturing(moe, first + 1, seen))
                kw = {"position_ids": torch.arange(prefix_len, prefix_len + S, device=dev)
                      .unsqueeze(0).expand(B, -1),
                      "attention_mask": torch.ones(B, prefix_len + S, dtype=torch.long, device=dev)}
                if cache is not None:
                    kw.update(cache=fresh(), use_cache=True)
                else:
                    kw["use_cache"] = False
                out = moe.model(input_ids=ids, **keep_kwargs(moe, keep), **kw)
            rows_out, offset = out.logits, S - out.logits.shape[1]
        b = torch.tensor(b_idx, device=rows_out.device)
        s_ = torch.tensor(s_idx, device=rows_out.device) - offset
        picked_rows = rows_out[b, s_]
        logits = head(norm(picked_rows)) if direct else picked_rows
        # as joint_logprob: per-token log-probs, summed in float64 in token order
        picked = token_logprobs(logits, tgt).double()
        sums = torch.zeros(B, dtype=picked.dtype, device=picked.device)
        sums.index_add_(0, b, picked)
    sums = sums.cpu()
    return [sums[r0:r0 + c] for r0, c in zip(starts, counts)]


#: The product height from which every height must be row-invariant for exact arithmetic:
#: candidate batches (the feed-forward rows of the narrow step) have at least this many.
EXACT_MIN_ROWS = 4


def exact_arithmetic(moe: MoEModel) -> bool:
    """Does every way the fast engines compute a route's score give the reference
    computation's bits on this model?

    True on CPU where the model runs the row-invariant experts kernel
    (:mod:`explorer.core.experts_cpu`, fused experts) and attention
    (:mod:`explorer.core.attention_cpu`), and this machine's products are row-invariant from a small height on (probed
    once, see :func:`~explorer.core.experts_cpu.invariant_rows`). Then a token's numbers
    depend on its own inputs only, whatever else shares its batch or call, provided the
    prefix cache comes from a forward of whole suffixes (:func:`full_shape_prefix`, not
    token by token) and the edited layer is not computed at one position by a one-query
    attention call (the engine's ``narrow`` step; its feed-forward block alone is fine, see
    :func:`feed_forward_row`): the fast and multi-prompt engines score each route
    exactly as the reference does, so their decisions need no re-check. With more than one
    torch thread this machine's products split their rows between threads and heights
    5-11 lose the property, so exact arithmetic is a one-thread mode here (``--threads 1``,
    the setting of every figure in docs/performance.md). Measured on the demo model: fast vs reference, differences of 0.0 over every cell tried, where the
    previous path differed by up to 2.9e-5 at 20-25 target tokens.
    """
    from explorer.core.attention_cpu import NAME as ATTENTION
    from explorer.core.experts_cpu import NAME, invariant_rows
    if moe.device.type != "cpu":
        return False
    cfg = moe.model.config
    if getattr(cfg, "_experts_implementation", None) != NAME or \
            getattr(cfg, "_attn_implementation", None) != ATTENTION:
        return False
    for layer in moe.moe_layers:
        experts = getattr(_mlp_block(decoder_layers(moe.model)[layer]), "experts", None)
        if is_quantized(experts):
            continue  # integer experts: dequantized, then the same kernel
        if getattr(experts, "down_proj", None) is None or experts.down_proj.dim() != 3:
            return False  # experts as separate modules: products of any height
    dtype = next(moe.model.parameters()).dtype
    # every product of 4 rows or more row-invariant (at one torch thread here; with more
    # threads, other products than the experts' come in heights the threads split badly)
    return invariant_rows(dtype) <= EXACT_MIN_ROWS


def _feed_forward_parts(layer: torch.nn.Module):
    """(the norm before the feed-forward block, the block) of a decoder layer built as
    ``h + mlp(post_attention_layernorm(h))``, or None where it has no such parts."""
    norm = getattr(layer, "post_attention_layernorm", None)
    mlp = _mlp_block(layer)
    if not isinstance(norm, torch.nn.Module) or mlp is None:
        return None
    return norm, mlp


@contextlib.contextmanager
def capturing_rows(moe: MoEModel, position: int, rows: dict | None, first: int = 0):
    """Record, for each decoder layer from ``first`` on with feed-forward parts (see
    :func:`_feed_forward_parts`), the residual entering its post-attention norm and its
    feed-forward block's input at ``position``: ``rows[i] = [residual, block input]``, each
    (B, 1, H). ``rows`` None: record nothing."""
    hooks = []
    try:
        for i, layer in enumerate(decoder_layers(moe.model)):
            parts = _feed_forward_parts(layer)
            if parts is None or rows is None or i < first:
                continue

            def grab(slot, i=i):
                def pre(mod, args, kwargs):
                    h = args[0] if args else kwargs.get("hidden_states")
                    if isinstance(h, torch.Tensor) and h.dim() == 3:
                        rows.setdefault(i, [None, None])[slot] = h[:, position:position + 1]
                return pre
            hooks += [parts[0].register_forward_pre_hook(grab(0), with_kwargs=True),
                      parts[1].register_forward_pre_hook(grab(1), with_kwargs=True)]
        yield rows
    finally:
        for h in hooks:
            h.remove()


def feed_forward_row(ctl, moe: MoEModel, layer: int, rows: tuple, batch: int,
                     position: int) -> torch.Tensor:
    """(B, 1, H): decoder ``layer``'s output at ``position`` for ``batch`` routes that differ
    from a base only in that layer's routing there. ``rows`` = (residual, block input) of
    the base at that cell (:func:`full_shape_prefix`): the attention part is the base's, so
    only the feed-forward block runs, on one row per route (``ctl`` routes them)."""
    residual, block_in = rows
    mlp = _feed_forward_parts(decoder_layers(moe.model)[layer])[1]
    ctl.set_window(batch, 1, position)
    out = mlp(block_in.expand(batch, -1, -1).contiguous())
    out = out[0] if isinstance(out, tuple) else out
    return residual + out.reshape(batch, 1, -1)


def full_shape_prefix(moe: MoEModel, ids, route: Route | None, position: int,
                      rows: dict | None = None, cache=None, cache_len: int = 0):
    """``(cache, inputs)`` for a search at ``position`` from one forward of ``ids`` under
    ``route``: the KV cache of positions < ``position`` (None at position 0, or where the
    cache cannot be cut) and the (1, S, H) states entering every decoder layer at positions
    >= ``position``. ``cache`` (of positions < ``cache_len`` <= ``position``, under a route
    that agrees there; it is extended in place): only positions >= ``cache_len`` are run.
    Exact arithmetic makes that the reference forward's bits either way (see
    :func:`exact_arithmetic`). ``rows``: a dict that receives each layer's feed-forward
    inputs at ``position`` (see :func:`capturing_rows`)."""
    from explorer.core.forward import cache_of, reusable
    ids = as_ids(moe, ids)
    T = ids.shape[1]
    start = cache_len if cache is not None else 0
    seen: dict[int, torch.Tensor] = {}
    kw: dict = {"use_cache": position > 0}
    if start:
        kw.update(cache=cache, position_ids=torch.arange(start, T, device=ids.device)[None],
                  attention_mask=torch.ones(1, T, dtype=torch.long, device=ids.device))
    with contextlib.ExitStack() as stack:
        stack.enter_context(moe.lock)
        stack.enter_context(torch.inference_mode())
        stack.enter_context(_capturing(moe, 0, seen))
        if rows is not None:
            stack.enter_context(capturing_rows(moe, position - start, rows))
        stack.enter_context(moe.control(route))
        out = moe.model(input_ids=ids[:, start:], **kw, **keep_kwargs(moe, 1))
    inputs = {i: h[:, position - start:] for i, h in seen.items()}
    if position == 0:
        return None, inputs
    cache = cache_of(out)
    if cache is None or not reusable(cache):
        return None, inputs
    cache.crop(position - T)
    return cache, inputs


def feed_forward_rows_hold(moe: MoEModel, route: Route, position: int, inputs: dict,
                           rows: dict, batch: int) -> bool:
    """Does :func:`feed_forward_row` give, for ``route`` itself at ``position``, the states
    its full forward passed on (``inputs``, ``rows`` from :func:`full_shape_prefix`), to the
    bit, at every MoE layer below the last? Checked once per model (the engine remembers
    it): a family whose decoder layer is built otherwise fails it."""
    layers = [i for i in moe.moe_layers if i + 1 in inputs]
    if not layers or any(i not in rows or None in rows[i] for i in layers):
        return False
    with moe.lock, torch.inference_mode(), moe.control([route] * batch, validate=False) as ctl:
        for i in layers:
            got = feed_forward_row(ctl, moe, i, rows[i], batch, position)
            if not torch.equal(got, inputs[i + 1][:, :1].expand(batch, -1, -1)):
                return False
    return True
