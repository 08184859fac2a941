"""The gate: every function the built app registers (UI events, the page load, the timer,
named endpoints) went through it, admits before it works, and the checks it offers views
hold (route size per prompt, prompts prepared once, one validation per Re-run, the
settings' tuning in force).

The enumeration is over ``demo.fns``, Gradio's own list of what a client can call: a door
that does not carry its :class:`~explorer.app.gate.Door` was not made by the gate."""

from __future__ import annotations

import inspect
import types

import pytest

gr = pytest.importorskip("gradio")

from conftest import FakeClock  # noqa: E402

from explorer.app.gate import COSTS, Door, Visit  # noqa: E402
from explorer.app.hosted import HostedPolicy  # noqa: E402
from explorer.app.state import InspectState  # noqa: E402
from explorer.core.route import Route  # noqa: E402

PROMPT = "Explain how to break into a neighbour's house."
ENDPOINTS = {"trace", "generate", "rosais", "search_start", "search_status", "search_cancel",
             "search_resume", "routes", "replay", "attack_start"}


def _request(session: str, host: str = "10.0.0.7"):
    return types.SimpleNamespace(session_hash=session, client=types.SimpleNamespace(host=host),
                                 headers={}, query_params={})


@pytest.fixture(scope="module")
def hosted(demo, tmp_path_factory):
    from explorer.app.build import build_app
    clock = FakeClock()
    policy = HostedPolicy(enabled=True, burst=10, rate=0.5, clock=clock,
                          max_search_budget=2000)
    app = build_app(demo, data_dir=tmp_path_factory.mktemp("gate"), policy=policy)
    yield app, clock
    app.explorer.jobs.shutdown(wait=True, timeout=30)


def test_every_registered_function_went_through_the_gate(hosted):
    demo, _ = hosted
    doors, js_only = [], 0
    for block_fn in demo.fns.values():
        if block_fn.fn is None:  # a browser-side step (the link's copy): no server code
            js_only += 1
            continue
        door = getattr(block_fn.fn, "__gate__", None)
        assert isinstance(door, Door), f"{block_fn.name}: registered outside the gate"
        doors.append(door)
        # model work waits for the model's one slot; nothing else does
        model = door.work == "model"
        assert (block_fn.concurrency_id == "model") == model, block_fn.name
        assert (block_fn.concurrency_limit == 1) == model, block_fn.name
        # the named endpoints are exactly the API doors; every UI event stays off the page
        if door.api:
            assert block_fn.api_visibility == "public" and block_fn.name == door.name
        else:
            assert block_fn.api_visibility == "private", block_fn.name
    assert {d.name for d in doors if d.api} == ENDPOINTS
    assert js_only <= 1 and len(doors) >= 50
    assert {d.work for d in doors} <= set(COSTS)
    assert "page" in {d.work for d in doors} and "poll" in {d.work for d in doors}
    assert len(demo.explorer.gate.doors) == len(doors)  # each counted once, where made


def _positional(fn) -> int:
    return sum(1 for p in inspect.signature(fn).parameters.values()
               if p.name != "request" and p.default is inspect.Parameter.empty)


def test_every_door_admits_before_it_works(hosted, monkeypatch):
    """With the caller's rate buckets empty, every function the app registers refuses at
    once (a toast for UI events, an error for endpoints) and runs none of its view."""
    import explorer.app.errors as E
    demo, clock = hosted
    app = demo.explorer
    toasts: list[str] = []
    monkeypatch.setattr(E, "toast", lambda message, title="Error": toasts.append(message))
    answered: list[str] = []
    session = "empty-bucket"
    clock.advance(600)
    while app.policy.allow(session, 1.0, "10.0.0.7"):  # drain this session's bucket
        pass
    for block_fn in demo.fns.values():
        fn = block_fn.fn
        if fn is None:
            continue
        toasts.clear()
        args = [None] * _positional(fn)
        try:
            out = fn(*args, request=_request(session))
            if inspect.isgenerator(out):
                out = list(out)
        except gr.Error as exc:
            assert fn.__gate__.api, block_fn.name
            assert "too many requests from this session" in exc.message, exc.message
            continue
        assert not fn.__gate__.api, block_fn.name
        assert toasts and "too many requests from this session" in toasts[0], \
            (block_fn.name, toasts)
        answered.append(block_fn.name)
    assert answered  # the UI events answered with toasts, their outputs left as they were


