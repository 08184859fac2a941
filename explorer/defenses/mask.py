"""The ``mask`` defense: forbid the experts attacks use (see
:func:`explorer.research.defense.derive_defense`, ``mode="mask"``). It backfires on the
demo model: the forbidden experts also carry refusals (docs/results.md)."""

from __future__ import annotations

from dataclasses import dataclass

from explorer.core.params import Params, param
from explorer.defenses.base import Defense, InForce, no_evidence


@dataclass(frozen=True)
class MaskParams(Params):
    what = "mask parameters"
    min_count: int = param(2, "mask: forbid experts forced in at least this many found routes",
                           lo=1, hi=10_000)
    rosais_layers: int = param(2, "mask: routers (highest mean RoSais) whose experts are "
                               "ranked by their masking effect", lo=0, hi=256)
    rosais_experts: int = param(1, "mask: experts forbidden in each of those routers",
                                lo=0, hi=256)
    max_per_layer: int = param(2, "mask: at most this many experts forbidden per layer",
                               lo=0, hi=256)


class MaskDefense(Defense):
    """Forbid, model-wide, the (layer, expert) cells found routes force and RoSais blames,
    at most ``max_per_layer`` a layer."""

    name, label = "mask", "mask experts"
    summary = "forbid the experts attacks use (backfires on the demo model)"
    Params = MaskParams
    needs_evidence = True

    def build(self, moe, params, *, evidence=None, load=None) -> InForce:
        from explorer.research.defense import derive_defense
        if not evidence:
            raise no_evidence(self.name)
        route = derive_defense(moe, evidence.rosais_results, evidence.routes, mode="mask",
                               min_count=params.min_count, rosais_layers=params.rosais_layers,
                               rosais_experts=params.rosais_experts,
                               max_per_layer=params.max_per_layer)
        route.info["params"] = params.to_dict()
        return InForce(route=route, model=moe, record=route)
