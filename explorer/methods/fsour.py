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
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from explorer.core.control import active_defense
from explorer.core.defaults import (
    DEFAULT_TARGET,
    DEFAULT_THRESHOLD,
    FSOUR_CANDIDATES,
    FSOUR_MAX_ITERS,
    FSOUR_ORDERS,
    IMPROVE_EPS,
    MAX_NEW_TOKENS,
)
from explorer.core.errors import InputError
from explorer.core.forward import generate, generate_many
from explorer.core.route import Route
from explorer.engine.scoring import MultiScorer, make_engine
from explorer.judges import Verdict, get_judge

if TYPE_CHECKING:
    from explorer.core.model import MoEModel
    from explorer.core.prompt import Prompt

# A candidate must beat the best by more than float noise (IMPROVE_EPS), and a decision
# whose numbers lie within the near-tie band of that margin is re-taken on the reference
# computation (see choose()): the engines then pick the same routes by construction.


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
    system: str | None = None  # the system prompt the search templates the prompt with

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
        """Fraction of the current restart's (position, layer) grid already searched: a
        step's event (``layer_index`` set) comes after its cell was searched, so that cell
        counts."""
        total = max(1, self.num_positions * self.num_layers)
        done = self.position * self.num_layers + (
            0 if self.layer_index is None else self.layer_index + 1)
        return min(1.0, done / total)

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


@dataclass
class ScoreRequest:
    """What a running search asks its driver to score: candidate routes that differ from
    ``base`` only at (``layer``, ``position``). ``layer_index``: the layer's index in the
    search's layer order (drivers advance the searches furthest behind first)."""

    routes: list[Route]
    position: int
    layer: int
    layer_index: int
    base: Route


@dataclass
class GenerateRequest:
    """What a running search asks its driver to generate: the greedy answer to ``ids``
    under ``route`` (None: unattacked), as :func:`explorer.core.forward.generate` gives it."""

    ids: list[int]
    route: Route | None
    max_new_tokens: int


def _check_args(candidates, max_iters, max_new_tokens, order) -> None:
    # the library's own check of direct calls (the CLI, the app and jobs check
    # FsourParams first); the target is checked by MoEModel.target_ids
    if candidates < 1 or max_iters < 1 or max_new_tokens < 0:
        raise InputError("candidates and max_iters must be at least 1")
    if order not in FSOUR_ORDERS:
        raise InputError(f"unknown order {order!r}; choose {' or '.join(FSOUR_ORDERS)}")


def choose(eng, scores: list[float], cands: list[Route], route: Route, best: float,
           band: float) -> tuple[int | None, float]:
    """The search's decision at one cell: (index of the kept candidate or None, new best).

    The rule (the paper's, with a margin against float noise): the first candidate within
    IMPROVE_EPS of the top score replaces the route when it beats ``best`` by more than
    IMPROVE_EPS. Where the batched ``scores`` leave that decision within ``band`` (a gain
    near the margin, or distinct candidates near the top), the contenders and the base are
    re-scored with ``eng.reference_score`` and the rule is applied to those numbers: every
    engine then takes the same decision (rounding differences between them are far below
    the band). Each re-check counts in ``eng.rechecks``.
    """
    top = max(scores)
    if top <= best + IMPROVE_EPS - band or top == best:
        # no candidate can gain the margin under any rounding; or none changed the score at
        # all (candidates whose only edit nothing scored reads get the base's very score)
        return None, best
    # contenders: not clearly below the top's margin (each distinct route once, first index)
    near, seen = [], set()
    for i, x in enumerate(scores):
        key = tuple(cands[i].edits)
        if x >= top - IMPROVE_EPS - band and key not in seen:
            seen.add(key)
            near.append(i)
    j = near[0]
    # the first contender is the choice under any rounding when it is clearly within the
    # margin of the top; its gain then decides unless it lies within the band of the margin
    if top - scores[j] < IMPROVE_EPS - band and abs(scores[j] - best - IMPROVE_EPS) > band:
        return (j, scores[j]) if scores[j] > best + IMPROVE_EPS else (None, best)
    eng.rechecks += 1
    exact = {i: eng.reference_score(cands[i]) for i in near}
    ref_top = max(exact.values())
    j = next(i for i in near if exact[i] >= ref_top - IMPROVE_EPS)
    ref_best = eng.reference_score(route)
    return (j, exact[j]) if exact[j] > ref_best + IMPROVE_EPS else (None, ref_best)


