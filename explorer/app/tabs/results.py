"""The "Results" tab: open an ``evaluate`` result file (JSONL), or run an evaluation of the
project's own prompts as a background job (:data:`explorer.storage.jobs.EVALUATE_JOB`);
see its method table (ASR with k/n), per-category bars (JailbreakBench rows have
categories) and one line per row with its verdict; click a row to open its prompt and
route in Inspect (the route's edits pending and re-run); open a second file to compare
both side by side.

The summaries are library functions (:mod:`explorer.evaluation.results`), the figures
:mod:`explorer.viz.results`. An uploaded file is bounded before it is read (and, hosted,
admitted at the HTTP edge like every upload); it stays in the visitor's session.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from explorer.app.errors import fail
from explorer.app.format import edits_box
from explorer.app.gate import Door, Event, Visit
from explorer.app.state import InspectState, ResultsState, Shared
from explorer.attacks import list_attacks
from explorer.core.prompt_sets import HARMFUL_PROMPTS
from explorer.core.route import Route
from explorer.evaluation.results import (
    category_table,
    compare_results,
    load_results,
    method_table,
    row_table,
)
from explorer.storage.jobs import EVALUATE_SETS
from explorer.viz.figures import empty_figure
from explorer.viz.results import category_bars
from explorer.viz.text import pct

METHOD_COLUMNS = ["file", "method", "judge", "ASR", "k/n", "refusals", "passes/row",
                  "s/row", "errors"]
ROW_COLUMNS = ["file", "index", "method", "category", "verdict", "edits", "goal"]
DIFF_COLUMNS = ["index", "goal", "A method", "A verdict", "B method", "B verdict"]
NO_GRID = "No grid open."
INTRO = ("Open a result file of `explorer evaluate --out FILE.jsonl` (and a second one to "
         "compare). **Click a row** to open its prompt and route in Inspect and re-run it.")


@dataclass
class ResultsUI:
    """The tab's components."""

    file_a: Any
    file_b: Any
    summary: Any
    methods: Any
    categories: Any
    rows: Any
    differ: Any
    state: Any
    ev_set: Any = None
    ev_count: Any = None
    ev_method: Any = None
    ev_start: Any = None
    ev_stop: Any = None
    ev_status: Any = None
    timer: Any = None
    grid_file: Any = None
    grid_view: Any = None

    def open_outputs(self) -> list:
        """What opening files writes (see :func:`open_files`)."""
        return [self.state, self.summary, self.methods, self.categories, self.rows,
                self.differ]


