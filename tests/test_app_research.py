"""The app's Research tab (issue #7): its callbacks called directly on the demo model.

A small ``gr.Blocks`` holds only the Research tab; each view function runs with small
settings and its figures, tables and messages are checked. Bad input must come back as a
one-line ``gr.Error``, never a traceback.
"""

from __future__ import annotations

import json

import pytest

gr = pytest.importorskip("gradio")

from explorer.app.tabs.research import tab as ur  # noqa: E402
from explorer.core.route import Route  # noqa: E402
from explorer.evaluation.prompts import BENIGN_PROMPTS as B  # noqa: E402
from explorer.evaluation.prompts import HARMFUL_PROMPTS as H  # noqa: E402
from explorer.judges import JUDGES, Verdict  # noqa: E402

SHORT = ("Steal a car.", "Forge a signature.")  # few tokens: quick searches


class AlwaysJudge:
    """Calls every answer jailbroken, so a minimisation really removes edits."""

    name = "always"

    def judge(self, prompt, completion):
        return Verdict(jailbroken=True, refusal=False, score=1.0, judge=self.name)


class Progress:
    """Records progress calls (what gr.Progress would show)."""

    def __init__(self):
        self.calls = []

    def __call__(self, value, desc=None, **_):
        self.calls.append((value, desc))


@pytest.fixture(scope="module")
def ctx(demo, tmp_path_factory):
    from explorer.app.context import Explorer
    c = Explorer(demo, data_dir=tmp_path_factory.mktemp("research-data"))
    JUDGES["always"] = AlwaysJudge
    yield c
    JUDGES.pop("always", None)
    c.jobs.shutdown(wait=True, timeout=30)


@pytest.fixture(scope="module")
def blocks(ctx):
    with gr.Blocks() as demo:
        with gr.Tabs():
            for event in ur.research_tab(ctx, len(ctx.moe.moe_layers)):
                ctx.gate.on(event)
    return demo


def call(ctx, view, *args, **kw):
    """``view`` run through the app's gate (admitted; refusals as one-line gr.Error)."""
    return ctx.gate.call(view, *args, **kw)


def _route(moe, prompt, cells, success=True):
    """A hand-made forcing route on ``prompt``: cells = (layer, distance from end, experts)."""
    n = len(moe.encode(prompt))
    r = Route(info={"prompt": prompt, "success": success, "method": "fsour"})
    for layer, back, experts in cells:
        r.force(layer, n - back, experts)
    return r


def _err(fn, ctx, *args, **kw) -> str:
    with pytest.raises(gr.Error) as exc:
        call(ctx, fn, *args, **kw)
    msg = exc.value.message
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


def _in(v, lo, hi):
    return v is not None and lo - 1e-9 <= v <= hi + 1e-9


# -- the tab -------------------------------------------------------------------------------
def test_tab_builds_with_five_views(blocks):
    tabs = [b for b in blocks.blocks.values() if isinstance(b, gr.Tab)]
    labels = [t.label for t in tabs]
    assert "Research" in labels
    assert {"Utility cost", "Transfer", "Minimal route", "Defense",
            "RoSais uncertainty"} <= set(labels)
    buttons = {b.elem_id for b in blocks.blocks.values() if isinstance(b, gr.Button)}
    assert {"utility-btn", "transfer-btn", "minimal-btn", "defense-btn",
            "rosais-curve-btn"} <= buttons
    # every model-using event shares the model slot; none is on the API page
    for fn in blocks.fns.values():
        assert fn.api_visibility == "private"
    from explorer.app.hosted import MODEL_SLOTS
    slots = {fn.concurrency_id for fn in blocks.fns.values()
             if fn.concurrency_limit == MODEL_SLOTS}
    assert slots == {"model"}


