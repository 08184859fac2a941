"""CLI subcommands ``rosais``, ``fsour`` and ``replay``."""

from __future__ import annotations

import sys

from explorer.cli.options import (
    Command,
    UsageError,
    add_model_args,
    add_param_options,
    add_system_args,
    check_out_path,
    check_route,
    emit,
    load_from_args,
    params_from_args,
    positive_int,
    require_prompt,
    seed_int,
    system_from_args,
)
from explorer.core.defaults import DEFAULT_TARGET, MAX_NEW_TOKENS
from explorer.viz.text import BY_ROSAIS, layer_list


def _configure_rosais(p):
    from explorer.attacks.rosais import RosaisParams
    p.add_argument("--prompt", required=True)
    add_param_options(p, {"rosais": RosaisParams})
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--max-new-tokens", type=positive_int, default=MAX_NEW_TOKENS)
    p.add_argument("--curve", action="store_true", help="also generate for L = 1..top")
    add_system_args(p)
    add_model_args(p)


def _run_rosais(args):
    from explorer.attacks.rosais import RosaisParams
    from explorer.methods.rosais import rosais
    require_prompt(args.prompt)
    params = RosaisParams.parse(params_from_args(args, RosaisParams))
    system = system_from_args(args)
    moe = load_from_args(args)
    res = rosais(moe, args.prompt, samples=params.samples, seed=args.seed, top=params.top,
                 mask_ratio=params.mask_ratio, max_new_tokens=args.max_new_tokens,
                 curve=args.curve, system=system,
                 on_progress=None if args.json else
                 lambda d, n: print(f"\rscoring routers {d}/{n}", end="", file=sys.stderr))
    if not args.json:
        print(file=sys.stderr)
    words = ", ".join(f"{w['word']} -> {w['token']!r} {w['logprob']:.2f}"
                      for w in res.affirmative_words) or ", ".join(res.affirmative_tokens)
    rows = [(f"baseline p = {res.baseline_logprob:.3f}: the largest log P(first answer "
             f"token) over the affirmative words' first tokens ({words})")]
    best = max(res.scores) if res.scores else 1.0
    for lay, s in zip(res.moe_layers, res.scores):
        bar = "#" * int(30 * max(s, 0) / best) if best > 0 else ""
        mark = " *" if lay in res.top_layers else ""
        rows.append(f"layer {lay:>3}  RoSais {s:+8.3f}  {bar}{mark}")
    rows.append(f"baseline answer: {res.baseline_completion}")
    rows.append(f"masked top-{len(res.top_layers)} routers, "
                f"{layer_list(res.top_layers, BY_ROSAIS)}: {res.completion}")
    emit(args, res.to_dict(), "\n".join(rows))


def _configure_fsour(p):
    from explorer.attacks.fsour import FsourParams
    from explorer.cli.commands.evaluate import add_judge_options
    from explorer.judges import judge_help
    p.add_argument("--prompt", required=True)
    add_param_options(p, {"fsour": FsourParams})
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--judge", default="keyword", help=judge_help() + " (default keyword)")
    add_judge_options(p)
    p.add_argument("--max-new-tokens", type=positive_int, default=MAX_NEW_TOKENS)
    p.add_argument("--out", default=None, help="write the route JSON here")
    add_system_args(p)
    add_model_args(p)


def _run_fsour(args):
    from explorer.attacks.fsour import FsourParams
    from explorer.cli.commands.evaluate import make_judge
    from explorer.methods.fsour import fsour
    require_prompt(args.prompt)
    params = FsourParams.parse(params_from_args(args, FsourParams))
    check_out_path(args.out)
    system = system_from_args(args)
    judge = make_judge(args.judge, args.judge_url, args.judge_model, device=args.device,
                       settings=args.settings)
    moe = load_from_args(args)

    def progress(ev):
        if ev.kind in ("step", "improved") and not args.json:
            print(f"\rrestart {ev.iteration + 1} token {ev.position + 1}/{ev.num_positions} "
                  f"layer {ev.layer}  best log P = {ev.best_logprob:.3f}  "
                  f"passes {ev.forward_passes}", end="", file=sys.stderr)
    res = fsour(moe, args.prompt, target=params.target or DEFAULT_TARGET, seed=args.seed,
                judge=judge, max_new_tokens=args.max_new_tokens, on_event=progress,
                system=system, **params.search_kwargs())
    if not args.json:
        print(file=sys.stderr)
    if args.out:
        res.route.save(args.out)
    lp = "n/a" if res.logprob is None else f"{res.logprob:.3f}"
    text = (f"{'SUCCESS' if res.success else 'no success'}: log P(target) = {lp}, "
            f"{len(res.route)} forced cells, {res.forward_passes} forward passes, "
            f"{res.seconds:.1f} s\nanswer: {res.completion}")
    emit(args, res.to_dict(), text)


def _configure_replay(p):
    p.add_argument("--route", required=True, help="route JSON file")
    p.add_argument("--prompt", default=None, help="prompt (default: the route's own)")
    p.add_argument("--max-new-tokens", type=positive_int, default=MAX_NEW_TOKENS)
    add_system_args(p, default="the route's own")
    add_model_args(p)


def _run_replay(args):
    from explorer.core.route import Route
    from explorer.core.trace import trace, trace_json
    route = Route.load(args.route)
    prompt = args.prompt if args.prompt is not None else route.info.get("prompt")
    if prompt is None:
        raise UsageError("the route has no prompt in its info: pass --prompt")
    require_prompt(prompt)
    given = args.system is not None or args.system_file is not None
    system = system_from_args(args) if given else route.system
    moe = load_from_args(args)
    check_route(moe, route, prompt, system)
    tr = trace(moe, prompt, max_new_tokens=args.max_new_tokens, route=route,
               record_logits=False, system=system)
    emit(args, trace_json(moe, tr), f"answer with route: {tr.completion}")


#: This group's commands (joined in :data:`explorer.cli.main.COMMANDS`).
COMMANDS = {
    "rosais": Command(_configure_rosais, _run_rosais,
            "router safety importance scores and top-L masking"),
    "fsour": Command(_configure_fsour, _run_fsour,
            "search an unsafe route with F-SOUR"),
    "replay": Command(_configure_replay, _run_replay,
            "replay a saved route on its prompt or another"),
}
