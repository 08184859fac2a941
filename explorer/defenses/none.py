"""The ``none`` defense: the model as it is (a grid's first column)."""

from __future__ import annotations

from explorer.defenses.base import Defense, InForce


class NoDefense(Defense):
    """No defense: the attacks meet the model as it is."""

    name, label, summary = "none", "none", "the model as it is"
    where = ("grid",)

    def build(self, moe, params, *, evidence=None, load=None) -> InForce:
        from explorer.core.route import Route
        return InForce(route=None, model=moe,
                       record=Route(info={"method": "defense", "settings": {"mode": "none"}}))
