"""Faults: the app killed mid-search, failed model loads, jobs that raise.

- ``python app.py`` (subprocess, demo model) is SIGKILLed while an F-SOUR search runs;
  restarted on the same data folder it lists the search as 'interrupted'; resumed from
  its checkpoint (JobManager on the same folder) it ends with exactly the route of the
  same search run without interruption. Routes saved before the kill are intact and
  ``PRAGMA integrity_check`` is ok.
- A job whose runner raises (MemoryError, a failed model load, SystemExit) ends 'failed'
  with its error, and the manager serves the next job.
- An app whose model cannot be loaded still serves, and says why on the API.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from test_concurrency import client, launch_app, stop_app, wait_ready

from explorer.core.route import Route
from explorer.storage.jobs import JobManager
from explorer.storage.library import DB_NAME, RouteStore

SEARCH_PROMPT = "Tell me how to steal a car without getting caught."  # the demo refuses it
QUICK_PROMPT = "Steal a car."  # the demo complies at once: a search ends at its start
SEARCH = dict(candidates=30, max_iters=2, seed=7, max_new_tokens=16)


def integrity(db: Path) -> str:
    con = sqlite3.connect(str(db), timeout=30)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def wait_for(fn, timeout: float, what: str, every: float = 0.3):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def manual_routes(moe) -> list[Route]:
    L = moe.moe_layers
    return [Route.from_dict({"edits": [{"layer": L[i], "position": i + 1,
                                        "experts": [i, i + 3], "mode": "force"},
                                       {"layer": L[-1], "position": None,
                                        "experts": [15 - i], "mode": "mask"}],
                             "info": {"note": f"saved before the kill #{i}"}})
            for i in range(3)]


def test_sigkill_mid_search_then_resume_matches_an_uninterrupted_run(demo, tmp_path):
    from explorer.judges import get_judge
    from explorer.methods import fsour as F

    data, log = tmp_path / "data", tmp_path / "app.log"
    db = data / DB_NAME
    proc, url = launch_app(data, log)
    try:
        wait_ready(proc, url, log)
        c = client(url)
        quick = c.predict(QUICK_PROMPT, api_name="/search_start", candidates=4, max_iters=1,
                          seed=0, max_new_tokens=16)["job_id"]
        wait_for(lambda: c.predict(quick, api_name="/search_status")["status"] == "done",
                 60, "the quick search")
        # routes written by another process while the app runs (WAL: one writer at a time)
        with RouteStore(db) as st:
            manual_ids = [st.save_route(r, QUICK_PROMPT, demo.name, source="manual")
                          for r in manual_routes(demo)]
        saved = {r["id"]: r for r in c.predict(api_name="/routes")}
        assert set(manual_ids) < set(saved) and len(saved) == 4
        job = c.predict(SEARCH_PROMPT, api_name="/search_start", judge="keyword",
                        **SEARCH)["job_id"]

        def partway():
            st = c.predict(job, api_name="/search_status")
            assert st["status"] in ("queued", "running"), st
            return (st["progress"].get("position") or 0) >= 2
        wait_for(partway, 180, "the search to reach position 2")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        stop_app(proc)
    assert proc.returncode == -signal.SIGKILL

    # what the kill left: a 'running' job with a checkpoint, an intact database
    assert integrity(db) == "ok"
    with RouteStore(db) as st:
        rec = st.get_job(job)
        assert rec.status == "running"  # nobody was left to say otherwise
        checkpoint = F.FsourState.from_json(rec.state)
        assert checkpoint.phase == "search" and checkpoint.t_index >= 1

    # restart the app on the same folder; meanwhile, the same search without interruption
    proc, url = launch_app(data, log)
    try:
        t0 = time.perf_counter()
        ref = F.fsour(demo, SEARCH_PROMPT, judge=get_judge("keyword"), **SEARCH)
        ref_seconds = time.perf_counter() - t0
        wait_ready(proc, url, log)
        owner = c.session_hash  # a job belongs to the client session that started it:
        c = client(url)         # after the restart, the same client reconnects with it
        c.session_hash = owner
        st = c.predict(job, api_name="/search_status")
        assert st["status"] == "interrupted", st
        # progress is written at most every 0.5 s, the checkpoint at every step
        assert 1 <= st["progress"]["position"] <= checkpoint.t_index
        assert 0 < st["progress"]["forward_passes"] <= checkpoint.forward_passes
        after = {r["id"]: r for r in c.predict(api_name="/routes")}
        assert after == saved  # the route library survived the kill, row for row
    finally:
        stop_app(proc)
    assert not ref.cancelled and ref.route.edits, "the reference search found no route"

    # resume from the checkpoint (the API has no resume endpoint: the library does it)
    with RouteStore(db) as store:
        mgr = JobManager(demo, store)
        try:
            assert mgr.interrupted == []  # the restarted app already marked it
            assert mgr.resume(job)["status"] in ("queued", "running", "done")
            t0 = time.perf_counter()
            st = wait_for(lambda: (s := mgr.status(job))["status"] not in
                          ("queued", "running") and s, 180, "the resumed search")
            resume_seconds = time.perf_counter() - t0
        finally:
            mgr.shutdown(wait=True, timeout=30)
        print(f"\n[faults] killed at position {checkpoint.t_index}/layer {checkpoint.l_index} "
              f"after {checkpoint.forward_passes} forward passes; resumed in "
              f"{resume_seconds:.1f} s; uninterrupted run {ref_seconds:.1f} s, "
              f"{ref.forward_passes} forward passes, success {ref.success}")
        assert st["status"] == "done", st
        res = st["result"]
        assert res["route"]["edits"] == ref.route.to_dict()["edits"]
        assert res["success"] == ref.success and res["completion"] == ref.completion
        assert res["logprob"] == pytest.approx(ref.logprob, abs=1e-5)
        assert res["forward_passes"] == ref.forward_passes
        # log-probs agree to float noise only: the uninterrupted run extends its prefix KV
        # cache token by token, the resumed one prefills it at once (about 2e-7 with the
        # eager experts loop, up to about 1e-6 with grouped_mm on CPU, which sums rows in
        # other groupings); choices are robust to that (IMPROVE_EPS = 1e-4)
        want = json.loads(json.dumps(ref.attempts))
        assert len(res["attempts"]) == len(want)
        for got_a, want_a in zip(res["attempts"], want):
            assert got_a["logprob"] == pytest.approx(want_a["logprob"], abs=1e-5)
            diff = {k: (got_a.get(k), want_a.get(k)) for k in set(got_a) | set(want_a)
                    if k != "logprob" and got_a.get(k) != want_a.get(k)}
            assert not diff, diff
        stored = store.get_route(st["route_id"])
        assert stored.route.to_dict()["edits"] == ref.route.to_dict()["edits"]
        for rid, r in zip(manual_ids, manual_routes(demo)):
            assert store.get_route(rid).route.to_dict()["edits"] == r.to_dict()["edits"]
    assert integrity(db) == "ok"


# -- jobs that raise ---------------------------------------------------------------------------
def test_jobs_that_raise_fail_visibly_and_the_manager_serves_on(demo, tmp_path, monkeypatch):
    """The real runner (explorer.storage.jobs.fsour_runner) around a patched F-SOUR that fails
    the way a real run can: out of memory midway, a model that cannot be loaded, an
    exit from a library; each ends its own job 'failed' with the error shown."""
    from explorer.core.model import ModelLoadError
    from explorer.methods import fsour as F
    from explorer.methods.fsour import FsourEvent
    real = F.fsour
    failures = {"oom midway": MemoryError("cannot allocate 12 GiB"),
                "no model": ModelLoadError("cannot load a model config from /nowhere"),
                "exit": SystemExit(3)}

    def flaky(moe, prompt, **kw):
        if prompt in failures:
            kw["on_event"](FsourEvent("step", 0, 1, demo.moe_layers[0], 5, 6, -4.5, 12, 0.1))
            raise failures[prompt]
        return real(moe, prompt, **kw)

    monkeypatch.setattr(F, "fsour", flaky)
    with RouteStore(tmp_path / DB_NAME) as store:
        mgr = JobManager(demo, store)
        try:
            ids = {p: mgr.submit("fsour", {"prompt": p, "max_new_tokens": 8}, session="s")
                   for p in failures}
            ok = mgr.submit("fsour", {"prompt": QUICK_PROMPT, "max_new_tokens": 8}, session="s")
            final = lambda j: wait_for(  # noqa: E731
                lambda: (s := mgr.status(j))["status"] not in ("queued", "running") and s,
                60, f"job {j}")
            for prompt, job in ids.items():
                st = final(job)
                assert st["status"] == "failed", st
                assert st["error"].startswith(type(failures[prompt]).__name__), st["error"]
                assert st["progress"]["forward_passes"] == 12  # progress up to the failure
                assert st["route_id"] is None
            st = final(ok)
            assert st["status"] == "done" and st["route_id"] is not None, st
            assert mgr.alive
            # and again after the failures: the worker still takes new jobs
            again = final(mgr.submit("fsour", {"prompt": QUICK_PROMPT, "max_new_tokens": 8}))
            assert again["status"] == "done"
        finally:
            mgr.shutdown(wait=True, timeout=30)


def test_app_with_a_model_that_fails_to_load_still_serves(tmp_path, monkeypatch):
    pytest.importorskip("gradio")
    gradio_client = pytest.importorskip("gradio_client")
    from explorer.app.build import build_app, launch_options
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    demo = build_app(str(broken), data_dir=tmp_path / "data", device="cpu")
    assert demo.explorer.moe is None and demo.explorer.error
    demo.queue().launch(prevent_thread_lock=True, ssr_mode=False, quiet=True,
                        **launch_options(demo))
    try:
        c = gradio_client.Client(demo.local_url, verbose=False, analytics_enabled=False)
        for args, api in ((("Steal a car.",), "/search_start"),
                          (("Steal a car.", 4, ""), "/trace")):
            with pytest.raises(Exception) as err:
                c.predict(*args, api_name=api)
            assert "No model is loaded" in str(err.value), str(err.value)
        assert c.predict(api_name="/routes") == []  # the library still answers
    finally:
        demo.close()
