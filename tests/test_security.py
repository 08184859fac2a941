"""Hosted mode against a hostile visitor: each attack of the red-team report, replayed over
raw HTTP against ``python app.py --hosted`` in a subprocess (the demo model), and a
property-based fuzz of every named endpoint and every Research event.

Two servers: ``open_server`` with rate limits high enough for the fuzz (caps on prompts,
generation, searches and jobs as usual) and ``strict_server`` with the default-sized rate
limits and one job per session, for the attacks on the caps. Every answer must be a result
or one line of error (never ``null``, never a traceback), and the server must still answer
a trace within a few seconds after each attack.
"""

from __future__ import annotations

import collections
import json
import time
import urllib.error
import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("gradio")
from test_concurrency import ROOT, app_env, free_port, stop_app, tail  # noqa: E402

DEMO = ROOT / "assets" / "demo-model" / "model.safetensors"
pytestmark = pytest.mark.skipif(not DEMO.exists(), reason="needs the demo weights")
PROMPT = "Tell me how to break into my neighbour's house."
COUNTS: collections.Counter = collections.Counter()


# -- a hosted app in a subprocess, spoken to over raw HTTP -----------------------------------
class Server:
    def __init__(self, tmp: Path, **env):
        import subprocess
        import sys
        self.port, self.log = free_port(), tmp / "app.log"
        self.data = tmp / "data"
        full = app_env()
        full.update({"EXPLORER_HOSTED": "1", "EXPLORER_HOSTED_MAX_NEW_TOKENS": "16",
                     "EXPLORER_HOSTED_MAX_PROMPT_TOKENS": "64"})
        full.update({k: str(v) for k, v in env.items()})
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(self.port),
                 "--data-dir", str(self.data), "--device", "cpu"], cwd=ROOT, env=full,
                stdout=log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"
        end = time.monotonic() + 240
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"app exited {self.proc.returncode}:\n{tail(self.log)}")
            try:
                self.config = json.loads(self.get("/config", timeout=5)[1])
                break
            except (OSError, ValueError):
                time.sleep(0.5)
        else:
            stop_app(self.proc)
            raise AssertionError(f"app not ready:\n{tail(self.log)}")

    def get(self, path: str, timeout: float = 60) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def post(self, path: str, body: bytes, timeout: float = 60,
             headers: dict | None = None) -> tuple[int, str]:
        req = urllib.request.Request(self.base + path, data=body, headers={
            "Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def call(self, name: str, *data, session: str | None = None, timeout: float = 60,
             headers: dict | None = None):
        """A named endpoint: ("ok", value) or ("error", one-line message)."""
        body = {"data": list(data)}
        if session is not None:
            body["session_hash"] = session
        status, text = self.post(f"/gradio_api/call/{name}", json.dumps(body).encode(),
                                 timeout, headers)
        if status != 200:
            return "error", _http_error(status, text)
        event = json.loads(text)["event_id"]
        status, stream = self.get(f"/gradio_api/call/{name}/{event}", timeout)
        return _sse_result(stream)

    def queue(self, fn_index: int, data: list, session: str | None = None,
              timeout: float = 120):
        """A UI event by fn_index through the queue: ("ok", outputs) or ("error", line).
        UI events show refusals as an "Error" toast (a log message) and leave their outputs
        as they were: such an event counts as an error with the toast's line."""
        session = session or uuid.uuid4().hex[:11]
        body = {"data": data, "fn_index": fn_index, "session_hash": session,
                "event_data": None, "trigger_id": None}
        status, text = self.post("/gradio_api/queue/join", json.dumps(body).encode(), timeout)
        if status != 200:
            return "error", _http_error(status, text)
        event = json.loads(text)["event_id"]
        status, stream = self.get(f"/gradio_api/queue/data?session_hash={session}", timeout)
        toasts = []
        for line in stream.splitlines():
            if not line.startswith("data:"):
                continue
            msg = json.loads(line[5:])
            if msg.get("event_id") == event and msg.get("msg") == "log" \
                    and msg.get("title") == "Error":
                toasts.append(msg.get("log"))
            if msg.get("event_id") == event and msg.get("msg") == "process_completed":
                out = msg.get("output") or {}
                if msg.get("success") and not toasts:
                    return "ok", out.get("data")
                return "error", toasts[0] if toasts else out.get("error")
        return "error", None

    def fn_index(self, api_name: str) -> int:
        for dep in self.config["dependencies"]:
            if dep.get("api_name") == api_name:
                return dep["id"]
        raise KeyError(api_name)

    def trace_seconds(self) -> float:
        t0 = time.perf_counter()
        kind, value = self.call("trace", "hi", 2, "")
        assert kind == "ok", value
        return time.perf_counter() - t0

    def close(self):
        stop_app(self.proc)


def _http_error(status: int, text: str) -> str:
    try:
        msg = json.loads(text).get("error") or json.loads(text).get("detail")
    except (ValueError, AttributeError):
        msg = None
    assert status < 500, (status, text[:300])
    return msg if isinstance(msg, str) else f"HTTP {status}"


def _sse_result(stream: str):
    kind, data = None, None
    for line in stream.splitlines():
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data = json.loads(line[5:])
    if kind == "complete":
        return "ok", data[0] if isinstance(data, list) and len(data) == 1 else data
    if kind == "error":
        return "error", (data or {}).get("error") if isinstance(data, dict) else data
    return "error", None


def one_line(message) -> bool:
    return isinstance(message, str) and message.strip() and "\n" not in message.strip() \
        and "Traceback" not in message


def refused(result, fragment: str = "") -> str:
    kind, msg = result
    assert kind == "error" and one_line(msg), result
    assert fragment.lower() in msg.lower(), msg
    return msg


@pytest.fixture(scope="module")
def open_server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("open"), EXPLORER_HOSTED_RATE=10**6,
               EXPLORER_HOSTED_BURST=10**5, EXPLORER_HOSTED_ADDRESS_RATE=10**6,
               EXPLORER_HOSTED_GLOBAL_RATE=10**6, EXPLORER_HOSTED_MAX_SEARCH=5000,
               EXPLORER_HOSTED_MAX_JOBS=2)
    yield s
    s.close()


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("strict"), EXPLORER_HOSTED_RATE=30,
               EXPLORER_HOSTED_BURST=4, EXPLORER_HOSTED_ADDRESS_RATE=30,
               EXPLORER_HOSTED_GLOBAL_RATE=6000, EXPLORER_HOSTED_MAX_JOBS=1,
               EXPLORER_HOSTED_MAX_JOBS_PER_ADDRESS=2, EXPLORER_HOSTED_MAX_SEARCH=20000)
    yield s
    s.close()


