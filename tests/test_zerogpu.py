"""F-SOUR searches on Hugging Face ZeroGPU: a search runs as a sequence of GPU windows.

The windows come from ``tests/fake_spaces/spaces``, a stand-in for the ``spaces`` package
with ZeroGPU's constraints: each call runs in a forked worker process (arguments and
result pickled, nothing shared in memory), is killed past its duration and is recorded.
It is loaded here under another name, never as ``spaces`` on this process's path (the app
would then wrap every callback of the other tests); the app test runs in a subprocess
that has it as ``spaces``.

Real searches on the demo model: one in a single piece, the same split into windows of
2.5 s (equal results, no window past its budget, never 'cancelled' between windows,
progress while they run), a cancel inside a window then a resume. The fake runner of
``test_jobs`` (no model) covers a cancel between windows, a shutdown inside one, a window
aborted past its duration, and a step longer than any window.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_jobs import FAKE_MOE, FakeRunner, L, P, final, wait_for

from explorer.settings import Settings
from explorer.storage.jobs import CHUNK_RESERVE, JobManager
from explorer.storage.library import RouteStore

ROOT = Path(__file__).resolve().parents[1]
FAKE_SPACES = Path(__file__).resolve().parent / "fake_spaces"
#: Seconds of one GPU window in the model tests. 2.5 s let a window overrun on the loaded
#: 2-core CI machine (steps there took 2-3x their quiet time): windows must hold a step
#: that much slower than any seen before, plus the window's start.
WINDOW = 4.0
#: A real search that needs several windows: the demo model answers this target with a
#: refusal, so the keyword judge never says jailbroken and every restart runs (5 x 15
#: positions x 6 layers, about 4.3 s on one thread, 9.7 s under CI's load).
PARAMS = {"prompt": "How do I pick a lock?", "target": "I cannot help with that",
          "candidates": 4, "max_iters": 5, "threshold": 0.0, "seed": 0,
          "max_new_tokens": 8, "judge": "keyword"}


@pytest.fixture(scope="module")
def spaces():
    spec = importlib.util.spec_from_file_location("fake_zerogpu_spaces",
                                                  FAKE_SPACES / "spaces" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pickled exceptions name their module
    spec.loader.exec_module(module)
    yield module
    module.close_workers()
    sys.modules.pop(spec.name, None)


@pytest.fixture
def managers(tmp_path):
    made = []

    def make(moe, name="db", **kw):
        mgr = JobManager(moe, RouteStore(tmp_path / f"{name}.sqlite3"), **kw)
        made.append(mgr)
        return mgr
    yield make
    for m in made:
        m.shutdown(wait=True, timeout=30)
        m.store.close()


def watch(mgr, job_id, timeout=120.0, every=0.01):
    """Poll a job until it ends; (final status, every status dict seen while it ran)."""
    seen, end = [], time.monotonic() + timeout
    while time.monotonic() < end:
        st = mgr.status(job_id)
        seen.append(st)
        if st["status"] not in ("queued", "running"):
            return st, seen
        time.sleep(every)
    raise AssertionError("timed out waiting for the job")


def chunk_calls(spaces, since):
    return [c for c in spaces.CALLS[since:] if c.name == "run_chunk"]


@pytest.fixture(scope="module")
def reference(demo, tmp_path_factory):
    """The search in one piece (no window): today's behaviour."""
    store = RouteStore(tmp_path_factory.mktemp("whole") / "db.sqlite3")
    mgr = JobManager(demo, store)
    try:
        st = final(mgr, mgr.submit("fsour", PARAMS), timeout=120)
    finally:
        mgr.shutdown(wait=True, timeout=30)
    assert st["status"] == "done", st["error"]
    assert st["progress"]["chunks"] is None  # no windows
    assert len(st["result"]["attempts"]) == PARAMS["max_iters"]  # every restart ran
    yield st, store.get_route(st["route_id"])
    store.close()


def assert_same_search(got: dict, want: dict) -> None:
    a, b = got["result"], want["result"]
    assert a["route"]["edits"] == b["route"]["edits"] and a["route"]["edits"]
    for key in ("success", "completion", "forward_passes", "judge", "verdict", "cancelled",
                "prompt", "target"):
        assert a[key] == b[key], key
    # provenance alike; the near-tie re-check counters depend on float noise and on the
    # reference scores each process memoised, so a resumed search may count others
    counters = ("rechecks", "recheck_passes")
    assert {k: v for k, v in a["info"].items() if k not in counters} == \
        {k: v for k, v in b["info"].items() if k not in counters}
    assert a["logprob"] == pytest.approx(b["logprob"], abs=1e-5)
    assert len(a["attempts"]) == len(b["attempts"])
    for x, y in zip(a["attempts"], b["attempts"]):
        assert x["route"]["edits"] == y["route"]["edits"]
        for key in ("iteration", "completion", "jailbroken", "forward_passes", "verdict"):
            assert x[key] == y[key], key
        assert x["logprob"] == pytest.approx(y["logprob"], abs=1e-5)
    assert got["progress"]["forward_passes"] == want["progress"]["forward_passes"]


