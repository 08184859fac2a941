"""What every attack is, and the registry that lists them.

An attack is a subclass of :class:`Attack` in a module of its own: it declares its
``name``, a frozen parameter dataclass (:class:`~explorer.core.params.Params`: the one home
of its defaults, bounds and help), how it runs on one prompt (:meth:`Attack.run`) and, where
it can do better than one at a time, on many (:meth:`Attack.run_many`), its cost estimate
(:meth:`Attack.cost`, in forward passes: hosted budgets and progress bars use it) and
whether it runs as a background job (``job = True``, :meth:`Attack.run_job`).
:func:`register_attack` adds it to the registry; ``evaluate --method``, ``defend
--attacks``, the Research tab's choices, the job manager, the hosted budget and the named
API all read the registry, so a new attack is one new module (and its tests).

An attack answers with an :class:`Outcome`: the answer, the judge's verdict, the route it
used, the forward passes it ran and the fields it adds to an ``evaluate`` row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Sequence

from explorer.core.defaults import MAX_NEW_TOKENS
from explorer.core.params import NoParams, Params
from explorer.core.registry import Registry

if TYPE_CHECKING:
    from explorer.core.model import MoEModel
    from explorer.core.prompt import Prompt
    from explorer.core.route import Route
    from explorer.judges import Verdict


@dataclass(frozen=True)
class Case:
    """One prompt an attack runs on: ``prompt`` (text or a prepared
    :class:`~explorer.core.prompt.Prompt`), ``index`` (its dataset row index, or its place
    in a list of prompts; seeds that differ per prompt derive from it) and ``target`` (the
    row's own target answer, if the dataset has one)."""

    prompt: str | Prompt
    index: int = 0
    target: str | None = None

    @property
    def text(self) -> str:
        """The prompt's text."""
        return self.prompt if isinstance(self.prompt, str) else self.prompt.text


@dataclass
class Run:
    """What the attacks of one run share: the ``judge`` object, ``max_new_tokens`` of each
    judged answer, the ``seed``, the ``system`` prompt every prompt is templated with;
    ``prompt_batch`` (prompts searched together where an attack can; None: sized from the
    free memory, 1: one at a time); evidence other attacks of the run produced or the
    caller gave: ``routes`` (known routes, each with its prompt in ``info``: the replay
    attack) and ``sizes`` (case index -> forced cells of that prompt's F-SOUR route: the
    random control); ``on_event(index, event)`` progress and ``should_stop()``."""

    judge: Any
    max_new_tokens: int = MAX_NEW_TOKENS
    seed: int = 0
    system: str | None = None
    prompt_batch: int | None = None
    routes: list = field(default_factory=list)
    sizes: dict[int, int] = field(default_factory=dict)
    on_event: Callable[[int, Any], None] | None = None
    should_stop: Callable[[], bool] | None = None


@dataclass
class Outcome:
    """What an attack did to one prompt: the ``prompt`` text, the greedy ``completion`` and
    the judge's ``verdict`` on it, the ``route`` it answered with (None: none), the
    ``forward_passes`` it ran and its wall ``seconds``; ``fields``: the keys it adds to an
    ``evaluate`` row (e.g. F-SOUR's ``target``, ``success``, ``logprob``); ``result``: the
    method's own result object (an :class:`~explorer.methods.fsour.FsourResult`, ...);
    ``error``: one line when the attack could not run on this prompt (e.g. its route
    cannot compose with a defense in force)."""

    prompt: str
    completion: str = ""
    verdict: Verdict | None = None
    route: Route | None = None
    forward_passes: int = 0
    seconds: float = 0.0
    fields: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    error: str | None = None

    @property
    def jailbroken(self) -> bool:
        """The judge's decision (False when the attack failed to run)."""
        return bool(self.verdict is not None and self.verdict.jailbroken)

    @property
    def refusal(self) -> bool:
        """Whether the judge saw a refusal."""
        return bool(self.verdict is not None and self.verdict.refusal)

    # what a background job keeps of a result (see explorer.storage.jobs)
    @property
    def success(self) -> bool:
        return self.jailbroken

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what a background job stores as its result)."""
        return {"prompt": self.prompt, "completion": self.completion,
                "jailbroken": self.jailbroken, "refusal": self.refusal,
                "verdict": self.verdict.to_dict() if self.verdict is not None else None,
                "judge": self.verdict.judge if self.verdict is not None else None,
                "route": self.route.to_dict() if self.route is not None else None,
                "forward_passes": self.forward_passes, "seconds": round(self.seconds, 4),
                "success": self.success, **self.fields,
                **({"error": self.error} if self.error else {})}


@dataclass(frozen=True)
class Shape:
    """What an attack's cost depends on: the templated prompt's ``prompt_tokens``, the
    target's ``target_tokens``, the model's ``moe_layers`` and the ``max_new_tokens`` of
    its judged answer."""

    prompt_tokens: int
    moe_layers: int
    max_new_tokens: int
    target_tokens: int = 4


class Attack:
    """The base of every attack (see the module docs). Subclasses set the class
    attributes and implement :meth:`run` (and, where it pays, :meth:`run_many` and
    :meth:`cost`)."""

    #: The registry name: ``evaluate --method NAME``, rows' ``method``, job kinds.
    name: ClassVar[str] = ""
    #: A short label for the app's choices.
    label: ClassVar[str] = ""
    #: One line for ``--help`` and the app.
    summary: ClassVar[str] = ""
    #: The parameter dataclass (the one home of its defaults, bounds and help).
    Params: ClassVar[type[Params]] = NoParams
    #: Whether it runs as a background job (the Search tab, ``search_start``).
    job: ClassVar[bool] = False
    #: Whether its rows carry the route it answered with (``route`` in evaluate rows).
    routes: ClassVar[bool] = True
    #: Whether ``evaluate --method`` offers it (an attack that needs known routes cannot
    #: run on a dataset alone).
    in_evaluate: ClassVar[bool] = True
    #: Whether defenses are measured against it (``defend --attacks``, the Research tab).
    in_defend: ClassVar[bool] = True
    #: Known routes it needs (``Run.routes``): it answers on their prompts.
    needs_routes: ClassVar[bool] = False
    #: It needs, and the run gives it, each prompt's F-SOUR route size (``Run.sizes``):
    #: attacks that ``give_sizes`` run before it.
    needs_sizes: ClassVar[bool] = False
    gives_sizes: ClassVar[bool] = False
    #: Whether :meth:`run_many` runs several prompts together (``Run.prompt_batch``).
    batches: ClassVar[bool] = False

    def run(self, moe: MoEModel, case: Case, params: Params, run: Run) -> Outcome:
        """Attack one prompt; the :class:`Outcome`."""
        raise NotImplementedError

    def run_many(self, moe: MoEModel, cases: Sequence[Case], params: Params,
                 run: Run) -> Iterator[tuple[int, Outcome]]:
        """Attack every case, yielding ``(index in cases, outcome)`` as each finishes
        (default: one at a time, in order)."""
        for i, case in enumerate(cases):
            yield i, self.run(moe, case, params, run)

    def cost(self, params: Params, shape: Shape) -> int:
        """Forward passes one prompt costs besides its judged answer (callers add
        ``shape.max_new_tokens`` for that), about: hosted mode's budget and progress bars
        read it. F-SOUR's is its search budget, the unit hosted mode caps. Default 0."""
        return 0

    def run_job(self, moe: MoEModel, prompt: str, params: Params, run: Run,
                on_event: Callable[[Any], None], should_stop: Callable[[], bool],
                state: str | None):
        """Run as a background job (see :mod:`explorer.storage.jobs`): returns an object
        with ``route``, ``verdict``, ``completion``, ``success``, ``forward_passes``,
        ``seconds`` and ``to_dict()`` (an :class:`Outcome` will do). ``state``: the
        checkpoint a resumed job continues from (None: a fresh start); this default runs
        the attack in one piece and has none."""
        on_event({"kind": "start", "iteration": 0, "position": 0, "fraction": 0.0})
        t0 = time.perf_counter()
        out = self.run(moe, Case(prompt), params, run)
        on_event({"kind": "done", "iteration": 0, "position": 0, "fraction": 1.0,
                  "forward_passes": out.forward_passes,
                  "elapsed": time.perf_counter() - t0})
        return out


def answer(moe: MoEModel, prompt: str | Prompt, route: Route | None, run: Run,
           fields: dict[str, Any] | None = None) -> Outcome:
    """The judged greedy answer to ``prompt`` (templated with ``run.system``) under
    ``route`` (None: unattacked): what most attacks end with. ``forward_passes`` counts one
    model call per generated token (at least one)."""
    import torch

    from explorer.core.forward import generate
    t0 = time.perf_counter()
    p = moe.prepare(prompt, run.system)
    torch.manual_seed(run.seed)
    gen = generate(moe, list(p.ids), route, max_new_tokens=run.max_new_tokens)
    verdict = run.judge.judge(p.text, gen.text)
    return Outcome(prompt=p.text, completion=gen.text, verdict=verdict, route=route,
                   forward_passes=max(1, len(gen.ids) - gen.prompt_len),
                   seconds=time.perf_counter() - t0, fields=dict(fields or {}))


class Remembered:
    """A judge that remembers its last verdicts by (prompt, answer): a method that judges
    an answer itself (RoSais) and the attack that reports the verdict share one call."""

    def __init__(self, judge: Any):
        self.inner = judge
        self.name = getattr(judge, "name", type(judge).__name__)
        label = getattr(judge, "label", None)
        if label:
            self.label = label
        self._seen: dict[tuple[str, str], Any] = {}

    def judge(self, prompt: str, completion: str):
        """The inner judge's verdict, once per (prompt, completion)."""
        key = (prompt, completion)
        if key not in self._seen:
            if len(self._seen) > 64:
                self._seen.clear()
            self._seen[key] = self.inner.judge(prompt, completion)
        return self._seen[key]