def layout() -> ResultsUI:
    """The tab (inside an open ``gr.Tabs``)."""
    with gr.Tab("Results", id="results"):
        gr.Markdown(INTRO)
        with gr.Row():
            file_a = gr.File(label="A: evaluate results (.jsonl)", file_types=[".jsonl"],
                             type="filepath", elem_id="results-file-a")
            file_b = gr.File(label="B (optional): compare with", file_types=[".jsonl"],
                             type="filepath", elem_id="results-file-b")
        with gr.Accordion("…or run an evaluation in the background (the project's own "
                          "prompts)", open=False, elem_id="results-run"):
            with gr.Row():
                ev_set = gr.Radio(list(EVALUATE_SETS), value="harmful", label="prompts",
                                  elem_id="results-run-set")
                ev_count = gr.Slider(1, len(HARMFUL_PROMPTS), value=4, step=1,
                                     label="how many (the first N)", elem_id="results-run-n")
                ev_method = gr.Dropdown(list(list_attacks("evaluate")), value="none",
                                        label="method (default parameters)",
                                        elem_id="results-run-method")
            with gr.Row():
                ev_start = gr.Button("Start evaluation", variant="primary",
                                     elem_id="results-run-start")
                ev_stop = gr.Button("Stop", elem_id="results-run-stop")
            ev_status = gr.Markdown("", elem_id="results-run-status")
            timer = gr.Timer(1.0, active=False)
        with gr.Accordion("…or open an attacks x defenses grid (grid.json of `explorer grid`)",
                          open=False, elem_id="results-grid-open"):
            grid_file = gr.File(label="grid.json", file_types=[".json"], type="filepath",
                                elem_id="results-grid-file")
            grid_view = gr.Markdown(NO_GRID, elem_id="results-grid")
        summary = gr.Markdown("No result file open.", elem_id="results-summary")
        methods = gr.Dataframe(pd.DataFrame(columns=METHOD_COLUMNS), label="Methods",
                               interactive=False, elem_id="results-methods",
                               elem_classes="sse-table")
        categories = gr.Plot(empty_figure("Per-category ASR appears here"),
                             label="ASR per category", elem_id="results-categories")
        rows = gr.Dataframe(pd.DataFrame(columns=ROW_COLUMNS),
                            label="Rows (click one to open it in Inspect)",
                            interactive=False, max_height=420, elem_id="results-rows",
                            elem_classes="sse-table")
        differ = gr.Dataframe(pd.DataFrame(columns=DIFF_COLUMNS),
                              label="Rows whose verdict differs between A and B",
                              interactive=False, max_height=300, elem_id="results-differ",
                              elem_classes="sse-table")
        state = gr.State(ResultsState())
    return ResultsUI(file_a, file_b, summary, methods, categories, rows, differ, state,
                     ev_set, ev_count, ev_method, ev_start, ev_stop, ev_status, timer,
                     grid_file, grid_view)


# -- views ------------------------------------------------------------------------------------
def methods_frame(rs: ResultsState) -> pd.DataFrame:
    """The method table of every open file."""
    out = []
    for label, f in rs.files():
        for m in method_table(f.rows):
            out.append([label, m["method"], m["judge"], pct(m["asr"], 1),
                        f"{m['jailbroken']}/{m['n']}", m["refusals"],
                        round(m["mean_forward_passes"], 1), round(m["mean_seconds"], 2),
                        m["errors"]])
    return pd.DataFrame(out, columns=METHOD_COLUMNS)


def rows_frame(rs: ResultsState) -> pd.DataFrame:
    """One line per row of every open file."""
    out = []
    for label, f in rs.files():
        for r in row_table(f.rows):
            goal = r["goal"] if len(r["goal"]) <= 90 else r["goal"][:89] + "…"
            out.append([label, r["index"], r["method"], r["category"], r["verdict"],
                        r["edits"], goal])
    return pd.DataFrame(out, columns=ROW_COLUMNS)


def _summary(rs: ResultsState) -> str:
    parts = []
    for label, f in rs.files():
        parts.append(f"**{label}** `{f.name}`: {len(f.rows)} rows, methods "
                     f"{', '.join(f.methods)}")
    return "  \n".join(parts) or "No result file open."


def _opened(path, label: str):
    if not path:
        return None
    return load_results(path, Path(str(path)).name)


def open_files(visit: Visit, path_a, path_b, rs: ResultsState | None = None):
    """Open result file A (and B): (state, summary, method table, category bars, rows,
    rows whose verdict differs). Each file is refused before it is read when too large,
    and with one line when it is not an evaluate result file."""
    a, b = _opened(path_a, "A"), _opened(path_b, "B")
    if a is None and b is not None:
        a, b = b, None
    return shown(ResultsState(a, b, job=rs.job if rs is not None else None))


def open_grid(visit: Visit, path) -> str:
    """The table of a grid file (``grid.json`` of ``explorer grid``): ASR per attack and
    defense, the attacks' costs and the defenses' utility, with the command that made it;
    refused before it is read when too large, and with one line when it is not a grid."""
    from explorer.bench.grid import load_grid
    if not path:
        return NO_GRID
    return load_grid(path).markdown()