def reached(eng, route: Route, best: float, threshold: float, band: float) -> bool:
    """Has the search reached ``threshold``? Re-checked on the reference computation when
    ``best`` lies within ``band`` of it (see :func:`choose`)."""
    if abs(best - threshold) > band:
        return best >= threshold
    eng.rechecks += 1
    return eng.reference_score(route) >= threshold


def reported(eng, route: Route) -> float:
    """The log-prob a finished restart reports for ``route`` (its attempt's, the result's
    and the route's ``info["logprob"]``): the reference computation's score (memoised; an
    unbatched forward counted in ``eng.recheck_passes`` where the search has not run it).

    The search's own best is the score of the kept candidate in the batch that scored it,
    and a batched score moves with the batch's rows and the torch threads that split its
    products (one float32 ulp, 3.8e-6 at log-prob -32, between a lone and a multi-prompt
    batch of the same route). Decisions are immune (see :func:`choose`), but a reported
    number is not, and :func:`_best_attempt` decides on the reported numbers: taken from
    the reference computation they are the same for every engine and batch (one unbatched
    forward of the route, whatever ran before it), at any torch thread count.
    """
    return eng.reference_score(route)


class _Search:
    """One prompt's search, as a generator of :class:`ScoreRequest` (see :func:`fsour`)."""

    def __init__(self, moe, prompt, target, candidates, threshold, max_iters, seed, engine,
                 judge, max_new_tokens, order, on_event, state, system=None):
        _check_args(candidates, max_iters, max_new_tokens, order)
        judge = get_judge(judge or "keyword") if judge is None or isinstance(judge, str) else judge
        settings = {"candidates": candidates, "threshold": threshold, "max_iters": max_iters,
                    "seed": seed, "engine": engine, "max_new_tokens": max_new_tokens,
                    "judge": judge.name, "order": order}
        if state is None:
            p = moe.prepare(prompt, system)
            state = FsourState(prompt=p.text, target=target, settings=settings, system=p.system)
        else:  # a resumed search keeps its own prompt, target and system prompt
            p = moe.prepare(state.prompt, state.system)
            target = state.target
        prompt, system = p.text, p.system
        self.moe, self.prompt, self.target, self.judge, self.state = moe, prompt, target, judge, state
        self.candidates, self.threshold, self.max_iters, self.seed = candidates, threshold, max_iters, seed
        self.max_new_tokens, self.on_event = max_new_tokens, on_event
        self.system = system
        self.ids = list(p.ids)
        self.tgt = moe.target_ids(target)
        self.eng = make_engine(engine, moe, self.ids, self.tgt)
        self.eng.forward_passes = state.forward_passes
        self.eng.rechecks = state.settings.get("rechecks", 0)  # a resumed search's so far
        self.eng.recheck_passes = state.settings.get("recheck_passes", 0)
        if "layers" not in state.settings:
            layers = list(moe.moe_layers)
            if order == "rosais":
                from explorer.methods.rosais import ranking, rosais
                r = rosais(moe, prompt, samples=16, seed=seed, top=0, max_new_tokens=0,
                           system=system)
                layers = ranking(r)
                self.eng.forward_passes += r.forward_passes
            defense = active_defense()  # a defense's protected layers ignore forced edits
            pinned = defense.protected_layers if defense is not None else []
            state.settings["layers"] = [x for x in layers if x not in pinned]
        self.layers = list(state.settings["layers"])
        self.infos = [moe.handle(lay).info for lay in self.layers]
        self.t0 = time.perf_counter() - state.elapsed
        # the layer order is part of the settings, in a fresh search and a resumed one alike
        self.base_info = dict(moe.provenance(system), prompt=prompt, target=target,
                              method="fsour", **{**settings, "layers": list(self.layers)})

    def emit(self, kind, position=0, li=None):
        st, eng, layers = self.state, self.eng, self.layers
        st.forward_passes, st.elapsed = eng.forward_passes, time.perf_counter() - self.t0
        st.settings["rechecks"], st.settings["recheck_passes"] = eng.rechecks, eng.recheck_passes
        if self.on_event is not None:
            self.on_event(FsourEvent(kind, st.iteration, position,
                                     layers[li] if li is not None and li < len(layers) else None,
                                     len(self.ids), len(layers), st.best_logprob,
                                     eng.forward_passes, st.elapsed, st, layer_index=li))

    def finish(self, success, route, lp, completion, verdict, cancelled=False):
        st, eng = self.state, self.eng
        st.forward_passes, st.elapsed = eng.forward_passes, time.perf_counter() - self.t0
        if not cancelled:
            st.phase = "done"
        route.info.update(self.base_info, logprob=lp, success=success)
        info = dict(self.base_info, rechecks=eng.rechecks, recheck_passes=eng.recheck_passes)
        res = FsourResult(self.prompt, self.target, success, lp, eng.forward_passes,
                          st.elapsed, completion, route, verdict, list(st.attempts), cancelled,
                          st, info)
        self.emit("cancelled" if cancelled else "done", st.t_index)
        return res

    def run(self, should_stop=None):
        """The search: yields :class:`ScoreRequest` and :class:`GenerateRequest` objects,
        is sent their scores or generations, and returns the :class:`FsourResult`."""
        st, eng, layers = self.state, self.eng, self.layers
        P, threshold = len(self.ids), self.threshold
        if st.phase == "start":  # the unattacked answer first
            gen = yield GenerateRequest(self.ids, None, self.max_new_tokens)
            verdict = self.judge.judge(self.prompt, gen.text)
            st.initial = {"completion": gen.text, "verdict": verdict.to_dict()}
            st.phase = "search"
            if verdict.jailbroken:
                return self.finish(True, Route(), None, gen.text, verdict)
            self.emit("start")
        while st.iteration < self.max_iters:
            i = st.iteration
            if st.route is None:  # a fresh restart
                route = Route()
                st.best_logprob = eng.score([route], position=None)[0]
                st.rng_state = None
                st.t_index, st.l_index = 0, 0
                st.route = route.to_dict()
                self.emit("restart")
            route = Route.from_dict(st.route)
            rng = _rng_from(st.rng_state, self.seed + i)
            done = reached(eng, route, st.best_logprob, threshold,
                           eng.tie_band(st.best_logprob))
            while st.phase == "search" and st.t_index < P and not done:
                t = st.t_index
                eng.begin_position(route, t)  # positions < t are final: cacheable
                while st.l_index < len(layers):
                    if should_stop is not None and should_stop():
                        st.route, st.rng_state = route.to_dict(), _dump(rng)
                        best = _best_attempt(st.attempts)
                        return self.finish(False, best[0], best[1], best[2], best[3],
                                           cancelled=True)
                    li = st.l_index
                    cands = [route.with_force(layers[li], t, sample_set(rng, self.infos[li]))
                             for _ in range(self.candidates)]
                    scores = yield ScoreRequest(cands, t, layers[li], li, route)
                    band = eng.tie_band(st.best_logprob)
                    j, st.best_logprob = choose(eng, scores, cands, route, st.best_logprob, band)
                    if j is not None:
                        route = cands[j]
                    st.l_index += 1
                    st.route, st.rng_state = route.to_dict(), _dump(rng)
                    self.emit("improved" if j is not None else "step", t, li)
                    if j is not None:
                        done = reached(eng, route, st.best_logprob, threshold, band)
                    if done:
                        break
                if done:
                    break
                st.t_index, st.l_index = t + 1, 0
            st.best_logprob = reported(eng, route)
            st.phase = "generate"
            gen = yield GenerateRequest(self.ids, route, self.max_new_tokens)
            verdict = self.judge.judge(self.prompt, gen.text)
            st.attempts.append({"iteration": i, "logprob": st.best_logprob,
                                "jailbroken": verdict.jailbroken, "completion": gen.text,
                                "route": route.to_dict(), "verdict": verdict.to_dict(),
                                "forward_passes": eng.forward_passes})
            self.emit("generated", st.t_index)
            if verdict.jailbroken:
                return self.finish(True, route, st.best_logprob, gen.text, verdict)
            st.iteration += 1
            st.route, st.phase = None, "search"
        best = _best_attempt(st.attempts)
        return self.finish(False, *best)


