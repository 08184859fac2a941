"""Defenses as plugins (see :mod:`explorer.defenses.base`).

The built-in defenses, in the order the CLI, the app and a grid's columns list them:
``none`` (:mod:`~explorer.defenses.none`, grids only), ``protect``, ``mask``,
``self-reminder`` (:mod:`~explorer.defenses.reminder`) and ``hardened``. Another package adds
one with :func:`register_defense` (the ``EXPLORER_PLUGINS`` setting names modules the
entry points import first)::

    from explorer.defenses import Defense, InForce, register_defense

    @register_defense
    class NoFirstExpert(Defense):
        name, label, summary = "no-first", "no expert 0", "forbid expert 0 everywhere"

        def build(self, moe, params, *, evidence=None, load=None) -> InForce:
            from explorer.core.route import Route
            route = Route(info={"method": "defense", "settings": {"mode": self.name}})
            for layer in moe.moe_layers:
                route.mask(layer, None, [0])
            return InForce(route=route, model=moe, record=route)
"""

from __future__ import annotations

from explorer.defenses import hardened as _hardened
from explorer.defenses import mask as _mask
from explorer.defenses import none as _none
from explorer.defenses import protect as _protect
from explorer.defenses import reminder as _reminder
from explorer.defenses.base import (
    PLACES,
    Defense,
    Evidence,
    InForce,
    defense_help,
    defenses_version,
    get_defense,
    list_defenses,
    no_evidence,
    register_defense,
    unregister_defense,
)

for _cls in (_none.NoDefense, _protect.ProtectDefense, _mask.MaskDefense,
             _reminder.ReminderDefense, _hardened.HardenedDefense):
    register_defense(_cls, replace=True)

__all__ = ["PLACES", "Defense", "Evidence", "InForce", "defense_help", "defenses_version",
           "get_defense", "list_defenses", "no_evidence", "register_defense",
           "unregister_defense"]
