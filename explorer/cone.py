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
from typing import Sequence

import torch

from .forward import _ids, expand_cache
from .layers import decoder_layers
from .route import Route


def _suffix_kwargs(ids: torch.Tensor, B: int, prefix_cache, prefix_len: int) -> dict:
    T = ids.shape[1]
    kw = {"use_cache": True,
          "position_ids": torch.arange(prefix_len, T, device=ids.device).unsqueeze(0).expand(B, -1),
          "attention_mask": torch.ones(B, T, dtype=torch.long, device=ids.device)}
    kw["cache"] = expand_cache(prefix_cache, B) if prefix_cache is not None else None
    if prefix_cache is None:
        kw.pop("cache")
        kw["use_cache"] = False
    return kw


def capture_layer_inputs(moe, ids, route: Route | None, prefix_cache=None,
                         prefix_len: int = 0) -> dict[int, torch.Tensor]:
    """Hidden states entering every decoder layer for positions >= prefix_len: {i: (1,S,H)}."""
    ids = _ids(moe, ids)
    layers = decoder_layers(moe.model)
    seen: dict[int, torch.Tensor] = {}
    hooks = []
    try:
        for i, layer in enumerate(layers):
            def pre(mod, args, kwargs, i=i):
                h = args[0] if args else kwargs["hidden_states"]
                seen[i] = h.detach()
            hooks.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        with moe.lock, torch.inference_mode(), moe.control(route):
            moe.model(input_ids=ids[:, prefix_len:],
                      **_suffix_kwargs(ids, 1, prefix_cache, prefix_len))
    finally:
        for h in hooks:
            h.remove()
    return seen


@contextlib.contextmanager
def skip_layers_below(moe, layer: int, hidden: torch.Tensor):
    """Decoder layers < ``layer`` return ``hidden`` instead of computing (restored after)."""
    layers = decoder_layers(moe.model)
    patched = []

    def fake(*args, **kwargs):
        return hidden

    try:
        for i in range(layer):
            layers[i].forward = fake
            patched.append(layers[i])
        yield
    finally:
        for mod in patched:
            mod.__dict__.pop("forward", None)


def cone_logits(moe, ids, routes: Sequence[Route], layer: int, layer_input: torch.Tensor,
                prefix_cache=None, prefix_len: int = 0) -> torch.Tensor:
    """Logits (B, T - prefix_len, V) of B routes that agree below ``layer``.

    ``layer_input`` is the (1, S, H) hidden state entering ``layer`` at positions >=
    ``prefix_len`` (from :func:`capture_layer_inputs` under a route that agrees with every
    candidate below ``layer`` and before ``prefix_len``).
    """
    ids = _ids(moe, ids)
    B = len(routes)
    hidden = layer_input.expand(B, -1, -1)
    with moe.lock, torch.inference_mode(), skip_layers_below(moe, layer, hidden), \
            moe.control(list(routes)):
        out = moe.model(input_ids=ids[:, prefix_len:].expand(B, -1),
                        **_suffix_kwargs(ids, B, prefix_cache, prefix_len))
    return out.logits


def cone_target_logprob(moe, prompt_ids, target_ids, routes, layer, layer_input,
                        prefix_cache=None, prefix_len: int = 0) -> torch.Tensor:
    """Joint target log-prob per route (B,), computed over the causal cone only."""
    ids = list(prompt_ids) + list(target_ids)
    logits = cone_logits(moe, ids, routes, layer, layer_input, prefix_cache, prefix_len)
    start, n = len(prompt_ids) - 1 - prefix_len, len(target_ids)
    lp = torch.log_softmax(logits[:, start:start + n].float(), dim=-1)
    tgt = torch.tensor(list(target_ids), device=lp.device).unsqueeze(0).expand(lp.shape[0], -1)
    return lp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1).sum(-1).cpu()
