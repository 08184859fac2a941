"""The gate: every function the built app registers (UI events, the page load, the timer,
named endpoints) went through it, admits before it works, and the checks it offers views
hold (route size per prompt, prompts prepared once, one validation per Re-run, the
settings' tuning in force).

The enumeration is over ``demo.fns``, Gradio's own list of what a client can call: a door
that does not carry its :class:`~explorer.app.gate.Door` was not made by the gate."""

from __future__ import annotations

import inspect
import json
import types

import pytest

from explorer.app.hosted import MODEL_SLOTS

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
        # model work waits for the model's slots; nothing else does
        model = door.work == "model"
        assert (block_fn.concurrency_id == "model") == model, block_fn.name
        assert (block_fn.concurrency_limit == MODEL_SLOTS) == model, block_fn.name
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


def test_typed_event_data_is_built_at_the_gate(hosted, monkeypatch):
    """Gradio builds a view's event data from what the client sent; a ``gr.SelectData``
    built there from malformed data was an uncaught traceback. Every registered function
    asks Gradio for plain ``gr.EventData``; the gate builds the typed one and refuses data
    it cannot read with one line, before the view runs."""
    import explorer.app.errors as E
    from explorer.app.gate import event_data
    from explorer.core.errors import InputError
    demo, clock = hosted
    selects = []
    for block_fn in demo.fns.values():
        if block_fn.fn is None:
            continue
        for q in inspect.signature(block_fn.fn).parameters.values():
            hint = q.annotation
            if isinstance(hint, type) and issubclass(hint, gr.EventData):
                assert hint is gr.EventData, (block_fn.name, q.name, hint)
        wanted = inspect.signature(block_fn.fn.__view__).parameters.values()
        if any("SelectData" in str(q.annotation) for q in wanted):
            selects.append(block_fn)
    assert len(selects) >= 2  # the library's table and the Results tab's rows
    picked = event_data(gr.SelectData, gr.EventData(None, {"index": [2, 0], "value": "x"}))
    assert isinstance(picked, gr.SelectData) and picked.index == [2, 0]
    with pytest.raises(InputError, match="without the data it needs"):
        event_data(gr.SelectData, gr.EventData(None, None))
    # through a registered door: one toast, the outputs left as they were
    toasts: list[str] = []
    monkeypatch.setattr(E, "toast", lambda message, title="Error": toasts.append(message))
    clock.advance(600)
    for block_fn in selects:
        fn = block_fn.fn
        toasts.clear()
        args = [gr.EventData(None, None) if q.annotation is gr.EventData else None
                for q in inspect.signature(fn).parameters.values() if q.name != "request"]
        out = fn(*args, request=_request("select-fuzz"))
        if inspect.isgenerator(out):
            out = list(out)
        assert toasts and "without the data it needs" in toasts[0], (block_fn.name, toasts)


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


# -- the route library when hosted: private by default, shared explicitly (issue 28) -------
class _Visitor:
    """One browser of an in-process app: its session, its BrowserState (a client id the
    server signed) and its calls through the gate, the rate buckets refilled before each."""

    def __init__(self, ctx, clock, session: str, host: str):
        self.ctx, self.clock = ctx, clock
        self.request = _request(session, host)
        self.browser = ctx.owners.ensure_client(None)

    def __call__(self, view, *args, link: dict | None = None):
        self.clock.advance(600.0)
        self.request.query_params = dict(link or {})
        out = self.ctx.gate.call(view, *args, request=self.request)
        return list(out) if inspect.isgenerator(out) else out

    def refused(self, view, *args, link: dict | None = None) -> str:
        with pytest.raises(gr.Error) as info:
            self(view, *args, link=link)
        return str(info.value.message)


@pytest.fixture
def visitors(demo, tmp_path):
    """An app of the demo model in hosted mode and two of its visitors."""
    from explorer.app.context import Explorer
    clock = FakeClock()
    ctx = Explorer(demo, data_dir=tmp_path, policy=HostedPolicy(enabled=True, clock=clock))
    yield ctx, _Visitor(ctx, clock, "alice-tab", "10.0.0.7"), \
        _Visitor(ctx, clock, "bob-tab", "10.0.0.8")
    ctx.jobs.shutdown(wait=True, timeout=30)


def _rows(out) -> list[tuple]:
    """The (id, access) rows of a routes table view's table."""
    df = out[0] if isinstance(out, tuple) else out
    return [(int(r["id"]), r["access"]) for _, r in df.iterrows()]


