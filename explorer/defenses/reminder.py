"""The ``self-reminder`` defense: a system prompt that reminds the model to answer
responsibly (:data:`explorer.research.defense.SELF_REMINDER`), templated after the user's
own system prompt. No routing change; it needs no evidence."""

from __future__ import annotations

from dataclasses import dataclass

from explorer.core.params import Params, param
from explorer.defenses.base import Defense, InForce


@dataclass(frozen=True)
class ReminderParams(Params):
    what = "self-reminder parameters"
    reminder: str | None = param(None, "self-reminder: the reminder's text (default: the "
                                 "project's own)", kind="text", max_chars=2000)


class ReminderDefense(Defense):
    """Every prompt is templated under the reminder system prompt."""

    name, label = "self-reminder", "self-reminder"
    summary = "a system prompt reminding the model to answer responsibly (needs no evidence)"
    Params = ReminderParams

    def build(self, moe, params, *, evidence=None, load=None) -> InForce:
        from explorer.research.defense import SELF_REMINDER, self_reminder_defense
        route = self_reminder_defense(moe, params.reminder or SELF_REMINDER)
        return InForce(route=route, model=moe, record=route)
