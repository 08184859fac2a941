"""The HTTP edge of the app, in front of Gradio: it denies by default.

:class:`Edge` (ASGI middleware) lets through only the routes the app needs (:data:`ROUTES`:
the page and its assets, the config and API description, the queue, the named endpoints
through ``/gradio_api/call/``, uploads, downloads of files the app wrote); every other
route, Gradio's direct ``/run/`` and ``/api/`` routes included, answers 404 before a byte
of its body is read. On the routes it lets through it bounds every body before reading it
(:data:`MAX_BODY_BYTES` for JSON, :data:`MAX_UPLOAD_BYTES` for uploads), refuses JSON
nested deeper than :data:`MAX_DEPTH` before parsing it, admits uploads like any request
(the hosted policy's rate limits, per address), and in hosted mode holds each client
address to its share of the queue (``max_model_per_address`` model requests and
``max_waiting_per_address`` requests of any kind queued or running) before a request
joins it.

Calls of the app's functions must bring their arguments, so no request reaches a callback
half-formed: Gradio answers a call with too few arguments with ``{"error": null}`` (or a
multi-line message naming its internals) and an unknown API name with HTTP 500. The edge
answers both with one line of JSON (``{"error": ..., "detail": ...}``) and a 4xx status. A
named endpoint's trailing parameters with defaults (added in later versions, such as
``system``) may be left out: the edge fills in their defaults, so clients written for the
earlier signature keep working.
"""

from __future__ import annotations

import inspect
import json
import re
from typing import Any, Callable

import numpy as np
from starlette.requests import Request

#: The largest JSON request body accepted.
MAX_BODY_BYTES = 4 * 1024 * 1024
#: The largest upload (a route or library file to import) and its multipart framing; also
#: Gradio's own upload limit (``launch(max_file_size=...)``).
MAX_UPLOAD_BYTES = 5 * 1024 * 1024 + 64 * 1024
#: How much of an oversized body is read (and dropped, never kept) before the answer, so
#: that an ordinary client hears it; a longer body is cut off.
DRAIN_BYTES = 64 * 1024 * 1024
#: The deepest nesting of lists and objects a JSON body may have.
MAX_DEPTH = 32
_NAME = r"[A-Za-z0-9_\-]{1,64}"

#: The routes the app serves: (methods, path pattern, what the edge does with the body).
#: ``none``: no body; ``call``: a named endpoint's JSON call; ``join``: a queue join (UI
#: events); ``json``: a small JSON body; ``upload``: a multipart upload.
ROUTES: tuple[tuple[tuple[str, ...], re.Pattern, str], ...] = tuple(
    (methods, re.compile(pattern + r"\Z"), kind) for methods, pattern, kind in (
        (("GET", "HEAD"), r"/", "none"),
        (("GET", "HEAD"), r"/config/?", "none"),
        (("GET", "HEAD"), r"/gradio_api/info/?", "none"),
        (("GET", "HEAD"), r"/(?:gradio_api/)?theme\.css", "none"),
        (("GET", "HEAD"), r"/(?:favicon\.ico|robots\.txt|manifest\.json)", "none"),
        (("GET", "HEAD"), r"/(?:assets|static)/[A-Za-z0-9_\-./]{1,200}", "none"),
        (("GET", "HEAD"), r"/gradio_api/file=.{1,1000}", "none"),
        (("GET",), r"/gradio_api/heartbeat/" + _NAME, "none"),
        (("GET",), r"/gradio_api/queue/data", "none"),
        (("GET",), r"/gradio_api/call/" + _NAME + "/" + _NAME, "none"),
        (("GET",), r"/gradio_api/(?:upload_progress|startup-events)", "none"),
        (("POST",), r"/gradio_api/queue/join", "join"),
        (("POST",), r"/gradio_api/call/" + _NAME + "/?", "call"),
        (("POST",), r"/gradio_api/(?:cancel|reset/?)", "json"),
        (("POST",), r"/gradio_api/upload", "upload"),
    ))


def route_kind(method: str, path: str) -> str | None:
    """What the edge does with a request's body (see :data:`ROUTES`), or None: the route
    does not exist for this app."""
    for methods, pattern, kind in ROUTES:
        if method in methods and pattern.match(path):
            return kind
    return None


def json_depth(body: bytes) -> int:
    """How deeply ``body`` (JSON text) nests lists and objects, counted without parsing
    it (brackets inside strings do not count)."""
    bare = _STRINGS.sub(b'""', body)
    if not bare:
        return 0
    a = np.frombuffer(bare, dtype=np.uint8)
    step = np.isin(a, _OPEN).astype(np.int32) - np.isin(a, _CLOSE).astype(np.int32)
    return int(np.cumsum(step).max(initial=0))


_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_OPEN = np.frombuffer(b"[{", dtype=np.uint8)
_CLOSE = np.frombuffer(b"]}", dtype=np.uint8)
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


class _Fn:
    """One registered function as the edge sees it: its input kinds (the input
    components' class names: ``"Slider"``, ``"Textbox"``, ``"Api"``...), the defaults of a
    named endpoint's parameters (:func:`_defaults`) and its gate :class:`Door` (None: a
    function the gate did not register, e.g. Gradio's own)."""

    def __init__(self, fn: Any):
        self.inputs = list(getattr(fn, "inputs", []) or [])
        self.kinds = [type(c).__name__ for c in self.inputs]
        call = getattr(fn, "fn", None)
        self.door = getattr(call, "__gate__", None)
        self.defaults = _defaults(call, len(self.kinds)) if self.api else []

    @property
    def api(self) -> bool:
        """Whether it is a named endpoint (callable by name through ``/call/``)."""
        return bool(getattr(self.door, "api", False))

    @property
    def model(self) -> bool:
        """Whether it runs the model (and so counts against an address's model share)."""
        return getattr(self.door, "work", None) == "model"


def _functions(blocks: Any) -> tuple[dict[int, _Fn], dict[str, int]]:
    """``({fn_index: _Fn}, {endpoint name: fn_index})`` of a Gradio Blocks; only the named
    endpoints registered through the gate are callable by name."""
    by_index, names = {}, {}
    fns = getattr(blocks, "fns", {}) or {}
    items = fns.items() if isinstance(fns, dict) else enumerate(fns)
    for index, fn in items:
        f = _Fn(fn)
        by_index[int(index)] = f
        name = getattr(fn, "api_name", None)
        if f.api and isinstance(name, str) and name:
            names[name.lstrip("/")] = int(index)
    return by_index, names


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
    "Dataset": ("a row number", lambda v: _number(v) and int(v) == v),
    "Dataframe": ('a table {"headers": [...], "data": [[...], ...]}', lambda v: (
        isinstance(v, dict) and isinstance(v.get("headers", []), list)
        and isinstance(v.get("data"), list) and all(isinstance(r, list) for r in v["data"]))),
    "File": ('an uploaded file {"path": ...}', lambda v: isinstance(v, dict) and isinstance(
        v.get("path"), str) and all(isinstance(x, (str, int, float, bool, dict)) or x is None
                                    for x in v.values())),
    "BrowserState": ("an object", lambda v: isinstance(v, dict)),
}


