"""SAFEx-style stable expert selection: the (MoE layer, expert) pairs a model's safety
behaviour leans on, chosen so that the choice does not hinge on which prompts were asked.

The project's own implementation of the idea published as SAFEx (Lai et al., 2025:
safety-critical experts found by a stability-based selection, split into experts that
detect a harmful request and experts that steer the answer). Here:

1. **Statistics.** :func:`~explorer.methods.experts.expert_stats` gives, for every pair and
   every prompt of a harmful and a benign set, the share of the prompt's counted positions
   whose top-k includes the expert: on the templated request (``phase="request"``) or on
   the decoding steps of the model's own greedy answer (``phase="answer"``).
2. **Score.** A pair's score is the mean of those shares over the harmful prompts minus
   the mean over the benign ones (the expert pages' safety relevance).
3. **Stability.** ``resamples`` seeded bootstrap resamples of both sets
   (:func:`~explorer.methods.experts.bootstrap_weights`, the expert pages' resampler)
   each give their own scores; a pair's *selection probability* is the share of resamples
   in which it ranks among the ``experts`` best with a positive score.
4. **Selection.** Pairs whose selection probability reaches ``pi`` and whose score on the
   whole sets is positive, most stable first (ties: higher score, lower layer, lower
   expert), at most ``experts`` of them, and never so many in a layer that fewer than
   top-k experts stay allowed there. ``phase="both"`` pools the two phases' stable pairs
   (each keeps the higher of its two probabilities and names its phases).

The attack (:mod:`explorer.attacks.safex`) masks the selected pairs model-wide: a
:class:`~explorer.core.route.Route` with ``mask(layer, None, experts)``, which route
control applies at every position, generated tokens included.

The statistics are computed once per model and prompt sets (kept in the model's cache,
:func:`~explorer.methods.experts.memo_expert_stats`); never on a benchmark: the default
sets are the project's own (:mod:`explorer.core.prompt_sets`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch

from explorer.core.chat import check_system
from explorer.core.defaults import (
    SAFEX_ANSWER_TOKENS,
    SAFEX_EXPERTS,
    SAFEX_PHASES,
    SAFEX_PI,
    SAFEX_RESAMPLES,
)
from explorer.core.errors import InputError
from explorer.core.result import ResultMixin
from explorer.core.route import Route
from explorer.methods.experts import (
    ExpertStats,
    bootstrap_weights,
    mask_route,
    memo_expert_stats,
    set_hash,
)

if TYPE_CHECKING:
    from explorer.core.model import MoEModel


@dataclass
class SafexSelection(ResultMixin):
    """A stable selection (see the module docs). ``cells``: the selected pairs, most
    stable first, each ``{"layer", "expert", "stability", "score", "phase"}``;
    ``candidates``: the best-scored pairs of each phase with their probabilities (the
    selected ones and the near misses, for the record); the settings it was made with;
    ``info``: provenance (model, prompt sets and their hash, system prompt)."""

    model: str
    phase: str
    experts: int
    resamples: int
    pi: float
    seed: int
    prompt_set: str
    cells: list[dict]
    candidates: list[dict]
    info: dict[str, Any] = field(default_factory=dict)

    def route(self, limit: int | None = None) -> Route:
        """The route that masks the first ``limit`` selected pairs (all by default) at every
        position, with this selection's provenance in ``info``."""
        cells = self.cells if limit is None else self.cells[:max(0, int(limit))]
        return mask_route(cells, dict(self.info, method="safex",
                                      cells=[dict(c) for c in cells], settings=self.settings()))

    def settings(self) -> dict[str, Any]:
        """The parameters this selection was made with."""
        return {"experts": self.experts, "resamples": self.resamples, "pi": self.pi,
                "seed": self.seed, "phase": self.phase, "prompt_set": self.prompt_set}


def stability(stats: ExpertStats, top: int, resamples: int, seed: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair (in :meth:`~explorer.methods.experts.ExpertStats.cells` order): its
    selection probability (the share of ``resamples`` bootstrap resamples of both sets in
    which it ranks among the ``top`` best-scored pairs with a positive score) and its
    score on the whole sets. Seeded by ``seed``."""
    h, b = stats.per_prompt("harmful"), stats.per_prompt("benign")
    score = h.mean(0) - b.mean(0)
    top = max(1, min(int(top), h.shape[1]))
    wh, wb = bootstrap_weights(int(resamples), h.shape[0], b.shape[0], seed)
    diff = wh @ h / h.shape[0] - wb @ b / b.shape[0]          # (resamples, pairs)
    # ties at the cut broken towards the lower pair index, as the full ranking does
    order = torch.sort(-diff, dim=1, stable=True).indices[:, :top]
    hits = torch.zeros_like(diff)
    hits.scatter_(1, order, 1.0)
    hits *= (diff > 0).double()
    return hits.mean(0), score


def _phase_cells(stats: ExpertStats, phase: str, experts: int, resamples: int,
                 seed: int) -> list[dict]:
    prob, score = stability(stats, experts, resamples, seed)
    return [{"layer": lay, "expert": e, "stability": round(float(prob[i]), 6),
             "score": float(score[i]), "phase": phase}
            for i, (lay, e) in enumerate(stats.cells())]


def select_stable(stats: dict[str, ExpertStats], *, experts: int = SAFEX_EXPERTS,
                  resamples: int = SAFEX_RESAMPLES, pi: float = SAFEX_PI, seed: int = 0
                  ) -> tuple[list[dict], list[dict]]:
    """The stable pairs of one or two phases' statistics (``{"request": ..., "answer":
    ...}``), as :class:`SafexSelection` lists them: ``(selected, candidates)``."""
    if experts < 1 or resamples < 1 or not 0.0 < pi <= 1.0:
        raise InputError("SAFEx needs experts >= 1, resamples >= 1 and 0 < pi <= 1")
    pooled: dict[tuple[int, int], dict] = {}
    candidates = []
    caps: dict[int, int] = {}
    for phase, st in stats.items():
        cells = _phase_cells(st, phase, experts, resamples, seed)
        candidates += sorted(cells, key=lambda c: (-c["score"], c["layer"], c["expert"])
                             )[:2 * experts]
        for lay, n, k in zip(st.moe_layers, st.num_experts, st.top_k):
            caps[lay] = n - k
        for c in cells:
            key = (c["layer"], c["expert"])
            old = pooled.get(key)
            if old is None:
                pooled[key] = dict(c)
            else:  # both phases: the higher probability, and the phases that reach pi
                names = [p for p, s in ((old["phase"], old["stability"]),
                                        (c["phase"], c["stability"])) if s >= pi]
                best = old if (old["stability"], old["score"]) >= (c["stability"],
                                                                    c["score"]) else c
                pooled[key] = dict(best, phase="+".join(names) or best["phase"])
    ranked = sorted((c for c in pooled.values() if c["stability"] >= pi and c["score"] > 0),
                    key=lambda c: (-c["stability"], -c["score"], c["layer"], c["expert"]))
    chosen, per_layer = [], {}
    for c in ranked:
        if len(chosen) >= experts:
            break
        if per_layer.get(c["layer"], 0) >= caps.get(c["layer"], 0):
            continue
        per_layer[c["layer"]] = per_layer.get(c["layer"], 0) + 1
        chosen.append(c)
    return chosen, candidates


def safex_select(moe: MoEModel, harmful: Sequence[str], benign: Sequence[str],
                 prompt_set: str = "custom", *, experts: int = SAFEX_EXPERTS,
                 resamples: int = SAFEX_RESAMPLES, pi: float = SAFEX_PI, seed: int = 0,
                 phase: str = "request", answer_tokens: int = SAFEX_ANSWER_TOKENS,
                 system: str | None = None) -> SafexSelection:
    """The SAFEx-style stable selection of ``moe`` on ``harmful`` and ``benign`` prompts
    (named ``prompt_set``; the attack passes the project's own sets), see the module docs.
    ``phase``: ``request`` (the templated prompts), ``answer`` (the decoding steps of each
    prompt's greedy answer of up to ``answer_tokens`` tokens) or ``both``. Computed once
    per model and arguments (the model's cache)."""
    if phase not in SAFEX_PHASES:
        raise InputError(f"unknown SAFEx phase {str(phase)[:20]!r}; choose one of "
                         f"{list(SAFEX_PHASES)}")
    system = check_system(system)
    key = ("safex", set_hash(harmful, benign, system), phase, int(experts), int(resamples),
           float(pi), int(seed), int(answer_tokens) if phase != "request" else 0)

    def build() -> SafexSelection:
        phases = ("request", "answer") if phase == "both" else (phase,)
        stats = {ph: memo_expert_stats(moe, harmful, benign, prompt_set, system=system,
                                       answer_tokens=answer_tokens if ph == "answer" else 0)
                 for ph in phases}
        cells, candidates = select_stable(stats, experts=experts, resamples=resamples,
                                          pi=pi, seed=seed)
        info = dict(moe.provenance(system))
        info.update(prompt_set=prompt_set, prompt_set_hash=set_hash(harmful, benign, system),
                    prompts={"harmful": len(harmful), "benign": len(benign)},
                    answer_tokens=int(answer_tokens) if phase != "request" else 0,
                    method_source="SAFEx (Lai et al. 2025), the project's implementation")
        return SafexSelection(model=moe.name, phase=phase, experts=int(experts),
                              resamples=int(resamples), pi=float(pi), seed=int(seed),
                              prompt_set=prompt_set, cells=cells, candidates=candidates,
                              info=json.loads(json.dumps(info)))

    return moe.cache.memo(moe.cache.results, key, build, limit=64)


__all__ = ["SafexSelection", "safex_select", "select_stable", "stability"]