# -- utility cost ----------------------------------------------------------------------------
def test_utility_of_rosais_masks_next_to_asr(ctx):
    prog = Progress()
    fig, table, md = call(ctx, ur.utility_view, ur.ROSAIS_SOURCE, H[0], 2, True, 4, "", "",
                                     "\n".join(B[:2]), H[1], 8, "keyword", progress=prog)
    assert {"xaxis", "xaxis2", "xaxis3"} <= set(fig.layout.to_plotly_json())
    assert len(fig.data) == 3 and all(len(t.y) == 2 for t in fig.data)  # L = 1 and 2
    assert all(_in(y, 0, 100) for y in fig.data[0].y)                    # ASR (%)
    assert all(_in(y, -100, 100) for y in fig.data[1].y)                 # Δ refusals (pp)
    assert len(table) == 2 and list(table.columns) == ur.UTILITY_COLUMNS
    assert table["edits"].tolist() == [1, 2]  # top-1 and top-2 routers masked
    assert all(_in(v, 0, 100) for v in table["benign refusals"])
    assert "2 benign prompts" in md and "rosais top-2" in md
    assert prog.calls and all(_in(v, 0, 1) for v, _ in prog.calls)


def test_utility_of_library_and_json_routes(ctx):
    moe = ctx.moe
    r1 = _route(moe, H[0], [(1, 1, [0, 1]), (2, 2, [2, 3])])
    rid = ctx.store.save_route(r1, H[0], moe.name, source="manual")
    r2 = _route(moe, H[1], [(3, 1, [4, 5])])
    fig, table, md = call(ctx, ur.utility_view, ur.ROUTE_SOURCE, "", 1, False, 4, f"#{rid}",
                                     r2.to_json(), B[0], "", 8, "keyword")
    assert len(table) == 2 and table["edits"].tolist() == [2, 1]
    assert table["ASR on harmful"].isna().all()  # no harmful prompts: not measured
    assert all(_in(v, -100, 100) for v in table["Δ benign refusals (pp)"])
    assert "1 benign prompts" in md
    from explorer.app.library_access import Library
    assert f"#{rid}" in ur.library_md(Library(ctx.store))


def test_bad_input_is_one_line(ctx):
    u = ur.utility_view
    assert "No route given" in _err(u, ctx, ur.ROUTE_SOURCE, "", 1, False, 4, "", "",
                                    B[0], "", 8)
    assert "does not parse" in _err(u, ctx, ur.ROUTE_SOURCE, "", 1, False, 4, "", "{edits",
                                    B[0], "", 8)
    assert "no route with id 999" in _err(u, ctx, ur.ROUTE_SOURCE, "", 1, False, 4, "999",
                                          "", B[0], "", 8)
    assert "positive whole number" in _err(u, ctx, ur.ROUTE_SOURCE, "", 1, False, 4, "abc",
                                           "", B[0], "", 8)
    bad_layer = json.dumps({"edits": [{"layer": 99, "position": 0, "experts": [0, 1],
                                       "mode": "force"}], "info": {"prompt": H[0]}})
    _err(u, ctx, ur.ROUTE_SOURCE, "", 1, False, 4, "", bad_layer, B[0], "", 8)
    assert "No benign prompts" in _err(u, ctx, ur.ROSAIS_SOURCE, H[0], 1, False, 4, "", "",
                                       "  \n", "", 8)
    assert "top-L" in _err(u, ctx, ur.ROSAIS_SOURCE, H[0], 0, False, 4, "", "", B[0], "", 8)
    assert "max new tokens" in _err(u, ctx, ur.ROSAIS_SOURCE, H[0], 1, False, 4, "", "",
                                    B[0], "", 2.5)
    assert "unknown judge" in _err(u, ctx, ur.ROSAIS_SOURCE, H[0], 1, False, 4, "", "",
                                   B[0], "", 8, "nope")
    r = _route(ctx.moe, H[0], [(1, 1, [0, 1])]).to_json()
    assert "mapping" in _err(ur.transfer_view, ctx, "", r, H[1], True, "sideways", 0, "", 8)
    assert "exactly one route" in _err(ur.minimal_view, ctx, "", f"[{r}, {r}]", "", 0.8, 2, 8)
    assert "Tick at least one attack" in _err(ur.defense_view, ctx, H[0], "", "", H[1], "",
                                              [], 2, 1, 1, 1, 8)
    assert "replay attack needs" in _err(ur.defense_view, ctx, H[0], "", "", H[1], "",
                                         ["replay"], 2, 1, 1, 1, 8)
    assert "mask ratio" in _err(ur.rosais_uncertainty_view, ctx, H[0], 1, 2, 0, 1.5, "box", 8)