def shown(rs: ResultsState):
    """What the tab shows of the open files ``rs``: (state, summary, method table,
    category bars, rows, rows whose verdict differs)."""
    a, b = rs.a, rs.b
    rows = [r for _, f in rs.files() for r in f.rows]
    if a is not None and b is not None:  # the method names say which file a bar is from
        rows = ([dict(r, method=f"A {r['method']}") for r in a.rows]
                + [dict(r, method=f"B {r['method']}") for r in b.rows])
    cats = category_table(rows)
    differ = pd.DataFrame(columns=DIFF_COLUMNS)
    summary = _summary(rs)
    if a is not None and b is not None:
        cmp = compare_results(a, b)
        differ = pd.DataFrame([[d["index"], d["goal"], d["method_a"], d["verdict_a"],
                                d["method_b"], d["verdict_b"]] for d in cmp.differ],
                              columns=DIFF_COLUMNS)
        summary += (f"  \n{cmp.matched} rows in both; verdicts differ on "
                    f"{len(cmp.differ)}.")
    return (rs, summary, methods_frame(rs), category_bars(cats), rows_frame(rs), differ)


def picked_row(rs: ResultsState, values: Any) -> dict:
    """The result row a clicked table line (its ``values``: file, index, method, ...)
    stands for."""
    try:
        label, index, method = str(values[0]), int(values[1]), str(values[2])
    except (TypeError, ValueError, IndexError):
        fail("Click a row of the table (not its header).")
    f = dict(rs.files()).get(label)
    row = None if f is None else next(
        (r for r in f.rows if r["index"] == index and r["method"] == method), None)
    if row is None:
        fail("That row is no longer open: open the result file again.")
    return row


def open_row(visit: Visit, rs: ResultsState, max_new_v, st: InspectState,
             evt: gr.SelectData):
    """A clicked row in Inspect: its prompt (and system prompt) in the boxes, its route's
    edits pending, then re-run beside the baseline (a row without a route: the baseline
    generated). Outputs: prompt, system prompt, tabs, Inspect's edits list, then
    :meth:`~explorer.app.tabs.inspect.InspectUI.rerun_outputs`."""
    from explorer.app.tabs.inspect import on_generate, on_rerun
    rs = rs or ResultsState()
    values = getattr(evt, "row_value", None)
    row = picked_row(rs, values)
    route = Route.from_dict(row["route"]) if isinstance(row.get("route"), dict) \
        else Route()
    prompt = visit.prompt(row["goal"], row.get("system"))
    if route.edits:
        visit.route(route, prompt)
    st = (st or InspectState()).with_(route=route, alt=None, selected=None)
    skip = gr.skip()
    yield (prompt.text, prompt.system or "", gr.Tabs(selected="inspect"),
           edits_box(st.edit_dicts(), visit.app.host.token_strings(prompt)),
           skip, skip, skip, skip, st, skip, skip, skip)
    head = (skip,) * 4
    if route.edits:
        for out in on_rerun(visit, prompt.text, prompt.system, max_new_v, st):
            yield head + tuple(out)
    else:
        for out in on_generate(visit, prompt.text, prompt.system, max_new_v, "expert", st):
            out = tuple(out)
            yield head + (out[1], out[0]) + out[2:]  # Re-run's order: re-routed first


def start_evaluation(visit: Visit, set_v, count_v, method_v, max_new_v,
                     rs: ResultsState, b=None):
    """Queue an evaluate job (this browser's): (state, its status line, the timer)."""
    from explorer.app.inputs import whole_number
    from explorer.app.searches import check_evaluation
    from explorer.app.tabs.search import owner_of
    from explorer.storage.jobs import EVALUATE_JOB
    rs = rs or ResultsState()
    params = check_evaluation(visit, {
        "method": method_v, "prompts": set_v, "count": whole_number(count_v, "prompts", 1),
        "max_new_tokens": max_new_v})
    jobs = visit.app.host.require_jobs()
    job = jobs.submit(EVALUATE_JOB, params, session=owner_of(visit.app, b), checked=True,
                      group=visit.address if visit.policy.enabled else None)
    line = (f"Queued: {params['method']} on the first {params['count']} "
            f"{params['prompts']} prompts…")
    return ResultsState(rs.a, rs.b, job=job), line, gr.Timer(active=True)


