"""The SQLite route library and job table (real SQLite files under tmp_path)."""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
import threading
from pathlib import Path

import pytest

from explorer.core.route import Route
from explorer.storage.library import (
    DB_NAME,
    SCHEMA_VERSION,
    RouteStore,
    StoredRoute,
    UNRESTRICTED,
    StoreError,
    default_data_dir,
)


@pytest.fixture
def store(tmp_path):
    s = RouteStore(tmp_path / "data" / DB_NAME)
    yield s
    s.close()


def make_route(n: int = 2) -> Route:
    r = Route(info={"model": "tiny", "seed": 3})
    for i in range(n):
        r.force(i % 2, i, [i % 8, (i + 1) % 8])
    return r.mask(1, [7])


def test_default_data_dir(monkeypatch, tmp_path):
    from explorer.settings import Settings
    setting = Settings.from_env({"EXPLORER_DATA_DIR": str(tmp_path / "x")}).data_dir
    assert default_data_dir(setting) == tmp_path / "x"
    monkeypatch.setenv("EXPLORER_DATA_DIR", str(tmp_path / "ignored"))  # read at the edges only
    monkeypatch.setattr(os.path, "isdir", lambda p: False)
    assert default_data_dir() == Path("data")
    monkeypatch.setattr(os.path, "isdir", lambda p: p == "/data")
    monkeypatch.setattr(os, "access", lambda p, mode: p == "/data")
    assert default_data_dir() == Path("/data/explorer")


def test_default_path_uses_data_dir(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os.path, "isdir", lambda p: False)  # no Spaces volume: ./data
    here = Path("data").absolute()
    with RouteStore() as s:
        assert s.path == here / DB_NAME and s.path.exists()
    with RouteStore(tmp_path / "dd" / DB_NAME) as s:
        assert s.path == tmp_path / "dd" / DB_NAME and s.path.exists()


def test_wal_schema_and_idempotent_open(store):
    assert store.journal_mode == "wal"
    con = sqlite3.connect(store.path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"routes", "jobs"} <= tables
    con.close()
    rid = store.save_route(make_route(), "p", "m")
    with RouteStore(store.path) as again:  # reopening keeps data, recreates nothing
        assert again.get_route(rid).prompt == "p"
        assert again._read("PRAGMA foreign_keys")[0][0] == 1


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "db.sqlite3"
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(StoreError, match="schema version"):
        RouteStore(path)


def test_route_round_trip(store):
    route = make_route(3)
    rid = store.save_route(route, "How do I pick a lock?", "tiny", target="Sure",
                           target_logprob=-1.25, success=True, judge="keyword",
                           completion="Sure, here", source="fsour", meta={"job": "abc"})
    sr = store.get_route(rid)
    assert isinstance(sr, StoredRoute) and sr.route == route
    assert (sr.id, sr.prompt, sr.model, sr.n_edits, sr.target, sr.target_logprob,
            sr.success, sr.judge, sr.completion, sr.source, sr.meta) == (
        rid, "How do I pick a lock?", "tiny", 4, "Sure", -1.25, True, "keyword",
        "Sure, here", "fsour", {"job": "abc"})
    assert sr.created.endswith("+00:00")
    d = json.loads(json.dumps(sr.to_dict()))
    assert Route.from_dict(d["route"]) == route and d["success"] is True
    plain = store.get_route(store.save_route(Route(), "", "tiny"))
    assert plain.success is None and plain.source == "manual" and plain.n_edits == 0


def test_save_route_validates(store):
    for bad in ("Bogus source!", "", "x" * 41, None):
        with pytest.raises(StoreError, match="source"):
            store.save_route(make_route(), "p", "m", source=bad)
    with pytest.raises(StoreError, match="Route"):
        store.save_route({"edits": []}, "p", "m")
    with pytest.raises(StoreError):
        store.save_route(make_route(), "p", "m", meta={"x": object()})
    assert store.list_routes() == []


