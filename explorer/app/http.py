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
#: How much of an oversized body is read (and dropped) before the answer.
DRAIN_BYTES = 64 * 1024 * 1024
_CALL_PREFIXES = ("/gradio_api/call/", "/gradio_api/run/", "/call/", "/run/")
_JOIN_PATHS = ("/gradio_api/queue/join", "/queue/join")


def _inputs(blocks: Any) -> tuple[dict[str, list[str]], dict[int, list[str]]]:
    """``({api_name: input kinds}, {fn_index: input kinds})`` of a Gradio Blocks; a kind is
    the input component's class name (``"Slider"``, ``"Textbox"``, ``"Api"``...)."""
    by_name, by_index = {}, {}
    fns = getattr(blocks, "fns", {}) or {}
    items = fns.items() if isinstance(fns, dict) else enumerate(fns)
    for index, fn in items:
        kinds = [type(c).__name__ for c in (getattr(fn, "inputs", []) or [])]
        by_index[int(index)] = kinds
        name = getattr(fn, "api_name", None)
        if isinstance(name, str) and name:
            by_name[name.lstrip("/")] = kinds
    return by_name, by_index


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and \
        abs(v) != float("inf")


#: What a UI component accepts from the wire (None passes, but for :data:`_NEEDS_VALUE`), so that
#: Gradio's own preprocessing never meets a value it answers with a multi-line error.
_ACCEPTS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "Slider": ("a number", _number),
    "Number": ("a number", _number),
    "Textbox": ("text", lambda v: isinstance(v, str)),
    "Code": ("text", lambda v: isinstance(v, str)),
    "Checkbox": ("true or false", lambda v: isinstance(v, bool)),
    "CheckboxGroup": ("a list", lambda v: isinstance(v, list) and all(
        isinstance(x, (str, int, float)) for x in v)),
    "Radio": ("one of its choices", lambda v: isinstance(v, (str, int, float))),
    "Dropdown": ("one of its choices", lambda v: isinstance(v, (str, int, float)) or (
        isinstance(v, list) and all(isinstance(x, (str, int, float)) for x in v))),
}


class RequestCheck:
    """ASGI middleware (``app_kwargs={"middleware": [...]}`` of ``launch``) that refuses,
    with one line, bodies above :data:`MAX_BODY_BYTES`, calls of unknown API names and
    calls with more or fewer arguments than the function takes. ``blocks()`` returns the app's
    ``gr.Blocks`` (looked up at the first request, after the app is built)."""

    def __init__(self, app, blocks: Callable[[], Any]):
        self.app, self.blocks = app, blocks
        self._table: tuple[dict[str, list[str]], dict[int, list[str]]] | None = None

    def _signatures(self) -> tuple[dict[str, list[str]], dict[int, list[str]]]:
        """The app's functions and their input kinds, read once (the app is built before
        it serves its first request and does not change afterwards)."""
        if self._table is None:
            self._table = _inputs(self.blocks())
        return self._table

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
            size += len(msg.get("body", b""))
            if size <= MAX_BODY_BYTES:
                chunks.append(msg.get("body", b""))
            if not msg.get("more_body") or size > DRAIN_BYTES:
                break
        if size > MAX_BODY_BYTES:  # read (and dropped) to its end, so the client hears us
            return await _answer(send, 413, f"the request is larger than {MAX_BODY_BYTES} "
                                            "bytes")
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
        by_name, by_index = self._signatures()
        if is_call:
            name = path.rstrip("/").rsplit("/", 1)[-1]
            if name not in by_name:
                return 404, "no API endpoint with that name; see the app's API page"
            kinds, what = by_name[name], name
        else:
            index = payload.get("fn_index")
            if isinstance(index, bool) or not isinstance(index, int) or index not in by_index:
                return 404, "no app function with that fn_index"
            kinds, what = by_index[index], f"function {index}"
        data = payload.get("data")
        if not isinstance(data, list):
            return 422, f"{what} takes a 'data' list of {len(kinds)} arguments"
        if len(data) != len(kinds):
            return 422, f"{what} takes {len(kinds)} arguments, got {len(data)}"
        for i, (kind, value) in enumerate(zip(kinds, data)):
            if not _valid_text(value):
                return 422, (f"{what}: argument {i + 1} is not valid Unicode text (lone "
                             "surrogates)")
            rule = _ACCEPTS.get(kind)
            if rule is None or (value is None and kind not in _NEEDS_VALUE):
                continue
            if not rule[1](value):
                return 422, (f"{what}: argument {i + 1} (a {kind.lower()}) must be "
                             f"{rule[0]}, got {type(value).__name__}")
        return None


#: Components whose value may not be None (Gradio cannot compare or convert it).
_NEEDS_VALUE = ("Slider", "Number", "Checkbox")


def _valid_text(value: Any, depth: int = 0) -> bool:
    """No lone surrogates anywhere in ``value`` (Gradio would echo them into a message it
    then cannot encode, breaking the event stream)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if depth > 20:
        return True
    if isinstance(value, list):
        return all(_valid_text(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(_valid_text(k, depth + 1) and _valid_text(v, depth + 1)
                   for k, v in value.items())
    return True


async def _answer(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
