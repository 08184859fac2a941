"""Cost model and extra figures for ``python -m explorer bench``.

- :func:`layer_flops` / :class:`ConeCost`: an approximate FLOP count per token and decoder
  layer (attention projections, attention over the context, router, the k routed experts
  and any shared experts), from the model's config. A candidate that changes (layer l,
  position t) needs, at the least, layer l at position t, layers > l at positions >= t
  (the causal cone) and the logits of the target rows; a full forward needs every layer
  at every position.
- :func:`matmul_rate`: the dense matrix-product throughput this device reaches at the
  model's shapes, so "ideal seconds" = cone FLOPs / that rate.
- :func:`latencies`: trace and re-route latency for prompts of a given token count.
- :func:`compare_orders`: F-SOUR passes to success and ASR, paper order vs RoSais order.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from explorer.core.errors import InputError

if TYPE_CHECKING:
    from explorer.core.model import MoEModel


def kv_flops(moe: MoEModel) -> float:
    """FLOPs of one token's key and value projections at a decoder layer."""
    c = moe.text_config
    H = c.hidden_size
    hd = getattr(c, "head_dim", None) or H // c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    return float(2 * H * 2 * kv * hd)


def layer_flops(moe: MoEModel, layer: int, context: int) -> float:
    """Approximate FLOPs (2 x multiply-adds) for one token at decoder ``layer`` that
    attends to ``context`` tokens."""
    c = moe.text_config
    H = c.hidden_size
    heads = c.num_attention_heads
    hd = getattr(c, "head_dim", None) or H // heads
    q = heads * hd
    f = 2 * H * 2 * q + kv_flops(moe) + 2 * 2 * q * context
    info = next((m for m in moe.info.layers if m.index == layer), None)
    if info is not None and info.is_moe:
        inter = (getattr(c, "moe_intermediate_size", None) or getattr(c, "intermediate_size", None)
                 or 4 * H)
        f += 2 * H * info.num_experts + info.top_k * 2 * 3 * H * inter
        shared = getattr(c, "shared_expert_intermediate_size", None)
        n_shared = getattr(c, "n_shared_experts", None) or (1 if shared else 0)
        if n_shared:
            f += 2 * 3 * H * (shared or inter) * (1 if shared else n_shared)
    else:
        inter = getattr(c, "intermediate_size", None) or 4 * H
        f += 2 * 3 * H * inter
    return float(f)


@dataclass
class ConeCost:
    """FLOPs of full forwards and of the causal cone for a prompt+target of ``T`` tokens."""

    moe: object
    T: int
    n_target: int

    def __post_init__(self):
        L = len(self.moe.info.layers)
        self._rows = [[layer_flops(self.moe, i, pos + 1) for pos in range(self.T)]
                      for i in range(L)]
        self._kv = kv_flops(self.moe)
        c = self.moe.text_config
        self._head = 2.0 * c.hidden_size * c.vocab_size * self.n_target

    def full(self) -> float:
        """One candidate, one full forward (every layer, every position, target logits)."""
        return sum(sum(r) for r in self._rows) + self._head

    def cone(self, position: int, layer: int) -> float:
        """One candidate differing at (layer, position): the least work that can change
        its score. Scored rows are the positions predicting target tokens (the last
        ``n_target`` positions before the final token, which nothing scored reads). Needed:
        the edited layer at the edited position only (attention there reads unchanged
        inputs; the MoE is per token), the layers above it at positions >= position up to
        the last scored row, where the last layer needs only keys and values outside the
        scored rows, and the target logits. An edit at the last layer outside the scored
        rows changes no score: no work."""
        L, end = len(self._rows), self.T - 1  # positions < end are read
        first_scored = end - self.n_target
        last = L - 1
        if layer == last and position < first_scored:
            return 0.0
        f = self._rows[layer][position] + self._head
        for i in range(layer + 1, L):
            row = self._rows[i]
            if i == last:
                f += sum(row[max(position, first_scored):end])
                f += self._kv * max(0, first_scored - position)
            else:
                f += sum(row[position:end])
        return f


def matmul_rate(moe: MoEModel, rows: int = 256, repeat: int = 5) -> float:
    """FLOP/s of a (rows x H) @ (H x 4H) product in the model's dtype on its device."""
    c = moe.text_config
    H = c.hidden_size
    dev, dt = moe.device, next(moe.model.parameters()).dtype
    a = torch.randn(rows, H, device=dev, dtype=dt)
    b = torch.randn(H, 4 * H, device=dev, dtype=dt)
    times = []
    with torch.inference_mode():
        for _ in range(repeat + 1):
            _sync(dev)
            t = time.perf_counter()
            for _ in range(10):
                a @ b
            _sync(dev)
            times.append((time.perf_counter() - t) / 10)
    return 2.0 * rows * H * 4 * H / statistics.median(times[1:])


def _sync(dev) -> None:
    if torch.device(dev).type == "cuda":
        torch.cuda.synchronize(dev)


def peak_memory_mb(dev) -> float:
    """Peak memory so far: CUDA allocator peak on a GPU, else the process's peak RSS."""
    if torch.device(dev).type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak(dev) -> None:
    if torch.device(dev).type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def prompt_of_tokens(moe: MoEModel, n: int) -> str | None:
    """A benign prompt whose templated form has about ``n`` tokens (None: beyond context)."""
    limit = moe.context_length or 10**9
    if n + 32 > limit:
        return None
    words = "Please describe the seasons and the weather in a quiet mountain village"
    text = words
    while len(moe.encode(text)) < n:
        text += " " + words
    while len(moe.encode(text)) > n and " " in text:
        text = text.rsplit(" ", 1)[0]
    return text


