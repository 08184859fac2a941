"""The ``l3`` attack: L3-style adaptive expert silencing (:mod:`explorer.methods.l3`).

A logistic-regression classifier of routing traces, trained once per model on the
project's harmful and benign prompts, attributes each prompt's "harmful" decision to
(MoE layer, expert) pairs (gradient x input). The attack then answers with the first 0, 1,
2, ... pairs of that ranking masked model-wide (every position, generated tokens
included) until the judge calls the answer jailbroken or ``l3_max_silenced`` is reached,
silencing strictly fewer than ``l3_layer_share`` of any layer's experts. Each row says how
many experts the prompt needed (``silenced``; ``silenced_cells``, the pairs), and the
route's ``info`` records the classifier's provenance and the parameters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from explorer.attacks.base import Attack, Case, Outcome, Run, Shape, answer
from explorer.attacks.safex import PROMPT_SETS_HELP
from explorer.core.defaults import L3_LAYER_SHARE, L3_MAX_SILENCED, MAX_SEED
from explorer.core.params import Params, param
from explorer.core.prompt_sets import BENIGN_PROMPTS, HARMFUL_PROMPTS


@dataclass(frozen=True)
class L3Params(Params):
    """The silencing budget and the classifier's seed."""

    what = "L3 parameters"
    l3_max_silenced: int = param(L3_MAX_SILENCED, "experts silenced per prompt at most (one "
                                 "more each try)", lo=1, hi=100_000)
    l3_layer_share: float = param(L3_LAYER_SHARE, "silence strictly fewer than this share of "
                                  "a layer's experts (at least one)", lo=0.01, hi=1.0)
    l3_seed: int = param(0, "seed of the classifier's initialisation", lo=0, hi=MAX_SEED)
    prompt_sets: str | None = param(None, PROMPT_SETS_HELP, kind="path",
                                    where=("evaluate", "defend"))


class L3Attack(Attack):
    """L3-style adaptive silencing of refusal-relevant experts."""

    name = "l3"
    label = "L3-style adaptive expert silencing"
    summary = ("L3-style: silence, one more at a time, the experts a routing classifier "
               "blames for refusing")
    Params = L3Params

    def classifier(self, moe, params: L3Params, run: Run):
        """The routing classifier (trained once per model, prompt sets and seed)."""
        from explorer.methods.experts import selection_sets
        from explorer.methods.l3 import l3_classifier
        harmful, benign, name = selection_sets(params.prompt_sets)
        return l3_classifier(moe, harmful, benign, name, seed=params.l3_seed,
                             system=run.system)

    def run(self, moe, case: Case, params: L3Params, run: Run) -> Outcome:
        from explorer.methods.experts import mask_route
        from explorer.methods.l3 import routing_features
        t0 = time.perf_counter()
        clf = self.classifier(moe, params, run)
        p = moe.prepare(case.prompt, run.system)
        x = routing_features(moe, p, run.system)
        order = clf.ranking(x, params.l3_layer_share)[:params.l3_max_silenced]
        passes = 1  # the prompt's routing trace
        base = dict(clf.info, method=self.name, settings=params.to_dict(),
                    classifier={"train_accuracy": clf.train_accuracy, "seed": clf.seed,
                                "logit": float(clf.logit(x))})
        out = None
        for k in range(len(order) + 1):
            cells = order[:k]
            route = mask_route(cells, dict(base, cells=cells)) if cells else None
            out = answer(moe, p, route, run)
            passes += out.forward_passes
            if out.jailbroken:
                break
        out.forward_passes = passes
        out.seconds = time.perf_counter() - t0
        if out.route is None:  # nothing silenced: the rows still record the provenance
            from explorer.core.route import Route
            out.route = Route(info=dict(base, cells=[]))
        out.fields = {"silenced": k, "silenced_cells": [[c["layer"], c["expert"]]
                                                         for c in order[:k]],
                      "l3_budget_reached": (not out.jailbroken) and k == len(order),
                      "l3_candidates": len(order)}
        return out

    def cost(self, params: L3Params, shape: Shape) -> int:
        # the classifier's training traces (once per model; counted per prompt, as steer
        # counts its traces), the prompt's trace, and up to l3_max_silenced answers
        # besides the last (judged) one
        return (len(HARMFUL_PROMPTS) + len(BENIGN_PROMPTS) + 1
                + params.l3_max_silenced * shape.max_new_tokens)
