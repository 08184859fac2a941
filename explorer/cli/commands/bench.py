"""``python -m explorer bench``: latency and search-engine figures on one model (the
computations live in :mod:`explorer.bench`)."""

from __future__ import annotations

from explorer.bench.prompts import BENCH_PROMPTS
from explorer.cli.options import (
    Command,
    UsageError,
    add_model_args,
    count,
    emit,
    load_from_args,
    positive_int,
)


def bench_text(b: dict) -> str:
    """The text report of a :func:`~explorer.bench.runner.run_bench` result."""
    from explorer.bench.dataset import weights_text
    rec = b["recording"]
    lines = [f"model {b['model']} on {b['device']} ({b['device_name']}, {b['dtype']}, "
             f"{b['threads']} threads)",
             weights_text(b),
             f"trace, prompt only:        {1000 * b['trace_prompt_s']:8.1f} ms",
             f"trace, +16 new tokens:     {1000 * b['trace_generate16_s']:8.1f} ms",
             f"forward {rec['tokens']} tokens:         {1000 * rec['forward_s']:8.2f} ms; "
             f"recorded {1000 * rec['recorded_forward_s']:.2f} ms (x{rec['ratio']:.2f})"]
    for lat in b["latency"]:
        if "skipped" in lat:
            lines.append(f"latency @ {lat['tokens']} tokens: skipped ({lat['skipped']})")
        else:
            lines.append(f"latency @ {lat['tokens']} tokens: trace {1000 * lat['trace_s']:.1f} ms, "
                         f"re-route +{lat['new_tokens']} tokens {1000 * lat['reroute_s']:.1f} ms")
    if "rosais" not in b:
        return "\n".join(lines)
    ro = b["rosais"]
    line = (f"RoSais ({ro['samples']} masks/router): fast {ro['fast']['seconds']:.2f} s, "
            f"{ro['fast']['forward_passes']} passes")
    if "reference" in ro:
        line += (f" | reference {ro['reference']['seconds']:.2f} s "
                 f"(x{ro['reference']['seconds'] / max(ro['fast']['seconds'], 1e-9):.1f})")
    lines.append(line)
    for r in b["fsour"]:
        f = r["fast"]
        line = (f"F-SOUR fast {f['seconds']:.2f} s, {f['forward_passes']} passes "
                f"({f['candidates_per_s']:.0f} candidates/s), success {f['success']}, "
                f"peak {f['peak_memory_mb']:.0f} MB, memory allows {f.get('batch_rows', '?')} rows per batch")
        if "reference" in r:
            g = r["reference"]
            line += (f" | reference {g['seconds']:.2f} s ({g['candidates_per_s']:.0f}/s) | "
                     f"x{r['speedup']:.1f}, identical route: {r['identical_route']}")
        lines.append(line)
    if "fsour_speedup" in b:
        lines.append(f"F-SOUR fast vs reference: x{b['fsour_speedup']:.1f} wall-clock, "
                     f"x{b['fsour_cpu_speedup']:.1f} CPU time, identical routes: "
                     f"{b['fsour_identical_routes']}")
    c = b["cone"]
    lines.append(f"cone: {c['cone_gflop']:.1f} GFLOP needed vs {c['full_gflop']:.1f} for full "
                 f"forwards (x{c['flop_ratio_full_to_cone']:.1f}); at {c['matmul_gflop_s']:.1f} "
                 f"GFLOP/s (dense matmul here) the ideal is {c['ideal_seconds']:.2f} s; fast took "
                 f"{c['fast_seconds']:.2f} s = {100 * c['fraction_of_ideal']:.0f}% of ideal speed")
    if "work_ratio" in c:
        lines.append(f"fast engine's products: {c['counted_gflop']:.1f} GFLOP counted = "
                     f"x{c['work_ratio']:.2f} the cone; run alone they take "
                     f"{c['products_seconds']:.2f} s hot, {c['products_in_order_seconds']:.2f} s "
                     f"in its order with its weights = {100 * c['products_in_order_share']:.0f}% "
                     f"of its {c['fast_seconds']:.2f} s (the rest: work around the products)")
    if "orders" in b:
        for k, v in b["orders"]["summary"].items():
            mp = v["mean_passes_to_success"]
            lines.append(f"order {k}: ASR {v['asr']:.2f} over {b['orders']['n']} prompts, "
                         f"mean passes to success {mp if mp is None else round(mp)}, "
                         f"mean {v['mean_seconds']:.1f} s")
    return "\n".join(lines)