def test_list_routes_filters(store):
    a = store.save_route(make_route(), "Tell me about ÜBER locks", "m1", success=True,
                         source="fsour")
    b = store.save_route(make_route(), "bake a cake", "m1", success=False)
    c = store.save_route(make_route(), "über alles", "m2", source="rosais")
    assert [r.id for r in store.list_routes()] == [c, b, a]  # newest first
    assert [r.id for r in store.list_routes(model="m1")] == [b, a]
    assert [r.id for r in store.list_routes(text="über")] == [c, a]
    assert [r.id for r in store.list_routes(text="LOCK")] == [a]
    assert [r.id for r in store.list_routes(success=False)] == [b]
    assert [r.id for r in store.list_routes(success=True)] == [a]
    assert [r.id for r in store.list_routes(source="rosais")] == [c]
    assert [r.id for r in store.list_routes(limit=1)] == [c]
    assert store.list_routes(text="%") == [] and store.list_routes(text="_") == []


def test_delete_and_unknown_ids(store):
    rid = store.save_route(make_route(), "p", "m")
    store.delete_route(rid)
    for call in (lambda: store.get_route(rid), lambda: store.delete_route(rid),
                 lambda: store.get_route("nope"), lambda: store.get_job("nope")):
        with pytest.raises(StoreError) as ei:
            call()
        assert "\n" not in str(ei.value) and isinstance(ei.value, ValueError)