def wait_status(server, job, session, want, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        kind, st = server.call("search_status", job, session=session)
        assert kind == "ok", st
        if st["status"] in want:
            return st
        time.sleep(0.3)
    raise AssertionError(f"job {job} never reached {want}")


# -- 1. reading another visitor's results ---------------------------------------------------
def test_no_cross_user_reads(open_server):
    s = open_server
    victim, attacker = uuid.uuid4().hex[:11], uuid.uuid4().hex[:11]
    kind, out = s.call("search_start", PROMPT, "Sure, here is", 4, -0.22, 1, 0, "fast", 8,
                       "keyword", session=victim)
    assert kind == "ok", out
    job = out["job_id"]
    done = wait_status(s, job, victim, ("done", "failed"))
    assert "session" not in done and victim not in json.dumps(done)
    # the attacker knows the job id (say it leaked): it gets the same answer as for none
    for name in ("search_status", "search_cancel", "search_resume"):
        msg = refused(s.call(name, job, session=attacker), "no job with that id")
        assert msg == refused(s.call(name, uuid.uuid4().hex, session=attacker))
    # nothing the attacker can list names a session or a job
    kind, routes = s.call("routes", "", "", "", "", 500, session=attacker)
    assert kind == "ok"
    text = json.dumps(routes)
    assert victim not in text and job not in text and '"session"' not in text
    assert all("job_id" not in r["meta"] for r in routes)
    assert s.trace_seconds() < 10


# -- 2. one request takes the server down ----------------------------------------------------
@pytest.mark.parametrize("args,fragment", [
    ((PROMPT, "x " * 50_000, 4, -0.22, 1, 0, "fast", 8, "keyword"), "characters"),
    ((PROMPT, "Sure " * 200, 4, -0.22, 1, 0, "fast", 8, "keyword"), "tokens"),
    ((PROMPT, "Sure", 10**30, -0.22, 1, 0, "fast", 8, "keyword"), "candidates"),
    ((PROMPT, "Sure", 4, -0.22, 10**30, 0, "fast", 8, "keyword"), "max_iters"),
    ((PROMPT, "Sure", 4, -0.22, 1, 10**64, "fast", 8, "keyword"), "seed"),
    ((PROMPT, "Sure", 4, -0.22, 1, 10**100, "fast", 8, "keyword"), "seed"),
    ((PROMPT, "Sure", 4, -0.22, 1, 0, "warp", 8, "keyword"), "engine"),
    ((PROMPT, "Sure\ud800", 4, -0.22, 1, 0, "fast", 8, "keyword"), "surrogate"),
    ((PROMPT, "Sure", 4, float("inf"), 1, 0, "fast", 8, "keyword"), "threshold"),
])
def test_bad_searches_are_refused_at_submission(open_server, args, fragment):
    t0 = time.perf_counter()
    refused(open_server.call("search_start", *args, session=uuid.uuid4().hex[:11]), fragment)
    assert time.perf_counter() - t0 < 10
    assert open_server.trace_seconds() < 10


def test_huge_routes_and_bodies_are_refused_fast(open_server):
    s = open_server
    edits = [{"layer": 0, "position": 0, "experts": [0, 1], "mode": "force"}] * 200_000
    big = json.dumps({"edits": edits})
    t0 = time.perf_counter()
    status, text = s.post("/gradio_api/call/trace", json.dumps(
        {"data": ["hi", 2, big]}).encode())
    assert status == 413 and one_line(json.loads(text)["error"])
    moderate = json.dumps({"edits": edits[:12_000]})  # under the body cap, over the edits cap
    refused(s.call("trace", "hi", 2, moderate), "edits")
    refused(s.call("trace", "hi", 2, json.dumps({"edits": edits[:500]})), "edits")  # hosted
    status, _ = s.post("/gradio_api/call/trace", json.dumps(
        {"data": ["x" * 5_000_000, 2, ""]}).encode())
    assert status == 413
    assert time.perf_counter() - t0 < 20
    assert s.trace_seconds() < 10


def test_cancel_takes_effect_within_seconds(open_server):
    s = open_server
    me = uuid.uuid4().hex[:11]
    kind, out = s.call("search_start", PROMPT, "Sure, here is", 64, -0.0001, 3, 0,
                       "reference", 8, "keyword", session=me)
    assert kind == "ok", out
    job = out["job_id"]
    wait_status(s, job, me, ("running",))
    time.sleep(1.0)
    t0 = time.perf_counter()
    assert s.call("search_cancel", job, session=me)[0] == "ok"
    st = wait_status(s, job, me, ("cancelled", "done"), timeout=30)
    assert st["status"] == "cancelled" and time.perf_counter() - t0 < 10
    assert s.trace_seconds() < 10


# -- 3. doors around the policy ---------------------------------------------------------------
def test_research_events_pass_the_policy(open_server):
    s = open_server
    curve = s.fn_index("on_rosais_uncertainty")
    # the report's case: 8 prompts x 128 masks x 6 layers = 6,144 passes, budget 5,000
    eight = "\n".join(f"{PROMPT} ({i})" for i in range(8))
    refused(s.queue(curve, [eight, 3, 128, 0, 0.5, "box", 8, "keyword"]), "forward passes")
    defense = s.fn_index("on_defense")  # and F-SOUR at 32 candidates x 5 restarts
    refused(s.queue(defense, [PROMPT, "", "", PROMPT, "", ["fsour"], 64, 2, 32, 5, 8,
                              "keyword", "protect", None]), "forward passes")
    assert s.trace_seconds() < 10


def test_visitors_cannot_swap_the_model(open_server):
    s = open_server
    load = s.fn_index("load_new")
    refused(s.queue(load, [" demo "]), "turned off")
    refused(s.queue(load, ["/etc/passwd"]), "not allowed")
    assert s.trace_seconds() < 10


# -- 4. caps that reset --------------------------------------------------------------------------
def test_rotating_sessions_gains_nothing(strict_server):
    s = strict_server
    refill = 30 / 60  # EXPLORER_HOSTED_ADDRESS_RATE, per second
    time.sleep(3)  # a full bucket for this client address
    ok, t0 = 0, time.monotonic()
    for i in range(30):  # a new session every time, as a rotating client would
        kind, _ = s.call("trace", "hi", 0, "", session=uuid.uuid4().hex[:11])
        if kind == "ok":
            ok += 1
        else:
            refused((kind, _), "too many requests from your address")
    # the address bucket (twice a session's burst) and what refilled while the calls ran
    assert ok <= 2 * 4 + 1 + refill * (time.monotonic() - t0), ok
    # plain /call requests without a session hash draw on the same, now empty, bucket:
    # what they get is bounded by the refill alone (a slow machine may see one or two)
    ok, t0 = 0, time.monotonic()
    for i in range(10):
        kind, msg = s.call("trace", "hi", 0, "")
        if kind == "ok":
            ok += 1
        else:
            refused((kind, msg), "too many requests")
    assert ok <= 1 + refill * (time.monotonic() - t0), ok


def test_job_caps_hold_across_sessions_and_resume(strict_server):
    s = strict_server
    time.sleep(20)  # refill the address bucket
    me = uuid.uuid4().hex[:11]
    args = (PROMPT, "Sure, here is", 64, -0.0001, 3, 0, "reference", 8, "keyword")
    kind, out = s.call("search_start", *args, session=me)
    assert kind == "ok", out
    first = out["job_id"]
    refused(s.call("search_start", *args, session=me), "queued or running")  # 1 a session
    kind, out = s.call("search_start", *args, session=uuid.uuid4().hex[:11])
    assert kind == "ok", out
    refused(s.call("search_start", *args, session=uuid.uuid4().hex[:11]),
            "your address")  # 2 an address
    # cancel-then-resume counts like a new job
    assert s.call("search_cancel", first, session=me)[0] == "ok"
    wait_status(s, first, me, ("cancelled",), timeout=30)
    kind, out = s.call("search_resume", first, session=me)
    assert kind == "ok", out
    refused(s.call("search_start", *args, session=me), "queued or running")


# -- 5. small leaks and rough edges ---------------------------------------------------------------
def test_no_nulls_no_oracles(open_server):
    s = open_server
    status, text = s.post("/gradio_api/call/trace", b'{"data": []}')
    assert status == 422 and "takes 1 to 4 arguments" in json.loads(text)["error"]
    status, text = s.post("/gradio_api/call/trace", b'{"data": ["hi", 0, "", "", "again"]}')
    assert status == 422
    status, text = s.post("/gradio_api/call/no_such_endpoint", b'{"data": []}')
    assert status == 404 and one_line(json.loads(text)["error"])
    refused(s.call("trace", "hi", 0, 7), "must be text")
    refused(s.call("trace", 7, 0, ""), "must be text")
    refused(s.call("replay", 10**30, "", "", 4), "route_id")
    refused(s.call("search_status", 10**30), "must be text")
    imp = s.fn_index("do_import")
    a = refused(s.queue(imp, [None, "/etc/hostname", "", "", "any", "any"]))
    b = refused(s.queue(imp, [None, "/no/such/x.json", "", "", "any", "any"]))
    assert a.replace("/etc/hostname", "P") == b.replace("/no/such/x.json", "P")


# -- 6. storage faults at start -----------------------------------------------------------------
def test_unwritable_data_folder_stops_with_one_line(tmp_path):
    import subprocess
    import sys
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = subprocess.run([sys.executable, "app.py", "--data-dir", str(blocker / "data"),
                          "--port", str(free_port())], cwd=ROOT, env=app_env(),
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and str(blocker) in lines[0] and "--data-dir" in lines[0]
    assert "Traceback" not in out.stderr



# -- 7. the second round: the edge, identities, uploads, links, fair share, messages ----------
DENIED = ("/gradio_api/api/routes", "/gradio_api/run/rosais", "/gradio_api/api/on_generate",
          "/gradio_api/run/trace", "/gradio_api/call/on_generate", "/gradio_api/call/v2/trace",
          "/gradio_api/component_server", "/gradio_api/vibe-edit", "/gradio_api/stream/x",
          "/gradio_api/process_recording", "/login", "/gradio_api/monitoring",
          "/gradio_api/run-history/connect", "/gradio_api/profiling/clear", "/no/such/route")


def _rss(server) -> float:
    from test_concurrency import rss_mb
    return rss_mb(server.proc.pid)


def _post_stream(server, path: str, size: int, content_type: str = "application/json"):
    """POST ``size`` bytes in chunks with a declared length: (status, one line or None)."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Content-Type", content_type)
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        chunk, sent = b"[" * 65536, 0
        try:
            while sent < size:
                conn.send(chunk[:min(len(chunk), size - sent)])
                sent += len(chunk)
        except OSError:  # the server answered and closed before the end: fine
            pass
        r = conn.getresponse()
        body = r.read().decode(errors="replace")
        try:
            return r.status, json.loads(body).get("error")
        except ValueError:
            return r.status, None
    except OSError:
        return None, None
    finally:
        conn.close()


def test_direct_routes_are_closed_before_their_body(open_server):
    """Finding 1: Gradio's direct routes, private events by name and every route the app
    does not need answer 404 with one line, without reading the body."""
    s = open_server
    for path in DENIED:
        status, text = s.post(path, json.dumps({"data": ["hi", 2, ""]}).encode())
        assert status == 404 and one_line(json.loads(text)["error"]), (path, status, text)
    for path in ("/gradio_api/openapi.json", "/gradio_api/user", "/gradio_api/app_id",
                 "/gradio_api/dev/reload", "/monitoring", "/gradio_api/runs"):
        assert s.get(path)[0] == 404, path
    before = _rss(s)
    for path in DENIED[:3] + ("/gradio_api/queue/join", "/gradio_api/call/trace",
                              "/gradio_api/cancel", "/gradio_api/upload"):
        status, msg = _post_stream(s, path, 6 * 1024 * 1024)
        assert status in (404, 413, None) and (msg is None or one_line(msg)), (path, status)
    assert _rss(s) - before < 50, (before, _rss(s))
    status, msg = _post_stream(s, "/gradio_api/api/routes", 300 * 1024 * 1024)
    assert status in (404, None)
    assert _rss(s) - before < 50, (before, _rss(s))
    assert s.trace_seconds() < 10


def test_deep_nesting_is_refused_before_parsing(open_server):
    """Finding 8: bodies nested 1,000 levels deep get a 4xx line, no RecursionError."""
    s = open_server
    deep = b'{"data": ["hi", 2, ' + b"[" * 1000 + b"]" * 1000 + b"]}"
    for path in ("/gradio_api/call/trace", "/gradio_api/queue/join", "/gradio_api/cancel"):
        status, text = s.post(path, deep)
        assert status == 400 and "nests deeper" in json.loads(text)["error"], (path, text)
    assert "RecursionError" not in tail(s.log, 10**7)


def test_callers_without_a_session_share_nothing(open_server):
    """Finding 2: /call/ without a session_hash is a fresh identity each time: another such
    caller cannot read or cancel a search whose id it was given."""
    s = open_server
    kind, out = s.call("search_start", PROMPT, "Sure, here is", 64, -0.0001, 3, 0,
                       "reference", 8, "keyword")
    assert kind == "ok", out
    job = out["job_id"]
    for name in ("search_status", "search_cancel"):
        refused(s.call(name, job), "no job with that id")
    # its owner (the queue's session of the call that started it) is nobody else's
    assert "anonymous" not in (s.data / "explorer.sqlite3").read_bytes().decode(errors="replace")


def test_uploads_are_bounded_and_admitted(tmp_path):
    """Finding 3: uploads have a size limit and pass the address's rate limits."""
    s = Server(tmp_path, EXPLORER_HOSTED_ADDRESS_RATE=6, EXPLORER_HOSTED_BURST=2)
    try:
        boundary = "x" + uuid.uuid4().hex

        def upload(payload: bytes):
            body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
                    f"filename=\"r.json\"\r\nContent-Type: application/json\r\n\r\n").encode() \
                + payload + f"\r\n--{boundary}--\r\n".encode()
            return s.post("/gradio_api/upload", body, headers={
                "Content-Type": f"multipart/form-data; boundary={boundary}"})
        status, text = upload(b'{"edits": []}')
        assert status == 200, text
        before = _rss(s)
        status, msg = _post_stream(s, "/gradio_api/upload", 6 * 1024 * 1024,
                                   f"multipart/form-data; boundary={boundary}")
        assert status in (413, None) and _rss(s) - before < 50
        statuses = [upload(b"{}")[0] for _ in range(8)]
        assert 429 in statuses  # the address's bucket (burst 4) runs out
        status, text = upload(b"{}")
        assert status == 429 and "too many requests" in json.loads(text)["error"]
    finally:
        s.close()


def test_owner_secret_never_on_the_wire(open_server):
    """Finding 4: owner keys come from a secret no response carries; the BrowserState key
    Gradio sends to every page is another one."""
    s = open_server
    s.trace_seconds()
    owner_secret = (s.data / ".owner_secret").read_text().strip()
    browser_key = (s.data / ".browser_state_secret").read_text().strip()
    assert owner_secret and owner_secret != browser_key
    for path in ("/config", "/", "/gradio_api/info"):
        status, text = s.get(path)
        assert status == 200 and owner_secret not in text, path


def test_planted_client_ids_own_nothing(tmp_path):
    """Finding 4: a browser's claimed id must be one this server signed."""
    from explorer.app.owners import Owners
    owners = Owners(tmp_path)
    b = owners.ensure_client({})
    mine = owners.owner(client=b["client"])
    assert owners.ensure_client(b) == b  # a signed id is kept
    # The tampered signature changes its last hex digit (to one that differs from it:
    # a fixed "0" equals the real digit once in 16 runs).
    tampered = b["client"][:-1] + ("1" if b["client"][-1] == "0" else "0")
    for planted in ("0123456789abcdef", tampered, b["client"].split(".")[0],
                    "f" * 32 + "." + "0" * 32, None, 7):
        fresh = owners.ensure_client({"client": planted, "jobs": ["x"]})
        assert fresh["client"] != planted and owners.owner(client=fresh["client"]) != mine
    with pytest.raises(ValueError, match="not issued by this server"):
        owners.owner(client="f" * 32 + "." + "0" * 32)
    assert Owners(tmp_path).owner(client=b["client"]) == mine  # the secret is kept


def test_link_bombs_are_cut_while_inflating():
    """Finding 6: a 14 KB link that inflates to 11 MB is refused after at most the edit
    cap's worth of output, in milliseconds."""
    import base64
    import resource
    import zlib

    from explorer.app.links import MAX_LINK_CHARS, LinkError, decode_edits, parse_link
    bomb = b'{"edits":[' + b"{}," * 3_700_000 + b"{}]}"
    text = base64.urlsafe_b64encode(zlib.compress(bomb, 9)).decode().rstrip("=")
    assert len(text) < MAX_LINK_CHARS and len(bomb) > 10**7
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(LinkError, match="too big"):
        decode_edits(text)
    with pytest.raises(LinkError, match="too big"):
        parse_link({"prompt": "hi", "edits": text})
    assert time.perf_counter() - t0 < 1
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 20_000  # KB


def _call_from(server, source: str, name: str, *data, session: str | None = None):
    """A named endpoint called from the loopback address ``source`` (another client)."""
    import http.client

    def request(method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300,
                                          source_address=(source, 0))
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            return r.status, r.read().decode()
        finally:
            conn.close()
    payload = {"data": list(data), **({"session_hash": session} if session else {})}
    status, text = request("POST", f"/gradio_api/call/{name}", json.dumps(payload).encode())
    if status != 200:
        return "error", _http_error(status, text)
    event = json.loads(text)["event_id"]
    return _sse_result(request("GET", f"/gradio_api/call/{name}/{event}")[1])


def test_fair_share_under_one_address_flood(tmp_path):
    """Finding 7: one address with 12 sessions asking for RoSais at just under the budget
    holds at most its share of the model; a trace from another address never waits behind
    the flood's queue: it is served within 3 times its unloaded latency or half the
    shortest flood request, whichever is longer (the flood's two running requests share
    the CPU with it; a wait in their queue would last at least one whole request)."""
    import concurrent.futures
    import statistics
    s = Server(tmp_path, EXPLORER_HOSTED_RATE=10**6, EXPLORER_HOSTED_BURST=10**5,
               EXPLORER_HOSTED_ADDRESS_RATE=10**6, EXPLORER_HOSTED_GLOBAL_RATE=10**6)
    try:
        def victim() -> float:
            t0 = time.perf_counter()
            kind, out = _call_from(s, "127.0.0.2", "trace", "hi", 16, "",
                                   session=uuid.uuid4().hex[:11])
            assert kind == "ok", out
            return time.perf_counter() - t0
        victim()
        alone = statistics.median(victim() for _ in range(5))
        stop = time.monotonic() + 25
        results: collections.Counter = collections.Counter()

        served: list[float] = []  # seconds each flood request that was served took

        def flood(i: int):
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                kind, out = _call_from(s, "127.0.0.1", "rosais", PROMPT, 830, 3, 0.5, i, 4,
                                       session=f"flood{i}")
                if kind == "ok":
                    served.append(time.perf_counter() - t0)
                results[kind if kind == "ok" else out.split(":")[0][:40]] += 1
                if kind != "ok":
                    time.sleep(0.2)
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(flood, i) for i in range(12)]
            time.sleep(6)  # the flood is under way
            loaded = [victim() for _ in range(5)]
            for f in futures:
                f.result()
        assert results["ok"] >= 1, results
        assert any("model request" in k for k in results), results
        bound = max(3 * alone, min(served) / 2)
        assert statistics.median(loaded) <= bound, (alone, loaded, served, results)
        print(f"fair share: trace alone {alone:.2f} s, under the flood {loaded}, flood "
              f"requests {served}, {results}")
    finally:
        s.close()


