"""L3-style adaptive silencing: a classifier of routing traces tells harmful from benign
requests, its decision is attributed to (MoE layer, expert) pairs, and the attack silences
the most refusal-relevant pairs of each prompt one more at a time.

The project's own implementation of the idea published as Large Language Lobotomy (L3,
te Lintelo et al., 2026: a classifier of routing patterns, gradient attribution to
experts, adaptive silencing of under 20% of a layer's experts). Here:

- **Features.** A prompt's routing trace (which experts each templated token used at
  each MoE layer) becomes one vector: per (layer, expert), the share of the prompt's
  tokens whose top-k includes it (the expert pages' per-prompt frequencies,
  :meth:`~explorer.methods.experts.ExpertStats.per_prompt`). The training prompts are
  the project's own harmful and benign sets (their statistics are computed once per
  model; never a benchmark).
- **Classifier.** Logistic regression on the standardised features (the training mean
  subtracted, divided by the spread), trained in torch with a seeded initialisation, L2
  weight decay and full-batch Adam: small, deterministic, and enough to separate two
  dozen prompts. Its logit is high for "harmful" (the requests the model refuses).
- **Attribution: gradient x input.** For a prompt with standardised features ``z``, each
  pair's attribution is ``z_i * d logit / d z_i``. For this linear classifier that is
  ``w_i * z_i`` and the attributions sum *exactly* to ``logit(z) - logit(0)``, where
  ``z = 0`` is the average training prompt: the method is then the same as Integrated
  Gradients from that baseline (completeness holds), so a pair's attribution is its exact
  share of how much more harmful-looking this prompt's routing is than the average
  prompt's. Silencing an expert can only lower its use, so the candidates are the pairs
  this prompt uses *more* than the average prompt (``z_i > 0``) whose use pushes the
  decision towards "harmful" (``w_i > 0``): exactly the pairs of positive attribution
  that silencing can act on (a pair of positive attribution because the prompt uses it
  *less* than average, ``w_i < 0`` and ``z_i < 0``, is left alone). They are ranked by
  attribution, per prompt.
- **Silencing** (in :mod:`explorer.attacks.l3`): the first 0, 1, 2, ... pairs of the
  prompt's ranking are masked model-wide (every position, generated tokens included)
  until the judge calls the answer jailbroken or ``max_silenced`` is reached, never more
  than strictly below ``layer_share`` of a layer's experts (and never so many that fewer
  than top-k stay allowed).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch

from explorer.core.chat import check_system
from explorer.core.defaults import L3_LAYER_SHARE
from explorer.core.errors import InputError
from explorer.core.result import ResultMixin
from explorer.core.trace import trace
from explorer.methods.experts import ExpertStats, memo_expert_stats, set_hash

if TYPE_CHECKING:
    from explorer.core.model import MoEModel

#: Training of the classifier: Adam steps, learning rate and L2 weight decay.
L3_EPOCHS = 400
L3_LR = 0.05
L3_L2 = 1e-2


@dataclass
class RoutingClassifier(ResultMixin):
    """A logistic-regression classifier of routing traces (see the module docs).
    Features are the per-(layer, expert) selection frequencies of a prompt, in the order
    ``[(layer, e) for layer, n in zip(moe_layers, num_experts) for e in range(n)]``;
    ``mean`` and ``scale`` standardise them; ``weight`` and ``bias`` give the logit of
    "harmful". ``train_accuracy`` on the training prompts; ``info``: provenance."""

    model: str
    moe_layers: list[int]
    num_experts: list[int]
    top_k: list[int]
    weight: list[float]
    bias: float
    mean: list[float]
    scale: list[float]
    seed: int = 0
    epochs: int = L3_EPOCHS
    train_accuracy: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def cells(self) -> list[tuple[int, int]]:
        """The (layer, expert) of every feature."""
        return [(lay, e) for lay, n in zip(self.moe_layers, self.num_experts)
                for e in range(n)]

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``x`` (..., cells) as the classifier reads them."""
        mean = torch.tensor(self.mean, dtype=torch.float64)
        scale = torch.tensor(self.scale, dtype=torch.float64)
        return (x.double() - mean) / scale

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        """The logit of "harmful" for features ``x`` (..., cells)."""
        w = torch.tensor(self.weight, dtype=torch.float64)
        return self.standardise(x) @ w + self.bias

    def attribution(self, x: torch.Tensor) -> torch.Tensor:
        """Gradient x input of the logit for one prompt's features ``x`` (cells,), on the
        standardised features: each pair's share of ``logit(x)`` minus the logit of the
        average training prompt (see the module docs)."""
        with torch.inference_mode(False), torch.enable_grad():
            z = self.standardise(torch.tensor(x.tolist(), dtype=torch.float64))
            z.requires_grad_(True)
            w = torch.tensor(self.weight, dtype=torch.float64)
            (z @ w + self.bias).backward()
            return (z.grad * z).detach()

    def ranking(self, x: torch.Tensor, layer_share: float = L3_LAYER_SHARE) -> list[dict]:
        """The pairs to silence for features ``x``, most refusal-relevant first: those with
        a positive attribution that the prompt uses more than the average prompt (see the
        module docs), at most :func:`layer_cap` a layer. Each ``{"layer", "expert",
        "attribution"}``."""
        att = self.attribution(x)
        above = self.standardise(x) > 0
        caps = {lay: layer_cap(n, k, layer_share)
                for lay, n, k in zip(self.moe_layers, self.num_experts, self.top_k)}
        order = sorted(range(len(att)), key=lambda i: (-float(att[i]), i))
        out, used = [], {}
        for i in order:
            if float(att[i]) <= 0:
                break
            lay, e = self.cells()[i]
            if not bool(above[i]) or used.get(lay, 0) >= caps[lay]:
                continue
            used[lay] = used.get(lay, 0) + 1
            out.append({"layer": lay, "expert": e, "attribution": float(att[i])})
        return out


def layer_cap(num_experts: int, top_k: int, share: float = L3_LAYER_SHARE) -> int:
    """Experts of one layer silenced at most: strictly fewer than ``share`` of them (at
    least one), and never so many that fewer than ``top_k`` stay allowed."""
    below = max(1, math.ceil(share * num_experts) - 1)
    return max(0, min(below, num_experts - top_k))


def train_classifier(stats: ExpertStats, *, seed: int = 0, epochs: int = L3_EPOCHS,
                     lr: float = L3_LR, l2: float = L3_L2) -> RoutingClassifier:
    """Fit the classifier on the per-prompt frequencies of ``stats``' harmful (label 1)
    and benign (label 0) prompts; deterministic for a ``seed`` (seeded initialisation,
    full-batch Adam on the CPU in float64)."""
    h, b = stats.per_prompt("harmful"), stats.per_prompt("benign")
    x = torch.cat([h, b])
    y = torch.cat([torch.ones(len(h)), torch.zeros(len(b))]).double()
    mean = x.mean(0)
    scale = x.std(0, unbiased=False).clamp(min=1e-6)
    z = (x - mean) / scale
    g = torch.Generator().manual_seed(int(seed))
    w = (torch.randn(x.shape[1], generator=g, dtype=torch.float64) * 0.01).requires_grad_(True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([w, bias], lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    with torch.inference_mode(False), torch.enable_grad():
        for _ in range(int(epochs)):
            opt.zero_grad()
            loss = loss_fn(z @ w + bias, y) + l2 * (w * w).sum()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = float(((z @ w + bias > 0).double() == y).double().mean())
    return RoutingClassifier(
        model=stats.model, moe_layers=list(stats.moe_layers),
        num_experts=list(stats.num_experts), top_k=list(stats.top_k),
        weight=w.detach().tolist(), bias=float(bias.detach()), mean=mean.tolist(),
        scale=scale.tolist(), seed=int(seed), epochs=int(epochs), train_accuracy=acc,
        info=dict(stats.info, classifier="logistic regression", lr=lr, l2=l2))


def l3_classifier(moe: MoEModel, harmful: Sequence[str], benign: Sequence[str],
                  prompt_set: str = "custom", *, seed: int = 0,
                  system: str | None = None) -> RoutingClassifier:
    """The classifier of ``moe``'s routing on these sets (the attack passes the project's
    own), trained once per model and arguments (the model's cache)."""
    system = check_system(system)
    key = ("l3", set_hash(harmful, benign, system), int(seed))

    def build() -> RoutingClassifier:
        stats = memo_expert_stats(moe, harmful, benign, prompt_set, system=system)
        clf = train_classifier(stats, seed=seed)
        clf.info = json.loads(json.dumps(dict(
            clf.info, prompt_set=prompt_set, prompts={"harmful": len(harmful),
                                                      "benign": len(benign)},
            method_source="L3 (te Lintelo et al. 2026), the project's implementation")))
        return clf

    return moe.cache.memo(moe.cache.results, key, build, limit=64)


def routing_features(moe: MoEModel, prompt, system: str | None = None) -> torch.Tensor:
    """One prompt's features (one forward over the templated prompt, no route): per
    (layer, expert), the share of its tokens whose top-k includes the expert."""
    tr = trace(moe, prompt, max_new_tokens=0, record_logits=False, system=system)
    n = max(1, tr.prompt_tokens)
    rows = []
    for i, per_token in enumerate(tr.experts):
        counts = torch.zeros(tr.num_experts[i], dtype=torch.float64)
        for chosen in per_token[:tr.prompt_tokens]:
            for e in chosen:
                counts[e] += 1
        rows.append(counts / n)
    return torch.cat(rows)


def check_share(share: float) -> float:
    """``share`` if it lies in (0, 1]; InputError otherwise."""
    if not 0.0 < float(share) <= 1.0:
        raise InputError(f"layer_share must lie in (0, 1], got {share}")
    return float(share)


__all__ = ["L3_EPOCHS", "RoutingClassifier", "check_share", "l3_classifier", "layer_cap",
           "routing_features", "train_classifier"]