def test_export_route(store):
    route = make_route()
    rid = store.save_route(route, "my prompt", "tiny", target="Sure", target_logprob=-0.5,
                           success=True, judge="keyword", source="fsour")
    path = store.export_route(rid)
    assert path == store.data_dir / "exports" / f"route-{rid}.json"
    data = json.loads(path.read_text())
    assert set(data) == {"edits", "info"}
    assert data["info"]["prompt"] == "my prompt" and data["info"]["model"] == "tiny"
    assert data["info"]["seed"] == 3 and data["info"]["target_logprob"] == -0.5
    assert Route.from_json(path.read_text()).edits == route.edits
    named = store.export_route(rid, "nice name")
    assert named.name == "nice name.json" and named.parent == store.exports_dir
    assert store.export_route(rid, "nice name.json") == named  # overwrite is fine
    (store.exports_dir / "taken.json").mkdir()
    with pytest.raises(StoreError, match="cannot write"):
        store.export_route(rid, "taken.json")
    assert [p.name for p in store.exports_dir.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("name", ["../evil.json", "/tmp/evil.json", "a/b.json", "..",
                                  "sub\\x.json", "", "x\x00.json"])
def test_export_rejects_escapes(store, name):
    rid = store.save_route(make_route(), "p", "m")
    with pytest.raises(StoreError):
        store.export_route(rid, name)
    assert not (store.data_dir / "evil.json").exists()


def test_export_does_not_follow_symlinks(store, tmp_path):
    rid = store.save_route(make_route(), "p", "m")
    outside = tmp_path / "outside.json"
    outside.write_text("keep")
    store.exports_dir.mkdir(parents=True, exist_ok=True)
    (store.exports_dir / "link.json").symlink_to(outside)
    with pytest.raises(StoreError, match="escapes"):
        store.export_route(rid, "link.json")
    assert outside.read_text() == "keep"
    (store.exports_dir / "link.json").unlink()
    store.exports_dir.rmdir()
    store.exports_dir.symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(StoreError, match="symlink"):
        store.export_route(rid, "x.json")
    assert not (tmp_path / "x.json").exists()


def test_import_round_trip(store):
    route = make_route()
    rid = store.save_route(route, "the prompt", "tiny", target="Sure", target_logprob=-0.25,
                           success=False, judge="keyword", completion="no", source="fsour")
    path = store.export_route(rid)
    assert store.import_route(path) == rid  # the same route, prompt and model: stored once
    store.delete_route(rid)
    first = None
    for arg in (path, str(path), "exports/" + path.name):
        new = store.get_route(store.import_route(arg))
        first = first or new.id
        assert new.id == first  # imported once, then found again
        assert new.source == "import" and new.route.edits == route.edits
        assert (new.prompt, new.model, new.target, new.target_logprob, new.success,
                new.judge, new.completion) == ("the prompt", "tiny", "Sure", -0.25, False,
                                               "keyword", "no")
        assert new.meta["original_source"] == "fsour"
    text = route.to_json()
    sr = store.get_route(store.import_route(text))
    assert sr.route == route and sr.prompt == "" and sr.model == "tiny"
    assert sr.id != first  # another prompt: another route
    assert store.get_route(store.import_route(text.encode())).route == route
    store.imports_dir.mkdir()
    (store.imports_dir / "mine.json").write_text(json.dumps(
        {"edits": [{"layer": 1, "position": None, "experts": [2], "mode": "mask"}],
         "info": {"prompt": "hi"}}))
    for arg in ("mine.json", "imports/mine.json", store.imports_dir / "mine.json"):
        assert store.get_route(store.import_route(arg)).prompt == "hi"


def test_import_rejects_bad_input(store, tmp_path):
    store.imports_dir.mkdir(parents=True)
    outside = tmp_path / "outside.json"
    outside.write_text(make_route().to_json())
    (store.imports_dir / "evil.pkl").write_bytes(pickle.dumps({"edits": []}))
    (store.imports_dir / "evil.json").write_bytes(pickle.dumps({"edits": []}))
    (store.imports_dir / "text.json").write_text("not json at all")
    (store.imports_dir / "link.json").symlink_to(outside)
    (store.data_dir / "loose.json").write_text(make_route().to_json())
    cases = {
        str(outside): "refused", "../outside.json": "refused", "imports/../loose.json":
        "refused", "loose.json": "refused", "link.json": "refused",
        "evil.pkl": ".json", "evil.json": "JSON", "text.json": "JSON",
        "missing.json": "no import file", "{not json": "JSON", "[1, 2]": "not a route",
        '{"edits": [{"layer": 0}]}': "not a route", b"\x80\x03}q": "UTF-8",
        store.path: "refused", "/etc/hostname": "refused", "/no/such/file.json": "refused",
    }
    for arg, match in cases.items():
        with pytest.raises(StoreError, match=match):
            store.import_route(arg)
    # no oracle: a server file that exists and one that does not read the same
    msgs = {}
    for arg in ("/etc/hostname", "/no/such/dir/x.json"):
        with pytest.raises(StoreError) as exc:
            store.import_route(arg)
        msgs[arg] = str(exc.value).replace(arg, "PATH")
    assert len(set(msgs.values())) == 1
    assert store.list_routes() == []


def test_concurrent_writers(store):
    errors: list[BaseException] = []
    job = store.create_job("fsour", {"prompt": "p"})

    def shared(k):  # one shared store object used from 4 threads
        try:
            for i in range(40):
                store.save_route(make_route(1 + i % 3), f"t{k}-{i}", "m", meta={"i": i})
                store.update_job(job, progress={"thread": k, "i": i})
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def separate(k):  # 4 connections to the same file (like several processes)
        try:
            with RouteStore(store.path) as own:
                for i in range(40):
                    own.save_route(make_route(1), f"s{k}-{i}", "m2")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=f, args=(k,)) for f in (shared, separate)
               for k in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    routes = store.list_routes(limit=10_000)
    assert len(routes) == 320 and len({r.id for r in routes}) == 320
    assert {r.prompt for r in routes} == {f"{p}{k}-{i}" for p in "ts" for k in range(4)
                                          for i in range(40)}
    for r in routes:  # every row whole
        assert r.n_edits == len(r.route.edits)
    assert store._read("PRAGMA integrity_check")[0][0] == "ok"
    assert store.get_job(job).progress["i"] == 39