def test_errors_name_no_internals():
    """Finding 8: failures that are bugs or file errors say what failed, never a path, a
    class of the server's or a database message, when hosted."""
    import errno
    import sqlite3

    from explorer.app.errors import message_of
    for exc in (OSError(errno.EROFS, "Read-only file system", "/srv/secret/exports/r.json"),
                OSError(errno.ENOSPC, "No space left on device", "/srv/secret/db"),
                OSError(errno.EIO, "I/O error", "/srv/secret/x"),
                sqlite3.OperationalError("database or disk is full"),
                TypeError("unsupported operand type(s) for +: 'Foo' and 'int'")):
        msg = message_of(exc, "Export", detail=False)
        assert one_line(msg) and msg.startswith("Export failed")
        for leak in ("/srv", "secret", "OperationalError", "TypeError", "Foo", "database"):
            assert leak not in msg, (exc, msg)
    assert "TypeError" in message_of(TypeError("x"), "Export")  # a local app says more


def test_judges_the_server_does_not_offer_stay_unnamed(open_server):
    """Finding 8: an unknown judge is refused without listing the judges the server has
    but does not offer."""
    msg = refused(open_server.call("search_start", PROMPT, "Sure", 4, -0.22, 1, 0, "fast", 8,
                                   "nope", session=uuid.uuid4().hex[:11]), "not allowed")
    assert "rubric" not in msg and "classifier" not in msg


