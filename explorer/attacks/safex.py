"""The ``safex`` attack: SAFEx-style stable expert selection (:mod:`explorer.methods.safex`).

The (MoE layer, expert) pairs chosen more on the project's harmful prompts than on its
benign ones, and stably so across bootstrap resamples, are masked model-wide (every
position, generated tokens included) for every prompt. The selection is made once per
model and prompt sets, on the project's own sets (or a JSON file of the user's own), never
on the benchmark being evaluated. Every row records the selection's provenance and
parameters in its route's ``info`` and its fields (``safex_masked``, ``safex_cells``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

from explorer.attacks.base import Attack, Case, Outcome, Run, Shape, answer
from explorer.core.defaults import (
    MAX_GENERATION,
    MAX_SEED,
    SAFEX_ANSWER_TOKENS,
    SAFEX_EXPERTS,
    SAFEX_PHASES,
    SAFEX_PI,
    SAFEX_RESAMPLES,
)
from explorer.core.params import Params, param
from explorer.core.prompt_sets import BENIGN_PROMPTS, HARMFUL_PROMPTS

#: The help of the prompt-sets parameter, which ``safex`` and ``l3`` share (one option).
PROMPT_SETS_HELP = ("a JSON file {\"harmful\": [...], \"benign\": [...]} of the prompts the "
                    "experts are chosen on (default: the project's own sets; never a "
                    "benchmark)")


@dataclass(frozen=True)
class SafexParams(Params):
    """How the stable set is chosen, and how large it is."""

    what = "SAFEx parameters"
    safex_experts: int = param(SAFEX_EXPERTS, "(layer, expert) pairs masked at most: the "
                               "top n stable pairs", lo=1, hi=1_000_000)
    safex_resamples: int = param(SAFEX_RESAMPLES, "bootstrap resamples of the stability "
                                 "selection", lo=1, hi=100_000)
    safex_pi: float = param(SAFEX_PI, "selection probability a pair needs (the share of "
                            "resamples that rank it in the top n)", lo=0.01, hi=1.0)
    safex_seed: int = param(0, "seed of the bootstrap resamples", lo=0, hi=MAX_SEED)
    safex_phase: str = param("request", "positions the frequencies count: the request's "
                             "tokens, the answer's decoding steps, or both",
                             choices=SAFEX_PHASES)
    safex_answer_tokens: int = param(SAFEX_ANSWER_TOKENS, "answer tokens measured per "
                                     "prompt for the answer phase", lo=1, hi=MAX_GENERATION)
    prompt_sets: str | None = param(None, PROMPT_SETS_HELP, kind="path",
                                    where=("evaluate", "defend"))

    def selection(self, moe, system: str | None = None):
        """The :class:`~explorer.methods.safex.SafexSelection` these parameters make on
        ``moe`` (computed once per model and arguments)."""
        from explorer.methods.experts import selection_sets
        from explorer.methods.safex import safex_select
        harmful, benign, name = selection_sets(self.prompt_sets)
        return safex_select(moe, harmful, benign, name, experts=self.safex_experts,
                            resamples=self.safex_resamples, pi=self.safex_pi,
                            seed=self.safex_seed, phase=self.safex_phase,
                            answer_tokens=self.safex_answer_tokens, system=system)


class SafexAttack(Attack):
    """SAFEx-style stable expert selection, masked model-wide."""

    name = "safex"
    label = "SAFEx-style stable expert masking"
    summary = ("SAFEx-style: mask the experts that stay safety-relevant across bootstrap "
               "resamples of the project's prompt sets")
    Params = SafexParams

    def route(self, moe, params: SafexParams, run: Run):
        """The masking route (its ``info``: provenance, the selected cells, parameters)."""
        return params.selection(moe, run.system).route()

    def _answer(self, moe, case: Case, route, run: Run) -> Outcome:
        cells = route.info.get("cells") or []
        return answer(moe, case.prompt, route, run, fields={
            "safex_masked": len(cells),
            "safex_cells": [[c["layer"], c["expert"], c["stability"]] for c in cells]})

    def run(self, moe, case: Case, params: SafexParams, run: Run) -> Outcome:
        return self._answer(moe, case, self.route(moe, params, run), run)

    def run_many(self, moe, cases: Sequence[Case], params: SafexParams,
                 run: Run) -> Iterator[tuple[int, Outcome]]:
        if not cases:
            return
        route = self.route(moe, params, run)
        for i, case in enumerate(cases):
            yield i, self._answer(moe, case, route, run)

    def cost(self, params: SafexParams, shape: Shape) -> int:
        # one batched forward per selection prompt (once per model; counted per prompt, as
        # steer counts its traces), plus the answers generated for the answer phase
        n = len(HARMFUL_PROMPTS) + len(BENIGN_PROMPTS)
        answers = n * params.safex_answer_tokens if params.safex_phase != "request" else 0
        return n + answers
