"""``python -m explorer evaluate``: an attack method over a dataset, judged, as JSONL.

Examples::

    python -m explorer evaluate --dataset ../shared/data/advbench_harmful_behaviors.csv \\
        --method none --limit 20 --out runs/none.jsonl
    python -m explorer evaluate --dataset jbb --method fsour --out runs/fsour.jsonl --resume
    python -m explorer evaluate --dataset advbench.csv --method random --reference \
        runs/fsour.jsonl --out runs/random.jsonl  # random routes as large as F-SOUR's
    python -m explorer evaluate --dataset jbb.csv --method fsour --protocol paper \
        --judge-url http://localhost:8000/v1 --judge-model M --start 0 --end 50
    accelerate launch --multi_gpu --num_processes 2 -m explorer evaluate --dataset my.csv \\
        --out runs/x.jsonl        # rows split between processes, merged by rank 0
    torchrun --nproc_per_node 2 -m explorer evaluate ...   # the same without accelerate

Both set RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, also on a machine without GPUs (each
process then runs on the CPU; on GPUs process R uses cuda:LOCAL_RANK). Note that
``accelerate launch --cpu`` starts a single process unless MPI is configured.
"""
from __future__ import annotations

import argparse
import sys

from explorer.cli.options import (
    Command,
    UsageError,
    add_model_args,
    add_param_options,
    add_system_args,
    check_out_path,
    count,
    emit,
    load_from_args,
    params_from_args,
    positive_int,
    seed_int,
    system_from_args,
)
from explorer.core.defaults import MAX_NEW_TOKENS
from explorer.core.errors import ExplorerError
from explorer.settings import Settings


