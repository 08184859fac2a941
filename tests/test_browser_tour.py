"""The Tour in a real chromium: its five steps on the demo model, every number its text
states checked against numbers computed here, the minimal route at most a quarter of the
prompt cells, the app's max new tokens untouched, and Inspect's Minimize on the tour's
route.

Needs pip ``playwright`` and Debian's ``/usr/bin/chromium`` (or $EXPLORER_CHROMIUM); skips
cleanly without them or without the demo model. The screenshot ``tour.png`` goes to a
temporary folder, or to ``$EXPLORER_SCREENSHOTS`` (e.g. ``docs/screenshots``) when set.
Seconds per step are printed (``pytest -s``), never asserted.
"""

from __future__ import annotations

import re
import time

import pytest
from browser_support import need_browser, open_app, serve, shot, wait_text, wait_value

pytestmark = pytest.mark.browser

need_browser()
NUMBER = re.compile(r"\d+(?:\.\d+)?")
SECONDS: dict[str, float] = {}
STEP_TIMEOUT = 180_000  # ms a tour step may take


@pytest.fixture(scope="module")
def served(demo, tmp_path_factory):
    with serve(demo, tmp_path_factory.mktemp("tour-browser-data")) as app:
        yield app
    print("\ntour seconds:", {k: round(v, 2) for k, v in SECONDS.items()})


@pytest.fixture(scope="module")
def page(served, browser):
    """One page for the module's tests (the second goes on from the first); its page
    errors are in ``page.errors``."""
    pg, errors = open_app(browser, served)
    pg.errors = errors
    return pg


@pytest.fixture(scope="module")
def live(demo):
    """The tour's numbers computed here from the library, not through the app."""
    from explorer.core.trace import trace
    from explorer.demo.tour import load_tour
    from explorer.judges import get_judge
    from explorer.methods.rosais import ranking, rosais
    tour = load_tour()
    route = tour.route()
    n, layers = len(demo.encode(tour.prompt)), len(demo.moe_layers)
    res = rosais(demo, tour.prompt, samples=tour.rosais_samples,
                 top=min(tour.rosais_top, layers), seed=0, max_new_tokens=tour.max_new_tokens,
                 curve=True)
    judge = get_judge("keyword")
    flips = [b["top"] for b in res.by_top if judge.judge(tour.prompt, b["completion"]).jailbroken]
    base = trace(demo, tour.prompt, max_new_tokens=tour.max_new_tokens)
    alt = trace(demo, tour.prompt, max_new_tokens=tour.max_new_tokens, route=route)
    diff = [[set(a[t]) != set(b[t]) for t in range(min(base.num_tokens, alt.num_tokens))]
            for a, b in zip(base.experts, alt.experts)]
    return {"tour": tour, "prompt_tokens": n, "moe_layers": layers, "prompt_cells": n * layers,
            "route_edits": len(route.edits), "searched_edits": route.info["minimized_from"],
            "route_share": f"{100 * len(route.edits) / (n * layers):.1f}",
            "rosais_samples": tour.rosais_samples, "rosais_top": flips[0] if flips else None,
            "rosais_layers": ranking(res)[:flips[0]] if flips else [],
            "rosais_tried": len(res.by_top), "steps": len(tour.steps),
            "tour_tokens": tour.max_new_tokens, "changed_cells": sum(map(sum, diff)),
            "compared_cells": sum(map(len, diff)),
            "changed_prompt_cells": sum(sum(row[:n]) for row in diff)}


def _allowed(live: dict) -> set[str]:
    out = set()
    for k, v in live.items():
        if k == "tour" or v is None:
            continue
        out.update(map(str, v) if isinstance(v, list) else [str(v)])
    return out


def _step_text(page, number: int) -> str:
    """A step's text as the browser shows it, without its "N. title" heading."""
    text = page.inner_text(f"#tour-step-{number}")
    return text.split("\n", 1)[1] if "\n" in text else text


def _press(page, action, sel, text):
    t = time.perf_counter()
    page.click(f"#tour-{action}-btn")
    wait_text(page, sel, text, timeout=STEP_TIMEOUT)
    SECONDS[f"tour step {action}"] = time.perf_counter() - t