def fsour(moe: MoEModel, prompt: str | Prompt, target: str = DEFAULT_TARGET, candidates: int = FSOUR_CANDIDATES,
          threshold: float = DEFAULT_THRESHOLD, max_iters: int = FSOUR_MAX_ITERS, seed: int = 0,
          engine: str = "fast", judge=None, max_new_tokens: int = MAX_NEW_TOKENS, order: str = "paper",
          on_event: Callable[[FsourEvent], None] | None = None,
          should_stop: Callable[[], bool] | None = None,
          state: FsourState | None = None, system: str | None = None) -> FsourResult:
    """Search an unsafe route for ``prompt`` (see module docs). Returns :class:`FsourResult`.

    ``judge``: a judge object or name (default keyword). ``should_stop()`` is polled
    between steps; when it returns True the search returns with ``cancelled=True`` and a
    ``state`` to resume from. ``order="rosais"`` walks the MoE layers of each position in
    RoSais order (highest first; its scoring passes are counted) instead of the paper's
    bottom-up order. ``info["rechecks"]``: decisions re-taken on the reference computation
    because the engine's numbers left them within the near-tie band (see :func:`choose`);
    ``info["recheck_passes"]``: the unbatched reference forwards they ran, with those of each
    attempt's log-prob, which is the reference computation's (see :func:`reported`).
    ``system``: a system prompt to template the prompt with (positions then index that
    templated text; recorded in the route's ``info`` and the state, so a resumed search
    keeps it). ``prompt`` may be a :class:`~explorer.core.prompt.Prompt` prepared by
    :meth:`~explorer.core.model.MoEModel.prepare` (with its own system prompt).
    """
    search = _Search(moe, prompt, target, candidates, threshold, max_iters, seed, engine,
                     judge, max_new_tokens, order, on_event, state, system)
    steps = search.run(should_stop)
    eng = search.eng
    try:
        ask = next(steps)
        while True:
            if isinstance(ask, GenerateRequest):
                ask = steps.send(generate(moe, ask.ids, ask.route,
                                          max_new_tokens=ask.max_new_tokens))
            else:
                ask = steps.send(eng.score(ask.routes, position=ask.position, layer=ask.layer,
                                           base=ask.base))
    except StopIteration as stop:
        return stop.value


