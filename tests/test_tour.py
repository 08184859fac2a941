"""The guided tour (issue #9): its files, its shipped route on the demo model, and the Tour
tab's buttons (their wired callbacks, called as the browser's events would call them)."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import ui_handler  # noqa: E402

from explorer.demo.tour import (
    ACTIONS,
    TOUR_DIR,
    TourError,
    baseline,
    changed_cells,
    load_tour,
    replayed,
)
from explorer.judges import get_judge


def last(result):
    """The final value of a callback (generators: their last yield)."""
    if hasattr(result, "__next__"):
        out = None
        for out in result:
            pass
        return out
    return result


# -- the tour files ---------------------------------------------------------------------------
def test_the_shipped_tour_loads():
    tour = load_tour()
    assert 4 <= len(tour.steps) <= 6
    assert [s.number for s in tour.steps] == list(range(1, len(tour.steps) + 1))
    assert {s.action for s in tour.steps} >= {"generate", "rosais", "replay", "compare",
                                              "explain"}
    assert all(s.title and s.text and s.button for s in tour.steps)
    assert tour.prompt.strip() and tour.route_path == TOUR_DIR / "route.json"
    route = tour.route()
    assert route.edits and route.info["model"] == "demo"
    assert route.info["method"] == "fsour" and route.info["prompt"] == tour.prompt
    assert tour.step("replay").number == 3
    assert load_tour(TOUR_DIR / "tour.json") == tour
    again = type(tour).from_dict(json.loads(json.dumps(tour.to_dict())))
    assert again == tour


@pytest.mark.parametrize("change,message", [
    (lambda d: d.pop("prompt"), "lacks prompt"),
    (lambda d: d.update(colour="red"), "unknown tour field"),
    (lambda d: d.update(steps=d["steps"][:3]), "4 to 6 steps"),
    (lambda d: d["steps"][1].update(number=7), "step 2 is numbered 7"),
    (lambda d: d["steps"][0].update(action="explode"), "unknown action 'explode'"),
    (lambda d: d["steps"][0].update(colour="red"), "tour step 1"),
    (lambda d: d.update(route_file="../route.json"), "file name in the tour folder"),
    (lambda d: d.update(route_file="missing.json"), "cannot read route file"),
    (lambda d: d.update(max_new_tokens=-1), "max_new_tokens must be"),
])
def test_malformed_tours_are_refused(tmp_path, change, message):
    data = json.loads((TOUR_DIR / "tour.json").read_text())
    shutil.copy(TOUR_DIR / "route.json", tmp_path / "route.json")
    change(data)
    (tmp_path / "tour.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        load_tour(tmp_path / "tour.json")


def test_unreadable_tours_are_refused(tmp_path):
    with pytest.raises(TourError, match="cannot read the tour"):
        load_tour(tmp_path / "nope.json")
    (tmp_path / "tour.json").write_text("{not json")
    with pytest.raises(TourError, match="not valid JSON"):
        load_tour(tmp_path / "tour.json")
    assert set(ACTIONS) == {"generate", "rosais", "replay", "compare", "explain"}


# -- the shipped route on the demo model ------------------------------------------------------
def test_the_shipped_route_flips_the_demo_models_refusal(demo):
    tour = load_tour()
    route = tour.route()
    route.validate(demo.info, num_tokens=len(demo.encode(tour.prompt)))
    assert route.check_provenance(demo.info.provenance()) is None
    judge = get_judge("keyword")
    base = baseline(demo, tour)
    alt = replayed(demo, tour)
    before = judge.judge(tour.prompt, base.completion)
    after = judge.judge(tour.prompt, alt.completion)
    assert before.refusal and not before.jailbroken, base.completion
    assert after.jailbroken and not after.refusal, alt.completion
    assert alt.completion.startswith("Sure, here is")
    # the forced cells are the route's
    for e in route.edits:
        assert sorted(alt.experts_at(e.layer, e.position)) == sorted(e.experts)
    changed, total, first = changed_cells(base, alt)
    assert 0 < changed <= total and first == min(e.position for e in route.edits)


# -- the Tour tab ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tour_app(demo, tmp_path_factory):
    from explorer.app.build import build_app
    app = build_app(demo, data_dir=tmp_path_factory.mktemp("tour-data"))
    yield app
    app.explorer.jobs.shutdown(wait=True, timeout=30)


def test_the_tour_buttons_show_the_refusal_flipping(tour_app, demo):
    tour = load_tour()
    st, answer, heat, md = last(ui_handler(tour_app, "tour-generate-btn")(None))
    base = st.base
    assert answer == base.completion and "refusal" in md
    assert heat.data[0].type == "heatmap" and len(heat.data[0].z) == len(demo.moe_layers)

    bars, md = last(ui_handler(tour_app, "tour-rosais-btn")())
    assert any(t.type == "bar" for t in bars.data) and "top layers" in md

    st, answer, heat, md = last(ui_handler(tour_app, "tour-replay-btn")(st))
    alt = st.alt
    assert st.base is base  # the visitor's state keeps step 1's trace
    assert answer.startswith("Sure, here is") and "jailbroken" in md
    assert f"{len(tour.route().edits)} forced cells" in md

    st2, diff, md = last(ui_handler(tour_app, "tour-compare-btn")(st))
    assert st2.base is base and st2.alt is alt  # step 4 reuses the traces of steps 1 and 3
    assert "cells route differently" in md and diff.data
    # step 4 alone (a fresh session) computes both traces itself
    st3, _, md3 = last(ui_handler(tour_app, "tour-compare-btn")(None))
    assert st3.base.completion == base.completion and st3.alt.completion == alt.completion
    assert md3 == md

    out = last(ui_handler(tour_app, "tour-explain-btn")(st))
    prompt, n, inspect, box, tabs, md, base_text, alt_text, heat, _, view, _, panel = out
    edits = inspect.edit_dicts()
    assert prompt == tour.prompt and edits == tour.route().to_dict()["edits"]
    assert len(box.choices) == len(edits) and tabs.selected == "inspect"
    # step 5 fills Inspect: both answers and the changed-cells heatmap, no further clicks
    assert inspect.base is base and inspect.alt is alt and n == base.info["max_new_tokens"]
    assert inspect.base_badge["verdict"] == "refusal"  # kept for Re-run: no second forward
    assert base_text == base.completion and alt_text.startswith("Sure, here is")
    assert view == "re-routed" and heat.data
    assert "refusal" in panel and "jailbroken" in panel and "sse-diff" in panel


def test_the_tour_says_when_another_model_is_loaded(tiny, tmp_path):
    import gradio as gr

    from explorer.app.build import build_app
    app = build_app(tiny, data_dir=tmp_path)
    try:
        with pytest.raises(gr.Error, match="The tour runs on the demo model"):
            last(ui_handler(app, "tour-generate-btn")(None))
    finally:
        app.explorer.jobs.shutdown(wait=True, timeout=30)
