"""Routes: which experts to force or mask, at which MoE layer and prompt position.

A :class:`Route` is a list of :class:`RouteEdit` plus an ``info`` dict of provenance.
Its JSON form is a public format (see README, "Route JSON")::

    {"edits": [{"layer": 5, "position": 12, "experts": [3, 9], "mode": "force"},
               {"layer": 7, "position": null, "experts": [1, 2], "mode": "mask"}],
     "info": {}}

``layer`` is the absolute decoder-layer index; ``position`` the 0-based index into the
templated prompt's tokens, ``None`` (JSON ``null``) meaning every position, generated
tokens included. ``force`` makes exactly those experts the ones the router may pick
(a forced set has the layer's top-k size); ``mask`` forbids those experts.
Edits compose: at each (layer, position) the allowed experts are the intersection of
what every applicable edit allows. A later ``force`` at the same cell replaces an
earlier one (see :meth:`Route.force`). Both builders take their arguments in the order
of an edit, ``(layer, position, experts)``::

    Route().force(5, 12, [3, 9]).mask(7, None, [1, 2])
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Literal

if TYPE_CHECKING:  # pragma: no cover
    from explorer.core.layers import ModelInfo

from explorer.core.defaults import MAX_ROUTE_EDITS, MAX_ROUTE_JSON_CHARS
from explorer.core.errors import RouteError, brief

Mode = Literal["force", "mask"]
_UNSET: Any = object()  # "no system prompt given to compare" (None means "none")
_GIVEN_NOT: Any = object()  # an argument of Route.mask left out (None means "every position")
MODES: tuple[Mode, ...] = ("force", "mask")


@dataclass(frozen=True)
class RouteEdit:
    """One edit: force or mask ``experts`` at ``layer`` and ``position`` (None = all)."""

    layer: int
    position: int | None
    experts: tuple[int, ...]
    mode: Mode = "force"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise RouteError(f"edit mode must be one of {MODES}, got {self.mode!r}")
        if isinstance(self.layer, bool) or not isinstance(self.layer, int):
            raise RouteError(f"edit layer must be an integer, got {self.layer!r}")
        if self.position is not None and (
            isinstance(self.position, bool) or not isinstance(self.position, int)
        ):
            raise RouteError(f"edit position must be an integer or null, got {self.position!r}")
        experts = tuple(self.experts)
        if not experts:
            raise RouteError("edit has no experts")
        for e in experts:
            if isinstance(e, bool) or not isinstance(e, int):
                raise RouteError(f"expert indices must be integers, got {e!r}")
        if len(set(experts)) != len(experts):
            raise RouteError(f"edit lists an expert twice: {list(experts)}")
        if self.mode == "force":
            experts = tuple(sorted(experts))
        object.__setattr__(self, "experts", experts)
        # ints only, so the hash survives pickling into another process (str/None hashes vary)
        pos = -1 if self.position is None else self.position
        object.__setattr__(self, "_hash", hash((self.layer, pos, experts, self.mode == "mask")))

    def __hash__(self) -> int:  # computed once: searches hash routes of ~100 edits per candidate
        return self._hash

    def __eq__(self, other) -> bool:
        if self is other:
            return True
        if not isinstance(other, RouteEdit):
            return NotImplemented
        return self._hash == other._hash and (self.layer, self.position, self.experts, self.mode) == \
            (other.layer, other.position, other.experts, other.mode)

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "position": self.position,
                "experts": list(self.experts), "mode": self.mode}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RouteEdit":
        if not isinstance(d, dict):
            raise RouteError(f"each edit must be a JSON object, got {type(d).__name__}")
        missing = [k for k in ("layer", "experts") if k not in d]
        if missing:
            raise RouteError(f"edit is missing {', '.join(missing)}: {d}")
        unknown = set(d) - {"layer", "position", "experts", "mode"}
        if unknown:
            raise RouteError(f"edit has unknown keys {sorted(unknown)}")
        experts = d["experts"]
        if not isinstance(experts, (list, tuple)):
            raise RouteError(f"edit experts must be a list, got {experts!r}")
        return cls(layer=d["layer"], position=d.get("position"), experts=tuple(experts),
                   mode=d.get("mode", "force"))


@dataclass
class Route:
    """An ordered list of routing edits with provenance ``info``.

    Build one with :meth:`force` / :meth:`mask` (both return ``self`` for chaining)
    or from JSON with :meth:`from_json`. Apply it with ``MoEModel.control(route)``.
    """

    edits: list[RouteEdit] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    # -- building -------------------------------------------------------------------
    def force(self, layer: int, position: int | None, experts: Iterable[int]) -> "Route":
        """Force ``experts`` at (layer, position); replaces an earlier force at that cell."""
        edit = RouteEdit(layer, position, tuple(experts), "force")
        self.edits = [e for e in self.edits
                      if not (e.mode == "force" and e.layer == layer and e.position == position)]
        self.edits.append(edit)
        return self

    def mask(self, layer: int, *args: Any, position: Any = _GIVEN_NOT,
             experts: Any = _GIVEN_NOT) -> "Route":
        """Forbid ``experts`` at (layer, position); ``position`` None means every position,
        generated tokens included. Returns ``self`` for chaining.

        Use the order of :meth:`force`: ``mask(layer, position, experts)``, e.g.
        ``mask(3, None, [0, 1])`` (every position) or ``mask(3, 5, [0, 1])``, or keywords:
        ``mask(3, position=5, experts=[0, 1])`` (``position`` defaults to None there).

        For compatibility the older order is accepted too: ``mask(layer, experts)`` and
        ``mask(layer, experts, position)`` (``position`` also by keyword). The two orders
        are told apart by type: a position is an int or None, experts an iterable of ints.
        Raises :class:`RouteError` when the arguments fit neither order (two ints, two
        lists, no experts) and ``TypeError`` for too many or repeated arguments.
        """
        position, experts = _mask_arguments(args, position, experts)
        self.edits.append(RouteEdit(layer, position, tuple(experts), "mask"))
        return self

    def copy(self) -> "Route":
        return Route(list(self.edits), dict(self.info))

    def with_force(self, layer: int, position: int | None, experts: Iterable[int]) -> "Route":
        """A copy of this route with one more forced cell (used by searches)."""
        return self.copy().force(layer, position, experts)

    def __len__(self) -> int:
        return len(self.edits)

    @property
    def layers(self) -> list[int]:
        return sorted({e.layer for e in self.edits})

    @property
    def protected_layers(self) -> list[int]:
        """The layers a defense route pins (``info["protect_layers"]``, default none).

        The pinned layers live in ``info``, not in a new edit mode, so the JSON format is
        unchanged: old readers load such a defense (as a route without that protection)
        instead of failing on an unknown mode. Raises :class:`RouteError` when malformed.
        """
        v = self.info.get("protect_layers")
        if v is None:
            return []
        if not isinstance(v, (list, tuple)) or any(
                isinstance(x, bool) or not isinstance(x, int) for x in v):
            raise RouteError(f"info.protect_layers must be a list of layer indices, got {v!r}")
        return sorted(set(v))

    @property
    def defense_system(self) -> str | None:
        """The system prompt a defense puts in force (``info["defense_system"]``, e.g. the
        self-reminder defense; None: none). Like the pinned layers it lives in ``info``;
        the code that templates prompts applies it (:meth:`system_under`), since a system
        prompt changes the tokens, not the routing. Raises :class:`RouteError` when not
        text."""
        v = self.info.get("defense_system")
        if v is None:
            return None
        if not isinstance(v, str):
            raise RouteError(f"info.defense_system must be text, got {type(v).__name__}")
        return v if v.strip() else None

    def system_under(self, system: str | None) -> str | None:
        """The system prompt a prompt is templated with when this route is the defense in
        force and ``system`` the user's: the defense's system prompt after the user's
        (a blank line between), or ``system`` when the defense has none."""
        mine = self.defense_system
        if mine is None:
            return system
        return f"{system}\n\n{mine}" if isinstance(system, str) and system.strip() else mine

    @property
    def defends(self) -> bool:
        """As a model-wide defense: does it change anything (masks, pinned layers or a
        system prompt)?"""
        return bool(self.edits or self.protected_layers or self.defense_system)

    def under_defense(self, defense: "Route | None") -> "Route":
        """This route with a model-wide ``defense`` applied on top. The defense wins:

        - every edit (force or mask) at a layer the defense protects
          (:attr:`protected_layers`) is dropped: that router chooses naturally;
        - a forced cell that uses an expert a defense mask forbids there is dropped (the
          router then picks among the allowed experts), and the defense's masks are
          appended.
        """
        if defense is None or not defense.defends:
            return self
        pinned = set(defense.protected_layers)
        kept = []
        for e in self.edits:
            if e.layer in pinned:
                continue
            if e.mode == "force":
                banned = set()
                for d in defense.edits:
                    if d.layer == e.layer and d.mode == "mask" and d.position in (None, e.position):
                        banned |= set(d.experts)
                if banned & set(e.experts):
                    continue
            kept.append(e)
        return Route(kept + [d for d in defense.edits if d.mode == "mask"], dict(self.info))

    # -- JSON -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"edits": [e.to_dict() for e in self.edits], "info": dict(self.info)}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Route":
        if not isinstance(d, dict):
            raise RouteError("route JSON must be an object with an 'edits' list")
        edits = d.get("edits")
        if not isinstance(edits, list):
            raise RouteError("route JSON must have an 'edits' list")
        if len(edits) > MAX_ROUTE_EDITS:
            raise RouteError(f"the route has {len(edits)} edits; at most {MAX_ROUTE_EDITS} "
                             f"are accepted")
        info = d.get("info", {})
        if info is None:
            info = {}
        if not isinstance(info, dict):
            raise RouteError("route 'info' must be an object")
        return cls([RouteEdit.from_dict(e) for e in edits], dict(info))

    @classmethod
    def from_json(cls, text: str) -> "Route":
        if not isinstance(text, (str, bytes, bytearray)):
            raise RouteError(f"route JSON must be text, got {type(text).__name__}")
        if len(text) > MAX_ROUTE_JSON_CHARS:
            raise RouteError(f"the route JSON has {len(text)} characters; at most "
                             f"{MAX_ROUTE_JSON_CHARS} are accepted")
        try:
            data = json.loads(text)
        except (ValueError, TypeError) as exc:  # JSONDecodeError, bad UTF-8 bytes
            raise RouteError(f"route is not valid JSON: {exc}") from None
        except RecursionError:
            raise RouteError("route is not valid JSON: nested too deeply") from None
        return cls.from_dict(data)

    def save(self, path) -> None:
        from pathlib import Path
        Path(path).write_text(self.to_json(indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path) -> "Route":
        from pathlib import Path
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise RouteError(f"cannot read route file {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise RouteError(f"route file {path} is not UTF-8 JSON text") from None
        return cls.from_json(text)

    # -- provenance -----------------------------------------------------------------
    def check_provenance(self, provenance: dict[str, Any], system: Any = _UNSET) -> str | None:
        """Compare this route's ``info`` with a loaded model's ``provenance()``.

        Returns None when nothing contradicts (keys missing on either side are not
        compared), else one line naming what differs: the model, the chat template or
        the system prompt (hence the tokenisation and the positions). ``system``: the
        system prompt the route is about to be used with (None: none); a route records
        its own in ``info["system"]``, and a route made by the explorer without one (its
        ``info`` names a model but no system) counts as made without one. A mismatch is a
        warning: the route may still validate against the other model.
        """
        diffs = []
        mine, theirs = self.info.get("model"), provenance.get("model")
        if isinstance(mine, str) and isinstance(theirs, str) and mine and theirs \
                and _model_key(mine) != _model_key(theirs):
            diffs.append(f"model {mine!r}, not {theirs!r}")
        mine, theirs = self.info.get("chat_template_hash"), provenance.get("chat_template_hash")
        if mine and theirs and mine != theirs:
            diffs.append(f"chat template {mine}, not {theirs}")
        if system is not _UNSET and ("system" in self.info or "model" in self.info):
            mine = self.system
            theirs = system if isinstance(system, str) and system.strip() else None
            if mine != theirs:
                diffs.append(f"{_system_words(mine)}, not {_system_words(theirs)}")
        if not diffs:
            return None
        return "route was made for " + " and ".join(diffs) + \
            " (positions may point at other tokens)"

    @property
    def system(self) -> str | None:
        """The system prompt the route was made with (``info["system"]``; None: none)."""
        v = self.info.get("system")
        return v if isinstance(v, str) and v.strip() else None

    # -- semantics ------------------------------------------------------------------
    def allowed(self, layer: int, position: int | None, num_experts: int) -> set[int]:
        """Experts allowed at (layer, position) after composing every applicable edit."""
        allowed = set(range(num_experts))
        for e in self.edits:
            if e.layer != layer:
                continue
            if e.position is not None and e.position != position:
                continue
            if e.mode == "force":
                allowed &= set(e.experts)
            else:
                allowed -= set(e.experts)
        return allowed

    def check_fits(self, info: "ModelInfo", num_tokens: int | None = None,
                   system: Any = _UNSET) -> str | None:
        """:meth:`validate` against a loaded model, worded for users (the CLI and the app
        share it): returns the provenance note (made for another model, chat template or
        system prompt, see :meth:`check_provenance`) when the route still validates, None
        when it matches; where it does not validate, the :class:`RouteError` names the
        note too."""
        note = self.check_provenance(info.provenance(), system)
        try:
            self.validate(info, num_tokens=num_tokens)
        except RouteError as exc:
            if note:
                raise RouteError(f"{note}; it does not fit the loaded model {info.name}: "
                                 f"{exc}") from None
            raise
        return note

    def validate(self, info: "ModelInfo", num_tokens: int | None = None) -> None:
        """Raise :class:`RouteError` if this route cannot be applied to the model.

        ``num_tokens`` is the templated prompt length; positions must lie below it.
        """
        by_layer = {m.index: m for m in info.layers}
        bad = [x for x in self.protected_layers if x not in info.moe_layers]
        if bad:
            raise RouteError(f"protected layer {bad[0]} is not an MoE layer (MoE layers: "
                             f"{info.moe_layers})")
        for e in self.edits:
            lay = by_layer.get(e.layer)
            if lay is None:
                raise RouteError(
                    f"layer {e.layer} is out of range: the model has decoder layers "
                    f"0..{len(info.layers) - 1}")
            if not lay.is_moe:
                raise RouteError(f"layer {e.layer} is a dense layer (no router); MoE layers "
                                 f"are {info.moe_layers}")
            bad = [x for x in e.experts if not 0 <= x < lay.num_experts]
            if bad:
                raise RouteError(f"expert {bad[0]} is out of range at layer {e.layer}: "
                                 f"experts are 0..{lay.num_experts - 1}")
            if e.position is not None:
                if e.position < 0:
                    raise RouteError(f"position {e.position} is negative")
                if num_tokens is not None and e.position >= num_tokens:
                    raise RouteError(f"position {e.position} is out of range: the templated "
                                     f"prompt has {num_tokens} tokens (0..{num_tokens - 1})")
            if e.mode == "force":
                if len(e.experts) != lay.top_k:
                    raise RouteError(f"a forced set at layer {e.layer} must have exactly "
                                     f"top-k = {lay.top_k} experts, got {len(e.experts)}")
                lay.check_groups(e.experts)
        # composed sets must leave at least k experts (and respect groups)
        for layer in self.layers:
            lay = by_layer[layer]
            positions = {e.position for e in self.edits if e.layer == layer}
            for pos in positions:
                allowed = self.allowed(layer, pos, lay.num_experts)
                if len(allowed) < lay.top_k:
                    where = "every position" if pos is None else f"position {pos}"
                    raise RouteError(
                        f"edits at layer {layer}, {where} leave {len(allowed)} allowed "
                        f"expert(s); the router needs at least top-k = {lay.top_k}")
                if lay.n_group and lay.topk_group and len(allowed) == lay.top_k:
                    lay.check_groups(sorted(allowed))


def _is_position(x: Any) -> bool:
    return x is None or (isinstance(x, int) and not isinstance(x, bool))


def _is_experts(x: Any) -> bool:
    return isinstance(x, Iterable) and not isinstance(x, (str, bytes, bytearray))


_MASK_FORMS = "call mask(layer, position, experts), e.g. mask(3, None, [0, 1])"


def _mask_arguments(args: tuple, position: Any, experts: Any) -> tuple[Any, Any]:
    """``(position, experts)`` of a :meth:`Route.mask` call, in either order (see there)."""
    if len(args) > 2:
        raise TypeError(f"Route.mask takes a layer, a position and experts; got "
                        f"{1 + len(args)} positional arguments")
    if len(args) == 2:
        if position is not _GIVEN_NOT or experts is not _GIVEN_NOT:
            raise TypeError("Route.mask got position or experts twice (positional and "
                            "keyword)")
        a, b = args
        if _is_position(a) and _is_experts(b):
            return a, b  # mask(layer, position, experts)
        if _is_experts(a) and _is_position(b):
            return b, a  # the older mask(layer, experts, position)
        raise RouteError(f"Route.mask cannot tell the position from the experts in "
                         f"({brief(a)}, {brief(b)}): {_MASK_FORMS}")
    if len(args) == 1:
        (a,) = args
        if position is not _GIVEN_NOT and experts is not _GIVEN_NOT:
            raise TypeError("Route.mask got position or experts twice (positional and "
                            "keyword)")
        if experts is not _GIVEN_NOT:  # mask(layer, position, experts=...)
            if not _is_position(a):
                raise RouteError(f"Route.mask got experts by keyword, so {brief(a)} should "
                                 f"be the position (an int or None): {_MASK_FORMS}")
            position = a
        else:  # the older mask(layer, experts) or mask(layer, experts, position=...)
            if not _is_experts(a):
                raise RouteError(f"Route.mask needs experts (an iterable of ints), got only "
                                 f"{brief(a)}: {_MASK_FORMS}")
            experts = a
    if experts is _GIVEN_NOT:
        raise RouteError(f"Route.mask needs experts: {_MASK_FORMS}")
    if position is _GIVEN_NOT:
        position = None
    if not _is_position(position) or not _is_experts(experts):
        raise RouteError(f"Route.mask wants a position that is an int or None and experts "
                         f"that are an iterable of ints, got position={brief(position)}, "
                         f"experts={brief(experts)}: {_MASK_FORMS}")
    return position, experts


def _system_words(system: str | None) -> str:
    if system is None:
        return "no system prompt"
    text = system if len(system) <= 40 else system[:37] + "..."
    return f"system prompt {text!r}"


def _model_key(name: str) -> str:
    """A model name for comparison: local folders by their resolved path."""
    import os
    n = name.strip().rstrip("/\\")
    try:
        if os.path.isdir(os.path.expanduser(n)):
            return os.path.realpath(os.path.expanduser(n))
    except (OSError, ValueError):  # e.g. a NUL in the name
        pass
    return n