def prompt_batch_size(moe: MoEModel, prompts: Sequence[str], target: str = DEFAULT_TARGET,
                      candidates: int = FSOUR_CANDIDATES, cap: int = 64,
                      system: str | None = None) -> int:
    """Prompts one multi-prompt search runs together by default: as many as the rows of one
    cone batch (sized to the free memory, see :mod:`explorer.engine.batching`) hold at
    ``candidates`` rows each for the longest prompt, at most ``cap``."""
    from explorer.engine.batching import search_batch_size
    if not prompts:
        return 1
    longest = max(len(moe.encode(p, system)) for p in prompts[:256])
    tgt = len(moe.target_ids(target))
    return max(1, min(cap, len(prompts), search_batch_size(moe, longest, tgt) // max(1, candidates)))


def iter_fsour_many(moe: MoEModel, prompts: Sequence[str | Prompt], targets: str | Sequence[str] = DEFAULT_TARGET,
                    *, prompt_batch: int | None = None, candidates: int = FSOUR_CANDIDATES,
                    threshold: float = DEFAULT_THRESHOLD, max_iters: int = FSOUR_MAX_ITERS,
                    seed: int = 0, judge=None, max_new_tokens: int = MAX_NEW_TOKENS, order: str = "paper",
                    on_event: Callable[[int, FsourEvent], None] | None = None,
                    should_stop: Callable[[], bool] | None = None,
                    stats: dict | None = None,
                    system: str | None = None) -> Iterator[tuple[int, FsourResult]]:
    """F-SOUR over many prompts at once: yields ``(index, result)`` as each search finishes.

    Each result is what ``fsour(moe, prompts[index], targets[index], ...)`` returns with the
    same settings (same route, passes, attempts, log-probs, completion and verdict: decisions
    and reported log-probs are taken on the same numbers, see :func:`choose` and
    :func:`reported`), but up to ``prompt_batch`` searches run together (default:
    :func:`prompt_batch_size`): the steps of all searches at the same position and layer
    share one batched forward (their prefixes have the same length; suffixes are
    right-padded; every row has its own route), and the searches furthest behind advance
    first so that restarts and new prompts join the others. Answers are generated in
    batches too (see :func:`explorer.core.forward.generate_many`) once half the searches
    (or all) wait for one. New prompts start when half
    the slots are free. ``targets``: one for all or one per prompt. ``on_event(index,
    event)``: each search's progress. ``should_stop``: polled between steps; stopped
    searches are yielded with ``cancelled=True``. ``stats`` (a dict) receives the batches
    run, their rows and the near-tie re-checks. ``system``: one system prompt for every
    prompt (see :func:`fsour`).
    """
    prompts = list(prompts)
    tlist = [targets] * len(prompts) if isinstance(targets, str) else list(targets)
    if len(tlist) != len(prompts):
        raise InputError(f"{len(tlist)} targets for {len(prompts)} prompts")
    judge = get_judge(judge or "keyword") if judge is None or isinstance(judge, str) else judge
    k = prompt_batch or prompt_batch_size(moe, prompts, tlist[0] if tlist else DEFAULT_TARGET,
                                          candidates, system=system)
    if k < 1:
        raise InputError("prompt_batch must be at least 1")
    scorer = MultiScorer(moe)
    queue = list(range(len(prompts)))[::-1]
    active: dict[int, list] = {}  # index -> [search, steps, request]
    stats = stats if stats is not None else {}
    stats.update(prompts=len(prompts), prompt_batch=k, batches=0, rows=0, rechecks=0)
    done: list[tuple[int, FsourResult]] = []

    def start(idx: int) -> None:
        ev = None if on_event is None else (lambda e, i=idx: on_event(i, e))
        search = _Search(moe, prompts[idx], tlist[idx], candidates, threshold, max_iters, seed,
                         "fast", judge, max_new_tokens, order, ev, None, system)
        steps = search.run(should_stop)
        try:
            active[idx] = [search, steps, next(steps)]
        except StopIteration as stop:
            finished(idx, stop.value)

    def finished(idx: int, res: FsourResult) -> None:
        stats["rechecks"] += res.info.get("rechecks", 0)
        done.append((idx, res))

    def advance(indices, answers) -> None:
        for i, answer in zip(indices, answers):
            try:
                active[i][2] = active[i][1].send(answer)
            except StopIteration as stop:
                del active[i]
                finished(i, stop.value)

    while queue or active:
        if queue and (not active or k - len(active) >= max(1, k // 2)):
            while queue and len(active) < k:
                start(queue.pop())
        while done:
            yield done.pop(0)
        if not active:
            continue
        gens = [i for i in sorted(active) if isinstance(active[i][2], GenerateRequest)]
        # answers wait until half the slots (or every search) want one: one batch for all
        if gens and (len(gens) == len(active) or len(gens) >= max(2, k // 2)):
            reqs = [active[i][2] for i in gens]
            lengths = {r.max_new_tokens for r in reqs}
            outs = (generate_many(moe, [(r.ids, r.route) for r in reqs], reqs[0].max_new_tokens)
                    if len(lengths) == 1 else
                    [generate(moe, r.ids, r.route, max_new_tokens=r.max_new_tokens) for r in reqs])
            stats["generation_batches"] = stats.get("generation_batches", 0) + 1
            advance(gens, outs)
        else:
            # the searches furthest behind advance first; steps at their cell share a batch
            scoring = [i for i in active if isinstance(active[i][2], ScoreRequest)]
            lead = min(scoring, key=lambda i: (active[i][2].position, active[i][2].layer_index, i))
            cell = (active[lead][2].position, active[lead][2].layer)
            group = [i for i in sorted(scoring)
                     if (active[i][2].position, active[i][2].layer) == cell]
            scores = scorer.score([(active[i][0].eng, active[i][2].routes,
                                    active[i][2].position, active[i][2].layer,
                                    active[i][2].base) for i in group])
            stats["batches"], stats["rows"] = scorer.batches, scorer.rows
            advance(group, scores)
        while done:
            yield done.pop(0)


def fsour_many(moe: MoEModel, prompts: Sequence[str | Prompt], targets: str | Sequence[str] = DEFAULT_TARGET,
               **kwargs) -> list[FsourResult]:
    """:func:`iter_fsour_many`'s results in prompt order (same arguments)."""
    out: dict[int, FsourResult] = {}
    for idx, res in iter_fsour_many(moe, prompts, targets, **kwargs):
        out[idx] = res
    return [out[i] for i in range(len(out))]


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
