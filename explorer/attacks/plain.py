"""The ``none`` attack: the model's own greedy answer, no route (the baseline every attack is
compared with)."""

from __future__ import annotations

from explorer.attacks.base import Attack, Case, Outcome, Run, answer


class NoAttack(Attack):
    """No attack: the plain greedy answer."""

    name = "none"
    label = "no attack"
    summary = "plain greedy answer, no route"
    routes = False

    def run(self, moe, case: Case, params, run: Run) -> Outcome:
        return answer(moe, case.prompt, None, run)
