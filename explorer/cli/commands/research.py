"""CLI subcommands ``utility``, ``transfer``, ``minimize``, ``defend``, ``grid`` and
``rosais-curve``.

Prompts: ``--prompts FILE`` (one prompt per line, ``#`` comments; or a CSV with a
goal/Goal column), ``harmful`` / ``benign`` for the built-in sets (``benign`` adds
JailbreakBench's benign split when ../shared/data has it). Routes: ``--route FILE``,
repeatable; a file holds a route JSON, a ``fsour --json`` / ``rosais --json`` object, or
JSONL rows from ``evaluate --method fsour|rosais`` (each row's route, its goal as prompt),
or a ``minimize --json`` object (its minimal routes).

Examples::

    python -m explorer fsour --prompt "..." --out r1.json
    python -m explorer utility --route r1.json --harmful harmful --limit 12
    python -m explorer transfer --route runs/fsour.jsonl --universal 2
    python -m explorer minimize --route r1.json
    python -m explorer defend --derive-prompts harmful --derive-limit 4 --limit 8
    python -m explorer rosais-curve --limit 6 --max-top 4
"""

from __future__ import annotations

from pathlib import Path

from explorer.cli.options import (
    Command,
    UsageError,
    add_model_args,
    add_param_options,
    add_system_args,
    count,
    emit,
    load_from_args,
    log_prob,
    open_ratio,
    params_from_args,
    positive_int,
    seed_int,
    system_from_args,
)
from explorer.core.defaults import DEFAULT_TARGET, DEFAULT_THRESHOLD, ROSAIS_MASK_RATIO
from explorer.core.errors import InputError
from explorer.judges import judge_help
from explorer.viz.text import pct


# -- inputs -------------------------------------------------------------------------------
def load_prompts(spec: str | None, default: str = "harmful", limit: int | None = None,
                 data_dir: str | None = None) -> list[str]:
    """Prompts from ``spec`` (file, ``harmful`` or ``benign``; None = ``default``);
    ``data_dir``: the benchmark folder whose JailbreakBench benign split ``benign`` adds."""
    from explorer.research.common import harmful_prompts
    from explorer.research.utility import benign_prompts
    spec = spec or default
    if spec == "harmful":
        out = harmful_prompts()
    elif spec == "benign":
        out = benign_prompts(data_dir=data_dir)
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise UsageError(f"prompt file {spec} does not exist (or use 'harmful' / 'benign')")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            raise UsageError(f"{spec}: not a UTF-8 text file") from None
        first = text.splitlines()[0].strip().lower() if text.strip() else ""
        if path.suffix.lower() == ".csv" or first in ("goal", "goal,target") or \
                first.startswith(("goal,", ",goal")):
            from explorer.evaluation.datasets import load_goals
            out = [r["goal"] for r in load_goals(path)]
        else:
            out = [ln.strip() for ln in text.splitlines()
                   if ln.strip() and not ln.lstrip().startswith("#")]
    if not out:
        raise UsageError(f"no prompts in {spec}")
    return out[:limit] if limit else out


