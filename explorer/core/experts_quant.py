"""Weight-only int8 / int4 routed experts (``--quantize int8-experts | int4-experts``).

The fused routed experts of an MoE (the 3-D ``gate_up_proj`` / ``up_proj`` and
``down_proj`` parameters of a transformers ``*Experts`` module) hold 93-97% of its weights,
and bitsandbytes leaves them alone (it converts ``nn.Linear`` only). This module stores
them as integers and computes with them in the model's dtype:

* ``int8``: one int8 per weight, one float32 scale per output channel of each expert
  (symmetric, ``scale = max|w| / 127`` over the channel's inputs);
* ``int4``: two weights a byte (4-bit, symmetric, in [-7, 7]), one float32 scale per group
  of :data:`INT4_GROUP` consecutive inputs of an output channel (the inputs are padded with
  zeros to a whole number of groups; a channel shorter than a group is one group).

At rest, per weight: 1 byte + 4 / inputs (int8), 0.5 + 4 / 64 bytes (int4): 3.9x and 7.1x
smaller than float32, 2x and 3.6x smaller than bfloat16.

Why our own and not torchao: the point is a model that is smaller at rest and still
routable on CPU (the tests and the demo run there) and GPU alike. torchao's weight-only
configs convert ``nn.Linear`` weights (2-D) and its CPU int4 path needs its own packed
layouts, while these weights are 3-D parameters read by transformers' experts kernels
(``grouped_mm``, ``batched_mm``, eager, and our row-invariant CPU kernel
:mod:`explorer.core.experts_cpu`). Here the experts module keeps its identity, its routing
inputs and its kernel: :func:`quantize_experts` replaces the float parameters with integer
buffers (the float tensors are freed: the memory is saved at rest, measured by
:func:`weight_bytes`) and gives the module a forward that dequantizes, for each call, only
the experts that call's ``top_k_index`` names, then runs the module's own experts kernel
(whatever ``experts_implementation`` the model has) on those experts alone. So route
control is untouched: a forced expert is in ``top_k_index`` and is the one dequantized and
computed; a masked expert is never in it, never dequantized, never computed
(:func:`dequantize_log` shows which were). The routers, embeddings, attention, shared
experts, dense MLPs and the output layer stay in the compute dtype.

Costs: each MoE call dequantizes the experts it uses (all of a layer's, for a long prompt),
so a quantized model is slower than the float one; quantization happens after loading (the
float checkpoint is read first, on the CPU when a GPU is the target, then each experts
module is converted and its float weights freed before the model moves). A quantized
model cannot be saved back (its state dict has the integer buffers).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch

#: Inputs per int4 scale (a common choice of weight-only 4-bit schemes: 64 or 128).
INT4_GROUP = 64
#: The largest stored magnitude per bit width (symmetric: -q..q).
QMAX = {8: 127, 4: 7}
#: The projections of an experts module that are quantized (the ones present).
PROJECTIONS = ("gate_up_proj", "up_proj", "down_proj")

_LOG: contextvars.ContextVar[list | None] = contextvars.ContextVar("explorer_dequantized",
                                                                   default=None)


@contextlib.contextmanager
def dequantize_log() -> Iterator[list]:
    """``with dequantize_log() as log:`` every quantized experts call in the block (this
    thread or task) appends ``(module, experts)``: the experts module and the sorted expert
    ids it dequantized and computed. For tests and diagnostics."""
    log: list = []
    token = _LOG.set(log)
    try:
        yield log
    finally:
        _LOG.reset(token)


def quantizable(module: torch.nn.Module) -> bool:
    """Is ``module`` a fused experts module this scheme handles: one transformers' experts
    interface dispatches (``has_gate`` / ``is_transposed`` set by its decorator) with 3-D
    float projection parameters."""
    if not (hasattr(module, "has_gate") and hasattr(module, "is_transposed")):
        return False
    if getattr(module, "_is_expert_parallel", False) or is_quantized(module):
        return False
    up = "gate_up_proj" if module.has_gate else "up_proj"
    for name in (up, "down_proj"):
        p = module._parameters.get(name)
        if p is None or p.dim() != 3 or not p.is_floating_point():
            return False
    return True


def is_quantized(module: torch.nn.Module) -> bool:
    """Was ``module`` converted by :func:`quantize_experts`?"""
    return isinstance(module, QuantizedExperts)


class QuantizedExperts:
    """Mixin of a converted experts module (see :func:`quantize_experts`): its class is a
    subclass of the original class and of this, with the forward below."""

    bits: int
    group: int | None

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        if top_k_index.numel() == 0:
            return torch.zeros_like(hidden_states)
        hit = torch.unique(top_k_index)
        hit = hit[(hit >= 0) & (hit < self.num_experts)]
        log = _LOG.get()
        if log is not None:
            log.append((self, hit.tolist()))
        view = _HitExperts(self, hit)
        local = torch.searchsorted(hit, top_k_index.clamp(0, self.num_experts - 1))
        return self._explorer_float_forward(view, hidden_states, local, top_k_weights)

    def dequantized(self, name: str, experts: torch.Tensor | None = None) -> torch.Tensor:
        """Projection ``name`` of ``experts`` (all when None) in the compute dtype, laid out
        as the float parameter was."""
        spec = self._explorer_specs[name]
        q = getattr(self, name + "_q")
        scale = getattr(self, name + "_scale")
        if experts is not None:
            q, scale = q[experts], scale[experts]
        return dequantize(q, scale, spec)

    def extra_repr(self) -> str:
        group = f", group {self.group}" if self.group else ", per output channel"
        return f"int{self.bits} weights{group}"


class _HitExperts:
    """What an experts kernel reads: the module's attributes, with ``num_experts`` and the
    projections (and their biases) restricted to the experts ``hit`` (dequantized)."""

    def __init__(self, module, hit: torch.Tensor):
        d = self.__dict__
        d["_module"] = module
        d["num_experts"] = int(hit.numel())
        for name in module._explorer_specs:
            d[name] = module.dequantized(name, hit)
            bias = getattr(module, name + "_bias", None)
            if isinstance(bias, torch.Tensor):
                d[name + "_bias"] = bias[hit]

    def __getattr__(self, name):
        return getattr(self.__dict__["_module"], name)


def quantize(w: torch.Tensor, bits: int, group: int | None,
             transposed: bool) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``w`` (E, out, in), or (E, in, out) when ``transposed``, as (integers, scales, spec):
    symmetric, one scale per output channel (``group`` None) or per ``group`` inputs. The
    integers are int8 (E, out, in) for 8 bits, two a byte in uint8 (E, out, in_padded / 2)
    for 4; the scales float32 (E, out, groups)."""
    if bits not in QMAX:
        raise ValueError(f"bits must be 8 or 4, got {bits}")
    wn = (w.transpose(1, 2) if transposed else w).float()
    E, out, k = wn.shape
    g = min(group, k + k % 2) if group else k  # a channel shorter than a group: one group
    pad = -k % g
    if pad:
        wn = torch.nn.functional.pad(wn, (0, pad))
    grouped = wn.reshape(E, out, -1, g)
    amax = grouped.abs().amax(-1)
    scale = torch.where(amax > 0, amax / QMAX[bits], torch.ones_like(amax))
    q = torch.round(grouped / scale.unsqueeze(-1)).clamp_(-QMAX[bits], QMAX[bits])
    q = q.reshape(E, out, -1).to(torch.int8)
    if bits == 4:
        u = (q + 8).to(torch.uint8)
        q = u[..., 0::2] | (u[..., 1::2] << 4)
    spec = {"bits": bits, "group": g, "in": k, "transposed": transposed,
            "dtype": w.dtype, "shape": tuple(w.shape)}
    return q.contiguous(), scale.contiguous(), spec


