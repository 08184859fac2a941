"""The HTTP edge of the app, in front of Gradio: request bodies are bounded and calls of the
app's functions must bring their arguments, so no request reaches a callback half-formed.

Gradio answers a call with too few arguments with ``{"error": null}`` (or, with
``show_error``, a multi-line message naming its internals) and an unknown API name with
HTTP 500. :class:`RequestCheck` answers both, and oversized bodies, with one line of JSON
and a 4xx status before Gradio sees the request.
"""

from __future__ import annotations

import json
from typing import Any, Callable

#: The largest request body accepted (JSON arguments; uploads go elsewhere).
MAX_BODY_BYTES = 4 * 1024 * 1024
_CALL_PREFIXES = ("/gradio_api/call/", "/gradio_api/run/", "/call/", "/run/")
_JOIN_PATHS = ("/gradio_api/queue/join", "/queue/join")


def _arities(blocks: Any) -> tuple[dict[str, int], dict[int, int]]:
    """``({api_name: n_inputs}, {fn_index: n_inputs})`` of a Gradio Blocks."""
    by_name, by_index = {}, {}
    fns = getattr(blocks, "fns", {}) or {}
    items = fns.items() if isinstance(fns, dict) else enumerate(fns)
    for index, fn in items:
        n = len(getattr(fn, "inputs", []) or [])
        by_index[int(index)] = n
        name = getattr(fn, "api_name", None)
        if isinstance(name, str) and name:
            by_name[name.lstrip("/")] = n
    return by_name, by_index


class RequestCheck:
    """ASGI middleware (``app_kwargs={"middleware": [...]}`` of ``launch``) that refuses,
    with one line, bodies above :data:`MAX_BODY_BYTES`, calls of unknown API names and
    calls with more or fewer arguments than the function takes. ``blocks()`` returns the app's
    ``gr.Blocks`` (looked up on each request, after the app is built)."""

    def __init__(self, app, blocks: Callable[[], Any]):
        self.app, self.blocks = app, blocks

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope.get("type") == "http" else ""
        is_call = path.startswith(_CALL_PREFIXES) and scope.get("method") == "POST"
        is_join = path in _JOIN_PATHS and scope.get("method") == "POST"
        if not (is_call or is_join):
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                break
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_BODY_BYTES:
                return await _answer(send, 413, f"the request is larger than "
                                                f"{MAX_BODY_BYTES} bytes")
            if not msg.get("more_body"):
                break
        body = b"".join(chunks)
        problem = self._problem(path, body, is_call)
        if problem is not None:
            return await _answer(send, *problem)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        return await self.app(scope, replay, send)

    def _problem(self, path: str, body: bytes, is_call: bool) -> tuple[int, str] | None:
        try:
            payload = json.loads(body or b"{}")
        except (ValueError, UnicodeDecodeError):
            return 400, "the request body is not JSON"
        if not isinstance(payload, dict):
            return 400, "the request body must be a JSON object with a 'data' list"
        by_name, by_index = _arities(self.blocks())
        if is_call:
            name = path.rstrip("/").rsplit("/", 1)[-1]
            if name not in by_name:
                return 404, "no API endpoint with that name; see the app's API page"
            need, what = by_name[name], name
        else:
            index = payload.get("fn_index")
            if isinstance(index, bool) or not isinstance(index, int) or index not in by_index:
                return 404, "no app function with that fn_index"
            need, what = by_index[index], f"function {index}"
        data = payload.get("data")
        if not isinstance(data, list):
            return 422, f"{what} takes a 'data' list of {need} arguments"
        if len(data) != need:
            return 422, f"{what} takes {need} arguments, got {len(data)}"
        return None


async def _answer(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
