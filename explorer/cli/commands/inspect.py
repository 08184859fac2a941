"""CLI commands ``trace`` and ``info``: what the routers do, and what the model is."""

from __future__ import annotations

from explorer.cli.options import (
    Command,
    add_model_args,
    add_system_args,
    check_route,
    emit,
    load_from_args,
    positive_int,
    require_prompt,
    system_from_args,
)
from explorer.core.defaults import RESEARCH_MAX_NEW_TOKENS


def _configure_trace(p):
    p.add_argument("--prompt", required=True, help="the user message (chat template applied)")
    p.add_argument("--max-new-tokens", type=positive_int, default=RESEARCH_MAX_NEW_TOKENS,
                   help="greedy continuation length (default 32)")
    p.add_argument("--route", default=None, help="route JSON file to apply")
    add_system_args(p)
    add_model_args(p)


def _run_trace(args):
    from explorer.core.route import Route
    from explorer.core.trace import trace, trace_json
    require_prompt(args.prompt)
    system = system_from_args(args)
    route = Route.load(args.route) if args.route else None
    moe = load_from_args(args)
    if route is not None:
        check_route(moe, route, args.prompt, system)
    tr = trace(moe, args.prompt, max_new_tokens=args.max_new_tokens, route=route,
               record_logits=False, system=system)
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
            f"{info['device']} {info['dtype']}"
            + (f", quantized {info['quantization']}" if info["quantization"] else "")
            + (" (dequantized at load)" if info.get("dequantized") else "")
            + f", weights {info['weight_bytes'] / 2**20:.1f} MiB as stored")
    emit(args, info, "\n".join([head] + rows))


#: This group's commands (joined in :data:`explorer.cli.main.COMMANDS`).
COMMANDS = {
    "trace": Command(_configure_trace, _run_trace,
            "record which experts every token uses (optionally with a route)"),
    "info": Command(_configure_info, _run_info,
            "describe a model's layers, experts and routers"),
}
