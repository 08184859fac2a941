"""The guided tour: a few numbered steps that show a refusal flipping on the demo model.

The tour lives in ``assets/tour/``: ``tour.json`` (title, prompt, settings, steps) and the
route it replays (found by running F-SOUR on the demo model, see ``assets/tour/README.md``).
:func:`load_tour` reads and checks it; :func:`baseline` and :func:`replayed` run its two
traces; :func:`changed_cells` counts where the routing differs. No gradio here.

Every number the tour's text states is computed, never written: the texts hold
placeholders (``{prompt_cells}``, see :data:`PLACEHOLDERS`) that the app fills with
:func:`fill` from the facts of :func:`cell_facts`, :func:`route_facts`,
:func:`rosais_facts` and :func:`compare_facts`, run on the loaded demo model.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explorer.core.errors import InputError
from explorer.core.paths import TOUR_DIR
from explorer.core.route import Route

if TYPE_CHECKING:
    from explorer.core.model import MoEModel

ACTIONS = ("generate", "rosais", "replay", "compare", "explain")
MIN_STEPS, MAX_STEPS = 4, 6

#: The placeholders a tour's title, intro and step texts may hold, and what fills them.
PLACEHOLDERS = {
    "steps": "the tour's number of steps",
    "prompt_tokens": "tokens of the templated prompt",
    "moe_layers": "MoE layers (routers) of the model",
    "prompt_cells": "prompt cells: prompt tokens x MoE layers, one router decision each",
    "route_edits": "edits (forced cells) of the shipped, minimal route",
    "searched_edits": "edits of the route F-SOUR found, before minimisation",
    "route_share": "the minimal route's edits as a percentage of the prompt cells",
    "rosais_samples": "random masks per router in the RoSais step",
    "rosais_finding": "the RoSais step's finding: the fewest top routers whose masking "
                      "flips the answer, or that none up to the tour's limit does",
    "rosais_top": "the fewest top-RoSais routers whose masking flips the answer",
    "rosais_layers": "those routers' layers, highest RoSais first",
    "changed_cells": "cells (prompt and answer) whose expert set differs from the baseline",
    "compared_cells": "cells compared (prompt and answer tokens x MoE layers)",
    "changed_prompt_cells": "prompt cells whose expert set differs from the baseline",
    "tour_tokens": "the answer length the tour uses (its own setting)",
}
_FIELD = re.compile(r"\{([a-z_]+)\}")
UNKNOWN = "…"  # a value the tour has not computed yet (its step's button computes it)


class TourError(InputError):
    """The tour file is missing or malformed (the message names what is wrong)."""


@dataclass(frozen=True)
class TourStep:
    """One numbered step: a title, a short text (markdown), what its button does
    (``action``, one of :data:`ACTIONS`) and the button's label."""

    number: int
    title: str
    text: str
    action: str
    button: str = ""


@dataclass
class Tour:
    """The tour's prompt, the route it replays and its steps (see the module docs)."""

    title: str
    intro: str
    prompt: str
    route_file: str
    steps: list[TourStep]
    model: str = "demo"
    #: the tour's own answer length (it never changes the app's max new tokens)
    max_new_tokens: int = 24
    rosais_samples: int = 16
    #: the most top-RoSais routers the RoSais step masks (it reports the fewest that flip)
    rosais_top: int = 2
    folder: Path = field(default=TOUR_DIR, compare=False, repr=False)

    @property
    def route_path(self) -> Path:
        return self.folder / self.route_file

    def route(self) -> Route:
        """The shipped route (:class:`~explorer.core.route.Route`)."""
        return Route.load(self.route_path)

    def step(self, action: str) -> TourStep:
        """The first step whose action is ``action``."""
        for s in self.steps:
            if s.action == action:
                return s
        raise KeyError(f"the tour has no {action!r} step")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("folder")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], folder: Path = TOUR_DIR) -> Tour:
        if not isinstance(d, dict):
            raise TourError("the tour must be a JSON object")
        need = ("title", "intro", "prompt", "route_file", "steps")
        missing = [k for k in need if k not in d]
        if missing:
            raise TourError(f"the tour lacks {', '.join(missing)}")
        known = set(cls.__dataclass_fields__) - {"folder"}
        extra = sorted(set(d) - known)
        if extra:
            raise TourError(f"unknown tour field(s): {', '.join(extra)}")
        steps = d["steps"]
        if not isinstance(steps, list) or not MIN_STEPS <= len(steps) <= MAX_STEPS:
            raise TourError(f"the tour needs {MIN_STEPS} to {MAX_STEPS} steps")
        parsed = []
        for i, s in enumerate(steps, 1):
            try:
                step = TourStep(**s)
            except TypeError as exc:
                raise TourError(f"tour step {i}: {exc}") from None
            if step.number != i:
                raise TourError(f"tour step {i} is numbered {step.number}")
            if step.action not in ACTIONS:
                raise TourError(f"tour step {i}: unknown action {step.action!r} "
                                f"(one of {', '.join(ACTIONS)})")
            parsed.append(step)
        for where, text in [("title", d["title"]), ("intro", d["intro"])] + [
                (f"step {s.number}", s.text) for s in parsed] + [
                (f"step {s.number}'s title", s.title) for s in parsed]:
            unknown = sorted(set(_FIELD.findall(str(text))) - set(PLACEHOLDERS))
            if unknown:
                raise TourError(f"{where}: unknown placeholder(s) {', '.join(unknown)} "
                                f"(known: {', '.join(PLACEHOLDERS)})")
        rf = str(d["route_file"])
        if Path(rf).name != rf:
            raise TourError(f"route_file must be a file name in the tour folder, got {rf!r}")
        for key in ("max_new_tokens", "rosais_samples", "rosais_top"):
            v = d.get(key, 1)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise TourError(f"{key} must be a non-negative integer, got {v!r}")
        return cls(**dict(d, steps=parsed), folder=Path(folder))


