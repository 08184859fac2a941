"""Tiny pre-quantized checkpoints for tests: a tiny random model (tests/tiny_models.py) saved
as a fine-grained FP8, an MXFP4 (gpt_oss experts) or a compressed-tensors checkpoint.

Each writer saves the tiny model with ``save_pretrained`` (the checkpoint layout of the
family: per-expert 2-D weights for most families, fused 3-D experts for gpt_oss), then
rewrites its tensors in the format and adds the ``quantization_config`` a real checkpoint
of that format carries. Routers, embeddings, norms and the output layer stay in float, as
in published checkpoints. Each returns ``(path, reference)``: the folder and the float
model whose weights were quantized (for comparisons).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tiny_models import N_EXPERTS, tiny_model

#: FP8 e4m3's largest finite value.
FP8_MAX = 448.0
#: The e2m1 (FP4) values MXFP4 codes 0-15 stand for (bit 3 is the sign).
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
              -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
#: FP8 block size: a divisor of every tiny linear's dimensions (DeepSeek's q_lora_rank is
#: 24), so several blocks per weight; published checkpoints use 128 x 128.
FP8_BLOCK = (8, 8)


def _is_float_only(key: str, tensor: torch.Tensor) -> bool:
    """Tensors a published checkpoint keeps in float: not 2-D weights, embeddings, the
    output layer, and routers (an (experts, hidden) ``gate``/``router`` weight)."""
    if tensor.dim() != 2 or not key.endswith(".weight"):
        return True
    if "embed" in key or key.startswith("lm_head"):
        return True
    return key.endswith(("gate.weight", "router.weight")) and tensor.shape[0] == N_EXPERTS \
        and ".experts." not in key


def _save_float(family: str, path: Path, seed: int):
    model, _ = tiny_model(family, seed)
    model.save_pretrained(path)
    return model


def _write(path: Path, tensors: dict, quantization_config: dict | None) -> None:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"),
              metadata={"format": "pt"})
    if quantization_config is not None:
        cfg = json.loads((path / "config.json").read_text())
        cfg["quantization_config"] = quantization_config
        (path / "config.json").write_text(json.dumps(cfg, indent=2))


def fp8_blockwise(w: torch.Tensor, block=FP8_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` (rows, cols) as e4m3 values and a per-block ``weight_scale_inv`` (the
    multiplier that dequantizes each block), as DeepSeek-V3's checkpoints store them."""
    bm, bn = block
    rows, cols = w.shape
    blocks = w.float().reshape(rows // bm, bm, cols // bn, bn)
    scale = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12) / FP8_MAX  # (rows/bm, cols/bn)
    q = (blocks / scale[:, None, :, None]).reshape(rows, cols).to(torch.float8_e4m3fn)
    return q, scale


def save_fp8(family: str, path, seed: int = 0, *, expanded: bool = False):
    """A fine-grained FP8 checkpoint (``quant_method: fp8``, block-wise e4m3 weights with
    ``weight_scale_inv``) of the tiny ``family`` model in ``path``. ``expanded``: a float
    checkpoint of the same values instead (each block's e4m3 values times its scale, our
    own dequantization), the reference a dequantizing loader must reproduce."""
    path = Path(path)
    model = _save_float(family, path, seed)
    out = {}
    for key, t in load_file(str(path / "model.safetensors")).items():
        if _is_float_only(key, t):
            out[key] = t
            continue
        q, scale = fp8_blockwise(t)
        if expanded:
            bm, bn = FP8_BLOCK
            out[key] = q.float() * scale.repeat_interleave(bm, 0).repeat_interleave(bn, 1)
        else:
            out[key], out[key + "_scale_inv"] = q, scale
    _write(path, out, None if expanded else {
        "quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
        "weight_block_size": list(FP8_BLOCK)})
    return path, model


