"""Sparse Safety Explorer: record, force and mask expert routing in MoE language models.

The public API (names load lazily, so ``import explorer`` is cheap and the CLI's
``--help`` needs neither torch nor transformers):

- :func:`load_model` -> :class:`MoEModel` (the demo model by default, a local folder or a
  hub id)
- :class:`Route` / :class:`RouteEdit`: what to force or mask, where (JSON round-trip)
- :func:`trace` -> :class:`RoutingTrace`: per layer and token, experts, weights, logits
- :func:`generate` (and :func:`generate_recorded`, which also returns the routing records),
  :func:`target_logprob`, :func:`logits_for_routes`, :func:`prefill`: forwards with routes
  (:mod:`explorer.core.forward`)
- :func:`rosais` -> :class:`RosaisResult` and :func:`fsour` -> :class:`FsourResult`: the
  paper's two methods (:mod:`explorer.methods`); :func:`steer` and :func:`random_route`:
  the baselines they are compared with; :func:`safex_select` -> :class:`SafexSelection`
  (SAFEx-style stable experts) and :func:`l3_classifier` -> :class:`RoutingClassifier`
  (L3-style routing classifier), the field's expert attacks (``safex``, ``l3``)
- :func:`get_judge`: refusal / jailbreak judges (:mod:`explorer.judges`)
- :func:`get_defense` / :func:`list_defenses`: the defenses' registry
  (:mod:`explorer.defenses`); :func:`run_grid` -> :class:`GridResult`: every attack against
  every defense on dataset slices (:mod:`explorer.bench.grid`)
- :class:`RouteStore`: the SQLite route library (:mod:`explorer.storage`)
- :func:`plan_model` -> :class:`MemoryPlan`: a model's parameters, memory per precision,
  GPUs and search cost from its config alone (:mod:`explorer.bench.plan`)
- :class:`ExplorerError`: the base of every error the explorer raises on purpose;
  :class:`InputError` (bad input, also a ``ValueError``) with :class:`RouteError` and
  :class:`ParamError` under it, and :class:`ModelLoadError`

The package is layered (lowest first): ``core``, ``engine`` / ``judges``, ``methods``,
``attacks``, ``evaluation``, ``research``, ``storage`` / ``viz`` / ``defenses``, ``bench`` /
``demo``, ``cli`` / ``app``; see ``docs/design.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "DEMO_MODEL_DIR": "explorer.core.paths",
    "ExplorerError": "explorer.core.errors",
    "InputError": "explorer.core.errors",
    "ParamError": "explorer.core.errors",
    "LayerInfo": "explorer.core.layers",
    "ModelInfo": "explorer.core.model",
    "ModelLoadError": "explorer.core.errors",
    "MoEModel": "explorer.core.model",
    "load_model": "explorer.core.model",
    "Route": "explorer.core.route",
    "RouteEdit": "explorer.core.route",
    "RouteError": "explorer.core.errors",
    "RouteControl": "explorer.core.control",
    "defended": "explorer.core.control",
    "RoutingTrace": "explorer.core.trace",
    "trace": "explorer.core.trace",
    "generate": "explorer.core.forward",
    "generate_recorded": "explorer.core.forward",
    "logits_for_routes": "explorer.core.forward",
    "prefill": "explorer.core.forward",
    "target_logprob": "explorer.core.forward",
    "get_judge": "explorer.judges",
    "Verdict": "explorer.judges",
    "rosais": "explorer.methods.rosais",
    "RosaisResult": "explorer.methods.rosais",
    "fsour": "explorer.methods.fsour",
    "FsourResult": "explorer.methods.fsour",
    "steer": "explorer.methods.baselines",
    "random_route": "explorer.methods.baselines",
    "safex_select": "explorer.methods.safex",
    "SafexSelection": "explorer.methods.safex",
    "l3_classifier": "explorer.methods.l3",
    "RoutingClassifier": "explorer.methods.l3",
    "RouteStore": "explorer.storage.library",
    "get_defense": "explorer.defenses",
    "list_defenses": "explorer.defenses",
    "run_grid": "explorer.bench.grid",
    "GridResult": "explorer.bench.grid",
    "plan_model": "explorer.bench.plan",
    "MemoryPlan": "explorer.bench.plan",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'explorer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static checkers and IDEs see the real names
    from explorer.bench.grid import GridResult, run_grid
    from explorer.core.control import RouteControl, defended
    from explorer.core.errors import (
        ExplorerError,
        InputError,
        ModelLoadError,
        ParamError,
        RouteError,
    )
    from explorer.core.forward import (
        generate,
        generate_recorded,
        logits_for_routes,
        prefill,
        target_logprob,
    )
    from explorer.core.layers import LayerInfo
    from explorer.core.model import ModelInfo, MoEModel, load_model
    from explorer.core.paths import DEMO_MODEL_DIR
    from explorer.core.route import Route, RouteEdit
    from explorer.core.trace import RoutingTrace, trace
    from explorer.defenses import get_defense, list_defenses
    from explorer.judges import Verdict, get_judge
    from explorer.methods.baselines import random_route, steer
    from explorer.methods.fsour import FsourResult, fsour
    from explorer.methods.l3 import RoutingClassifier, l3_classifier
    from explorer.methods.rosais import RosaisResult, rosais
    from explorer.methods.safex import SafexSelection, safex_select
    from explorer.storage.library import RouteStore