class Edge:
    """ASGI middleware (``app_kwargs={"middleware": [...]}`` of ``launch``): the app's only
    way in (see the module docs). ``blocks()`` returns the app's ``gr.Blocks`` (looked up
    at the first request, after the app is built); ``policy()`` its hosted policy (None or
    a disabled one: no admission and no shares, the other rules hold)."""

    def __init__(self, app, blocks: Callable[[], Any], policy: Callable[[], Any] = lambda: None):
        self.app, self.blocks, self.policy = app, blocks, policy
        self._table: tuple[dict[int, _Fn], dict[str, int]] | None = None
        self._joining: dict[tuple[str, bool], int] = {}  # address, model: joins under way

    def _functions(self) -> tuple[dict[int, _Fn], dict[str, int]]:
        """The app's functions, read once (the app is built before it serves its first
        request and does not change afterwards)."""
        if self._table is None:
            self._table = _functions(self.blocks())
        return self._table

    async def __call__(self, scope, receive, send):
        if scope.get("type") == "lifespan":
            return await self.app(scope, receive, send)
        if scope.get("type") != "http":  # websockets: the app uses none
            return await send({"type": "websocket.close", "code": 1008})
        path, method = scope.get("path", ""), scope.get("method", "")
        kind = route_kind(method, path)
        if kind is None:
            return await _answer(send, 404, "not found")
        length = _content_length(scope)
        if kind == "none":
            if length:
                return await _answer(send, 400, "this route takes no request body")
            return await self.app(scope, receive, send)
        limit = MAX_UPLOAD_BYTES if kind == "upload" else MAX_BODY_BYTES
        if length is not None and length > limit:
            await _drain(receive, length)
            return await _answer(send, 413, f"the request is larger than {limit} bytes")
        body, size = await _read(receive, limit)
        if size > limit:
            return await _answer(send, 413, f"the request is larger than {limit} bytes")
        policy = self.policy()
        hosted = policy is not None and getattr(policy, "enabled", False)
        if kind == "upload":
            if hosted:
                problem = _admit(policy, scope)
                if problem is not None:
                    return await _answer(send, 429, problem)
            return await self.app(scope, _replay(body, receive), send)
        if json_depth(body) > MAX_DEPTH:
            return await _answer(send, 400, f"the request nests deeper than {MAX_DEPTH} levels")
        fn = None
        if kind in ("call", "join"):
            problem, body, fn = self._problem(path, body, kind == "call")
            if problem is not None:
                return await _answer(send, *problem)
        elif not _is_object(body):
            return await _answer(send, 400, "the request body must be a JSON object")
        if not hosted or fn is None:
            return await self.app(scope, _replay(body, receive), send)
        address = policy.address_of(Request(scope)) or "?"
        problem = self._share(policy, address, fn)
        if problem is not None:
            return await _answer(send, 429, problem)
        keys = [(address, False)] + ([(address, True)] if fn.model else [])
        for k in keys:
            self._joining[k] = self._joining.get(k, 0) + 1
        try:
            return await self.app(scope, _replay(body, receive), send)
        finally:
            for k in keys:
                self._joining[k] -= 1
                if not self._joining[k]:
                    del self._joining[k]

    def _share(self, policy, address: str, fn: _Fn) -> str | None:
        """Why ``address`` may not queue ``fn`` now (None: it may): its share of model work
        or of the queue is taken."""
        waiting = model = 0
        by_index = self._functions()[0]
        for event in _queued_events(self.blocks()):
            if policy.address_of(getattr(event, "request", None)) != address:
                continue
            waiting += 1
            f = by_index.get(getattr(getattr(event, "fn", None), "_id", -1))
            model += bool(f is not None and f.model)
        waiting += self._joining.get((address, False), 0)
        model += self._joining.get((address, True), 0)
        if fn.model and model >= policy.max_model_per_address:
            return (f"your address already has {model} model request(s) waiting or running "
                    f"(the limit is {policy.max_model_per_address}): wait for them to finish")
        if waiting >= policy.max_waiting_per_address:
            return (f"your address already has {waiting} requests waiting or running (the "
                    f"limit is {policy.max_waiting_per_address}): wait for them to finish")
        return None

    def _problem(self, path: str, body: bytes,
                 is_call: bool) -> tuple[tuple[int, str] | None, bytes, _Fn | None]:
        """``(problem, body, function)``: the 4xx answer for a malformed call (None: it may
        pass), the body to pass on (a named endpoint's left-out defaults filled in) and the
        function it calls."""
        try:
            payload = json.loads(body or b"{}")
        except (ValueError, UnicodeDecodeError, RecursionError):
            return (400, "the request body is not JSON"), body, None
        if not isinstance(payload, dict):
            return (400, "the request body must be a JSON object with a 'data' list"), body, \
                None
        by_index, names = self._functions()
        if is_call:
            name = path.rstrip("/").rsplit("/", 1)[-1]
            if name not in names:
                return (404, "no API endpoint with that name; see the app's API page"), body, \
                    None
            fn, what = by_index[names[name]], name
        else:
            index = payload.get("fn_index")
            if isinstance(index, bool) or not isinstance(index, int) or index not in by_index:
                return (404, "no app function with that fn_index"), body, None
            fn, what = by_index[index], f"function {index}"
            if fn.door is None:  # not registered through the gate
                return (404, "no app function with that fn_index"), body, None
        kinds, defaults = fn.kinds, fn.defaults
        session = payload.get("session_hash")
        if session is not None and (not isinstance(session, str) or
                                    not re.fullmatch(_NAME, session)):
            return (422, "session_hash must be up to 64 letters, digits, '-' or '_'"), body, \
                None
        data = payload.get("data")
        if not isinstance(data, list):
            return (422, f"{what} takes a 'data' list of {len(kinds)} arguments"), body, None
        required = len(kinds)
        while required and len(defaults) == len(kinds) and \
                defaults[required - 1] is not _REQUIRED:
            required -= 1
        if not required <= len(data) <= len(kinds):
            span = f"{len(kinds)}" if required == len(kinds) else f"{required} to {len(kinds)}"
            return (422, f"{what} takes {span} arguments, got {len(data)}"), body, None
        if len(data) < len(kinds):  # a named endpoint's trailing defaults, filled in
            data = data + list(defaults[len(data):])
            payload["data"] = data
            body = json.dumps(payload).encode("utf-8")
        return self._check_values(what, fn, data, session), body, fn

    def _check_values(self, what: str, fn: _Fn, data: list,
                      session: str | None) -> tuple[int, str] | None:
        for i, (kind, value) in enumerate(zip(fn.kinds, data)):
            if not _valid_text(value):
                return 422, (f"{what}: argument {i + 1} is not valid Unicode text (lone "
                             "surrogates)")
            rule = _ACCEPTS.get(kind)
            if rule is None or (value is None and kind not in _NEEDS_VALUE):
                continue
            if not rule[1](value):
                return 422, (f"{what}: argument {i + 1} (a {kind.lower()}) must be "
                             f"{rule[0]}, got {type(value).__name__}")
            if kind in _CHOICES and not _chosen(self._block(fn.inputs[i], session), value):
                return 422, f"{what}: argument {i + 1} is not one of the {kind.lower()}'s choices"
            if kind in _BOUNDED:
                lo, hi = _bounds(self._block(fn.inputs[i], session))
                if (lo is not None and value < lo) or (hi is not None and value > hi):
                    return 422, (f"{what}: argument {i + 1} (a {kind.lower()}) must lie "
                                 f"between {lo} and {hi}, got {value}")
        return None

    def _block(self, component: Any, session: str | None) -> Any:
        """``component`` as the browser of ``session`` has it (a view may have given it
        other choices; Gradio keeps them with the session), else as built."""
        holder = getattr(getattr(self.blocks(), "server_app", None), "state_holder", None)
        state = getattr(holder, "session_data", {}).get(session) if session else None
        blocks = getattr(getattr(state, "blocks_config", None), "blocks", None) or {}
        return blocks.get(getattr(component, "_id", None), component)