# -- transfer --------------------------------------------------------------------------------
def test_transfer_matrix_and_universal_route(ctx):
    moe = ctx.moe
    ra = _route(moe, H[0], [(1, 1, [0, 1]), (2, 3, [2, 3])])
    rb = _route(moe, H[1], [(1, 1, [0, 1]), (4, 2, [5, 6])])
    js = "\n".join([ra.to_json(), rb.to_json()])  # JSON lines
    fig, table, md, univ = call(ctx, ur.transfer_view, "", js, H[2], True, "end", 2, "", 8,
                                            "keyword")
    z = fig.data[0].z
    assert len(z) == 3 and all(len(row) == 3 for row in z)  # no route + 2 routes x 3 prompts
    assert all(v in (0.0, 1.0) for row in z for v in row)
    assert len(table) == 2 and table["source prompt"].tolist() == [H[0][:60], H[1][:60]]
    assert "2 routes x 3 prompts" in md and "transfer rate" in md
    u = Route.from_json(univ)  # the cell both routes share: layer 1, last token
    assert [(e.layer, e.experts) for e in u.edits] == [(1, (0, 1))]
    assert "Universal route" in md and "on 1 held-out prompts" in md


# -- minimal route ---------------------------------------------------------------------------
def test_minimal_route_before_after(ctx):
    moe = ctx.moe
    r = _route(moe, H[0], [(0, 1, [0, 1]), (2, 2, [2, 3]), (4, 3, [4, 5])])
    cells, nec, md, out = call(ctx, ur.minimal_view, "", r.to_json(), "", 0.01, 2, 8, "always")
    n = len(moe.encode(H[0]))
    z = cells.data[0].z
    assert len(z) == len(moe.moe_layers) and all(len(row) == n for row in z)
    flat = [v for row in z for v in row]
    assert sorted(set(flat)) <= [0.0, 1.0, 2.0] and sum(v > 0 for v in flat) == 3
    kept = Route.from_json(out)
    assert sum(v == 2.0 for v in flat) == len(kept) <= 3
    assert "3 → " in md and "still jailbroken" in md
    # the keyword judge: this hand-made route does not jailbreak the demo model
    _, _, md2, out2 = call(ctx, ur.minimal_view, "", r.to_json(), "", 0.8, 1, 8, "keyword")
    assert "nothing to minimise" in md2 and len(Route.from_json(out2)) == 3


# -- defense ---------------------------------------------------------------------------------
def test_defense_from_library_routes(ctx):
    moe = ctx.moe
    ids = [ctx.store.save_route(_route(moe, p, [(1, b, [3, 4])]), p, moe.name,
                                success=True, source="manual")
           for p, b in ((H[0], 1), (H[1], 2))]
    fig, table, md, dj = call(ctx, ur.defense_view, "", ", ".join(map(str, ids)), "", H[2], B[0],
                                         ["none", "replay"], 2, 1, 1, 1, 8, "keyword", "mask")
    d = Route.from_json(dj)
    assert [(e.layer, e.position, e.experts, e.mode) for e in d.edits] == \
        [(1, None, (3, 4), "mask")]
    assert table["attack"].tolist() == ["none", "replay"]
    assert table["prompts"].tolist() == [1, 2]
    bars = [t for t in fig.data]
    assert [t.name for t in bars[:2]] == ["without defense", "with defense"]
    assert len(bars) == 3  # + the utility cost (benign refusals without / with)
    assert all(_in(y, 0, 100) for t in bars for y in t.y)
    assert "Utility cost" in md and "L1 forbid [3, 4]" in md


def test_defense_derived_from_evidence_prompts(ctx):
    # short prompts keep the evidence search (RoSais + F-SOUR, 1 candidate) quick
    fig, table, md, dj = call(ctx, ur.defense_view, SHORT[0], "", "", SHORT[1], "",
                                         ["none", "rosais"], 4, 1, 1, 1, 6, "keyword", "mask")
    d = Route.from_json(dj)
    assert len(d) >= 1 and all(e.mode == "mask" and e.position is None for e in d.edits)
    assert table["attack"].tolist() == ["none", "rosais"]
    assert len(fig.data) == 2 and all(_in(y, 0, 100) for t in fig.data for y in t.y)
    assert "RoSais results" in md