def test_hosted_routes_are_private_until_their_owner_shares_them(visitors):
    """Alice saves a route in Inspect (with a system prompt). Bob cannot list it (routes
    endpoint, library table, research list), replay it (endpoint, library, a ?route= link),
    compare, load, export, import, delete or share it: every refusal is the one an unknown
    id gets. Once Alice shares it, Bob lists, replays and exports it, marked shared, but
    cannot unshare or delete it; Alice can, and her undo brings it back as it was."""
    from explorer.app import api, build
    from explorer.app.tabs import inspect as insp
    from explorer.app.tabs import library as lib
    from explorer.app.tabs.research import tab as ur
    ctx, alice, bob = visitors
    st = InspectState(route=Route().force(ctx.moe.moe_layers[0], 0, [0, 1]))
    rid = alice(insp.on_save, PROMPT, "Answer in one word.", st, alice.browser)
    owner = ctx.owners.owner(client=alice.browser["client"])
    assert ctx.store.get_route(rid).owner == owner
    unknown = rid + 1000
    filters = ("any", "", "any", "any")

    def same_as_unknown(view, *args, after=(), typed=lambda i: i):
        """Bob's refusal for Alice's id is the one for an id nobody has."""
        mine = bob.refused(view, *args, typed(rid), *after)
        none = bob.refused(view, *args, typed(unknown), *after)
        assert mine.replace(str(rid), "ID") == none.replace(str(unknown), "ID"), (mine, none)
        assert mine == f"no route with id {rid}"

    # the routes endpoint lists an API client's own routes (those of the searches its session
    # started: one saved here for Alice's session) and the shared ones
    api_rid = ctx.store.save_route(Route().force(ctx.moe.moe_layers[0], 1, [2, 3]), PROMPT,
                                   ctx.moe.name, owner=ctx.owners.owner(alice.request))
    (mine,) = alice(api.routes)
    assert (mine["id"], mine["yours"], mine["shared"]) == (api_rid, True, False)
    # Alice's browser sees its route, marked its own and private; Bob sees nothing of it
    assert _rows(alice(lib.on_refresh, *filters, alice.browser)) == [(rid, "yours · private")]
    assert bob(api.routes) == [] and _rows(bob(lib.on_refresh, *filters, bob.browser)) == []
    assert f"#{rid}" not in bob(ur.refresh_library, bob.browser)
    same_as_unknown(api.replay)
    same_as_unknown(lib.replay_route, after=("", 4, bob.browser))
    same_as_unknown(lib.load_into_inspect, after=(InspectState(), bob.browser))
    same_as_unknown(lib.compare, after=(rid, "", 4, bob.browser))
    same_as_unknown(lib.export, after=(bob.browser,))
    same_as_unknown(lib.delete, after=(*filters, bob.browser))
    same_as_unknown(lib.share_route, after=(*filters, bob.browser))
    same_as_unknown(ur.utility_view, ur.ROUTE_SOURCE, "", 1, False, 4,
                    after=("", "Say hello.", "", 8, "keyword", bob.browser), typed=str)
    assert "no import file" in bob.refused(lib.do_import, None, f"route-{rid}.json", *filters,
                                           bob.browser)
    # a link to it: Bob's page opens nothing and the follow-up replays nothing
    with pytest.warns(UserWarning, match=f"no route with id {rid}"):
        page = bob(build.on_load, bob.browser, *filters, InspectState(), link={"route": rid})
    assert page[-6] != rid and _rows(page[8]) == []
    assert bob.refused(build.follow_route_link, 4, bob.browser,
                       link={"route": rid}) == f"no route with id {rid}"
    assert alice(build.on_load, alice.browser, *filters, InspectState(),
                 link={"route": rid})[-6] == rid
    # Alice's export goes in a folder nobody else can name; Bob's import of it is refused
    assert alice(lib.export, rid, alice.browser).endswith(f"route-{rid}.json")
    exports = ctx.store.exports_dir
    assert not list(exports.glob("*.json")) and len(list(exports.glob("*/*.json"))) == 1
    # Copy link of a private route: a link that carries the edits, not the private id
    assert f"route={rid}" not in alice(insp.on_share, PROMPT, "Answer in one word.", 8, st,
                                       alice.browser)

    # Alice shares it: Bob lists, replays and exports it, marked shared
    assert _rows(alice(lib.share_route, rid, *filters, alice.browser)) == [
        (rid, "yours · shared")]
    (seen,) = bob(api.routes)
    assert (seen["id"], seen["yours"], seen["shared"]) == (rid, False, True)
    assert seen["route"]["info"]["system"] == "Answer in one word."  # what sharing publishes
    assert owner not in json.dumps(bob(api.routes)) and "session" not in json.dumps(seen)
    assert _rows(bob(lib.on_refresh, *filters, bob.browser)) == [(rid, "shared")]
    assert bob(api.replay, rid, "", "", 4)["prompt_tokens"] > 0
    assert bob(lib.replay_route, rid, "", 4, bob.browser)[-1][1].startswith(f"Route **#{rid}**")
    assert bob(build.on_load, bob.browser, *filters, InspectState(),
               link={"route": rid})[-6] == rid
    assert bob(lib.export, rid, bob.browser).endswith(f"route-{rid}.json")
    assert f"route={rid}" in alice(insp.on_share, PROMPT, "Answer in one word.", 8, st,
                                   alice.browser)
    # ...but only Alice may unshare or delete it
    for view in (lib.unshare_route, lib.delete):
        assert bob.refused(view, rid, *filters, bob.browser) == \
            f"route #{rid} is not yours: only its owner can " \
            f"{'share or unshare' if view is lib.unshare_route else 'delete'} it"
    assert ctx.store.get_route(rid).shared

    # Alice unshares it (Bob loses it), deletes it and brings it back
    alice(lib.unshare_route, rid, *filters, alice.browser)
    assert bob(api.routes) == []
    _, table, gone, _ = alice(lib.delete, rid, *filters, alice.browser)
    assert table.empty
    assert bob.refused(lib.undo_delete, gone, *filters, bob.browser) == \
        f"no route with id {rid}"
    assert alice(lib.undo_delete, gone, *filters, alice.browser)[0] == rid
    assert ctx.store.get_route(rid, viewer=owner).owner == owner