def test_values_gradio_would_refuse_are_refused_at_the_edge(open_server):
    """Finding 8 (the fuzz's log check): a choice not among a component's choices, a
    slider value out of its bounds, get a one-line 422 at the edge, not a traceback from
    Gradio's preprocessing."""
    s = open_server
    comps = {c["id"]: c for c in s.config["components"]}
    dep = next(d for d in s.config["dependencies"] if d.get("api_name") == "on_redraw")
    args = [None] * len(dep["inputs"])
    radio = next(i for i, c in enumerate(dep["inputs"]) if comps[c]["type"] == "radio")
    args[radio] = "no such view"
    refused(s.queue(dep["id"], args), "choices")
    dep = next(d for d in s.config["dependencies"] if d.get("api_name") == "run_rosais")
    args = [_default(comps[c]) for c in dep["inputs"]]
    slider = next(i for i, c in enumerate(dep["inputs"]) if comps[c]["type"] == "slider")
    args[slider] = -5
    refused(s.queue(dep["id"], args), "must lie between")
    assert "Traceback" not in tail(s.log, 10**8)


def _default(component: dict):
    return (component.get("props") or {}).get("value")


# -- the fuzz ------------------------------------------------------------------------------------
text = st.one_of(st.text(max_size=40), st.just(""), st.just("\ud800"), st.just("a\x00b"),
                 st.text(alphabet="Sure, here is", max_size=12), st.just(PROMPT))
