"""The CPU attention: PyTorch's scaled-dot-product attention with every block of queries
at least a few rows tall.

On CPU, SDPA splits the queries into blocks of 32 (64 or 256 for long calls) and runs a
matrix product per block; a last block of 1-3 rows takes the small-product path, whose
rounding differs from taller blocks (see :func:`explorer.core.experts_cpu.invariant_rows`),
so the same query scored in a call of 33 rows and in one of 36 came out ~1 ulp apart.
:func:`attention_forward` pads such a call with copies of its last query (and of that
query's mask row) until the last block is tall enough, and drops them after: each real
query's output is then a function of that query, the keys and its mask row alone. One-query
calls (decoding) pass unchanged. Registered with transformers as :data:`NAME`;
:func:`explorer.core.model.load_model` selects it on CPU where the model uses ``sdpa``.
"""

from __future__ import annotations

import torch

NAME = "explorer_sdpa"
#: Query rows per block of PyTorch's CPU attention kernel (the larger blocks are multiples).
QUERY_BLOCK = 32


def _causal_mask(q: int, kv: int, device) -> torch.Tensor:
    """(q, kv) boolean mask of causal attention for the last ``q`` of ``kv`` positions."""
    rows = torch.arange(kv - q, kv, device=device).unsqueeze(1)
    return torch.arange(kv, device=device).unsqueeze(0) <= rows


def attention_forward(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, **kwargs):
    """transformers' ``sdpa`` attention, with the queries padded as described above."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from explorer.core.experts_cpu import invariant_rows
    q, kv = query.shape[2], key.shape[2]
    pad = 0
    rem = q % QUERY_BLOCK
    if q > 1 and 0 < rem:
        pad = max(0, invariant_rows(query.dtype) - rem)
    if not pad:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    mask = attention_mask
    if mask is None:
        causal = kwargs.get("is_causal")
        causal = causal if causal is not None else getattr(module, "is_causal", True)
        mask = (_causal_mask(q, kv, query.device) if causal
                else torch.ones(q, kv, dtype=torch.bool, device=query.device))
        mask = mask[None, None]
    query = torch.cat([query, query[:, :, -1:].expand(-1, -1, pad, -1)], dim=2)
    mask = torch.cat([mask, mask[..., -1:, :].expand(*mask.shape[:-2], pad, mask.shape[-1])],
                     dim=-2)
    kwargs = dict(kwargs, is_causal=False)
    out, weights = sdpa_attention_forward(module, query, key, value, mask, **kwargs)
    return out[:, :q], weights


def register() -> str:
    """Make :data:`NAME` a valid ``attn_implementation`` (idempotent); returns it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    AttentionInterface.register(NAME, attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME
