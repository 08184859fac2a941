"""What every defense is, and the registry that lists them.

A defense is a subclass of :class:`Defense` in a module of its own: it declares its
``name``, a frozen parameter dataclass (:class:`~explorer.core.params.Params`: the one home
of its defaults, bounds and help), whether it is derived from attack evidence
(``needs_evidence``), whether it replaces the attacked model by another checkpoint
(``replaces_model``) and how it is put in force (:meth:`Defense.build`, which returns an
:class:`InForce`). :func:`register_defense` adds it to the registry; ``defend --mode``,
``grid --defenses``, the Research tab's choices and the grid's table all read the
registry, so a new defense is one new module (and its tests).

Most defenses are a :class:`~explorer.core.route.Route` the core composes with every
attack's route (``with moe.defended(route):``); one that replaces the model (a hardened
checkpoint) gives the model the attacks run against instead. Measuring either is the
same two calls: :meth:`Defense.evaluate` (the attacks without and with it) and
:meth:`Defense.utility` (its cost on benign prompts).

The module imports no torch: ``--help`` lists the defenses without loading a model library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

from explorer.core.errors import InputError
from explorer.core.params import NoParams, Params
from explorer.core.registry import Registry

if TYPE_CHECKING:
    from explorer.core.model import MoEModel
    from explorer.core.route import Route
    from explorer.research.defense import DefenseResult
    from explorer.research.utility import UtilityResult

#: Where a defense can be offered: ``defend --mode`` and the Research tab's Defense view
#: (``"defend"``), ``grid --defenses`` (``"grid"``).
PLACES = ("defend", "grid")


@dataclass
class Evidence:
    """What a derived defense reads: RoSais results (``rosais_results``) and successful
    found routes (``routes``), e.g. from
    :func:`explorer.research.defense.gather_evidence`."""

    rosais_results: list = field(default_factory=list)
    routes: list = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.rosais_results or self.routes)


@dataclass
class InForce:
    """A defense ready to measure: ``route`` (put in force with ``moe.defended(route)``;
    None: no route), ``model`` (the model the attacks run against: the attacked model
    itself unless the defense replaces it) and ``record`` (the route that describes it:
    saved with ``--out``, shown by :func:`explorer.research.defense.describe_defense`)."""

    route: Route | None
    model: MoEModel
    record: Route

    def system(self, system: str | None) -> str | None:
        """The system prompt prompts are templated with under this defense: ``system``
        with the defense's own after it (the self-reminder), else ``system``."""
        return self.route.system_under(system) if self.route is not None else system


