"""Expert pages in a real chromium: click a heatmap cell in Inspect, then one of the cell's
experts, and its page opens in the Experts tab with its harmful and benign frequencies and
top tokens; the layer overview's bars and Inspect's usage plot open pages too; the search
box refuses junk with one line.

Needs pip ``playwright`` and Debian's ``/usr/bin/chromium`` (or $EXPLORER_CHROMIUM); skips
cleanly without them. The screenshot goes to ``$EXPLORER_SCREENSHOTS/experts.png`` (e.g.
``docs/screenshots``) when set. Seconds from click to page are printed (``pytest -s``),
never asserted.
"""

from __future__ import annotations

import time

import pytest
from browser_support import (
    PLOT_XY,
    SHORT,
    generate,
    need_browser,
    open_app,
    screenshot_dir,
    serve,
    wait_text,
)

pytestmark = pytest.mark.browser

need_browser()
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def served(demo, tmp_path_factory):
    with serve(demo, tmp_path_factory.mktemp("experts-browser")) as app:
        yield app, demo
    print("\nexpert page timings:", {k: round(v, 2) for k, v in TIMINGS.items()})


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _check_page(page, stats, layer, expert):
    """The page shows ``expert`` of ``layer`` with the library's numbers."""
    wait_text(page, "#expert-header", f"Expert {expert} · layer {layer}")
    head = page.inner_text("#expert-header")
    ov = next(x for x in stats.overview(layer) if x["expert"] == expert)
    assert f"{ov['score']:+.3f}" in head and f"rank {ov['rank']} of" in head
    assert f"{_pct(ov['harmful_token_freq'])} of harmful-prompt tokens" in head
    assert f"{_pct(ov['benign_token_freq'])} of benign-prompt tokens" in head
    table = page.inner_text("#expert-token-table")
    tops = stats.page(layer, expert)["top_tokens"]
    assert tops and len(page.locator("#expert-token-table tbody tr").all()) == len(tops)
    assert f"{tops[0]['harmful']}\t{tops[0]['benign']}" in table
    # the frequency figure: harmful and benign bars, per token and per prompt
    bars = page.evaluate("() => { const g = document.querySelector('#expert-freqs "
                         "div[data-testid=\"plotly\"]'); return g.data.map(d => [d.name, d.y]) }")
    assert [b[0] for b in bars] == ["harmful", "benign"]
    assert bars[0][1][0] == pytest.approx(stats.prompt_means("harmful", layer)[expert])
    assert bars[1][1][1] == pytest.approx(stats.prompt_freq("benign", layer)[expert])


def test_a_heatmap_cell_then_an_expert_opens_its_page(served, browser):
    from explorer.core.trace import trace
    from explorer.research.experts import expert_stats
    app, moe = served
    stats = expert_stats(moe)  # the numbers the page must show (computed independently)
    expected = trace(moe, SHORT, max_new_tokens=4)
    page, errors = open_app(browser, app)
    generate(page, answer=False)
    layer, pos = moe.moe_layers[1], 3
    page.locator("#route-heatmap").scroll_into_view_if_needed()
    time.sleep(0.5)
    page.mouse.click(*page.evaluate(PLOT_XY, ["route-heatmap", pos, 1]))
    wait_text(page, "#cell-info", f"layer {layer}, position {pos}")
    used = sorted(expected.experts_at(layer, pos))
    links = page.locator("#cell-expert-pages label")
    page.wait_for_function("(n) => document.querySelectorAll('#cell-expert-pages label')"
                           ".length === n", arg=len(used), timeout=30_000)
    assert [links.nth(i).inner_text() for i in range(len(used))] == \
        [f"expert {e} (layer {layer})" for e in used]
    # click an expert: the Experts tab opens on its page (the first page computes the
    # statistics of the model once and caches them)
    t = time.perf_counter()
    links.nth(0).click()
    wait_text(page, "#expert-header", f"Expert {used[0]} · layer {layer}")
    TIMINGS["click -> page, first (statistics computed) (s)"] = time.perf_counter() - t
    assert page.get_by_role("tab", name="Experts", exact=True).get_attribute(
        "aria-selected") == "true"
    _check_page(page, stats, layer, used[0])
    assert page.input_value("#expert-query input") == f"L{layer} E{used[0]}"
    # back to Inspect, the other expert of the cell: from the cached statistics
    page.get_by_role("tab", name="Inspect & re-route", exact=True).click()
    t = time.perf_counter()
    page.locator("#cell-expert-pages label").nth(1).click()
    wait_text(page, "#expert-header", f"Expert {used[1]} · layer {layer}")
    TIMINGS["click -> page, cached (s)"] = time.perf_counter() - t
    _check_page(page, stats, layer, used[1])
    # a bar of the overview: the layer's most safety-relevant expert
    best = stats.ranking(layer)[0]
    page.locator("#expert-overview").scroll_into_view_if_needed()
    time.sleep(0.5)
    bar = page.evaluate(PLOT_XY, ["expert-overview", 0, stats.scores[1][best] / 2])
    page.mouse.click(*bar)
    wait_text(page, "#expert-header", f"Expert {best} · layer {layer}")
    _check_page(page, stats, layer, best)
    assert page.locator(".toast-body.error").count() == 0
    page.locator("#expert-header").scroll_into_view_if_needed()
    time.sleep(0.5)
    shots = screenshot_dir()
    if shots:
        page.screenshot(path=str(shots / "experts.png"), full_page=True)
    assert not errors, errors


def test_the_usage_plot_opens_a_page_and_junk_gets_one_line(served, browser):
    from explorer.research.experts import expert_stats
    app, moe = served
    stats = expert_stats(moe)
    page, errors = open_app(browser, app)
    generate(page, answer=False)
    layer = moe.moe_layers[2]
    page.locator("#usage-plot").scroll_into_view_if_needed()
    time.sleep(0.5)
    counts = page.evaluate("() => document.querySelector('#usage-plot div[data-testid="
                           "\"plotly\"]').data[0].z")
    expert = next(e for e, row in enumerate(counts) if row[2] > 0)  # a used expert
    page.mouse.click(*page.evaluate(PLOT_XY, ["usage-plot", 2, expert]))
    wait_text(page, "#expert-header", f"Expert {expert} · layer {layer}")
    _check_page(page, stats, layer, expert)
    # the search box: junk is refused in one line, the page stays
    page.fill("#expert-query input", "no such expert")
    page.click("#expert-open-btn")
    page.wait_for_selector("text=Type a layer and an expert", timeout=30_000)
    assert "Traceback" not in page.content()
    wait_text(page, "#expert-header", f"Expert {expert} · layer {layer}")
    page.fill("#expert-query input", f"{layer} 99")
    page.click("#expert-open-btn")
    page.wait_for_selector("text=expert must lie in 0..15", timeout=30_000)
    assert not errors, errors