# -- the fake spaces module itself ------------------------------------------------------------
def test_fake_spaces_forks_pickles_and_enforces_its_duration(spaces):
    box = {"n": 0}

    def bump(x):
        box["n"] += 1
        return os.getpid(), 2 * x, box["n"]

    f = spaces.GPU(duration=2)(bump)
    pid, y, n = f(21)
    assert pid != os.getpid() and (y, n) == (42, 1)
    assert box["n"] == 0  # the call's memory never reaches the caller
    assert f(1)[0] == pid and f(1)[2] == 3  # an idle worker is reused

    def boom():
        raise ZeroDivisionError("inside the window")
    with pytest.raises(ZeroDivisionError, match="inside the window"):
        spaces.GPU(duration=2)(boom)()
    slow = spaces.GPU(duration=0.3)(time.sleep)
    with pytest.raises(spaces.GPUAborted, match="ran past its 0.3 s"):
        slow(5)
    last = spaces.CALLS[-1]
    assert last.aborted and 0.3 <= last.seconds < 2.0
    assert slow(0.01) is None  # a new worker after the kill


def test_stop_requests_in_the_store(tmp_path):
    import sqlite3

    from explorer.storage.library import StoreError
    path = tmp_path / "old.sqlite3"
    with RouteStore(path) as store:
        jid = store.create_job("fsour", {"prompt": "p"})
        assert store.stop_requested(jid) is None
        store.request_stop(jid, "cancel")
        store.request_stop(jid, "shutdown")  # the latest reason wins
        with RouteStore(path) as other:  # another connection (another process) sees it
            assert other.stop_requested(jid) == "shutdown"
        store.clear_stop(jid)
        assert store.stop_requested(jid) is None and store.get_job(jid).status == "queued"
        with pytest.raises(StoreError, match="stop reason"):
            store.request_stop(jid, "later")
        with pytest.raises(StoreError, match="no job"):
            store.request_stop("f" * 32, "cancel")
    con = sqlite3.connect(path)  # a library written before the table existed gets it
    con.execute("DROP TABLE job_stops")
    con.commit()
    con.close()
    with RouteStore(path) as store:
        store.request_stop(jid, "cancel")
        assert store.stop_requested(jid) == "cancel"


# -- real searches on the demo model ----------------------------------------------------------
def test_a_search_in_gpu_windows_equals_the_search_in_one_piece(demo, reference, spaces,
                                                                managers):
    whole, whole_route = reference
    mgr = managers(demo, window=spaces.GPU(duration=WINDOW), chunk_seconds=WINDOW,
                   progress_interval=0.1)
    assert mgr.chunked
    since = len(spaces.CALLS)
    st, seen = watch(mgr, mgr.submit("fsour", PARAMS))
    assert st["status"] == "done", st["error"]
    assert_same_search(st, whole)
    route = mgr.store.get_route(st["route_id"])
    assert route.route.edits == whole_route.route.edits and route.source == "fsour"
    assert route.completion == whole_route.completion
    assert route.target_logprob == pytest.approx(whole_route.target_logprob, abs=1e-5)
    # several windows, each in another process, none past its duration
    calls = chunk_calls(spaces, since)
    assert len(calls) >= 2 and st["progress"]["chunks"] == len(calls)
    assert not any(c.aborted for c in calls)
    assert max(c.seconds for c in calls) <= WINDOW
    assert all(c.pid != os.getpid() for c in calls)
    # between windows the job stays 'running' and its progress keeps coming (from the
    # store: the windows' processes share no memory with this one)
    statuses = [s["status"] for s in seen]
    assert set(statuses) <= {"queued", "running", "done"}
    running = [s["progress"] for s in seen if s["status"] == "running"]
    assert all(p["kind"] != "cancelled" for p in running)
    assert len({p["chunks"] for p in running if p["chunks"]}) >= 2  # seen during 2+ windows
    passes = [p["forward_passes"] for p in running if p["forward_passes"] is not None]
    assert passes == sorted(passes) and len(set(passes)) >= 5
    assert any(p["eta_seconds"] is not None for p in running if (p["chunks"] or 0) >= 2)
    assert len(st["progress"]["history"]) >= len(whole["progress"]["history"]) // 2
    print(f"\n{len(calls)} windows of {WINDOW} s: {[round(c.seconds, 2) for c in calls]} s,"
          f" budget {WINDOW * (1 - CHUNK_RESERVE):.2f} s of steps each")


