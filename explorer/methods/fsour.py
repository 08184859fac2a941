"""F-SOUR: fine-grained token-layer-wise stochastic optimisation of unsafe routes.

Faithful to the paper and the authors' algorithm: generate greedily and judge; if not
jailbroken, up to ``max_iters`` restarts with seed ``seed + i``. Each restart walks every
templated-prompt position t in order and, inside it, every MoE layer l in order; at
(t, l) it samples ``candidates`` random k-expert sets, forces each at (l, t) on top of the
route so far and keeps the best when it beats the current joint log-prob of the target
answer (teacher-forced, summed over target tokens). It stops once that log-prob reaches
``threshold`` (default log 0.8), then generates with the route (active on the prompt
tokens) and judges. The best attempt is reported when none succeeds.

The search is resumable: :class:`FsourState` (JSON) is checkpointed after every step and
handed to ``on_event``; ``fsour(..., state=...)`` continues from it with the same result.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from explorer.core.control import active_defense
from explorer.core.defaults import (
    DEFAULT_TARGET,
    DEFAULT_THRESHOLD,
    FSOUR_CANDIDATES,
    IMPROVE_EPS,
    MAX_NEW_TOKENS,
    MAX_TARGET_CHARS,
    MAX_TARGET_TOKENS,
)
from explorer.core.forward import generate
from explorer.core.route import Route
from explorer.engine.scoring import make_engine
from explorer.judges import Verdict, get_judge

if TYPE_CHECKING:
    from explorer.core.model import MoEModel

# A candidate must beat the best by more than float noise. Without it, a candidate that
# re-forces the experts the router already picks (same log-prob in exact arithmetic) can
# "improve" by 1e-7 in one engine's rounding and not the other's, and the routes diverge.


@dataclass
class FsourState:
    """Everything needed to resume a search exactly where it stopped."""

    prompt: str
    target: str
    settings: dict[str, Any]
    iteration: int = 0
    t_index: int = 0          # next position index to search
    l_index: int = 0          # next MoE layer index (within moe_layers) to search
    route: dict | None = None  # the current restart's route (JSON)
    best_logprob: float | None = None
    rng_state: list | None = None
    forward_passes: int = 0
    elapsed: float = 0.0
    phase: str = "start"      # start | search | generate | done
    attempts: list[dict] = field(default_factory=list)
    initial: dict | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "FsourState":
        return cls(**json.loads(text))


@dataclass
class FsourEvent:
    """Progress of a running search (``kind``: start, step, improved, restart, generated,
    done, cancelled)."""

    kind: str
    iteration: int
    position: int
    layer: int | None
    num_positions: int
    num_layers: int
    best_logprob: float | None
    forward_passes: int
    elapsed: float
    state: FsourState | None = None

    @property
    def fraction(self) -> float:
        """Fraction of the current restart's (position, layer) grid already searched."""
        total = max(1, self.num_positions * self.num_layers)
        return min(1.0, (self.position * self.num_layers + (self.layer_index or 0)) / total)

    layer_index: int | None = None


@dataclass
class FsourResult:
    """Outcome of a search; ``to_dict()`` is the CLI ``fsour --json`` object."""

    prompt: str
    target: str
    success: bool
    logprob: float | None
    forward_passes: int
    seconds: float
    completion: str
    route: Route
    verdict: Verdict | None
    attempts: list[dict]
    cancelled: bool = False
    state: FsourState | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "target": self.target, "success": self.success,
                "logprob": self.logprob, "forward_passes": self.forward_passes,
                "seconds": round(self.seconds, 4), "completion": self.completion,
                "route": self.route.to_dict(), "judge": self.verdict.judge if self.verdict else None,
                "verdict": self.verdict.to_dict() if self.verdict else None,
                "attempts": self.attempts, "cancelled": self.cancelled, "info": self.info}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FsourResult":
        return cls(prompt=d["prompt"], target=d["target"], success=d["success"],
                   logprob=d["logprob"], forward_passes=d["forward_passes"],
                   seconds=d["seconds"], completion=d["completion"],
                   route=Route.from_dict(d["route"]),
                   verdict=Verdict.from_dict(d["verdict"]) if d.get("verdict") else None,
                   attempts=d.get("attempts", []), cancelled=d.get("cancelled", False),
                   info=d.get("info", {}))


