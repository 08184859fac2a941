"""One benchmark: a grid of attacks x defenses on dataset slices, with one judge.

Every cell (dataset, defense, attack) is an :func:`explorer.evaluation.evaluate.evaluate`
run with the defense in force, written to its own JSONL file under the output folder
(``<out>/<dataset>/<defense>/<attack>.jsonl``), so a grid interrupted at any row continues
from that row with ``resume=True`` and every row can be read and replayed on its own. A
cell's wall time and computed rows are added up across resumed runs in
``<attack>.meta.json`` beside it, so its seconds per prompt stay honest.

Defenses (:data:`DEFENSES`):

- ``none``: the model as it is;
- ``protect`` / ``mask``: :func:`explorer.research.defense.derive_defense` from evidence
  gathered on the project's own harmful prompts (never on the benchmark rows), derived once
  and kept as a route file (``<out>/defenses/<mode>.json``) that a resumed grid reuses;
- ``self-reminder``: the project's reminder system prompt;
- ``hardened``: another checkpoint (a model fine-tuned against the attacks' routes, see
  :mod:`explorer.research.harden`), given as a loaded model; the attacks run against it with
  no route defense.

Each defense's utility cost is measured once on benign prompts (the benign refusal rate and
the change in mean per-token log-likelihood of the undefended model's own answers) and kept
in ``<out>/utility/<defense>.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from explorer.attacks import get_attack, list_attacks
from explorer.core.chat import check_system
from explorer.core.defaults import GRID_DEFENSES, RESEARCH_MAX_NEW_TOKENS
from explorer.core.errors import InputError
from explorer.core.route import Route
from explorer.evaluation.evaluate import evaluate, read_jsonl
from explorer.research.common import ResultMixin, judge_name, resolve_judge

if TYPE_CHECKING:
    from explorer.core.model import MoEModel

#: The defenses a grid can put in force, in the order its table lists them.
DEFENSES = GRID_DEFENSES
#: Evidence for the derived defenses: the project's own harmful prompts used, and the
#: search settings (small, as ``defend``'s defaults).
EVIDENCE_PROMPTS = 8


@dataclass
class GridCell:
    """One (dataset, defense, attack) cell: ``jailbroken`` of ``n`` rows, mean forward
    passes per prompt, seconds per prompt (wall time over the rows computed, summed over
    resumed runs) and the JSONL file holding its rows."""

    dataset: str
    defense: str
    attack: str
    n: int
    jailbroken: int
    forward_passes: float
    seconds: float | None  # None: not known yet (a cell still running)
    file: str
    errors: int = 0

    @property
    def asr(self) -> float:
        """The fraction of rows judged jailbroken."""
        return self.jailbroken / self.n if self.n else 0.0


@dataclass
class GridResult(ResultMixin):
    """A grid's cells, each defense's utility cost, its settings and the command that
    reproduces it (see :meth:`markdown`)."""

    datasets: list[str]
    attacks: list[str]
    defenses: list[str]
    cells: list[dict]
    utility: dict
    judge: str
    command: str = ""
    info: dict = field(default_factory=dict)

    def cell(self, dataset: str, defense: str, attack: str) -> GridCell | None:
        """The cell of ``dataset`` x ``defense`` x ``attack``, or None."""
        for c in self.cells:
            if (c["dataset"], c["defense"], c["attack"]) == (dataset, defense, attack):
                return GridCell(**c)
        return None

    def markdown(self) -> str:
        """The grid as markdown: per dataset, ASR (jailbroken/n) for each attack (rows) and
        defense (columns); the attacks' cost; each defense's utility cost; the command."""
        out = []
        for ds in self.datasets:
            n = next((c["n"] for c in self.cells if c["dataset"] == ds), 0)
            out += [f"**{ds}** ({n} rows): ASR, jailbroken / rows", "",
                    "| attack | " + " | ".join(self.defenses) + " |",
                    "| --- |" + " --- |" * len(self.defenses)]
            for a in self.attacks:
                row = []
                for d in self.defenses:
                    c = self.cell(ds, d, a)
                    row.append("-" if c is None else
                               f"{100 * c.asr:.0f}% ({c.jailbroken}/{c.n})")
                out.append(f"| {a} | " + " | ".join(row) + " |")
            out.append("")
        out += ["Cost of each attack without a defense (mean over the datasets' rows):", "",
                "| attack | forward passes per prompt | seconds per prompt |",
                "| --- | --- | --- |"]
        for a in self.attacks:
            cs = [GridCell(**c) for c in self.cells if c["attack"] == a
                  and c["defense"] == (self.defenses[0] if self.defenses else "none")]
            rows = sum(c.n for c in cs)
            if rows:
                fp = sum(c.forward_passes * c.n for c in cs) / rows
                sec = ("-" if any(c.seconds is None for c in cs) else
                       f"{sum(c.seconds * c.n for c in cs) / rows:.2f}")
                out.append(f"| {a} | {fp:,.0f} | {sec} |")
        out += ["", "Utility cost of each defense on benign prompts:", "",
                "| defense | benign refusal rate | change | log-likelihood change (nats/token) |",
                "| --- | --- | --- | --- |"]
        for d in self.defenses:
            u = self.utility.get(d)
            if u:
                out.append(f"| {d} | {100 * u['refusal_rate']:.0f}% | "
                           f"{100 * u['refusal_change']:+.0f} pts | {u['ll_change']:+.3f} |")
        if self.command:
            out += ["", "```bash", self.command, "```"]
        return "\n".join(out)


def _meta(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"wall_seconds": 0.0, "computed_rows": 0}


def _cell(ds: str, defense: str, attack: str, rows: list[dict], path: Path) -> GridCell:
    meta = _meta(path.with_suffix(".meta.json"))
    n = len(rows)
    # a cell still running has no wall time yet (its rows' own seconds are each search's
    # time while sharing a batch with others: not a cost per prompt)
    per = meta["wall_seconds"] / meta["computed_rows"] if meta.get("computed_rows") else None
    return GridCell(dataset=ds, defense=defense, attack=attack, n=n,
                    jailbroken=sum(bool(r.get("jailbroken")) for r in rows),
                    forward_passes=(sum(int(r.get("forward_passes") or 0) for r in rows) / n
                                    if n else 0.0),
                    seconds=round(per, 4) if per is not None else None, file=str(path),
                    errors=sum(1 for r in rows if r.get("error")))


def defense_route(moe: MoEModel, name: str, folder: Path, *, judge=None, seed: int = 0,
                  evidence_prompts: Sequence[str] | None = None,
                  max_new_tokens: int = RESEARCH_MAX_NEW_TOKENS) -> Route | None:
    """The route defense ``name`` puts in force (None for ``none`` and ``hardened``): the
    self-reminder, or a ``protect`` / ``mask`` defense derived from evidence on
    ``evidence_prompts`` (default: the first :data:`EVIDENCE_PROMPTS` of the project's own
    harmful prompts), kept in ``folder/<name>.json`` and reused from there."""
    from explorer.research.defense import derive_defense, gather_evidence, self_reminder_defense
    if name in ("none", "hardened"):
        return None
    if name == "self-reminder":
        return self_reminder_defense(moe)
    if name not in ("protect", "mask"):
        raise InputError(f"unknown defense {name!r}; choose from {list(DEFENSES)}")
    path = folder / f"{name}.json"
    if path.is_file():
        route = Route.load(path)
        route.validate(moe.info)
        return route
    if evidence_prompts is None:
        from explorer.research.common import harmful_prompts
        evidence_prompts = harmful_prompts()[:EVIDENCE_PROMPTS]
    rosais_results, routes = gather_evidence(moe, list(evidence_prompts), seed=seed,
                                             judge=judge, max_new_tokens=max_new_tokens)
    route = derive_defense(moe, rosais_results, routes, mode=name)
    route.info["evidence_prompts"] = list(evidence_prompts)
    folder.mkdir(parents=True, exist_ok=True)
    route.save(path)
    return route


def _utility(moe: MoEModel, name: str, route: Route | None, hardened: MoEModel | None,
             benign: Sequence[str], judge, max_new_tokens: int, folder: Path,
             system: str | None = None) -> dict:
    from explorer.research.harden import model_utility
    from explorer.research.utility import utility_cost
    path = folder / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    with moe.defended(None):
        u = (model_utility(moe, hardened, benign, judge=judge, max_new_tokens=max_new_tokens)
             if name == "hardened" else
             utility_cost(moe, route if route is not None else Route(), benign,
                          max_new_tokens=max_new_tokens, judge=judge, system=system))
    r = u.routes[0]
    out = {"refusal_rate": r["refusal_rate"], "baseline_refusal_rate": u.baseline_refusal_rate,
           "refusal_change": r["refusal_change"], "ll_change": r["ll_change"],
           "n": len(u.prompts)}
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out), encoding="utf-8")
    return out


def run_grid(moe: MoEModel, datasets: Mapping[str, list[dict]], out, *,
             attacks: Sequence[str], defenses: Sequence[str] = ("none",),
             benign: Sequence[str] = (), hardened: MoEModel | None = None, judge=None,
             seed: int = 0, max_new_tokens: int = RESEARCH_MAX_NEW_TOKENS,
             params: Mapping[str, Mapping[str, Any]] | None = None, resume: bool = True,
             evidence_prompts: Sequence[str] | None = None, command: str = "",
             system: str | None = None,
             on_cell: Callable[[GridCell], None] | None = None,
             on_row: Callable[[str, str, str, int, int], None] | None = None) -> GridResult:
    """Run every attack against every defense on every dataset (rows from
    :func:`explorer.evaluation.datasets.load_dataset_rows`, keyed by a short name) and
    return the grid (see the module docs). ``params``: per attack, its parameters (as
    ``evaluate`` takes them). ``resume``: keep the rows already in the output folder (the
    default); False starts every cell afresh. ``system``: the system prompt every prompt is
    templated with (a defense's own, the self-reminder's, comes after it; the hardened
    checkpoint is measured without one). ``on_cell`` gets each finished cell;
    ``on_row(dataset, defense, attack, done, total)`` each row."""
    offered = list_attacks("evaluate")
    bad = [a for a in attacks if a not in offered]
    if bad or not attacks:
        raise InputError(f"unknown attack {bad[0] if bad else '(none given)'!r}; choose from "
                         f"{offered}")
    bad = [d for d in defenses if d not in DEFENSES]
    if bad or not defenses:
        raise InputError(f"unknown defense {bad[0] if bad else '(none given)'!r}; choose from "
                         f"{list(DEFENSES)}")
    if "hardened" in defenses and hardened is None:
        raise InputError("the hardened defense needs the hardened checkpoint (--hardened FOLDER)")
    if not datasets:
        raise InputError("no dataset given")
    system = check_system(system)
    if system is not None and "hardened" in defenses:
        raise InputError("the hardened defense is measured without a system prompt")
    judge = resolve_judge(judge)
    out = Path(out)
    params = {a: dict(v) for a, v in (params or {}).items()}
    # attacks that copy route sizes (random) run after the attack that gives them (F-SOUR)
    order = sorted(attacks, key=lambda a: get_attack(a).needs_sizes)
    givers = [a for a in attacks if get_attack(a).gives_sizes]
    cells: list[dict] = []
    utility: dict[str, dict] = {}
    t0 = time.perf_counter()
    for d in defenses:
        model = hardened if d == "hardened" else moe
        route = defense_route(moe, d, out / "defenses", judge=judge, seed=seed,
                              evidence_prompts=evidence_prompts,
                              max_new_tokens=max_new_tokens)
        templated = route.system_under(system) if route is not None else system
        for ds, rows in datasets.items():
            sizes: dict[int, int] = {}
            for a in order:
                path = out / ds / d / f"{a}.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                extra = {}
                if get_attack(a).needs_sizes:
                    extra["reference"] = sizes
                with model.defended(route):
                    ev = evaluate(model, rows, method=a, judge=judge, out=path,
                                  resume=resume and path.is_file(), seed=seed,
                                  max_new_tokens=max_new_tokens, system=templated,
                                  on_row=(lambda k, total, rec, skipped, a=a, d=d, ds=ds:
                                          on_row(ds, d, a, k, total)) if on_row else None,
                                  dataset=ds, **params.get(a, {}), **extra)
                meta_path = path.with_suffix(".meta.json")
                meta = _meta(meta_path) if resume else {"wall_seconds": 0.0, "computed_rows": 0}
                meta["wall_seconds"] += ev.info["wall_seconds"] if ev.info["computed_rows"] \
                    else 0.0
                meta["computed_rows"] += ev.info["computed_rows"]
                meta_path.write_text(json.dumps(meta), encoding="utf-8")
                if a in givers:
                    sizes = {r["index"]: len((r.get("route") or {}).get("edits") or [])
                             for r in ev.rows}
                cell = _cell(ds, d, a, ev.rows, path)
                cells.append(cell.__dict__.copy())
                if on_cell:
                    on_cell(cell)
        if benign:
            utility[d] = _utility(moe, d, route, hardened, benign, judge, max_new_tokens,
                                  out / "utility", system)
    res = GridResult(datasets=list(datasets), attacks=list(attacks), defenses=list(defenses),
                     cells=cells, utility=utility, judge=judge_name(judge), command=command,
                     info=dict(moe.provenance(system), seed=seed, max_new_tokens=max_new_tokens,
                               params=params, out=str(out),
                               hardened=(hardened.info.provenance() if hardened is not None
                                         else None),
                               seconds=round(time.perf_counter() - t0, 3)))
    (out / "grid.json").write_text(res.to_json(indent=1), encoding="utf-8")
    return res


def grid_report(out, datasets: Sequence[str], attacks: Sequence[str],
                defenses: Sequence[str], *, judge: str = "keyword",
                command: str = "") -> GridResult:
    """The grid of the cells already under ``out`` (see :func:`run_grid`), computing
    nothing: a cell with no rows yet is left out, a cell still running shows the rows it
    has so far (its ``n``); each defense's utility cost where it was measured. For watching
    a long grid, or tabling one that was stopped."""
    out = Path(out)
    cells, utility = [], {}
    for d in defenses:
        for ds in datasets:
            for a in attacks:
                path = out / ds / d / f"{a}.jsonl"
                rows = read_jsonl(path) if path.is_file() else []
                if rows:
                    cells.append(_cell(ds, d, a, rows, path).__dict__.copy())
        u = out / "utility" / f"{d}.json"
        if u.is_file():
            utility[d] = json.loads(u.read_text(encoding="utf-8"))
    return GridResult(datasets=list(datasets), attacks=list(attacks), defenses=list(defenses),
                      cells=cells, utility=utility, judge=judge, command=command,
                      info={"out": str(out), "report": True})


def load_grid(path) -> GridResult:
    """A grid written by :func:`run_grid` (its ``grid.json``, or the folder holding it),
    refused with one line before it is read when it is larger than
    :data:`~explorer.evaluation.results.MAX_RESULTS_BYTES`, and when it is not a grid."""
    from explorer.evaluation.results import MAX_RESULTS_BYTES
    p = Path(path)
    if p.is_dir():
        p = p / "grid.json"
    if not p.is_file():
        raise InputError(f"{p.name}: no such file")
    if p.stat().st_size > MAX_RESULTS_BYTES:
        raise InputError(f"{p.name} is larger than {MAX_RESULTS_BYTES // (1024 * 1024)} MiB; "
                         "a grid of that size is not read here")
    try:
        res = GridResult.from_dict(json.loads(p.read_bytes().decode("utf-8")))
        res.markdown()  # every field it shows is checked here
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise InputError(f"{p.name}: not a grid written by `explorer grid` "
                         f"({type(exc).__name__})") from None
    return res


def cell_rows(cell: GridCell) -> list[dict]:
    """The JSONL rows of ``cell``."""
    return read_jsonl(cell.file)
