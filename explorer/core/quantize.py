"""Quantized loading through bitsandbytes (``load_model(..., quantize="8bit" | "4bit")``).

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

Importing this module needs neither torch nor transformers (the CLI's ``--help`` uses
:data:`QUANTIZE_MODES`).
"""

from __future__ import annotations

from typing import Any

from explorer.core.errors import InputError, ModelLoadError

#: The values of ``quantize`` (``--quantize``, ``EXPLORER_QUANTIZE``): bitsandbytes
#: LLM.int8 weights, or 4-bit NF4 weights with double quantization.
QUANTIZE_MODES = ("8bit", "4bit")
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
    device asked for: ``auto``, ``cpu``, ``cuda[:N]``...): a known value, a CUDA GPU,
    bitsandbytes importable and recent enough for this transformers. Returns the parsed
    value (None: no quantization); raises :class:`ModelLoadError` with one line naming
    what to change. Imports bitsandbytes only when ``quantize`` is set."""
    try:
        mode = parse_quantize(quantize)
    except InputError as exc:
        raise ModelLoadError(str(exc)) from None
    if mode is None:
        return None
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


def prequantized_method(config) -> str | None:
    """The quantization method a checkpoint's config already declares (``fp8``,
    ``mxfp4``, ``bitsandbytes``...), else None. Such a checkpoint cannot be quantized
    again with ``--quantize``."""
    qc = getattr(config, "quantization_config", None)
    if qc is None:
        get = getattr(config, "get_text_config", None)
        text = get() if callable(get) else None
        qc = getattr(text, "quantization_config", None) if text is not None else None
    if qc is None:
        return None
    d = qc if isinstance(qc, dict) else qc.to_dict()
    method = d.get("quant_method")
    return str(getattr(method, "value", method) or "unknown")


def quantization_of(model) -> str | None:
    """How a loaded transformers model is quantized, for :class:`~explorer.core.layers.
    ModelInfo`: ``"8bit"`` / ``"4bit"`` for bitsandbytes, another checkpoint method's
    name (``fp8``, ``mxfp4``...), None for a full-precision model."""
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
    # a bare ValueError: load_model asks for a config only when a mode is set (a bad mode
    # is refused above by parse_quantize), so reaching this is a bug
    raise ValueError("bitsandbytes_config needs quantize='8bit' or '4bit'")
