"""Quantized loading (``load_model(..., quantize=...)``): bitsandbytes' ``8bit`` / ``4bit``,
transformers' fine-grained ``fp8`` and our ``int8-experts`` / ``int4-experts``.

bitsandbytes is an optional extra (``pip install "sparse-safety-explorer[quantize]"``),
imported only when quantization is asked for; it needs a CUDA GPU. This module checks
that before any weight is read (:func:`check_quantize`), builds transformers'
``BitsAndBytesConfig`` (:func:`bitsandbytes_config`) with the routers kept out of it
(:func:`skip_modules`), and says how a loaded model was quantized
(:func:`quantization_of`).

What transformers 5.24 quantizes: its bitsandbytes integration replaces the modules whose
type is exactly ``nn.Linear`` (attention projections, shared experts, dense MLPs) and
leaves everything else alone. Routed experts are fused 3-D parameters of an ``*Experts``
module, not ``nn.Linear``, so they stay in the compute dtype; most routers hold a bare
``weight`` parameter and stay too, but dbrx's and jetmoe's routers wrap an ``nn.Linear``,
which would be converted. Route control recognises a router by its weight in ``F.linear``,
so every router is put in the skip list (found by :func:`explorer.core.layers.
discover_layers` on an empty meta-device copy of the model, the same way as on the real
one), with transformers' own default skips (the output embeddings).

Two more modes quantize the routed experts themselves:

* ``fp8``: transformers' fine-grained FP8 (``FineGrainedFP8Config``): float8 e4m3 weights
  with one scale per block (:func:`fp8_block_size`) in the ``nn.Linear`` layers and, through
  its ``FP8Experts``, in the fused routed experts; activations are quantized per block on
  the fly. The skip list is the same as bitsandbytes' (routers, output embeddings). It
  needs a CUDA GPU of compute capability 8.9 or newer and the ``kernels`` package (its
  Triton kernel); :func:`check_quantize` refuses anything else before a weight is read, and
  :func:`fp8_refusal` the experts FP8Experts cannot represent (biases, transposed or
  interleaved layouts: gpt-oss, for one, whose checkpoints come in MXFP4 anyway).
* ``int8-experts`` / ``int4-experts``: weight-only integer routed experts, our own scheme,
  on CPU and GPU (see :mod:`explorer.core.experts_quant` for the format and why);
  everything else stays in the compute dtype.

``8bit`` and ``4bit`` keep their meaning (bitsandbytes, ``nn.Linear`` only).

Importing this module needs neither torch nor transformers (the CLI's ``--help`` uses
:data:`QUANTIZE_MODES`).
"""

from __future__ import annotations

from typing import Any

from explorer.core.errors import InputError, ModelLoadError

#: The bitsandbytes modes: LLM.int8 weights, or 4-bit NF4 weights with double quantization
#: (``nn.Linear`` layers only).
BNB_MODES = ("8bit", "4bit")
#: Fine-grained FP8 (transformers), routed experts included; a GPU of capability >= 8.9.
FP8_MODE = "fp8"
#: Weight-only integer routed experts (:mod:`explorer.core.experts_quant`), CPU or GPU.
EXPERT_MODES = ("int8-experts", "int4-experts")
#: The values of ``quantize`` (``--quantize``, ``EXPLORER_QUANTIZE``).
QUANTIZE_MODES = BNB_MODES + (FP8_MODE,) + EXPERT_MODES
#: The compute capability FP8 matrix products need (Ada, Hopper and newer).
FP8_MIN_CAPABILITY = (8, 9)
#: The largest FP8 scale block (transformers' default, DeepSeek-V3's checkpoints').
FP8_BLOCK = 128
#: The extra that installs bitsandbytes, and the plain alternative, as messages name them.
INSTALL_HINT = 'pip install "sparse-safety-explorer[quantize]" (or pip install bitsandbytes)'