def _json_objects(path, what: str) -> list:
    """The JSON objects in a file: one JSON document, or JSON lines."""
    from explorer.research.common import json_objects
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:  # a ValueError, but bad input (exit 2, not a bug)
        raise UsageError(f"{path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        return json_objects(text)
    except InputError as exc:
        raise UsageError(f"{path}: {exc}") from None


def load_routes(paths, top: int | None = None) -> list:
    """Routes from files (see the module docs); RoSais results give their top-L masks."""
    from explorer.research.common import routes_from_objects
    out = []
    for p in paths or []:
        out += routes_from_objects(_json_objects(p, "route file"), top, where=str(p))
    return out


def load_rosais(paths) -> list:
    from explorer.methods.rosais import RosaisResult
    out = []
    for p in paths or []:
        for obj in _json_objects(p, "RoSais file"):
            if not isinstance(obj, dict) or "best_masks" not in obj:
                raise UsageError(f"{p}: not a `rosais --json` result")
            out.append(RosaisResult.from_dict(obj))
    return out


def _check_out(*paths) -> None:
    for path in paths:
        if path is None:
            continue
        p = Path(path).expanduser()
        if not str(path).strip() or p.is_dir():
            raise UsageError(f"output path {path!r} is empty or a folder")
        if not p.parent.is_dir():
            raise UsageError(f"output path {path}: the folder {p.parent} does not exist")


def _judge(args):
    from explorer.cli.commands.evaluate import make_judge
    return make_judge(args.judge, settings=args.settings)


def _common(p, max_new: int = 32, system_default: str = "none"):
    p.add_argument("--judge", default="keyword", help=judge_help() + " (default keyword)")
    p.add_argument("--max-new-tokens", type=positive_int, default=max_new,
                   help=f"greedy answer length (default {max_new})")
    add_system_args(p, system_default)
    add_model_args(p)


def _mapping(p):
    from explorer.core.layout import MAPPINGS
    p.add_argument("--mapping", choices=list(MAPPINGS), default="end",
                   help="how positions move to another prompt: end (align from the end of "
                        "the templated prompt, default), template (only chat-template tokens), "
                        "absolute")


# -- utility ------------------------------------------------------------------------------
def _configure_utility(p):
    p.add_argument("--route", action="append", default=[], help="route / result file (repeatable)")
    p.add_argument("--rosais", action="append", default=[], help="`rosais --json` result file")
    p.add_argument("--top", type=count, default=None, help="RoSais routers to mask (default: "
                   "the result's own top-L)")
    p.add_argument("--prompts", default=None, help="benign prompts: FILE or benign (default: "
                   "built-in benign + JBB benign when present)")
    p.add_argument("--limit", type=count, default=None, help="use the first N benign prompts")
    p.add_argument("--harmful", default=None, help="also measure ASR on these harmful "
                   "prompts: FILE or harmful")
    p.add_argument("--harmful-limit", type=count, default=None)
    _mapping(p)
    _common(p)


def _run_utility(args):
    from explorer.research.utility import utility_cost
    routes = load_routes(args.route, args.top) + load_rosais(args.rosais)
    if not routes:
        raise UsageError("give at least one --route or --rosais file")
    benign = load_prompts(args.prompts, "benign", args.limit, data_dir=args.settings.shared_data)
    harm = load_prompts(args.harmful, "harmful", args.harmful_limit, data_dir=args.settings.shared_data) if args.harmful else None
    system = system_from_args(args)
    judge = _judge(args)
    moe = load_from_args(args)
    res = utility_cost(moe, routes, benign, max_new_tokens=args.max_new_tokens,
                       mapping=args.mapping, judge=judge, harmful_prompts=harm, top=args.top,
                       system=system)
    text = [f"{len(res.prompts)} benign prompts: baseline refusal rate "
            f"{pct(res.baseline_refusal_rate)}, mean log-likelihood "
            f"{res.baseline_mean_ll:.3f} nats/token"] + res.summary_lines()
    emit(args, res.to_dict(), "\n".join(text))


# -- transfer -----------------------------------------------------------------------------
def _configure_transfer(p):
    p.add_argument("--route", action="append", default=[], required=True,
                   help="route / result file (repeatable)")
    p.add_argument("--prompts", default=None, help="prompts to replay on: FILE or harmful "
                   "(default: the routes' own prompts plus the built-in harmful set)")
    p.add_argument("--limit", type=count, default=None)
    p.add_argument("--target", default=DEFAULT_TARGET)
    p.add_argument("--universal", type=positive_int, default=0, metavar="MIN_COUNT",
                   help="also build a universal route from cells in >= MIN_COUNT routes "
                        "and measure its ASR on held-out prompts (0 = off)")
    p.add_argument("--key", choices=["set", "cell"], default="set",
                   help="universal: count identical expert sets (set) or any forced set "
                        "at a (layer, distance-from-end) cell (cell)")
    p.add_argument("--heldout", default=None, help="universal: held-out prompts, FILE or "
                   "harmful (default: --prompts minus the routes' own prompts)")
    p.add_argument("--out-universal", default=None, help="write the universal route here")
    _mapping(p)
    _common(p)


def _run_transfer(args):
    from explorer.research.transfer import asr, transfer_matrix, universal_route
    if not args.target.strip():
        raise UsageError("the target is empty")
    routes = load_routes(args.route)
    if not routes:
        raise UsageError("the route files hold no routes")
    own = [r.info["prompt"] for r in routes if isinstance(r.info.get("prompt"), str)]
    if args.prompts:
        prompts = load_prompts(args.prompts, limit=args.limit, data_dir=args.settings.shared_data)
    else:
        prompts = list(dict.fromkeys(own + load_prompts("harmful", data_dir=args.settings.shared_data)))[:args.limit or None]
    _check_out(args.out_universal)
    system = system_from_args(args)
    judge = _judge(args)
    moe = load_from_args(args)
    res = transfer_matrix(moe, routes, prompts, target=args.target, judge=judge,
                          mapping=args.mapping, max_new_tokens=args.max_new_tokens,
                          system=system)
    obj = res.to_dict()
    text = [f"{len(routes)} routes x {len(prompts)} prompts ({args.mapping} mapping): "
            f"transfer rate {pct(res.transfer_rate)} (own prompts {pct(res.own_rate)}, "
            f"no route {pct(res.baseline_asr)})"
            + (f", mean target log-prob gain {res.mean_logprob_gain:+.2f}"
               if res.mean_logprob_gain is not None else "")]
    for i, rate in enumerate(res.row_rates()):
        row = "".join("X" if c["jailbroken"] else "." for c in res.cells[i])
        text.append(f"route {i}: {row}  {pct(rate)}")
    if args.universal:
        u = universal_route(routes, args.universal, moe=moe, key=args.key)
        held = (load_prompts(args.heldout, data_dir=args.settings.shared_data) if args.heldout
                else [p for p in prompts if p not in own])
        obj["universal"] = {"route": u.to_dict(), "heldout": held}
        if args.out_universal:
            u.save(args.out_universal)
        if len(u) and held:
            a = asr(moe, u, held, judge=judge, mapping=args.mapping,
                    max_new_tokens=args.max_new_tokens, system=system)
            obj["universal"]["asr"] = a.to_dict()
            text.append(f"universal route ({len(u)} edits, cells in >= {args.universal} "
                        f"routes): ASR {pct(a.asr)} on {a.n} held-out prompts")
        else:
            obj["universal"]["asr"] = None
            text.append(f"universal route: {len(u)} edits recur in >= {args.universal} "
                        "routes" + ("" if held else "; no held-out prompts"))
    emit(args, obj, "\n".join(text))


# -- minimize -----------------------------------------------------------------------------
def _configure_minimize(p):
    p.add_argument("--route", action="append", default=[], required=True,
                   help="route / result file (repeatable; each is minimised on its own prompt)")
    p.add_argument("--prompt", default=None, help="prompt (default: the route's own; only "
                   "with a single route)")
    p.add_argument("--target", default=None, help="target answer (default: the route's own, "
                   "else 'Sure, here is')")
    p.add_argument("--threshold", type=log_prob, default=DEFAULT_THRESHOLD,
                   help="log P(target) a route must keep (default log 0.8; a route below it "
                        "must keep its own)")
    p.add_argument("--checks", type=count, default=3, help="generations tried per round")
    p.add_argument("--out", default=None, help="write the minimal route (single route)")
    _common(p, system_default="each route's own")


def _run_minimize(args):
    from explorer.research.minimal import minimize
    routes = load_routes(args.route)
    if not routes:
        raise UsageError("the route files hold no routes")
    _check_out(args.out)
    if len(routes) > 1 and (args.prompt or args.out):
        raise UsageError("--prompt and --out need exactly one route")
    if args.target is not None and not args.target.strip():
        raise UsageError("the target is empty")
    for r in routes:
        if not (args.prompt or r.info.get("prompt")):
            raise UsageError("a route does not name its prompt: pass --prompt")
    system = system_from_args(args)  # None: each route's own (minimize's default)
    judge = _judge(args)
    moe = load_from_args(args)
    results = []
    for r in routes:
        target = args.target or r.info.get("target") or DEFAULT_TARGET
        results.append(minimize(moe, args.prompt, r, target=target, threshold=args.threshold,
                                judge=judge, max_new_tokens=args.max_new_tokens,
                                checks=args.checks, system=system))
    if args.out:
        results[0].minimal_route.save(args.out)
    ok = [m for m in results if m.jailbroken_before]
    obj = {"results": [m.to_dict() for m in results], "n": len(results),
           "succeeding": len(ok),
           "mean_edits_before": (sum(m.edits_before for m in ok) / len(ok)) if ok else None,
           "mean_edits_after": (sum(m.edits_after for m in ok) / len(ok)) if ok else None}
    text = []
    for m in results:
        if not m.jailbroken_before:
            text.append(f"{m.prompt[:50]!r}: the route does not jailbreak (log P = "
                        f"{m.logprob_before:.2f}); nothing to minimise")
            continue
        cells = ", ".join(f"L{x['layer']}@{x['position']}({x['token']!r}, -{x['from_end']})"
                          f" drop {x['drop']:.2f}" if x["position"] is not None else
                          f"L{x['layer']} all" for x in m.necessity) or \
            "no edit (the unattacked answer already succeeds)"
        text.append(f"{m.prompt[:50]!r}: {m.edits_before} -> {m.edits_after} edits, log P "
                    f"{m.logprob_before:.2f} -> {m.logprob_after:.2f}; needed: {cells}")
    if ok:
        text.append(f"mean route size {obj['mean_edits_before']:.1f} -> "
                    f"{obj['mean_edits_after']:.1f} edits over {len(ok)} succeeding routes")
    emit(args, obj, "\n".join(text))


# -- defend -------------------------------------------------------------------------------
def _configure_defend(p):
    p.add_argument("--defense", default=None, help="evaluate this defense route file "
                   "instead of deriving one")
    p.add_argument("--route", action="append", default=[], help="found routes (evidence and "
                   "replay), repeatable")
    p.add_argument("--rosais", action="append", default=[], help="`rosais --json` results "
                   "(evidence), repeatable")
    p.add_argument("--derive-prompts", default=None, help="run RoSais and F-SOUR on these "
                   "prompts (FILE or harmful) to gather evidence")
    p.add_argument("--derive-limit", type=count, default=None)
    p.add_argument("--prompts", default=None, help="harmful prompts to attack: FILE or "
                   "harmful (default: the built-in harmful prompts no evidence came from)")
    p.add_argument("--limit", type=count, default=None)
    p.add_argument("--benign", default=None, help="benign prompts for the utility cost: FILE "
                   "or benign (default: built-in + JBB benign)")
    p.add_argument("--benign-limit", type=count, default=None)
    from explorer.attacks import attack_help, get_attack, list_attacks
    p.add_argument("--attacks", default="none,rosais,fsour",
                   help="comma list of " + attack_help("defend").replace("; replay: ", "; "
                        "replay (added with --route): ") + " (default none,rosais,fsour)")
    p.add_argument("--no-before", action="store_true", help="skip the undefended run")
    from explorer.defenses import defense_help, get_defense, list_defenses
    modes = list_defenses("defend")
    p.add_argument("--mode", choices=modes, default="protect" if "protect" in modes else None,
                   help=defense_help("defend") + " (default protect; mask backfires on the "
                   "demo model, see docs/results.md; a defense derived from evidence needs "
                   "--route, --rosais or --derive-prompts)")
    add_param_options(p, {d: get_defense(d).Params for d in modes}, where="defend",
                      title="the defenses' parameters (default: each defense's own)")
    p.add_argument("--top", type=count, default=2, help="RoSais attack: routers masked")
    p.add_argument("--samples", type=count, default=8, help="RoSais masks per router")
    p.add_argument("--candidates", type=count, default=4, help="F-SOUR sets per step")
    p.add_argument("--max-iters", type=count, default=1, help="F-SOUR restarts")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--target", default=DEFAULT_TARGET)
    p.add_argument("--threshold", type=log_prob, default=DEFAULT_THRESHOLD)
    p.add_argument("--out", default=None, help="write the defense route here")
    add_param_options(p, {a: get_attack(a).Params for a in list_attacks("defend")},
                      where="defend", skip=_DEFEND_SHARED,
                      title="the attacks' other parameters (default: each attack's own)")
    _common(p)


#: defend's options that every attack with a parameter of that name shares (their defaults
#: are small, so that a defense evaluation stays short)
_DEFEND_SHARED = ("top", "samples", "candidates", "max_iters", "target", "threshold")


def _defense_params(args, name: str):
    """The parameters of defense ``name`` given on the command line, checked."""
    from explorer.defenses import get_defense
    cls = get_defense(name).Params
    return cls.parse(params_from_args(args, cls))


def _stray_options(args, names, where: str) -> list[str]:
    """The options given on the command line that belong only to defenses ``where`` offers
    other than ``names`` (nothing would read them)."""
    from explorer.defenses import get_defense, list_defenses
    mine = {k for n in names for k in get_defense(n).Params.specs()}
    other = {k: get_defense(d).Params.specs()[k] for d in list_defenses(where)
             for k in get_defense(d).Params.specs() if k not in mine}
    return [spec.option(k) for k, spec in other.items() if getattr(args, k, None) is not None]


def _evaluate(args, defense_cls, moe, applied, prompts, benign, attacks, routes, judge,
              system, attack_params):
    """``defend``'s measurement of the defense in force: the defense's own
    :meth:`~explorer.defenses.Defense.evaluate` with the command's settings."""
    return defense_cls.evaluate(moe, applied, prompts, benign, attacks=attacks, routes=routes,
                                before=not args.no_before, rosais_top=args.top,
                                samples=args.samples, candidates=args.candidates,
                                max_iters=args.max_iters, threshold=args.threshold,
                                target=args.target, max_new_tokens=args.max_new_tokens,
                                judge=judge, seed=args.seed, system=system,
                                params=attack_params)


def _run_defend(args):
    from explorer.core.route import Route
    from explorer.defenses import Evidence, get_defense
    from explorer.research.defense import describe_defense, gather_evidence
    _check_out(args.out)
    defense_cls = get_defense(args.mode)
    params = _defense_params(args, args.mode)
    stray = _stray_options(args, [args.mode], "defend")
    if stray:  # accepted (earlier scripts pass them with any mode), but said
        import sys
        print(f"note: --mode {args.mode} ignores {', '.join(stray)} (another defense's "
              "parameters)", file=sys.stderr)
    system = system_from_args(args)
    defense_cls.check_system(system)
    if defense_cls.replaces_model:
        return _run_defend_replaced(args, defense_cls, params, system)
    attacks, attack_params = _attack_list(args)
    routes = load_routes(args.route)
    rosais_results = load_rosais(args.rosais)
    data = args.settings.shared_data
    derive = load_prompts(args.derive_prompts, limit=args.derive_limit, data_dir=data) \
        if args.derive_prompts else []
    if args.defense is None and defense_cls.needs_evidence and \
            not (routes or rosais_results or derive):
        raise UsageError("give --defense, or evidence: --route, --rosais or --derive-prompts "
                         f"(the {args.mode} defense is derived from evidence)")
    if args.prompts:
        prompts = load_prompts(args.prompts, limit=args.limit, data_dir=data)
    else:  # held out: not a prompt any evidence came from
        seen = set(derive) | {r.info.get("prompt") for r in routes} | \
            {r.prompt for r in rosais_results}
        prompts = [p for p in load_prompts("harmful", data_dir=data)
                   if p not in seen][:args.limit or None]
        if not prompts:
            raise UsageError("no held-out prompts left: pass --prompts")
    benign = load_prompts(args.benign, "benign", args.benign_limit, data_dir=data)
    defense = Route.load(args.defense) if args.defense else None
    judge = _judge(args)
    moe = load_from_args(args)
    if derive:
        r2, f2 = gather_evidence(moe, derive, samples=args.samples, candidates=args.candidates,
                                 max_iters=args.max_iters, seed=args.seed, target=args.target,
                                 threshold=args.threshold,
                                 max_new_tokens=args.max_new_tokens, judge=judge, system=system)
        rosais_results += r2
        routes += f2
    applied = (defense_cls.in_force(moe, defense) if defense is not None else
               defense_cls.build(moe, params, evidence=Evidence(rosais_results, routes)))
    if args.out:
        applied.record.save(args.out)
    res = _evaluate(args, defense_cls, moe, applied, prompts, benign, attacks, routes, judge,
                    system, attack_params)
    obj = res.to_dict()
    obj["evidence"] = {"routes": len(routes), "rosais_results": len(rosais_results),
                       "derive_prompts": derive}
    text = [f"defense: {describe_defense(applied.record)} (from {len(routes)} routes, "
            f"{len(rosais_results)} RoSais results); {len(prompts)} harmful, {len(benign)} "
            "benign prompts"]
    text += res.summary_lines()
    emit(args, obj, "\n".join(text))


# -- grid ---------------------------------------------------------------------------------
def _configure_grid(p):
    from explorer.attacks import attack_help, get_attack, list_attacks
    from explorer.defenses import defense_help, get_defense, list_defenses
    p.add_argument("--dataset", action="append", required=True, metavar="CSV[:N]",
                   help="a dataset to attack (CSV path or hub name), its first N rows after "
                        "a colon; repeatable (e.g. advbench.csv:50 --dataset jbb.csv:100)")
    p.add_argument("--attacks", default="none,rosais,fsour",
                   help="comma list of " + attack_help("evaluate") + " (default "
                        "none,rosais,fsour)")
    p.add_argument("--defenses", default="none,protect,self-reminder",
                   help="comma list of " + defense_help("grid") + " (default "
                        "none,protect,self-reminder); protect and mask are derived from "
                        "evidence on the project's own harmful prompts")
    p.add_argument("--benign", default="benign", help="benign prompts for each defense's "
                   "utility cost: FILE or benign (default: built-in + JBB benign)")
    p.add_argument("--benign-limit", type=count, default=None)
    p.add_argument("--out", required=True, metavar="FOLDER",
                   help="one JSONL file per cell, the derived defenses and grid.json go here")
    p.add_argument("--fresh", action="store_true", help="start every cell afresh (default: "
                   "keep the rows already in --out and compute the rest)")
    p.add_argument("--markdown", default=None, metavar="FILE",
                   help="also write the table as markdown here")
    p.add_argument("--report", action="store_true", help="only table the cells already in "
                   "--out (rows so far), computing nothing and loading no model")
    p.add_argument("--seed", type=seed_int, default=0)
    add_param_options(p, {a: get_attack(a).Params for a in list_attacks("evaluate")},
                      where="evaluate", title="the attacks' parameters (default: each "
                      "attack's own)")
    add_param_options(p, {d: get_defense(d).Params for d in list_defenses("grid")},
                      where="grid", title="the defenses' parameters (default: each "
                      "defense's own)")
    _common(p, max_new=48)


def _dataset_arg(spec: str) -> tuple[str, str, int | None]:
    """``CSV[:N]`` -> (short name, spec, limit)."""
    head, sep, tail = spec.rpartition(":")
    path, limit = (head, int(tail)) if sep and tail.isdigit() else (spec, None)
    if limit is not None and limit < 1:
        raise UsageError(f"--dataset {spec}: the row count must be positive")
    name = Path(path).stem if Path(path).suffix else path
    return name, path, limit


def _run_grid(args):
    import shlex
    import sys

    from explorer.attacks import get_attack, list_attacks
    from explorer.bench.grid import check_defenses, run_grid
    from explorer.defenses import get_defense, list_defenses
    from explorer.evaluation.datasets import load_dataset_rows
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    defenses = [d.strip() for d in args.defenses.split(",") if d.strip()]
    offered = list_attacks("evaluate")
    for what, given, known in (("attack", attacks, offered),
                               ("defense", defenses, list_defenses("grid"))):
        bad = [x for x in given if x not in known]
        if bad or not given:
            raise UsageError(f"unknown {what} {bad[0] if bad else '(none given)'}; choose "
                             f"from {', '.join(known)}")
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out} is a file; give a folder")
    params = {}
    for a in attacks:
        cls = get_attack(a).Params
        given = params_from_args(args, cls)
        cls.parse(given)  # refused before anything loads
        params[a] = given
    defense_params = {d: params_from_args(args, get_defense(d).Params) for d in defenses}
    stray = _stray_options(args, defenses, "grid")
    if stray:
        raise UsageError(f"{stray[0]} is a parameter of a defense not in --defenses")
    check_defenses(defenses, defense_params, system_from_args(args))
    st = args.settings
    command = "python -m explorer " + shlex.join(sys.argv[1:])
    if args.report:
        from explorer.bench.grid import grid_report
        res = grid_report(out, [_dataset_arg(d)[0] for d in args.dataset], attacks, defenses,
                          judge=args.judge, command=command.replace(" --report", ""))
        table = res.markdown()
        if args.markdown:
            Path(args.markdown).expanduser().write_text(table + "\n", encoding="utf-8")
        emit(args, res.to_dict(), table)
        return
    datasets = {}
    for spec in args.dataset:
        name, path, limit = _dataset_arg(spec)
        datasets[name] = load_dataset_rows(path, limit, offline=st.hub_offline)
    benign = load_prompts(args.benign, "benign", args.benign_limit, data_dir=st.shared_data)
    judge = _judge(args)
    moe = load_from_args(args)
    def say(cell):
        if not args.json:
            print(f"{cell.dataset} / {cell.defense} / {cell.attack}: ASR "
                  f"{pct(cell.asr)} ({cell.jailbroken}/{cell.n}), "
                  f"{cell.forward_passes:,.0f} passes, "
                  + (f"{cell.seconds:.2f} s per prompt" if cell.seconds is not None
                     else "seconds not recorded"),
                  file=sys.stderr)

    res = run_grid(moe, datasets, out, attacks=attacks, defenses=defenses, benign=benign,
                   load=_checkpoint_loader(args), judge=judge, seed=args.seed,
                   max_new_tokens=args.max_new_tokens, params=params,
                   defense_params=defense_params,
                   resume=not args.fresh, command=command, on_cell=say,
                   system=system_from_args(args))
    table = res.markdown()
    if args.markdown:
        Path(args.markdown).expanduser().write_text(table + "\n", encoding="utf-8")
    emit(args, res.to_dict(), table)


def _attack_list(args) -> tuple[list[str], dict]:
    """defend's ``--attacks`` and each attack's parameters."""
    from explorer.attacks import get_attack, list_attacks
    offered = list_attacks("defend")
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    bad = [a for a in attacks if a not in offered]
    if bad or not attacks:
        raise UsageError(f"unknown attack {bad[0] if bad else '(none given)'}; choose from "
                         f"{', '.join(a for a in offered if not get_attack(a).needs_routes)}")
    return attacks, {a: get_attack(a).Params.parse(params_from_args(args, get_attack(a).Params))
                     for a in attacks}


def _checkpoint_loader(args):
    """How the command loads another checkpoint (a defense's that replaces the model) with
    its own device, dtype and quantization options."""
    import argparse

    def load(path: str):
        return load_from_args(argparse.Namespace(**dict(vars(args), model=str(path))))
    return load


def _run_defend_replaced(args, defense_cls, params, system):
    """``defend --mode hardened`` (a defense that replaces the model): the attacks against
    the model and against the defense's checkpoint, and its utility cost. ``system``: the
    system prompt, already checked against the defense."""
    from explorer.research.defense import describe_defense
    if args.defense or args.derive_prompts or args.rosais:
        raise UsageError(f"--mode {args.mode} takes no --defense, --derive-prompts or --rosais")
    attacks, attack_params = _attack_list(args)
    routes = load_routes(args.route)
    data = args.settings.shared_data
    prompts = load_prompts(args.prompts or "harmful", limit=args.limit, data_dir=data)
    benign = load_prompts(args.benign, "benign", args.benign_limit, data_dir=data)
    judge = _judge(args)
    moe = load_from_args(args)
    applied = defense_cls.build(moe, params, load=_checkpoint_loader(args))
    if args.out:
        applied.record.save(args.out)
    res = _evaluate(args, defense_cls, moe, applied, prompts, benign, attacks, routes, judge,
                    system, attack_params)
    obj = res.to_dict()
    obj["evidence"] = {"routes": len(routes), "rosais_results": 0, "derive_prompts": []}
    text = [f"defense: {describe_defense(applied.record)}; {len(prompts)} harmful, "
            f"{len(benign)} benign prompts"]
    if not args.prompts:
        text.append("note: the built-in harmful prompts are the hardening's training "
                    "prompts (in-sample): pass --prompts for held-out ones")
    text += res.summary_lines()
    emit(args, obj, "\n".join(text))


# -- harden -------------------------------------------------------------------------------
def _configure_harden(p):
    from explorer.core.defaults import (
        HARDEN_BENIGN_WEIGHT,
        HARDEN_EXPERTS,
        HARDEN_LR,
        HARDEN_ROUNDS,
        HARDEN_STEPS,
    )
    p.add_argument("--out", required=True, help="folder to write the hardened checkpoint to")
    p.add_argument("--prompts", default=None, help="harmful prompts to harden against: FILE "
                   "or harmful (default: the project's own; never a benchmark's)")
    p.add_argument("--benign", default=None, help="benign prompts whose answers are kept: "
                   "FILE (default: the project's own)")
    p.add_argument("--route", action="append", default=[], help="attack routes to train "
                   "under instead of searching them (repeatable)")
    p.add_argument("--steps", type=positive_int, default=HARDEN_STEPS,
                   help=f"training steps (default {HARDEN_STEPS})")
    p.add_argument("--lr", type=float, default=HARDEN_LR,
                   help=f"Adam learning rate (default {HARDEN_LR})")
    p.add_argument("--experts", type=positive_int, default=HARDEN_EXPERTS,
                   help=f"(layer, expert) pairs trained (default {HARDEN_EXPERTS})")
    p.add_argument("--benign-weight", type=float, default=HARDEN_BENIGN_WEIGHT,
                   help=f"weight of the benign-answer term (default {HARDEN_BENIGN_WEIGHT})")
    p.add_argument("--rounds", type=positive_int, default=HARDEN_ROUNDS,
                   help="rounds: each after the first searches routes afresh against the "
                        f"model hardened so far and trains on all routes (default "
                        f"{HARDEN_ROUNDS})")
    p.add_argument("--candidates", type=count, default=4, help="F-SOUR sets per step")
    p.add_argument("--max-iters", type=count, default=1, help="F-SOUR restarts")
    p.add_argument("--samples", type=count, default=8, help="RoSais masks per router")
    p.add_argument("--top", type=count, default=2, help="RoSais routers masked")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--save-dtype", default=None, help="dtype of the saved weights (default: "
                   "the source checkpoint's, e.g. bfloat16 for the demo model)")
    _common(p)