number = st.one_of(st.integers(-3, 70), st.integers(-2**70, 2**70), st.floats(-1e3, 1e3),
                   st.just(1e308))
anything = st.one_of(text, number, st.none(), st.booleans(),
                     st.lists(st.integers(-2, 3), max_size=3))
ENDPOINTS = {
    "trace": [text, number, st.one_of(text, st.just('{"edits": []}'))],
    "generate": [text, number, text],
    "rosais": [text, number, number, number, number, number],
    "search_start": [text, text, number, number, number, number,
                     st.sampled_from(["fast", "reference", "warp", ""]), number,
                     st.sampled_from(["keyword", "rubric", "nope"])],
    "search_status": [text],
    "search_cancel": [text],
    "search_resume": [text],
    "routes": [text, text, text, text, number],
    "replay": [number, text, text, number],
}
RESEARCH = ("on_utility", "on_transfer", "on_minimal", "on_rosais_uncertainty", "on_defense")
FUZZ = dict(deadline=timedelta(seconds=120), database=None, derandomize=True,
            suppress_health_check=list(HealthCheck))


def _check(result) -> None:
    kind, value = result
    if kind == "error":
        assert one_line(value), result


@settings(max_examples=900, **FUZZ)
@given(data=st.data())
def test_fuzz_named_endpoints(open_server, data):
    name = data.draw(st.sampled_from(sorted(ENDPOINTS)))
    args = [data.draw(a) for a in ENDPOINTS[name]]
    if data.draw(st.booleans()):  # now and then any value where any argument goes
        i = data.draw(st.integers(0, len(args) - 1))
        args[i] = data.draw(anything)
    _check(open_server.call(name, *args, session=uuid.uuid4().hex[:11], timeout=120))
    COUNTS["calls"] += 1


