"""The route library as one caller sees it: the one home, in the app, of which stored routes
a caller may see and whose a saved route is.

Not hosted, the library is the user's own, as it always was: every route is visible, saved
routes have no owner, any may be deleted. Hosted, what a visitor saves (an Inspect route, an
import, a finished search: prompts, system prompts, search parameters) is theirs: stored
under their owner key (:meth:`explorer.app.gate.Visit.owner`) and visible to them only,
until they share it. A shared route is listed to every visitor, marked shared; only its
owner may unshare or delete it. An id the caller may not see is answered exactly like an
unknown one, so ids cannot be probed; exports of the caller's routes go in folders with
unguessable names.

Every view that lists, reads, replays, compares, exports, links, saves, imports, shares or
deletes a stored route does it through :func:`library`.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from explorer.storage.library import UNRESTRICTED, RouteStore, StoredRoute, StoreError, Viewer

if TYPE_CHECKING:
    from explorer.app.gate import Visit
    from explorer.core.route import Route

#: What the library table's access column says of a route (hosted mode).
ACCESS_LABELS = {(True, False): "yours · private", (True, True): "yours · shared",
                 (False, True): "shared"}


@dataclass(frozen=True)
class Library:
    """The route ``store`` as ``viewer`` sees it: :data:`UNRESTRICTED` (not hosted: every
    route, saved with no owner) or a visitor's owner key (hosted: their own routes and the
    shared ones; what they save is theirs)."""

    store: RouteStore
    viewer: str | Viewer = UNRESTRICTED

    @property
    def hosted(self) -> bool:
        """Whether routes are private to their owners here (hosted mode)."""
        return self.viewer is not UNRESTRICTED

    @property
    def owner(self) -> str | None:
        """Whose a route saved now is: the visitor's (hosted), else nobody's."""
        return self.viewer if self.hosted else None

    # -- reading ------------------------------------------------------------------------------
    def get(self, route_id: int) -> StoredRoute:
        """The stored route ``route_id`` if the caller may see it, else the same
        "no route with id ..." as for an unknown id."""
        return self.store.get_route(route_id, viewer=self.viewer)

    def list(self, model: str | None = None, text: str | None = None,
             success: bool | None = None, source: str | None = None,
             limit: int = 500) -> list[StoredRoute]:
        """The routes the caller may see, newest first, filtered as
        :meth:`~explorer.storage.library.RouteStore.list_routes` filters."""
        return self.store.list_routes(model=model, text=text, success=success, source=source,
                                      limit=limit, viewer=self.viewer)

    def models(self, limit: int = 2000) -> list[str]:
        """The models of the routes the caller may see (the model filter's choices)."""
        return sorted({r.model for r in self.list(limit=limit) if r.model})

    def with_expert(self, model: str, layer: int, expert: int,
                    limit: int = 50) -> list[tuple[StoredRoute, str]]:
        """The routes of ``model`` that force or mask ``expert`` at ``layer``, as
        ``(route, "force" | "mask")`` (see
        :meth:`~explorer.storage.library.RouteStore.routes_with_expert`): hosted, the
        caller's own only (an expert page lists what the visitor made)."""
        found = self.store.routes_with_expert(layer, expert, model=model, limit=limit,
                                              viewer=self.viewer)
        return [(sr, mode) for sr, mode in found if self.mine(sr)]

    def mine(self, sr: StoredRoute) -> bool:
        """Whether the caller owns ``sr`` (not hosted: every route is the user's)."""
        if not self.hosted:
            return True
        return sr.owner is not None and hmac.compare_digest(sr.owner, self.viewer)

    def access(self, sr: StoredRoute) -> str:
        """What the table's access column says of ``sr`` (hosted mode)."""
        return ACCESS_LABELS[(self.mine(sr), bool(sr.shared))]

    def as_dict(self, sr: StoredRoute) -> dict[str, Any]:
        """``sr``'s dict (never its owner key); hosted, with ``yours``: whether the caller
        owns it."""
        d = sr.to_dict()
        if self.hosted:
            d["yours"] = self.mine(sr)
        return d

    def export(self, route_id: int) -> Path:
        """Write a route the caller may see to a JSON file (hosted: in a new folder with an
        unguessable name); its path."""
        return self.store.export_route(route_id, viewer=self.viewer, private=self.hosted)

    # -- writing ------------------------------------------------------------------------------
    def find(self, route: Route, prompt: str, model: str) -> int | None:
        """The id of the caller's stored route with the same edits for this prompt and
        model (what :meth:`save` would return), or None."""
        return self.store.find_route(route, prompt, model, owner=self.owner)

    def save(self, route: Route, prompt: str, model: str, **fields: Any) -> int:
        """Save ``route`` as the caller's (see
        :meth:`~explorer.storage.library.RouteStore.save_route`); its id."""
        return self.store.save_route(route, prompt, model, owner=self.owner, **fields)

    def import_route(self, payload: str | bytes,
                     check: Callable[[Route], None] | None = None) -> int:
        """Import route JSON as the caller's (see
        :meth:`~explorer.storage.library.RouteStore.import_route`); its id."""
        return self.store.import_route(payload, check=check, owner=self.owner)

    def delete(self, route_id: int) -> StoredRoute:
        """Delete a route: hosted, only the caller's own. Returns what was deleted (for
        :meth:`restore`)."""
        sr = self.get(route_id)
        self.store.delete_route(sr.id, owner=self.viewer)
        return sr

    def restore(self, stored: StoredRoute) -> int:
        """Undo the caller's delete of ``stored`` (with its owner and shared flag); its id."""
        if not self.mine(stored):
            raise StoreError(f"no route with id {stored.id}")
        return self.store.restore_route(stored)

    def share(self, route_id: int, shared: bool = True) -> StoredRoute:
        """Share (or unshare) the caller's route ``route_id``: every visitor then sees it
        (only its owner may); the route as it is now."""
        self.store.share_route(route_id, self.viewer, shared)
        return self.get(route_id)


def library(visit: Visit, browser: Any = None) -> Library:
    """The library as the caller of ``visit`` sees it: everything when not hosted; hosted,
    as the owner of ``browser`` (the BrowserState value of a UI event) or, without one, of
    the API session (:meth:`~explorer.app.gate.Visit.owner`)."""
    store = visit.app.store
    if not visit.policy.enabled:
        return Library(store)
    return Library(store, visit.owner(browser))