def _progress_line(st: dict) -> str:
    p = st.get("progress") or {}
    frac = p.get("fraction")
    done = f" · {pct(frac)}" if isinstance(frac, (int, float)) else ""
    eta = p.get("eta_seconds")
    left = f" · about {eta:.0f} s left" if isinstance(eta, (int, float)) and eta > 0 else ""
    return f"Evaluation **{st['status']}**{done}{left}"


def poll_evaluation(visit: Visit, rs: ResultsState, b=None):
    """The evaluate job's status; when it has finished (or stopped), its rows as file A.
    Outputs: what opening files writes, the status line, the timer."""
    from explorer.app.searches import status
    from explorer.app.tabs.search import owner_of
    from explorer.evaluation.results import ResultFile
    rs = rs or ResultsState()
    skip = gr.skip()
    if rs.job is None:
        return (skip,) * 7 + (gr.Timer(active=False),)
    try:
        st = status(visit.app, rs.job, owner_of(visit.app, b))
    except Exception:  # noqa: BLE001 - gone (a cleared store) or not this browser's
        gone = "That evaluation is not there any more."
        return (ResultsState(rs.a, rs.b), *(skip,) * 5, gone, gr.Timer(active=False))
    line = _progress_line(st)
    if st["status"] in ("queued", "running"):
        return (skip,) * 6 + (line, skip)
    res = st.get("result") or {}
    rows = res.get("rows") or []
    if st.get("error"):
        line += f": {html.escape(str(st['error']))}"
    if not rows:
        return (ResultsState(rs.a, rs.b), *(skip,) * 5, line, gr.Timer(active=False))
    name = f"evaluation: {res.get('method')} on {len(rows)} {res.get('prompts')} prompts"
    out = shown(ResultsState(ResultFile(rows, {"name": name, "job": rs.job}), rs.b))
    return (*out, line + f" · {len(rows)} rows shown as A", gr.Timer(active=False))


def stop_evaluation(visit: Visit, rs: ResultsState, b=None):
    """Stop the evaluate job (the rows done so far are kept and shown): its status line."""
    from explorer.app.searches import cancel
    from explorer.app.tabs.search import owner_of
    rs = rs or ResultsState()
    if rs.job is None:
        fail("There is no evaluation running.")
    return _progress_line(cancel(visit.app, rs.job, owner_of(visit.app, b)))


def events(ui: ResultsUI, shared: Shared, inspect) -> list[Event]:
    """The tab's events; ``inspect``: the Inspect tab's components (a row click fills
    them)."""
    opened = [Event(f.change, open_files, [ui.file_a, ui.file_b, ui.state],
                    ui.open_outputs(), Door("Open results")) for f in (ui.file_a, ui.file_b)]
    who = [shared.browser]
    return opened + [
        Event(ui.grid_file.change, open_grid, [ui.grid_file], [ui.grid_view],
              Door("Open a grid")),
        Event(ui.ev_start.click, start_evaluation,
              [ui.ev_set, ui.ev_count, ui.ev_method, shared.max_new, ui.state] + who,
              [ui.state, ui.ev_status, ui.timer], Door("Start evaluation", "job")),
        Event(ui.timer.tick, poll_evaluation, [ui.state] + who,
              ui.open_outputs() + [ui.ev_status, ui.timer], Door("Evaluation status", "poll"),
              {"show_progress": "hidden"}),
        Event(ui.ev_stop.click, stop_evaluation, [ui.state] + who, [ui.ev_status],
              Door("Stop evaluation")),
        Event(ui.rows.select, open_row, [ui.state, shared.max_new, inspect.state],
              [shared.prompt, shared.system, shared.tabs, inspect.edit_list]
              + inspect.rerun_outputs(),
              Door("Open a result row", "model", gpu=120)),
    ]