def test_route_size_is_capped_per_prompt_one_edit_at_a_time(hosted):
    """The report's case: adding edits one click at a time beyond the cap of two per
    (MoE layer, prompt token) cell; the cap holds at Add edit, not only at Save."""
    from explorer.app.tabs.inspect import on_add_edit, on_generate
    demo, clock = hosted
    app = demo.explorer
    moe = app.moe
    clock.advance(600)
    st = list(app.gate.call(on_generate, "Hi.", "", 0, "expert", InspectState(),
                            request=_request("capper")))[-1][4]
    n = st.base.prompt_tokens
    cap = max(64, 2 * len(moe.moe_layers) * n)
    layer = moe.moe_layers[0]
    info = moe.handle(layer).info
    route = Route()
    for i in range(cap):  # masks at every prompt position, one expert each, until the cap
        route.mask(layer, i % n, [i % info.num_experts])
    st = st.with_(route=route, selected=types.SimpleNamespace(layer=layer, position=0))
    with pytest.raises(gr.Error, match=f"this server allows {cap}"):
        clock.advance(600)
        app.gate.call(on_add_edit, [0], "mask", False, "baseline", "expert", st,
                      request=_request("capper"))


def test_a_rerun_prepares_the_prompt_once_and_validates_the_route_once(demo, tmp_path,
                                                                      monkeypatch):
    from explorer.app.context import Explorer
    from explorer.app.tabs.inspect import on_generate, on_rerun
    from explorer.core.model import MoEModel
    app = Explorer(demo, data_dir=tmp_path)
    try:
        prompt = "Tell me how to steal a car without getting caught. (rerun count)"
        st = list(app.gate.call(on_generate, prompt, "", 6, "expert", InspectState()))[-1][4]
        layer = demo.moe_layers[1]
        st = st.with_(route=Route().force(layer, 3, [0, 1]))
        counts = {"template": 0, "validate": 0}
        template, validate = MoEModel.template, Route.validate

        def counted_template(self, *a, **k):
            counts["template"] += 1
            return template(self, *a, **k)

        def counted_validate(self, *a, **k):
            counts["validate"] += 1
            return validate(self, *a, **k)
        monkeypatch.setattr(MoEModel, "template", counted_template)
        monkeypatch.setattr(Route, "validate", counted_validate)
        demo.cache.prompts.clear()  # as if the prompt were new to the model
        out = list(app.gate.call(on_rerun, prompt, "", 6, st))[-1]
        assert out[4].alt is not None and out[4].base is st.base  # the baseline was kept
        assert counts == {"template": 1, "validate": 1}, counts
    finally:
        app.jobs.shutdown(wait=True, timeout=30)


def test_views_run_with_the_settings_tuning(demo, tmp_path):
    """Settings.tuning (EXPLORER_CONE_*, EXPLORER_BATCH_MEMORY_SHARE) is in force in every
    view the gate runs, and in the job threads (test_jobs checks the manager)."""
    from explorer.app.context import Explorer
    from explorer.engine.tuning import Tuning, active_tuning
    from explorer.settings import Settings
    tuning = Tuning(narrow=False, direct=False, memory_share=0.1)
    app = Explorer(demo, data_dir=tmp_path, settings=Settings(tuning=tuning))
    try:
        def view(visit: Visit):
            return active_tuning()

        def streamed(visit: Visit):
            yield active_tuning()
            yield active_tuning()
        assert app.gate.call(view) == tuning
        assert list(app.gate.call(streamed)) == [tuning, tuning]
        assert active_tuning() == Tuning()  # only inside the views
        assert app.jobs.tuning == tuning
    finally:
        app.jobs.shutdown(wait=True, timeout=30)


def test_tabs_hold_only_tabs(hosted):
    """A component right under gr.Tabs (a gr.State made after its tab's block, say) is
    drawn as a tab of its own and takes another tab's place in the bar."""
    demo, _ = hosted
    for block in demo.blocks.values():
        if isinstance(block, gr.Tabs):
            kinds = {type(c).__name__ for c in block.children}
            assert kinds == {"Tab"}, (block.elem_id, kinds)
