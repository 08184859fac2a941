"""The CPU experts kernel: every token's experts output the same bits whatever else is in
the call.

transformers' ``grouped_mm`` runs one matrix product per expert over the tokens routed to
it, so a token's output depends on how many other tokens share its expert: on CPU the
products of 1-3 rows take another path than taller ones (measured with this build's
kernels: rows of a product of height >= 4 are bit-identical whatever the height and
offset, heights 1-3 differ by ~1 ulp). That made the same route score differently alone
and in a batch (2.3e-5 at log-prob -60 on the demo model, the noise F-SOUR's near-tie
re-checks had to cover). :func:`experts_forward` runs each used expert's two products on
at least :func:`invariant_rows` rows (a short group is padded with zero rows), so a
token's experts output is a function of that token alone: a route scores the same bits in
a batch of one and of a thousand, in one prompt's batch and in a multi-prompt one. It
also skips the experts no token uses (``grouped_mm`` on CPU runs a product for each).
Registered with transformers as :data:`NAME`; :func:`explorer.core.model.load_model`
selects it on CPU.
"""

from __future__ import annotations

import functools

import torch

NAME = "explorer_cpu"
#: Heights probed by :func:`invariant_rows`.
_PROBE_HEIGHTS = 16


@functools.lru_cache(maxsize=None)
def invariant_rows(dtype: torch.dtype = torch.float32) -> int:
    """The smallest product height from which this machine's matrix products give every
    row the same bits whatever the height (probed once per dtype: heights up to 16 of a
    (h, 192) x (192, 384) product; 4 with this build's CPU kernels). A product padded to
    at least this many rows is row-invariant."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(_PROBE_HEIGHTS + 8, 192, generator=gen).to(dtype)
    w = torch.randn(384, 192, generator=gen).to(dtype)
    full = x @ w.t()
    smallest = _PROBE_HEIGHTS
    for m in range(_PROBE_HEIGHTS - 1, 0, -1):
        if all(torch.equal(x[i:i + m] @ w.t(), full[i:i + m]) for i in (0, 3, 8)):
            smallest = m
        else:
            break
    return smallest


def _product(x: torch.Tensor, w: torch.Tensor, transposed: bool, rows: int) -> torch.Tensor:
    """``x @ w`` (``transposed``) or ``x @ w.T``, on at least ``rows`` rows (zero padding)."""
    m = x.shape[0]
    if m < rows:
        x = torch.cat([x, x.new_zeros(rows - m, x.shape[1])])
    out = x @ (w if transposed else w.t())
    return out[:m] if m < rows else out


def experts_forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                    top_k_weights: torch.Tensor) -> torch.Tensor:
    """An experts module's forward (transformers' experts interface): the used experts one
    by one, each product on at least :func:`invariant_rows` rows; the same bias additions,
    gating, post-expert norm and weighting as ``grouped_mm``."""
    if getattr(self, "_is_expert_parallel", False):
        from transformers.integrations.moe import grouped_mm_experts_forward
        return grouped_mm_experts_forward(self, hidden_states, top_k_index, top_k_weights)
    n, k = top_k_index.shape
    flat = top_k_index.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=1).tolist()
    x_all = hidden_states.to(self.down_proj.dtype)[order // k]
    up = self.gate_up_proj if self.has_gate else self.up_proj
    up_bias = (self.gate_up_proj_bias if self.has_gate else self.up_proj_bias) if self.has_bias else None
    rows = invariant_rows(x_all.dtype)
    out = x_all.new_empty(n * k, self.down_proj.shape[2 if self.is_transposed else 1])
    start = 0
    for e, m in enumerate(counts):
        if not m:
            continue
        sl = slice(start, start + m)
        h = _product(x_all[sl], up[e], self.is_transposed, rows)
        if up_bias is not None:
            h.add_(up_bias[e])
        h = self._apply_gate(h) if self.has_gate else self.act_fn(h)
        y = _product(h, self.down_proj[e], self.is_transposed, rows)
        if self.has_bias:
            y.add_(self.down_proj_bias[e])
        if self.has_post_expert_norm:
            y = self.post_expert_norm(y)
        out[order[sl]] = y
        start += m
    out = out * top_k_weights.reshape(-1).unsqueeze(-1).to(out.dtype)
    return out.view(n, k, -1).sum(dim=1).to(hidden_states.dtype)


def register() -> str:
    """Make :data:`NAME` a valid ``experts_implementation`` (idempotent); returns it."""
    from transformers.integrations.moe import ExpertsInterface
    ExpertsInterface.register(NAME, experts_forward)
    return NAME
