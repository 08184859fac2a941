"""The ``replay`` attack: known routes (each on its own prompt) replayed on the model as it
is now, e.g. with a defense in force. It needs routes (``Run.routes``), so ``evaluate``
does not offer it; ``defend --route`` and the Research tab do."""

from __future__ import annotations

from typing import Iterator, Sequence

from explorer.attacks.base import Attack, Case, Outcome, Run, answer


class ReplayAttack(Attack):
    """Replay known routes on their own prompts."""

    name = "replay"
    label = "replay the library routes"
    summary = "the given routes, each on its own prompt"
    in_evaluate = False
    needs_routes = True

    def run(self, moe, case: Case, params, run: Run) -> Outcome:
        raise NotImplementedError("replay runs on the run's routes: use run_many")

    def run_many(self, moe, cases: Sequence[Case], params,
                 run: Run) -> Iterator[tuple[int, Outcome]]:
        """One outcome per route of ``run.routes`` that names its prompt (``cases`` are not
        used: a route's positions belong to its own prompt), mapped from the end of the
        templated prompt when the system prompt differs from the route's own."""
        from explorer.core.layout import map_route
        for i, r in enumerate(run.routes):
            p = r.info.get("prompt")
            if not isinstance(p, str):
                continue
            mapped = map_route(moe, r, p, "end", system=run.system)
            yield i, answer(moe, p, mapped, run, fields={"edits_kept": len(mapped)})