def _component_value(component: dict):
    """A strategy for what the browser could send this component, plus odd values."""
    kind, props = component.get("type"), component.get("props") or {}
    choices = [c[1] if isinstance(c, (list, tuple)) else c for c in props.get("choices") or []]
    if kind in ("slider", "number"):
        lo, hi = props.get("minimum", 0) or 0, props.get("maximum", 8) or 8
        if (props.get("step") or 1) < 1:
            typical = st.floats(lo, hi)
        else:
            typical = st.integers(int(lo), int(min(hi, lo + 8)))
    elif kind == "checkbox":
        typical = st.booleans()
    elif kind == "checkboxgroup":
        typical = st.lists(st.sampled_from(choices), max_size=2) if choices else st.just([])
    elif kind in ("dropdown", "radio") and choices:
        typical = st.sampled_from(choices)
    else:  # text: prompts, route ids, route JSON
        typical = st.one_of(text, st.just("1, 2"), st.just('{"edits": []}'),
                            st.just(json.dumps({"edits": [{"layer": 0, "position": 1,
                                                           "experts": [0, 1],
                                                           "mode": "force"}],
                                                "info": {"prompt": PROMPT}})))
    return typical


@settings(max_examples=150, **FUZZ)
@given(data=st.data())
def test_fuzz_research_events(open_server, data):
    name = data.draw(st.sampled_from(RESEARCH))
    dep = next(d for d in open_server.config["dependencies"] if d.get("api_name") == name)
    _fuzz_event(open_server, dep, data)


