"""Baselines to compare unsafe routes with: SteerMoE-style expert deactivation and random
routes of a found route's size.

- :func:`steer` (method ``steer``): the project's own implementation of the idea
  published as SteerMoE (steering MoE models by (de)activating experts chosen from paired
  contrasting inputs). Both prompt sets are run through the model without any route; per
  MoE layer and expert the *activation frequency* is the share of prompt tokens whose
  top-k choice includes the expert. The experts whose frequency on the unsafe prompts
  exceeds the one on the safe prompts most (the risk difference) are the ones the model
  uses when it meets a harmful request; the steering route masks them at every position,
  model-wide and for every prompt (it is found once, not per prompt). Activation (making
  an expert always chosen while the router still picks the rest) has no form in a route
  (a forced set fixes all k experts), so only deactivation is implemented.
- :func:`random_route` (method ``random``): the control for a found route: as many forced
  cells, at (position, layer) cells drawn uniformly from the prompt's cells, each forcing a
  uniformly random k-expert set (the same sampler F-SOUR draws its candidates from). If
  random routes of that size flip refusals too, the search is not what makes F-SOUR work.

Both are plain :class:`~explorer.core.route.Route` objects with provenance in ``info``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from explorer.core.chat import check_system
from explorer.core.defaults import STEER_PER_LAYER  # noqa: F401  (its home; public here too)
from explorer.core.errors import InputError
from explorer.core.route import Route
from explorer.core.trace import trace
from explorer.methods.fsour import sample_set

if TYPE_CHECKING:
    from explorer.core.model import MoEModel


def expert_frequencies(moe: MoEModel, prompts: Sequence[str],
                       system: str | None = None) -> list[list[float]]:
    """Per MoE layer (``moe.moe_layers`` order) and expert: the share of the templated
    prompts' tokens (all of them, template included) whose chosen experts include it,
    pooled over ``prompts``, without any route."""
    counts = [[0] * moe.handle(lay).info.num_experts for lay in moe.moe_layers]
    tokens = 0
    for p in prompts:
        tr = trace(moe, p, max_new_tokens=0, record_logits=False, system=system)
        tokens += tr.prompt_tokens
        for i, per_token in enumerate(tr.experts):
            for chosen in per_token[:tr.prompt_tokens]:
                for e in chosen:
                    counts[i][e] += 1
    if not tokens:
        raise InputError("no prompts")
    return [[c / tokens for c in row] for row in counts]


@dataclass
class SteerResult:
    """The steering route and the frequencies it came from (``to_dict`` is JSON)."""

    route: Route
    moe_layers: list[int]
    unsafe_frequency: list[list[float]]
    safe_frequency: list[list[float]]
    cells: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"route": self.route.to_dict(), "moe_layers": list(self.moe_layers),
                "unsafe_frequency": self.unsafe_frequency,
                "safe_frequency": self.safe_frequency, "cells": list(self.cells)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SteerResult":
        return cls(route=Route.from_dict(d["route"]), moe_layers=list(d["moe_layers"]),
                   unsafe_frequency=d["unsafe_frequency"], safe_frequency=d["safe_frequency"],
                   cells=list(d.get("cells") or []))


def steer(moe: MoEModel, unsafe_prompts: Sequence[str], safe_prompts: Sequence[str],
          experts: int | None = None,
          per_layer: int = STEER_PER_LAYER, system: str | None = None) -> SteerResult:
    """The steering route (see the module docs): mask, at every position, the ``experts``
    (layer, expert) cells with the largest positive frequency difference between
    ``unsafe_prompts`` and ``safe_prompts`` (the CLI and the app pass the project's own
    HARMFUL_PROMPTS and BENIGN_PROMPTS, never a benchmark's), at most ``per_layer`` a layer
    and never so many that fewer than top-k experts stay allowed; ``experts`` defaults to
    ``per_layer`` times the number of MoE layers. Ties: the lower layer, then expert."""
    if experts is None:
        experts = per_layer * len(moe.moe_layers)
    if experts < 1 or per_layer < 1:
        raise InputError("experts and per_layer must be at least 1")
    unsafe = [p for p in unsafe_prompts if isinstance(p, str) and p.strip()]
    safe = [p for p in safe_prompts if isinstance(p, str) and p.strip()]
    if not unsafe or not safe:
        raise InputError("steering needs unsafe and safe prompts")
    system = check_system(system)
    fu = expert_frequencies(moe, unsafe, system)
    fs = expert_frequencies(moe, safe, system)
    ranked = sorted(((fu[i][e] - fs[i][e], i, e) for i in range(len(fu))
                     for e in range(len(fu[i]))), key=lambda x: (-x[0], x[1], x[2]))
    picked: dict[int, list[int]] = {}
    cells = []
    for diff, i, e in ranked:
        if len(cells) >= experts or diff <= 0:
            break
        info = moe.handle(moe.moe_layers[i]).info
        mine = picked.setdefault(i, [])
        if len(mine) >= min(per_layer, info.num_experts - info.top_k):
            continue
        mine.append(e)
        cells.append({"layer": moe.moe_layers[i], "expert": e, "difference": diff,
                      "unsafe_frequency": fu[i][e], "safe_frequency": fs[i][e]})
    route = Route(info=dict(moe.provenance(system), method="steer", cells=cells,
                            settings={"experts": experts, "per_layer": per_layer,
                                      "unsafe_prompts": len(unsafe),
                                      "safe_prompts": len(safe)}))
    for i in sorted(picked):
        route.mask(moe.moe_layers[i], None, sorted(picked[i]))
    route.validate(moe.info)
    return SteerResult(route=route, moe_layers=list(moe.moe_layers), unsafe_frequency=fu,
                       safe_frequency=fs, cells=cells)


def random_route(moe: MoEModel, num_tokens: int, size: int, seed: int = 0,
                 layers: Sequence[int] | None = None, system: str | None = None,
                 prompt: str | None = None) -> Route:
    """A random route of ``size`` forced cells on a templated prompt of ``num_tokens``
    tokens (see the module docs); ``layers``: the MoE layers to draw from (default all;
    e.g. those a defense leaves unprotected); ``system`` and ``prompt``: the system prompt
    and prompt of those tokens (provenance only, recorded in ``info``). Seeded: the same
    arguments give the same route."""
    if num_tokens < 1:
        raise InputError("the prompt has no tokens")
    if size < 0:
        raise InputError("size must be non-negative")
    layers = list(moe.moe_layers if layers is None else layers)
    rng = random.Random(seed)
    cells = [(t, lay) for t in range(num_tokens) for lay in layers]
    route = Route(info=dict(moe.provenance(system), method="random", size=size, seed=seed,
                            **({"prompt": prompt} if prompt is not None else {})))
    for t, lay in sorted(rng.sample(cells, min(size, len(cells)))):
        route.force(lay, t, sample_set(rng, moe.handle(lay).info))
    return route
