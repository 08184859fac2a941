"""Issue 30: the Results tab (evaluate result files: method table, category bars, rows,
comparison, a row opened in Inspect) and "why it flips" (top next-token probabilities and
the logit lens), on result files made by actually running ``evaluate`` on the demo model
over a few of the project's own prompts."""

from __future__ import annotations

import types

import pytest
import torch
from conftest import OWN_CATEGORIES, evaluate_own_prompts

from explorer.core.lens import LogitLens, NextTokens, logit_lens, next_tokens
from explorer.core.prompt_sets import HARMFUL_PROMPTS
from explorer.core.route import Route
from explorer.evaluation.results import (
    MAX_RESULTS_BYTES,
    Comparison,
    ResultFile,
    category_table,
    compare_results,
    load_results,
    method_table,
    row_table,
    verdict_of,
)
from explorer.viz.results import category_bars, lens_heatmap


@pytest.fixture(scope="module")
def runs(demo, tmp_path_factory):
    """Two evaluate result files on the demo model: no attack and F-SOUR, three rows each
    from a CSV with a category column."""
    return evaluate_own_prompts(demo, tmp_path_factory.mktemp("results"), max_new_tokens=8)


# -- the library ------------------------------------------------------------------------------
def test_summary_of_a_real_evaluate_run(runs):
    none, fsour = (load_results(p) for p in runs)
    assert [r["category"] for r in none.rows] == list(OWN_CATEGORIES)  # rows record it
    for f, method in ((none, "none"), (fsour, "fsour")):
        (m,) = method_table(f.rows)
        k = sum(r["jailbroken"] for r in f.rows)
        assert (m["method"], m["n"], m["jailbroken"]) == (method, 3, k)
        assert m["asr"] == pytest.approx(k / 3)
        assert m["refusals"] == sum(r["refusal"] for r in f.rows)
        assert m["judge"] == "keyword"
    table = row_table(fsour.rows)
    by_index = sorted(fsour.rows, key=lambda r: r["index"])
    assert [r["index"] for r in table] == [0, 1, 2]
    assert [r["edits"] for r in table] == [len(r["route"]["edits"]) for r in by_index]
    assert all(r["edits"] > 0 for r in table)  # F-SOUR rows carry their routes
    assert [r["verdict"] for r in table] == [verdict_of(r) for r in by_index]
    assert ResultFile.from_json(fsour.to_json()) == fsour


def test_category_table_and_bars(runs):
    none, fsour = (load_results(p) for p in runs)
    table = category_table(none.rows + fsour.rows)
    assert [(r["method"], r["category"]) for r in table] == \
        [(m, c) for m in ("none", "fsour") for c in sorted(OWN_CATEGORIES)]
    for r in table:
        src = next(x for x in none.rows + fsour.rows
                   if x["method"] == r["method"] and x["category"] == r["category"])
        assert (r["n"], r["jailbroken"]) == (1, int(src["jailbroken"]))
    fig = category_bars(table)
    assert [t.name for t in fig.data] == ["none", "fsour"]
    assert list(fig.data[1].x) == sorted(OWN_CATEGORIES)
    assert all(t.endswith("/1") for t in fig.data[1].text)
    # rows without categories: no table, a figure that says so
    bare = [{k: v for k, v in r.items() if k != "category"} for r in none.rows]
    assert category_table(bare) == []
    assert "No categories" in category_bars([]).layout.annotations[0].text


def test_compare_two_files(runs):
    none, fsour = (load_results(p) for p in runs)
    cmp = compare_results(none, fsour)
    assert cmp.matched == 3
    vb = {s["index"]: verdict_of(s) for s in fsour.rows}
    want = [r["index"] for r in none.rows if verdict_of(r) != vb[r["index"]]]
    assert [d["index"] for d in cmp.differ] == want
    assert {d["method_a"] for d in cmp.differ} <= {"none"}
    assert [m["method"] for m in cmp.a] == ["none"] and [m["method"] for m in cmp.b] == ["fsour"]
    assert Comparison.from_json(cmp.to_json()) == cmp
    same = compare_results(fsour, fsour)
    assert (same.matched, same.differ) == (3, [])


# -- why it flips --------------------------------------------------------------------------------
def test_logit_lens_last_layer_is_the_models_own_distribution(demo, runs):
    fsour = load_results(runs[1])
    row = fsour.rows[0]
    route = Route.from_dict(row["route"])
    ids = demo.encode(row["goal"])
    for r in (None, route):
        lens = logit_lens(demo, ids, -1, r)
        assert lens.layers == list(range(len(demo.model.model.layers)))
        with torch.inference_mode(), demo.control(r):
            logits = demo.model(input_ids=torch.tensor([ids])).logits[0, -1]
        p = torch.softmax(logits.float(), -1)
        want_p, want_i = p.topk(5)
        assert lens.top[-1].ids == want_i.tolist()
        assert lens.top[-1].probs == pytest.approx(want_p.tolist(), abs=1e-5)
        assert LogitLens.from_json(lens.to_json()) == lens
    # the route changes what the last layer predicts (it is what makes the answer flip)
    assert logit_lens(demo, ids, -1).top[-1].probs != logit_lens(demo, ids, -1, route).top[-1].probs
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in demo.model.modules())
    assert hooks == 0  # none left behind


def test_next_tokens_match_a_direct_forward(demo):
    p = demo.prepare(HARMFUL_PROMPTS[0])
    ids = list(p.ids) + demo.target_ids("Sure, here is")
    nt = next_tokens(demo, ids, p.num_tokens, count=3)
    assert nt.positions == [p.num_tokens - 1 + j for j in range(3)]
    with torch.inference_mode():
        probs = torch.softmax(demo.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    for j, pos in enumerate(nt.positions):
        top = nt.top[j]
        assert top.mass <= 1 + 1e-6
        assert top.probs == sorted(top.probs, reverse=True)
        assert top.probs == pytest.approx(probs[pos].topk(5).values.tolist(), abs=1e-5)
        assert nt.chosen_probs[j] == pytest.approx(float(probs[pos, ids[pos + 1]]), abs=1e-5)
        assert nt.chosen[j] == demo.token_strings([ids[pos + 1]])[0]
    assert NextTokens.from_json(nt.to_json()) == nt
    assert len(lens_heatmap([logit_lens(demo, ids, -1)], ["baseline"]).data) == 1


# -- the app views (through the gate) -------------------------------------------------------------
@pytest.fixture(scope="module")
def app(demo, tmp_path_factory):
    pytest.importorskip("gradio")
    from explorer.app.build import build_app
    a = build_app(demo, data_dir=tmp_path_factory.mktemp("results-app"))
    yield a
    a.explorer.jobs.shutdown(wait=True, timeout=30)


def _call(app, view, *args):
    return app.explorer.gate.call(view, *args)


def test_results_view_opens_and_compares(app, runs):
    from explorer.app.tabs.results import open_files
    rs, summary, methods, cats, rows, differ = _call(app, open_files, str(runs[0]),
                                                     str(runs[1]))
    assert list(methods["method"]) == ["none", "fsour"] and list(methods["file"]) == ["A", "B"]
    assert list(methods["k/n"]) == [f"{m['jailbroken']}/3" for f in (rs.a, rs.b)
                                    for m in method_table(f.rows)]
    assert len(rows) == 6 and set(rows["verdict"]) <= {"jailbroken", "refusal", "other"}
    assert [t.name for t in cats.data] == ["A none", "B fsour"]
    assert len(differ) == len(compare_results(rs.a, rs.b).differ)
    assert "3 rows in both" in summary


@pytest.mark.parametrize("content, says", [
    ("oversize", "larger than"),
    ('{"index": 0, "goal": "g", "method": "none", "jailbroken": false}\n{not json\n',
     "line 2 is not JSON"),
    ('{"index": "0", "goal": "g", "method": "none"}\n', "not an evaluate row"),
    ("\n\n", "no rows"),
    (b"\xff\xfe\x00bad", "not a UTF-8"),
])
def test_upload_refuses_oversize_and_malformed_files_with_one_line(app, tmp_path, content,
                                                                  says):
    import gradio as gr

    from explorer.app.tabs.results import open_files
    f = tmp_path / "up.jsonl"
    if content == "oversize":
        with f.open("wb") as fh:  # sparse: its size is refused before anything is read
            fh.truncate(MAX_RESULTS_BYTES + 1)
    else:
        f.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(gr.Error) as err:
        _call(app, open_files, str(f), None)
    msg = str(err.value.message if hasattr(err.value, "message") else err.value)
    assert says in msg and "\n" not in msg and "Traceback" not in msg


def test_a_grid_opens_as_its_table_and_junk_gets_one_line(app, demo, tmp_path):
    import gradio as gr

    from explorer.app.tabs.results import NO_GRID, open_grid
    from explorer.evaluation.datasets import load_dataset_rows
    from explorer.bench.grid import run_grid
    data = tmp_path / "g.csv"
    data.write_text("goal\n" + "\n".join(HARMFUL_PROMPTS[:2]) + "\n")
    res = run_grid(demo, {"g": load_dataset_rows(data)}, tmp_path / "grid", attacks=["none"],
                   defenses=["none", "self-reminder"], max_new_tokens=6,
                   command="python -m explorer grid ...")
    shown = _call(app, open_grid, str(tmp_path / "grid" / "grid.json"))
    assert shown == res.markdown() and "| none |" in shown and "(2 rows)" in shown
    assert _call(app, open_grid, None) == NO_GRID
    for content, says in (('{"cells": 3}', "not a grid"), ("[1, 2]", "not a grid"),
                          ("{oops", "not a grid"), (b"\xff\xfe", "not a grid")):
        f = tmp_path / "bad.json"
        f.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(gr.Error) as err:
            _call(app, open_grid, str(f))
        msg = str(err.value.message if hasattr(err.value, "message") else err.value)
        assert says in msg and "\n" not in msg and "Traceback" not in msg


def _select(row_value):
    """What Gradio passes a table's select: plain event data with the row's values (the
    gate builds the gr.SelectData the view asks for)."""
    import gradio as gr
    return gr.EventData(None, {"index": [0, 0], "value": "", "row_value": row_value})


def test_clicking_a_row_opens_its_route_in_inspect(app, runs):
    from explorer.app.state import InspectState
    from explorer.app.tabs.results import open_files, open_row
    rs = _call(app, open_files, str(runs[1]), None)[0]
    row = rs.a.rows[1]
    evt = _select(["A", row["index"], row["method"]])
    outs = list(_call(app, open_row, rs, 8, InspectState(), evt))
    first, last = outs[0], outs[-1]
    assert first[0] == row["goal"]  # the prompt box
    st = last[8]
    assert st.route.to_dict()["edits"] == row["route"]["edits"]  # pending
    assert st.alt is not None and st.alt.route is not None  # re-run with them
    assert st.alt.completion.startswith(last[4][:8])  # the re-routed answer box
    with pytest.raises(Exception, match="not its header"):
        list(_call(app, open_row, rs, 8, InspectState(), _select(None)))


def test_why_it_flips_view(app, runs):
    from explorer.app.state import InspectState
    from explorer.app.tabs.results import open_files, open_row
    from explorer.app.tabs.why import explain
    with pytest.raises(Exception, match="Generate first"):
        _call(app, explain, 0, InspectState())
    rs = _call(app, open_files, str(runs[1]), None)[0]
    row = rs.a.rows[0]
    evt = _select(["A", row["index"], row["method"]])
    st = list(_call(app, open_row, rs, 8, InspectState(), evt))[-1][8]
    table, fig = _call(app, explain, 1, st)
    assert "why-next-tokens" in table and table.count("<tr>") == 1 + 4
    assert len(fig.data) == 2  # baseline and re-routed lenses
    base_lens = logit_lens(app.explorer.moe, st.base.token_ids, st.base.prompt_tokens, None)
    assert list(fig.data[0].z[-1]) == pytest.approx(base_lens.top[-1].probs)


def test_why_it_flips_shows_nothing_of_an_answer_a_hosted_server_shortens(tiny, tmp_path):
    """Hosted, a real model's jailbroken answer shows only its first sentence: the panel
    must not list its tokens either (the tiny random model's answer has no refusal)."""
    from explorer.app.build import build_app
    from explorer.app.hosted import HostedPolicy
    from explorer.app.state import InspectState
    from explorer.app.tabs.why import explain
    from explorer.core.trace import trace
    app = build_app(tiny, data_dir=tmp_path, policy=HostedPolicy(enabled=True))
    try:
        base = trace(tiny, tiny.prepare(HARMFUL_PROMPTS[0]), max_new_tokens=12)
        assert app.explorer.gate.shown_trace(base) is not base  # the server shortens it
        req = types.SimpleNamespace(session_hash="s1", client=types.SimpleNamespace(
            host="10.0.0.9"), headers={}, query_params={})
        with pytest.raises(Exception, match="first sentence") as err:
            app.explorer.gate.call(explain, 0, InspectState(base=base), request=req)
        assert "\n" not in str(err.value)
    finally:
        app.explorer.jobs.shutdown(wait=True, timeout=30)


# -- an evaluation as a background job ----------------------------------------------------------
def _until_finished(app, rs, b, timeout=120):
    import time

    from explorer.app.tabs.results import poll_evaluation
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        out = _call(app, poll_evaluation, rs, b)
        if "running" not in out[6] and "queued" not in out[6]:
            return out
        time.sleep(0.3)
    raise AssertionError(f"the evaluation did not finish: {out[6]}")


def test_an_evaluation_job_runs_and_shows_its_rows(app):
    from explorer.app.state import ResultsState
    from explorer.app.tabs.results import poll_evaluation, start_evaluation
    from explorer.core.prompt_sets import BENIGN_PROMPTS
    b = app.explorer.owners.ensure_client({"client": None, "jobs": []})
    rs, line, _ = _call(app, start_evaluation, "benign", 2, "none", 6, ResultsState(), b)
    assert rs.job is not None and "Queued" in line
    out = _until_finished(app, rs, b)
    rs2, methods, rows = out[0], out[2], out[4]
    assert rs2.job is None and "done" in out[6]
    assert [r["goal"] for r in rs2.a.rows] == list(BENIGN_PROMPTS[:2])
    assert list(methods["k/n"]) == [f"{sum(r['jailbroken'] for r in rs2.a.rows)}/2"]
    assert len(rows) == 2
    st = app.explorer.jobs.status(rs.job)
    assert st["kind"] == "evaluate" and st["route_id"] is None  # rows, no route saved
    # the Search tab's job list (a ?job= link may put it there) names it as an evaluation
    from explorer.app.format import job_label, job_progress_md, job_result_md
    assert "evaluation: none on the first 2 benign prompts" in job_label(st)
    assert job_result_md(st) == "**Evaluation (done)** · 2 rows"
    assert "Search" in job_progress_md(st)
    # another browser cannot read it: its timer stops, nothing of the job is shown
    other = app.explorer.owners.ensure_client({"client": None, "jobs": []})
    out = _call(app, poll_evaluation, ResultsState(job=rs.job), other)
    assert out[0].job is None and out[0].a is None and "not there" in out[6]
    assert out[7].active is False


def test_a_stopped_evaluation_keeps_its_rows_and_a_hosted_server_bounds_it(demo, tmp_path):
    import time

    from explorer.app import searches
    from explorer.app.build import build_app
    from explorer.app.hosted import HostedPolicy
    from explorer.app.state import ResultsState
    from explorer.app.tabs.results import start_evaluation, stop_evaluation
    from explorer.app.tabs.search import owner_of
    from explorer.storage.jobs import EVALUATE_JOB
    hosted = build_app(demo, data_dir=tmp_path, policy=HostedPolicy(
        enabled=True, max_search_budget=500, burst=100))
    try:
        req = types.SimpleNamespace(session_hash="s1", client=types.SimpleNamespace(
            host="10.0.0.9"), headers={}, query_params={})
        b = hosted.explorer.owners.ensure_client({"client": None, "jobs": []})
        with pytest.raises(Exception, match="above this server's limit") as err:
            hosted.explorer.gate.call(start_evaluation, "harmful", 6, "fsour", 8,
                                      ResultsState(), b, request=req)
        assert "\n" not in str(err.value)
        assert hosted.explorer.store.list_jobs(limit=5) == []  # nothing was queued
        rs, _, _ = hosted.explorer.gate.call(start_evaluation, "harmful", 8, "none", 24,
                                             ResultsState(), b, request=req)
        jobs = hosted.explorer.jobs
        end = time.monotonic() + 60  # stop it once its first row is in
        while time.monotonic() < end and not (jobs.status(rs.job)["progress"] or {}).get(
                "fraction"):
            time.sleep(0.05)
        hosted.explorer.gate.call(stop_evaluation, rs, b, request=req)
        end = time.monotonic() + 60
        while time.monotonic() < end and jobs.status(rs.job)["status"] == "running":
            time.sleep(0.1)
        st = jobs.status(rs.job)
        rows = st["result"]["rows"]
        assert st["kind"] == EVALUATE_JOB
        if st["status"] == "cancelled":  # stopped between two rows: the rows done are kept
            assert 1 <= len(rows) < 8
            assert hosted.explorer.store.get_job(rs.job).state  # its checkpoint
            # resumed as its owner, checked like a new evaluation: continues from its rows
            owner = owner_of(hosted.explorer, b)
            hosted.explorer.gate.call(searches.resume, rs.job, owner, request=req)
            end = time.monotonic() + 120
            while time.monotonic() < end and jobs.status(rs.job)["status"] in ("queued",
                                                                                "running"):
                time.sleep(0.1)
            again = jobs.status(rs.job)
            assert again["status"] == "done"
            assert [r["index"] for r in again["result"]["rows"]] == list(range(8))
            assert again["result"]["rows"][:len(rows)] == rows
        else:  # it finished before the stop arrived
            assert st["status"] == "done" and len(rows) == 8
    finally:
        hosted.explorer.jobs.shutdown(wait=True, timeout=30)


def test_an_evaluation_in_gpu_windows_gives_the_rows_of_one_in_one_piece(demo, tmp_path):
    """ZeroGPU: an evaluate job runs as GPU windows (each in a forked process of the fake
    ``spaces``), continuing from the rows done; it ends with the same rows as in one piece."""
    import importlib.util
    import sys
    from pathlib import Path

    from test_jobs import final

    from explorer.storage.jobs import EVALUATE_JOB, JobManager
    from explorer.storage.library import RouteStore
    here = Path(__file__).resolve().parent / "fake_spaces" / "spaces" / "__init__.py"
    spec = importlib.util.spec_from_file_location("fake_zerogpu_spaces_results", here)
    spaces = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = spaces  # pickled exceptions name their module
    spec.loader.exec_module(spaces)
    params = {"method": "none", "prompts": "harmful", "count": 6, "max_new_tokens": 16}
    whole = JobManager(demo, RouteStore(tmp_path / "whole.sqlite3"))
    windows = JobManager(demo, RouteStore(tmp_path / "windows.sqlite3"),
                         window=spaces.GPU(duration=1.0), chunk_seconds=1.0)
    try:
        assert windows.chunked
        a = final(whole, whole.submit(EVALUATE_JOB, params), timeout=120)
        b = final(windows, windows.submit(EVALUATE_JOB, params), timeout=120)
        assert a["status"] == b["status"] == "done", (a["error"], b["error"])
        keys = ("index", "goal", "method", "completion", "jailbroken", "refusal")
        assert [{k: r.get(k) for k in keys} for r in b["result"]["rows"]] == \
            [{k: r.get(k) for k in keys} for r in a["result"]["rows"]]
        assert [r["index"] for r in b["result"]["rows"]] == list(range(6))
        print(f"\n{b['progress']['chunks']} GPU windows")
    finally:
        for m in (whole, windows):
            m.shutdown(wait=True, timeout=30)
            m.store.close()
        spaces.close_workers()
        sys.modules.pop(spec.name, None)
