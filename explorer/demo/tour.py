"""The guided tour: a few numbered steps that show a refusal flipping on the demo model.

The tour lives in ``assets/tour/``: ``tour.json`` (title, prompt, settings, steps) and the
route it replays (found by running F-SOUR on the demo model, see ``assets/tour/README.md``).
:func:`load_tour` reads and checks it; :func:`baseline` and :func:`replayed` run its two
traces; :func:`changed_cells` counts where the routing differs. No gradio here.
"""

from __future__ import annotations

import json
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
    max_new_tokens: int = 24
    rosais_samples: int = 16
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
    def from_dict(cls, d: dict[str, Any], folder: Path = TOUR_DIR) -> "Tour":
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
