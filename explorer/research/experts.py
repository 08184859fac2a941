"""Expert pages at the research layer: the measurement and its result live one layer down,
in :mod:`explorer.methods.experts` (so that attacks such as ``safex`` and ``l3`` can use
them); this module re-exports them under their earlier home and adds what needs the
evaluation layer (:func:`dataset_sets`, goals read from benchmark files)."""

from __future__ import annotations

from explorer.methods.experts import (  # noqa: F401  (their home is methods; public here too)
    BUILTIN_SET,
    CACHE_VERSION,
    EXPERT_BOOTSTRAP,
    EXPERT_CONTEXTS,
    EXPERT_TOP_TOKENS,
    EXPERT_WINDOW,
    ROUTER_TIE_BAND,
    SETS,
    ExpertStats,
    bootstrap_weights,
    builtin_sets,
    cache_path,
    cached_expert_stats,
    expert_stats,
    layer_rosais,
    route_rows,
    set_hash,
)


def dataset_sets(harmful: str, benign: str, limit: int | None = None, *,
                 offline: bool = False) -> tuple[list[str], list[str]]:
    """The goals of two datasets (CSV paths or hub names, see
    :func:`explorer.evaluation.datasets.load_dataset_rows`): harmful and benign."""
    from explorer.evaluation.datasets import load_dataset_rows
    return ([r["goal"] for r in load_dataset_rows(harmful, limit, offline=offline)],
            [r["goal"] for r in load_dataset_rows(benign, limit, offline=offline)])


__all__ = ["BUILTIN_SET", "ExpertStats", "bootstrap_weights", "builtin_sets", "cache_path",
           "cached_expert_stats", "dataset_sets", "expert_stats", "layer_rosais", "route_rows",
           "set_hash"]