def test_jobs_table(store):
    a = store.create_job("fsour", {"prompt": "p", "seed": 1}, session="s1")
    b = store.create_job("fsour", {"prompt": "q"}, session="s2")
    ja = store.get_job(a)
    assert len(a) == 32 and ja.status == "queued" and ja.params == {"prompt": "p", "seed": 1}
    assert ja.progress == {} and ja.state is None and ja.result is None
    assert store.update_job(a, status="running", progress={"iteration": 1},
                            state={"step": 3}, error=None)
    ja = store.get_job(a)
    assert (ja.status, ja.progress, json.loads(ja.state)) == ("running", {"iteration": 1},
                                                              {"step": 3})
    assert ja.updated >= ja.created
    assert not store.update_job(b, status="running", where_status="running")
    assert store.get_job(b).status == "queued"
    assert [j.id for j in store.list_jobs()] == [b, a]
    assert [j.id for j in store.list_jobs(oldest_first=True)] == [a, b]
    assert [j.id for j in store.list_jobs(session="s1")] == [a]
    assert [j.id for j in store.list_jobs(status=("queued", "done"))] == [b]
    assert store.mark_interrupted() == [a] and store.get_job(a).status == "interrupted"
    assert store.mark_interrupted() == []
    d = json.loads(json.dumps(store.get_job(a).to_dict(include_state=True)))
    assert d["has_state"] and json.loads(d["state"]) == {"step": 3}
    for bad in ({"status": "weird"}, {"colour": "red"}):
        with pytest.raises(StoreError):
            store.update_job(a, **bad)
    with pytest.raises(StoreError, match="no job"):
        store.update_job("missing", status="done")
    with pytest.raises(StoreError, match="kind"):
        store.create_job("Bake a cake!", {})  # the store takes any attack name


def test_finish_job_is_one_transaction(store):
    job = store.create_job("fsour", {"prompt": "p"})
    store.update_job(job, status="running")
    with pytest.raises(StoreError):  # the job update fails after the route insert
        store.finish_job(job, make_route(), "p", "m", status="bogus")
    assert store.list_routes() == []
    assert store.finish_job(job, make_route(), "p", "m", where_status="queued",
                            status="done") is None
    assert store.list_routes() == [] and store.get_job(job).status == "running"
    rid = store.finish_job(job, make_route(), "p", "m", route_fields={"success": True},
                           where_status="running", status="done", result={"ok": 1})
    j = store.get_job(job)
    assert (j.status, j.route_id, j.result) == ("done", rid, {"ok": 1})
    assert store.get_route(rid).source == "fsour" and store.get_route(rid).success
    store.delete_route(rid)  # the job keeps its result, loses the link
    assert store.get_job(job).route_id is None


def test_identical_routes_are_stored_once_and_no_op_searches_not_at_all(store):
    a = store.save_route(make_route(), "p", "m", source="manual")
    shuffled = Route(edits=list(reversed(make_route().edits)))
    assert store.save_route(shuffled, "p", "m", source="fsour") == a  # same edits, any order
    assert store.find_route(make_route(), "p", "m") == a
    assert store.save_route(make_route(), "p", "other model") != a
    assert store.save_route(make_route(), "another prompt", "m") != a
    assert store.find_route(make_route(1), "p", "m") is None  # other edits
    job = store.create_job("fsour", {"prompt": "p"})
    assert store.finish_job(job, Route(), "p", "m", status="done") is None
    assert store.get_job(job).route_id is None and store.get_job(job).status == "done"
    assert len(store.list_routes()) == 3


def test_a_deleted_route_comes_back_under_its_id(store):
    rid = store.save_route(make_route(), "p", "m", success=True, completion="c")
    old = store.get_route(rid)
    store.delete_route(rid)
    assert store.restore_route(old) == rid
    back = store.get_route(rid)
    assert (back.route, back.prompt, back.success, back.completion, back.created) == \
        (old.route, old.prompt, old.success, old.completion, old.created)


def test_schema_1_library_migrates_to_3(tmp_path):
    """A library made by an explorer with schema version 1 (four fixed route sources, a
    CHECK that SQLite cannot alter) opens with its routes and jobs intact, a job's route
    reference included, and then takes routes from an attack's background job; through
    version 2 its routes get no owner and are not shared."""
    import sqlite3

    from explorer.storage.library import SCHEMA_VERSION, SOURCES
    path = tmp_path / "v1.sqlite3"
    con = sqlite3.connect(path)
    con.executescript(f"""
{_old_tables(f'source IN {SOURCES}')}
        INSERT INTO routes (route_json, prompt, model, n_edits, source, created)
            VALUES ('{{"edits": [], "info": {{}}}}', 'old prompt', 'demo', 0, 'fsour', 't');
        INSERT INTO jobs (id, kind, status, params_json, route_id, created, updated)
            VALUES ('{"a" * 32}', 'fsour', 'done', '{{"prompt": "old prompt"}}', 1, 't', 't');
        PRAGMA user_version=1;""")
    con.close()
    with RouteStore(path) as s:
        assert s._read("PRAGMA user_version")[0][0] == SCHEMA_VERSION == 3
        (old,) = s.list_routes()
        assert (old.id, old.prompt, old.source) == (1, "old prompt", "fsour")
        assert (old.owner, old.shared) == (None, False)
        assert s.get_job("a" * 32).route_id == 1
        rid = s.save_route(make_route(), "p", "m", source="my_attack")
        assert s.get_route(rid).source == "my_attack"
        s.delete_route(1)  # the job's reference follows the foreign key still
        assert s.get_job("a" * 32).route_id is None
    with RouteStore(path) as s:  # opening a version-3 library again changes nothing
        assert [r.source for r in s.list_routes()] == ["my_attack"]


def _old_tables(source_check: str) -> str:
    """The routes and jobs tables as schema versions 1 and 2 made them (they differ in the
    CHECK on a route's source only)."""
    return f"""
        CREATE TABLE routes (id INTEGER PRIMARY KEY AUTOINCREMENT, route_json TEXT NOT NULL,
            prompt TEXT NOT NULL DEFAULT '', model TEXT NOT NULL DEFAULT '',
            n_edits INTEGER NOT NULL, target TEXT, target_logprob REAL,
            success INTEGER CHECK (success IN (0, 1)), judge TEXT, completion TEXT,
            source TEXT NOT NULL CHECK ({source_check}), created TEXT NOT NULL,
            meta_json TEXT NOT NULL DEFAULT '{{}}');
        CREATE INDEX routes_model ON routes(model);
        CREATE TABLE jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, session TEXT,
            status TEXT NOT NULL, params_json TEXT NOT NULL,
            progress_json TEXT NOT NULL DEFAULT '{{}}', state_json TEXT, result_json TEXT,
            error TEXT, route_id INTEGER REFERENCES routes(id) ON DELETE SET NULL,
            created TEXT NOT NULL, updated TEXT NOT NULL);"""


def _schema_2_library(path: Path) -> None:
    """A library as schema version 2 wrote it: a route found by a job, a manual one."""
    con = sqlite3.connect(path)
    con.executescript(f"""
{_old_tables('length(source) BETWEEN 1 AND 40')}
        INSERT INTO routes (route_json, prompt, model, n_edits, success, source, created,
                            meta_json)
            VALUES ('{make_route().to_json()}', 'old prompt', 'demo', 4, 1, 'fsour', 't1',
                    '{{"job_id": "{"b" * 32}"}}');
        INSERT INTO routes (route_json, prompt, model, n_edits, source, created)
            VALUES ('{{"edits": [], "info": {{}}}}', 'another', 'demo', 0, 'my_attack', 't2');
        INSERT INTO jobs (id, kind, session, status, params_json, route_id, created, updated)
            VALUES ('{"b" * 32}', 'fsour', 'o:someone', 'done', '{{"prompt": "old prompt"}}',
                    1, 't', 't');
        PRAGMA user_version=2;""")
    con.close()


