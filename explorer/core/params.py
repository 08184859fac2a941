"""Method parameters declared once.

Each method (an attack, a search) has one frozen dataclass of parameters whose fields
are declared with :func:`param`: the field's default, its bounds or choices and its help
text live there and nowhere else. Everything that takes the parameters from outside (the
CLI's options, an API call, a stored job, the app's controls) checks them with
:meth:`Params.parse`, the one check, and gets back the frozen object::

    @dataclass(frozen=True)
    class MyParams(Params):
        steps: int = param(10, "steps per prompt", lo=1, hi=1000)
        ratio: float = param(0.5, "share of experts masked", kind="ratio")

    p = MyParams.parse({"steps": 20})          # MyParams(steps=20, ratio=0.5)
    MyParams.parse({"steps": 0})               # ParamError: steps must lie in 1..1000, got 0

Pure Python: no torch, so the CLI's ``--help`` can list parameters without loading a
model library.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Mapping, TypeVar

from explorer.core.errors import ParamError, brief

#: The kinds of value a parameter holds (what :meth:`Params.parse` accepts for it).
KINDS = ("int", "float", "logprob", "ratio", "text", "choice", "flag", "path")
_SPEC = "explorer.param"

P = TypeVar("P", bound="Params")


@dataclass(frozen=True)
class Spec:
    """How one parameter is checked and shown: ``kind`` (one of :data:`KINDS`), inclusive
    bounds ``lo`` / ``hi`` for numbers, ``choices`` for a choice, ``max_chars`` for text,
    ``help`` (one line, for ``--help`` and the app), ``flag`` (the CLI option, default
    ``--name-with-dashes``), ``label`` (the app's short label, default the help) and
    ``where``: the places that offer it (``"evaluate"``, ``"defend"``, ``"job"``; empty:
    all)."""

    kind: str
    help: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple = ()
    max_chars: int | None = None
    flag: str | None = None
    label: str | None = None
    where: tuple = ()

    def offered(self, where: str) -> bool:
        """Whether the place ``where`` offers this parameter."""
        return not self.where or where in self.where

    def option(self, name: str) -> str:
        """The CLI option of parameter ``name``."""
        return self.flag or "--" + name.replace("_", "-")

    def bounds(self) -> str:
        """The accepted values in words (for messages and help)."""
        if self.kind == "choice":
            return " | ".join(map(str, self.choices))
        if self.kind == "ratio":
            return "strictly between 0 and 1"
        if self.kind == "logprob":
            return "a log-probability (a number <= 0)"
        if self.lo is not None or self.hi is not None:
            lo = "-inf" if self.lo is None else f"{self.lo:g}"
            hi = "inf" if self.hi is None else f"{self.hi:g}"
            return f"{lo}..{hi}"
        return ""


def param(default: Any, help: str, *, kind: str | None = None, lo: float | None = None,
          hi: float | None = None, choices=(), max_chars: int | None = None,
          flag: str | None = None, label: str | None = None, where: tuple = ()) -> Any:
    """A dataclass field with its :class:`Spec`. ``kind`` defaults from ``choices`` and the
    default's type (bool: flag, int: int, float: float, str or None: text). A default of
    None means "the caller's own" (e.g. a dataset row's target) and is always accepted."""
    if kind is None:
        kind = ("choice" if choices else "flag" if isinstance(default, bool) else
                "int" if isinstance(default, int) else
                "float" if isinstance(default, float) else "text")
    if kind not in KINDS:
        raise ValueError(f"unknown parameter kind {kind!r}")  # a bug in a declaration
    spec = Spec(kind=kind, help=help, lo=lo, hi=hi, choices=tuple(choices),
                max_chars=max_chars, flag=flag, label=label, where=tuple(where))
    return field(default=default, metadata={_SPEC: spec})


def spec_of(f: dataclasses.Field) -> Spec:
    """The :class:`Spec` of a field declared with :func:`param`."""
    spec = f.metadata.get(_SPEC)
    if spec is None:
        raise TypeError(f"parameter {f.name!r} is not declared with param()")
    return spec


def check_value(name: str, spec: Spec, value: Any, default: Any = None) -> Any:
    """``value`` of parameter ``name`` as its kind takes it, or :class:`ParamError` with one
    line naming the parameter. None gives ``default``."""
    if value is None:
        return default
    kind = spec.kind
    if kind == "int":
        return _whole(name, spec, value)
    if kind in ("float", "logprob", "ratio"):
        v = _number(name, value)
        if kind == "logprob" and not v <= 0:
            raise ParamError(f"{name} is a log-probability: it must be a number <= 0, "
                             f"got {brief(value)}")
        if kind == "ratio" and not 0.0 < v < 1.0:
            raise ParamError(f"{name} must lie strictly between 0 and 1, got {brief(value)}")
        if kind != "logprob" and not math.isfinite(v):
            raise ParamError(f"{name} must be a finite number, got {brief(value)}")
        _in_bounds(name, spec, v)
        return v
    if kind == "flag":
        if not isinstance(value, bool):
            raise ParamError(f"{name} must be true or false, got {brief(value)}")
        return value
    if not isinstance(value, str):
        raise ParamError(f"{name} must be text, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ParamError(f"{name} is not valid Unicode text (lone surrogates)") from None
    if kind == "choice":
        if value not in spec.choices:
            raise ParamError(f"unknown {name} {brief(value)}; choose {spec.bounds()}")
        return value
    if not value.strip():
        raise ParamError(f"the {name} is empty")
    if spec.max_chars is not None and len(value) > spec.max_chars:
        raise ParamError(f"the {name} has {len(value)} characters; at most "
                         f"{spec.max_chars} are accepted")
    return value


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ParamError(f"{name} must be a number, got {brief(value)}")
    if isinstance(value, str) and len(value) <= 40:
        try:
            value = float(value)
        except ValueError:
            pass
    if not isinstance(value, (int, float)):
        raise ParamError(f"{name} must be a number, got {brief(value)}")
    v = float(value)
    if math.isnan(v):
        raise ParamError(f"{name} must be a number, got {brief(value)}")
    return v


def _whole(name: str, spec: Spec, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        v = value
    else:
        try:
            f = _number(name, value)
        except ParamError:
            raise ParamError(f"{name} must be an integer, got {brief(value)}") from None
        if not math.isfinite(f) or f != int(f):
            raise ParamError(f"{name} must be an integer, got {brief(value)}")
        v = int(f)
    _in_bounds(name, spec, v)
    return v


def _in_bounds(name: str, spec: Spec, v: float) -> None:
    if (spec.lo is not None and v < spec.lo) or (spec.hi is not None and v > spec.hi):
        raise ParamError(f"{name} must lie in {spec.bounds()}, got {brief(v)}")


class Params:
    """The base of a method's frozen parameter dataclass (see the module docs). Fields are
    declared with :func:`param`; instances are made by :meth:`parse` (checked) or by the
    dataclass constructor (trusted code)."""

    #: How the parameters are named in messages ("F-SOUR parameters").
    what: ClassVar[str] = "parameters"

    @classmethod
    def specs(cls) -> dict[str, Spec]:
        """Every parameter's :class:`Spec`, in declaration order."""
        return {f.name: spec_of(f) for f in fields(cls)}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every parameter's default."""
        return {f.name: f.default for f in fields(cls)}

    @classmethod
    def parse(cls: type[P], values: Mapping[str, Any] | None = None, *,
              unknown: str = "refuse") -> P:
        """The one check of parameters from outside: ``values`` (None or missing: the
        default) checked one by one (:func:`check_value`). ``unknown``: what to do with
        keys that are no parameter, ``"refuse"`` (:class:`ParamError`) or ``"ignore"``.
        An instance of the class is returned as it is."""
        if isinstance(values, cls):
            return values
        if values is None:
            values = {}
        if not isinstance(values, Mapping):
            raise ParamError(f"{cls.what} must be a mapping of names to values, got "
                             f"{type(values).__name__}")
        specs = cls.specs()
        extra = sorted(str(k) for k in values if k not in specs)
        if extra and unknown == "refuse":
            raise ParamError(f"unknown {cls.what} {extra}; known: {list(specs)}")
        defaults = cls.defaults()
        return cls(**{name: check_value(name, spec, values.get(name), defaults[name])
                      for name, spec in specs.items()})

    def to_dict(self) -> dict[str, Any]:
        """The parameters as a JSON-ready dict (what results and jobs record)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls: type[P], d: Mapping[str, Any]) -> P:
        """The inverse of :meth:`to_dict` (checked, like :meth:`parse`)."""
        return cls.parse(d)

    def replace(self: P, **changes: Any) -> P:
        """A copy with ``changes`` (checked)."""
        return type(self).parse({**self.to_dict(), **changes})


@dataclass(frozen=True)
class NoParams(Params):
    """The parameters of a method that takes none."""