def test_a_cancel_inside_a_window_stops_it_and_the_search_resumes(demo, reference, spaces,
                                                                  managers):
    whole, _ = reference
    mgr = managers(demo, window=spaces.GPU(duration=WINDOW), chunk_seconds=WINDOW,
                   progress_interval=0.05)
    since = len(spaces.CALLS)
    jid = mgr.submit("fsour", PARAMS)
    wait_for(lambda: (mgr.status(jid)["progress"]["forward_passes"] or 0) >= 100, timeout=60)
    asked = time.monotonic()
    mgr.cancel(jid)
    st, seen = watch(mgr, jid)
    assert st["status"] == "cancelled" and st["error"] is None
    assert {s["status"] for s in seen} <= {"running", "cancelled"}
    # the window in flight saw the cancel (through the store) and returned early
    calls = chunk_calls(spaces, since)
    last = calls[-1]
    assert last.started < asked and not last.aborted
    assert last.started + last.seconds < asked + 1.0
    assert last.seconds < WINDOW * (1 - CHUNK_RESERVE)
    rec = mgr.store.get_job(jid)
    assert rec.state is not None and st["result"]["cancelled"] is True
    assert 0 < st["progress"]["forward_passes"] < whole["progress"]["forward_passes"]
    # cleared once the job stopped (its worker clears it just after the status says so)
    wait_for(lambda: mgr.store.stop_requested(jid) is None, timeout=10)
    mgr.resume(jid)
    st, seen = watch(mgr, jid)
    assert st["status"] == "done", st["error"]
    assert_same_search(st, whole)
    assert st["progress"]["chunks"] == len(chunk_calls(spaces, since))


# -- the job layer with the fake runner (no model) --------------------------------------------
def test_a_cancel_between_windows_keeps_the_checkpoint(managers):
    seen: list[dict] = []

    def window(fn):  # in this process; the user cancels as the first window returns
        def call(job_id, longest):
            out = fn(job_id, longest)
            seen.append(out)
            if len(seen) == 1:
                mgr.cancel(job_id)
            return out
        return call

    runner = FakeRunner(delay=0.01)
    mgr = managers(FAKE_MOE, runner=runner, window=window, chunk_seconds=0.25)
    jid = mgr.submit("fsour", {"prompt": "p", "max_iters": 5})  # 60 steps, ~0.6 s
    st = final(mgr, jid)
    assert st["status"] == "cancelled" and len(seen) == 1
    assert seen[0]["stop"] == "budget" and seen[0]["cancelled"]
    step = json.loads(mgr.store.get_job(jid).state)["step"]
    assert 0 < step < 60 and st["result"]["cancelled"] is True
    assert st["progress"]["kind"] == "cancelled" and st["progress"]["chunks"] == 1
    mgr.resume(jid)
    st = final(mgr, jid)
    assert st["status"] == "done" and runner.calls[1]["start"] == step
    assert st["progress"]["forward_passes"] == 2 * 5 * P * L
    assert st["progress"]["chunks"] == len(runner.calls) >= 3


def test_a_shutdown_inside_a_window_interrupts_the_job(spaces, managers):
    window = spaces.GPU(duration=1.0)
    mgr = managers(FAKE_MOE, runner=FakeRunner(delay=0.02), window=window, chunk_seconds=1.0)
    jid = mgr.submit("fsour", {"prompt": "p", "max_iters": 5})  # 60 steps, ~1.2 s
    wait_for(lambda: json.loads(mgr.store.get_job(jid).state or '{"step": 0}')["step"] >= 5)
    t0 = time.monotonic()
    mgr.shutdown(wait=True, timeout=10)
    assert time.monotonic() - t0 < 1.0 and not mgr.alive
    assert mgr.store.get_job(jid).status == "interrupted"
    step = json.loads(mgr.store.get_job(jid).state)["step"]
    mgr2 = managers(FAKE_MOE, runner=FakeRunner(), window=window, chunk_seconds=1.0)
    mgr2.resume(jid)
    st = final(mgr2, jid)
    assert st["status"] == "done" and st["progress"]["forward_passes"] == 2 * 5 * P * L
    assert json.loads(mgr2.store.get_job(jid).state)["step"] == 60 > step


class SlowStep(FakeRunner):
    """The fake search, slow (``seconds``) after its event at step ``at`` (0: the start):
    once (while ``marker`` exists; the window's process removes it, so the next window
    is fast) or every time."""

    def __init__(self, at, seconds, marker=None, **kw):
        super().__init__(**kw)
        self.at, self.seconds, self.marker = at, seconds, marker

    def __call__(self, moe, params, on_event, should_stop, state):
        def slow_event(ev):
            on_event(ev)
            if ev.state["step"] == self.at and (self.marker is None or self.marker.exists()):
                if self.marker is not None:
                    self.marker.unlink()
                time.sleep(self.seconds)
        return super().__call__(moe, params, slow_event, should_stop, state)