def test_schema_2_library_migrates_to_3(tmp_path):
    """Version 3 adds each route's owner (none for the routes saved before) and a shared
    flag (off): the rows, their order of columns and the jobs' references stay, the CHECK
    on the flag holds, and a second open changes nothing."""
    path = tmp_path / "v2.sqlite3"
    _schema_2_library(path)
    with RouteStore(path) as s:
        assert s._read("PRAGMA user_version")[0][0] == SCHEMA_VERSION == 3
        old = s.list_routes()
        assert [(r.id, r.prompt, r.source, r.success, r.owner, r.shared) for r in old] == [
            (2, "another", "my_attack", None, None, False),
            (1, "old prompt", "fsour", True, None, False)]
        assert old[1].route == make_route() and old[1].meta == {"job_id": "b" * 32}
        assert s.get_job("b" * 32).route_id == 1
        cols = [r["name"] for r in s._read("PRAGMA table_info(routes)")]
        assert cols[-2:] == ["owner", "shared"]
        with pytest.raises(sqlite3.IntegrityError):
            s._write("UPDATE routes SET shared = 2 WHERE id = 1")
        assert s._read("SELECT name FROM sqlite_master WHERE name = 'routes_owner'")
        # what a viewer sees of the ownerless routes: the unrestricted library, or nothing
        assert [r.id for r in s.list_routes(viewer="o:x")] == []
        assert [r.id for r in s.list_routes(viewer=None)] == [2, 1]  # the ownerless
        s.delete_route(1)
        assert s.get_job("b" * 32).route_id is None
    with RouteStore(path) as s:
        assert [r.id for r in s.list_routes()] == [2]
    # a new library has the same columns, in the same order, as a migrated one
    with RouteStore(tmp_path / "new.sqlite3") as s:
        assert [r["name"] for r in s._read("PRAGMA table_info(routes)")] == cols


def test_a_failed_migration_leaves_version_2(tmp_path, monkeypatch):
    """The 2 -> 3 migration is one transaction: when it fails half-way, the library is
    still a whole version-2 library (no column added), and it migrates on the next open."""
    from explorer.storage import library
    path = tmp_path / "v2.sqlite3"
    _schema_2_library(path)
    monkeypatch.setattr(library, "_OWNER_INDEX", "CREATE INDEX broken ON nowhere(x);")
    with pytest.raises(StoreError):
        RouteStore(path)
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 2
    assert "owner" not in [r[1] for r in con.execute("PRAGMA table_info(routes)")]
    con.close()
    monkeypatch.undo()
    with RouteStore(path) as s:
        assert [r.owner for r in s.list_routes()] == [None, None]