def sample_set(rng: random.Random, info) -> list[int]:
    """A uniformly random k-expert set for a layer (inside topk_group groups if limited)."""
    E, k = info.num_experts, info.top_k
    if info.n_group and info.topk_group:
        size = E // info.n_group
        groups = rng.sample(range(info.n_group), info.topk_group)
        pool = [g * size + j for g in sorted(groups) for j in range(size)]
        return sorted(rng.sample(pool, k))
    return sorted(rng.sample(range(E), k))


def _rng_from(state: list | None, seed: int) -> random.Random:
    rng = random.Random(seed)
    if state is not None:
        rng.setstate((state[0], tuple(state[1]), state[2]))
    return rng


def fsour(moe: MoEModel, prompt: str, target: str = DEFAULT_TARGET, candidates: int = FSOUR_CANDIDATES,
          threshold: float = DEFAULT_THRESHOLD, max_iters: int = 5, seed: int = 0,
          engine: str = "fast", judge=None, max_new_tokens: int = MAX_NEW_TOKENS, order: str = "paper",
          on_event: Callable[[FsourEvent], None] | None = None,
          should_stop: Callable[[], bool] | None = None,
          state: FsourState | None = None) -> FsourResult:
    """Search an unsafe route for ``prompt`` (see module docs). Returns :class:`FsourResult`.

    ``judge``: a judge object or name (default keyword). ``should_stop()`` is polled
    between steps; when it returns True the search returns with ``cancelled=True`` and a
    ``state`` to resume from. ``order="rosais"`` walks the MoE layers of each position in
    RoSais order (highest first; its scoring passes are counted) instead of the paper's
    bottom-up order.
    """
    if candidates < 1 or max_iters < 1 or max_new_tokens < 0:
        raise ValueError("candidates and max_iters must be at least 1")
    if order not in ("paper", "rosais"):
        raise ValueError(f"unknown order {order!r}; choose paper or rosais")
    if not target or not target.strip():
        raise ValueError("the target answer is empty")
    if len(target) > MAX_TARGET_CHARS:
        raise ValueError(f"the target has {len(target)} characters; at most "
                         f"{MAX_TARGET_CHARS} are accepted")
    judge = get_judge(judge or "keyword") if judge is None or isinstance(judge, str) else judge
    settings = {"candidates": candidates, "threshold": threshold, "max_iters": max_iters,
                "seed": seed, "engine": engine, "max_new_tokens": max_new_tokens,
                "judge": judge.name, "order": order}
    if state is None:
        state = FsourState(prompt=prompt, target=target, settings=settings)
    else:
        prompt, target = state.prompt, state.target
    ids = moe.encode(prompt)
    tgt = list(moe.tokenizer(target, add_special_tokens=False)["input_ids"])
    if not tgt:
        raise ValueError("the target answer has no tokens")
    if len(tgt) > MAX_TARGET_TOKENS:
        raise ValueError(f"the target has {len(tgt)} tokens; at most {MAX_TARGET_TOKENS} "
                         f"are accepted")
    P = len(ids)
    eng = make_engine(engine, moe, ids, tgt)
    eng.forward_passes = state.forward_passes
    if "layers" not in state.settings:
        layers = list(moe.moe_layers)
        if order == "rosais":
            from explorer.methods.rosais import ranking, rosais
            r = rosais(moe, prompt, samples=16, seed=seed, top=0, max_new_tokens=0)
            layers = ranking(r)
            eng.forward_passes += r.forward_passes
        defense = active_defense()  # a defense's protected layers ignore forced edits
        pinned = defense.protected_layers if defense is not None else []
        state.settings["layers"] = [x for x in layers if x not in pinned]
    layers = list(state.settings["layers"])
    infos = [moe.handle(lay).info for lay in layers]
    t0 = time.perf_counter() - state.elapsed
    base_info = dict(moe.info.provenance(), prompt=prompt, target=target, method="fsour",
                     **settings)

    def emit(kind, position=0, li=None):
        state.forward_passes, state.elapsed = eng.forward_passes, time.perf_counter() - t0
        if on_event is not None:
            on_event(FsourEvent(kind, state.iteration, position,
                                layers[li] if li is not None and li < len(layers) else None,
                                P, len(layers), state.best_logprob, eng.forward_passes,
                                state.elapsed, state, layer_index=li))

    def finish(success, route, lp, completion, verdict, cancelled=False):
        state.forward_passes, state.elapsed = eng.forward_passes, time.perf_counter() - t0
        if not cancelled:
            state.phase = "done"
        route.info.update(base_info, logprob=lp, success=success)
        res = FsourResult(prompt, target, success, lp, eng.forward_passes, state.elapsed,
                          completion, route, verdict, list(state.attempts), cancelled,
                          state, dict(base_info))
        emit("cancelled" if cancelled else "done", state.t_index)
        return res

    if state.phase == "start":  # the unattacked answer first
        gen = generate(moe, ids, None, max_new_tokens=max_new_tokens)
        verdict = judge.judge(prompt, gen.text)
        state.initial = {"completion": gen.text, "verdict": verdict.to_dict()}
        state.phase = "search"
        if verdict.jailbroken:
            return finish(True, Route(), None, gen.text, verdict)
        emit("start")

    while state.iteration < max_iters:
        i = state.iteration
        if state.route is None:  # a fresh restart
            route = Route()
            state.best_logprob = eng.score([route], position=None)[0]
            state.rng_state = None
            state.t_index, state.l_index = 0, 0
            state.route = route.to_dict()
            emit("restart")
        route = Route.from_dict(state.route)
        rng = _rng_from(state.rng_state, seed + i)
        while state.phase == "search" and state.t_index < P and state.best_logprob < threshold:
            t = state.t_index
            eng.begin_position(route, t)  # positions < t are final: cacheable
            while state.l_index < len(layers):
                if should_stop is not None and should_stop():
                    state.route, state.rng_state = route.to_dict(), _dump(rng)
                    best = _best_attempt(state.attempts)
                    return finish(False, best[0], best[1], best[2], best[3], cancelled=True)
                li = state.l_index
                cands = [route.with_force(layers[li], t, sample_set(rng, infos[li]))
                         for _ in range(candidates)]
                scores = eng.score(cands, position=t, layer=layers[li], base=route)
                top = max(scores)
                j = next(i for i, x in enumerate(scores) if x >= top - IMPROVE_EPS)
                improved = scores[j] > state.best_logprob + IMPROVE_EPS
                if improved:
                    route, state.best_logprob = cands[j], scores[j]
                state.l_index += 1
                state.route, state.rng_state = route.to_dict(), _dump(rng)
                emit("improved" if improved else "step", t, li)
                if state.best_logprob >= threshold:
                    break
            if state.best_logprob >= threshold:
                break
            state.t_index, state.l_index = t + 1, 0
        state.phase = "generate"
        gen = generate(moe, ids, route, max_new_tokens=max_new_tokens)
        verdict = judge.judge(prompt, gen.text)
        state.attempts.append({"iteration": i, "logprob": state.best_logprob,
                               "jailbroken": verdict.jailbroken, "completion": gen.text,
                               "route": route.to_dict(), "verdict": verdict.to_dict(),
                               "forward_passes": eng.forward_passes})
        emit("generated", state.t_index)
        if verdict.jailbroken:
            return finish(True, route, state.best_logprob, gen.text, verdict)
        state.iteration += 1
        state.route, state.phase = None, "search"
    best = _best_attempt(state.attempts)
    return finish(False, *best)


def _dump(rng: random.Random) -> list:
    v, internal, gauss = rng.getstate()
    return [v, list(internal), gauss]


def _best_attempt(attempts: list[dict]):
    """(route, logprob, completion, verdict) of the attempt with the best log-prob."""
    if not attempts:
        return Route(), None, "", None
    a = max(attempts, key=lambda x: -math.inf if x["logprob"] is None else x["logprob"])
    return (Route.from_dict(a["route"]), a["logprob"], a["completion"],
            Verdict.from_dict(a["verdict"]))
