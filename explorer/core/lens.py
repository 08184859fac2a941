"""Why an answer flips: the next-token distribution at answer positions and the logit lens.

:func:`next_tokens` reads, for a prompt and its (baseline or re-routed) answer, the model's
top-k next-token probabilities at the first answer positions: the distribution each answer
token was picked from, teacher-forced on the answer itself with the route active (the same
logits greedy generation saw, since the model is causal). :func:`logit_lens` reads the
residual stream after every decoder layer at one position and sends it through the model's
final norm and LM head: which token each layer would predict. Both return dataclasses with
``to_json`` / ``from_json`` and an ``info`` provenance dict.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from explorer.core.errors import InputError
from explorer.core.forward import as_ids
from explorer.core.layers import decoder_layers
from explorer.core.route import Route

if TYPE_CHECKING:
    from explorer.core.model import MoEModel

#: How many tokens a lens or next-token table lists per row, by default.
TOP_K = 5


@dataclass
class TopTokens:
    """The ``k`` most probable tokens of one distribution: their ids, strings and
    probabilities (descending)."""

    ids: list[int]
    tokens: list[str]
    probs: list[float]

    @property
    def mass(self) -> float:
        """The probability the listed tokens hold together (at most 1)."""
        return float(sum(self.probs))


@dataclass
class NextTokens:
    """Top-k next-token probabilities at the first answer positions of one answer.

    ``positions[j]`` is the absolute position (templated prompt, then answer) whose
    logits predict answer token ``j``; ``chosen[j]`` that answer token (None past the
    answer's end) and ``chosen_probs[j]`` its probability; ``top[j]`` the top-k there.
    """

    positions: list[int]
    chosen: list[str | None]
    chosen_probs: list[float | None]
    top: list[TopTokens]
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """This result as JSON text (round-trips through :meth:`from_json`)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> NextTokens:
        d = json.loads(text)
        d["top"] = [TopTokens(**t) for t in d["top"]]
        return cls(**d)


@dataclass
class LogitLens:
    """The logit lens at one ``position``: for each decoder layer (``layers``, absolute
    indices), the residual stream after it through the final norm and LM head,
    summarised as its top-k tokens (``top[i]`` for ``layers[i]``). The last layer's is
    the model's own next-token distribution."""

    position: int
    token: str
    layers: list[int]
    top: list[TopTokens]
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """This result as JSON text (round-trips through :meth:`from_json`)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LogitLens:
        d = json.loads(text)
        d["top"] = [TopTokens(**t) for t in d["top"]]
        return cls(**d)


def final_norm(model: torch.nn.Module) -> torch.nn.Module:
    """The norm a causal LM applies after its last decoder layer (``model.model.norm`` and
    kin); identity where it has none."""
    base = getattr(model, "model", None) or getattr(model, "transformer", None) or model
    for name in ("norm", "final_layernorm", "ln_f", "final_norm"):
        mod = getattr(base, name, None)
        if isinstance(mod, torch.nn.Module):
            return mod
    return torch.nn.Identity()


def _top(moe: MoEModel, logits: torch.Tensor, k: int) -> TopTokens:
    probs = torch.softmax(logits.float(), dim=-1)
    p, i = probs.topk(min(k, probs.shape[-1]))
    ids = [int(x) for x in i.tolist()]
    return TopTokens(ids, moe.token_strings(ids), [float(x) for x in p.tolist()])


@contextlib.contextmanager
def layer_outputs(moe: MoEModel, position: int) -> Iterator[dict[int, torch.Tensor]]:
    """While open, every decoder layer's output (the residual stream after it) at
    ``position`` of batch row 0 is copied into the yielded dict, keyed by absolute layer
    index. The hooks exist only inside this context manager."""
    got: dict[int, torch.Tensor] = {}
    handles = []

    def keep(index: int):
        def hook(_module, _args, out):
            h = out[0] if isinstance(out, (tuple, list)) else out
            got[index] = h[0, position].detach().clone()
        return hook

    try:
        for i, layer in enumerate(decoder_layers(moe.model)):
            handles.append(layer.register_forward_hook(keep(i)))
        yield got
    finally:
        for h in handles:
            h.remove()


def _ids_of(ids: Sequence[int]) -> list[int]:
    ids = [int(x) for x in ids]
    if not ids:
        raise InputError("there are no tokens to read")
    return ids


def next_tokens(moe: MoEModel, ids: Sequence[int], prompt_tokens: int,
                route: Route | None = None, count: int = 4, k: int = TOP_K) -> NextTokens:
    """Top-``k`` next-token probabilities at the first ``count`` answer positions of
    ``ids`` (a templated prompt of ``prompt_tokens`` tokens followed by its answer, e.g. a
    trace's ``token_ids``) with ``route`` active: position ``prompt_tokens - 1 + j``
    predicts answer token ``j``. One forward pass."""
    ids = _ids_of(ids)
    if not 0 < prompt_tokens <= len(ids):
        raise InputError(f"prompt_tokens must be in 1..{len(ids)}, got {prompt_tokens}")
    positions = list(range(prompt_tokens - 1,
                           min(len(ids), prompt_tokens - 1 + max(1, int(count)))))
    with moe.lock, torch.inference_mode(), moe.control(route):
        logits = moe.model(input_ids=as_ids(moe, ids[:positions[-1] + 1]),
                           use_cache=False).logits[0]
    chosen, chosen_p, top = [], [], []
    for p in positions:
        probs = torch.softmax(logits[p].float(), dim=-1)
        top.append(_top(moe, logits[p], k))
        nxt = ids[p + 1] if p + 1 < len(ids) else None
        chosen.append(None if nxt is None else moe.token_strings([nxt])[0])
        chosen_p.append(None if nxt is None else float(probs[nxt]))
    info = {"model": getattr(moe, "name", None), "k": k, "prompt_tokens": prompt_tokens,
            "route_edits": len(route.edits) if route is not None else 0}
    return NextTokens(positions, chosen, chosen_p, top, info)


def logit_lens(moe: MoEModel, ids: Sequence[int], position: int,
               route: Route | None = None, k: int = TOP_K) -> LogitLens:
    """The logit lens (see :class:`LogitLens`) of ``ids`` at ``position`` (negative:
    from the end) with ``route`` active. One forward pass up to ``position``."""
    ids = _ids_of(ids)
    if position < 0:
        position += len(ids)
    if not 0 <= position < len(ids):
        raise InputError(f"position {position} is out of range (0..{len(ids) - 1})")
    norm, head = final_norm(moe.model), moe.model.get_output_embeddings()
    with moe.lock, torch.inference_mode(), moe.control(route), \
            layer_outputs(moe, position) as got:
        moe.model(input_ids=as_ids(moe, ids[:position + 1]), use_cache=False)
        layers = sorted(got)
        top = [_top(moe, head(norm(got[i].unsqueeze(0)))[0], k) for i in layers]
    info = {"model": getattr(moe, "name", None), "k": k,
            "route_edits": len(route.edits) if route is not None else 0}
    return LogitLens(position, moe.token_strings([ids[position]])[0], layers, top, info)
