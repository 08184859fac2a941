"""The gate: the one way any request enters the app.

Every UI event, page load, timer tick and named API endpoint is registered through
:meth:`Gate.register` (or :meth:`Gate.endpoint`) with a :class:`Door` that says what the
request costs. The gate wraps the view so that, on every call:

1. the caller is admitted: the hosted policy's rate limits (per session, per client
   address, for the whole server) are charged the door's cost (:data:`COSTS`: model work
   and new jobs cost 1, drawing 0.1, a status poll 0.02);
2. the view runs with a :class:`Visit`, through which it asks for the remaining checks,
   each applied once: the prompt's caps (:meth:`Visit.prompt` returns the prompt
   prepared once), the generation cap, the route's size for that prompt and its fit
   (:meth:`Visit.route`), the work's cost against the search budget (:meth:`Visit.budget`;
   costs come from the attack registry), the judges a server offers;
3. model work waits for the model's concurrency slot, runs inside a ZeroGPU window where
   there is one, and with the settings' engine tuning in force;
4. any failure becomes one line: a toast with the screen left as it was (UI events) or a
   ``gr.Error`` (endpoints), never a traceback;
5. what leaves the server is what hosted mode shows (:meth:`Gate.shown` and friends
   redact real models' harmful answers).

A door that was not registered here does not exist: ``tests/test_gate.py`` enumerates
every function the built app registers and checks each carries its :class:`Door`.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

import gradio as gr

from explorer.app.errors import as_toasts, user_errors
from explorer.app.gpu import gpu
from explorer.app.hosted import MODEL_SLOTS, PolicyError
from explorer.app.inputs import need_prompt, whole_number
from explorer.app.owners import LOCAL_SESSION, session_of
from explorer.app.verdicts import keyword_verdict
from explorer.core.defaults import MAX_GENERATION
from explorer.core.errors import InputError

if TYPE_CHECKING:
    from explorer.core.model import MoEModel
    from explorer.core.prompt import Prompt
    from explorer.core.route import Route

#: What one call costs the caller's rate buckets, by the kind of work a door does.
COSTS = {"model": 1.0, "job": 1.0, "write": 1.0, "light": 0.1, "poll": 0.02, "page": 0.25}
#: Event settings: model work shares :data:`~explorer.app.hosted.MODEL_SLOTS` slots (the
#: requests in them take turns on the model's first-come-first-served lock, a pass at a
#: time); the rest runs freely.
MODEL_SLOT = dict(concurrency_limit=MODEL_SLOTS, concurrency_id="model")
FREE = dict(concurrency_limit=None)
#: What a redacted generated token shows in heatmaps and trace JSON.
HIDDEN_TOKEN = "…"


class App(Protocol):
    """What the gate and its visits use of the app (:class:`explorer.app.context.Explorer`,
    which builds the gate: it is not imported here)."""

    policy: Any
    settings: Any
    host: Any
    owners: Any
    gate: Any

    @property
    def moe(self) -> Any: ...

    @property
    def store(self) -> Any: ...


@dataclass(frozen=True)
class Door:
    """One way into the app and how it is admitted: ``name`` (what messages and logs call
    it), ``work`` (a key of :data:`COSTS`: ``model`` runs the model and waits for its
    concurrency slot; ``job`` queues background work; ``write`` writes to the route
    library; ``light`` reads or draws without the model; ``poll`` is a timer's status
    poll; ``page`` a page load), ``gpu`` (seconds of a
    ZeroGPU window the model work may take), ``api`` (a named endpoint: a refusal is
    raised to the client; else a UI event: a refusal is a toast and the screen stays) and
    ``cost`` (what admitting a call costs; default: its work's, :data:`COSTS`; a view that
    does more than its door says charges the rest with :meth:`Visit.charge`)."""

    name: str
    work: str = "light"
    gpu: int | None = None
    api: bool = False
    cost: float | None = None

    def __post_init__(self) -> None:
        if self.work not in COSTS:
            raise ValueError(f"unknown kind of work {self.work!r}")  # a declaration bug
        if self.cost is None:
            object.__setattr__(self, "cost", COSTS[self.work])

    def slot(self) -> dict:
        """Gradio's concurrency settings for this door."""
        return dict(MODEL_SLOT if self.work == "model" else FREE)


