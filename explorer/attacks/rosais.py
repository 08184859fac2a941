"""The ``rosais`` attack: score every router with RoSais, then mask the top-L routers' best
masks at every position and answer (:func:`explorer.methods.rosais.rosais`)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from explorer.attacks.base import Attack, Case, Outcome, Remembered, Run, Shape
from explorer.core.defaults import MAX_SAMPLES, ROSAIS_MASK_RATIO, ROSAIS_SAMPLES, ROSAIS_TOP
from explorer.core.params import Params, param


@dataclass(frozen=True)
class RosaisParams(Params):
    """RoSais's parameters."""

    what = "RoSais parameters"
    samples: int = param(ROSAIS_SAMPLES, "random masks per router (the paper's S1)", lo=1,
                         hi=MAX_SAMPLES)
    top: int = param(ROSAIS_TOP, "routers masked together after scoring (the paper's L)",
                     lo=0, hi=4096)
    mask_ratio: float = param(ROSAIS_MASK_RATIO, "share of a router's experts one random "
                              "mask forbids", kind="ratio")


class RosaisAttack(Attack):
    """RoSais top-L masking."""

    name = "rosais"
    label = "RoSais top-L masking"
    summary = "route from router safety scores (top-L routers masked)"
    Params = RosaisParams

    def run(self, moe, case: Case, params: RosaisParams, run: Run) -> Outcome:
        from explorer.methods.rosais import rosais
        t0 = time.perf_counter()
        judge = Remembered(run.judge)
        res = rosais(moe, case.prompt, samples=params.samples, seed=run.seed, top=params.top,
                     mask_ratio=params.mask_ratio, max_new_tokens=run.max_new_tokens,
                     judge=judge, system=run.system)
        return Outcome(prompt=res.prompt, completion=res.completion,
                       verdict=judge.judge(res.prompt, res.completion), route=res.route,
                       forward_passes=res.forward_passes, seconds=time.perf_counter() - t0,
                       fields={"top_layers": list(res.top_layers or [])}, result=res)

    def cost(self, params: RosaisParams, shape: Shape) -> int:
        # one forward per mask and router, the unmasked baseline and its answer
        return params.samples * shape.moe_layers + 1 + shape.max_new_tokens
