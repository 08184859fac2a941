"""Built-in CLI subcommands (``trace``, ``info``); more live beside their modules."""

from __future__ import annotations

from .cli import (add_model_args, check_route, emit, load_from_args, positive_int, register,
                  require_prompt)


def _configure_trace(p):
    p.add_argument("--prompt", required=True, help="the user message (chat template applied)")
    p.add_argument("--max-new-tokens", type=positive_int, default=32,
                   help="greedy continuation length (default 32)")
    p.add_argument("--route", default=None, help="route JSON file to apply")
    add_model_args(p)


def trace_json(moe, tr) -> dict:
    """The public ``trace --json`` object (documented in the README)."""
    ne = tr.num_experts
    return {"model": moe.name, "tokens": tr.tokens, "token_ids": tr.token_ids,
            "prompt_tokens": tr.prompt_tokens, "moe_layers": tr.moe_layers,
            "num_experts": ne[0] if len(set(ne)) == 1 else ne,
            "top_k": tr.top_k[0] if len(set(tr.top_k)) == 1 else tr.top_k,
            "experts": tr.experts, "weights": tr.weights, "completion": tr.completion,
            "route": tr.route.to_dict() if tr.route is not None else None,
            "info": tr.info}


def _run_trace(args):
    from .route import Route
    from .tracer import trace
    require_prompt(args.prompt)
    route = Route.load(args.route) if args.route else None
    moe = load_from_args(args)
    if route is not None:
        check_route(moe, route, args.prompt)
    tr = trace(moe, args.prompt, max_new_tokens=args.max_new_tokens, route=route,
               record_logits=False)
    lines = [f"model {moe.name}: {len(tr.moe_layers)} MoE layers, "
             f"{tr.prompt_tokens} prompt tokens + {tr.num_tokens - tr.prompt_tokens} generated"]
    width = max(len(repr(t)) for t in tr.tokens)
    lines.append(" " * (width + 2) + "  ".join(f"L{l:<5}" for l in tr.moe_layers))
    for t, tok in enumerate(tr.tokens):
        mark = " " if t < tr.prompt_tokens else "+"
        cells = "  ".join(",".join(map(str, tr.experts[i][t])).ljust(6)
                          for i in range(len(tr.moe_layers)))
        lines.append(f"{mark}{repr(tok).ljust(width)} {cells}")
    lines.append(f"completion: {tr.completion}")
    emit(args, trace_json(moe, tr), "\n".join(lines))


def _configure_info(p):
    add_model_args(p)


def _run_info(args):
    moe = load_from_args(args)
    info = moe.info.to_dict()
    rows = [f"{lay.index:>3}  {'MoE' if lay.is_moe else 'dense':5}  "
            + (f"experts {lay.num_experts}, top-{lay.top_k}, shared {lay.shared_experts}, "
               f"{lay.router_kind} ({lay.router_class})"
               + (f", groups {lay.n_group} pick {lay.topk_group}" if lay.n_group else "")
               if lay.is_moe else "") for lay in moe.info.layers]
    head = (f"{moe.name} ({info['model_type']}), {info['parameters'] / 1e6:.1f}M parameters, "
            f"{info['device']} {info['dtype']}")
    emit(args, info, "\n".join([head] + rows))


register("trace", "record which experts every token uses (optionally with a route)",
         _configure_trace, _run_trace)
register("info", "describe a model's layers, experts and routers", _configure_info, _run_info)
from . import commands_eval  # noqa: E402,F401
from . import commands_search  # noqa: E402,F401
from . import bench  # noqa: E402,F401
from . import commands_research  # noqa: E402,F401