def test_the_tour_in_chromium_states_the_live_numbers(served, page, live, shots):
    from explorer.app.gate import is_demo_model
    if not is_demo_model(served.explorer.moe):
        pytest.skip("the tour runs on the demo model")
    tour = live["tour"]
    num = {s.action: s.number for s in tour.steps}
    cells, edits = live["prompt_cells"], live["route_edits"]
    assert 4 * edits <= cells  # the minimal route: at most a quarter of the prompt cells
    max_new = page.input_value("#prompt-max-new input[type=number]")
    # before any click: the cells and the route's size, from the model the app loaded
    replay = _step_text(page, num["replay"])
    assert f"kept only {edits}, that is {live['route_share']}% of the prompt's {cells} cells" \
        in replay and f"a route of {live['searched_edits']} forced cells" in replay

    _press(page, "generate", f"#tour-step-{num['generate']}", f"{cells} prompt cells")
    wait_text(page, "#tour-info-generate", "refusal", timeout=STEP_TIMEOUT)
    assert (f"{live['prompt_tokens']} tokens through {live['moe_layers']} MoE layers: "
            f"{cells} prompt cells") in _step_text(page, num["generate"])

    assert live["rosais_top"] is not None, "RoSais no longer flips the demo model's answer"
    L, layers = live["rosais_top"], ", ".join(map(str, live["rosais_layers"]))
    _press(page, "rosais", f"#tour-step-{num['rosais']}",
           f"masking only the top {L} of the {live['moe_layers']} routers (layers {layers})")
    wait_text(page, "#tour-info-rosais", f"With the top {L} routers masked", timeout=STEP_TIMEOUT)

    _press(page, "replay", "#tour-info-replay", "jailbroken")
    assert page.input_value("#tour-rerouted textarea").startswith("Sure, here is")
    assert f"{edits} forced cells of {cells} prompt cells" in page.inner_text(
        "#tour-info-replay")

    _press(page, "compare", f"#tour-step-{num['compare']}",
           f"{live['changed_cells']} of {live['compared_cells']} (prompt and answer), "
           f"{live['changed_prompt_cells']} of them in the prompt")
    wait_text(page, "#tour-info-compare", "cells route differently", timeout=STEP_TIMEOUT)

    # every number in the steps' texts is a live one, and none is left to compute
    ok = _allowed(live)
    for step in tour.steps:
        text = _step_text(page, step.number)
        if step.action == "explain":
            continue  # filled by its button, below
        assert "…" not in text, (step.action, text)
        assert set(NUMBER.findall(text)) <= ok, (step.action, NUMBER.findall(text), text)
    time.sleep(0.5)
    shot(page, shots / "tour.png", sel="#tour-tab", restore_toasts=False)

    _press(page, "explain", "#pending-edits", f"#{edits} ")
    text = _step_text(page, num["explain"])
    assert f"{edits} of {cells} router decisions" in text
    assert set(NUMBER.findall(text)) <= ok, text
    # step 5 opened Inspect and left the app's max new tokens as it was
    assert page.input_value("#prompt-max-new input[type=number]") == max_new
    assert page.input_value("#rerouted-answer textarea").startswith("Sure, here is")
    assert not page.errors, page.errors


def test_minimize_in_inspect_after_the_tour(served, page, live):
    """The tour's route is already minimal: Minimize keeps its edits and its flip."""
    edits, cells = live["route_edits"], live["prompt_cells"]
    page.get_by_role("tab", name="Inspect & re-route", exact=True).click()
    t = time.perf_counter()
    page.click("#minimize-btn")
    wait_text(page, "#minimize-info", f"{edits} → ", timeout=STEP_TIMEOUT)
    SECONDS["Minimize in Inspect (the tour's route)"] = time.perf_counter() - t
    md = page.inner_text("#minimize-info")
    kept = int(re.search(r"→ (\d+) edits", md).group(1))
    assert kept <= edits and f"({kept} of {cells} prompt cells)" in md
    assert "still jailbroken: yes" in md
    wait_value(page, "#rerouted-answer textarea", "v && v.startsWith('Sure, here is')",
               timeout=120_000)
    assert not page.errors, page.errors