def test_hosted_imports_and_saves_are_their_visitors(visitors):
    """An import is its visitor's (private); the same route saved by two visitors is two
    routes, so nobody is handed the id of someone else's private route."""
    from explorer.app.tabs import inspect as insp
    from explorer.app.tabs import library as lib
    ctx, alice, bob = visitors
    filters = ("any", "", "any", "any")
    route = Route().force(ctx.moe.moe_layers[0], 0, [0, 1])
    text = json.dumps({"edits": route.to_dict()["edits"], "info": {"prompt": PROMPT}})
    rid, _, table = alice(lib.do_import, None, text, *filters, alice.browser)
    assert _rows(table) == [(rid, "yours · private")]
    assert bob(lib.on_refresh, *filters, bob.browser)[0].empty
    st = InspectState(route=route)
    assert alice(insp.on_save, PROMPT, "", st, alice.browser) == rid  # already hers
    other = bob(insp.on_save, PROMPT, "", st, bob.browser)
    assert other != rid and _rows(bob(lib.on_refresh, *filters, bob.browser)) == [
        (other, "yours · private")]


def test_the_local_library_is_everyones(demo, tmp_path):
    """Not hosted, the library is the single user's, as before: every route is listed to
    every browser, with no access column and no owner, and any may be deleted."""
    from explorer.app import api
    from explorer.app.context import Explorer
    from explorer.app.format import ROUTE_COLUMNS
    from explorer.app.tabs import inspect as insp
    from explorer.app.tabs import library as lib
    ctx = Explorer(demo, data_dir=tmp_path)
    try:
        one, two = (ctx.owners.ensure_client(None) for _ in range(2))
        call = ctx.gate.call
        st = InspectState(route=Route().force(ctx.moe.moe_layers[0], 0, [0, 1]))
        rid = call(insp.on_save, PROMPT, "", st, one)
        old = ctx.store.save_route(Route().force(ctx.moe.moe_layers[0], 1, [2, 3]), PROMPT,
                                   ctx.moe.name)  # e.g. a script's
        assert ctx.store.get_route(rid).owner is None
        assert [r["id"] for r in call(api.routes)] == [old, rid]
        df, _ = call(lib.on_refresh, "any", "", "any", "any", two)
        assert list(df.columns) == ROUTE_COLUMNS and df["id"].tolist() == [old, rid]
        assert call(api.replay, rid, "", "", 4)["prompt_tokens"] > 0
        assert call(insp.on_save, PROMPT, "", st, two) == rid  # one library: stored once
        call(lib.delete, rid, "any", "", "any", "any", two)
        assert [r["id"] for r in call(api.routes)] == [old]
        assert call(lib.export, old, two).endswith(f"route-{old}.json")
        assert (ctx.store.exports_dir / f"route-{old}.json").exists()  # no private folder
    finally:
        ctx.jobs.shutdown(wait=True, timeout=30)


def test_the_hosted_library_tab_says_routes_are_private_and_offers_share(hosted):
    from explorer.app.tabs.library import PRIVATE_NOTE
    demo, _ = hosted
    by_id = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    assert by_id["lib-share"].visible and by_id["lib-unshare"].visible
    assert by_id["library-private-note"].value == PRIVATE_NOTE
    assert "access" in by_id["routes-table"].value["headers"]
