"""Issue 30, layout: plot labels clear of titles, a 390 px phone, presenter mode, the
selection hint and Utility cost's inputs, in a real chromium on the demo model.

One app launch for the module. Screenshots go to a temporary folder, or to
``$EXPLORER_SCREENSHOTS`` (e.g. ``docs/screenshots``) when set.
"""

from __future__ import annotations

import pytest
from browser_support import generate, need_browser, open_app, serve, shot
from conftest import evaluate_own_prompts

pytestmark = pytest.mark.browser

need_browser()

#: Every visible plot: its block, label badge, plotly box and title text boxes.
PLOTS = """() => [...document.querySelectorAll('div[data-testid="plotly"]')]
  .filter(g => g.offsetParent).map(g => {
    const blk = g.closest('.block');
    const lab = blk.querySelector(':scope > label[data-testid="block-label"]');
    const box = (e) => { if (!e) return null; const r = e.getBoundingClientRect();
                         return {l: r.left, r: r.right, t: r.top, b: r.bottom, w: r.width}; };
    const leg = g.querySelector('.legend'), xt = g.querySelector('.xtitle');
    return {id: blk.id || (lab ? lab.innerText.trim() : '?'), block: box(blk), label: box(lab),
            plot: box(g), title: box(g.querySelector('.gtitle')),
            svg: box(g.querySelector('svg.main-svg')), legend: box(leg), xtitle: box(xt)};
  })"""


def _overlap(a, b) -> bool:
    return bool(a and b) and not (a["r"] <= b["l"] or b["r"] <= a["l"] or a["b"] <= b["t"]
                                  or b["b"] <= a["t"])


def _inside(a, outer) -> bool:
    return a["l"] >= outer["l"] - 1 and a["r"] <= outer["r"] + 1 and a["w"] > 0


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from explorer import DEMO_MODEL_DIR, load_model
    if not (DEMO_MODEL_DIR / "model.safetensors").exists():
        pytest.skip("the demo model is not built")
    moe = load_model(str(DEMO_MODEL_DIR), device="cpu")
    with serve(moe, tmp_path_factory.mktemp("layout-data")) as demo:
        yield demo


def _generate(page):
    """Generate from the prompt box (it opens the Inspect tab, at 390 px too, where tabs
    fold), then wait for plotly's relayout after the new figure."""
    generate(page, open_inspect=False, blur=False, answer=False)
    page.wait_for_timeout(500)


def _settled_plots(page, timeout_ms: int = 8000) -> list:
    """The tab's plots once their number has stayed the same twice, 300 ms apart (a busy
    machine renders a freshly opened tab's figures late)."""
    last, plots, waited = None, page.evaluate(PLOTS), 0
    while waited < timeout_ms:
        page.wait_for_timeout(300)
        waited += 300
        last, plots = len(plots), page.evaluate(PLOTS)
        if len(plots) == last and all(p["label"] is not None for p in plots):
            break
    return plots


def _labels_clear(page, where: str) -> int:
    plots = _settled_plots(page)
    for p in plots:
        assert p["label"] is not None, (where, p["id"])
        # the badge sits above the figure: it covers neither the title nor the plot
        assert not _overlap(p["label"], p["title"]), (where, p["id"], p["label"], p["title"])
        assert p["label"]["b"] <= p["plot"]["t"] + 1, (where, p["id"])
    return len(plots)


def test_no_plot_label_covers_a_title_on_any_tab(served, browser):
    page, errors = open_app(browser, served)
    seen = _labels_clear(page, "Tour")
    _generate(page)
    titled = [p for p in page.evaluate(PLOTS) if p["title"]]
    assert {p["id"] for p in titled} >= {"route-heatmap", "usage-plot"}
    seen += _labels_clear(page, "Inspect")
    for tab in ("RoSais", "Search", "Route library", "Research"):
        page.get_by_role("tab", name=tab, exact=True).click()
        page.wait_for_timeout(300)
        seen += _labels_clear(page, tab)
    for sub in ("Utility cost", "Transfer", "Minimal route", "Defense", "RoSais uncertainty"):
        page.get_by_role("tab", name=sub, exact=True).click()
        page.wait_for_timeout(300)
        seen += _labels_clear(page, sub)
    assert seen >= 15  # every gr.Plot of the app was looked at
    assert not errors, errors


def test_a_phone_shows_the_whole_heatmap_with_its_legend_and_axis_title(served, browser,
                                                                      shots):
    page, errors = open_app(browser, served, width=390)
    tabs_top = page.evaluate("() => document.querySelector('#main-tabs')"
                             ".getBoundingClientRect().top + scrollY")
    assert tabs_top < 800  # the prompt block no longer pushes the tabs ~1,050 px down
    for p in page.evaluate(PLOTS):  # the Tour's placeholders
        assert p["svg"]["w"] <= p["block"]["w"] + 1, p["id"]
    _generate(page)
    plots = {p["id"]: p for p in page.evaluate(PLOTS)}
    heat = plots["route-heatmap"]
    for p in plots.values():
        assert p["svg"]["w"] <= p["block"]["w"] + 1, (p["id"], p["svg"], p["block"])
    assert heat["legend"] and _inside(heat["legend"], heat["block"])
    assert heat["xtitle"] and _inside(heat["xtitle"], heat["block"])
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    # token labels: only ones that do not overlap are shown
    xs = page.evaluate("""() => [...document.querySelectorAll('#route-heatmap .xtick text')]
        .filter(t => t.style.visibility !== 'hidden')
        .map(t => t.getBoundingClientRect().right)""")
    assert len(xs) >= 3 and all(b - a >= 12 for a, b in zip(xs, xs[1:])), xs
    shot(page, shots / "phone-inspect.png")
    assert not errors, errors


def test_presenter_mode_enlarges_type_and_folds_the_prompt_block(served, browser, shots):
    size = ("() => parseFloat(getComputedStyle(document.querySelector("
            "'#tour-intro p')).fontSize)")
    page, errors = open_app(browser, served)
    before = page.evaluate(size)
    assert page.is_visible("#prompt-box textarea")
    page.locator("#presenter-toggle input[type=checkbox]").check()
    page.wait_for_function("() => document.body.classList.contains('sse-present')")
    page.wait_for_selector("#prompt-box textarea", state="hidden")
    assert page.evaluate(size) >= 1.3 * before
    page.locator("#presenter-toggle input[type=checkbox]").uncheck()
    page.wait_for_selector("#prompt-box textarea", state="visible")
    assert page.evaluate(size) == before
    page.close()
    # the address can ask for it; a malformed value is refused with one line
    page, errors = open_app(browser, served, query="?present=1")
    page.wait_for_function("() => document.body.classList.contains('sse-present')")
    page.wait_for_selector("#prompt-box textarea", state="hidden")
    assert page.evaluate(size) >= 1.3 * before
    page.wait_for_timeout(500)
    shot(page, shots / "presenter.png")
    assert not errors, errors
    bad, _ = open_app(browser, served, query="?present=yes")
    bad.wait_for_selector(".toast-body")
    assert "presenter mode must be 0 or 1" in bad.inner_text(".toast-body")
    assert not bad.evaluate("() => document.body.classList.contains('sse-present')")


def test_the_selection_hint_follows_a_typed_cell(served, browser):
    page, errors = open_app(browser, served)
    _generate(page)
    moe = served.explorer.moe
    hint = "#heatmap-bridge .sse-bridge-msg"
    for layer, pos in ((moe.moe_layers[0], 1), (moe.moe_layers[-1], 3)):
        page.fill("#sel-layer input", str(layer))
        page.fill("#sel-pos input", str(pos))
        page.click("#select-btn")
        page.wait_for_function(
            "([s, t]) => document.querySelector(s).innerText.includes(t)",
            arg=[hint, f"Selected layer {layer}, position {pos}"], timeout=30_000)
    assert not errors, errors


def test_utility_cost_shows_route_inputs_only_for_library_routes(served, browser):
    from explorer.app.tabs.research.common import ROUTE_SOURCE
    page, errors = open_app(browser, served)
    page.get_by_role("tab", name="Research", exact=True).click()
    page.get_by_role("tab", name="Utility cost", exact=True).click()
    page.wait_for_selector("#utility-rosais-prompt textarea", state="visible")
    assert not page.is_visible("#utility-ids textarea")
    assert not page.is_visible("#utility-json textarea")
    page.locator("#utility-source").get_by_label(ROUTE_SOURCE).check()
    page.wait_for_selector("#utility-ids textarea", state="visible")
    page.wait_for_selector("#utility-rosais-prompt textarea", state="hidden")
    assert page.is_visible("#utility-json textarea")
    assert not errors, errors


def _plot_ready(page, elem_id: str, timeout=90_000):
    page.wait_for_function(
        "(id) => { const g = document.querySelector(`#${id} div[data-testid=\"plotly\"]`); "
        "return g && g.data && g.data.length && g.layout && g.layout.title && "
        "g.layout.title.text }", arg=elem_id, timeout=timeout)


def test_the_new_views_keep_titles_clear_and_fit_a_phone(served, browser, demo, tmp_path):
    """Why it flips, the expert page and the Results tab, with their figures drawn: at
    1400 px no label covers a title; narrowed to 390 px, no plot is wider than its block
    and the page does not scroll sideways."""
    (none,) = evaluate_own_prompts(demo, tmp_path, max_new_tokens=6, methods=("none",))

    page, errors = open_app(browser, served)
    _generate(page)
    page.click("#why-flips button")  # open the accordion
    page.click("#why-btn")
    _plot_ready(page, "why-lens")
    views = {"Why it flips": ["why-lens"], "Experts": ["expert-overview", "expert-freqs"],
             "Results": ["results-categories"]}
    page.get_by_role("tab", name="Experts", exact=True).click()
    page.fill("#expert-query input", f"L{demo.moe_layers[1]} E3")
    page.click("#expert-open-btn")
    for plot in views["Experts"]:
        _plot_ready(page, plot)
    page.get_by_role("tab", name="Results", exact=True).click()
    page.set_input_files("#results-file-a input[type=file]", str(none))
    _plot_ready(page, "results-categories")
    for tab, ids in (("Inspect & re-route", views["Why it flips"]),
                     ("Experts", views["Experts"]), ("Results", views["Results"])):
        page.get_by_role("tab", name=tab, exact=True).click()
        page.wait_for_timeout(500)
        _labels_clear(page, tab)
        titled = {p["id"] for p in page.evaluate(PLOTS) if p["title"]}
        assert set(ids) <= titled, (tab, ids, titled)
    for tab, ids in (("Results", views["Results"]), ("Experts", views["Experts"]),
                     ("Inspect & re-route", views["Why it flips"])):
        # the tab is chosen wide (at 390 px tabs fold into a menu), then the window narrows
        page.set_viewport_size({"width": 1400, "height": 1000})
        page.get_by_role("tab", name=tab, exact=True).click()
        page.wait_for_timeout(500)
        page.set_viewport_size({"width": 390, "height": 1000})
        page.wait_for_timeout(1200)  # plotly follows the window's resize
        plots = {p["id"]: p for p in page.evaluate(PLOTS)}
        for plot in ids:
            p = plots[plot]
            assert p["svg"]["w"] <= p["block"]["w"] + 1, (tab, plot, p["svg"], p["block"])
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390, tab
    assert not errors, errors