def test_owners_see_their_own_routes_and_the_shared_ones(store):
    """A viewer sees its own routes and the shared ones; another owner's private route is
    answered exactly like an unknown id, for every read and write; the default viewer (the
    CLI, scripts, the app when not hosted) sees everything."""
    a = store.save_route(make_route(), "alice's prompt", "m", owner="o:alice")
    b = store.save_route(make_route(1), "bob's prompt", "m", owner="o:bob")
    c = store.save_route(make_route(3), "nobody's", "m")
    assert [r.id for r in store.list_routes()] == [c, b, a]
    assert [r.id for r in store.list_routes(viewer="o:alice")] == [a]
    assert [r.id for r in store.list_routes(viewer="o:bob", text="PROMPT")] == [b]
    assert [r.id for r in store.list_routes(viewer=None)] == [c]
    assert store.get_route(a, viewer="o:alice").prompt == "alice's prompt"
    unknown = 999

    def refusal(fn, rid):
        with pytest.raises(StoreError) as e:
            fn(rid)
        return str(e.value).replace(str(rid), "ID")

    for fn in (lambda i: store.get_route(i, viewer="o:bob"),
               lambda i: store.export_route(i, viewer="o:bob"),
               lambda i: store.delete_route(i, owner="o:bob"),
               lambda i: store.share_route(i, "o:bob")):
        assert refusal(fn, a) == refusal(fn, unknown) == "no route with id ID"
    assert not list(store.exports_dir.glob("*.json"))
    # the owner shares it: everyone sees it, marked shared, without the owner key
    store.share_route(a, "o:alice")
    sr = store.get_route(a, viewer="o:bob")
    assert sr.shared and "owner" not in sr.to_dict() and sr.to_dict()["shared"] is True
    assert "o:alice" not in json.dumps(sr.to_dict()) and "o:alice" not in repr(sr)
    assert [r.id for r in store.list_routes(viewer="o:bob")] == [b, a]
    assert [r.id for r in store.list_routes(viewer=None)] == [c, a]
    assert store.export_route(a, viewer="o:bob").exists()
    # ...but only its owner may unshare or delete it
    for fn in (lambda: store.share_route(a, "o:bob", shared=False),
               lambda: store.delete_route(a, owner="o:bob")):
        with pytest.raises(StoreError, match=f"route #{a} is not yours"):
            fn()
    assert store.get_route(a).shared
    store.share_route(a, "o:alice", shared=False)
    with pytest.raises(StoreError, match=f"no route with id {a}"):
        store.get_route(a, viewer="o:bob")
    store.delete_route(a, owner="o:alice")
    with pytest.raises(StoreError, match=f"no route with id {a}"):
        store.get_route(a)
    # the ownerless route is shared by whoever runs the library (or the ownerless viewer)
    store.share_route(c, UNRESTRICTED)
    assert [r.id for r in store.list_routes(viewer="o:alice")] == [c]
    store.share_route(c, None, shared=False)
    assert store.list_routes(viewer="o:alice") == []
    with pytest.raises(StoreError, match="owner"):
        store.save_route(make_route(), "p", "m", owner="")


def test_identical_routes_are_stored_once_per_owner(store):
    """Saving the same route again returns its id for the same owner only: another owner
    who saves it gets a route of their own (not the id of someone's private route)."""
    a = store.save_route(make_route(), "p", "m", owner="o:alice")
    assert store.save_route(make_route(), "p", "m", owner="o:alice") == a
    b = store.save_route(make_route(), "p", "m", owner="o:bob")
    n = store.save_route(make_route(), "p", "m")
    assert len({a, b, n}) == 3
    assert store.find_route(make_route(), "p", "m", owner="o:bob") == b
    assert store.find_route(make_route(), "p", "m", owner="o:carol") is None
    assert store.find_route(make_route(), "p", "m") == a  # any owner's
    job = store.create_job("fsour", {"prompt": "p"}, session="o:bob")
    assert store.finish_job(job, make_route(), "p", "m", owner="o:bob", status="done") == b
    imp = store.import_route(store.export_route(a).read_text(), owner="o:carol")
    assert store.get_route(imp, viewer="o:carol").source == "import"
    assert store.get_route(imp).owner == "o:carol"


def test_private_exports_go_in_unguessable_folders(store):
    """A private export lands in a new folder with a random name under exports/; the
    route's JSON is the same as a plain export's, and a path import reads it back."""
    rid = store.save_route(make_route(), "p", "tiny", owner="o:alice")  # the route's model
    plain = store.export_route(rid)
    one = store.export_route(rid, viewer="o:alice", private=True)
    two = store.export_route(rid, viewer="o:alice", private=True)
    assert one.name == two.name == plain.name == f"route-{rid}.json"
    assert one.parent != two.parent and one.parent.parent == store.exports_dir
    assert len(one.parent.name) >= 20 and oct(one.parent.stat().st_mode & 0o777) == "0o700"
    assert one.read_text() == plain.read_text()
    rel = one.relative_to(store.data_dir)
    assert store.import_route(str(rel), owner="o:alice") == rid


def test_a_restored_route_keeps_its_owner_and_flag(store):
    rid = store.save_route(make_route(), "p", "m", owner="o:alice")
    store.share_route(rid, "o:alice")
    old = store.get_route(rid)
    store.delete_route(rid, owner="o:alice")
    assert store.restore_route(old) == rid
    back = store.get_route(rid, viewer="o:bob")
    assert (back.owner, back.shared) == ("o:alice", True)
