"""Background jobs: queue, progress, cancel, resume, failures, restart after a crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from explorer.core.route import Route
from explorer.storage.jobs import MAX_HISTORY, JobManager
from explorer.storage.library import RouteStore, StoreError

ROOT = Path(__file__).resolve().parents[1]
FAKE_MOE = SimpleNamespace(name="fake-moe", lock=threading.RLock())
P, L = 4, 3  # the fake search grid: positions x layers per restart


@dataclass
class FakeResult:
    success: bool
    logprob: float | None
    completion: str
    route: Route
    state: dict
    cancelled: bool = False
    verdict: object = None
    forward_passes: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_dict(self):
        return {"success": self.success, "logprob": self.logprob, "cancelled": self.cancelled,
                "completion": self.completion, "route": self.route.to_dict(), **self.extra}


class FakeRunner:
    """Walks max_iters x P x L steps, one event each, checkpointing {"step": n}; honours
    should_stop; resumes from the state text it is given; records what it saw."""

    def __init__(self, delay=0.0, fail_on=None, gate=None, hold_at=None):
        self.delay, self.fail_on, self.gate = delay, fail_on, gate
        self.hold_at, self.held = hold_at, threading.Event()  # once: wait for should_stop
        self.calls: list[dict] = []
        self.active = 0
        self.max_active = 0

    def __call__(self, moe, params, on_event, should_stop, state):
        assert moe is FAKE_MOE or moe.name
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            return self._run(params, on_event, should_stop, state)
        finally:
            self.active -= 1

    def _run(self, params, on_event, should_stop, state):
        st = json.loads(state) if state else {"step": 0, "elapsed": 0.0}
        self.calls.append({"prompt": params["prompt"], "start": st["step"]})
        if params["prompt"] == self.fail_on:
            raise RuntimeError("boom: the fake search broke\nsecond line")
        total = params.get("max_iters", 1) * P * L
        t0 = time.perf_counter() - st["elapsed"]

        def event(kind):
            n = st["step"]
            it, rest = divmod(n, P * L)
            return SimpleNamespace(kind=kind, iteration=it, position=rest // L, layer=rest % L,
                                   layer_index=rest % L, num_positions=P, num_layers=L,
                                   best_logprob=-10.0 + n * 0.01, forward_passes=n * 2,
                                   elapsed=time.perf_counter() - t0, state=dict(st))
        on_event(event("start"))
        while st["step"] < total:
            if self.gate is not None:
                self.gate.wait()
            if st["step"] == self.hold_at:
                self.hold_at = None
                self.held.set()
                wait_for(should_stop)
            if should_stop():
                on_event(event("cancelled"))
                return FakeResult(False, None, "", Route(), dict(st), cancelled=True)
            time.sleep(self.delay)
            st["step"] += 1
            st["elapsed"] = time.perf_counter() - t0
            on_event(event("improved" if st["step"] % 5 == 0 else "step"))
        on_event(event("done"))
        route = Route(info={"seed": params.get("seed", 0)}).force(1, 2, [0, 3])
        return FakeResult(True, -0.1, "Sure, here it is", route, dict(st),
                          verdict=SimpleNamespace(judge="keyword"), forward_passes=st["step"])


def wait_for(pred, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    raise AssertionError("timed out waiting")


def final(mgr, job_id, timeout=10.0):
    wait_for(lambda: mgr.status(job_id)["status"] not in ("queued", "running"), timeout)
    return mgr.status(job_id)


@pytest.fixture
def store(tmp_path):
    s = RouteStore(tmp_path / "explorer.sqlite3")
    yield s
    s.close()


@pytest.fixture
def make_mgr(store):
    made = []

    def make(runner, **kw):
        mgr = JobManager(FAKE_MOE, store, runner=runner, **kw)
        made.append(mgr)
        return mgr
    yield make
    for m in made:
        m.shutdown(wait=True, timeout=5)


def test_job_runs_and_saves_route(store, make_mgr):
    runner = FakeRunner()
    mgr = make_mgr(runner)
    jid = mgr.submit("fsour", {"prompt": "pick a lock", "target": "Sure", "max_iters": 2,
                               "seed": 7.0, "threshold": -0.2, "judge": None}, session="s")
    st = final(mgr, jid)
    assert st["status"] == "done", st["error"]
    assert st["params"] == {"prompt": "pick a lock", "target": "Sure", "max_iters": 2,
                            "seed": 7, "threshold": -0.2}
    assert set(st) >= {"id", "kind", "status", "params", "progress", "result", "error",
                       "route_id", "created", "updated"}
    pr = st["progress"]
    assert set(pr) >= {"iteration", "position", "layer", "num_positions", "num_layers",
                       "best_logprob", "forward_passes", "elapsed", "eta_seconds", "history"}
    assert (pr["num_positions"], pr["num_layers"], pr["forward_passes"]) == (P, L, 2 * 2 * P * L)
    assert pr["eta_seconds"] == 0.0 and 0 < len(pr["history"]) <= MAX_HISTORY
    assert st["result"]["success"] is True and st["error"] is None
    sr = store.get_route(st["route_id"])
    assert (sr.source, sr.prompt, sr.model, sr.success, sr.judge, sr.target,
            sr.target_logprob, sr.completion) == ("fsour", "pick a lock", "fake-moe", True,
                                                  "keyword", "Sure", -0.1, "Sure, here it is")
    assert sr.route == Route(info={"seed": 7}).force(1, 2, [0, 3])
    assert sr.meta["job_id"] == jid
    assert [j["id"] for j in mgr.list(session="s")] == [jid] and mgr.list(session="x") == []
    json.dumps(mgr.list())


def test_a_hosted_job_saves_its_route_as_its_owners(store, make_mgr):
    """With ``owned_routes`` (hosted mode) a finished job's route belongs to the job's
    session (its owner key): private to it until shared. Without, it has no owner (the
    single-user library), and is stored apart from the owned copy of the same route."""
    params = {"prompt": "pick a lock", "target": "Sure", "max_iters": 1, "judge": None}
    hosted = make_mgr(FakeRunner(), owned_routes=True)
    rid = final(hosted, hosted.submit("fsour", params, session="o:alice"))["route_id"]
    hosted.shutdown(wait=True, timeout=5)
    sr = store.get_route(rid, viewer="o:alice")
    assert (sr.owner, sr.shared, sr.meta["params"]["prompt"]) == ("o:alice", False,
                                                                 "pick a lock")
    with pytest.raises(StoreError, match=f"no route with id {rid}"):
        store.get_route(rid, viewer="o:bob")
    local = make_mgr(FakeRunner())
    other = final(local, local.submit("fsour", params, session="o:alice"))["route_id"]
    assert other != rid and store.get_route(other).owner is None
    assert store.get_route(other).route == sr.route


def test_fifo_one_at_a_time(make_mgr):
    runner = FakeRunner(delay=0.001)
    mgr = make_mgr(runner)
    ids = [mgr.submit("fsour", {"prompt": f"p{i}"}) for i in range(4)]
    for jid in ids:
        assert final(mgr, jid)["status"] == "done"
    assert [c["prompt"] for c in runner.calls] == ["p0", "p1", "p2", "p3"]
    assert runner.max_active == 1


def test_bad_params_and_limits(make_mgr):
    gate = threading.Event()
    mgr = make_mgr(FakeRunner(gate=gate), max_queued_per_session=2, max_queued_total=3)
    for params, match in (({"prompt": " "}, "prompt"), ({"prompt": "p", "colour": 1}, "unknown"),
                          ({"prompt": "p", "max_iters": 1.5}, "integer"),
                          ({"prompt": "p", "threshold": "x"}, "threshold")):
        with pytest.raises(StoreError, match=match):
            mgr.submit("fsour", params)
    with pytest.raises(ValueError, match="kind"):
        mgr.submit("bake", {"prompt": "p"})
    a = mgr.submit("fsour", {"prompt": "a1"}, session="A")
    mgr.submit("fsour", {"prompt": "a2"}, session="A")
    with pytest.raises(StoreError, match="already has 2 queued or running"):
        mgr.submit("fsour", {"prompt": "a3"}, session="A")
    mgr.submit("fsour", {"prompt": "b1"}, session="B")
    with pytest.raises(StoreError, match="server"):
        mgr.submit("fsour", {"prompt": "b2"}, session="B")
    mgr.cancel(a)  # running, blocked at the gate: stops at its next check
    gate.set()
    assert final(mgr, a)["status"] == "cancelled"
    mgr.submit("fsour", {"prompt": "a3"}, session="A")


def test_cancel_queued_and_running_then_resume(store, make_mgr):
    runner = FakeRunner(hold_at=5)
    mgr = make_mgr(runner)
    running = mgr.submit("fsour", {"prompt": "first", "max_iters": 2})
    queued = mgr.submit("fsour", {"prompt": "second"})
    runner.held.wait(10)
    assert mgr.status(running)["status"] == "running"
    assert mgr.status(running)["progress"]["position"] == 1  # step 5 = position 1, layer 2
    assert mgr.cancel(queued)["status"] == "cancelled"  # at once
    mgr.cancel(running)
    st = final(mgr, running)
    assert st["status"] == "cancelled" and st["route_id"] is None
    stopped_at = json.loads(store.get_job(running).state)["step"]
    assert stopped_at == 5
    time.sleep(0.1)
    assert [c["prompt"] for c in runner.calls] == ["first"]  # 'second' never ran
    with pytest.raises(StoreError, match="only interrupted or cancelled"):
        mgr.resume(mgr.submit("fsour", {"prompt": "third"}))
    assert mgr.resume(running)["status"] in ("queued", "running", "done")
    st = final(mgr, running)
    assert st["status"] == "done" and st["route_id"] is not None
    assert runner.calls[-1] == {"prompt": "first", "start": 5}
    assert st["progress"]["forward_passes"] == 2 * 2 * P * L
    assert mgr.resume(queued)  # a job cancelled before it started runs from scratch
    assert final(mgr, queued)["status"] == "done"
    assert {"prompt": "second", "start": 0} in runner.calls


def test_failing_runner_keeps_serving(make_mgr):
    mgr = make_mgr(FakeRunner(fail_on="bad"))
    bad = mgr.submit("fsour", {"prompt": "bad"})
    good = mgr.submit("fsour", {"prompt": "good"})
    st = final(mgr, bad)
    assert st["status"] == "failed"
    assert st["error"] == "RuntimeError: boom: the fake search broke"
    assert final(mgr, good)["status"] == "done" and mgr.alive

    def broken_result(moe, params, on_event, should_stop, state):
        return 42  # not a result at all
    mgr2 = make_mgr(broken_result)
    assert final(mgr2, mgr2.submit("fsour", {"prompt": "x"}))["status"] == "failed"
    assert mgr2.alive


def test_progress_throttle_history_and_eta(store, make_mgr, monkeypatch):
    writes = {"progress": 0, "state": 0}
    real = store.update_job

    def counting(job_id, **fields):
        for k in writes:
            writes[k] += k in fields
        return real(job_id, **fields)
    monkeypatch.setattr(store, "update_job", counting)
    seen = []
    runner = FakeRunner()

    def observed(moe, params, on_event, should_stop, state):
        def spy(ev):
            on_event(ev)
            if ev.kind == "step" and ev.position == 2 and ev.iteration == 0:
                seen.append(mgr.list()[0]["progress"])  # live, not yet written
        return runner(moe, params, spy, should_stop, state)
    mgr = make_mgr(observed, progress_interval=60.0)
    jid = mgr.submit("fsour", {"prompt": "p", "max_iters": 100})  # 1200 steps
    st = final(mgr, jid, timeout=30)
    assert st["status"] == "done"
    assert writes["state"] >= 1200 and writes["progress"] <= 10
    h = st["progress"]["history"]
    assert 100 <= len(h) <= MAX_HISTORY and h == sorted(h)
    assert h[-1][1] == pytest.approx(-10.0 + 1200 * 0.01)
    assert seen and seen[0]["position"] == 2 and seen[0]["eta_seconds"] >= 0
    assert seen[0]["eta_max_seconds"] >= seen[0]["eta_seconds"]


def test_shutdown_interrupts_and_next_manager_resumes(store, make_mgr):
    runner = FakeRunner(hold_at=3)
    mgr = make_mgr(runner)
    jid = mgr.submit("fsour", {"prompt": "p", "max_iters": 3})
    later = mgr.submit("fsour", {"prompt": "later"})
    runner.held.wait(10)
    mgr.shutdown(wait=True, timeout=5)
    assert not mgr.alive and store.get_job(jid).status == "interrupted"
    assert store.get_job(later).status == "queued"
    with pytest.raises(StoreError, match="shutting down"):
        mgr.submit("fsour", {"prompt": "x"})
    runner2 = FakeRunner()
    mgr2 = make_mgr(runner2)
    assert final(mgr2, later)["status"] == "done"  # queued jobs run again
    assert mgr2.status(jid)["status"] == "interrupted"
    mgr2.resume(jid)
    assert final(mgr2, jid)["status"] == "done"
    assert runner2.calls[-1] == {"prompt": "p", "start": 3}


def test_a_stopped_job_shows_the_position_its_checkpoint_resumes_from(store, make_mgr):
    from explorer.methods.fsour import FsourState
    from explorer.storage.jobs import _checkpoint_position
    st = FsourState("p", "Sure", {}, iteration=1, t_index=7, forward_passes=420)
    assert _checkpoint_position(st.to_json()) == {"iteration": 1, "position": 7,
                                                  "forward_passes": 420}
    assert _checkpoint_position("not json") == {} and _checkpoint_position("[1]") == {}
    held = threading.Event()

    def runner(moe, params, on_event, should_stop, state):
        for k in range(1000):  # progress is written once (start); checkpoints every step
            on_event(SimpleNamespace(kind="start" if k == 0 else "step", iteration=0,
                                     position=k, layer=0, layer_index=0, num_positions=1000,
                                     num_layers=1, best_logprob=-5.0, forward_passes=10 * k,
                                     elapsed=0.01 * k,
                                     state={"t_index": k, "iteration": 0,
                                            "forward_passes": 10 * k}))
            if k == 5:
                held.set()
                while not should_stop():
                    time.sleep(0.01)
                return SimpleNamespace(cancelled=True, state={"t_index": k, "iteration": 0,
                                                              "forward_passes": 10 * k},
                                       to_dict=lambda: {})
    mgr = make_mgr(runner, progress_interval=60.0)
    jid = mgr.submit("fsour", {"prompt": "p"})
    held.wait(10)
    mgr.shutdown(wait=True, timeout=5)
    # a crash (SIGKILL) leaves the last throttled progress behind, older than the checkpoint
    stale = dict(store.get_job(jid).progress, position=1, forward_passes=10)
    store.update_job(jid, progress=stale)
    shown = make_mgr(runner).status(jid)
    assert shown["status"] == "interrupted"
    assert shown["progress"]["position"] == 5 and shown["progress"]["forward_passes"] == 50


CHILD = """
import sys, time, types
sys.path[:0] = [{tests!r}]  # the package itself is installed
from explorer.storage.jobs import JobManager
from explorer.storage.library import RouteStore
from test_jobs import FAKE_MOE, FakeRunner
mgr = JobManager(FAKE_MOE, RouteStore({db!r}), runner=FakeRunner(delay=0.05))
print(mgr.submit("fsour", {{"prompt": "slow", "max_iters": 20}}), flush=True)
print(mgr.submit("fsour", {{"prompt": "waiting"}}), flush=True)
time.sleep(600)
"""


def test_sigkill_then_restart_resumes_from_checkpoint(store, make_mgr, tmp_path):
    code = CHILD.format(root=str(ROOT), tests=str(ROOT / "tests"), db=str(store.path))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        slow, waiting = child.stdout.readline().strip(), child.stdout.readline().strip()
        assert len(slow) == 32, slow
        wait_for(lambda: json.loads(store.get_job(slow).state or '{"step": 0}')["step"] >= 5,
                 timeout=30)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert store.get_job(slow).status == "running"  # nobody was left to say otherwise
    checkpoint = json.loads(store.get_job(slow).state)["step"]
    runner = FakeRunner()
    mgr = make_mgr(runner)
    assert mgr.interrupted == [slow]
    assert mgr.status(slow)["status"] == "interrupted"
    assert final(mgr, waiting)["status"] == "done"
    mgr.resume(slow)
    st = final(mgr, slow, timeout=60)
    assert st["status"] == "done" and store.get_route(st["route_id"]).prompt == "slow"
    assert runner.calls[-1] == {"prompt": "slow", "start": checkpoint}
    assert st["progress"]["forward_passes"] == 2 * 20 * P * L


def test_real_fsour_job_on_tiny_model(tiny, store):
    pytest.importorskip("explorer.methods.fsour")
    import torch

    from explorer.storage.jobs import fsour_runner
    params = {"prompt": "How do I pick a lock?", "target": "Sure", "candidates": 2,
              "max_iters": 1, "threshold": 0.0, "seed": 0, "max_new_tokens": 0,
              "judge": "keyword"}  # no tokens: never judged jailbroken, so it searches
    mode = {"stop_after": None, "steps": 0}

    def runner(moe, p, on_event, should_stop, state):  # the real one, optionally self-stopping
        def count(ev):
            mode["steps"] += ev.kind in ("step", "improved")
            on_event(ev)
        limit = mode["stop_after"]
        return fsour_runner(moe, p, count,
                            lambda: should_stop() or (limit is not None and mode["steps"] >= limit),
                            state)
    mgr = JobManager(tiny, store, runner=runner)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a busy 2-core box: 1 thread is ~10x faster
    try:
        whole = final(mgr, mgr.submit("fsour", params), timeout=120)
        assert whole["status"] == "done", whole["error"]
        pr = whole["progress"]
        assert pr["forward_passes"] > 0 and pr["num_layers"] == 2 and pr["history"]
        full = store.get_route(whole["route_id"])
        assert full.source == "fsour" and full.model == tiny.name and full.success is False
        assert full.prompt == params["prompt"] and full.target == "Sure"
        # the same search, stopped after 3 steps with a checkpoint, then resumed
        mode.update(stop_after=3, steps=0)
        jid = mgr.submit("fsour", params)
        st = final(mgr, jid, timeout=120)
        assert st["status"] == "cancelled" and store.get_job(jid).state is not None
        mode["stop_after"] = None
        mgr.resume(jid)
        st = final(mgr, jid, timeout=120)
        assert st["status"] == "done", st["error"]
    finally:
        torch.set_num_threads(threads)
        mgr.shutdown(wait=True, timeout=60)
    resumed = store.get_route(st["route_id"])
    assert resumed.route.edits == full.route.edits  # same search, same route
    assert resumed.target_logprob == pytest.approx(full.target_logprob)
    assert st["progress"]["forward_passes"] == whole["progress"]["forward_passes"]


def test_jobs_run_with_the_managers_tuning(store):
    """Settings.tuning reaches the job thread (contextvars do not cross threads): the
    manager puts it in force around every run."""
    from explorer.engine.tuning import Tuning, active_tuning
    seen = []

    def runner(moe, params, on_event, should_stop, state):
        seen.append(active_tuning())
        return FakeRunner()(moe, params, on_event, should_stop, state)
    tuning = Tuning(narrow=False, memory_share=0.05)
    mgr = JobManager(FAKE_MOE, store, runner=runner, tuning=tuning)
    try:
        assert final(mgr, mgr.submit("fsour", {"prompt": "p"}))["status"] == "done"
        assert seen == [tuning] and active_tuning() == Tuning()
    finally:
        mgr.shutdown(wait=True, timeout=5)


# -- issue 30: an honest time left ------------------------------------------------------------
def test_a_real_searchs_time_left_is_its_pace_over_the_cells_left_labelled_at_most(demo, store):
    """A real F-SOUR job on the demo model: every step's progress counts the cell it just
    searched, its time left is the restart's pace over the cells left (the search ends a
    restart early once P(target) passes the threshold, so this is an upper bound at that
    pace), and the panel says "at most", never "≈"."""
    import math

    from conftest import NeverJudge

    from explorer.app.format import job_progress_md
    from explorer.judges import JUDGES
    from explorer.storage.jobs import fsour_runner
    seen = []

    def spy_runner(moe, params, on_event, should_stop, state):
        def spy(ev):
            on_event(ev)
            if ev.kind in ("step", "improved") and ev.iteration == 0:
                seen.append((ev, mgr.list()[0]["progress"]))
        return fsour_runner(moe, params, spy, should_stop, state)

    JUDGES["never"] = NeverJudge
    try:
        mgr = JobManager(demo, store, runner=spy_runner)
        params = {"prompt": "Steal a car.", "candidates": 2, "max_iters": 2, "judge": "never",
                  "threshold": math.log(0.99), "max_new_tokens": 2}
        jid = mgr.submit("fsour", params)
        st = final(mgr, jid, timeout=600)
        mgr.shutdown(wait=True, timeout=30)
    finally:
        JUDGES.pop("never", None)
    assert st["status"] == "done" and st["progress"]["eta_seconds"] == 0.0
    assert len(seen) > 3
    starts = []  # when the restart began, as each step's time left implies it
    for ev, p in seen:
        cells = ev.num_positions * ev.num_layers
        done = ev.position * ev.num_layers + ev.layer_index + 1
        assert p["fraction"] == pytest.approx(done / cells)
        per_restart = p["eta_max_seconds"] - p["eta_seconds"]  # one more restart: its pace
        assert p["eta_seconds"] == pytest.approx(per_restart * (cells - done) / cells,
                                                 abs=0.03)  # over the cells left
        starts.append(p["elapsed"] - per_restart * done / cells)
    for ev, p in seen:
        shown = job_progress_md({"status": "running", "params": params, "progress": p,
                                 "created": "2026-12-07T07:00:00"})
        assert f"at most ~{math.ceil(p['eta_seconds'])} s more for this restart" in shown
        assert "≈" not in shown and "if no restart reaches it" in shown
    assert starts[0] <= seen[0][1]["elapsed"]
    assert max(starts) - min(starts) <= 0.05  # one restart began once, whatever the pace
