"""A trace streamed to the browser while it generates (the answer grows token by token)."""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from explorer.core.model import MoEModel
    from explorer.core.prompt import Prompt
    from explorer.core.route import Route


def stream_trace(moe: MoEModel, prompt: str | Prompt, max_new_tokens: int,
                 route: Route | None = None, system: str | None = None, *,
                 validate: bool = True) -> Iterator[tuple[str, Any]]:
    """Run :func:`explorer.core.trace.trace` in a thread (``prompt``: text templated with
    ``system``, or a prepared :class:`~explorer.core.prompt.Prompt`); yield ``(text so far,
    None)`` per streamed piece, then ``(text, trace)``. ``validate=False``: the caller
    validated ``route`` against this prompt. Errors are re-raised here."""
    from explorer.core.trace import trace
    q: queue.Queue = queue.Queue()
    box: dict[str, Any] = {}

    def work():
        try:
            box["trace"] = trace(moe, prompt, max_new_tokens=max_new_tokens, route=route,
                                 on_token=q.put, system=system, validate=validate)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc
        finally:
            q.put(None)

    threading.Thread(target=work, name="explorer-trace", daemon=True).start()
    text = ""
    while True:
        piece = q.get()
        if piece is None:
            break
        text += piece
        yield text, None
    if "error" in box:
        raise box["error"]
    tr = box["trace"]
    yield tr.completion, tr


def stream_shown(visit, prompt: Prompt, max_new_tokens: int,
                 route: Route | None = None) -> Iterator[tuple[str, Any]]:
    """:func:`stream_trace` on a visit's model, the route already validated
    (:meth:`~explorer.app.gate.Visit.route`), each text as the server shows it."""
    for text, tr in stream_trace(visit.moe, prompt, max_new_tokens, route, validate=False):
        yield visit.shown(prompt.text, text), tr
