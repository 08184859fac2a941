"""Batch sizes from the memory a device has free.

A cone batch of B candidate routes holds, per row: the hidden states captured at every
layer above the edited one (the kept candidate's states seed the next step), a working
set inside one decoder layer (attention projections and scores, the k routed experts'
activations), the row's view of the prefix KV cache (a real copy where a cache cannot be
broadcast) and the logits of the target rows. :func:`row_bytes` estimates that from the
model's config; :func:`memory_batch_size` divides a share of the free memory by it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from explorer.core.model import MoEModel

DEFAULT_SHARE = 0.25  # of the free memory one batch may use
MAX_BATCH = 1024
#: Rows per batch on a shared (hosted) server: each batch holds the model's lock once, so a
#: request from another visitor waits for at most a batch of this size per request ahead.
SHARED_ROWS = 64


def free_bytes(device: torch.device | str) -> int | None:
    """Free memory on ``device`` in bytes (CUDA: the driver's figure; CPU: the kernel's
    MemAvailable), or None where unknown."""
    dev = torch.device(device)
    try:
        if dev.type == "cuda":
            free, _ = torch.cuda.mem_get_info(dev)
            return int(free)
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, RuntimeError, ValueError):
        return None
    return None


def row_bytes(moe: MoEModel, tokens: int, context: int, logit_rows: int) -> int:
    """Estimated bytes one candidate row of a cone batch needs.

    ``tokens``: positions the batch recomputes; ``context``: the positions attention reads
    (prefix + tokens); ``logit_rows``: rows that get logits (float32 for the softmax).
    """
    elt = next(moe.model.parameters()).element_size()
    return config_row_bytes(moe.text_config, elt, tokens, context, logit_rows)


def config_row_bytes(c, elt: int, tokens: int, context: int, logit_rows: int) -> int:
    """:func:`row_bytes` from a text config ``c`` alone, with activations of ``elt`` bytes
    each (the compute dtype's size): no model needed (``plan`` uses it before a download)."""
    H = c.hidden_size
    layers = c.num_hidden_layers
    heads = c.num_attention_heads
    hd = getattr(c, "head_dim", None) or H // heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    inter = (getattr(c, "moe_intermediate_size", None) or getattr(c, "intermediate_size", None)
             or 4 * H)
    k = getattr(c, "num_experts_per_tok", None) or getattr(c, "top_k", None) or 2
    kept = layers * tokens * H
    working = tokens * (6 * H + 2 * heads * hd + 3 * k * inter) + heads * tokens * context
    cache = 2 * layers * context * kv * hd
    logits = logit_rows * c.vocab_size * 2  # logits, then float32 log-softmax
    return int(elt * (kept + working + cache) + 4 * logits)


def memory_batch_size(moe: MoEModel, tokens: int, context: int, logit_rows: int, *,
                      share: float | None = None, free: int | None = None) -> int:
    """Rows per cone batch: ``share`` (default: the active tuning's ``memory_share``, else
    0.25; see :mod:`explorer.engine.tuning`) of the free memory divided by :func:`row_bytes`,
    between 1 and 1024 (or the tuning's ``max_rows``); 64 where the free memory is unknown."""
    from explorer.engine.tuning import active_tuning
    tuning = active_tuning()
    if share is None:
        share = tuning.memory_share or DEFAULT_SHARE
    if free is None:
        free = free_bytes(moe.device)
    cap = tuning.max_rows or MAX_BATCH
    if free is None:
        return min(64, cap)
    per = max(1, row_bytes(moe, tokens, context, logit_rows))
    return max(1, min(cap, int(free * share) // per))


def search_batch_size(moe: MoEModel, n_prompt: int, n_target: int) -> int:
    """Rows per F-SOUR candidate batch for a prompt and target of these lengths (worst
    case: the whole prompt recomputed); what :class:`explorer.engine.scoring.FastEngine` uses by
    default and ``bench`` reports."""
    T = n_prompt + n_target
    return memory_batch_size(moe, T, T, n_target + 1)
