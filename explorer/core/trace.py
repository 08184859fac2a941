"""Routing traces: :func:`trace` records what every router did for a prompt (and its greedy
continuation) into a :class:`RoutingTrace`."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from explorer.core.control import remember_valid
from explorer.core.errors import InputError
from explorer.core.forward import generate_recorded
from explorer.core.route import Route

if TYPE_CHECKING:
    from explorer.core.model import MoEModel
    from explorer.core.prompt import Prompt


@dataclass
class RoutingTrace:
    """Per MoE layer and per token: the k experts used, their gate weights, raw logits.

    Token axis: the templated prompt's tokens, then generated tokens.

    **Two ways to name a layer.** Every method that takes a ``layer`` argument
    (:meth:`experts_at`, :meth:`weights_at`, :meth:`logits_at`, :meth:`layer_row`) and
    the keys of :meth:`by_layer` use the *absolute decoder-layer index*, as routes do
    (:class:`~explorer.core.route.RouteEdit`'s ``layer``). The lists ``experts``,
    ``weights`` and ``logits`` (the fields, which are also the JSON keys) have instead
    one *row per MoE layer*, in order: row ``i`` is decoder layer ``moe_layers[i]``, and
    :meth:`layer_row` gives the row of a layer. The two agree only when every decoder
    layer is an MoE layer; prefer the accessors.

    ``experts[i][t]`` are the experts that MoE layer ``moe_layers[i]`` dispatched for
    token ``t``; ``weights[i][t]`` the effective gate weights the model used for them;
    ``logits[i][t]`` the router's raw logits over all experts (before any mask).
    ``num_experts[i]`` and ``top_k[i]`` are per row too; :meth:`entropy` and
    :meth:`changed_vs` return one row per MoE layer.
    """

    prompt: str
    tokens: list[str]
    token_ids: list[int]
    prompt_tokens: int
    moe_layers: list[int]
    num_experts: list[int]
    top_k: list[int]
    experts: list[list[list[int]]]
    weights: list[list[list[float]]]
    logits: list[list[list[float]]] | None = None
    completion: str = ""
    route: Route | None = None
    info: dict[str, Any] = field(default_factory=dict)
    system: str | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    def layer_row(self, layer: int) -> int:
        """Row index of absolute decoder layer ``layer`` in the per-MoE-layer lists
        (``experts``, ``weights``, ``logits``); KeyError when it is not an MoE layer of
        this trace. ``moe_layers[row]`` goes the other way."""
        try:
            return self.moe_layers.index(layer)
        except ValueError:
            raise KeyError(f"layer {layer} is not an MoE layer of this trace") from None

    def experts_at(self, layer: int, position: int) -> list[int]:
        """The k experts that absolute decoder layer ``layer`` dispatched for token
        ``position`` (prompt tokens first, then generated ones)."""
        return self.experts[self.layer_row(layer)][position]

    def weights_at(self, layer: int, position: int) -> list[float]:
        """The effective gate weights of :meth:`experts_at` ``(layer, position)``, in the
        same order (``layer``: the absolute decoder-layer index)."""
        return self.weights[self.layer_row(layer)][position]

    def logits_at(self, layer: int, position: int) -> list[float]:
        """The raw router logits over all experts (before any mask) at absolute decoder
        layer ``layer`` for token ``position``; InputError when the trace was recorded
        without logits."""
        if self.logits is None:
            raise InputError("this trace was recorded without router logits")
        return self.logits[self.layer_row(layer)][position]

    def by_layer(self, what: str = "experts") -> dict[int, list]:
        """``{absolute decoder layer: per-token list}`` of ``what``: ``"experts"`` (the
        default), ``"weights"`` or ``"logits"``; e.g. ``tr.by_layer()[layer][t]`` equals
        ``tr.experts_at(layer, t)``. InputError for another ``what``, or for logits when
        the trace was recorded without them."""
        if what not in ("experts", "weights", "logits"):
            raise InputError(f"by_layer gives experts, weights or logits, not {what!r}")
        rows = getattr(self, what)
        if rows is None:
            raise InputError("this trace was recorded without router logits")
        return dict(zip(self.moe_layers, rows))

    def entropy(self) -> list[list[float]]:
        """Router entropy (nats) per MoE layer and token, from the raw logits."""
        if self.logits is None:
            raise InputError("this trace was recorded without router logits")
        out = []
        for layer in self.logits:
            row = []
            for lg in layer:
                m = max(lg)
                ex = [math.exp(x - m) for x in lg]
                z = sum(ex)
                row.append(-sum((p / z) * math.log(p / z) for p in ex if p > 0))
            out.append(row)
        return out

    def changed_vs(self, other: "RoutingTrace") -> list[list[bool]]:
        """Per layer and token: does the expert set differ from ``other``'s?"""
        n = min(self.num_tokens, other.num_tokens)
        return [[set(a[t]) != set(b[t]) for t in range(n)]
                for a, b in zip(self.experts, other.experts)]

    # -- JSON -----------------------------------------------------------------------
    def to_dict(self, include_logits: bool = True) -> dict[str, Any]:
        return {
            "prompt": self.prompt, "tokens": self.tokens, "token_ids": self.token_ids,
            "prompt_tokens": self.prompt_tokens, "moe_layers": self.moe_layers,
            "num_experts": self.num_experts, "top_k": self.top_k,
            "experts": self.experts, "weights": self.weights,
            "logits": self.logits if include_logits else None,
            "completion": self.completion,
            "route": self.route.to_dict() if self.route is not None else None,
            "info": self.info, "system": self.system,
        }

    def to_json(self, include_logits: bool = True) -> str:
        return json.dumps(self.to_dict(include_logits))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RoutingTrace":
        d = dict(d)
        route = d.pop("route", None)
        return cls(route=Route.from_dict(route) if route is not None else None, **d)

    @classmethod
    def from_json(cls, text: str) -> "RoutingTrace":
        return cls.from_dict(json.loads(text))


def trace(moe: MoEModel, prompt: str | Prompt, max_new_tokens: int = 0,
          route: Route | None = None, record_logits: bool = True, system: str | None = None,
          on_token: Callable[[str], None] | None = None, *,
          thinking: bool | None = None, validate: bool = True) -> RoutingTrace:
    """Run the templated ``prompt`` (greedy continuation of ``max_new_tokens``), recording
    per MoE layer and token the experts used, their weights and the raw router logits.

    ``route`` (validated against the model and the prompt length) is active on prompt
    and generated tokens. ``system``: a system prompt, ``thinking``: the template's
    thinking mode (see :meth:`MoEModel.template`; both recorded in ``info``); ``prompt``
    may be a :class:`~explorer.core.prompt.Prompt` prepared with them. ``on_token`` streams
    the generated text. ``validate=False``: the caller has validated ``route`` against this
    prompt already (the app validates once per click).
    """
    p = moe.prepare(prompt, system, thinking=thinking)
    ids = list(p.ids)
    if route is not None and validate:
        route.validate(moe.info, num_tokens=len(ids))
        remember_valid(moe, route)  # the forwards below need not check it again
    gen, ctl = generate_recorded(moe, ids, route, max_new_tokens=max_new_tokens,
                                 on_token=on_token)
    experts, weights, logits = [], [], []
    n = len(gen.ids)
    for layer in moe.moe_layers:
        rec = ctl.collected(layer)
        experts.append(rec["experts"][0, :n].tolist())
        w = rec.get("weights")
        weights.append(w[0, :n].tolist() if w is not None else [[1.0] * len(x) for x in experts[-1]])
        if record_logits and "logits" in rec:
            logits.append(rec["logits"][0, :n].tolist())
    infos = {h.info.index: h.info for h in moe.handles}
    info = dict(p.info)
    info.update({"max_new_tokens": max_new_tokens, "decoding": "greedy"})
    return RoutingTrace(
        prompt=p.text, tokens=moe.token_strings(gen.ids), token_ids=gen.ids,
        prompt_tokens=gen.prompt_len, moe_layers=list(moe.moe_layers),
        num_experts=[infos[i].num_experts for i in moe.moe_layers],
        top_k=[infos[i].top_k for i in moe.moe_layers],
        experts=experts, weights=weights,
        logits=logits if record_logits and len(logits) == len(experts) else None,
        completion=gen.text, route=route, info=info, system=p.system)


def trace_json(moe: MoEModel, tr) -> dict:
    """The public ``trace --json`` object of ``tr`` on ``moe`` (documented in the README;
    the app's ``trace`` endpoint returns it too)."""
    ne = tr.num_experts
    return {"model": moe.name, "tokens": tr.tokens, "token_ids": tr.token_ids,
            "prompt_tokens": tr.prompt_tokens, "moe_layers": tr.moe_layers,
            "num_experts": ne[0] if len(set(ne)) == 1 else ne,
            "top_k": tr.top_k[0] if len(set(tr.top_k)) == 1 else tr.top_k,
            "experts": tr.experts, "weights": tr.weights, "completion": tr.completion,
            "route": tr.route.to_dict() if tr.route is not None else None,
            "info": tr.info}