def _own_prompts(spec, default, args) -> list[str]:
    """Training prompts: never a file from the benchmark folder (evaluation only)."""
    from explorer.core.paths import shared_data_dir
    if spec not in (None, "harmful", "benign"):
        shared = shared_data_dir(args.settings.shared_data)
        if shared is not None and Path(spec).expanduser().resolve().is_relative_to(
                shared.resolve()):
            raise UsageError(f"{spec}: benchmark data is for evaluation only; harden on "
                             "your own prompts")
    if spec == "benign":
        from explorer.core.prompt_sets import BENIGN_PROMPTS
        return list(BENIGN_PROMPTS)
    return load_prompts(spec, default, data_dir=None)


def _run_harden(args):
    import sys

    from explorer.research.harden import checkpoint_dtype, harden, save_hardened

    def torch_threads() -> int:
        import torch
        return torch.get_num_threads()
    if system_from_args(args) is not None:
        raise UsageError("harden runs without a system prompt")
    import math
    if not (math.isfinite(args.lr) and args.lr > 0) or \
            not (math.isfinite(args.benign_weight) and args.benign_weight >= 0):
        raise UsageError("--lr must be a finite number > 0 and --benign-weight one >= 0")
    if args.save_dtype not in (None, "float32", "bfloat16", "float16"):
        raise UsageError("--save-dtype: choose float32, bfloat16 or float16")
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out} is a file")
    prompts = _own_prompts(args.prompts, "harmful", args)
    benign = _own_prompts(args.benign, "benign", args) if args.benign else None
    routes = load_routes(args.route) or None
    judge = _judge(args)
    moe = load_from_args(args)

    def step(i, rec):
        if not args.json:
            print(f"round {rec['round'] + 1}/{args.rounds}, step {i + 1}/{args.steps}: "
                  f"loss {rec['loss']:.4f}", file=sys.stderr)
    hardened, res = harden(moe, prompts, benign, routes, steps=args.steps, lr=args.lr,
                           experts=args.experts, benign_weight=args.benign_weight,
                           seed=args.seed, candidates=args.candidates,
                           max_iters=args.max_iters, samples=args.samples, top=args.top,
                           max_new_tokens=args.max_new_tokens, judge=judge,
                           rounds=args.rounds, on_step=step)
    dtype = args.save_dtype or checkpoint_dtype(moe)
    res.info["command"] = (f"python -m explorer harden --out {out} --steps {args.steps} "
                           f"--lr {args.lr} --experts {args.experts} --benign-weight "
                           f"{args.benign_weight} --rounds {args.rounds} --seed {args.seed} "
                           f"--candidates "
                           f"{args.candidates} --max-iters {args.max_iters} --samples "
                           f"{args.samples} --top {args.top} --max-new-tokens "
                           f"{args.max_new_tokens} --threads {torch_threads()}")
    save_hardened(hardened, res, out, dtype=dtype)
    text = res.summary_lines() + [f"wrote {out} ({dtype or 'as loaded'}); evaluate it with "
                                  f"`python -m explorer defend --mode hardened --hardened "
                                  f"{out}` or load it with --model {out}"]
    emit(args, dict(res.to_dict(), out=str(out)), "\n".join(text))