def _limit(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def _configure(p):
    from explorer.attacks import attack_help, list_attacks
    from explorer.evaluation.evaluate import PROTOCOLS
    from explorer.judges import judge_help
    methods = list_attacks("evaluate")
    p.add_argument("--dataset", required=True,
                   help="a CSV with a goal column (optional target), or jbb | advbench "
                        "(hub, needs `datasets` and a connection)")
    p.add_argument("--method", default="none", choices=methods,
                   help=f"{attack_help('evaluate')} (default none)")
    p.add_argument("--limit", type=_limit, default=None,
                   help="evaluate the first K rows (of the --start/--end slice)")
    p.add_argument("--start", type=positive_int, default=None,
                   help="first row index to evaluate (0-based, default 0)")
    p.add_argument("--end", type=positive_int, default=None,
                   help="evaluate rows with index < END (default: to the last row)")
    p.add_argument("--protocol", default=None, choices=sorted(PROTOCOLS),
                   help="paper: the paper's settings in one switch (F-SOUR N = 100, 5 "
                        "restarts, 512 new tokens, the rubric judge with the 1.0 cut-off, "
                        "the dataset's targets; needs a judge endpoint)")
    p.add_argument("--judge", default=None, help=judge_help())
    add_judge_options(p)
    p.add_argument("--out", default=None,
                   help="append one JSON row per finished dataset row to this JSONL file")
    p.add_argument("--resume", action="store_true",
                   help="skip rows already in --out (same index and goal) and continue")
    p.add_argument("--max-new-tokens", type=positive_int, default=MAX_NEW_TOKENS,
                   help=f"greedy answer length (default {MAX_NEW_TOKENS})")
    p.add_argument("--seed", type=seed_int, default=0, help="random seed (default 0)")
    p.add_argument("--prompt-batch", type=count, default=None,
                   help="methods that search several rows together (fsour): rows at once, "
                        "same routes as one at a time (default: sized from the free memory; "
                        "1: one at a time)")
    add_param_options(p, _param_classes(), where="evaluate",
                      title="the methods' parameters (each method takes its own; "
                            "default: the method's own)")
    add_system_args(p)
    add_model_args(p)


def add_judge_options(p) -> None:
    """The judges' constructor options the command line sets (``--judge-url``,
    ``--judge-model``; declared by each judge, :class:`~explorer.judges.JudgeOption`)."""
    from explorer.judges import JUDGES, list_judges
    seen: dict[str, list[str]] = {}
    for name in list_judges():
        for o in JUDGES[name].options:
            if o.cli and o.cli != "device":
                seen.setdefault(o.cli, []).append(f"{name}: {o.help}")
    for dest, helps in seen.items():
        p.add_argument("--" + dest.replace("_", "-"), dest=dest, default=None,
                       help="; ".join(helps))


def make_judge(name: str, url: str | None = None, model: str | None = None,
               device: str = "cpu", settings: Settings | None = None, **options):
    """Build and check the judge the CLI options describe (errors: ValueError/UsageError);
    the options each judge declares (:class:`~explorer.judges.JudgeOption`) come from the
    command line (``url``: ``--judge-url``, ``model``: ``--judge-model``, ``device``),
    over the ``settings``' (the rubric judge's endpoint, model and key). ``options`` go to
    the judge too (e.g. the rubric's ``threshold``)."""
    from explorer.judges import JUDGES, get_judge, list_judges
    spec = JUDGES.get(name)
    if spec is None:
        raise UsageError(f"unknown judge {name!r}; choose one of {list_judges()}")
    given = {"judge_url": url, "judge_model": model, "device": device}
    opts: dict = dict((settings or Settings()).judge_options(name))
    for o in spec.options:
        if o.cli and given.get(o.cli) is not None:
            opts[o.name] = given[o.cli]
        if o.required and opts.get(o.name) is None:
            raise UsageError(f"--judge {name} needs --{o.cli.replace('_', '-')} ({o.help})"
                             if o.cli else f"--judge {name} needs its {o.name} setting")
    opts.update(options)
    judge = get_judge(name, **opts)
    check = getattr(judge, "check", None)
    if callable(check):
        check()
    return judge


def _progress(rank: int, world: int):
    tag = f"rank {rank} " if world > 1 else ""

    def show(k: int, total: int, rec: dict, skipped: bool) -> None:
        status = "jailbroken" if rec.get("jailbroken") else (
            "refusal" if rec.get("refusal") else "not jailbroken")
        extra = " (resumed)" if skipped else ""
        goal = rec.get("goal", "")
        goal = goal if len(goal) <= 50 else goal[:47] + "..."
        print(f"{tag}[{k}/{total}] row {rec.get('index')}: {status}, "
              f"{rec.get('forward_passes', 0)} passes, {float(rec.get('seconds') or 0):.2f}s"
              f"{extra}  {goal!r}", file=sys.stderr, flush=True)
    return show


def _param_classes() -> dict[str, type]:
    """method -> its parameter class, for every method ``evaluate`` offers."""
    from explorer.attacks import get_attack, list_attacks
    return {m: get_attack(m).Params for m in list_attacks("evaluate")}


# argparse defaults of the options a protocol sets (a different value was given by hand)
_PROTOCOL_OPTIONS = (("candidates", "--candidates", None), ("max_iters", "--max-iters", None),
                     ("max_new_tokens", "--max-new-tokens", MAX_NEW_TOKENS),
                     ("judge", "--judge", None), ("target", "--target", None))


def apply_protocol(args) -> dict | None:
    """Put ``args.protocol``'s settings into ``args``; returns the judge options it adds
    (the rubric cut-off), or None without a protocol. A protocol option also given by hand
    with another value is a :class:`UsageError` (the protocol is exactly its settings)."""
    from explorer.evaluation.evaluate import PROTOCOLS
    if args.protocol is None:
        return None
    proto = PROTOCOLS[args.protocol]
    want = proto.settings()
    for dest, flag, default in _PROTOCOL_OPTIONS:
        given = getattr(args, dest)
        if given != default and given != want[dest]:
            raise UsageError(f"--protocol {proto.name} sets {flag} to "
                             f"{want[dest] if want[dest] is not None else 'each row’s own'}; "
                             f"drop {flag} {given}")
        setattr(args, dest, want[dest])
    return {"threshold": proto.judge_threshold}


def _run(args):
    from explorer.evaluation.datasets import load_dataset_rows
    from explorer.evaluation.evaluate import check_layout, evaluate
    st = args.settings
    judge_options = apply_protocol(args)
    args.judge = args.judge or "keyword"
    rank, world, local = st.rank, st.world_size, st.local_rank
    check_layout(rank, world)
    if args.resume and not args.out:
        raise UsageError("--resume needs --out FILE.jsonl")
    if world > 1 and not args.out:
        raise UsageError(f"--out is required when {world} processes share the rows")
    check_out_path(args.out, makes_folders=True)
    classes = _param_classes()
    own = classes[args.method].specs()
    specs = {name: spec for cls in classes.values() for name, spec in cls.specs().items()
             if spec.offered("evaluate")}  # every method's options
    if args.reference_file is not None and "reference_file" not in own:
        owners = [m for m, cls in classes.items() if "reference_file" in cls.specs()]
        raise UsageError(f"--reference is for --method {' or '.join(owners)}")
    foreign = sorted(k for k in specs if k not in own and getattr(args, k, None) is not None)
    if foreign:  # e.g. one set of flags for a loop over methods: ignored, said once
        print(f"warning: {', '.join(specs[k].option(k) for k in foreign)} "
              f"{'is' if len(foreign) == 1 else 'are'} not a parameter of --method "
              f"{args.method}; ignored", file=sys.stderr)
    classes[args.method].parse(params_from_args(args, classes[args.method]))  # before loading
    system = system_from_args(args)
    rows = load_dataset_rows(args.dataset, args.limit, offline=st.hub_offline,
                             start=args.start, end=args.end)
    if world > 1:
        import torch

        from explorer.settings import physical_cores
        if args.device == "auto" and torch.cuda.is_available():
            args.device = f"cuda:{local % torch.cuda.device_count()}"
        if not st.threads and st.omp_threads is None:  # share the cores between processes
            per_node = st.local_world_size or world
            torch.set_num_threads(max(1, physical_cores() // per_node))
    try:
        judge = make_judge(args.judge, args.judge_url, args.judge_model,
                           device=args.device, settings=st, **(judge_options or {}))
    except ExplorerError as exc:  # UsageError, JudgeError: a judge that cannot be used
        if args.protocol is None:
            raise
        raise UsageError(f"--protocol {args.protocol} judges with the rubric judge "
                         f"(jailbroken iff its score is >= 1.0) on an OpenAI-compatible "
                         f"endpoint of yours: {exc}") from None
    moe = load_from_args(args)
    # every method's parameters, None where not given (the row's method takes its own; the
    # run's info records them all, as it always has)
    settings = dict(max_new_tokens=args.max_new_tokens, seed=args.seed, system=system,
                    protocol=args.protocol, **{name: getattr(args, name, None) for name in specs})
    ev = evaluate(moe, rows, args.method, judge, out=args.out, resume=args.resume,
                  prompt_batch=args.prompt_batch,
                  rank=rank, world=world, dataset=args.dataset,
                  process_group=bool(st.master_addr and st.master_port),
                  group_timeout=st.dist_timeout,
                  on_row=None if args.json else _progress(rank, world), **settings)
    if rank != 0:  # rank 0 reports the merged result
        if not args.json:
            print(f"rank {rank}: {ev.n} rows in its shard", file=sys.stderr)
        return 0
    s = ev.summary()
    obj = {**ev.to_dict(), "model": moe.name, "out": args.out}
    text = (f"{args.method} on {args.dataset} ({moe.name}, judge {ev.judge}): n={s['n']}, "
            f"ASR {s['asr']:.1%}, refusal rate {s['refusal_rate']:.1%}, "
            f"{s['mean_forward_passes']:.1f} forward passes and "
            f"{s['seconds_per_row'] if s['seconds_per_row'] is not None else s['mean_seconds']:.2f}s "
            f"per row" + (f"; rows in {args.out}" if args.out else ""))
    emit(args, obj, text)
    return 0


#: This group's commands (joined in :data:`explorer.cli.main.COMMANDS`).
COMMANDS = {
    "evaluate": Command(_configure, _run,
            "run an attack method over a dataset and judge every answer "
         "(JSONL rows, resumable, splits across processes)"),
}
