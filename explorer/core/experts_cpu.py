"""The CPU experts kernel: every token's experts output the same bits whatever else is in
the call.

transformers' ``grouped_mm`` runs one matrix product per expert over the tokens routed to
it, so a token's output depends on how many other tokens share its expert: on CPU the
products of 1-3 rows take another path than taller ones (measured with this build's
kernels: rows of a product of height >= 4 are bit-identical whatever the height and
offset, heights 1-3 differ by ~1 ulp; at 2 threads heights 5-7 and 9-11 too). That made the
same route score differently alone and in a batch (2.3e-5 at log-prob -60 on the demo
model, the noise F-SOUR's near-tie re-checks had to cover). :func:`experts_forward` pads
each expert's group of tokens with zero rows to a row-invariant height
(:func:`padded_height`) and runs all groups in one ``grouped_mm`` per projection, so a
token's experts output is a function of that token alone: a route scores the same bits in
a batch of one and of a thousand, in one prompt's batch and in a multi-prompt one.
Registered with transformers as :data:`NAME`; :func:`explorer.core.model.load_model`
selects it on CPU.
"""

from __future__ import annotations

import functools

import torch

NAME = "explorer_cpu"
#: Heights probed by :func:`good_heights` (taller products are taken as row-invariant).
PROBE_HEIGHTS = 64


@functools.lru_cache(maxsize=None)
def _probe(dtype: torch.dtype, threads: int) -> tuple[bool, ...]:
    from torch.utils._python_dispatch import _disable_current_modes
    with _disable_current_modes(), torch.inference_mode():  # not seen by a product log
        return _probe_products(dtype)


def _probe_products(dtype: torch.dtype) -> tuple[bool, ...]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2 * PROBE_HEIGHTS + 8, 192, generator=gen).to(dtype)
    w = torch.randn(384, 192, generator=gen).to(dtype)
    full = x @ w.t()
    ws = w.t().unsqueeze(0)

    def grouped(rows):  # the experts kernel's primitive, one group
        return torch.nn.functional.grouped_mm(
            rows, ws, offs=torch.tensor([rows.shape[0]], dtype=torch.int32))
    return tuple(all(torch.equal(x[i:i + m] @ w.t(), full[i:i + m])
                     and torch.equal(grouped(x[i:i + m]), full[i:i + m]) for i in (0, 5, 37))
                 for m in range(1, PROBE_HEIGHTS + 1))


def good_heights(dtype: torch.dtype = torch.float32) -> tuple[bool, ...]:
    """For each product height 1..:data:`PROBE_HEIGHTS`: do this machine's matrix products of
    that height give every row the bits it gets in a tall product, whatever its offset?
    Probed once per dtype and torch thread count ((h, 192) x (192, 384) products). With
    this build's CPU kernels: at 1 thread every height from 4; at 2 threads the multiples
    of 4 and every height from 12 (the threads split the rows)."""
    return _probe(dtype, torch.get_num_threads())


def invariant_rows(dtype: torch.dtype = torch.float32) -> int:
    """The smallest height from which every product height is row-invariant (see
    :func:`good_heights`; 4 at one thread here); :data:`PROBE_HEIGHTS` + 1 if none.
    Remembered per dtype and thread count (the attention asks on every call)."""
    return _invariant_rows(dtype, torch.get_num_threads())


@functools.lru_cache(maxsize=None)
def _invariant_rows(dtype: torch.dtype, threads: int) -> int:
    good = _probe(dtype, threads)
    h = len(good)
    while h > 0 and good[h - 1]:
        h -= 1
    return h + 1


def padded_height(m: int, dtype: torch.dtype = torch.float32) -> int:
    """The smallest row-invariant height >= ``m`` (``m`` itself past the probed heights)."""
    good = good_heights(dtype)
    for h in range(m, len(good) + 1):
        if good[h - 1]:
            return h
    return m


@functools.lru_cache(maxsize=None)
def _table(dtype: torch.dtype, threads: int) -> torch.Tensor:
    return torch.tensor([0] + [padded_height(m, dtype) for m in range(1, PROBE_HEIGHTS + 1)],
                        dtype=torch.int64)


def padded_heights(counts: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """:func:`padded_height` of each group size in ``counts`` (int64; 0 stays 0)."""
    table = _table(dtype, torch.get_num_threads())
    return torch.where(counts > PROBE_HEIGHTS, counts, table[counts.clamp(max=PROBE_HEIGHTS)])


def experts_forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                    top_k_weights: torch.Tensor) -> torch.Tensor:
    """An experts module's forward (transformers' experts interface): the tokens of each
    expert in a group padded with zero rows to a row-invariant height, all groups in one
    ``grouped_mm`` per projection (a loop of one product per group, each of that height);
    the same bias additions, gating, post-expert norm and weighting as transformers'
    ``grouped_mm`` kernel."""
    if getattr(self, "_is_expert_parallel", False):
        from transformers.integrations.moe import grouped_mm_experts_forward
        return grouped_mm_experts_forward(self, hidden_states, top_k_index, top_k_weights)
    n, k = top_k_index.shape
    E = self.num_experts
    flat = top_k_index.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=E)
    x_dtype = self.down_proj.dtype
    heights = padded_heights(counts, x_dtype)  # each group's padded height
    starts = torch.cumsum(counts, 0) - counts
    pstarts = torch.cumsum(heights, 0) - heights
    sorted_e = flat[order]
    # row of each sorted (token, expert) pair in the padded groups
    dest = pstarts[sorted_e] + torch.arange(n * k) - starts[sorted_e]
    total = int(heights.sum())
    x = hidden_states.new_zeros(total, hidden_states.shape[-1], dtype=x_dtype)
    x[dest] = hidden_states.to(x_dtype)[order // k]
    offs = torch.cumsum(heights, 0).to(torch.int32)
    up = self.gate_up_proj if self.has_gate else self.up_proj
    up_bias = (self.gate_up_proj_bias if self.has_gate else self.up_proj_bias) if self.has_bias else None
    grouped = torch.nn.functional.grouped_mm
    expert_of_row = torch.repeat_interleave(torch.arange(E), heights) if self.has_bias else None
    h = grouped(x, up if self.is_transposed else up.transpose(-2, -1), offs=offs)
    if up_bias is not None:
        h.add_(up_bias[expert_of_row])
    h = self._apply_gate(h) if self.has_gate else self.act_fn(h)
    y = grouped(h, self.down_proj if self.is_transposed else self.down_proj.transpose(-2, -1),
                offs=offs)
    if self.has_bias:
        y.add_(self.down_proj_bias[expert_of_row])
    if self.has_post_expert_norm:
        y = self.post_expert_norm(y)
    out = torch.empty_like(y[:n * k])
    out[order] = y[dest]
    out = out * top_k_weights.reshape(-1).unsqueeze(-1).to(out.dtype)
    return out.view(n, k, -1).sum(dim=1).to(hidden_states.dtype)


def register() -> str:
    """Make :data:`NAME` a valid ``experts_implementation`` (idempotent); returns it."""
    from transformers.integrations.moe import ExpertsInterface
    ExpertsInterface.register(NAME, experts_forward)
    good_heights(torch.float32)  # probed now (at this thread count), not inside a first call
    return NAME