# -- rosais-curve -------------------------------------------------------------------------
def _configure_curve(p):
    p.add_argument("--prompts", default=None, help="FILE or harmful (default harmful)")
    p.add_argument("--limit", type=count, default=None)
    p.add_argument("--max-top", type=count, default=5, help="mask the top 1..N routers")
    p.add_argument("--samples", type=count, default=16, help="random masks per router")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--mask-ratio", type=open_ratio, default=ROSAIS_MASK_RATIO)
    _common(p)


def _run_curve(args):
    from explorer.research.transfer import rosais_curve
    if not 0.0 < args.mask_ratio < 1.0:
        raise UsageError("--mask-ratio must lie strictly between 0 and 1")
    prompts = load_prompts(args.prompts, limit=args.limit, data_dir=args.settings.shared_data)
    system = system_from_args(args)
    judge = _judge(args)
    moe = load_from_args(args)
    res = rosais_curve(moe, prompts, max_top=args.max_top, samples=args.samples,
                       seed=args.seed, mask_ratio=args.mask_ratio,
                       max_new_tokens=args.max_new_tokens, judge=judge, system=system)
    text = [f"{len(prompts)} prompts, {args.samples} masks per router"]
    text += [f"top-{t} routers masked: ASR {pct(a)}; {t} random routers, random masks "
             f"(control): ASR {pct(c)}"
             for t, a, c in zip(res.tops, res.asr_by_top, res.random_asr_by_top)]
    for lay, d, m in zip(res.moe_layers, res.distributions, res.mean_scores):
        ds = sorted(d)
        q = lambda f: ds[min(len(ds) - 1, int(f * len(ds)))]  # noqa: E731
        text.append(f"layer {lay:>3}: mean best {m:+.3f}; mask scores median {q(0.5):+.3f}, "
                    f"IQR [{q(0.25):+.3f}, {q(0.75):+.3f}], max {ds[-1]:+.3f}")
    emit(args, res.to_dict(), "\n".join(text))


#: This group's commands (joined in :data:`explorer.cli.main.COMMANDS`).
COMMANDS = {
    "utility": Command(_configure_utility, _run_utility,
            "utility cost of routes on benign prompts (refusals, log-likelihood)"),
    "transfer": Command(_configure_transfer, _run_transfer,
            "replay routes on other prompts; universal route"),
    "minimize": Command(_configure_minimize, _run_minimize,
            "shrink a route to the edits it needs"),
    "harden": Command(_configure_harden, _run_harden,
            "fine-tune the experts attacks rely on, under their routes; save a checkpoint"),
    "defend": Command(_configure_defend, _run_defend,
            "derive a route-disabling defense and measure ASR before/after"),
    "grid": Command(_configure_grid, _run_grid,
            "attacks x defenses on dataset slices: one ASR table with costs"),
    "rosais-curve": Command(_configure_curve, _run_curve,
            "RoSais ASR vs number of masked routers, with score spreads"),
}