def _configure(p):
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--candidates", type=positive_int, default=10)
    p.add_argument("--samples", type=positive_int, default=32)
    p.add_argument("--no-reference", action="store_true", help="skip the slow reference engine")
    p.add_argument("--latency-only", action="store_true",
                   help="only trace and re-route latencies (no RoSais or F-SOUR)")
    p.add_argument("--sizes", default="64,512,2048",
                   help="prompt sizes (tokens) for latency figures; '' to skip")
    p.add_argument("--prompts", type=positive_int, default=len(BENCH_PROMPTS),
                   help=f"how many of the {len(BENCH_PROMPTS)} bench prompts F-SOUR runs on")
    p.add_argument("--repeat", type=positive_int, default=1,
                   help="run each RoSais and F-SOUR search this many times (engines taking "
                        "turns) and report median seconds")
    p.add_argument("--orders", type=positive_int, default=0,
                   help="also compare F-SOUR layer orders (paper vs RoSais) on this many "
                        "of the project's harmful prompts")
    p.add_argument("--full-budget", action="store_true",
                   help="never judge an answer jailbroken, so F-SOUR walks its whole grid "
                        "(on by default with --synthetic: random weights say anything)")
    p.add_argument("--synthetic", default=None, choices=SYNTHETIC_NAMES,
                   help="benchmark a random-weight model of a real family instead "
                        "(e.g. olmoe-wide: 16 layers, 64 experts, hidden 1024)")
    g = p.add_argument_group("dataset mode (--dataset): one-at-a-time vs multi-prompt F-SOUR")
    g.add_argument("--dataset", default=None,
                   help="a CSV with a goal column: search its rows one at a time and all "
                        "together, and compare (only this runs)")
    g.add_argument("--limit", type=count, default=48,
                   help="rows to search (default 48; refused rows only unless --all-rows)")
    g.add_argument("--all-rows", action="store_true",
                   help="take the first rows as they are (default: the first rows whose "
                        "unattacked answer is a refusal)")
    g.add_argument("--target", default=None,
                   help="one target for every row (default: each row's own)")
    g.add_argument("--prompt-batch", type=count, default=None,
                   help="prompts searched together (default: sized from the free memory)")
    g.add_argument("--max-iters", type=count, default=1, help="F-SOUR restarts (default 1)")
    g.add_argument("--count-products", type=positive_int, default=4,
                   help="rows rerun under a product log for GEMM heights (default 4; 0 skips)")
    add_model_args(p)


#: ``--synthetic`` choices (:data:`explorer.bench.cost.SYNTHETIC`; listed here so that
#: ``--help`` needs no torch; a test keeps the two equal).
SYNTHETIC_NAMES = ("olmoe-real", "olmoe-small", "olmoe-wide")


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--sizes: expected comma-separated integers, got {text!r}") from None


def _run_dataset(args, moe):
    from explorer.bench.dataset import dataset_bench, dataset_bench_text, refused_rows
    from explorer.evaluation.datasets import load_dataset_rows
    from explorer.judges import get_judge
    if args.target is not None and not args.target.strip():
        raise UsageError("the target is empty")
    from explorer.judges import NeverJudge
    judge = get_judge("keyword")
    rows = load_dataset_rows(args.dataset, offline=args.settings.hub_offline)
    rows = rows[:args.limit] if args.all_rows else refused_rows(moe, rows, args.limit, judge)
    if not rows:
        raise UsageError(f"no rows of {args.dataset} to search")
    b = dataset_bench(moe, rows, target=args.target, candidates=max(1, args.candidates),
                      max_iters=args.max_iters, seed=args.seed, prompt_batch=args.prompt_batch,
                      judge=NeverJudge() if args.full_budget or args.synthetic else judge,
                      count_products=args.count_products)
    b["dataset"] = args.dataset
    emit(args, b, dataset_bench_text(b))


def _run(args):
    from explorer.bench.runner import run_bench
    sizes = _sizes(args.sizes)
    if args.synthetic:
        from explorer.bench.cost import synthetic_model
        moe = synthetic_model(args.synthetic, device=args.device, dtype=args.dtype,
                              quantize=args.quantize)
    else:
        moe = load_from_args(args)
    if args.dataset:
        return _run_dataset(args, moe)
    b = run_bench(moe, prompts=BENCH_PROMPTS[:max(1, args.prompts)], seed=args.seed,
                  candidates=max(1, args.candidates), samples=max(1, args.samples), reference=not args.no_reference,
                  sizes=sizes, orders=args.orders,
                  full_budget=args.full_budget or bool(args.synthetic),
                  repeat=max(1, args.repeat), search=not args.latency_only)
    emit(args, b, bench_text(b))


#: This group's commands (joined in :data:`explorer.cli.main.COMMANDS`).
COMMANDS = {
    "bench": Command(_configure, _run, "latency and F-SOUR engine benchmark"),
}
