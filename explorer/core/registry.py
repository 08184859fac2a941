"""The one registry of plugin classes (attacks, defenses): named instances of a base class,
each with a :class:`~explorer.core.params.Params` dataclass, kept in registration order.

Pure Python: no torch, so the CLI's ``--help`` lists plugins without loading a model library.
"""

from __future__ import annotations

import re
from typing import Callable, Generic, TypeVar

from explorer.core.errors import InputError
from explorer.core.params import Params

T = TypeVar("T")


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


class Registry(Generic[T]):
    """Plugins of ``base`` by name. ``kind`` names them in messages ("attack");
    ``unknown`` is the word an unknown name is refused with ("method"); ``pattern`` the
    names allowed, described by ``pattern_words``."""

    def __init__(self, kind: str, base: type, *, unknown: str | None = None,
                 pattern: str = r"[a-z][a-z0-9_]{0,31}",
                 pattern_words: str = "1-32 lower-case letters, digits or _, starting with a "
                                      "letter"):
        self.kind, self.base, self.unknown = kind, base, unknown or kind
        self._a = _article(kind) + " " + kind
        self._name = re.compile(pattern + r"\Z")
        self._words = pattern_words
        self._items: dict[str, T] = {}
        self._version = 0

    def add(self, plugin, *, replace: bool = False,
            check: Callable[[T], None] | None = None):
        """Register ``plugin`` (a subclass of the base, or an instance) under its ``name``;
        returns its argument, so that it can decorate a class. A name already taken is
        refused unless ``replace``; ``check(instance)`` may refuse more (ValueError)."""
        inst = plugin() if isinstance(plugin, type) else plugin
        if not isinstance(inst, self.base):
            raise TypeError(f"{self._a} must be {_article(self.base.__name__)} "
                            f"{self.base.__name__} subclass, got {type(inst).__name__}")
        name = inst.name
        if not isinstance(name, str) or not self._name.match(name):
            raise ValueError(f"{self._a} name is {self._words}; got {name!r}")
        if name in self._items and not replace:
            raise ValueError(f"{self._a} named {name!r} is already registered")
        if not (isinstance(inst.Params, type) and issubclass(inst.Params, Params)):
            raise TypeError(f"{self.kind} {name!r}: Params must be a Params dataclass")
        inst.Params.specs()  # every field declared with param()
        if check is not None:
            check(inst)
        self._items[name] = inst
        self._version += 1
        return plugin

    def remove(self, name: str) -> None:
        """Forget ``name`` (tests; unknown names are ignored)."""
        if self._items.pop(name, None) is not None:
            self._version += 1

    def get(self, name: str) -> T:
        """The plugin ``name``; :class:`InputError` naming the choices when there is none."""
        item = self._items.get(name) if isinstance(name, str) else None
        if item is None:
            raise InputError(f"unknown {self.unknown} {str(name)[:40]!r}; choose one of "
                             f"{self.names()}")
        return item

    def names(self, keep: Callable[[T], bool] | None = None) -> list[str]:
        """Names in registration order; ``keep``: only the plugins it accepts."""
        return [n for n, p in self._items.items() if keep is None or keep(p)]

    def help(self, names: list[str]) -> str:
        """``name: summary`` of each of ``names``, for help texts."""
        return "; ".join(f"{n}: {self._items[n].summary}" for n in names)

    @property
    def version(self) -> int:
        """A number that changes whenever the registry does."""
        return self._version