class Defense:
    """The base of every defense (see the module docs). Subclasses set the class
    attributes and implement :meth:`build`; a defense that replaces the model also
    overrides :meth:`evaluate` and :meth:`utility`."""

    #: The registry name: ``defend --mode NAME``, ``grid --defenses``, a grid's columns.
    name: ClassVar[str] = ""
    #: A short label for the app's choices.
    label: ClassVar[str] = ""
    #: One line for ``--help`` and the app.
    summary: ClassVar[str] = ""
    #: The parameter dataclass (the one home of its defaults, bounds and help).
    Params: ClassVar[type[Params]] = NoParams
    #: Whether :meth:`build` needs :class:`Evidence` (RoSais results, found routes).
    needs_evidence: ClassVar[bool] = False
    #: Whether it replaces the attacked model (``InForce.model`` is another checkpoint).
    replaces_model: ClassVar[bool] = False
    #: Whether it can be measured under a user's system prompt.
    takes_system: ClassVar[bool] = True
    #: The places that offer it (:data:`PLACES`).
    where: ClassVar[tuple[str, ...]] = PLACES

    def build(self, moe: MoEModel, params: Params, *, evidence: Evidence | None = None,
              load: Callable[[str], MoEModel] | None = None) -> InForce:
        """Put the defense together for ``moe``: ``evidence`` for a derived defense,
        ``load(path)``: how the caller loads another checkpoint (with its own device and
        dtype settings) for one that replaces the model."""
        raise NotImplementedError

    def check(self, moe: MoEModel, params: Params, *,
              load: Callable[[str], MoEModel] | None = None) -> None:
        """What can be checked before hours of work: :class:`InputError` in one line when
        :meth:`build` is bound to fail (default: nothing to check)."""

    def check_system(self, system: str | None) -> None:
        """:class:`InputError` when ``system`` is given and the defense cannot be
        measured under a system prompt."""
        if system is not None and not self.takes_system:
            raise InputError(f"the {self.name} defense is measured without a system prompt")

    def evaluate(self, moe: MoEModel, applied: InForce, harmful_prompts: Sequence[str],
                 benign_prompts: Sequence[str] | None = None, **kwargs: Any) -> DefenseResult:
        """Each attack's ASR on ``harmful_prompts`` against ``moe`` without and with the
        defense, and its utility cost on ``benign_prompts``:
        :func:`explorer.research.defense.evaluate_defense`, whose settings ``kwargs`` are."""
        from explorer.research.defense import evaluate_defense
        self.check_system(kwargs.get("system"))
        return evaluate_defense(moe, applied.route if applied.route is not None else
                                applied.record, harmful_prompts, benign_prompts, **kwargs)

    def utility(self, moe: MoEModel, applied: InForce, benign_prompts: Sequence[str], *,
                max_new_tokens: int, judge: Any = None,
                system: str | None = None) -> UtilityResult:
        """The defense's utility cost on ``benign_prompts``: benign refusal rates and the
        change in mean log-likelihood per token of ``moe``'s own answers
        (:func:`explorer.research.utility.utility_cost`, with one entry)."""
        from explorer.core.route import Route
        from explorer.research.utility import utility_cost
        self.check_system(system)
        with moe.defended(None):
            return utility_cost(moe, applied.route if applied.route is not None else Route(),
                                benign_prompts, max_new_tokens=max_new_tokens, judge=judge,
                                system=system)

    def in_force(self, moe: MoEModel, record: Route) -> InForce:
        """The defense from its kept ``record`` (a route it built before, e.g. a grid's
        derived defense file), checked against ``moe``."""
        record.validate(moe.info)
        return InForce(route=record, model=moe, record=record)


def no_evidence(name: str) -> InputError:
    """The one-line refusal of a derived defense built without evidence."""
    return InputError(f"the {name} defense is derived from evidence: give RoSais results or "
                      "found routes (or prompts to gather them on)")


# -- the registry ---------------------------------------------------------------------------
def _offered_somewhere(defense: Defense) -> None:
    bad = [w for w in defense.where if w not in PLACES]
    if bad:
        raise ValueError(f"defense {defense.name!r}: unknown place {bad[0]!r}; choose from "
                         f"{PLACES}")


_DEFENSES: Registry[Defense] = Registry(
    "defense", Defense, pattern=r"[a-z][a-z0-9_-]{0,31}",
    pattern_words="1-32 lower-case letters, digits, - or _, starting with a letter")


def register_defense(defense: Any, *, replace: bool = False) -> Any:
    """Add ``defense`` (a subclass of :class:`Defense`, or an instance) to the registry
    under its ``name``; returns its argument, so that it can decorate a class. A name
    already taken is refused unless ``replace``."""
    return _DEFENSES.add(defense, replace=replace, check=_offered_somewhere)


def unregister_defense(name: str) -> None:
    """Remove the defense ``name`` (tests; unknown names are ignored)."""
    _DEFENSES.remove(name)


def get_defense(name: str) -> Defense:
    """The registered defense ``name``; :class:`~explorer.core.errors.InputError` naming
    the choices when there is none."""
    return _DEFENSES.get(name)


def list_defenses(where: str | None = None) -> list[str]:
    """Registered defense names in registration order (a grid's column order); ``where``:
    only those a place of :data:`PLACES` offers."""
    return _DEFENSES.names(None if where is None else (lambda d: where in d.where))


def defenses_version() -> int:
    """A number that changes whenever the defense registry does."""
    return _DEFENSES.version


def defense_help(where: str | None = None) -> str:
    """``name: summary`` of every defense ``where`` offers, for help texts."""
    return _DEFENSES.help(list_defenses(where))