def dequantize(q: torch.Tensor, scale: torch.Tensor, spec: dict) -> torch.Tensor:
    """The inverse of :func:`quantize` (to its rounding), in the original dtype and layout."""
    if spec["bits"] == 4:
        lo = (q & 0x0F).to(torch.int8) - 8
        hi = (q >> 4).to(torch.int8) - 8
        q = torch.stack((lo, hi), dim=-1).reshape(*q.shape[:-1], -1)
    E, out = q.shape[0], q.shape[1]
    w = (q.reshape(E, out, -1, spec["group"]).float() * scale.unsqueeze(-1)).reshape(E, out, -1)
    w = w[..., :spec["in"]].to(spec["dtype"])
    return w.transpose(1, 2).contiguous() if spec["transposed"] else w


def _quantized_class(cls: type) -> type:
    sub = _CLASSES.get(cls)
    if sub is None:
        sub = type(f"Quantized{cls.__name__}", (QuantizedExperts, cls),
                   {"_explorer_float_forward": staticmethod(cls.forward),
                    "__module__": __name__})
        _CLASSES[cls] = sub
    return sub


_CLASSES: dict[type, type] = {}


def quantize_module(module: torch.nn.Module, bits: int, group: int | None = None) -> None:
    """Convert one experts module (:func:`quantizable`) in place: its projection parameters
    become ``<name>_q`` / ``<name>_scale`` buffers (the float tensors are dropped), its class
    a subclass whose forward dequantizes the experts each call uses."""
    specs = {}
    for name in PROJECTIONS:
        p = module._parameters.get(name)
        if p is None:
            continue
        q, scale, spec = quantize(p.detach(), bits, group, bool(module.is_transposed))
        del module._parameters[name]
        module.register_buffer(name + "_q", q)
        module.register_buffer(name + "_scale", scale)
        specs[name] = spec
    module._explorer_specs = specs
    module.bits, module.group = bits, group
    module.__class__ = _quantized_class(type(module))


def quantize_experts(model: torch.nn.Module, bits: int, group: int | None = None) -> int:
    """Convert every routed experts module of ``model`` (:func:`quantizable`) to ``bits``
    (8: per output channel; 4: per ``group`` inputs, :data:`INT4_GROUP` by default), one
    module at a time (the float weights of one module are freed before the next); returns
    how many were converted."""
    if bits == 4 and group is None:
        group = INT4_GROUP
    n = 0
    for module in list(model.modules()):
        if quantizable(module):
            with torch.no_grad():
                quantize_module(module, bits, None if bits == 8 else group)
            n += 1
    return n


def experts_quantization(model: torch.nn.Module) -> str | None:
    """``"int8-experts"`` / ``"int4-experts"`` for a model with converted experts, else None."""
    for module in model.modules():
        if is_quantized(module):
            return f"int{module.bits}-experts"
    return None


def logical_parameters(model: torch.nn.Module) -> int:
    """The weights the converted experts modules of ``model`` stand for (their float
    parameters' element count), which :meth:`torch.nn.Module.parameters` no longer lists."""
    n = 0
    for module in model.modules():
        if is_quantized(module):
            for spec in module._explorer_specs.values():
                e, a, b = spec["shape"]
                n += e * a * b
    return n


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of ``model``'s parameters and buffers as stored (each storage counted once:
    tied weights too), the memory its weights take at rest."""
    seen: set = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device.type == "meta":
            continue
        try:
            storage = t.untyped_storage()
            key, size = (t.device, storage.data_ptr()), storage.nbytes()
        except (RuntimeError, NotImplementedError):  # tensor subclasses without a storage
            key, size = id(t), t.numel() * t.element_size()
        if key in seen:
            continue
        seen.add(key)
        total += size
    return total
