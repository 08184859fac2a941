"""A plan before the download: what a model needs, from its config alone.

:func:`plan_model` reads a model's config (a local folder's ``config.json`` or the hub's
config file; no weight is read), builds the model on the meta device (shapes without
memory) and counts its parameters by part, exactly, for every family transformers can
build: routed experts, shared experts, attention, embeddings and output head, routers,
dense MLP layers and the rest (norms). From those counts it gives:

- the weights' memory at each precision of :data:`PRECISIONS` (which parts each touches:
  :data:`PRECISION_NOTES`);
- the memory of an F-SOUR search at a prompt length: one candidate row's KV cache and
  activations (:func:`explorer.engine.batching.config_row_bytes`, the batching model the
  engine sizes its batches with) and the batch the engine would run;
- whether the weights fit one GPU of a given size (the loader's own rule,
  :data:`~explorer.core.defaults.ONE_GPU_SHARE`), else how many GPUs ``device_map="auto"``
  spreads them over;
- an F-SOUR search's forward passes (worst case) and its budget units
  (:func:`explorer.attacks.fsour.search_budget`).

The result is a :class:`MemoryPlan` (``to_dict`` / ``from_dict``); :func:`plan_text` and
:func:`plan_markdown` write it for the CLI and the app. Sizes are in bytes; text shows GB
(10^9 bytes).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from explorer.core.defaults import (
    DEFAULT_TARGET,
    FSOUR_CANDIDATES,
    FSOUR_MAX_ITERS,
    MAX_NEW_TOKENS,
    ONE_GPU_SHARE,
    PLAN_GPU_GB,
    PLAN_PROMPT_TOKENS,
)
from explorer.core.errors import InputError, ModelLoadError

#: The parts a model's parameters are counted in, in display order.
PARTS = ("routed_experts", "shared_experts", "attention", "embeddings", "routers",
         "dense_mlp", "other")
PART_LABELS = {"routed_experts": "routed experts", "shared_experts": "shared experts",
               "attention": "attention", "embeddings": "embeddings + head",
               "routers": "routers", "dense_mlp": "dense MLP layers",
               "other": "norms and other"}
#: Storage bits per weight of each precision's quantized parts (block scales included:
#: fp8 and int8 keep one scale per block or row, under 0.1%; int4 one fp16 scale per group
#: of 128; mxfp4 one 8-bit scale per 32; NF4 with double quantization 4.127).
BITS = {"fp32": 32.0, "bf16": 16.0, "fp8": 8.0, "int8": 8.0, "int4": 4.125, "mxfp4": 4.25,
        "bnb-8bit": 8.0, "bnb-4bit": 4.127, "int8-experts": 8.0, "int4-experts": 4.0}
#: The loader's own integer-experts modes (``--quantize int8-experts|int4-experts``, see
#: :mod:`explorer.core.experts_quant`): routed experts only, with one float32 scale per
#: output channel (int8) or per :data:`~explorer.core.experts_quant.INT4_GROUP` inputs
#: (int4) on top of :data:`BITS`; the rest, shared experts included, in bf16.
EXPERT_MODES = {"int8-experts": None, "int4-experts": "group"}
#: The precisions a plan sizes, in display order: the whole model in fp32 or bf16; the
#: experts (routed and shared) in fp8, int8, int4 or mxfp4 with everything else in bf16;
#: and ``--quantize 8bit`` / ``4bit`` as the loader applies them (bitsandbytes).
PRECISIONS = tuple(BITS)
PRECISION_NOTES = {
    "fp32": "every weight in float32",
    "bf16": "every weight in bfloat16",
    "fp8": "routed and shared experts in fp8; attention, routers, embeddings, head in bf16",
    "int8-experts": "--quantize int8-experts: routed experts in int8 with a float32 scale per "
                    "output channel; the rest in bf16",
    "int4-experts": "--quantize int4-experts: routed experts in int4 with a float32 scale per "
                    "64 inputs; the rest in bf16",
    "int8": "routed and shared experts in int8; attention, routers, embeddings, head in bf16",
    "int4": "routed and shared experts in int4 (group 128); the rest in bf16",
    "mxfp4": "routed and shared experts in MXFP4 (gpt-oss's format); the rest in bf16",
    "bnb-8bit": "--quantize 8bit (bitsandbytes): every nn.Linear but routers and head in int8; "
                "fused routed experts, embeddings, routers, head in bf16",
    "bnb-4bit": "--quantize 4bit (bitsandbytes NF4): every nn.Linear but routers and head in "
                "4 bit; fused routed experts, embeddings, routers, head in bf16",
}
#: ``--quantize`` values the plan accepts besides :data:`PRECISIONS`: the loader's modes.
QUANTIZE_ALIASES = {"8bit": "bnb-8bit", "4bit": "bnb-4bit", "float32": "fp32",
                    "bfloat16": "bf16", "fp16": "bf16", "float16": "bf16"}
GB = 1e9


def parse_precision(text: str | None) -> str:
    """A :data:`PRECISIONS` name from ``text`` (None or blank: ``bf16``; the loader's
    ``8bit`` / ``4bit`` and dtype names accepted); :class:`InputError` otherwise."""
    t = (text or "").strip().lower()
    if not t:
        return "bf16"
    t = QUANTIZE_ALIASES.get(t, t)
    if t not in BITS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)} (or 8bit, 4bit), "
                         f"got {text!r}")
    return t


#: GPU memory a plan accepts, in GB.
GPU_GB_RANGE = (0.1, 100_000.0)


def check_gpu_memory(value) -> float:
    """``value`` as GPU memory in GB within :data:`GPU_GB_RANGE`, else :class:`InputError`."""
    lo, hi = GPU_GB_RANGE
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        v = math.nan
    if isinstance(value, bool) or not (math.isfinite(v) and lo <= v <= hi):
        raise InputError(f"GPU memory must be a number of GB in {lo:g}..{hi:g}, got {value!r}")
    return v


def approx_tokens(text: str) -> int:
    """Tokens ``text`` takes, estimated without a tokenizer: one per word and one per
    punctuation mark (``"Sure, here is"``: 4, what BPE tokenizers of the supported
    families give)."""
    return max(1, len(re.findall(r"\w+|[^\w\s]", text)))


@dataclass
class MemoryPlan:
    """What a model needs, computed from its config (see the module docs).

    ``params`` / ``bnb_linear``: parameters per part of :data:`PARTS` (all of them, and
    those bitsandbytes converts: weights of plain ``nn.Linear`` modules outside its skip
    list); ``buffers``: floating buffer elements (rotary tables, selection biases);
    ``weights``: bytes per precision; ``fits``: per precision, ``{"fits_one_gpu",
    "gpus"}``; ``search``: the F-SOUR search's memory at ``precision``; ``fsour``: its
    forward passes; ``info``: provenance (transformers version, config source).
    """

    model: str
    model_type: str
    layers: int
    moe_layers: int
    experts: int
    top_k: int
    shared_experts: int
    params: dict[str, int]
    bnb_linear: dict[str, int]
    buffers: int
    total_params: int
    active_params: int
    precision: str
    gpu_memory_gb: float
    prompt_tokens: int
    target_tokens: int
    weights: dict[str, int]
    fits: dict[str, dict[str, Any]]
    search: dict[str, Any]
    fsour: dict[str, int]
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain JSON values (the CLI's ``--json`` object)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MemoryPlan":
        """The plan :meth:`to_dict` gave."""
        return cls(**d)


# -- counting ------------------------------------------------------------------------------
def count_parts(model) -> dict[str, Any]:
    """Parameters of a (meta-device or loaded) causal LM per part of :data:`PARTS`, the
    part bitsandbytes would convert, floating buffer elements, and the MoE shape (layers,
    MoE layers, experts, top-k, shared experts), using the project's discovery
    (:func:`explorer.core.layers.discover_layers`)."""
    from torch import nn
    from transformers.quantizers.quantizers_utils import should_convert_module

    from explorer.core.layers import LayerHandles, decoder_layers, discover_layers
    from explorer.core.quantize import skip_modules

    part: dict[int, str] = {}
    handles = discover_layers(model)
    blocks = decoder_layers(model)
    for h, layer in zip(handles, blocks):
        moe_block = None
        if isinstance(h, LayerHandles):
            path = next(n for n, m in layer.named_modules() if m is h.router)
            moe_block = layer.get_submodule(path.rsplit(".", 1)[0]) if "." in path else None
            for p in h.router.parameters():
                part[id(p)] = "routers"
            if moe_block is not None:
                for name, p in moe_block.named_parameters():
                    part.setdefault(id(p), "shared_experts" if "shared_expert" in name
                                    else "routed_experts")
            if h.experts is not None:
                for p in h.experts.parameters():
                    part[id(p)] = "routed_experts"
        for mname, mod in layer.named_modules():
            kind = type(mod).__name__
            for p in mod.parameters(recurse=False):
                if id(p) in part:
                    continue
                if "attn" in mname or "attention" in mname:
                    part[id(p)] = "attention"
                elif "Norm" in kind or "norm" in mname.rsplit(".", 1)[-1]:
                    part[id(p)] = "other"
                elif moe_block is None:
                    part[id(p)] = "dense_mlp"
                else:
                    part[id(p)] = "other"
    for emb in (model.get_input_embeddings(), model.get_output_embeddings()):
        if emb is not None:
            for p in emb.parameters():
                part[id(p)] = "embeddings"
    skip = skip_modules(model)
    converted = set()
    for name, mod in model.named_modules():
        if type(mod) is nn.Linear and should_convert_module(name, skip):
            converted.add(id(mod.weight))
    params = dict.fromkeys(PARTS, 0)
    bnb = dict.fromkeys(PARTS, 0)
    for p in model.parameters():  # tied weights once
        where = part.get(id(p), "other")
        params[where] += p.numel()
        if id(p) in converted:
            bnb[where] += p.numel()
    moe = [h.info for h in handles if isinstance(h, LayerHandles)]
    return {"params": params, "bnb_linear": bnb,
            "buffers": sum(b.numel() for b in model.buffers() if b.is_floating_point()),
            "layers": len(handles), "moe_layers": len(moe),
            "experts": max(i.num_experts for i in moe), "top_k": max(i.top_k for i in moe),
            "shared_experts": max(i.shared_experts for i in moe)}


def scale_bits(precision: str, dims: tuple[int, int] | None) -> float:
    """Bits of scales per routed-expert weight in the loader's integer-experts modes
    (:data:`EXPERT_MODES`; 0 elsewhere): ``dims`` = (hidden, expert intermediate), the
    inputs of the gate-and-up and of the down projection (two thirds and one third of an
    expert's weights)."""
    if precision not in EXPERT_MODES or not dims:
        return 0.0
    from explorer.core.experts_quant import INT4_GROUP
    group = INT4_GROUP if EXPERT_MODES[precision] else None
    per = [32.0 / (min(group, k) if group else k) for k in dims]
    return (2 * per[0] + per[1]) / 3


def weight_bytes(params: dict[str, int], bnb_linear: dict[str, int], buffers: int,
                 precision: str, dims: tuple[int, int] | None = None) -> int:
    """Bytes of the weights at ``precision`` (see :data:`PRECISION_NOTES`) from the counts
    of :func:`count_parts`. Buffers follow the compute dtype (4 bytes in fp32, else 2).
    ``dims``: (hidden, expert intermediate) for the integer-experts modes' scales."""
    bits = BITS[precision]
    if precision in ("fp32", "bf16"):
        return int(round((sum(params.values()) + buffers) * bits / 8))
    total = 2.0 * buffers
    for p in PARTS:
        if precision.startswith("bnb-"):
            q = bnb_linear[p]
        elif precision in EXPERT_MODES:
            q = params[p] if p == "routed_experts" else 0
        else:
            q = params[p] if p in ("routed_experts", "shared_experts") else 0
        total += q * (bits + scale_bits(precision, dims)) / 8 + (params[p] - q) * 2
    return int(round(total))


def expert_dims(config) -> tuple[int, int] | None:
    """(hidden size, routed expert intermediate size) of ``config``, or None."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(text, "hidden_size", None) or getattr(text, "d_model", None)
    inter = None
    for name in ("moe_intermediate_size", "expert_intermediate_size", "intermediate_size",
                 "ffn_hidden_size"):
        inter = inter or getattr(text, name, None)
    ffn = getattr(text, "ffn_config", None)  # dbrx
    if inter is None and ffn is not None:
        inter = getattr(ffn, "ffn_hidden_size", None)
    return (int(hidden), int(inter)) if hidden and inter else None


def gpus_needed(weights: int, gpu_bytes: float) -> int:
    """GPUs of ``gpu_bytes`` whose :data:`ONE_GPU_SHARE` holds ``weights`` bytes."""
    return max(1, math.ceil(weights / (ONE_GPU_SHARE * gpu_bytes)))


# -- the plan ------------------------------------------------------------------------------
def plan_model(name_or_path: str | None = None, *, precision: str | None = None,
               gpu_memory_gb: float = PLAN_GPU_GB, prompt_tokens: int = PLAN_PROMPT_TOKENS,
               target: str = DEFAULT_TARGET, candidates: int = FSOUR_CANDIDATES,
               max_iters: int = FSOUR_MAX_ITERS, trust_remote_code: bool = False,
               config=None) -> MemoryPlan:
    """The :class:`MemoryPlan` of a model: ``name_or_path`` (the demo model when None, a
    local folder or a hub id; its config only is read, see
    :func:`explorer.core.model.read_config`) or an already read ``config``.

    ``precision``: the precision the search figures and the headline use (a
    :data:`PRECISIONS` name or the loader's ``8bit`` / ``4bit``; default bf16);
    ``gpu_memory_gb``: one GPU's memory (GB); ``prompt_tokens``: the templated prompt's
    tokens; ``target``: the target answer (its tokens estimated by :func:`approx_tokens`);
    ``candidates`` / ``max_iters``: F-SOUR's N and restarts. Raises
    :class:`ModelLoadError` (no config, not a buildable causal LM, no MoE layer) or
    :class:`InputError` (bad numbers) with one line.
    """
    import transformers

    from explorer.attacks.fsour import search_budget
    from explorer.core.errors import RouteError
    from explorer.core.model import meta_model, read_config
    from explorer.engine.batching import DEFAULT_SHARE, MAX_BATCH, config_row_bytes

    precision = parse_precision(precision)
    gpu_memory_gb = check_gpu_memory(gpu_memory_gb)
    if not isinstance(prompt_tokens, int) or not 1 <= prompt_tokens <= 10_000_000:
        raise InputError(f"prompt tokens must be a whole number from 1, got {prompt_tokens!r}")
    if config is None:
        config, name = read_config(name_or_path, trust_remote_code=trust_remote_code)
    else:
        name = str(name_or_path or getattr(config, "_name_or_path", "") or "config")
    meta = meta_model(config, trust_remote_code)
    if meta is None:
        raise ModelLoadError(f"{name} is not a causal language model this version of "
                             f"transformers can build from its config")
    try:
        counts = count_parts(meta)
    except RouteError as exc:
        raise ModelLoadError(f"{name}: {exc}") from None
    params, bnb, buffers = counts["params"], counts["bnb_linear"], counts["buffers"]
    total = sum(params.values())
    E, k = counts["experts"], counts["top_k"]
    active = total - params["routed_experts"] + params["routed_experts"] * k // max(1, E)
    gpu_bytes = gpu_memory_gb * GB
    dims = expert_dims(config)
    weights = {p: weight_bytes(params, bnb, buffers, p, dims) for p in PRECISIONS}
    fits = {p: {"fits_one_gpu": w <= ONE_GPU_SHARE * gpu_bytes,
                "gpus": gpus_needed(w, gpu_bytes)} for p, w in weights.items()}

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_target = approx_tokens(target)
    T = prompt_tokens + n_target
    elt = 4 if precision == "fp32" else 2
    row = config_row_bytes(text, elt, T, T, n_target + 1)
    H = text.hidden_size
    heads = text.num_attention_heads
    hd = getattr(text, "head_dim", None) or H // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    kv_row = elt * 2 * text.num_hidden_layers * T * kv_heads * hd
    gpus = fits[precision]["gpus"]
    free = max(0.0, gpus * gpu_bytes - weights[precision])
    rows = max(1, min(MAX_BATCH, int(free * DEFAULT_SHARE) // max(1, row)))
    search = {"tokens": T, "row_bytes": row, "kv_cache_bytes_per_row": kv_row,
              "rows": rows, "batch_bytes": rows * row, "share": DEFAULT_SHARE,
              "free_bytes": int(free)}

    L = counts["moe_layers"]
    per_restart = 1 + candidates * prompt_tokens * L
    fsour = {"candidates": candidates, "max_iters": max_iters, "positions": prompt_tokens,
             "moe_layers": L, "passes_per_restart": per_restart,
             "passes_worst": per_restart * max_iters, "generations": max_iters + 1,
             "max_new_tokens": MAX_NEW_TOKENS,
             "budget": search_budget(candidates, max_iters, prompt_tokens, n_target)}
    notes = []
    if not fits[precision]["fits_one_gpu"]:
        notes.append(f"{precision}: needs {gpus} GPUs of {gpu_memory_gb:g} GB; "
                     f"device_map='auto' puts consecutive layers on each, and the layers "
                     f"run one GPU at a time (the others wait), so the search is no faster "
                     f"than on one large GPU, plus a hidden-state copy between GPUs "
                     f"({gpus - 1} per forward)")
    rope = getattr(text, "qk_rope_head_dim", None)
    nope = getattr(text, "qk_nope_head_dim", None)
    if getattr(text, "kv_lora_rank", None) and rope and nope:  # multi-head latent attention
        v = getattr(text, "v_head_dim", None) or nope
        ratio = heads * (rope + nope + v) / (2 * kv_heads * hd)
        notes.append(f"MLA attention: transformers caches each head's full keys and values "
                     f"({rope + nope} + {v} per head), about {ratio:.1f}x the KV cache the "
                     f"batching model (and this plan) counts")
    if precision.startswith("bnb-"):
        notes.append("transformers' bitsandbytes path converts nn.Linear modules only: the "
                     "fused routed experts stay in bf16, so --quantize saves little on "
                     "models whose weights are mostly routed experts")
    info = {"transformers_version": transformers.__version__,
            "source": "config only (no weights read)", "target": target,
            "gb": "10^9 bytes", "one_gpu_share": ONE_GPU_SHARE}
    return MemoryPlan(model=name, model_type=str(getattr(text, "model_type", "")),
                      layers=counts["layers"], moe_layers=L, experts=E, top_k=k,
                      shared_experts=counts["shared_experts"], params=params,
                      bnb_linear=bnb, buffers=buffers, total_params=total,
                      active_params=int(active), precision=precision,
                      gpu_memory_gb=float(gpu_memory_gb), prompt_tokens=prompt_tokens,
                      target_tokens=n_target, weights=weights, fits=fits, search=search,
                      fsour=fsour, notes=notes, info=info)


# -- text ----------------------------------------------------------------------------------
def _b(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e7 else f"{n / 1e6:.3g}M"


def _gb(n: float) -> str:
    return f"{n / GB:.1f} GB" if n >= GB / 10 else f"{n / 2**20:.2f} MiB"


def _rows(plan: MemoryPlan) -> tuple[list[list[str]], list[list[str]]]:
    total = max(1, plan.total_params)
    parts = [[PART_LABELS[p], _b(plan.params[p]), f"{100 * plan.params[p] / total:.1f}%"]
             for p in PARTS if plan.params[p]]
    mem = []
    for p in PRECISIONS:
        f = plan.fits[p]
        fit = "yes" if f["fits_one_gpu"] else f"no: {f['gpus']} GPUs"
        mem.append([p + (" *" if p == plan.precision else ""), _gb(plan.weights[p]), fit,
                    PRECISION_NOTES[p]])
    return parts, mem


def _summary(plan: MemoryPlan) -> list[str]:
    s, f = plan.search, plan.fsour
    return [
        f"F-SOUR search at {plan.precision}, {plan.prompt_tokens} prompt + "
        f"{plan.target_tokens} target tokens: KV cache {_gb(s['kv_cache_bytes_per_row'])} "
        f"and activations {_gb(s['row_bytes'] - s['kv_cache_bytes_per_row'])} per "
        f"candidate row; batches of {s['rows']} rows use {_gb(s['batch_bytes'])} "
        f"({s['share']:.0%} of the {_gb(s['free_bytes'])} left beside the weights)",
        f"forward passes (worst case): {f['passes_per_restart']:,} per restart "
        f"(1 + {f['candidates']} candidates x {f['positions']} positions x "
        f"{f['moe_layers']} MoE layers), {f['passes_worst']:,} over {f['max_iters']} "
        f"restarts, plus up to {f['generations']} answers of {f['max_new_tokens']} tokens; "
        f"budget units {f['budget']:,}",
    ]


def plan_text(plan: MemoryPlan) -> str:
    """The plan as plain text (the CLI's output)."""
    parts, mem = _rows(plan)
    lines = [f"{plan.model} ({plan.model_type}): {_b(plan.total_params)} parameters, "
             f"{_b(plan.active_params)} active per token; {plan.moe_layers} of "
             f"{plan.layers} layers MoE, {plan.experts} experts, top-{plan.top_k}"
             + (f", {plan.shared_experts} shared" if plan.shared_experts else ""),
             "parameters:"]
    lines += [f"  {a:<18} {b:>9}  {c:>6}" for a, b, c in parts]
    lines.append(f"weights (one GPU = {plan.gpu_memory_gb:g} GB; fits: weights within "
                 f"{ONE_GPU_SHARE:.0%} of it):")
    lines += [f"  {a:<10} {b:>10}  fits one GPU: {c:<14} {d}" for a, b, c, d in mem]
    lines += _summary(plan) + plan.notes
    return "\n".join(lines)


def plan_markdown(plan: MemoryPlan) -> str:
    """The plan as Markdown tables (the app's Model tab)."""
    parts, mem = _rows(plan)
    out = [f"**{plan.model}** ({plan.model_type}): {_b(plan.total_params)} parameters, "
           f"{_b(plan.active_params)} active per token; {plan.moe_layers} of {plan.layers} "
           f"layers MoE, {plan.experts} experts, top-{plan.top_k}"
           + (f", {plan.shared_experts} shared" if plan.shared_experts else "")
           + " (from the config only: nothing downloaded)", "",
           "| part | parameters | share |", "| --- | --- | --- |"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in parts]
    out += ["", f"| precision | weights | fits one {plan.gpu_memory_gb:g} GB GPU | what it "
            "touches |", "| --- | --- | --- | --- |"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in mem]
    out += [""] + [f"- {x}" for x in _summary(plan) + plan.notes]
    return "\n".join(out)