def _admit(policy, scope) -> str | None:
    """Why an upload from this address is refused now (its address's and the server's
    rates), or None."""
    from explorer.app.gate import COSTS
    from explorer.app.hosted import PolicyError
    try:
        policy.check_rate(None, COSTS["write"], policy.address_of(Request(scope)))
    except PolicyError as exc:
        return str(exc)
    return None


def _queued_events(blocks) -> list:
    """The events in the app's queue, waiting or running (read from Gradio's queue)."""
    queue = getattr(blocks, "_queue", None)
    if queue is None:
        return []
    out = []
    for q in list(getattr(queue, "event_queue_per_concurrency_id", {}).values()):
        out += list(getattr(q, "queue", []))
    for job in list(getattr(queue, "active_jobs", []) or []):
        out += list(job or [])
    return out


def _content_length(scope) -> int | None:
    """The Content-Length a request declares (0 when it has none and is not chunked;
    None: chunked, the length is known once read)."""
    headers = dict(scope.get("headers") or [])
    raw = headers.get(b"content-length")
    if raw is None:
        return None if b"chunked" in headers.get(b"transfer-encoding", b"").lower() else 0
    try:
        return max(0, int(raw))
    except ValueError:
        return None


async def _read(receive, limit: int) -> tuple[bytes, int]:
    """A body of up to ``limit`` bytes and its size; a longer one is read (up to
    :data:`DRAIN_BYTES`) and dropped: ``(b"", size)``."""
    chunks, size = [], 0
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            break
        part = msg.get("body", b"")
        size += len(part)
        if size <= limit:
            chunks.append(part)
        elif chunks:
            chunks = []
        if not msg.get("more_body") or size > DRAIN_BYTES:
            break
    return (b"".join(chunks) if size <= limit else b""), size


async def _drain(receive, length: int) -> None:
    """Read and drop a declared-oversized body up to :data:`DRAIN_BYTES` (so an ordinary
    client hears the answer; a longer one is cut off)."""
    if length > DRAIN_BYTES:
        return
    size = 0
    while size < length:
        msg = await receive()
        if msg["type"] != "http.request":
            return
        size += len(msg.get("body", b""))
        if not msg.get("more_body"):
            return


def _replay(body: bytes, receive):
    """A ``receive`` that gives ``body`` once, then the connection's own messages."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay


def _is_object(body: bytes) -> bool:
    try:
        return isinstance(json.loads(body or b"{}"), dict)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False


#: Components whose values must be among their choices (Gradio refuses others in its
#: preprocessing, with a traceback in the log).
_CHOICES = ("Radio", "Dropdown", "CheckboxGroup")


def _chosen(block: Any, value: Any) -> bool:
    """Whether ``value`` (one value or a list) is among ``block``'s choices, as Gradio's
    preprocessing asks (a dropdown that takes custom values takes any)."""
    if value is None or getattr(block, "allow_custom_value", False):
        return True
    choices = [c[1] if isinstance(c, (list, tuple)) else c
               for c in getattr(block, "choices", None) or []]
    values = value if isinstance(value, list) else [value]
    return all(v in choices for v in values)


#: Components whose values must lie within their bounds (as Gradio asks).
_BOUNDED = ("Slider", "Number")


def _bounds(block: Any) -> tuple[float | None, float | None]:
    """A slider's or number's (minimum, maximum); None where it has none."""
    return getattr(block, "minimum", None), getattr(block, "maximum", None)


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
    """One line of JSON (``error``; ``detail`` too, where Gradio's clients look) and
    ``status``."""
    body = json.dumps({"error": message, "detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