@dataclass(frozen=True)
class Event:
    """One UI event to register: ``trigger`` (e.g. ``button.click``, or a dependency's
    ``then``), the module-level ``view``, its ``inputs`` and ``outputs`` components, its
    :class:`Door` and further options for Gradio (``js``, ``show_progress``...)."""

    trigger: Callable
    view: Callable
    inputs: list
    outputs: list
    door: Door
    options: dict = field(default_factory=dict)


class Visit:
    """One call through a door: the app (``app``), the caller (``request``: its session and
    client address) and the door. Views ask it for the checks hosted mode and good sense
    require; each is applied once, here. Tests make one with ``Visit(app)``."""

    def __init__(self, app: App, request: Any = None, door: Door | None = None):
        self.app, self.request = app, request
        self.door = door or Door("local")

    @property
    def policy(self):
        return self.app.policy

    @property
    def session(self) -> str:
        """The caller's Gradio session (local callers without one:
        :data:`~explorer.app.owners.LOCAL_SESSION`; hosted mode refuses them at entry)."""
        return session_of(self.request) or LOCAL_SESSION

    def owner(self, browser: Any = None) -> str:
        """The caller's owner key: the browser's (``browser``: its BrowserState value, with
        a client id this server signed) or, without one, the API session's."""
        client = browser.get("client") if isinstance(browser, dict) else None
        return self.app.owners.owner(self.request, client=client)

    @property
    def address(self) -> str | None:
        """The caller's client address (as the policy reads it)."""
        return self.policy.address_of(self.request)

    @property
    def moe(self) -> MoEModel:
        """The model (a one-line error when none is loaded)."""
        return self.app.host.require()

    # -- the checks ------------------------------------------------------------------------
    def charge(self, cost: float) -> None:
        """Charge the caller's rate buckets ``cost`` more (work beyond what the door
        charged at entry)."""
        self.app.gate.admit(self, cost)

    def system(self, value: Any) -> str | None:
        """A system prompt: None for none (None, empty or blank text); a one-line refusal
        for anything but text, too long text or lone surrogates."""
        from explorer.core.chat import check_system
        return check_system(value)

    def prompt(self, text: Any, system: Any = None) -> Prompt:
        """``text`` templated with the ``system`` prompt and tokenised once (the prepared
        :class:`~explorer.core.prompt.Prompt` every later call takes), after the caps:
        empty, not text, longer than the model's context or (hosted) the character and
        token caps are refused."""
        need_prompt(text)
        sp = self.system(system)
        moe = self.moe
        self.policy.check_prompt(moe, text, sp)  # counts its tokens on the prepared prompt
        return moe.prepare(text, sp)

    def tokens(self, value: Any, name: str = "max new tokens") -> int:
        """A generation length within 0..:data:`MAX_GENERATION` and the hosted cap."""
        return self.policy.check_generation(whole_number(value, name, 0, MAX_GENERATION))

    def route(self, route: Route | None, prompt: Prompt | int | None = None) -> str | None:
        """Validate ``route`` against the model and ``prompt`` (a prepared prompt or its
        token count), once: hosted mode also refuses more edits than two per (MoE layer,
        prompt token) cell. Returns the provenance note (made for another model, chat
        template or system prompt) when the route still fits, else None."""
        if route is None:
            return None
        moe = self.moe
        n = prompt if isinstance(prompt, int) or prompt is None else prompt.num_tokens
        if self.policy.enabled:
            cap = max(64, 2 * len(moe.moe_layers) * (n or 1))
            if len(route.edits) > cap:
                raise PolicyError(f"the route has {len(route.edits)} edits; this server "
                                  f"allows {cap} for this prompt")
        from explorer.core.control import remember_valid
        system = None if prompt is None or isinstance(prompt, int) else prompt.system
        kw = {} if prompt is None or isinstance(prompt, int) else {"system": system}
        note = route.check_fits(moe.info, num_tokens=n, **kw)
        remember_valid(moe, route)  # the forwards that apply it need not check it again
        return note

    def budget(self, passes: float, what: str) -> None:
        """Refuse (hosted mode) work of more than the search budget in forward passes."""
        budget = self.policy.max_search_budget
        if self.policy.enabled and int(passes) > budget:
            raise PolicyError(f"{what} would run about {int(passes)} forward passes, which is "
                              f"above this server's limit of {budget}; ask for less")

    def afford(self, attack, params, prompt: Prompt, max_new_tokens: int, what: str,
               target: str | None = None) -> None:
        """:meth:`budget` for ``attack`` with its ``params`` on a prepared ``prompt`` and an
        answer of ``max_new_tokens``: its cost (:meth:`~explorer.attacks.Attack.cost`);
        ``target``: the target answer an attack that scores one aims for (its tokens
        count, and it is checked here)."""
        from explorer.attacks import Shape
        moe = self.moe
        shape = Shape(prompt_tokens=prompt.num_tokens, moe_layers=len(moe.moe_layers),
                      max_new_tokens=max_new_tokens,
                      target_tokens=0 if target is None else len(moe.target_ids(target)))
        self.budget(attack.cost(params, shape), what)

    def judge(self, name: str | None):
        """The judge ``name`` (default keyword), if this server offers it."""
        name = name or "keyword"
        if self.policy.enabled and name not in self.policy.allowed_judges:
            raise PolicyError(f"the judge {name!r} is not allowed on this server")
        return self.app.host.judge(name)

    # -- what leaves the server -------------------------------------------------------------
    def shown(self, prompt: str, text: str) -> str:
        """``text`` as this server shows it (see :meth:`Gate.shown`)."""
        return self.app.gate.shown(prompt, text)


