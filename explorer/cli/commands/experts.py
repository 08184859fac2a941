"""CLI command ``experts``: expert pages (what an expert is chosen for, and how much it has
to do with safety; see :mod:`explorer.research.experts`).

Examples::

    python -m explorer experts                          # top 3 per MoE layer
    python -m explorer experts --layer 3                # layer 3's experts, ranked
    python -m explorer experts --layer 3 --expert 6     # one expert's page
    python -m explorer experts --harmful jbb --benign jbb-benign --limit 50 --csv e.csv

Statistics are computed once per model and prompt set and kept in
``<data dir>/experts/`` (``--no-cache``: computed afresh, nothing written). An expert's
page lists the route library's routes that force or mask it.
"""

from __future__ import annotations

from pathlib import Path

from explorer.cli.options import (
    Command,
    UsageError,
    add_model_args,
    add_system_args,
    check_out_path,
    count,
    emit,
    load_from_args,
    positive_int,
    seed_int,
    system_from_args,
)


def _configure(p):
    p.add_argument("--layer", type=positive_int, default=None,
                   help="an MoE layer (absolute decoder index): its experts ranked")
    p.add_argument("--expert", type=positive_int, default=None,
                   help="with --layer: that expert's page")
    p.add_argument("--top", type=count, default=3,
                   help="without --layer: the most safety-relevant experts per layer (3)")
    p.add_argument("--harmful", default=None,
                   help="harmful prompts: a file (one a line, or a CSV with a goal column), "
                        "a hub dataset (jbb, advbench) or 'harmful' (the built-in set, the "
                        "default with --benign)")
    p.add_argument("--benign", default=None,
                   help="benign prompts, as --harmful (jbb-benign; 'benign': the built-in set)")
    p.add_argument("--limit", type=count, default=None,
                   help="the first N prompts of each set")
    p.add_argument("--seed", type=seed_int, default=0, help="bootstrap seed (0)")
    p.add_argument("--bootstrap", type=count, default=None,
                   help="bootstrap resamples of the prompts (1000)")
    p.add_argument("--batch-size", type=count, default=None,
                   help="prompts per forward (default: sized to the free memory)")
    p.add_argument("--csv", default=None, help="write every layer's ranking as CSV here")
    p.add_argument("--out", default=None, help="write the full statistics as JSON here")
    p.add_argument("--no-cache", action="store_true",
                   help="compute afresh; do not read or write <data dir>/experts/")
    add_system_args(p)
    add_model_args(p)


def _fmt(x: dict) -> str:
    return (f"{x['rank']:>3}. expert {x['expert']:>3}  score {x['score']:+.3f} "
            f"[{x['low']:+.3f}, {x['high']:+.3f}]  per token: harmful "
            f"{x['harmful_token_freq']:.3f}, benign {x['benign_token_freq']:.3f}")


def _page_text(page: dict) -> str:
    lines = [(f"expert {page['expert']} at layer {page['layer']} ({page['model']}, "
              f"{page['prompt_set']}: {page['prompts']['harmful']} harmful, "
              f"{page['prompts']['benign']} benign prompts)"),
             (f"safety relevance {page['score']:+.4f}, 95% interval [{page['low']:+.4f}, "
              f"{page['high']:+.4f}], standard error {page['stderr']:.4f}; rank "
              f"{page['rank']} of {page['num_experts']}"),
             (f"chosen per token: harmful {page['harmful_token_freq']:.3f}, benign "
              f"{page['benign_token_freq']:.3f}; per prompt (at least once): harmful "
              f"{page['harmful_prompt_freq']:.3f}, benign {page['benign_prompt_freq']:.3f}"),
             "top tokens (harmful / benign selections):"]
    for t in page["top_tokens"]:
        ctx = "; ".join(f"{c['left']}[{c['token']}]{c['right']}" for c in t["contexts"])
        lines.append(f"  {t['token']!r:>16} {t['harmful']:>4} / {t['benign']:<4} {ctx!r}")
    ro = page["rosais"]
    if ro is not None:
        lines.append(f"layer RoSais {ro['score']:.3f} (rank {ro['rank']} of {ro['layers']})")
    if page["routes"]:
        lines.append("routes in the library that force or mask it:")
        lines += [f"  #{r['id']} {r['mode']:<5} {r['prompt'][:60]!r}" for r in page["routes"]]
    else:
        lines.append("no route in the library forces or masks it")
    return "\n".join(lines)


