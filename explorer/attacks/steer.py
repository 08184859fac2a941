"""The ``steer`` attack: one SteerMoE-style route for every prompt, deactivating model-wide the
experts the project's harmful prompts use more than its benign ones
(:func:`explorer.methods.baselines.steer`; never derived from a benchmark)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

from explorer.attacks.base import Attack, Case, Outcome, Run, Shape, answer
from explorer.core.defaults import STEER_PER_LAYER
from explorer.core.params import Params, param
from explorer.core.prompt_sets import BENIGN_PROMPTS, HARMFUL_PROMPTS


@dataclass(frozen=True)
class SteerParams(Params):
    """How many experts the steering route deactivates."""

    what = "steering parameters"
    experts: int | None = param(None, "(layer, expert) cells deactivated model-wide "
                                "(default: the per-layer cap x the MoE layers)", kind="int",
                                lo=1, hi=1_000_000, flag="--steer-experts")
    per_layer: int = param(STEER_PER_LAYER, "experts deactivated per MoE layer at most",
                           lo=1, hi=4096, flag="--steer-per-layer")


class SteerAttack(Attack):
    """SteerMoE-style expert deactivation."""

    name = "steer"
    label = "SteerMoE-style expert deactivation"
    summary = "SteerMoE-style expert deactivation from the project's prompt sets"
    Params = SteerParams

    def route(self, moe, params: SteerParams, run: Run):
        """The steering route (found once per run, from the project's own prompt sets)."""
        from explorer.methods.baselines import steer
        return steer(moe, HARMFUL_PROMPTS, BENIGN_PROMPTS, experts=params.experts,
                     per_layer=params.per_layer, system=run.system).route

    def run(self, moe, case: Case, params: SteerParams, run: Run) -> Outcome:
        return answer(moe, case.prompt, self.route(moe, params, run), run)

    def run_many(self, moe, cases: Sequence[Case], params: SteerParams,
                 run: Run) -> Iterator[tuple[int, Outcome]]:
        if not cases:
            return
        route = self.route(moe, params, run)
        for i, case in enumerate(cases):
            yield i, answer(moe, case.prompt, route, run)

    def cost(self, params: SteerParams, shape: Shape) -> int:
        # a routing trace of every prompt of the two sets
        return len(HARMFUL_PROMPTS) + len(BENIGN_PROMPTS)