class Gate:
    """Admission, redaction and the registration of every door (see the module docs);
    ``app``: the app context whose policy, settings and model the doors use."""

    def __init__(self, app: App):
        self.app = app
        self.doors: list[Door] = []

    @property
    def policy(self):
        return self.app.policy

    @property
    def detail(self) -> bool:
        """Whether failures that are bugs show their type and message (a local app) or
        only that they failed (hosted: no internals on the wire)."""
        return not self.policy.enabled

    # -- admission --------------------------------------------------------------------------
    def admit(self, visit: Visit, cost: float | None = None) -> None:
        """Charge ``cost`` (default: the door's) to the caller's session, client address and
        the whole server (hosted mode; see :meth:`HostedPolicy.check_rate`). A hosted call
        that comes with a request but no session is refused: callers never share one."""
        if self.policy.enabled and visit.request is not None and \
                session_of(visit.request) is None:
            raise PolicyError("this call has no session: call through the queue (e.g. with "
                              "gradio_client) or send a session_hash")
        self.policy.check_rate(visit.session, visit.door.cost if cost is None else cost,
                               visit.address)

    # -- registration -----------------------------------------------------------------------
    def wrap(self, view: Callable, door: Door, n_outputs: int) -> Callable:
        """The function Gradio calls for ``view`` behind ``door`` (see the module docs).
        Gradio sees the view's parameters without its leading :class:`Visit`, plus the
        request (its special arguments, ``gr.Progress`` and ``gr.EventData``, keep working);
        the function carries ``__gate__`` (the door) and ``__view__`` (the view)."""
        app = self
        sig = inspect.signature(view)
        hints = _hints(view)
        params = [q.replace(annotation=hints.get(q.name, q.annotation))
                  for q in list(sig.parameters.values())[1:]]
        # typed event data (gr.SelectData...) reads the client's event data in its
        # constructor, inside Gradio, where malformed data is an uncaught traceback: Gradio
        # passes a plain gr.EventData, and the typed one is built at the gate
        typed = {q.name: q.annotation for q in params if _typed_event(q.annotation)}
        params = [q.replace(annotation=gr.EventData) if q.name in typed else q
                  for q in params]
        if any(q.name == "request" for q in params):
            raise TypeError(f"{view.__name__}: a view gets the request through its Visit")
        if any(q.kind not in (q.POSITIONAL_ONLY, q.POSITIONAL_OR_KEYWORD) for q in params):
            raise TypeError(f"{view.__name__}: Gradio passes a view's values by position")
        request = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                    default=None, annotation=gr.Request)
        shown = sig.replace(parameters=params + [request],
                            return_annotation=hints.get("return", inspect.Signature.empty))
        is_gen = inspect.isgeneratorfunction(view)

        def run(args, kwargs, request=None):  # in the GPU window, where there is one
            from explorer.engine.tuning import tuned
            with user_errors(door.name, app.detail), tuned(app.app.host.tuning):
                return view(Visit(app.app, request, door), *args, **kwargs)

        def run_gen(args, kwargs, request=None):
            # Gradio may run each step of a generator in another thread and context: the
            # tuning is put in force around each step, not across the yields
            from explorer.engine.tuning import tuned
            steps = view(Visit(app.app, request, door), *args, **kwargs)
            while True:
                with user_errors(door.name, app.detail), tuned(app.app.host.tuning):
                    try:
                        item = next(steps)
                    except StopIteration:
                        return
                yield item

        inner = run_gen if is_gen else run
        if door.gpu:
            inner = gpu(door.gpu)(inner)

        def enter(args, kwargs):
            bound = shown.bind(*args, **kwargs)
            req = bound.arguments.pop("request", None)
            with user_errors(door.name, app.detail):
                app.admit(Visit(app.app, req, door))
                for name, kind in typed.items():
                    bound.arguments[name] = event_data(kind, bound.arguments.get(name))
            return bound.args, bound.kwargs, req

        if is_gen:
            def call(*args, **kwargs):
                a, kw, req = enter(args, kwargs)
                yield from inner(a, kw, req)
        else:
            def call(*args, **kwargs):
                a, kw, req = enter(args, kwargs)
                return inner(a, kw, req)
        fn = call if door.api else as_toasts(call, n_outputs, door.name, app.detail)
        # Gradio names a UI event's function after it (research views keep their names of
        # old: on_utility, on_defense...)
        name = view.__name__
        if name.endswith("_view"):
            name = "on_" + name.removesuffix("_view")
        fn.__name__ = fn.__qualname__ = door.name if door.api else name
        fn.__doc__ = view.__doc__
        fn.__module__ = view.__module__
        fn.__signature__ = shown
        fn.__annotations__ = {q.name: q.annotation for q in shown.parameters.values()
                              if q.annotation is not inspect.Parameter.empty}
        if shown.return_annotation is not inspect.Signature.empty:
            fn.__annotations__["return"] = shown.return_annotation
        if hasattr(fn, "__wrapped__"):
            del fn.__wrapped__  # Gradio must read the signature above, not call's
        fn.__gate__, fn.__view__ = door, view
        return fn

    def call(self, view: Callable, *args, request: Any = None, door: Door | None = None,
             **kwargs):
        """Run ``view`` with ``args`` (and ``kwargs``) as a named endpoint would be run:
        admitted, its failures one-line ``gr.Error`` (tests and scripts call views this
        way). A streaming view gives its generator."""
        door = door or Door(view.__name__, api=True)
        fn = self.wrap(view, dataclasses.replace(door, api=True), 0)
        return fn(*args, request=request, **kwargs)

    def register(self, trigger: Callable, view: Callable, inputs, outputs, door: Door,
                 **options):
        """Register ``view`` for UI event ``trigger`` behind ``door``: the one way a UI
        event is made. Returns Gradio's dependency (for ``.then``)."""
        inputs = list(inputs or [])
        outputs = list(outputs or [])
        fn = self.wrap(view, door, len(outputs))
        self.doors.append(door)
        return trigger(fn, inputs, outputs, api_visibility="private", **door.slot(), **options)

    def on(self, event: Event):
        """:meth:`register` for an :class:`Event` of a view table."""
        return self.register(event.trigger, event.view, event.inputs, event.outputs,
                             event.door, **event.options)

    def endpoint(self, view: Callable, door: Door) -> None:
        """Register ``view`` as the named API endpoint ``door.name`` (``gr.api``): the one
        way an endpoint is made."""
        if not door.api:
            raise ValueError(f"endpoint {door.name}: its door must be an API door")
        fn = self.wrap(view, door, 0)
        self.doors.append(door)
        gr.api(fn, api_name=door.name, **door.slot())

    # -- what leaves the server ---------------------------------------------------------------
    def shown(self, prompt: str, text: str) -> str:
        """``text`` as this server shows it (first sentence only for a real model's harmful
        answer in hosted mode; unchanged otherwise)."""
        moe = self.app.moe
        if not self.policy.enabled or not text or moe is None:
            return text
        return self.policy.redact(text, keyword_verdict(prompt or "", text),
                                  is_demo_model(moe))

    def shown_trace(self, tr):
        """A trace for figures: generated tokens hidden when its answer is redacted."""
        if tr is None or not self.policy.enabled:
            return tr
        text = self.shown(tr.prompt, tr.completion)
        if text == tr.completion:
            return tr
        n = tr.prompt_tokens
        return dataclasses.replace(tr, tokens=tr.tokens[:n] + [HIDDEN_TOKEN] * (tr.num_tokens - n),
                                   completion=text)

    def shown_json(self, d: dict, prompt: str) -> dict:
        """A ``trace --json`` object with its answer (and generated tokens) redacted."""
        text = self.shown(prompt, d.get("completion") or "")
        if text == d.get("completion"):
            return d
        n = d["prompt_tokens"]
        return dict(d, completion=text,
                    tokens=d["tokens"][:n] + [HIDDEN_TOKEN] * (len(d["tokens"]) - n),
                    token_ids=d["token_ids"][:n] + [-1] * (len(d["token_ids"]) - n))

    def shown_route(self, d: dict) -> dict:
        """A stored route's dict as visitors see it: in hosted mode without the id of the
        job that saved it, and with its answer redacted."""
        d = dict(d)
        if isinstance(d.get("completion"), str):
            d["completion"] = self.shown(d.get("prompt") or "", d["completion"])
        if self.policy.enabled and isinstance(d.get("meta"), dict):
            d["meta"] = {k: v for k, v in d["meta"].items() if k not in ("job_id", "session")}
        return d

    def shown_job(self, st: dict) -> dict:
        """A job status dict with the answers in its result redacted (never its owner)."""
        st = {k: v for k, v in st.items() if k != "session"}
        res = st.get("result")
        if not self.policy.enabled or not isinstance(res, dict):
            return st
        prompt = (st.get("params") or {}).get("prompt") or res.get("prompt") or ""
        st = copy.deepcopy(st)
        res = st["result"]
        if res.get("completion"):
            res["completion"] = self.shown(prompt, res["completion"])
        for a in res.get("attempts") or []:
            if isinstance(a, dict) and a.get("completion"):
                a["completion"] = self.shown(prompt, a["completion"])
        for r in res.get("rows") or []:  # an evaluate job's rows
            if isinstance(r, dict) and isinstance(r.get("completion"), str):
                r["completion"] = self.shown(str(r.get("goal") or ""), r["completion"])
        return st


