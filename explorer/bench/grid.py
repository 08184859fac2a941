"""One benchmark: a grid of attacks x defenses on dataset slices, with one judge.

Every cell (dataset, defense, attack) is an :func:`explorer.evaluation.evaluate.evaluate`
run with the defense in force, written to its own JSONL file under the output folder
(``<out>/<dataset>/<defense>/<attack>.jsonl``), so a grid interrupted at any row continues
from that row with ``resume=True`` and every row can be read and replayed on its own. A
cell's wall time and computed rows are added up across resumed runs in
``<attack>.meta.json`` beside it, so its seconds per prompt stay honest.

Defenses are the registry's (:func:`explorer.defenses.list_defenses`, ``"grid"``, in its
order): by default ``none`` (the model as it is), ``protect`` and ``mask`` (derived from
RoSais and F-SOUR evidence gathered on the project's own harmful prompts, never on the
benchmark rows, once, and kept as route files ``<out>/defenses/<name>.json`` that a resumed
grid reuses), ``self-reminder`` (the project's reminder system prompt) and ``hardened``
(another checkpoint, loaded with the caller's ``load``; the attacks run against it with no
route defense).

Each defense's utility cost is measured once on benign prompts (the benign refusal rate and
the change in mean per-token log-likelihood of the undefended model's own answers,
:meth:`explorer.defenses.Defense.utility`) and kept in ``<out>/utility/<defense>.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from explorer.attacks import get_attack, list_attacks
from explorer.core.chat import check_system
from explorer.core.defaults import RESEARCH_MAX_NEW_TOKENS
from explorer.core.errors import InputError
from explorer.core.route import Route
from explorer.defenses import Defense, Evidence, InForce, get_defense, list_defenses
from explorer.evaluation.evaluate import evaluate, read_jsonl
from explorer.research.common import ResultMixin, judge_name, resolve_judge

if TYPE_CHECKING:
    from explorer.core.model import MoEModel

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


def _kept(moe: MoEModel, defense: Defense, params, path: Path) -> InForce | None:
    """A derived defense kept at ``path`` by an earlier run, or None; refused in one line
    when it was derived with other parameters."""
    if not path.is_file():
        return None
    record = Route.load(path)
    kept = record.info.get("params", defense.Params.defaults())
    if kept != params.to_dict():
        raise InputError(f"{path} was derived with other {defense.name} parameters "
                         f"({kept}); give another --out, or remove that file")
    return defense.in_force(moe, record)


def defense_in_force(moe: MoEModel, name: str, folder: Path, *, params=None, judge=None,
                     seed: int = 0, evidence_prompts: Sequence[str] | None = None,
                     max_new_tokens: int = RESEARCH_MAX_NEW_TOKENS,
                     load: Callable[[str], MoEModel] | None = None,
                     evidence: list | None = None) -> InForce:
    """Defense ``name`` of the registry, with ``params`` (its Params, or a dict of them),
    built for ``moe``. One derived from evidence reads RoSais and F-SOUR evidence gathered
    on ``evidence_prompts`` (default: the first :data:`EVIDENCE_PROMPTS` of the project's
    own harmful prompts) and is kept in ``folder/<name>.json`` and reused from there;
    ``evidence``: a one-item list the gathered evidence is cached in across defenses.
    ``load(path)``: how a defense that replaces the model loads its checkpoint."""
    from explorer.research.defense import gather_evidence
    defense = get_defense(name)
    params = defense.Params.parse(params)
    if not defense.needs_evidence:
        return defense.build(moe, params, load=load)
    path = folder / f"{name}.json"
    kept = _kept(moe, defense, params, path)
    if kept is not None:
        return kept
    if evidence is None:
        evidence = []
    if evidence_prompts is None:
        from explorer.research.common import harmful_prompts
        evidence_prompts = harmful_prompts()[:EVIDENCE_PROMPTS]
    if not evidence:
        rosais_results, routes = gather_evidence(moe, list(evidence_prompts), seed=seed,
                                                 judge=judge, max_new_tokens=max_new_tokens)
        evidence.append(Evidence(rosais_results, routes))
    applied = defense.build(moe, params, evidence=evidence[0])
    applied.record.info["evidence_prompts"] = list(evidence_prompts)
    folder.mkdir(parents=True, exist_ok=True)
    applied.record.save(path)
    return applied


def _utility(moe: MoEModel, name: str, applied: InForce, benign: Sequence[str], judge,
             max_new_tokens: int, folder: Path, system: str | None = None) -> dict:
    path = folder / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    u = get_defense(name).utility(moe, applied, benign, max_new_tokens=max_new_tokens,
                                  judge=judge, system=system)
    r = u.routes[0]
    out = {"refusal_rate": r["refusal_rate"], "baseline_refusal_rate": u.baseline_refusal_rate,
           "refusal_change": r["refusal_change"], "ll_change": r["ll_change"],
           "n": len(u.prompts)}
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out), encoding="utf-8")
    return out


def check_defenses(defenses: Sequence[str], defense_params: Mapping[str, Any] | None = None,
                   system: str | None = None) -> dict:
    """Each of ``defenses`` (names the grid offers) with its parameters checked (a dict of
    name -> Params), before anything loads; :class:`InputError` in one line naming the
    first unknown defense, a bad parameter, or a system prompt a defense refuses."""
    offered = list_defenses("grid")
    bad = [d for d in defenses if d not in offered]
    if bad or not defenses:
        raise InputError(f"unknown defense {bad[0] if bad else '(none given)'!r}; choose from "
                         f"{offered}")
    out = {}
    for d in defenses:
        defense = get_defense(d)
        defense.check_system(system)
        out[d] = defense.Params.parse((defense_params or {}).get(d))
    return out


def run_grid(moe: MoEModel, datasets: Mapping[str, list[dict]], out, *,
             attacks: Sequence[str], defenses: Sequence[str] = ("none",),
             benign: Sequence[str] = (), load: Callable[[str], MoEModel] | None = None,
             judge=None,
             seed: int = 0, max_new_tokens: int = RESEARCH_MAX_NEW_TOKENS,
             params: Mapping[str, Mapping[str, Any]] | None = None,
             defense_params: Mapping[str, Any] | None = None, resume: bool = True,
             evidence_prompts: Sequence[str] | None = None, command: str = "",
             system: str | None = None,
             on_cell: Callable[[GridCell], None] | None = None,
             on_row: Callable[[str, str, str, int, int], None] | None = None) -> GridResult:
    """Run every attack against every defense on every dataset (rows from
    :func:`explorer.evaluation.datasets.load_dataset_rows`, keyed by a short name) and
    return the grid (see the module docs). ``params``: per attack, its parameters (as
    ``evaluate`` takes them); ``defense_params``: per defense, its parameters.
    ``load(path)``: how a defense that replaces the model (``hardened``) loads its
    checkpoint (``defense_params["hardened"]["checkpoint"]``, or the bundled one for the
    demo model). ``resume``: keep
    the rows already in the output folder (the default); False starts every cell afresh.
    ``system``: the system prompt every prompt is templated with (a defense's own, the
    self-reminder's, comes after it; a defense that takes none, the hardened checkpoint,
    refuses it). ``on_cell`` gets each finished cell; ``on_row(dataset, defense, attack,
    done, total)`` each row."""
    offered = list_attacks("evaluate")
    bad = [a for a in attacks if a not in offered]
    if bad or not attacks:
        raise InputError(f"unknown attack {bad[0] if bad else '(none given)'!r}; choose from "
                         f"{offered}")
    if not datasets:
        raise InputError("no dataset given")
    system = check_system(system)
    chosen = check_defenses(defenses, defense_params, system)
    for d, p in chosen.items():  # before any cell runs: a missing checkpoint, ...
        get_defense(d).check(moe, p, load=load)
    judge = resolve_judge(judge)
    out = Path(out)
    params = {a: dict(v) for a, v in (params or {}).items()}
    # attacks that copy route sizes (random) run after the attack that gives them (F-SOUR)
    order = sorted(attacks, key=lambda a: get_attack(a).needs_sizes)
    givers = [a for a in attacks if get_attack(a).gives_sizes]
    cells: list[dict] = []
    utility: dict[str, dict] = {}
    evidence: list = []
    replaced: dict[str, Any] = {}
    t0 = time.perf_counter()
    for d in defenses:
        applied = defense_in_force(moe, d, out / "defenses", params=chosen[d], judge=judge,
                                   seed=seed, evidence_prompts=evidence_prompts,
                                   max_new_tokens=max_new_tokens, load=load,
                                   evidence=evidence)
        if applied.model is not moe:
            replaced[d] = applied.model.info.provenance()
        model, route = applied.model, applied.route
        templated = applied.system(system)
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
            utility[d] = _utility(moe, d, applied, benign, judge, max_new_tokens,
                                  out / "utility", system)
    res = GridResult(datasets=list(datasets), attacks=list(attacks), defenses=list(defenses),
                     cells=cells, utility=utility, judge=judge_name(judge), command=command,
                     info=dict(moe.provenance(system), seed=seed, max_new_tokens=max_new_tokens,
                               params=params, out=str(out),
                               defense_params={d: p.to_dict() for d, p in chosen.items()},
                               hardened=replaced.get("hardened"), replaced=replaced,
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
    from explorer.evaluation.results import bounded_file
    p = Path(path)
    if p.is_dir():
        p = p / "grid.json"
    p = bounded_file(p, p.name, "a grid")
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
