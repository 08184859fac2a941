"""The matrix products a computation really runs: their FLOPs, and how fast they can run.

:class:`ProductLog` is a torch dispatch mode that records every matrix product (``mm``,
``addmm``, ``bmm``, ``baddbmm``, grouped products) and fused attention kernel run inside
it, with its operands' shapes and layouts. From a log:

- :meth:`ProductLog.flops`: the FLOPs (2 x multiply-adds) performed, counted from the
  shapes; a fused attention call counts both of its products over the whole query x key
  rectangle it is given. This is what an engine *did*, to set beside the cone-only
  minimum of :class:`explorer.bench.cost.ConeCost`, which is what it *had to* do.
- :func:`replay_seconds`: the seconds the recorded matrix products take run alone, back to
  back, on random operands of the same shapes and layouts (the fastest of a few rounds):
  a floor for any implementation that runs the same products. Attention kernels are left
  out of the replay, so the floor stays a lower bound.
  :func:`replay_in_order_seconds` runs them in the recorded order with the model's own
  weights: the same products, now paying for weights that left the caches since last use.

Composite operators (``linear``, ``matmul``, ``scaled_dot_product_attention``) are
decomposed under the log as the dispatcher decomposes them without it (their C++
decomposition, so the same kernels run and the numbers do not change), so their products
are seen; a kernel's own inner products (a grouped product run as one product per group)
are seen once, at the outermost recorded operator.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
_PLAIN = {aten.mm: "mm", aten.addmm: "mm", aten.bmm: "bmm", aten.baddbmm: "bmm"}
_ATTENTION = ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
              "_scaled_dot_product_cudnn_attention", "_flash_attention_forward",
              "_efficient_attention_forward")
_COMPOSITE = torch._C.DispatchKey.CompositeImplicitAutograd
_SHAPE_QUERIES = {aten.size.default, aten.sym_size.default, aten.stride.default,
                  aten.sym_stride.default, aten.dim.default, aten.numel.default,
                  aten.is_contiguous.default, aten.storage_offset.default,
                  torch.ops.prim.device.default, torch.ops.prim.layout.default}


@dataclass(frozen=True)
class Product:
    """One recorded call. ``kind``: "mm", "bmm", "grouped" or "attention"; ``a``/``b``: the
    operand shapes (attention: query and key shapes, ``offs``: the value's last dim);
    ``b_t``: whether ``b`` is a transposed view; ``offs``: a grouped product's group ends."""

    kind: str
    a: tuple[int, ...]
    b: tuple[int, ...]
    b_t: bool = False
    offs: tuple[int, ...] = ()
    dtype: str = "float32"
    device: str = "cpu"

    @property
    def flops(self) -> int:
        if self.kind == "mm":
            (m, k), n = self.a, self.b[-1]
            return 2 * m * k * n
        if self.kind == "bmm":
            (bs, m, k), n = self.a, self.b[-1]
            return 2 * bs * m * k * n
        if self.kind == "grouped":  # (rows, K) x (groups, K, N): each row meets one group
            return 2 * self.a[0] * self.a[1] * self.b[-1]
        b, h, sq, d = self.a
        sk, dv = self.b[2], self.offs[0]
        return 2 * b * h * sq * sk * (d + dv)


def _transposed(t: torch.Tensor) -> bool:
    return t.dim() >= 2 and t.stride(-2) == 1 and t.stride(-1) != 1


def _meta(t: torch.Tensor) -> tuple[str, str]:
    return str(t.dtype).replace("torch.", ""), str(t.device)


def _record(func, args, kwargs) -> tuple[Product, torch.Tensor | None] | None:
    packet = func.overloadpacket
    name = packet.__name__
    if packet in _PLAIN:
        a, b = (args[1], args[2]) if packet in (aten.addmm, aten.baddbmm) else (args[0], args[1])
        return Product(_PLAIN[packet], tuple(a.shape), tuple(b.shape), _transposed(b),
                       (), *_meta(b)), b
    if name.endswith("grouped_mm"):
        a, b = args[0], args[1]
        offs = kwargs.get("offs", args[2] if len(args) > 2 else None)
        if a.dim() != 2 or b.dim() != 3 or offs is None:
            return None  # layouts the engines never use
        return Product("grouped", tuple(a.shape), tuple(b.shape), _transposed(b),
                       tuple(int(x) for x in offs.tolist()), *_meta(a)), b
    if any(name.startswith(p) for p in _ATTENTION) and len(args) >= 3:
        q, k, v = args[0], args[1], args[2]
        if q.dim() == 4:  # (batch, heads, seq, dim)
            return Product("attention", tuple(q.shape), tuple(k.shape), False,
                           (int(v.shape[-1]),), *_meta(q)), None
    return None


class ProductLog(TorchDispatchMode):
    """Records the matrix products and attention calls run inside ``with ProductLog() as
    log:``; see the module docs. ``model``: whose weights an in-order replay uses."""

    def __init__(self, model: torch.nn.Module | None = None):
        super().__init__()
        self.calls: list[Product] = []
        # per call: its operand that is (a view of) a parameter of ``model``, kept by
        # reference for :func:`replay_in_order_seconds` (no copy, no growth), else None
        self.weights: list[torch.Tensor | None] = []
        self._params = ({p.untyped_storage().data_ptr() for p in model.parameters()}
                        if model is not None else set())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rec = _record(func, args, kwargs)
        if rec is not None:
            self.calls.append(rec[0])
            b = rec[1]
            own = b is not None and b.untyped_storage().data_ptr() in self._params
            self.weights.append(b if own else None)
        elif func not in _SHAPE_QUERIES and torch._C._dispatch_has_kernel_for_dispatch_key(
                func.name(), _COMPOSITE):  # linear, matmul, ...: see the products they run
            with self:  # their C++ decomposition: the same kernels as without the log
                return func._op_dk(_COMPOSITE, *args, **kwargs)
        return func(*args, **kwargs)

    def flops(self, kind: str | None = None) -> int:
        """FLOPs of all recorded calls (or of one ``kind``)."""
        return sum(p.flops for p in self.calls if kind is None or p.kind == kind)

    def by_kind(self) -> dict[str, int]:
        """FLOPs per kind of call."""
        out: Counter = Counter()
        for p in self.calls:
            out[p.kind] += p.flops
        return dict(out)


def _operands(p: Product):
    dt, dev = getattr(torch, p.dtype), torch.device(p.device)
    a = torch.randn(p.a, dtype=dt, device=dev)
    if p.b_t:  # the same strides as the recorded view: a transposed contiguous tensor
        b = torch.randn(*p.b[:-2], p.b[-1], p.b[-2], dtype=dt, device=dev).transpose(-1, -2)
    else:
        b = torch.randn(p.b, dtype=dt, device=dev)
    offs = torch.tensor(p.offs, dtype=torch.int32, device=dev) if p.kind == "grouped" else None
    return a, b, offs


def _run(p: Product, a, b, offs):
    if p.kind == "grouped":
        return torch._grouped_mm(a, b, offs=offs)
    return torch.bmm(a, b) if p.kind == "bmm" else torch.mm(a, b)


def _fastest_round(run, device: str, repeat: int) -> float:
    """Seconds of the fastest of ``repeat`` timed calls of ``run()``, after one warm-up."""
    run()
    best = float("inf")
    for _ in range(max(1, repeat)):
        _sync(device)
        t = time.perf_counter()
        run()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def replay_seconds(log: ProductLog, repeat: int = 3) -> float:
    """Seconds the log's matrix products take run alone (see the module docs): the calls
    of each distinct product run back to back, ``repeat`` times after a warm-up; the
    fastest round counts."""
    counts = Counter(p for p in log.calls if p.kind != "attention")
    total = 0.0
    with torch.inference_mode():
        for p, n in counts.items():
            a, b, offs = _operands(p)

            def run(p=p, a=a, b=b, offs=offs, n=n):
                for _ in range(n):
                    _run(p, a, b, offs)
            total += _fastest_round(run, p.device, repeat)
    return total


def replay_in_order_seconds(log: ProductLog, repeat: int = 3) -> float:
    """Seconds the log's matrix products take run alone in the recorded order, each with
    the model's own weight where the call had one (activations: random, one tensor per
    distinct product): unlike :func:`replay_seconds`, weights leave the caches between
    uses as they do in the engine. The fastest of ``repeat`` rounds (after a warm-up)."""
    operands: dict = {}
    seq = []
    for p, w in zip(log.calls, log.weights):
        if p.kind == "attention":
            continue
        if p not in operands:
            operands[p] = _operands(p)
        a, b, offs = operands[p]
        seq.append((p, a, b if w is None else w, offs))
    if not seq:
        return 0.0

    def run():
        for p, a, b, offs in seq:
            _run(p, a, b, offs)
    with torch.inference_mode():
        return _fastest_round(run, seq[0][0].device, repeat)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


#: Operators that only describe or re-view a tensor (no data written).
VIEW_OPS = ("view", "_unsafe_view", "expand", "slice", "select", "unsqueeze", "squeeze",
            "t", "transpose", "permute", "as_strided", "alias", "detach", "reshape",
            "unbind", "split", "chunk", "narrow", "_reshape_alias")


class OperatorCount(TorchDispatchMode):
    """Counts the ATen operator calls run inside ``with OperatorCount() as c:``: ``c.calls``
    in all and ``c.views`` of them that only re-view a tensor (see :data:`VIEW_OPS`)."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.views = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        if func.overloadpacket.__name__ in VIEW_OPS:
            self.views += 1
        return func(*args, **(kwargs or {}))

