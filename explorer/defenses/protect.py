"""The ``protect`` defense: pin the most safety-critical routers (see
:func:`explorer.research.defense.derive_defense`, ``mode="protect"``)."""

from __future__ import annotations

from dataclasses import dataclass

from explorer.core.params import Params, param
from explorer.defenses.base import Defense, InForce, no_evidence


@dataclass(frozen=True)
class ProtectParams(Params):
    what = "protect parameters"
    protect_layers: int = param(2, "protect: routers pinned (route edits there are ignored)",
                                lo=1, hi=256)


class ProtectDefense(Defense):
    """Pin, up to ``protect_layers`` routers, alternately the next by mean RoSais score and
    the next layer found routes edit most: edits of any route there are ignored. Without
    an attack the model is exactly the plain model."""

    name, label = "protect", "protect routers"
    summary = "pin the most safety-critical routers, route edits there are ignored"
    Params = ProtectParams
    needs_evidence = True

    def build(self, moe, params, *, evidence=None, load=None) -> InForce:
        from explorer.research.defense import derive_defense
        if not evidence:
            raise no_evidence(self.name)
        route = derive_defense(moe, evidence.rosais_results, evidence.routes, mode="protect",
                               protect_layers=params.protect_layers)
        route.info["params"] = params.to_dict()
        return InForce(route=route, model=moe, record=route)
