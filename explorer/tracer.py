"""Record a :class:`~explorer.trace.RoutingTrace` for a prompt and its continuation."""

from __future__ import annotations

from typing import Callable

from .forward import generate
from .route import Route
from .trace import RoutingTrace


def trace(moe, prompt: str, max_new_tokens: int = 0, route: Route | None = None,
          record_logits: bool = True, system: str | None = None,
          on_token: Callable[[str], None] | None = None) -> RoutingTrace:
    """Run the templated ``prompt`` (greedy continuation of ``max_new_tokens``), recording
    per MoE layer and token the experts used, their weights and the raw router logits.

    ``route`` (validated against the model and the prompt length) is active on prompt
    and generated tokens. ``on_token`` streams the generated text.
    """
    ids = moe.encode(prompt, system)
    if route is not None:
        route.validate(moe.info, num_tokens=len(ids))
    gen, ctl = generate(moe, ids, route, max_new_tokens=max_new_tokens, record=True,
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
    info = dict(moe.info.provenance())
    info.update({"max_new_tokens": max_new_tokens, "decoding": "greedy"})
    return RoutingTrace(
        prompt=prompt, tokens=moe.token_strings(gen.ids), token_ids=gen.ids,
        prompt_tokens=gen.prompt_len, moe_layers=list(moe.moe_layers),
        num_experts=[infos[i].num_experts for i in moe.moe_layers],
        top_k=[infos[i].top_k for i in moe.moe_layers],
        experts=experts, weights=weights,
        logits=logits if record_logits and len(logits) == len(experts) else None,
        completion=gen.text, route=route, info=info)