def parse_quantize(text: str | None) -> str | None:
    """``text`` as a :data:`QUANTIZE_MODES` value (case and spaces ignored); None or a
    blank text give None (no quantization). Raises ``InputError`` for anything else."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise InputError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, "
                         f"got {text!r}")
    t = text.strip().lower()
    if not t:
        return None
    if t not in QUANTIZE_MODES:
        raise InputError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, got {text!r}")
    return t


def check_quantize(quantize: str | None, device: str) -> str | None:
    """Check, before anything is loaded, that ``quantize`` can run on ``device`` (the
    device asked for: ``auto``, ``cpu``, ``cuda[:N]``...): a known value; for the
    bitsandbytes modes a CUDA GPU and bitsandbytes importable and recent enough for this
    transformers; for ``fp8`` a CUDA GPU of compute capability >= 8.9 and the ``kernels``
    package; the ``*-experts`` modes run anywhere. Returns the parsed value (None: no
    quantization); raises :class:`ModelLoadError` with one line naming what to change.
    Imports bitsandbytes only for a bitsandbytes mode."""
    try:
        mode = parse_quantize(quantize)
    except InputError as exc:
        raise ModelLoadError(str(exc)) from None
    if mode is None or mode in EXPERT_MODES:
        return mode
    if mode == FP8_MODE:
        return _check_fp8(device)
    import torch
    what = f"--quantize {mode} (bitsandbytes)"
    if not (device == "auto" or device.startswith("cuda")):
        raise ModelLoadError(f"{what} needs a CUDA GPU, but the device asked for is {device}; "
                             f"use --device cuda, or load without --quantize")
    if not torch.cuda.is_available():
        raise ModelLoadError(f"{what} needs a CUDA GPU, but none is available (device "
                             f"{device}); load without --quantize on this machine")
    try:
        import bitsandbytes
    except ImportError:
        raise ModelLoadError(f"{what} needs the bitsandbytes package: {INSTALL_HINT}") from None
    except Exception as exc:  # noqa: BLE001 - a broken install (CUDA libraries) says why
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{what}: bitsandbytes cannot be imported: {first}") from None
    from packaging.version import InvalidVersion, Version
    from transformers.utils import BITSANDBYTES_MIN_VERSION
    have = str(getattr(bitsandbytes, "__version__", "0"))
    try:
        too_old = Version(have) < Version(BITSANDBYTES_MIN_VERSION)
    except InvalidVersion:
        too_old = False  # a development build: let transformers judge it
    if too_old:
        raise ModelLoadError(f"{what}: bitsandbytes {have} is too old for this transformers; "
                             f"pip install -U 'bitsandbytes>={BITSANDBYTES_MIN_VERSION}'")
    return mode


def _check_fp8(device: str) -> str:
    import torch
    need = ".".join(map(str, FP8_MIN_CAPABILITY))
    what = f"--quantize fp8 needs a CUDA GPU of compute capability {need} or newer"
    instead = "use --quantize int8-experts or int4-experts there"
    if not (device == "auto" or device.startswith("cuda")):
        raise ModelLoadError(f"{what}, but the device asked for is {device}; {instead}")
    if not torch.cuda.is_available():
        raise ModelLoadError(f"{what}, but none is available (device {device}); {instead}")
    index = int(device.split(":", 1)[1]) if ":" in device else None
    try:
        cap = tuple(torch.cuda.get_device_capability(index))
        gpu = torch.cuda.get_device_name(index)
    except Exception as exc:  # noqa: BLE001 - a device index that does not exist, say
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"--quantize fp8: cannot query {device}: {first}") from None
    if cap < FP8_MIN_CAPABILITY:
        raise ModelLoadError(f"{what}, but {gpu} has {cap[0]}.{cap[1]}; {instead}")
    from transformers.utils import is_kernels_available
    if not is_kernels_available():
        raise ModelLoadError("--quantize fp8 needs the kernels package for its FP8 matrix "
                             "products: pip install kernels")
    return FP8_MODE


def fp8_refusal(model) -> str | None:
    """Why transformers' FP8 conversion cannot take ``model`` (an empty copy, typically on
    the meta device), or None. It replaces every module named ``*.experts`` with an
    ``FP8Experts``, which holds gate-and-up weights as (E, 2I, H) with the gate half first
    and no biases: a module named so that is not such a fused experts module would be
    computed wrongly."""
    for name, mod in model.named_modules():
        if not name.endswith(".experts"):
            continue
        kind = type(mod).__name__
        if not hasattr(mod, "has_gate"):
            return f"its {kind} modules are not fused experts FP8 can hold"
        if getattr(mod, "has_bias", False):
            return f"its {kind} have biases, which FP8 experts do not support"
        if getattr(mod, "is_transposed", False) or not getattr(mod, "is_concatenated", True):
            return f"its {kind} store their weights in a layout FP8 experts do not support"
    return None


def fp8_block_size(model) -> int:
    """The FP8 scale block (square): :data:`FP8_BLOCK`, halved until it divides every
    dimension of the routed experts' weights (down to 16; real checkpoints' dimensions are
    multiples of 128, the tiny test models' of 32)."""
    dims = set()
    for name, mod in model.named_modules():
        if name.endswith(".experts"):
            for p in mod.parameters(recurse=False):
                if p.dim() == 3:
                    dims.update(int(d) for d in p.shape[1:])
    block = FP8_BLOCK
    while block > 16 and any(d % block for d in dims):
        block //= 2
    return block


