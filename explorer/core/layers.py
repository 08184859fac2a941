"""Discovery of MoE layers in a transformers 5.x causal LM.

Every decoder layer is either dense or MoE. An MoE layer has a router module (the
``*TopKRouter`` / ``*TopkRouter`` / ``*Router`` / ``*TopKGating`` classes of transformers
5.x) whose linear weight produces the router logits, and an experts module that receives
the dispatched ``(top_k_index, top_k_weights)``. :func:`discover_layers` finds them and
describes each layer with a :class:`LayerInfo`; :class:`LayerHandles` keeps the module
references that :mod:`explorer.core.control` hooks.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from explorer.core.errors import RouteError

ROUTER_CLASS = re.compile(r"(TopKRouter|TopkRouter|Router|TopKGating)$")

# How each known family's router turns logits into a selection (model_type -> kind).
ROUTER_KINDS = {
    "mixtral": "softmax-topk", "qwen2_moe": "softmax-topk", "qwen3_moe": "softmax-topk",
    "olmoe": "softmax-topk", "minimax": "softmax-topk", "dbrx": "softmax-topk",
    "deepseek_v2": "softmax-topk", "ernie4_5_moe": "softmax-topk+selection-bias",
    "gpt_oss": "topk-softmax", "granitemoe": "topk-softmax", "jetmoe": "topk-softmax",
    "deepseek_v3": "sigmoid-group-topk+selection-bias",
    "glm4_moe": "sigmoid-group-topk+selection-bias",
    "phimoe": "sparsemixer", "llama4_text": "topk-sigmoid", "llama4": "topk-sigmoid",
}


@dataclass
class LayerInfo:
    """What one decoder layer is: dense, or MoE with its routing parameters."""

    index: int
    is_moe: bool
    num_experts: int = 0
    top_k: int = 0
    shared_experts: int = 0
    router_kind: str = "dense"
    router_class: str = ""
    n_group: int | None = None
    topk_group: int | None = None

    def group_of(self, expert: int) -> int:
        return expert // (self.num_experts // self.n_group)

    def check_groups(self, experts) -> None:
        """Raise RouteError if ``experts`` can't all be picked by a group-limited router."""
        if not (self.n_group and self.topk_group and self.n_group > 1):
            return
        groups = {self.group_of(e) for e in experts}
        if len(groups) > self.topk_group:
            raise RouteError(
                f"experts {sorted(experts)} at layer {self.index} span {len(groups)} expert "
                f"groups, but this router picks experts from at most topk_group = "
                f"{self.topk_group} groups (groups of {self.num_experts // self.n_group})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LayerHandles:
    """Module references for one MoE layer (not serialised)."""

    info: LayerInfo
    router: nn.Module
    weight: torch.Tensor  # the router's linear weight (E, hidden)
    experts: nn.Module | None
    choice_biases: list[torch.Tensor] = field(default_factory=list)
    capture: str = "experts-args"  # or "llama4-scores", "jetmoe-gating"


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder-layer ModuleList of a causal LM (``model.model.layers`` and kin)."""
    base = getattr(model, "model", None) or getattr(model, "transformer", None) or model
    for name in ("layers", "blocks", "h"):
        layers = getattr(base, name, None)
        if isinstance(layers, nn.ModuleList):
            return layers
    for mod in model.modules():
        if isinstance(mod, nn.ModuleList) and len(mod) and "Layer" in type(mod[0]).__name__:
            return mod
        if isinstance(mod, nn.ModuleList) and len(mod) and "Block" in type(mod[0]).__name__:
            return mod
    raise RouteError("could not find the decoder layers of this model")


def router_weight(router: nn.Module) -> torch.Tensor:
    """The router's linear weight (E, hidden) as the module holds it now (accelerate's
    offload hooks put a fresh tensor there for each call of an offloaded layer)."""
    w = getattr(router, "weight", None)
    if isinstance(w, torch.Tensor) and w.dim() == 2:
        return w
    for _, p in router.named_parameters():
        if p.dim() == 2:
            return p
    raise RouteError(f"router {type(router).__name__} has no 2-D weight")


def choice_biases(router: nn.Module) -> list[torch.Tensor]:
    """The selection-only biases a router adds after its softmax or sigmoid (deepseek_v3's
    ``e_score_correction_bias`` and kin) as the module holds them now."""
    return [t for name, t in list(router.named_buffers()) + list(router.named_parameters())
            if "correction_bias" in name]


def _find_router(layer: nn.Module) -> tuple[str, nn.Module] | None:
    for name, mod in layer.named_modules():
        if not name or "attn" in name or "attention" in name:
            continue  # JetMoe's attention experts have a router too; we route the MLP only
        if ROUTER_CLASS.search(type(mod).__name__):
            return name, mod
    return None


def _cfg(config, *names, default=None):
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


def _shared_expert_count(block: nn.Module, config) -> int:
    n = _cfg(config, "n_shared_experts", "num_shared_experts")
    if n:
        return int(n)
    for name, _ in block.named_children():
        if "shared_expert" in name:
            return 1
    return 0


def discover_layers(model: nn.Module) -> list[LayerHandles | LayerInfo]:
    """Describe every decoder layer: a :class:`LayerHandles` for MoE, LayerInfo for dense."""
    config = getattr(model.config, "text_config", None) or model.config
    mtype = getattr(config, "model_type", "")
    out: list[LayerHandles | LayerInfo] = []
    for i, layer in enumerate(decoder_layers(model)):
        found = _find_router(layer)
        if found is None:
            out.append(LayerInfo(index=i, is_moe=False))
            continue
        path, router = found
        parent = layer.get_submodule(path.rsplit(".", 1)[0]) if "." in path else layer
        weight = router_weight(router)
        if not weight.is_floating_point():  # e.g. a router's nn.Linear converted by bnb
            raise RouteError(
                f"the router of layer {i} ({type(router).__name__}) holds quantized weights "
                f"({str(weight.dtype).replace('torch.', '')}); route control needs them in a "
                f"float dtype: load the checkpoint without quantizing its routers")
        num_experts = int(weight.shape[0])
        top_k = int(_cfg(router, "top_k", default=0) or _cfg(parent, "top_k", default=0)
                    or _cfg(config, "num_experts_per_tok", "moe_top_k", "top_k", default=0))
        if not top_k:
            ffn = getattr(config, "ffn_config", None)
            top_k = int(getattr(ffn, "moe_top_k", 0) or 0)
        n_group = _cfg(router, "num_group", "n_group")
        topk_group = _cfg(router, "topk_group")
        if getattr(router, "topk_method", "group_limited_greedy") == "greedy":
            n_group = topk_group = None
        kind = ROUTER_KINDS.get(mtype, "unknown")
        biases = choice_biases(router)
        experts = getattr(parent, "experts", None)
        capture = "experts-args"
        if mtype in ("llama4_text", "llama4"):
            capture = "llama4-scores"
        elif type(router).__name__ == "JetMoeTopKGating":
            capture = "jetmoe-gating"
        info = LayerInfo(index=i, is_moe=True, num_experts=num_experts, top_k=top_k,
                         shared_experts=_shared_expert_count(parent, config),
                         router_kind=kind, router_class=type(router).__name__,
                         n_group=int(n_group) if n_group and n_group > 1 else None,
                         topk_group=int(topk_group) if n_group and n_group > 1 else None)
        out.append(LayerHandles(info=info, router=router, weight=weight, experts=experts,
                                choice_biases=biases, capture=capture))
    if not any(isinstance(x, LayerHandles) for x in out):
        raise RouteError("this model has no MoE layers (no router modules were found)")
    return out


@dataclass
class ModelInfo:
    """A serialisable description of a loaded model and its layers."""

    name: str
    model_type: str
    num_layers: int
    layers: list[LayerInfo]
    device: str = "cpu"
    dtype: str = "float32"
    revision: str | None = None
    transformers_version: str = ""
    chat_template_hash: str | None = None
    parameters: int = 0
    quantization: str | None = None  # "8bit" / "4bit" (bitsandbytes), "fp8", "int8-experts",
    # "int4-experts", a checkpoint's method
    #: for a pre-quantized checkpoint (``quantization`` is its method): whether its weights
    #: were expanded to ``dtype`` while loading (see explorer.core.prequantized); else None
    dequantized: bool | None = None
    weight_bytes: int = 0  # bytes of parameters and buffers as stored (0: not measured)

    @property
    def moe_layers(self) -> list[int]:
        return [lay.index for lay in self.layers if lay.is_moe]

    @property
    def dense_layers(self) -> list[int]:
        return [lay.index for lay in self.layers if not lay.is_moe]

    def layer(self, index: int) -> LayerInfo:
        return self.layers[index]

    def provenance(self) -> dict[str, Any]:
        """The provenance dict stored in routes, traces and results; ``quantization`` is
        there only for a quantized model (absent: full precision, as in older results), with
        ``weight_bytes``, the memory its weights take as stored, and ``dequantized`` only for
        a pre-quantized checkpoint."""
        out = {"model": self.name, "revision": self.revision,
               "transformers_version": self.transformers_version,
               "chat_template_hash": self.chat_template_hash}
        if self.quantization:
            out["quantization"] = self.quantization
            if self.weight_bytes:
                out["weight_bytes"] = self.weight_bytes
        if self.dequantized is not None:
            out["dequantized"] = self.dequantized
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "model_type": self.model_type,
                "num_layers": self.num_layers, "moe_layers": self.moe_layers,
                "dense_layers": self.dense_layers, "device": self.device,
                "dtype": self.dtype, "revision": self.revision,
                "transformers_version": self.transformers_version,
                "chat_template_hash": self.chat_template_hash,
                "parameters": self.parameters, "quantization": self.quantization,
                "dequantized": self.dequantized,
                "weight_bytes": self.weight_bytes,
                "layers": [lay.to_dict() for lay in self.layers]}
