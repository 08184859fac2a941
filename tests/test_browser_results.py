"""Issue 30 in a real chromium: the Results tab opens an evaluate JSONL (made by running
``evaluate`` on the demo model), compares it with a second, and a click on a row opens
its prompt and route in Inspect, re-run; "Why it flips" then explains the two answers. An
evaluation started from the tab runs in the background and fills the method table.

Needs pip ``playwright`` and Debian's ``/usr/bin/chromium`` (or $EXPLORER_CHROMIUM); skips
cleanly without them. Screenshots go to ``$EXPLORER_SCREENSHOTS`` (e.g.
``docs/screenshots``) when set, else a temporary folder. Timings are printed (``-s``),
never asserted.
"""

from __future__ import annotations

import time

import pytest
from browser_support import need_browser, open_app, serve, set_slider, shot, wait_text, wait_value
from conftest import evaluate_own_prompts

pytestmark = pytest.mark.browser

playwright_api = need_browser()
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def runs(demo, tmp_path_factory):
    """evaluate on the demo model, three of the project's own prompts with a category
    column: no attack, and F-SOUR."""
    return evaluate_own_prompts(demo, tmp_path_factory.mktemp("browser-results"),
                                max_new_tokens=12)


@pytest.fixture(scope="module")
def served(demo, tmp_path_factory):
    with serve(demo, tmp_path_factory.mktemp("browser-results-data")) as app:
        yield app
    print("\nresults timings:", {k: round(v, 2) for k, v in TIMINGS.items()})


def test_results_tab_opens_a_row_in_inspect(served, browser, runs, shots):
    from explorer.evaluation.results import load_results
    fsour = load_results(runs[1])
    page, errors = open_app(browser, served, loaded=False)
    page.get_by_role("tab", name="Results", exact=True).click()

    # -- open a file: its method table and rows ----------------------------------------------
    t = time.perf_counter()
    page.set_input_files("#results-file-a input[type=file]", str(runs[1]))
    wait_text(page, "#results-rows", fsour.rows[-1]["goal"][:40])
    TIMINGS["open a result file -> rows shown (s)"] = time.perf_counter() - t
    k = sum(r["jailbroken"] for r in fsour.rows)
    methods = page.inner_text("#results-methods")
    assert "fsour" in methods and f"{k}/3" in methods

    # -- a second file to compare with ----------------------------------------------------------
    page.set_input_files("#results-file-b input[type=file]", str(runs[0]))
    wait_text(page, "#results-summary", "3 rows in both")
    page.wait_for_function("() => { const g = document.querySelector('#results-categories "
                           "div[data-testid=\"plotly\"]'); return g && g.data && "
                           "g.data.length === 2 }", timeout=30_000)
    names = page.evaluate("() => document.querySelector('#results-categories "
                          "div[data-testid=\"plotly\"]').data.map(t => t.name)")
    assert names == ["A fsour", "B none"]
    time.sleep(0.5)
    shot(page, shots / "results.png", restore_toasts=False)

    # -- click a row: its prompt and route in Inspect, re-run ------------------------------------
    row = next(r for r in fsour.rows if r["index"] == 1)  # the table's second line
    t = time.perf_counter()
    page.click("#results-rows [data-testid='cell-1-6']")
    page.wait_for_function("(g) => document.querySelector('#prompt-box textarea').value === g",
                           arg=row["goal"], timeout=30_000)
    wait_value(page, "#rerouted-answer textarea")
    wait_value(page, "#baseline-answer textarea")
    TIMINGS["click a row -> re-routed answer in Inspect (s)"] = time.perf_counter() - t
    assert page.get_attribute("#main-tabs button[role=tab][data-tab-id='inspect']",
                              "aria-selected") == "true"
    pending = page.locator("#pending-edits label").count()
    assert pending == len(row["route"]["edits"])
    wait_text(page, "#answer-verdicts", "Re-routed")

    # -- why it flips -----------------------------------------------------------------------------
    page.click("#why-flips button")  # open the accordion
    page.click("#why-btn")
    page.wait_for_selector("#why-next-tokens", timeout=60_000)
    page.wait_for_function("() => { const g = document.querySelector('#why-lens "
                           "div[data-testid=\"plotly\"]'); return g && g.data && "
                           "g.data.length === 2 }", timeout=60_000)
    page.locator("#why-flips").scroll_into_view_if_needed()
    time.sleep(0.5)
    shot(page, shots / "why-it-flips.png")
    assert not errors, errors


def test_results_tab_runs_an_evaluation_in_the_background(served, browser):
    """Start an evaluation of the first two harmful prompts (no attack) from the tab: its
    status line follows the job, and when it ends its rows fill the method table."""
    from explorer.core.prompt_sets import HARMFUL_PROMPTS
    page, errors = open_app(browser, served, loaded=False)
    page.get_by_role("tab", name="Results", exact=True).click()
    page.click("#results-run button")  # open the accordion
    for attempt in range(3):  # a box typed in while the page still loads may be re-rendered
        set_slider(page, "results-run-n", 2)
        try:
            page.wait_for_function("() => document.querySelector('#results-run-n "
                                   "input[type=range]').value === '2'", timeout=15_000)
            break
        except playwright_api.TimeoutError:
            if attempt == 2:
                raise
    t = time.perf_counter()
    page.click("#results-run-start")
    wait_text(page, "#results-run-status", "2 rows shown as A", timeout=180_000)
    TIMINGS["start an evaluation of 2 prompts -> method table (s)"] = time.perf_counter() - t
    assert "done" in page.inner_text("#results-run-status")
    methods = page.inner_text("#results-methods")
    assert "none" in methods and "/2" in methods
    for goal in HARMFUL_PROMPTS[:2]:  # one line per prompt
        wait_text(page, "#results-rows", goal[:40], timeout=10_000)
    assert HARMFUL_PROMPTS[2][:40] not in page.inner_text("#results-rows")
    assert not errors, errors
