"""SQLite route library and job table (plain ``sqlite3``, WAL mode, no ORM).

One file, ``<data dir>/explorer.sqlite3``, holds three tables:

- ``routes``: saved routes with the prompt, model, target log-prob, judge verdict and
  completion they were found with (:class:`StoredRoute`);
- ``jobs``: background searches with their parameters, progress, resumable checkpoint
  and result (:class:`JobRecord`, driven by :mod:`explorer.storage.jobs`);
- ``job_stops``: requests to stop a running job (a user's cancel, the app's shutdown),
  read by a search that runs in another process (a ZeroGPU window) and cannot see the
  app's memory (:meth:`RouteStore.request_stop`).

Every write runs in one transaction, so a crash never leaves a half-written row. One
connection is shared between threads behind a lock; other processes may open the same
file (WAL lets readers and a writer proceed together; writers wait up to 30 s).

Exports are written only under ``<data dir>/exports/``; imports are read only from
``<data dir>/imports/`` or ``exports/`` (or passed as JSON text), and only as JSON.

Owners (schema version 3): a route may belong to an owner (an opaque key the app derives
for a hosted visitor; None for routes saved before, locally or by scripts) and may be
``shared``. Reads take a ``viewer``: by default (:data:`UNRESTRICTED`) every route is
visible, as in a single-user library; given a viewer (an owner key, or None for the
ownerless), only that viewer's own routes and the routes their owners shared are, and any
other id is answered exactly like an unknown one. The owner key is stored and compared,
never returned in a route's dict.
"""

from __future__ import annotations

import enum
import json
import operator
import os
import re
import secrets
import sqlite3
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from explorer.core.errors import InputError
from explorer.core.route import Route, RouteError

SCHEMA_VERSION = 3
DB_NAME = "explorer.sqlite3"
#: The sources of the routes the explorer saves itself; a background job of another
#: attack saves its routes under the attack's name (:data:`SOURCE_NAME`).
SOURCES = ("fsour", "manual", "rosais", "import")
#: What a route's source may be: a built-in source or an attack's name.
SOURCE_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}\Z")
JOB_STATUSES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
ACTIVE_STATUSES = ("queued", "running")
MAX_IMPORT_BYTES = 5 * 1024 * 1024

# The routes table of schema version 2 (its columns); version 3 adds _OWNER_COLUMNS.
_ROUTES_V2 = """
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    route_json     TEXT NOT NULL,
    prompt         TEXT NOT NULL DEFAULT '',
    model          TEXT NOT NULL DEFAULT '',
    n_edits        INTEGER NOT NULL,
    target         TEXT,
    target_logprob REAL,
    success        INTEGER CHECK (success IN (0, 1)),
    judge          TEXT,
    completion     TEXT,
    source         TEXT NOT NULL CHECK (length(source) BETWEEN 1 AND 40),
    created        TEXT NOT NULL,
    meta_json      TEXT NOT NULL DEFAULT '{}'"""