def _fuzz_event(server, dep: dict, data) -> None:
    comps = {c["id"]: c for c in server.config["components"]}
    args = [data.draw(_component_value(comps[i])) for i in dep["inputs"]]
    if args and data.draw(st.integers(0, 3)) == 0:  # now and then any value anywhere
        args[data.draw(st.integers(0, len(args) - 1))] = data.draw(anything)
    _check(server.queue(dep["id"], args))
    COUNTS["calls"] += 1


@settings(max_examples=200, **FUZZ)
@given(data=st.data())
def test_fuzz_every_ui_event(open_server, data):
    """Every event the page registers (the page load included), with values the browser
    could send and odd ones."""
    deps = [d for d in open_server.config["dependencies"] if d.get("backend_fn")]
    assert len(deps) > 40
    _fuzz_event(open_server, data.draw(st.sampled_from(deps)), data)


ROUTES_TO_FUZZ = DENIED + ("/gradio_api/queue/join", "/gradio_api/call/trace",
                           "/gradio_api/call/routes", "/gradio_api/cancel", "/gradio_api/reset",
                           "/gradio_api/upload", "/config", "/", "/gradio_api/info",
                           "/gradio_api/file=/etc/passwd")  # no event streams: they stay open
json_value = st.recursive(st.one_of(st.none(), st.booleans(), number, text),
                          lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                  st.dictionaries(text, inner, max_size=4)),
                          max_leaves=12)