def _prompts(spec: str, which: str, limit: int | None, args) -> list[str]:
    """A prompt set: a hub dataset (:mod:`explorer.evaluation.datasets`), the built-in set
    named ``which`` (the project's own, exactly), or a file as the research commands read
    them."""
    from explorer.cli.commands.research import load_prompts
    from explorer.evaluation.datasets import HUB_DATASETS, load_dataset_rows
    from explorer.research.experts import builtin_sets
    if spec.strip().lower() in HUB_DATASETS and not Path(spec).exists():
        return [r["goal"] for r in load_dataset_rows(spec, limit,
                                                     offline=args.settings.hub_offline)]
    if spec == which:
        own = dict(zip(("harmful", "benign"), builtin_sets()))[which]
        return own[:limit] if limit else own
    return load_prompts(spec, which, limit, data_dir=args.settings.shared_data)


def _library_routes(args, model: str, layer: int, expert: int) -> list[dict]:
    """The library's routes that force or mask the expert (none when there is no
    library yet: a query does not create one)."""
    from explorer.research.experts import route_rows
    from explorer.storage.library import DB_NAME, RouteStore, default_data_dir
    path = default_data_dir(args.settings.data_dir) / DB_NAME
    if not path.is_file():
        return []
    with RouteStore(path) as store:
        return route_rows(store.routes_with_expert(layer, expert, model=model))


def _run(args):
    from explorer.research.experts import (
        BUILTIN_SET,
        EXPERT_BOOTSTRAP,
        cached_expert_stats,
        expert_stats,
    )
    from explorer.storage.library import default_data_dir
    if args.expert is not None and args.layer is None:
        raise UsageError("--expert needs --layer")
    if (args.harmful is None) != (args.benign is None):
        raise UsageError("name both --harmful and --benign (or neither: the built-in sets)")
    check_out_path(args.csv, "--csv")
    check_out_path(args.out)
    system = system_from_args(args)
    hs, bs = args.harmful or "harmful", args.benign or "benign"
    harmful = _prompts(hs, "harmful", args.limit, args)
    benign = _prompts(bs, "benign", args.limit, args)
    name = (BUILTIN_SET if (hs, bs) == ("harmful", "benign") else f"{hs}+{bs}") \
        + (f"[:{args.limit}]" if args.limit else "")
    moe = load_from_args(args)
    kw = {"prompt_set": name, "system": system, "seed": args.seed,
          "bootstrap": args.bootstrap or EXPERT_BOOTSTRAP, "batch_size": args.batch_size}
    if args.no_cache:
        stats = expert_stats(moe, harmful, benign, **kw)
    else:
        stats = cached_expert_stats(moe, default_data_dir(args.settings.data_dir) / "experts",
                                    harmful, benign, **kw)
    if args.csv:
        Path(args.csv).expanduser().write_text(stats.to_csv(), encoding="utf-8")
    if args.out:
        Path(args.out).expanduser().write_text(stats.to_json(), encoding="utf-8")
    if args.layer is not None and args.expert is not None:
        stats.check(args.layer, args.expert)
        page = stats.page(args.layer, args.expert,
                          routes=_library_routes(args, moe.name, args.layer, args.expert))
        emit(args, page, _page_text(page))
        return
    layers = [args.layer] if args.layer is not None else stats.moe_layers
    for lay in layers:
        stats.row(lay)
    top = None if args.layer is not None else args.top
    obj = {"model": stats.model, "prompt_set": stats.prompt_set,
           "prompts": {s: len(v) for s, v in stats.prompts.items()},
           "layers": {str(lay): stats.overview(lay)[:top] for lay in layers},
           "info": stats.info}
    lines = [(f"{stats.model}: experts by safety relevance (harmful minus benign selection "
              f"frequency; 95% bootstrap interval), {len(stats.prompts['harmful'])} harmful "
              f"and {len(stats.prompts['benign'])} benign prompts ({stats.prompt_set})")]
    for lay in layers:
        lines.append(f"layer {lay}:")
        lines += ["  " + _fmt(x) for x in obj["layers"][str(lay)]]
    emit(args, obj, "\n".join(lines))


#: This group's commands (joined in :data:`explorer.cli.main.COMMANDS`).
COMMANDS = {
    "experts": Command(_configure, _run,
                       "expert pages: how often each expert is chosen on harmful and benign "
                       "prompts, ranked by safety relevance"),
}