def load_tour(path: str | Path | None = None) -> Tour:
    """Read ``tour.json`` (default: the shipped one in ``assets/tour``); the route file it
    names must exist beside it and be a valid route."""
    path = Path(path) if path is not None else TOUR_DIR / "tour.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TourError(f"cannot read the tour {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise TourError(f"the tour {path} is not valid JSON: {exc}") from None
    tour = Tour.from_dict(data, folder=path.parent)
    tour.route()  # fails with a RouteError (an InputError) when missing or malformed
    return tour


def baseline(moe: MoEModel, tour: Tour, max_new_tokens: int | None = None):
    """The demo model's own answer to the tour prompt (a RoutingTrace)."""
    from explorer.core.trace import trace
    n = tour.max_new_tokens if max_new_tokens is None else max_new_tokens
    return trace(moe, tour.prompt, max_new_tokens=n)


def replayed(moe: MoEModel, tour: Tour, max_new_tokens: int | None = None):
    """The answer under the tour's route (a RoutingTrace); the route is validated first."""
    from explorer.core.trace import trace
    route = tour.route()
    route.validate(moe.info, num_tokens=len(moe.encode(tour.prompt)))
    n = tour.max_new_tokens if max_new_tokens is None else max_new_tokens
    return trace(moe, tour.prompt, max_new_tokens=n, route=route)


def changed_cells(base, alt) -> tuple[int, int, int | None]:
    """(cells whose expert set differs, cells compared, first token position with a
    change or None) between two traces."""
    changed = alt.changed_vs(base)
    width = len(changed[0]) if changed else 0
    first = next((t for t in range(width) if any(row[t] for row in changed)), None)
    return sum(map(sum, changed)), sum(len(row) for row in changed), first


# -- the numbers the tour states ----------------------------------------------------------------
def fill(text: str, facts: dict[str, Any]) -> str:
    """``text`` with each ``{name}`` placeholder replaced by ``facts[name]`` (lists joined
    with commas), or by :data:`UNKNOWN` when not computed yet."""
    def value(m: re.Match) -> str:
        v = facts.get(m.group(1))
        if v is None:
            return UNKNOWN
        if isinstance(v, (list, tuple)):
            return ", ".join(map(str, v))
        return str(v)
    return _FIELD.sub(value, text)


def cell_facts(moe: MoEModel, tour: Tour) -> dict[str, int]:
    """The prompt's size in router decisions: ``prompt_tokens``, ``moe_layers``,
    ``prompt_cells`` (their product), and the tour's ``steps`` and ``tour_tokens``."""
    n, layers = len(moe.encode(tour.prompt)), len(moe.moe_layers)
    return {"prompt_tokens": n, "moe_layers": layers, "prompt_cells": n * layers,
            "steps": len(tour.steps), "tour_tokens": tour.max_new_tokens}


def route_facts(route: Route, prompt_cells: int) -> dict[str, Any]:
    """The shipped route's size: ``route_edits``, ``searched_edits`` (the searched route's
    size its minimisation recorded, ``info["minimized_from"]``; its own size when it was
    not minimised) and ``route_share`` (percent of ``prompt_cells``, one decimal below 10)."""
    edits = len(route.edits)
    share = 100.0 * edits / max(prompt_cells, 1)
    return {"route_edits": edits,
            "searched_edits": int(route.info.get("minimized_from", edits)),
            "route_share": f"{share:.1f}%" if share < 10 else f"{share:.0f}%"}


def fewest_flipping(res) -> int | None:
    """The smallest L whose top-L masked routers flip the answer in a RoSais result run
    with ``curve=True`` (its ``by_top``), or None when none does."""
    return next((b["top"] for b in res.by_top if b["jailbroken"]), None)


def rosais_facts(res) -> dict[str, Any]:
    """The RoSais step's numbers from a result run with ``curve=True``: ``rosais_top``
    (:func:`fewest_flipping`), ``rosais_layers`` (those routers' layers), ``rosais_samples``
    and ``rosais_finding`` (one sentence saying what masking did)."""
    from explorer.methods.rosais import ranking
    top = fewest_flipping(res)
    ranked = ranking(res)
    n, tried = len(res.moe_layers), len(res.by_top)
    samples = res.info.get("samples")
    if top is None:
        finding = (f"masking the top {tried} routers of the {n}, or fewer, does not flip "
                   f"the answer with {samples} random masks per router")
        return {"rosais_top": None, "rosais_layers": None, "rosais_samples": samples,
                "rosais_finding": finding}
    layers = ranked[:top]
    finding = (f"masking only the top {top} of the {n} routers (layer"
               f"{'s' if top > 1 else ''} {', '.join(map(str, layers))}), each with its "
               "best random mask, flips the answer")
    return {"rosais_top": top, "rosais_layers": layers, "rosais_samples": samples,
            "rosais_finding": finding}


def compare_facts(base, alt) -> dict[str, int]:
    """Where two traces route differently: ``changed_cells`` of ``compared_cells`` (prompt
    and answer) and ``changed_prompt_cells`` (prompt only)."""
    changed, total, _ = changed_cells(base, alt)
    diff = alt.changed_vs(base)
    n = min(base.prompt_tokens, alt.prompt_tokens)
    return {"changed_cells": changed, "compared_cells": total,
            "changed_prompt_cells": sum(sum(row[:n]) for row in diff)}