@settings(max_examples=250, **FUZZ)
@given(data=st.data())
def test_fuzz_every_route(open_server, data):
    """Raw HTTP to the app's routes and to those it closes: never a 500, errors in one
    line."""
    path = data.draw(st.one_of(st.sampled_from(ROUTES_TO_FUZZ),
                               st.text("abcdef/_=.-", max_size=30).map(lambda t: "/" + t)))
    if "heartbeat" in path or "queue/data" in path or path.count("/call/") and \
            path.count("/") > 3:
        return  # event streams stay open by design
    method = data.draw(st.sampled_from(["GET", "POST"]))
    if method == "GET":
        status, answer = open_server.get(path, timeout=30)
    else:
        body = data.draw(st.one_of(
            json_value.map(lambda v: json.dumps(v).encode()),
            st.fixed_dictionaries({"data": st.lists(json_value, max_size=5),
                                   "fn_index": st.integers(-2, 200),
                                   "session_hash": st.one_of(text, st.none())})
            .map(lambda v: json.dumps(v).encode()),
            st.binary(max_size=200)))
        status, answer = open_server.post(path, body, timeout=30)
    assert status < 500, (method, path, status, answer[:300])
    if status >= 400 and answer.startswith("{"):
        msg = json.loads(answer).get("error") or json.loads(answer).get("detail")
        assert msg is None or one_line(msg if isinstance(msg, str) else json.dumps(msg)), \
            answer
    COUNTS["calls"] += 1


def test_fuzz_count_and_server_still_answers(open_server):
    """Runs after the fuzz tests (file order): at least 1,000 generated calls, and the
    server still answers a trace within a few seconds."""
    if COUNTS["calls"] == 0:
        pytest.skip("the fuzz tests did not run (selected out)")
    assert COUNTS["calls"] >= 1000
    assert open_server.trace_seconds() < 10
    log = tail(open_server.log, 10**8)
    assert "Traceback" not in log, log[log.index("Traceback") - 2000:][:6000]