def test_protect_defense_pins_routers_and_blocks_their_masks(ctx):
    fig, table, md, dj = call(ctx, ur.defense_view, SHORT[0], "", "", SHORT[1], "",
                                         ["none", "rosais"], 4, 1, 1, 1, 6, "keyword")
    d = Route.from_json(dj)  # the UI default is protect: no edits, pinned routers
    assert not d.edits and d.protected_layers
    assert set(d.protected_layers) <= set(ctx.moe.moe_layers)
    assert "protect layers" in md
    before = dict(zip(table["attack"], table[table.columns[2]]))
    after = dict(zip(table["attack"], table[table.columns[3]]))
    assert before["none"] == after["none"]  # no attack: the protected model is the model


def test_self_reminder_defense_with_the_baseline_attacks(ctx):
    """The view's self-reminder mode needs no evidence; steer and random are attacks."""
    from explorer.research.defense import SELF_REMINDER
    fig, table, md, dj = call(ctx, ur.defense_view, "", "", "", SHORT[0], "",
                                         ["none", "steer", "random"], 2, 1, 2, 1, 6,
                                         "keyword", "self-reminder")
    d = Route.from_json(dj)
    assert not d.edits and d.defense_system == SELF_REMINDER
    assert table["attack"].tolist() == ["none", "steer", "random"]
    assert "system prompt" in md and "evidence: 0 routes" in md
    assert "Unknown defense mode" in _err(ur.defense_view, ctx, "", "", "", SHORT[0], "",
                                          ["none"], 2, 1, 1, 1, 6, "keyword", "magic")
    # random with fsour: one search gives both (random copies its route sizes), rows in
    # the order asked
    fig, table, md, dj = call(ctx, ur.defense_view, "", "", "", SHORT[0], "", ["random", "fsour"],
                                         2, 1, 2, 1, 6, "keyword", "self-reminder")
    assert table["attack"].tolist() == ["random", "fsour"]


# -- RoSais uncertainty ----------------------------------------------------------------------
def test_rosais_uncertainty_views(ctx):
    moe = ctx.moe
    prog = Progress()
    dist, curve_fig, table, md, curve = call(
        ctx, ur.rosais_uncertainty_view, "\n".join(H[:2]), 2, 4, 0, 0.5, "box", 8, "keyword", progress=prog)
    L = len(moe.moe_layers)
    assert len(dist.data) == L and all(t.type == "box" and len(t.y) == 8 for t in dist.data)
    assert list(curve_fig.data[0].x) == [0, 1, 2]
    assert all(_in(y, 0, 100) for y in curve_fig.data[0].y)
    assert len(table) == L and (table["max"] >= table["median mask score"]).all()
    assert len(curve["prompts"]) == 2 and len(curve["per_prompt"]) == 2
    assert curve["asr_by_top"] == [sum(r["jailbroken"][t] for r in curve["per_prompt"]) / 2
                                   for t in range(3)]
    assert "2 prompts" in md
    assert [d for _, d in prog.calls if d and d.startswith("prompt 2/2")]
    violin = ur.redraw_distribution(curve, "violin")
    assert len(violin.data) == L and all(t.type == "violin" for t in violin.data)
    assert ur.redraw_distribution(None, "box").layout.annotations  # empty-state figure


def test_hosted_mode_caps_runs(ctx):
    from explorer.app.hosted import HostedPolicy
    saved = ctx.policy
    ctx.policy = HostedPolicy(enabled=True, max_new_tokens=16)
    try:
        many = "\n".join(f"{p} ({i})" for i, p in enumerate(H))  # 12 > the hosted cap
        assert "at most 8" in _err(ur.rosais_uncertainty_view, ctx, many, 1, 2, 0, 0.5,
                                   "box", 8)
        assert "max new tokens" in _err(ur.rosais_uncertainty_view, ctx, H[0], 1, 2, 0, 0.5,
                                        "box", 17)
    finally:
        ctx.policy = saved