# Added by schema version 3: who saved a route (an owner key; NULL: nobody in particular)
# and whether its owner shared it. A new table ends with them and the 2 -> 3 migration adds
# them (ALTER TABLE ... ADD COLUMN), so both have the same columns in the same order.
_OWNER_COLUMNS = ("owner TEXT", "shared INTEGER NOT NULL DEFAULT 0 CHECK (shared IN (0, 1))")
_OWNER_INDEX = "CREATE INDEX IF NOT EXISTS routes_owner ON routes(owner);"
_ROUTES_V3 = _ROUTES_V2 + "".join(f",\n    {c}" for c in _OWNER_COLUMNS)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS routes ({_ROUTES_V3}
);
CREATE INDEX IF NOT EXISTS routes_model ON routes(model);
{_OWNER_INDEX}
CREATE TABLE IF NOT EXISTS jobs (
    id            TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    session       TEXT,
    status        TEXT NOT NULL CHECK (status IN {JOB_STATUSES}),
    params_json   TEXT NOT NULL,
    progress_json TEXT NOT NULL DEFAULT '{{}}',
    state_json    TEXT,
    result_json   TEXT,
    error         TEXT,
    route_id      INTEGER REFERENCES routes(id) ON DELETE SET NULL,
    created       TEXT NOT NULL,
    updated       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_session ON jobs(session, status);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
"""
# Added after schema version 1 without a version bump: older explorers ignore the table.
_STOPS = """
CREATE TABLE IF NOT EXISTS job_stops (
    job_id    TEXT PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    reason    TEXT NOT NULL,
    requested TEXT NOT NULL
);
"""
STOP_REASONS = ("cancel", "shutdown")


class StoreError(InputError):
    """A store request that cannot be served (unknown id, bad JSON, path outside the
    data folder...); the message is one line, fit to show to a user."""


class Viewer(enum.Enum):
    """Who reads the library when no owner key is given (see :data:`UNRESTRICTED`)."""

    UNRESTRICTED = "unrestricted"


#: The default ``viewer`` of the route reads: every route is visible (a single-user
#: library: scripts, the CLI, the app when it is not hosted). Distinct from None, which is
#: the viewer without an owner key (it sees the ownerless routes and the shared ones).
UNRESTRICTED = Viewer.UNRESTRICTED
#: The longest owner key the store takes (the app's are 34 characters).
MAX_OWNER_CHARS = 200


def _owner_key(value: Any, what: str = "owner") -> str | None:
    """``value`` as an owner key (text or None), or a :class:`StoreError`."""
    if value is None or (isinstance(value, str) and 0 < len(value) <= MAX_OWNER_CHARS):
        return value
    raise StoreError(f"an {what} is None or a key of 1 to {MAX_OWNER_CHARS} characters")


def _visible(viewer: Any) -> tuple[str, tuple]:
    """The SQL condition (and its arguments) on the routes ``viewer`` may see: every one
    (:data:`UNRESTRICTED`), else the viewer's own and the shared ones."""
    if viewer is UNRESTRICTED:
        return "1", ()
    return "(owner IS ? OR shared = 1)", (_owner_key(viewer, "viewer"),)


def default_data_dir(override: str | os.PathLike | None = None) -> Path:
    """``override`` (the ``EXPLORER_DATA_DIR`` setting) when given; else ``/data/explorer``
    when ``/data`` exists and is writable (the Hugging Face Spaces persistent volume);
    else ``./data``."""
    if override:
        return Path(override).expanduser()
    if os.path.isdir("/data") and os.access("/data", os.W_OK | os.X_OK):
        return Path("/data/explorer")
    return Path("data")


def utcnow() -> str:
    """The current UTC time as ISO 8601 with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _dumps(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"value is not JSON-serialisable: {exc}") from None


def _loads(text: str | None, default: Any = None) -> Any:
    return default if text is None else json.loads(text)


@dataclass
class StoredRoute:
    """One row of the route library; ``route`` is the parsed :class:`Route`."""

    id: int
    route: Route
    prompt: str
    model: str
    n_edits: int
    target: str | None
    target_logprob: float | None
    success: bool | None
    judge: str | None
    completion: str | None
    source: str
    created: str
    meta: dict[str, Any] = field(default_factory=dict)
    shared: bool = False
    #: Who saved it (an owner key; None: nobody in particular). Compared, never shown.
    owner: str | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every column but the owner (``route`` as its public JSON
        object)."""
        return {"id": self.id, "route": self.route.to_dict(), "prompt": self.prompt,
                "model": self.model, "n_edits": self.n_edits, "target": self.target,
                "target_logprob": self.target_logprob, "success": self.success,
                "judge": self.judge, "completion": self.completion, "source": self.source,
                "created": self.created, "meta": dict(self.meta), "shared": self.shared}

    @classmethod
    def _from_row(cls, r: sqlite3.Row) -> "StoredRoute":
        return cls(id=r["id"], route=Route.from_json(r["route_json"]), prompt=r["prompt"],
                   model=r["model"], n_edits=r["n_edits"], target=r["target"],
                   target_logprob=r["target_logprob"],
                   success=None if r["success"] is None else bool(r["success"]),
                   judge=r["judge"], completion=r["completion"], source=r["source"],
                   created=r["created"], meta=_loads(r["meta_json"], {}),
                   shared=bool(r["shared"]), owner=r["owner"])


@dataclass
class JobRecord:
    """One row of the job table. ``state`` is the raw checkpoint JSON text (or None)."""

    id: str
    kind: str
    session: str | None
    status: str
    params: dict[str, Any]
    progress: dict[str, Any]
    state: str | None
    result: dict[str, Any] | None
    error: str | None
    route_id: int | None
    created: str
    updated: str

    def to_dict(self, include_state: bool = False) -> dict[str, Any]:
        """A JSON-able dict; the (possibly large) checkpoint only when asked for."""
        d = {"id": self.id, "kind": self.kind, "session": self.session,
             "status": self.status, "params": self.params, "progress": self.progress,
             "result": self.result, "error": self.error, "route_id": self.route_id,
             "created": self.created, "updated": self.updated,
             "has_state": self.state is not None}
        if include_state:
            d["state"] = self.state
        return d

    @classmethod
    def _from_row(cls, r: sqlite3.Row) -> "JobRecord":
        return cls(id=r["id"], kind=r["kind"], session=r["session"], status=r["status"],
                   params=_loads(r["params_json"], {}), progress=_loads(r["progress_json"], {}),
                   state=r["state_json"], result=_loads(r["result_json"]), error=r["error"],
                   route_id=r["route_id"], created=r["created"], updated=r["updated"])


def _edits_key(route: Route) -> list[str]:
    """A route's edits as a sorted list of canonical JSON texts (order-free comparison)."""
    return sorted(json.dumps(e.to_dict(), sort_keys=True) for e in route.edits)


def _casefold(s: str | None) -> str | None:
    return None if s is None else s.casefold()


class RouteStore:
    """The route library and job table in one SQLite file (see module docs).

    ``path``: the database file; default ``<default_data_dir()>/explorer.sqlite3``.
    The data folder (parent of the file) also holds ``exports/`` and ``imports/``.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = (Path(path) if path is not None else default_data_dir() / DB_NAME).absolute()
        self.data_dir = self.path.parent
        self._lock = threading.RLock()
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False)
            self._conn.row_factory = sqlite3.Row
            self._conn.create_function("casefold", 1, _casefold, deterministic=True)
            with self._lock:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.execute("PRAGMA foreign_keys=ON")
                self._migrate()
                self._add_stops()
        except (OSError, sqlite3.Error) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise StoreError(f"cannot open the route library in {self.data_dir}: {reason}; "
                             "make the folder writable (and free some disk space), or "
                             "choose another with --data-dir / EXPLORER_DATA_DIR") from None

    # -- plumbing -----------------------------------------------------------------------
    def _migrate(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {version}; this explorer "
                             f"knows up to {SCHEMA_VERSION} (upgrade the explorer)")
        if version == 0:  # a new file (idempotent: CREATE ... IF NOT EXISTS)
            try:
                self._conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA +
                                         f"PRAGMA user_version={SCHEMA_VERSION};COMMIT;")
            except sqlite3.Error:
                if self._conn.in_transaction:
                    self._conn.rollback()
                raise
            return
        if version == 1:
            self._migrate_1_to_2()
        if version <= 2:
            self._migrate_2_to_3()

    def _migrate_1_to_2(self) -> None:
        """Version 2 lets a route's source be an attack's name (version 1 allowed four
        fixed sources): the routes table is rebuilt (SQLite cannot change a CHECK), its
        rows copied as they are, in one transaction with foreign keys off, so the jobs'
        references to routes stay."""
        self._conn.execute("PRAGMA foreign_keys=OFF")
        try:
            self._conn.executescript(
                f"BEGIN IMMEDIATE;CREATE TABLE routes_v2 ({_ROUTES_V2});"
                "INSERT INTO routes_v2 SELECT * FROM routes;"
                "DROP TABLE routes; ALTER TABLE routes_v2 RENAME TO routes;"
                "CREATE INDEX IF NOT EXISTS routes_model ON routes(model);"
                "PRAGMA user_version=2;COMMIT;")
        except sqlite3.Error:
            if self._conn.in_transaction:
                self._conn.rollback()
            raise
        finally:
            self._conn.execute("PRAGMA foreign_keys=ON")

    def _migrate_2_to_3(self) -> None:
        """Version 3 gives routes an owner (NULL for every route saved before) and a
        ``shared`` flag (0): two columns added in one transaction, rows and references
        kept. Another process that migrated first (the version is read again inside the
        transaction) leaves nothing to do."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            if self._conn.execute("PRAGMA user_version").fetchone()[0] == 2:
                for column in _OWNER_COLUMNS:
                    self._conn.execute(f"ALTER TABLE routes ADD COLUMN {column}")
                self._conn.execute(_OWNER_INDEX)
                self._conn.execute("PRAGMA user_version=3")
            self._conn.commit()
        except sqlite3.Error:
            if self._conn.in_transaction:
                self._conn.rollback()
            raise

    def _add_stops(self) -> None:
        if not self._conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                                  "name = 'job_stops'").fetchone():
            self._conn.executescript(_STOPS)

    def _write(self, sql: str, args: Iterable[Any] = ()) -> sqlite3.Cursor:
        with self._lock, self._conn:  # one transaction: committed or rolled back
            return self._conn.execute(sql, tuple(args))

    def _read(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, tuple(args)).fetchall()

    @property
    def journal_mode(self) -> str:
        """The SQLite journal mode in use (``wal``)."""
        return self._read("PRAGMA journal_mode")[0][0]

    def close(self) -> None:
        """Close the connection (the store cannot be used afterwards)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "RouteStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- routes -------------------------------------------------------------------------
    def save_route(self, route: Route, prompt: str, model: str, *, target: str | None = None,
                   target_logprob: float | None = None, success: bool | None = None,
                   judge: str | None = None, completion: str | None = None,
                   source: str = "manual", meta: dict | None = None,
                   owner: str | None = None) -> int:
        """Save ``route`` with its provenance, as ``owner``'s (an owner key; None: nobody
        in particular) and not shared; returns the new route id. A route with the same
        edits for the same prompt and model is stored once per owner: saving it again
        returns the id it already has (see :meth:`find_route`)."""
        with self._lock, self._conn:
            return self._insert_route(route, prompt, model, target, target_logprob, success,
                                      judge, completion, source, meta, owner)

    def _insert_route(self, route, prompt, model, target, target_logprob, success, judge,
                      completion, source, meta, owner, shared=False) -> int:
        if not isinstance(route, Route):
            raise StoreError(f"save_route needs a Route, got {type(route).__name__}")
        if not isinstance(source, str) or not SOURCE_NAME.match(source):
            raise StoreError(f"a route's source is one of {SOURCES} or an attack's name, "
                             f"got {source!r}")
        owner = _owner_key(owner)
        same = self._same_route(route, prompt, model, owner)
        if same is not None:
            return same
        cur = self._conn.execute(
            "INSERT INTO routes (route_json, prompt, model, n_edits, target, target_logprob,"
            " success, judge, completion, source, created, meta_json, owner, shared)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (route.to_json(), prompt or "", model or "", len(route.edits), target,
             None if target_logprob is None else float(target_logprob),
             None if success is None else int(bool(success)), judge, completion, source,
             utcnow(), _dumps(meta or {}), owner, int(bool(shared))))
        return int(cur.lastrowid)

    def find_route(self, route: Route, prompt: str, model: str, *,
                   owner: str | None | Viewer = UNRESTRICTED) -> int | None:
        """The id of a stored route with the same edits (in any order) and system prompt
        (``info["system"]``) for the same prompt and model, or None; given an ``owner``
        (an owner key or None), only among that owner's routes (what :meth:`save_route`
        for that owner would return)."""
        with self._lock:
            return self._same_route(route, prompt, model, owner)

    def _same_route(self, route: Route, prompt: str, model: str, owner) -> int | None:
        key = _edits_key(route)
        sql = "SELECT id, route_json FROM routes WHERE prompt = ? AND model = ? AND n_edits = ?"
        args: tuple = (prompt or "", model or "", len(route.edits))
        if owner is not UNRESTRICTED:
            sql, args = sql + " AND owner IS ?", (*args, _owner_key(owner))
        for row in self._conn.execute(sql + " ORDER BY id", args).fetchall():
            other = Route.from_json(row["route_json"])
            if _edits_key(other) == key and other.system == route.system:
                return int(row["id"])
        return None

    def restore_route(self, stored: StoredRoute) -> int:
        """Put a deleted route back under its old id (undo a delete), with its owner and
        shared flag; when that id has been taken since, under a new one. Returns the id."""
        with self._lock, self._conn:
            taken = self._conn.execute("SELECT 1 FROM routes WHERE id = ?",
                                       (_int_id(stored.id),)).fetchone()
            rid = self._insert_route(stored.route, stored.prompt, stored.model, stored.target,
                                     stored.target_logprob, stored.success, stored.judge,
                                     stored.completion, stored.source, stored.meta,
                                     stored.owner, stored.shared)
            if not taken and rid != stored.id:
                self._conn.execute("UPDATE routes SET id = ?, created = ? WHERE id = ?",
                                   (stored.id, stored.created, rid))
                rid = stored.id
            return rid

    def get_route(self, route_id: int, *,
                  viewer: str | None | Viewer = UNRESTRICTED) -> StoredRoute:
        """The stored route ``route_id`` if ``viewer`` may see it (see the module docs);
        :class:`StoreError` "no route with id ..." when there is none, and the same when
        it is another owner's and not shared."""
        cond, args = _visible(viewer)
        rows = self._read(f"SELECT * FROM routes WHERE id = ? AND {cond}",
                          (_int_id(route_id), *args))
        if not rows:
            raise StoreError(f"no route with id {route_id}")
        return StoredRoute._from_row(rows[0])

    def list_routes(self, model: str | None = None, text: str | None = None,
                    success: bool | None = None, source: str | None = None,
                    limit: int = 500, *,
                    viewer: str | None | Viewer = UNRESTRICTED) -> list[StoredRoute]:
        """Routes ``viewer`` may see (see the module docs), newest first, filtered by model,
        prompt substring (case-insensitive), success and source."""
        cond, vargs = _visible(viewer)
        where, args = ([], []) if viewer is UNRESTRICTED else ([cond], list(vargs))
        if model is not None:
            where.append("model = ?"), args.append(model)
        if text:
            where.append("instr(casefold(prompt), ?) > 0"), args.append(text.casefold())
        if success is not None:
            where.append("success = ?"), args.append(int(bool(success)))
        if source is not None:
            where.append("source = ?"), args.append(source)
        sql = "SELECT * FROM routes" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self._read(sql + " ORDER BY id DESC LIMIT ?", (*args, max(0, int(limit))))
        return [StoredRoute._from_row(r) for r in rows]

    def routes_with_expert(self, layer: int, expert: int, model: str | None = None,
                           limit: int = 50, scan: int = 5000, *,
                           viewer: str | None | Viewer = UNRESTRICTED
                           ) -> list[tuple[StoredRoute, str]]:
        """Routes ``viewer`` may see (newest first, of ``model`` when given) with an edit
        that forces ("force") or masks ("mask") ``expert`` at decoder layer ``layer``, as
        ``(route, mode)`` pairs (a route that does both is listed once, as "force"); at
        most ``limit`` of them, among the newest ``scan`` routes."""
        try:
            layer, expert = operator.index(layer), operator.index(expert)
        except TypeError:
            raise StoreError(f"layer and expert must be integers, got {layer!r} and "
                             f"{expert!r}") from None
        out: list[tuple[StoredRoute, str]] = []
        for sr in self.list_routes(model=model, limit=scan, viewer=viewer):
            modes = {e.mode for e in sr.route.edits
                     if e.layer == layer and expert in e.experts}
            if modes:
                out.append((sr, "force" if "force" in modes else "mask"))
                if len(out) >= limit:
                    break
        return out

    def delete_route(self, route_id: int, *,
                     owner: str | None | Viewer = UNRESTRICTED) -> None:
        """Delete a route (jobs that found it keep their result, lose the link); given an
        ``owner``, only that owner's: another's shared route is refused, and one it may not
        see gets the same error as an unknown id."""
        self._owned_write("DELETE FROM routes WHERE id = ?", (), route_id, owner, "delete")

    def share_route(self, route_id: int, owner: str | None | Viewer,
                    shared: bool = True) -> None:
        """Share (``shared``) or unshare ``owner``'s route ``route_id``: a shared route is
        visible to every viewer. Only its owner may (:data:`UNRESTRICTED`: whoever runs
        the library, for any route); another's shared route is refused, and one ``owner``
        may not see gets the same error as an unknown id."""
        self._owned_write("UPDATE routes SET shared = ? WHERE id = ?", (int(bool(shared)),),
                          route_id, owner, "share or unshare")

    def _owned_write(self, sql: str, args: tuple, route_id: Any, owner: Any,
                     what: str) -> None:
        """Run ``sql`` (its last parameter: the route id) on ``owner``'s route only."""
        rid = _int_id(route_id)
        if owner is not UNRESTRICTED:
            sql, args = sql + " AND owner IS ?", (*args, rid, _owner_key(owner))
        else:
            args = (*args, rid)
        with self._lock:
            if self._write(sql, args).rowcount:
                return
            self.get_route(rid, viewer=owner)  # "no route with id ..." when out of sight
        raise StoreError(f"route #{rid} is not yours: only its owner can {what} it")

    # -- export / import ----------------------------------------------------------------
    @property
    def exports_dir(self) -> Path:
        """``<data dir>/exports``: the only folder :meth:`export_route` writes to."""
        return self.data_dir / "exports"

    @property
    def imports_dir(self) -> Path:
        """``<data dir>/imports``: where :meth:`import_route` looks for bare file names."""
        return self.data_dir / "imports"

    def export_route(self, route_id: int, filename: str | None = None, *,
                     viewer: str | None | Viewer = UNRESTRICTED,
                     private: bool = False) -> Path:
        """Write the route's public JSON (provenance and prompt in ``info``) to
        ``<data dir>/exports/<filename>`` and return that path. ``filename`` must be a
        plain file name (no folders, no '..', not absolute); '.json' is appended when
        missing. An existing file is replaced, a symlink is never followed. Only a route
        ``viewer`` may see is exported (:meth:`get_route`). ``private``: the file goes in a
        new folder with an unguessable name, ``exports/<random>/``, so that only whoever
        gets the path back can name it (e.g. to import it)."""
        sr = self.get_route(route_id, viewer=viewer)
        name = f"route-{sr.id}.json" if filename is None else str(filename)
        if (not name or "/" in name or "\\" in name or "\x00" in name or name in (".", "..")
                or os.path.isabs(name)):
            raise StoreError(f"export file name {filename!r} must be a plain file name "
                             "inside the exports folder")
        if not name.endswith(".json"):
            name += ".json"
        folder = self.exports_dir
        if folder.is_symlink():
            raise StoreError("the exports folder is a symlink; refusing to write through it")
        folder.mkdir(parents=True, exist_ok=True)
        if private:
            folder = folder / secrets.token_urlsafe(16)
            folder.mkdir(mode=0o700)
        dest = folder / name
        if dest.is_symlink() or dest.resolve().parent != folder.resolve():
            raise StoreError(f"export file name {filename!r} escapes the exports folder")
        info = dict(sr.route.info)
        info.setdefault("model", sr.model)
        info.update(prompt=sr.prompt, target=sr.target, target_logprob=sr.target_logprob,
                    success=sr.success, judge=sr.judge, completion=sr.completion,
                    source=sr.source, created=sr.created, library_id=sr.id)
        text = json.dumps({"edits": [e.to_dict() for e in sr.route.edits], "info": info},
                          indent=2) + "\n"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".export-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, dest)  # replaces a link itself, never its target
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise StoreError(f"cannot write export {name!r}: {exc.strerror or exc}") from None
        return dest

    def _import_path(self, p: Path) -> Path:
        """The file an import path names, inside ``imports/`` or ``exports/``. A missing
        file and one outside those folders get the SAME message, so an import cannot tell
        which files exist elsewhere on the server."""
        refused = StoreError(f"no import file {str(p)[:200]!r} in the data folder's imports/ "
                             "or exports/ (paths outside them are refused)")
        base = p if p.is_absolute() else self.data_dir / p
        try:
            if not p.is_absolute() and not base.exists():
                base = self.imports_dir / p  # bare names are looked up in imports/
            real = base.resolve(strict=True)
        except (OSError, RuntimeError, ValueError):
            raise refused from None
        roots = [d.resolve() for d in (self.imports_dir, self.exports_dir) if d.exists()]
        if not any(real.is_relative_to(r) and real != r for r in roots):
            raise refused
        if real.suffix.lower() != ".json" or not real.is_file():
            raise StoreError(f"import file {str(p)[:200]!r} must be a .json file")
        if real.stat().st_size > MAX_IMPORT_BYTES:
            raise StoreError(f"import file {str(p)!r} is larger than {MAX_IMPORT_BYTES} bytes")
        return real

    def import_route(self, text_or_path: str | os.PathLike | bytes,
                     check: Callable[[Route], None] | None = None, *,
                     owner: str | None = None) -> int:
        """Import a route from JSON text, or from a ``.json`` file inside
        ``<data dir>/imports/`` or ``exports/``, as ``owner``'s (see :meth:`save_route`);
        returns the new route id (source 'import'; an identical route of that owner for
        the same prompt and model keeps its id). Only
        JSON is ever parsed. ``info.prompt``, ``info.model`` and the export's
        target/log-prob/success/judge/completion are restored when present. ``check``
        (e.g. validation against a loaded model) sees the parsed route before anything is
        saved; what it raises refuses the import (it may fill in ``route.info``)."""
        origin = "text"
        if isinstance(text_or_path, bytes):
            try:
                text = text_or_path.decode("utf-8")
            except UnicodeDecodeError:
                raise StoreError("import is not UTF-8 JSON text") from None
        elif isinstance(text_or_path, os.PathLike) or (
                isinstance(text_or_path, str) and text_or_path.lstrip()[:1] not in ("{", "[")):
            real = self._import_path(Path(text_or_path))
            origin = real.name
            try:
                text = real.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise StoreError(f"import file {real.name!r} is not UTF-8 JSON text") from None
        elif isinstance(text_or_path, str):
            text = text_or_path
        else:
            raise StoreError(f"cannot import a {type(text_or_path).__name__}")
        if len(text) > MAX_IMPORT_BYTES:
            raise StoreError(f"import is larger than {MAX_IMPORT_BYTES} bytes")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StoreError(f"import is not valid JSON: {exc}") from None
        try:
            route = Route.from_dict(data)
        except RouteError as exc:
            raise StoreError(f"import is not a route: {exc}") from None
        if check is not None:
            check(route)
        info = route.info

        def text_of(key):
            return info[key] if isinstance(info.get(key), str) else None

        lp = info.get("target_logprob")
        lp = float(lp) if isinstance(lp, (int, float)) and not isinstance(lp, bool) else None
        ok = info.get("success")
        return self.save_route(
            route, text_of("prompt") or "", text_of("model") or "", target=text_of("target"),
            target_logprob=lp, success=ok if isinstance(ok, bool) else None,
            judge=text_of("judge"), completion=text_of("completion"), source="import",
            meta={"imported_from": origin, "original_source": info.get("source")},
            owner=owner)

    # -- jobs ---------------------------------------------------------------------------
    def create_job(self, kind: str, params: dict, session: str | None = None) -> str:
        """Insert a 'queued' job; returns its id (a uuid4 hex string)."""
        if not isinstance(kind, str) or not SOURCE_NAME.match(kind):
            raise StoreError(f"a job kind is an attack's name, got {str(kind)[:40]!r}")
        if not isinstance(params, dict):
            raise StoreError("job params must be a dict")
        job_id, now = uuid.uuid4().hex, utcnow()
        self._write("INSERT INTO jobs (id, kind, session, status, params_json, progress_json,"
                    " created, updated) VALUES (?,?,?,?,?,?,?,?)",
                    (job_id, kind, session, "queued", _dumps(params), "{}", now, now))
        return job_id

    _JOB_FIELDS = {"status": "status", "progress": "progress_json", "state": "state_json",
                   "result": "result_json", "error": "error", "route_id": "route_id"}

    def update_job(self, job_id: str, *, where_status: str | Iterable[str] | None = None,
                   **fields: Any) -> bool:
        """Set ``status``, ``progress``, ``state``, ``result``, ``error``, ``route_id``
        (dicts are stored as JSON; ``state`` may be JSON text). With ``where_status`` the
        update happens only if the job's status is one of those (atomic check-and-set);
        returns whether a row changed. Unknown ids raise :class:`StoreError`."""
        sql, args = self._job_update_sql(job_id, where_status, fields)
        with self._lock:
            changed = self._write(sql, args).rowcount > 0
            if not changed and not self._read("SELECT 1 FROM jobs WHERE id = ?", (job_id,)):
                raise StoreError(f"no job with id {job_id}")
        return changed

    def _job_update_sql(self, job_id, where_status, fields) -> tuple[str, list]:
        bad = set(fields) - set(self._JOB_FIELDS)
        if bad:
            raise StoreError(f"cannot update job field(s) {sorted(bad)}")
        if "status" in fields and fields["status"] not in JOB_STATUSES:
            raise StoreError(f"job status must be one of {JOB_STATUSES}")
        sets, args = [], []
        for key, value in fields.items():
            if key in ("progress", "result") and value is not None:
                value = _dumps(value)
            elif key == "state" and value is not None and not isinstance(value, str):
                value = value.to_json() if hasattr(value, "to_json") else _dumps(value)
            sets.append(f"{self._JOB_FIELDS[key]} = ?"), args.append(value)
        sets.append("updated = ?"), args.append(utcnow())
        sql = f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?"
        args.append(job_id)
        if where_status is not None:
            st = (where_status,) if isinstance(where_status, str) else tuple(where_status)
            sql += f" AND status IN ({','.join('?' * len(st))})"
            args.extend(st)
        return sql, args

    def finish_job(self, job_id: str, route: Route, prompt: str, model: str, *,
                   route_fields: dict[str, Any] | None = None,
                   where_status: str | Iterable[str] | None = None,
                   owner: str | None = None, **job_fields: Any) -> int | None:
        """Save a job's found route (as ``owner``'s: see :meth:`save_route`) and update the
        job (``route_id`` linked) in ONE transaction; returns the route id, or None
        (nothing written) when the job's status is not in ``where_status``.
        ``route_fields`` are :meth:`save_route`'s keyword arguments. A route without edits
        (the prompt already gave the target) is not saved: the job is updated with no
        ``route_id``; an identical route of that owner for the same prompt and model links
        the stored one (:meth:`save_route`)."""
        with self._lock, self._conn:
            rf = dict(route_fields or {})
            route_id = None if not route.edits else self._insert_route(
                route, prompt, model, rf.get("target"), rf.get("target_logprob"),
                rf.get("success"), rf.get("judge"), rf.get("completion"),
                rf.get("source", "fsour"), rf.get("meta"), owner)
            sql, args = self._job_update_sql(job_id, where_status,
                                             dict(job_fields, route_id=route_id))
            if self._conn.execute(sql, args).rowcount == 0:
                self._conn.rollback()
                return None
        return route_id

    def get_job(self, job_id: str) -> JobRecord:
        """The job ``job_id``; :class:`StoreError` when there is none."""
        rows = self._read("SELECT * FROM jobs WHERE id = ?", (str(job_id),))
        if not rows:
            raise StoreError(f"no job with id {job_id}")
        return JobRecord._from_row(rows[0])

    def list_jobs(self, session: str | None = None, status: str | Iterable[str] | None = None,
                  limit: int = 100, oldest_first: bool = False) -> list[JobRecord]:
        """Jobs (newest first unless ``oldest_first``), filtered by session and status
        (one status or several)."""
        where, args = [], []
        if session is not None:
            where.append("session = ?"), args.append(session)
        if status is not None:
            st = (status,) if isinstance(status, str) else tuple(status)
            if not st:
                return []
            where.append(f"status IN ({','.join('?' * len(st))})"), args.extend(st)
        order = "ASC" if oldest_first else "DESC"
        sql = ("SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
               + f" ORDER BY created {order}, rowid {order} LIMIT ?")
        return [JobRecord._from_row(r) for r in self._read(sql, (*args, max(0, int(limit))))]

    def request_stop(self, job_id: str, reason: str) -> None:
        """Ask whoever runs job ``job_id`` to stop (``reason``: 'cancel' or 'shutdown').
        The job's status does not change here: the runner stores it when it stops. A
        search running in another process polls :meth:`stop_requested`."""
        if reason not in STOP_REASONS:
            raise StoreError(f"stop reason must be one of {STOP_REASONS}, got {reason!r}")
        try:
            self._write("INSERT OR REPLACE INTO job_stops (job_id, reason, requested) "
                        "VALUES (?,?,?)", (str(job_id), reason, utcnow()))
        except sqlite3.IntegrityError:
            raise StoreError(f"no job with id {job_id}") from None

    def stop_requested(self, job_id: str) -> str | None:
        """The reason of a pending stop request for job ``job_id`` ('cancel',
        'shutdown'), or None."""
        rows = self._read("SELECT reason FROM job_stops WHERE job_id = ?", (str(job_id),))
        return rows[0][0] if rows else None

    def clear_stop(self, job_id: str) -> None:
        """Forget a stop request for job ``job_id`` (once the job has stopped, or before it
        runs again)."""
        self._write("DELETE FROM job_stops WHERE job_id = ?", (str(job_id),))

    def mark_interrupted(self) -> list[str]:
        """Mark every 'running' job 'interrupted' (call at startup, before any worker
        runs); returns their ids."""
        with self._lock, self._conn:
            rows = self._conn.execute("UPDATE jobs SET status = 'interrupted', updated = ? "
                                      "WHERE status = 'running' RETURNING id",
                                      (utcnow(),)).fetchall()
        return [r[0] for r in rows]


def _int_id(value: Any) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        return int(value)
    except (TypeError, ValueError):
        raise StoreError(f"route id must be an integer, got {value!r}") from None
