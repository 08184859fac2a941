"""Expert pages, the public home: ``from explorer.experts import expert_stats``.

A facade over :mod:`explorer.research.experts` (the measurement and its result,
:class:`ExpertStats`) and the route library's query for the routes that force or mask an
expert (:meth:`explorer.storage.library.RouteStore.routes_with_expert`). It sits at the
facade level (like ``explorer`` itself) so that it may name both layers.
"""

from __future__ import annotations

from explorer.research.experts import (
    BUILTIN_SET,
    ExpertStats,
    builtin_sets,
    cache_path,
    cached_expert_stats,
    dataset_sets,
    expert_stats,
    layer_rosais,
    route_rows,
    set_hash,
)
from explorer.storage.library import RouteStore


def routes_with_expert(store: RouteStore, layer: int, expert: int, model: str | None = None,
                       **kw) -> list[dict]:
    """The page rows (:func:`route_rows`) of ``store``'s routes that force or mask
    ``expert`` at ``layer`` (of ``model`` when given); ``kw`` as
    :meth:`~explorer.storage.library.RouteStore.routes_with_expert` takes them."""
    return route_rows(store.routes_with_expert(layer, expert, model=model, **kw))


__all__ = ["BUILTIN_SET", "ExpertStats", "builtin_sets", "cache_path", "cached_expert_stats",
           "dataset_sets", "expert_stats", "layer_rosais", "route_rows", "routes_with_expert",
           "set_hash"]
