"""Sparse Safety Explorer: record, force and mask expert routing in MoE language models.

Public API (see README):

- :func:`load_model` -> :class:`MoEModel` (demo model by default, local folder or hub id)
- :class:`Route` / :class:`RouteEdit`: what to force or mask, where (JSON round-trip)
- :func:`trace` -> :class:`RoutingTrace`: per layer and token, experts, weights, logits
- :mod:`explorer.forward`: batched route evaluation, prefix caches, target log-probs,
  greedy generation with a route
"""

from .forward import generate, logits_for_routes, prefill, target_logprob
from .layers import LayerInfo
from .model import DEMO_MODEL_DIR, ModelInfo, ModelLoadError, MoEModel, load_model
from .route import Route, RouteEdit, RouteError
from .routing import RouteControl
from .trace import RoutingTrace
from .tracer import trace

__version__ = "0.1.0"

__all__ = [
    "DEMO_MODEL_DIR", "LayerInfo", "ModelInfo", "ModelLoadError", "MoEModel", "Route",
    "RouteControl", "RouteEdit", "RouteError", "RoutingTrace", "generate", "load_model",
    "logits_for_routes", "prefill", "target_logprob", "trace", "__version__",
]
