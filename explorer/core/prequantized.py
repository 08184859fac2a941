"""Loading pre-quantized checkpoints: fine-grained FP8, MXFP4 and compressed-tensors.

A checkpoint whose ``config.json`` carries a ``quantization_config`` is loaded by
transformers' own quantizer for its method. This module decides, before any weight is
read, whether the weights are expanded ("dequantized") to the compute dtype while loading,
and says afterwards what was loaded (:class:`Prequantized`, recorded in
:class:`~explorer.core.layers.ModelInfo` and in every result's provenance).

What each format does (transformers 5.24 and 5.25):

* ``fp8`` (fine-grained FP8: e4m3 weights with a per-block ``weight_scale_inv``, as
  DeepSeek-V3's and Qwen3's FP8 releases): native FP8 matmuls need a GPU of compute
  capability 8.9 or more; elsewhere (CPU included) the weights are dequantized. Routers
  are not ``nn.Linear`` in most families, so they stay in float either way and route
  control works unchanged; the FP8 experts module takes the same
  ``(hidden, top_k_index, top_k_weights)`` as the float one.
* ``mxfp4`` (gpt-oss: the routed experts as 4-bit e2m1 blocks of 32 with a power-of-two
  scale): always dequantized here. Its fused kernel path (triton kernels) replaces the MoE
  block's forward with one that computes the router logits itself and routes inside the
  kernel, without calling the router module, so route control could neither see nor
  change the routing.
* ``compressed-tensors`` (llm-compressor's format; needs the ``compressed-tensors``
  package): always dequantized here. Its fused experts are not ``nn.Linear`` modules, so
  transformers expands them anyway, and without dequantizing the other layers are
  decompressed by a one-off hook at the first forward: the same memory, later.

Other methods (bitsandbytes, GPTQ, AWQ...) load as transformers loads them; routers must
stay in float (see :func:`explorer.core.layers.discover_layers`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from explorer.core.errors import ModelLoadError

#: The methods this module sets up, with what their dequantization needs.
FORMATS = ("fp8", "mxfp4", "compressed-tensors")
#: Formats dequantized on every device (see the module's notes for why).
ALWAYS_DEQUANTIZED = ("mxfp4", "compressed-tensors")
#: How to install the package compressed-tensors checkpoints need.
COMPRESSED_TENSORS_HINT = "pip install compressed-tensors"


@dataclass(frozen=True)
class Prequantized:
    """A pre-quantized checkpoint as loaded: its ``format`` (the checkpoint's
    ``quant_method``: ``fp8``, ``mxfp4``, ``compressed-tensors``...) and whether its
    weights were ``dequantized`` to the model's dtype while loading (False: they run in
    the format)."""

    format: str
    dequantized: bool

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "dequantized": self.dequantized}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Prequantized":
        return cls(format=str(d["format"]), dequantized=bool(d["dequantized"]))


@dataclass
class LoadPlan:
    """What :func:`plan_load` decided for one checkpoint: the ``format`` (None: not
    pre-quantized), the extra ``from_pretrained`` keyword arguments, and whether
    dequantization was asked for (``dequantize``; None: transformers decides)."""

    format: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    dequantize: bool | None = None


def _quantization_dict(config) -> dict[str, Any] | None:
    qc = getattr(config, "quantization_config", None)
    if qc is None:
        get = getattr(config, "get_text_config", None)
        text = get() if callable(get) else None
        qc = getattr(text, "quantization_config", None) if text is not None else None
    if qc is None:
        return None
    return dict(qc) if isinstance(qc, dict) else qc.to_dict()


def checkpoint_format(config) -> str | None:
    """The ``quant_method`` a checkpoint's config declares (``fp8``, ``mxfp4``,
    ``compressed-tensors``, ``bitsandbytes``...), or None for a full-precision one."""
    d = _quantization_dict(config)
    if d is None:
        return None
    method = d.get("quant_method")
    return str(getattr(method, "value", method) or "unknown")


def plan_load(config, device: str, name: str) -> LoadPlan:
    """How to load the checkpoint ``config`` describes on ``device`` (``cpu``, ``cuda``,
    ``cuda:N``): for the :data:`FORMATS`, transformers' quantization config with
    ``dequantize`` set where this module dequantizes (CPU, and :data:`ALWAYS_DEQUANTIZED`
    everywhere). Raises :class:`ModelLoadError` with one line when a package the format
    needs is missing. ``name`` is the model's name, for messages."""
    fmt = checkpoint_format(config)
    if fmt not in FORMATS:
        return LoadPlan(format=fmt)
    if fmt == "compressed-tensors":
        try:
            import compressed_tensors  # noqa: F401 - only whether it imports
        except ImportError:
            raise ModelLoadError(f"{name} is a compressed-tensors checkpoint: it needs the "
                                 f"compressed-tensors package ({COMPRESSED_TENSORS_HINT})") \
                from None
    if not (device == "cpu" or fmt in ALWAYS_DEQUANTIZED):
        return LoadPlan(format=fmt)  # native FP8 where the GPU can; transformers decides
    # the checkpoint's own config with dequantize set (passing a quantization_config
    # beside it would make transformers merge the two, with a warning)
    config = copy.deepcopy(config)
    target = config if getattr(config, "quantization_config", None) is not None \
        else config.get_text_config()
    target.quantization_config = {**_quantization_dict(config), "dequantize": True}
    return LoadPlan(format=fmt, kwargs={"config": config}, dequantize=True)


def loaded(plan: LoadPlan, model) -> Prequantized | None:
    """What was loaded under ``plan`` (None: a full-precision checkpoint). transformers
    drops a checkpoint's quantization config from the model when it dequantizes it, so
    a model without one was dequantized."""
    if plan.format is None:
        return None
    kept = getattr(model.config, "quantization_config", None) is not None
    return Prequantized(format=plan.format, dequantized=not kept)
