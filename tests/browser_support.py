"""What the browser tests (``test_browser*.py``) share: chromium and how it starts, the app
served on a local port, opening its page, waiting for text and values, sliders, Generate,
screenshots.

It imports neither playwright nor the app at load time, so that a test module can call
:func:`need_browser` first and skip cleanly without them. The ``browser`` and ``shots``
fixtures live in ``conftest.py`` (built on :func:`chromium` and :func:`screenshot_dir`).
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

#: Debian's chromium, or the binary in $EXPLORER_CHROMIUM (no ``playwright install``).
CHROMIUM = os.environ.get("EXPLORER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--disable-dev-shm-usage"]
SHORT = "Steal a car."  # few tokens: generation and a search over its positions stay quick
#: True once Inspect's heatmap holds a figure with data.
HEAT_READY = ("() => { const g = document.querySelector('#route-heatmap div[data-testid="
              "\"plotly\"]'); return g && g.data && g.data[0] && g.data[0].z }")
#: The page coordinates of data point ``(x, y)`` in the plot of block ``id``.
PLOT_XY = """([id, x, y]) => {
  const gd = document.querySelector('#' + id + ' div[data-testid="plotly"]');
  const fl = gd._fullLayout, r = gd.getBoundingClientRect();
  return [r.left + fl._size.l + fl.xaxis.d2p(x), r.top + fl._size.t + fl.yaxis.d2p(y)];
}"""


def need_browser():
    """playwright's sync API; call it at a test module's top: without pip ``playwright`` or
    without chromium the whole module skips."""
    api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed", allow_module_level=True)
    return api


@contextmanager
def chromium():
    """A headless chromium launched through playwright, closed on leaving."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def screenshot_dir() -> Path | None:
    """``$EXPLORER_SCREENSHOTS`` (e.g. ``docs/screenshots``) as a folder, made if missing;
    None when it is not set."""
    d = os.environ.get("EXPLORER_SCREENSHOTS")
    if not d:
        return None
    out = Path(d)
    out.mkdir(parents=True, exist_ok=True)
    return out


def load_demo_or_tiny(tiny_ckpt):
    """The demo model when its weights are built, else the tiny checkpoint, on the CPU."""
    from explorer import DEMO_MODEL_DIR, load_model
    path = DEMO_MODEL_DIR if (DEMO_MODEL_DIR / "model.safetensors").exists() else tiny_ckpt
    return load_model(str(path), device="cpu")


@contextmanager
def serve(moe, data_dir, never_judge: bool = False):
    """The app on ``moe`` (its data in ``data_dir``) launched on a local port in a thread;
    its jobs shut down and the app closed on leaving. ``never_judge`` registers the tests'
    ``NeverJudge`` as judge "never" meanwhile (a search that runs until it is stopped)."""
    from explorer.app.build import build_app, launch_options
    from explorer.judges import JUDGES, NeverJudge
    if never_judge:
        JUDGES["never"] = NeverJudge
    app = build_app(moe, data_dir=data_dir)
    app.queue().launch(prevent_thread_lock=True, ssr_mode=False, quiet=True,
                       **launch_options(app))
    try:
        yield app
    finally:
        app.explorer.jobs.shutdown(wait=True, timeout=30)
        app.close()
        if never_judge:
            JUDGES.pop("never", None)


def open_app(browser, app, width=1400, query="", loaded=True):
    """A new page of ``app`` (``query`` after its address, e.g. ``"?route=3"``), ``width``
    px wide, once Generate is there; with ``loaded``, also once the page load has filled the
    header. Returns the page and the list its page errors go to."""
    page = browser.new_page(viewport={"width": width, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(app.local_url + query)
    page.wait_for_selector("#generate-btn")
    if loaded:
        page.wait_for_function("() => /^(Model|No model)/.test(document.querySelector("
                               "'#sse-header').innerText.trim())")  # demo.load has finished
    return page, errors


def wait_text(page, sel, text, timeout=90_000):
    """Wait until the element ``sel`` shows ``text``."""
    page.wait_for_function(
        "([s, t]) => { const e = document.querySelector(s); return e && e.innerText.includes(t) }",
        arg=[sel, text], timeout=timeout)


def wait_value(page, sel, pred="v && v.length > 0", arg=None, timeout=90_000):
    """Wait until the JavaScript ``pred`` holds of the value ``v`` of the input ``sel``
    (null while there is none) and of ``a``, the JSON value ``arg`` (e.g. ``"v === a"``
    with the text to wait for as ``arg``); by default, until it is not empty."""
    page.wait_for_function(
        f"([s, a]) => {{ const t = document.querySelector(s); const v = t ? t.value : null; "
        f"return {pred}; }}", arg=[sel, arg], timeout=timeout)


def set_slider(page, elem_id, value, blur=True):
    """Type ``value`` into the number box of slider ``elem_id`` and press Enter; with
    ``blur``, leave the box too (the slider takes a typed value on Enter or on leaving)."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    if blur:
        box.blur()


def generate(page, prompt=SHORT, new=4, open_inspect=True, blur=True, answer=True):
    """Generate ``new`` tokens for ``prompt`` and wait for the heatmap: with
    ``open_inspect``, from the Inspect tab (else Generate opens it, also at 390 px where the
    tabs fold into a menu); ``blur`` as for :func:`set_slider`; with ``answer``, also wait
    for the baseline answer's box."""
    if open_inspect:
        page.get_by_role("tab", name="Inspect & re-route", exact=True).click()
    page.fill("#prompt-box textarea", prompt)
    set_slider(page, "prompt-max-new", new, blur=blur)
    page.click("#generate-btn")
    page.wait_for_function(HEAT_READY, timeout=90_000)
    if answer:
        wait_value(page, "#baseline-answer textarea", "v !== null")


def shot(page, path, sel=None, restore_toasts=True):
    """A screenshot without the transient toast messages: of the full page, or of the
    element ``sel``; with ``restore_toasts`` the toasts show again afterwards."""
    page.evaluate("() => document.querySelectorAll('.toast-wrap').forEach(e => "
                  "e.style.visibility = 'hidden')")
    if sel:
        page.locator(sel).screenshot(path=str(path))
    else:
        page.screenshot(path=str(path), full_page=True)
    if restore_toasts:
        page.evaluate("() => document.querySelectorAll('.toast-wrap').forEach(e => "
                      "e.style.visibility = '')")