def _typed_event(hint: Any) -> bool:
    """Whether ``hint`` is a kind of event data narrower than ``gr.EventData``."""
    return isinstance(hint, type) and issubclass(hint, gr.EventData) and \
        hint is not gr.EventData


def event_data(kind: type, evt: Any) -> Any:
    """The event data ``kind`` (e.g. ``gr.SelectData``) made from the plain ``evt`` Gradio
    passed; data that kind cannot read (a client may send anything) is refused with one
    line, a :class:`~explorer.core.errors.InputError`."""
    if isinstance(evt, kind):
        return evt
    try:
        return kind(getattr(evt, "target", None), getattr(evt, "_data", None))
    except Exception:  # noqa: BLE001 - whatever the client sent, one line
        raise InputError("this event came without the data it needs (e.g. which row was "
                         "clicked)") from None


def _hints(view: Callable) -> dict[str, Any]:
    """``view``'s annotations resolved where they can be: Gradio finds its special
    arguments (``gr.Request``, ``gr.EventData``...) by their types. Names only a type
    checker sees stay as written (no evaluation of source text: dotted names are looked
    up)."""
    try:
        return typing.get_type_hints(view)
    except (NameError, TypeError):
        out = {}
        for name, ann in getattr(view, "__annotations__", {}).items():
            out[name] = _lookup(ann, view.__globals__) if isinstance(ann, str) else ann
        return out


def _lookup(text: str, names: dict) -> Any:
    parts = text.strip().split(".")
    if not all(p.isidentifier() for p in parts) or parts[0] not in names:
        return text
    obj = names[parts[0]]
    for p in parts[1:]:
        obj = getattr(obj, p, None)
        if obj is None:
            return text
    return obj


def is_demo_model(moe) -> bool:
    """Whether ``moe`` is the bundled demo model (by name, or loaded from its folder)."""
    from pathlib import Path

    from explorer.core.paths import DEMO_MODEL_DIR
    name = str(getattr(moe, "name", "") or "")
    if name in ("", "demo"):
        return True
    try:
        return Path(name).resolve() == DEMO_MODEL_DIR.resolve()
    except (OSError, ValueError):
        return False
