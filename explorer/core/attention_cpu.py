"""The CPU attention: PyTorch's scaled-dot-product attention with every block of queries
at least a few rows tall.

On CPU, SDPA splits the queries into blocks of 32 (64 or 256 for long calls) and runs a
matrix product per block; a last block of 1-3 rows takes the small-product path, whose
rounding differs from taller blocks (see :func:`explorer.core.experts_cpu.invariant_rows`),
so the same query scored in a call of 33 rows and in one of 36 came out ~1 ulp apart; and
its reductions over the keys depend on the key count unless it is a multiple of 8 (a
query over 39 keys, or over 40 with the last masked, differ). :func:`attention_forward`
pads such a call with copies of its last query (and of that query's mask row) until the
last block is tall enough, and the keys with masked-out zeros to a multiple of 8, and drops
the padded queries after: each real query's output is then a function of that query, the
keys it may see and nothing else. Registered with transformers as :data:`NAME`;
:func:`explorer.core.model.load_model` selects it on CPU where the model uses ``sdpa``.
"""

from __future__ import annotations

import torch

NAME = "explorer_sdpa"
#: Query rows per block of PyTorch's CPU attention kernel (the larger blocks are multiples).
QUERY_BLOCK = 32
#: Keys are padded to a multiple of this: the kernel's reductions over the keys run in
#: vectors of 8 floats and treat a shorter tail otherwise (a query scored over 39 keys and
#: over 40, the 40th masked, came out apart; over 32 and 40 they agree).
KEY_BLOCK = 8


def _causal_mask(q: int, kv: int, device) -> torch.Tensor:
    """(q, kv) boolean mask of causal attention for the last ``q`` of ``kv`` positions."""
    rows = torch.arange(kv - q, kv, device=device).unsqueeze(1)
    return torch.arange(kv, device=device).unsqueeze(0) <= rows


def attention_forward(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, **kwargs):
    """transformers' ``sdpa`` attention, with the queries and keys padded as described
    above (the mask always given, so that PyTorch never takes its ``is_causal`` path,
    whose numbers also depend on the key count)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from explorer.core.experts_cpu import invariant_rows
    q, kv = query.shape[2], key.shape[2]
    rem = q % QUERY_BLOCK
    q_pad = max(0, invariant_rows(query.dtype) - rem) if q > 1 and rem else 0
    kv_pad = -kv % KEY_BLOCK
    mask = attention_mask
    if mask is None:
        causal = kwargs.get("is_causal")
        causal = causal if causal is not None else getattr(module, "is_causal", True)
        mask = (_causal_mask(q, kv, query.device) if causal and q > 1
                else torch.ones(q, kv, dtype=torch.bool, device=query.device))[None, None]
    if kv_pad:  # masked-out keys of zeros: every real query's reductions see multiples of 8
        key = torch.cat([key, key.new_zeros(*key.shape[:2], kv_pad, key.shape[3])], dim=2)
        value = torch.cat([value, value.new_zeros(*value.shape[:2], kv_pad, value.shape[3])],
                          dim=2)
        fill = False if mask.dtype == torch.bool else torch.finfo(mask.dtype).min
        mask = torch.cat([mask, mask.new_full((*mask.shape[:-1], kv_pad), fill)], dim=-1)
    if q_pad:
        query = torch.cat([query, query[:, :, -1:].expand(-1, -1, q_pad, -1)], dim=2)
        mask = torch.cat([mask, mask[..., -1:, :].expand(*mask.shape[:-2], q_pad, mask.shape[-1])],
                         dim=-2)
    kwargs = dict(kwargs, is_causal=False)
    out, weights = sdpa_attention_forward(module, query, key, value, mask, **kwargs)
    return (out[:, :q] if q_pad else out), weights


def register() -> str:
    """Make :data:`NAME` a valid ``attn_implementation`` (idempotent); returns it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    AttentionInterface.register(NAME, attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME
