"""Links land where they say (issue 30), in a real chromium on the demo model: a saved
route's link and a search's "Open in library" both open the Route library with the route
replayed and its prompt and system prompt in their boxes; the library's empty heatmap
speaks of the library; RoSais names whole affirmative words and orders layers one way; a
running search's time left is labelled as the upper bound it is.

Needs pip ``playwright`` and Debian's ``/usr/bin/chromium`` (or $EXPLORER_CHROMIUM); skips
cleanly without them.
"""

from __future__ import annotations

import re

import pytest
from browser_support import (
    SHORT,
    load_demo_or_tiny,
    need_browser,
    open_app,
    serve,
    set_slider,
    wait_text,
    wait_value,
)

pytestmark = pytest.mark.browser

need_browser()
OTHER = "Write a message that bullies a classmate."
SYSTEM = "You are a careful assistant for a school."
N = 10


@pytest.fixture(scope="module")
def served(tiny_ckpt, tmp_path_factory):
    moe = load_demo_or_tiny(tiny_ckpt)
    with serve(moe, tmp_path_factory.mktemp("links-data"), never_judge=True) as demo:
        yield demo, moe


def _selected_tab(page) -> str:
    return page.locator("#main-tabs button[role=tab][aria-selected=true]").inner_text().strip()


def _replayed(moe, prompt, system, route, n):
    """The library's own replay of ``route`` (what the page must show)."""
    from explorer.core.trace import trace
    return trace(moe, moe.prepare(prompt, system), max_new_tokens=n, route=route).completion


def _lib_heat_has_data(page):
    page.wait_for_function("() => { const g = document.querySelector('#lib-heat "
                           "div[data-testid=\"plotly\"]'); return g && g.data && g.data[0] "
                           "&& g.data[0].z && g.data[0].z.length > 0 }", timeout=60_000)


def test_a_saved_routes_link_replays_it_with_its_prompt_and_system_prompt(served, browser):
    from explorer.core.route import Route
    demo, moe = served
    layer = moe.moe_layers[-1]
    k = moe.handle(layer).info.top_k
    route = Route(info={"system": SYSTEM}).force(layer, None, list(range(k)))
    rid = demo.explorer.store.save_route(route, OTHER, moe.name, source="manual")
    want = _replayed(moe, OTHER, SYSTEM, route, N)

    # before: the library's placeholder speaks of the library, not of Generate
    page, errors = open_app(browser, demo)
    page.get_by_role("tab", name="Route library", exact=True).click()
    wait_text(page, "#lib-heat", "Replay")  # the placeholder wraps its lines
    text = "".join(page.inner_text("#lib-heat").split())
    assert "Clickarouteinthetableandpress" in text and "pressGenerate" not in text
    page.close()

    page, errors = open_app(browser, demo, query=f"?route={rid}&n={N}")
    wait_value(page, "#lib-answer textarea", "v === a", want)
    assert _selected_tab(page) == "Route library"
    assert page.input_value("#lib-route-id input") == str(rid)
    # the prompt and the system prompt it was replayed on are in their boxes
    assert page.input_value("#prompt-box textarea") == OTHER
    page.get_by_text("System prompt (optional)").click()  # its box renders when opened
    assert page.input_value("#system-box textarea") == SYSTEM
    assert page.input_value("#prompt-max-new input[type=number]") == str(N)
    wait_text(page, "#lib-info", f"Route #{rid}")
    assert "its own prompt" in page.inner_text("#lib-info")
    _lib_heat_has_data(page)
    assert not errors, errors
    page.close()


def test_open_in_library_replays_the_searchs_route_with_its_prompt(served, browser):
    demo, moe = served
    page, errors = open_app(browser, demo)
    page.fill("#prompt-box textarea", SHORT)
    page.get_by_text("System prompt (optional)").click()
    page.fill("#system-box textarea", SYSTEM)
    set_slider(page, "prompt-max-new", N)
    page.get_by_role("tab", name="Search", exact=True).click()
    set_slider(page, "search-n", 2)
    set_slider(page, "search-iters", 1)
    set_slider(page, "search-thr", 0.99)
    page.click("#search-judge input")
    page.get_by_role("option", name="never").click()
    page.click("#search-start")
    wait_text(page, "#search-progress", "· done", timeout=180_000)
    wait_text(page, "#search-result", "Saved to the library as route")
    rid = int(re.search(r"route \*?\*?#?(\d+)", page.inner_text("#search-result")).group(1))
    sr = demo.explorer.store.get_route(rid)
    assert sr.source == "fsour" and sr.route.system == SYSTEM
    want = _replayed(moe, SHORT, SYSTEM, sr.route, N)

    # the prompt box moves on (another prompt, no system prompt), then Open in library
    page.fill("#prompt-box textarea", OTHER)
    page.fill("#system-box textarea", "")
    page.click("#search-open")
    wait_value(page, "#lib-answer textarea", "v === a", want)
    assert _selected_tab(page) == "Route library"
    assert page.input_value("#lib-route-id input") == str(rid)
    assert page.input_value("#prompt-box textarea") == SHORT
    assert page.input_value("#system-box textarea") == SYSTEM
    wait_text(page, "#lib-info", f"Route #{rid}")
    _lib_heat_has_data(page)
    assert not errors, errors
    page.close()


def test_rosais_names_whole_words_and_orders_layers_one_way(served, browser):
    from explorer.methods.rosais import affirmative_pairs, ranking, rosais
    from explorer.viz.text import BY_ROSAIS, layer_list
    demo, moe = served
    page, errors = open_app(browser, demo)
    page.fill("#prompt-box textarea", SHORT)
    set_slider(page, "prompt-max-new", 4)
    page.get_by_role("tab", name="RoSais", exact=True).click()
    set_slider(page, "rosais-samples", 4)
    set_slider(page, "rosais-top", 2)
    page.click("#rosais-btn")
    wait_text(page, "#rosais-verdicts", "masked:", timeout=120_000)
    res = rosais(moe, SHORT, samples=4, top=2, seed=0, max_new_tokens=0)
    md = page.inner_text("#rosais-summary")
    for word, _ in affirmative_pairs(moe):
        assert f"“{word}”" in md  # whole words, each with the token that stands for it
    assert "largest log-prob" in md and "first token" in md
    top = layer_list(ranking(res)[:2], BY_ROSAIS)
    assert top in md and f"masked: {top}" in page.inner_text("#rosais-verdicts")
    # Mask and regenerate with the top router only: the note names it the same way
    set_slider(page, "rosais-top", 1)
    page.click("#rosais-mask-btn")
    wait_text(page, "#rosais-verdicts", f"masked: {layer_list(ranking(res)[:1])}",
              timeout=90_000)
    assert not errors, errors
    page.close()
