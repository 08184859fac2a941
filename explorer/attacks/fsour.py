"""The ``fsour`` attack: F-SOUR's search for an unsafe route, then the judged answer under it
(:func:`explorer.methods.fsour.fsour`; many prompts are searched together with
:func:`explorer.methods.fsour.iter_fsour_many`, with the same routes as one at a time). It
runs as a background job too, resumable from its checkpoint."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from explorer.attacks.base import Attack, Case, Outcome, Run, Shape
from explorer.core.defaults import (
    DEFAULT_TARGET,
    DEFAULT_THRESHOLD,
    ENGINE_NAMES,
    FSOUR_CANDIDATES,
    FSOUR_MAX_ITERS,
    FSOUR_ORDERS,
    MAX_CANDIDATES,
    MAX_ITERS,
    MAX_TARGET_CHARS,
)
from explorer.core.params import Params, param


@dataclass(frozen=True)
class FsourParams(Params):
    """F-SOUR's parameters (the seed, the judge, the answer length and the system prompt are
    the run's: :class:`~explorer.attacks.base.Run`)."""

    what = "F-SOUR parameters"
    target: str | None = param(None, "target answer opening (default: the dataset row's own "
                               f"target, else {DEFAULT_TARGET!r})", kind="text",
                               max_chars=MAX_TARGET_CHARS)
    candidates: int = param(FSOUR_CANDIDATES, "random k-expert sets per (token, layer) cell "
                            "(the paper's N)", lo=1, hi=MAX_CANDIDATES)
    threshold: float = param(DEFAULT_THRESHOLD, "stop once log P(target) reaches this "
                             "(default log 0.8)", kind="logprob")
    max_iters: int = param(FSOUR_MAX_ITERS, "restarts, with seed + i each", lo=1, hi=MAX_ITERS)
    engine: str = param("fast", "scoring engine: fast (causal cone, batched) or reference "
                        "(one full forward per candidate); the same routes",
                        choices=ENGINE_NAMES)
    order: str = param("paper", "layer order at each position: paper (bottom-up) or rosais "
                       "(the most safety-critical router first)", choices=FSOUR_ORDERS)

    def search_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~explorer.methods.fsour.fsour` they set (the
        target apart)."""
        return {"candidates": self.candidates, "threshold": self.threshold,
                "max_iters": self.max_iters, "engine": self.engine, "order": self.order}


def search_budget(candidates: int, max_iters: int, prompt_tokens: int,
                  target_tokens: int) -> int:
    """An F-SOUR search's budget: ``candidates x max_iters x (prompt + target tokens)``, the
    unit hosted mode caps (every scored candidate runs over the prompt and the target)."""
    return candidates * max_iters * (prompt_tokens + target_tokens)


def target_of(params: FsourParams, case: Case) -> str:
    """The target a case's search aims for: the parameters', else the row's own, else
    ``"Sure, here is"``."""
    return params.target or case.target or DEFAULT_TARGET


def outcome(res, seconds: float, judge, **fields: Any) -> Outcome:
    """An F-SOUR result as an :class:`Outcome` (the row fields ``target``, ``success``,
    ``logprob`` and ``rechecks``)."""
    verdict = res.verdict if res.verdict is not None else judge.judge(res.prompt, res.completion)
    return Outcome(prompt=res.prompt, completion=res.completion, verdict=verdict,
                   route=res.route, forward_passes=int(res.forward_passes or 0),
                   seconds=seconds, result=res,
                   fields={"target": res.target, "success": bool(res.success),
                           "logprob": None if res.logprob is None else float(res.logprob),
                           "rechecks": int(res.info.get("rechecks", 0)), **fields})


class FsourAttack(Attack):
    """F-SOUR: search a route, answer under it."""

    name = "fsour"
    label = "fresh F-SOUR search"
    summary = "F-SOUR route search, then the answer under the route"
    Params = FsourParams
    job = True
    gives_sizes = True
    batches = True

    def run(self, moe, case: Case, params: FsourParams, run: Run) -> Outcome:
        from explorer.methods.fsour import fsour
        t0 = time.perf_counter()
        on_event = (None if run.on_event is None else
                    (lambda ev, i=case.index: run.on_event(i, ev)))
        res = fsour(moe, case.prompt, target=target_of(params, case), seed=run.seed,
                    judge=run.judge, max_new_tokens=run.max_new_tokens, system=run.system,
                    on_event=on_event, should_stop=run.should_stop, **params.search_kwargs())
        return outcome(res, time.perf_counter() - t0, run.judge)

    def run_many(self, moe, cases: Sequence[Case], params: FsourParams,
                 run: Run) -> Iterator[tuple[int, Outcome]]:
        if params.engine != "fast" or run.prompt_batch == 1 or len(cases) < 2:
            yield from super().run_many(moe, cases, params, run)
            return
        from explorer.methods.fsour import iter_fsour_many
        stats: dict = {}
        kw = params.search_kwargs()
        kw.pop("engine")
        on_event = (None if run.on_event is None else
                    (lambda i, ev: run.on_event(cases[i].index, ev)))
        for i, res in iter_fsour_many(moe, [c.prompt for c in cases],
                                      [target_of(params, c) for c in cases],
                                      prompt_batch=run.prompt_batch, seed=run.seed,
                                      judge=run.judge, max_new_tokens=run.max_new_tokens,
                                      stats=stats, system=run.system, on_event=on_event,
                                      should_stop=run.should_stop, **kw):
            yield i, outcome(res, res.seconds, run.judge, prompt_batch=stats.get("prompt_batch"))

    def cost(self, params: FsourParams, shape: Shape) -> int:
        return search_budget(params.candidates, params.max_iters, shape.prompt_tokens,
                             shape.target_tokens)

    def run_job(self, moe, prompt: str, params: FsourParams, run: Run,
                on_event: Callable[[Any], None], should_stop: Callable[[], bool],
                state: str | None):
        """The search as a resumable job: a checkpoint (its :class:`FsourState`) at every
        step, so a resumed job continues where it stopped with the same result."""
        from explorer.methods.fsour import FsourState, fsour
        return fsour(moe, prompt, target=params.target or DEFAULT_TARGET, seed=run.seed,
                     judge=run.judge, max_new_tokens=run.max_new_tokens, system=run.system,
                     on_event=on_event, should_stop=should_stop,
                     state=FsourState.from_json(state) if state else None,
                     **params.search_kwargs())
