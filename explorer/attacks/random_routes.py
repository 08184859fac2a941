"""The ``random`` attack, the control for F-SOUR: per prompt a random route with as many
forced cells as that prompt's F-SOUR route (:func:`explorer.methods.baselines.random_route`).
The sizes come from the run (an F-SOUR attack of the same run, or ``evaluate
--reference``'s JSONL); prompts without one are searched with F-SOUR first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

from explorer.attacks.base import Attack, Case, Outcome, Run, Shape, answer, get_attack
from explorer.attacks.fsour import FsourParams, search_budget
from explorer.core.errors import InputError
from explorer.core.jsonl import read_jsonl
from explorer.core.params import param


@dataclass(frozen=True)
class RandomParams(FsourParams):
    """The F-SOUR settings of the searches that size the routes, and where the sizes may
    come from instead."""

    what = "random-route parameters"
    reference_file: str | None = param(None, "an `evaluate --method fsour` JSONL whose route sizes "
                                  "the random routes copy (default: search F-SOUR routes "
                                  "first)", kind="path", flag="--reference",
                                  where=("evaluate",))

    def fsour(self) -> FsourParams:
        """The F-SOUR parameters of the sizing searches."""
        d = self.to_dict()
        d.pop("reference_file")
        return FsourParams(**d)


def reference_sizes(path, rows: list[dict]) -> dict[int, int]:
    """index -> forced cells of each row's route in an ``evaluate --method fsour`` JSONL
    (the sizes ``random`` copies), for the dataset ``rows`` (``index``, ``goal``) it has;
    :class:`InputError` when the file holds no F-SOUR rows or a row's goal differs from the
    dataset's."""
    goals = {r["index"]: r["goal"] for r in rows}
    out, seen = {}, False
    for r in read_jsonl(path):
        if r.get("method") != "fsour" or not isinstance(r.get("index"), int):
            continue
        seen = True
        i = r["index"]
        if i not in goals:
            continue
        if r.get("goal") != goals[i]:
            raise InputError(f"{path} row {i} has another goal than the dataset: not a run "
                             "on this dataset")
        out[i] = len((r.get("route") or {}).get("edits") or [])
    if not seen:
        raise InputError(f"{path} holds no `evaluate --method fsour` rows")
    return out


class RandomAttack(Attack):
    """Random routes of F-SOUR's size."""

    name = "random"
    label = "random routes of F-SOUR's size"
    summary = "a random route as large as the row's F-SOUR route"
    Params = RandomParams
    needs_sizes = True

    def run(self, moe, case: Case, params: RandomParams, run: Run) -> Outcome:
        return next(self.run_many(moe, [case], params, run))[1]

    def run_many(self, moe, cases: Sequence[Case], params: RandomParams,
                 run: Run) -> Iterator[tuple[int, Outcome]]:
        from explorer.methods.baselines import random_route
        sizes = dict(run.sizes)
        origin = {i: "reference" for i in sizes}
        if params.reference_file:
            rows = [{"index": c.index, "goal": c.text} for c in cases]
            for i, n in reference_sizes(params.reference_file, rows).items():
                sizes.setdefault(i, n)
                origin.setdefault(i, "reference")
        missing = [c for c in cases if c.index not in sizes]
        if missing:
            for j, out in get_attack("fsour").run_many(moe, missing, params.fsour(), run):
                sizes[missing[j].index] = len(out.route) if out.route is not None else 0
                origin[missing[j].index] = "search"
        for i, case in enumerate(cases):
            p = moe.prepare(case.prompt, run.system)
            size = sizes[case.index]
            route = random_route(moe, p.num_tokens, size,
                                 seed=run.seed * 1_000_003 + case.index, system=run.system,
                                 prompt=p.text)
            yield i, answer(moe, p, route, run,
                            fields={"reference_edits": size, "reference": origin[case.index]})

    def cost(self, params: RandomParams, shape: Shape) -> int:
        # at worst the sizing search and its answer
        return search_budget(params.candidates, params.max_iters, shape.prompt_tokens,
                             shape.target_tokens) + shape.max_new_tokens
