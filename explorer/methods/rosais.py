"""RoSais: router safety importance scores, and unsafe routes made from them.

For each MoE layer l, ``samples`` (S1) random {0, -inf} masks over that router's experts
are applied to its scores on the prompt. p_s is the largest log-prob, over the affirmative
first tokens T_aff (the first token of each affirmative word: "Sure", "Certainly", ...), at
the first answer position under mask s; p the same without a mask. RoSais(l) =
max_s (p_s - p). A high score marks a router whose masking pushes the model towards
complying. Only the first token of each word is scored, as in the paper: a tokenizer that
splits "Certainly" into "C" + "ertainly" scores P("C"). ``affirmative_words`` of the result
says which token stands for which word, with its unmasked log-prob.

Mask ratio (default 0.5): each mask forbids round(ratio * E) experts, capped so at least
top-k remain. Half the experts maximises the number of distinct masks (C(E, E/2) is the
largest binomial), so S1 samples cover the space most evenly, while leaving a router with
E >= 2k as many allowed experts as forbidden ones.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from explorer.core.defaults import (
    ENGINE_NAMES,
    MAX_NEW_TOKENS,
    ROSAIS_MASK_RATIO,
    ROSAIS_SAMPLES,
    ROSAIS_TOP,
)
from explorer.core.errors import InputError
from explorer.core.forward import generate, next_token_logprobs
from explorer.core.route import Route
from explorer.engine.batching import memory_batch_size
from explorer.engine.cone import capture_layer_inputs, cone_logits, cone_logits_direct
from explorer.judges import get_judge

if TYPE_CHECKING:
    from explorer.core.model import MoEModel
    from explorer.core.prompt import Prompt

DEFAULT_AFFIRMATIVE = ("Sure", "Certainly", "Here", "Of course", "Absolutely")


def affirmative_pairs(moe: MoEModel,
                      words: Sequence[str] = DEFAULT_AFFIRMATIVE) -> list[tuple[str, int]]:
    """(word, the id of its first token as the model tokenizes it) for each affirmative
    word that has tokens, in the given order."""
    out: list[tuple[str, int]] = []
    for w in words:
        ids = moe.tokenizer(w, add_special_tokens=False)["input_ids"]
        if ids:
            out.append((w, int(ids[0])))
    return out


def affirmative_ids(moe: MoEModel, words: Sequence[str] = DEFAULT_AFFIRMATIVE) -> list[int]:
    """The first token of each affirmative word as the model tokenizes it (deduplicated)."""
    out: list[int] = []
    for _, i in affirmative_pairs(moe, words):
        if i not in out:
            out.append(i)
    if not out:
        raise InputError("no affirmative tokens")
    return out


def random_mask(rng: random.Random, info, ratio: float) -> list[int]:
    """A random set of experts to mask at a layer, leaving at least top-k (group-feasible)."""
    E, k = info.num_experts, info.top_k
    m = max(1, min(E - k, round(ratio * E)))
    while True:
        masked = sorted(rng.sample(range(E), m))
        allowed = set(range(E)) - set(masked)
        if not (info.n_group and info.topk_group):
            return masked
        size = E // info.n_group
        counts = sorted((sum(1 for e in allowed if e // size == g) for g in range(info.n_group)),
                        reverse=True)
        if sum(counts[: info.topk_group]) >= k:
            return masked


@dataclass
class RosaisResult:
    """Scores per MoE layer with their full distributions; ``to_dict()`` = CLI JSON.

    ``baseline_logprob`` is p: the largest unmasked log-prob of an affirmative word's first
    token at the first answer position (not the joint log-prob of a target opening such as
    "Sure, here is", which the app's badges show). ``affirmative_tokens``: the distinct
    first tokens scored; ``affirmative_words``: per configured word, ``word``, the
    ``token`` that stands for it and that token's unmasked ``logprob``."""

    prompt: str
    moe_layers: list[int]
    scores: list[float]
    baseline_logprob: float
    distributions: list[list[float]]
    masks: list[list[list[int]]]
    best_masks: list[list[int]]
    top_layers: list[int]
    affirmative_tokens: list[str]
    completion: str = ""
    baseline_completion: str = ""
    jailbroken: bool | None = None
    by_top: list[dict] = field(default_factory=list)
    forward_passes: int = 0
    seconds: float = 0.0
    affirmative_words: list[dict] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def route(self) -> Route:
        """The top-L routers' best masks as one route (every position)."""
        return self.route_for(len(self.top_layers))

    def route_for(self, top: int) -> Route:
        r = Route(info=dict(self.info, method="rosais", top=top))
        ranked = ranking(self)
        for lay in ranked[:top]:
            r.mask(lay, None, self.best_masks[self.moe_layers.index(lay)])
        return r

    def random_route(self, top: int, rng: random.Random) -> Route:
        """A control of the same size as :meth:`route_for`: ``top`` routers picked at
        random, each masked by one of its sampled masks picked at random (not the best)."""
        r = Route(info=dict(self.info, method="random-masks", top=top))
        for i in sorted(rng.sample(range(len(self.moe_layers)), min(top, len(self.moe_layers)))):
            r.mask(self.moe_layers[i], None, rng.choice(self.masks[i]))
        return r

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["route"] = self.route.to_dict()
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RosaisResult":
        d = dict(d)
        d.pop("route", None)
        return cls(**d)


def ranking(result: RosaisResult) -> list[int]:
    """MoE layers ordered by RoSais, highest first (ties: lower layer first)."""
    order = sorted(range(len(result.moe_layers)), key=lambda i: (-result.scores[i], i))
    return [result.moe_layers[i] for i in order]


def _cone_last_logits(moe: MoEModel, ids, routes, layer: int, layer_input, direct: dict) -> torch.Tensor:
    """(B, V) next-token logits at the last prompt position over the cone of ``layer``:
    layers >= ``layer`` only, called directly (the last layer's feed-forward block on the
    last row alone) where the first such call matched the model call, else through it."""
    if direct["on"]:
        kw = direct.setdefault("kwargs", {}).setdefault(len(routes), {})  # per batch size
        got = cone_logits_direct(moe, ids, routes, layer, layer_input, None, 0, keep=1,
                                 layer_kwargs=kw, validate=False)
        if got is not None and direct["checked"]:
            return got[:, -1].float()
        direct["checked"] = True
        ref = cone_logits(moe, ids, routes, layer, layer_input, keep=1, validate=False)
        if got is not None and torch.allclose(got[:, -1], ref[:, -1], rtol=1e-5, atol=1e-5):
            return got[:, -1].float()
        direct["on"] = False  # a head that post-processes its logits (Granite): model calls
        return ref[:, -1].float()
    return cone_logits(moe, ids, routes, layer, layer_input, keep=1, validate=False)[:, -1].float()


def rosais(moe: MoEModel, prompt: str | Prompt, samples: int = ROSAIS_SAMPLES, seed: int = 0,
           top: int = ROSAIS_TOP, mask_ratio: float = ROSAIS_MASK_RATIO,
           max_new_tokens: int = MAX_NEW_TOKENS,
           affirmative: Sequence[str] = DEFAULT_AFFIRMATIVE, batch_size: int | None = None,
           judge=None, curve: bool = False, engine: str = "fast",
           on_progress: Callable[[int, int], None] | None = None,
           system: str | None = None) -> RosaisResult:
    """RoSais per MoE layer for ``prompt``; then mask the top-``top`` routers and generate.

    Seeded and deterministic: layer l's masks come from ``Random(seed * 1_000_003 + l)``.
    ``curve`` also generates with the top 1..``top`` routers masked (``by_top``).
    ``engine="fast"`` runs only layers >= l for masks at layer l (the layers below see
    no change); ``"reference"`` runs full forwards. Both give the same scores.
    ``on_progress(done, total)`` reports layers scored. ``batch_size``: masks per forward
    (default: sized to the free memory, see :mod:`explorer.engine.batching`).
    ``system``: a system prompt to template the prompt with (recorded in ``info``);
    ``prompt`` may be a prepared :class:`~explorer.core.prompt.Prompt`.
    """
    if samples < 1:
        raise InputError("samples must be at least 1")
    if top < 0:
        raise InputError("top must be non-negative")
    if not 0.0 < mask_ratio < 1.0:
        raise InputError("mask_ratio must lie strictly between 0 and 1")
    start = time.perf_counter()
    p = moe.prepare(prompt, system)
    prompt, system, ids = p.text, p.system, list(p.ids)
    pairs = affirmative_pairs(moe, affirmative)
    aff = affirmative_ids(moe, affirmative)
    judge = get_judge(judge or "keyword") if judge is None or isinstance(judge, str) else judge
    if engine not in ENGINE_NAMES:
        raise InputError(f"unknown engine {engine!r}; choose {' or '.join(ENGINE_NAMES)}")
    batch_size = batch_size or memory_batch_size(moe, len(ids), len(ids), 1)
    base_lp = next_token_logprobs(moe, ids, [Route()], aff)[0]
    base = float(base_lp.max())
    words = [{"word": w, "token": moe.token_strings([i])[0],
              "logprob": float(base_lp[aff.index(i)])} for w, i in pairs]
    passes = 1
    inputs = capture_layer_inputs(moe, ids, None) if engine == "fast" else None
    direct: dict = {"on": True, "checked": False, "kwargs": {}}  # the direct cone, checked once
    layers = list(moe.moe_layers)
    scores, dists, all_masks, best = [], [], [], []
    for n, lay in enumerate(layers):
        info = moe.handle(lay).info
        rng = random.Random(seed * 1_000_003 + lay)
        masks = [random_mask(rng, info, mask_ratio) for _ in range(samples)]
        deltas: list[float] = []
        for i in range(0, samples, batch_size):
            chunk = [Route().mask(lay, None, m) for m in masks[i:i + batch_size]]
            if inputs is not None:
                logits = _cone_last_logits(moe, ids, chunk, lay, inputs[lay], direct)
                lp = torch.log_softmax(logits, dim=-1)[:, aff].cpu().max(dim=-1).values
            else:
                lp = next_token_logprobs(moe, ids, chunk, aff).max(dim=-1).values
            deltas.extend(float(x) - base for x in lp)
            passes += len(chunk)
        j = max(range(samples), key=deltas.__getitem__)
        scores.append(deltas[j])
        dists.append(deltas)
        all_masks.append(masks)
        best.append(masks[j])
        if on_progress is not None:
            on_progress(n + 1, len(layers))
    info = dict(moe.provenance(system), prompt=prompt, samples=samples, seed=seed,
                mask_ratio=mask_ratio, judge=judge.name, engine=engine)
    res = RosaisResult(prompt=prompt, moe_layers=layers, scores=scores, baseline_logprob=base,
                       distributions=dists, masks=all_masks, best_masks=best, top_layers=[],
                       affirmative_tokens=moe.token_strings(aff), affirmative_words=words,
                       info=info)
    res.top_layers = ranking(res)[:top]
    res.baseline_completion = generate(moe, ids, None, max_new_tokens=max_new_tokens).text
    for L in (range(1, top + 1) if curve else [top]):
        text = generate(moe, ids, res.route_for(L), max_new_tokens=max_new_tokens).text
        v = judge.judge(prompt, text)
        res.by_top.append({"top": L, "completion": text, "jailbroken": v.jailbroken})
    res.completion = res.by_top[-1]["completion"]
    res.jailbroken = res.by_top[-1]["jailbroken"]
    res.forward_passes, res.seconds = passes, time.perf_counter() - start
    return res