def mxfp4_pack(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` (..., cols) as MXFP4: ``blocks`` (..., cols/32, 16) uint8, two e2m1 codes a
    byte (the even element in the low nibble), and ``scales`` (..., cols/32) uint8, a
    power-of-two exponent per 32 values biased by 127."""
    *lead, cols = w.shape
    g = w.float().reshape(*lead, cols // 32, 32)
    amax = g.abs().amax(-1).clamp(min=2.0 ** -100)
    exp = torch.ceil(torch.log2(amax / 6.0)).clamp(-127, 127)  # amax / 2**exp <= 6
    scaled = g / torch.exp2(exp)[..., None]
    values = torch.tensor(FP4_VALUES)
    codes = (scaled[..., None] - values).abs().argmin(-1).to(torch.uint8)  # nearest value
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return packed, (exp + 127).to(torch.uint8)


def mxfp4_unpack(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The values :func:`mxfp4_pack` encoded, (..., cols)."""
    values = torch.tensor(FP4_VALUES)
    codes = torch.stack([blocks & 0xF, blocks >> 4], -1).long()  # (..., G, 16, 2)
    g = values[codes].reshape(*blocks.shape[:-1], 32)
    g = g * torch.exp2(scales.float() - 127)[..., None]
    return g.reshape(*blocks.shape[:-2], -1)


def save_mxfp4(path, seed: int = 0, *, expanded: bool = False):
    """An MXFP4 gpt_oss checkpoint (``quant_method: mxfp4``): the routed experts'
    ``gate_up_proj``/``down_proj`` as ``*_blocks``/``*_scales``, the rest in float, as
    the published gpt-oss checkpoints are. ``expanded``: a float checkpoint of the same
    values (see :func:`save_fp8`)."""
    path = Path(path)
    model = _save_float("gpt_oss", path, seed)
    out = {}
    for key, t in load_file(str(path / "model.safetensors")).items():
        if key.endswith(("experts.gate_up_proj", "experts.down_proj")):
            # stored (experts, in, out); the blocks run along ``in`` for each output row
            blocks, scales = mxfp4_pack(t.transpose(1, 2))
            if expanded:
                out[key] = mxfp4_unpack(blocks, scales).transpose(1, 2)
            else:
                out[key + "_blocks"], out[key + "_scales"] = blocks, scales
        else:
            out[key] = t
    _write(path, out, None if expanded else {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens",
        "lm_head"]})
    return path, model


def save_compressed(family: str, path, seed: int = 0, num_bits: int = 4, *,
                    expanded: bool = False):
    """A compressed-tensors checkpoint (``quant_method: compressed-tensors``, format
    ``pack-quantized``: symmetric per-channel int weights packed in int32, the usual
    weight-only format), written with compressed-tensors' own compressor and config.
    ``expanded``: a float checkpoint of the same values (compressed-tensors' own
    decompression of what it compressed; see :func:`save_fp8`)."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig,
                                                 QuantizationScheme)
    from compressed_tensors.quantization.utils import calculate_qparams
    path = Path(path)
    model = _save_float(family, path, seed)
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=num_bits, type="int", symmetric=True, strategy="channel"))
    out = {}
    ignored = set()
    for key, t in load_file(str(path / "model.safetensors")).items():
        if _is_float_only(key, t):
            out[key] = t
            if t.dim() == 2 and key.endswith(".weight"):
                ignored.add(key.removesuffix(".weight"))
            continue
        zero = torch.zeros(t.shape[0], 1)
        scale, zp = calculate_qparams(torch.minimum(t.amin(1, keepdim=True), zero),
                                      torch.maximum(t.amax(1, keepdim=True), zero),
                                      scheme.weights)
        local = PackedQuantizationCompressor.compress(
            {"weight": t, "weight_scale": scale, "weight_zero_point": zp}, scheme)
        if expanded:
            out[key] = PackedQuantizationCompressor.decompress(local, scheme)["weight"].float()
            continue
        prefix = key.removesuffix("weight")
        out.update({prefix + k: v for k, v in local.items()})
    _write(path, out, None)
    if expanded:
        return path, model
    config = QuantizationConfig(config_groups={"group_0": scheme}, format="pack-quantized",
                                quantization_status="compressed", ignore=sorted(ignored))
    ModelCompressor(quantization_config=config).update_config(str(path))
    return path, model