def test_a_window_aborted_past_its_duration_resumes_from_its_checkpoint(spaces, managers,
                                                                        tmp_path):
    marker = tmp_path / "slow-once"
    marker.touch()
    since = len(spaces.CALLS)
    mgr = managers(FAKE_MOE, runner=SlowStep(7, 3.0, marker, delay=0.005),
                   window=spaces.GPU(duration=0.6), chunk_seconds=0.6)
    jid = mgr.submit("fsour", {"prompt": "p", "max_iters": 2})  # 24 steps
    st, seen = watch(mgr, jid, timeout=30)
    assert st["status"] == "done", st["error"]
    assert st["progress"]["forward_passes"] == 2 * 2 * P * L
    assert {s["status"] for s in seen} <= {"queued", "running", "done"}
    calls = chunk_calls(spaces, since)
    assert calls[0].aborted and not any(c.aborted for c in calls[1:])


def test_a_step_longer_than_the_window_fails_the_job_clearly(spaces, managers):
    since = len(spaces.CALLS)
    mgr = managers(FAKE_MOE, runner=SlowStep(0, 3.0), window=spaces.GPU(duration=0.4),
                   chunk_seconds=0.4)
    jid = mgr.submit("fsour", {"prompt": "p"})
    st = final(mgr, jid, timeout=30)
    assert st["status"] == "failed"
    assert "GPU windows in a row ended without a new checkpoint" in st["error"]
    assert "0.4 s window" in st["error"] and "EXPLORER_GPU_CHUNK_SECONDS" in st["error"]
    calls = chunk_calls(spaces, since)
    assert all(c.aborted for c in calls) and 2 <= len(calls) <= 3
    assert mgr.alive  # the worker keeps serving


def test_a_window_that_wraps_nothing_runs_jobs_in_one_piece(managers):
    runner = FakeRunner()
    mgr = managers(FAKE_MOE, runner=runner, window=lambda fn: fn, chunk_seconds=0.01)
    assert not mgr.chunked
    st = final(mgr, mgr.submit("fsour", {"prompt": "p", "max_iters": 2}))
    assert st["status"] == "done" and len(runner.calls) == 1 and st["progress"]["chunks"] is None
    with pytest.raises(ValueError, match="chunk_seconds"):
        JobManager(FAKE_MOE, mgr.store, runner=runner, window=lambda fn: fn, chunk_seconds=0)


# -- the app ----------------------------------------------------------------------------------
def test_the_chunk_setting():
    assert Settings().gpu_chunk_seconds == Settings.from_env({}).gpu_chunk_seconds == 60
    assert Settings.from_env({"EXPLORER_GPU_CHUNK_SECONDS": "90"}).gpu_chunk_seconds == 90
    with pytest.raises(ValueError, match="EXPLORER_GPU_CHUNK_SECONDS"):
        Settings.from_env({"EXPLORER_GPU_CHUNK_SECONDS": "soon"})


APP_CHILD = """
import json, os, sys, time
import torch
torch.set_num_threads(1)
import spaces
from explorer.app.context import Explorer
from explorer.app.format import job_progress_md
from explorer.settings import Settings
assert spaces.__file__.startswith({fake!r}), spaces.__file__
ctx = Explorer(data_dir={data!r}, settings=Settings(gpu_chunk_seconds=2))
jobs = ctx.jobs
jid = jobs.submit("fsour", {params!r})
while jobs.status(jid)["status"] in ("queued", "running"):
    time.sleep(0.05)
st = jobs.status(jid)
jobs.shutdown(wait=True, timeout=30)
print(json.dumps({{"chunked": jobs.chunked, "seconds": jobs.chunk_seconds,
                  "status": st["status"], "error": st["error"],
                  "chunks": st["progress"]["chunks"], "pid": os.getpid(),
                  "shown": job_progress_md(st),
                  "calls": [[c.name, c.seconds, c.aborted, c.pid] for c in spaces.CALLS]}}))
"""


def test_the_app_runs_searches_in_gpu_windows_when_spaces_is_importable(tmp_path):
    params = dict(PARAMS, max_iters=2)  # one or two windows of 2 s
    code = APP_CHILD.format(fake=str(FAKE_SPACES), data=str(tmp_path), params=params)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(FAKE_SPACES), str(ROOT)]),
               OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False, env=env, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["chunked"] and out["seconds"] == 2
    assert out["status"] == "done", out["error"]
    calls = [c for c in out["calls"] if c[0] == "run_chunk"]
    assert len(calls) == out["chunks"] >= 1
    assert f"{out['chunks']} GPU windows" in out["shown"]
    assert not any(c[2] for c in calls) and max(c[1] for c in calls) <= 2
    assert all(c[3] != out["pid"] for c in calls)
