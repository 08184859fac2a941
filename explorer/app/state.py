"""What the app keeps per visitor, typed: each tab's state is one dataclass in one
``gr.State`` (Gradio keeps a copy per browser session), holding the library's own objects
(traces, routes, results), never their JSON. And the components every tab shares.

Cross-tab actions are explicit: a tab's ``events`` function names the other tabs'
components it writes (:mod:`explorer.app.build` passes them).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from explorer.core.route import Route
from explorer.core.trace import RoutingTrace


@dataclass(frozen=True)
class Cell:
    """A selected heatmap cell: absolute decoder ``layer`` and templated-prompt (or
    generated) ``position``."""

    layer: int
    position: int


@dataclass
class InspectState:
    """The Inspect tab of one visitor: the baseline trace and its badge (the verdict and
    log P(target), computed once per baseline), the re-routed trace, the pending route
    (a :class:`Route`, edited in place of a list of dicts) and the selected cell."""

    base: RoutingTrace | None = None
    base_badge: dict | None = None
    alt: RoutingTrace | None = None
    route: Route = field(default_factory=Route)
    selected: Cell | None = None

    def edit_dicts(self) -> list[dict]:
        """The pending edits as JSON dicts (figures and labels take these)."""
        return [e.to_dict() for e in self.route.edits]

    def selected_dict(self) -> dict | None:
        """The selected cell as the heatmap's ``selected`` takes it."""
        s = self.selected
        return None if s is None else {"layer": s.layer, "position": s.position}

    def shown(self, view: str) -> RoutingTrace | None:
        """The trace the heatmap shows for radio value ``view``."""
        return self.alt if (view == "re-routed" and self.alt is not None) else self.base

    def with_(self, **changes: Any) -> InspectState:
        """A copy with ``changes``."""
        return replace(self, **changes)


@dataclass
class TourState:
    """The Tour of one visitor: the baseline and the re-routed trace it has shown, and the
    numbers its steps have computed (the placeholders of the tour's text, by name)."""

    base: RoutingTrace | None = None
    alt: RoutingTrace | None = None
    facts: dict = field(default_factory=dict)


@dataclass
class Shared:
    """The components every tab reads or writes: the prompt, system prompt and answer
    length, Generate, the tabs, the model header and the browser's stored state (its
    client id and search ids)."""

    prompt: Any
    system: Any
    max_new: Any
    gen_btn: Any
    tabs: Any
    header: Any
    browser: Any


@dataclass
class ResultsState:
    """The Results tab of one visitor: the evaluate result files it opened (``a``, and
    ``b`` to compare with), as :class:`~explorer.evaluation.results.ResultFile` objects
    (held in the visitor's session only), and the id of the evaluate job it runs."""

    a: Any = None
    b: Any = None
    job: str | None = None  # the evaluate job it started and is waiting for

    def files(self) -> list[tuple[str, Any]]:
        """The opened files with their labels ("A", "B")."""
        return [(k, f) for k, f in (("A", self.a), ("B", self.b)) if f is not None]