def latencies(moe: MoEModel, sizes=(64, 512, 2048), new_tokens: int = 16, repeat: int = 3) -> list[dict]:
    """Per prompt size: trace (prompt only) and re-route (a forced edit, +new_tokens) seconds."""
    from explorer.core.route import Route
    from explorer.core.trace import trace
    out = []
    for n in sizes:
        p = prompt_of_tokens(moe, n)
        if p is None:
            out.append({"tokens": n, "skipped": "beyond the model's context"})
            continue
        lay = moe.info.layers[moe.moe_layers[0]]
        pos = len(moe.encode(p)) // 2
        route = Route().force(lay.index, pos, list(range(lay.top_k)))

        def t_trace():
            trace(moe, p, max_new_tokens=0)

        def t_route():
            trace(moe, p, route=route, max_new_tokens=new_tokens)
        out.append({"tokens": len(moe.encode(p)), "trace_s": median_seconds(t_trace, repeat),
                    "reroute_s": median_seconds(t_route, repeat), "new_tokens": new_tokens})
    return out


def median_seconds(fn, repeat: int = 5) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeat`` runs, after one warm-up."""
    fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def compare_orders(moe: MoEModel, prompts, candidates: int = 10, max_iters: int = 3, seed: int = 0,
                   max_new_tokens: int = 24) -> dict:
    """F-SOUR with the paper's order vs RoSais-guided layer order on the same prompts."""
    from explorer.methods.fsour import fsour
    rows = []
    for p in prompts:
        row = {"prompt": p}
        for order in ("paper", "rosais"):
            r = fsour(moe, p, candidates=candidates, max_iters=max_iters, seed=seed,
                      order=order, max_new_tokens=max_new_tokens)
            row[order] = {"success": r.success, "forward_passes": r.forward_passes,
                          "seconds": r.seconds}
        rows.append(row)
    summary = {}
    for order in ("paper", "rosais"):
        ok = [r[order] for r in rows if r[order]["success"]]
        summary[order] = {"asr": len(ok) / max(1, len(rows)),
                          "mean_passes_to_success": (statistics.mean(x["forward_passes"] for x in ok)
                                                     if ok else None),
                          "mean_seconds": statistics.mean(r[order]["seconds"] for r in rows)
                          if rows else None}
    return {"n": len(rows), "rows": rows, "summary": summary}


SYNTHETIC = {
    # a tiny-but-wide random-weight OLMoE: the family's real model class, no download
    "olmoe-wide": dict(num_hidden_layers=16, num_experts=64, num_experts_per_tok=8,
                       hidden_size=1024, intermediate_size=512, num_attention_heads=16,
                       num_key_value_heads=16, max_position_embeddings=4096),
    # the real OLMoE-1B-7B shape (random weights): the GPU benchmark of multi-prompt F-SOUR
    "olmoe-real": dict(num_hidden_layers=16, num_experts=64, num_experts_per_tok=8,
                       hidden_size=2048, intermediate_size=1024, num_attention_heads=16,
                       num_key_value_heads=16, max_position_embeddings=4096),
    # the same shape as olmoe-wide, small enough for a CPU smoke run
    "olmoe-small": dict(num_hidden_layers=4, num_experts=16, num_experts_per_tok=2,
                        hidden_size=128, intermediate_size=128, num_attention_heads=4,
                        num_key_value_heads=4, max_position_embeddings=4096),
}


def synthetic_model(name: str, device: str = "auto", dtype=None, seed: int = 0,
                    quantize: str | None = None):
    """A random-weight MoE of a real family (see :data:`SYNTHETIC`), with the demo
    tokenizer and chat template, built in memory on ``device``. ``quantize``:
    ``int8-experts`` or ``int4-experts`` converts its routed experts once built (the other
    modes quantize while reading a checkpoint, so ``InputError`` here)."""
    from transformers import AutoTokenizer, OlmoeConfig, OlmoeForCausalLM

    from explorer.core.model import DEMO_MODEL_DIR, MoEModel
    from explorer.core.quantize import EXPERT_MODES, parse_quantize, quantize_experts_of
    if name not in SYNTHETIC:
        raise InputError(f"unknown synthetic model {name!r}; choose from {sorted(SYNTHETIC)}")
    quantize = parse_quantize(quantize)
    if quantize is not None and quantize not in EXPERT_MODES:
        raise InputError(f"a synthetic model is built in memory: --quantize {quantize} needs a "
                         f"checkpoint; use {' or '.join(EXPERT_MODES)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    tok = AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    tok.model_max_length = SYNTHETIC[name]["max_position_embeddings"]
    cfg = OlmoeConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                      **SYNTHETIC[name])
    torch.manual_seed(seed)
    with torch.device(device):
        model = OlmoeForCausalLM(cfg).to(dtype)
        for layer in model.model.layers:  # spread the routers' choices
            torch.nn.init.normal_(layer.mlp.gate.weight, std=0.5)
    model.eval()
    if quantize is not None:
        quantize_experts_of(model, quantize)
    if not device.startswith("cuda") and hasattr(model, "set_experts_implementation"):
        from explorer.core.model import cpu_experts_implementation
        model.set_experts_implementation(cpu_experts_implementation())  # OLMoE accepts both
    return MoEModel(model, tok, f"synthetic:{name}")