# -- the registry ---------------------------------------------------------------------------
_ATTACKS: Registry[Attack] = Registry("attack", Attack, unknown="method")


def register_attack(attack: Any, *, replace: bool = False) -> Any:
    """Add ``attack`` (a subclass of :class:`Attack`, or an instance) to the registry under
    its ``name``; returns its argument, so that it can decorate a class. A name already
    taken is refused unless ``replace``."""
    return _ATTACKS.add(attack, replace=replace)


def unregister_attack(name: str) -> None:
    """Remove the attack ``name`` (tests; unknown names are ignored)."""
    _ATTACKS.remove(name)


def get_attack(name: str) -> Attack:
    """The registered attack ``name``; :class:`~explorer.core.errors.InputError` naming
    the choices when there is none."""
    return _ATTACKS.get(name)


def list_attacks(where: str | None = None) -> list[str]:
    """Registered attack names in registration order; ``where``: only those offered by
    ``"evaluate"``, ``"defend"`` or as a ``"job"``."""
    keep = {None: None, "evaluate": lambda a: a.in_evaluate,
            "defend": lambda a: a.in_defend, "job": lambda a: a.job}[where]
    return _ATTACKS.names(keep)


def registry_version() -> int:
    """A number that changes whenever the registry does (caches of generated choices key
    on it, e.g. the CLI's parser)."""
    return _ATTACKS.version


def load_plugins(modules: Sequence[str]) -> list[str]:
    """Import ``modules`` (names of modules that register attacks or judges when imported:
    the ``EXPLORER_PLUGINS`` setting, read by the CLI and the app before they list
    anything); returns the names imported. :class:`~explorer.core.errors.InputError` names
    a module that cannot be imported."""
    import importlib

    from explorer.core.errors import InputError, one_line
    done = []
    for name in modules:
        name = name.strip()
        if not name:
            continue
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any failure of a user's module: one line
            raise InputError(f"cannot import plugin module {name!r} (EXPLORER_PLUGINS): "
                             f"{one_line(exc, with_type=True)}") from None
        done.append(name)
    return done


def attack_help(where: str | None = None) -> str:
    """``name: summary`` of every attack ``where`` offers, for help texts."""
    return _ATTACKS.help(list_attacks(where))