def fp8_config(*, skip: list[str], block: int = FP8_BLOCK) -> Any:
    """transformers' ``FineGrainedFP8Config``: dynamic activation scales, square weight
    blocks of ``block``, and ``skip`` (from :func:`skip_modules`: the routers and output
    embeddings) as ``modules_to_not_convert``."""
    from transformers import FineGrainedFP8Config
    return FineGrainedFP8Config(activation_scheme="dynamic", weight_block_size=(block, block),
                                modules_to_not_convert=list(skip))


def quantize_experts_of(model, mode: str) -> int:
    """Convert ``model``'s routed experts for an ``*-experts`` mode (see
    :func:`explorer.core.experts_quant.quantize_experts`); returns how many modules were
    converted."""
    from explorer.core.experts_quant import quantize_experts
    if mode not in EXPERT_MODES:
        raise ValueError(f"quantize_experts_of needs one of {EXPERT_MODES}, got {mode!r}")
    return quantize_experts(model, 8 if mode == "int8-experts" else 4)


def prequantized_method(config) -> str | None:
    """The quantization method a checkpoint's config already declares (``fp8``,
    ``mxfp4``, ``bitsandbytes``...), else None (read by
    :func:`explorer.core.prequantized.checkpoint_format`). Such a checkpoint cannot be
    quantized again with ``--quantize``."""
    from explorer.core.prequantized import checkpoint_format
    return checkpoint_format(config)


def quantization_of(model) -> str | None:
    """How a loaded transformers model is quantized, for :class:`~explorer.core.layers.
    ModelInfo`: ``"8bit"`` / ``"4bit"`` for bitsandbytes, ``"int8-experts"`` /
    ``"int4-experts"`` for integer routed experts, another checkpoint method's name
    (``fp8``, ``mxfp4``...), None for a full-precision model."""
    from explorer.core.experts_quant import experts_quantization
    experts = experts_quantization(model)
    if experts is not None:
        return experts
    method = prequantized_method(model.config)
    if method != "bitsandbytes":
        return method
    qc = model.config.quantization_config
    d = qc if isinstance(qc, dict) else qc.to_dict()
    if d.get("load_in_8bit") or d.get("_load_in_8bit"):
        return "8bit"
    if d.get("load_in_4bit") or d.get("_load_in_4bit"):
        return "4bit"
    return method


def skip_modules(model) -> list[str]:
    """Module names bitsandbytes must leave in the compute dtype: every MoE layer's router
    (found by :func:`~explorer.core.layers.discover_layers`; route control needs its
    weight as a plain tensor) and transformers' default skips (the output embeddings, tied
    and last modules, which an explicit skip list would otherwise drop). ``model`` is the
    model to be loaded, typically an empty copy on the meta device. Raises
    :class:`~explorer.core.errors.RouteError` when it has no MoE layer."""
    from transformers.quantizers.base import get_keys_to_not_convert

    from explorer.core.layers import LayerHandles, discover_layers
    routers = {id(x.router) for x in discover_layers(model) if isinstance(x, LayerHandles)}
    names = [name for name, mod in model.named_modules() if id(mod) in routers]
    return sorted(set(names) | set(get_keys_to_not_convert(model)))


def bitsandbytes_config(quantize: str, *, skip: list[str], compute_dtype) -> Any:
    """transformers' ``BitsAndBytesConfig`` for ``quantize``: ``8bit`` is LLM.int8
    (``load_in_8bit``); ``4bit`` is NF4 with double quantization, computing in
    ``compute_dtype`` (the model's dtype, bfloat16 by default on GPU). ``skip`` (from
    :func:`skip_modules`) goes to ``llm_int8_skip_modules``, which both modes use."""
    from transformers import BitsAndBytesConfig
    mode = parse_quantize(quantize)
    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(skip))
    if mode == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype,
                                  llm_int8_skip_modules=list(skip))
    # a bare ValueError: load_model asks for a config only for these modes (a bad mode is
    # refused above by parse_quantize), so reaching this is a bug
    raise ValueError("bitsandbytes_config needs quantize='8bit' or '4bit'")
