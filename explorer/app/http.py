"""The HTTP edge of the app, in front of Gradio: request bodies are bounded and calls of the
app's functions must bring their arguments, so no request reaches a callback half-formed.

Gradio answers a call with too few arguments with ``{"error": null}`` (or, with
``show_error``, a multi-line message naming its internals) and an unknown API name with
HTTP 500. :class:`RequestCheck` answers both, and oversized bodies, with one line of JSON
and a 4xx status before Gradio sees the request. A named endpoint's trailing parameters with
defaults (added in later versions, such as ``system``) may be left out: the edge fills in
their defaults, so clients written for the earlier signature keep working.
"""

from __future__ import annotations

import inspect
import json
from typing import Any, Callable

#: The largest request body accepted (JSON arguments; uploads go elsewhere).
MAX_BODY_BYTES = 4 * 1024 * 1024
#: How much of an oversized body is read (and dropped) before the answer.
DRAIN_BYTES = 64 * 1024 * 1024
_CALL_PREFIXES = ("/gradio_api/call/", "/gradio_api/run/", "/call/", "/run/")
_JOIN_PATHS = ("/gradio_api/queue/join", "/queue/join")


_REQUIRED = inspect.Parameter.empty


def _defaults(fn: Any, n: int) -> list[Any]:
    """The defaults of the first ``n`` parameters of a named endpoint's function
    (:data:`_REQUIRED` where there is none, or where the function cannot be read)."""
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return [_REQUIRED] * n
    out = [p.default for p in params[:n]]
    return out + [_REQUIRED] * (n - len(out))


def _inputs(blocks: Any) -> tuple[dict[str, list[str]], dict[int, list[str]],
                                  dict[str, list[Any]]]:
    """``({api_name: input kinds}, {fn_index: input kinds}, {api_name: defaults})`` of a
    Gradio Blocks; a kind is the input component's class name (``"Slider"``, ``"Textbox"``,
    ``"Api"``...); the defaults are those of the endpoint's parameters (see
    :func:`_defaults`)."""
    by_name, by_index, defaults = {}, {}, {}
    fns = getattr(blocks, "fns", {}) or {}
    items = fns.items() if isinstance(fns, dict) else enumerate(fns)
    for index, fn in items:
        kinds = [type(c).__name__ for c in (getattr(fn, "inputs", []) or [])]
        by_index[int(index)] = kinds
        name = getattr(fn, "api_name", None)
        if isinstance(name, str) and name:
            by_name[name.lstrip("/")] = kinds
            defaults[name.lstrip("/")] = _defaults(getattr(fn, "fn", None), len(kinds))
    return by_name, by_index, defaults


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
        self._table: tuple[dict, dict, dict] | None = None

    def _signatures(self) -> tuple[dict[str, list[str]], dict[int, list[str]],
                                   dict[str, list[Any]]]:
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
        problem, body = self._problem(path, body, is_call)
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

    def _problem(self, path: str, body: bytes,
                 is_call: bool) -> tuple[tuple[int, str] | None, bytes]:
        """``(problem, body)``: the 4xx answer for a malformed call (None: it may pass) and
        the body to pass on (a named endpoint's left-out defaults filled in)."""
        try:
            payload = json.loads(body or b"{}")
        except (ValueError, UnicodeDecodeError):
            return (400, "the request body is not JSON"), body
        if not isinstance(payload, dict):
            return (400, "the request body must be a JSON object with a 'data' list"), body
        by_name, by_index, all_defaults = self._signatures()
        defaults: list[Any] = []
        if is_call:
            name = path.rstrip("/").rsplit("/", 1)[-1]
            if name not in by_name:
                return (404, "no API endpoint with that name; see the app's API page"), body
            kinds, what, defaults = by_name[name], name, all_defaults.get(name) or []
        else:
            index = payload.get("fn_index")
            if isinstance(index, bool) or not isinstance(index, int) or index not in by_index:
                return (404, "no app function with that fn_index"), body
            kinds, what = by_index[index], f"function {index}"
        data = payload.get("data")
        if not isinstance(data, list):
            return (422, f"{what} takes a 'data' list of {len(kinds)} arguments"), body
        required = len(kinds)
        while required and len(defaults) == len(kinds) and \
                defaults[required - 1] is not _REQUIRED:
            required -= 1
        if not required <= len(data) <= len(kinds):
            span = f"{len(kinds)}" if required == len(kinds) else f"{required} to {len(kinds)}"
            return (422, f"{what} takes {span} arguments, got {len(data)}"), body
        if len(data) < len(kinds):  # a named endpoint's trailing defaults, filled in
            data = data + list(defaults[len(data):])
            payload["data"] = data
            body = json.dumps(payload).encode("utf-8")
        return self._check_values(what, kinds, data), body

    @staticmethod
    def _check_values(what: str, kinds: list[str], data: list) -> tuple[int, str] | None:
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
