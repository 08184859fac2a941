"""Reading ``evaluate`` result files (JSONL, see :mod:`explorer.evaluation.evaluate`) and
summarising them: the method table (ASR per method with its counts k/n), per-category
rates (where rows carry a ``category``, as JailbreakBench rows do), one line per row with
its verdict, and the comparison of two files (both method tables and the rows whose
verdict differs).

The summaries are pure functions of the rows; each method's ASR and refusal rate come
from :meth:`Evaluation.summary <explorer.evaluation.evaluate.Evaluation.summary>` (their
one home).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from explorer.core.errors import InputError
from explorer.evaluation.evaluate import Evaluation

#: The largest result file :func:`load_results` reads (checked before reading).
MAX_RESULTS_BYTES = 5 * 1024 * 1024
#: What a row without a category is listed under.
NO_CATEGORY = "(none)"


@dataclass
class ResultFile:
    """The rows of one ``evaluate`` JSONL file, in file order, and where they came from
    (``info``: ``name`` and ``lines``)."""

    rows: list[dict]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.info.get("name") or "results")

    @property
    def methods(self) -> list[str]:
        """The methods of its rows, in order of appearance."""
        return list(dict.fromkeys(str(r["method"]) for r in self.rows))

    def to_json(self) -> str:
        """This file's rows and info as JSON text (round-trips through :meth:`from_json`)."""
        return json.dumps({"rows": self.rows, "info": self.info}, default=str)

    @classmethod
    def from_json(cls, text: str) -> ResultFile:
        d = json.loads(text)
        return cls(rows=list(d["rows"]), info=dict(d.get("info") or {}))


def verdict_of(row: dict) -> str:
    """A row's verdict in one word: ``error``, ``jailbroken``, ``refusal`` or ``other``
    (neither jailbroken nor a refusal)."""
    if row.get("error"):
        return "error"
    if row.get("jailbroken"):
        return "jailbroken"
    return "refusal" if row.get("refusal") else "other"


def parse_results(text: str, name: str = "results") -> ResultFile:
    """The rows of ``evaluate`` JSONL ``text``. Strict, since the file may be anyone's:
    every non-blank line must be a JSON object with an integer ``index``, text ``goal``
    and ``method`` and a boolean ``jailbroken``; anything else is an ``InputError`` that
    names the line."""
    rows: list[dict] = []
    lines = text.splitlines()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            raise InputError(f"{name}: line {n} is not JSON; an evaluate result file has "
                             "one JSON object a line") from None
        if not isinstance(obj, dict):
            raise InputError(f"{name}: line {n} is not a JSON object")
        problems = [k for k, ok in (("index", isinstance(obj.get("index"), int)
                                     and not isinstance(obj.get("index"), bool)),
                                    ("goal", isinstance(obj.get("goal"), str)),
                                    ("method", isinstance(obj.get("method"), str)),
                                    ("jailbroken", isinstance(obj.get("jailbroken"), bool)))
                    if not ok]
        if problems:
            raise InputError(f"{name}: line {n} is not an evaluate row (missing or wrong: "
                             f"{', '.join(problems)})")
        rows.append(obj)
    if not rows:
        raise InputError(f"{name}: no rows (is it an evaluate --out file?)")
    return ResultFile(rows, {"name": name, "lines": len(lines)})


def bounded_file(path, name: str, what: str) -> Path:
    """``path`` as a file that may be read: :class:`InputError` in one line, naming it
    ``name``, when there is no such file or it is larger than :data:`MAX_RESULTS_BYTES`
    (``what``: the kind of file, for that message: "an evaluate result file")."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{name}: no such file")
    if p.stat().st_size > MAX_RESULTS_BYTES:
        raise InputError(f"{name} is larger than {MAX_RESULTS_BYTES // (1024 * 1024)} MiB; "
                         f"{what} of that size is not read here")
    return p


def load_results(path, name: str | None = None) -> ResultFile:
    """:func:`parse_results` of the file at ``path``, refused before it is read when it is
    larger than :data:`MAX_RESULTS_BYTES` or not UTF-8 text."""
    name = name or Path(path).name
    p = bounded_file(path, name, "an evaluate result file")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{name}: not a UTF-8 text file") from None
    return parse_results(text, name)


def _by(rows: list[dict], key) -> dict[Any, list[dict]]:
    out: dict[Any, list[dict]] = {}
    for r in rows:
        out.setdefault(key(r), []).append(r)
    return out


def method_table(rows: list[dict]) -> list[dict]:
    """One record per method (in order of appearance): ``method``, ``judge``, ``n``,
    ``jailbroken`` (k), ``asr`` (k/n), ``refusals`` and ``refusal_rate``,
    ``mean_forward_passes`` and ``mean_seconds``, ``errors``."""
    out = []
    for method, group in _by(rows, lambda r: str(r["method"])).items():
        judges = sorted({str(r.get("judge") or "") for r in group} - {""})
        s = Evaluation(group, method, ", ".join(judges)).summary()
        out.append({"method": method, "judge": ", ".join(judges) or "?", "n": s["n"],
                    "jailbroken": sum(bool(r.get("jailbroken")) for r in group),
                    "asr": s["asr"], "refusals": sum(bool(r.get("refusal")) for r in group),
                    "refusal_rate": s["refusal_rate"],
                    "mean_forward_passes": s["mean_forward_passes"],
                    "mean_seconds": s["mean_seconds"],
                    "errors": sum(bool(r.get("error")) for r in group)})
    return out


def has_categories(rows: list[dict]) -> bool:
    """Whether any row carries a ``category``."""
    return any(isinstance(r.get("category"), str) and r["category"] for r in rows)


def category_table(rows: list[dict]) -> list[dict]:
    """One record per (method, category): ``method``, ``category`` (:data:`NO_CATEGORY`
    for rows without one), ``n``, ``jailbroken`` and ``asr``; categories sorted by name
    within each method. Empty when no row has a category."""
    if not has_categories(rows):
        return []
    out = []
    for method, group in _by(rows, lambda r: str(r["method"])).items():
        cats = _by(group, lambda r: r.get("category") or NO_CATEGORY)
        for cat in sorted(cats):
            g = cats[cat]
            k = sum(bool(r.get("jailbroken")) for r in g)
            out.append({"method": method, "category": cat, "n": len(g), "jailbroken": k,
                        "asr": k / len(g)})
    return out


def row_table(rows: list[dict]) -> list[dict]:
    """One record per row, by dataset index (rows of one index in file order): ``index``,
    ``method``, ``category``, ``verdict`` (:func:`verdict_of`), ``edits`` (its route's
    size; 0 without a route), ``goal``. (``evaluate`` writes batched searches' rows as
    they finish, so a file's order need not be the dataset's.)"""
    out = []
    for r in sorted(rows, key=lambda r: r["index"]):
        route = r.get("route") if isinstance(r.get("route"), dict) else None
        edits = route.get("edits") if route is not None else None
        out.append({"index": r["index"], "method": r["method"],
                    "category": r.get("category") or "", "verdict": verdict_of(r),
                    "edits": len(edits) if isinstance(edits, list) else 0,
                    "goal": r["goal"]})
    return out


@dataclass
class Comparison:
    """Two result files side by side: each one's method table (``a``, ``b``), the rows
    matched between them (by index and goal, and by method where both files hold the same
    methods) and those whose verdict differs (``differ``: index, goal, the two methods
    and verdicts)."""

    a: list[dict]
    b: list[dict]
    matched: int
    differ: list[dict]
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """This comparison as JSON text (round-trips through :meth:`from_json`)."""
        return json.dumps({"a": self.a, "b": self.b, "matched": self.matched,
                           "differ": self.differ, "info": self.info})

    @classmethod
    def from_json(cls, text: str) -> Comparison:
        return cls(**json.loads(text))


def compare_results(a: ResultFile, b: ResultFile) -> Comparison:
    """Compare two result files (see :class:`Comparison`): the same dataset rows run with
    two methods (a file each), or one method under two settings."""
    same_methods = set(a.methods) == set(b.methods)

    def key(r: dict) -> tuple:
        return (r["index"], r["goal"], r["method"]) if same_methods else \
            (r["index"], r["goal"])

    in_b = {}
    for r in b.rows:
        in_b.setdefault(key(r), r)
    matched, differ = 0, []
    for ra in a.rows:
        rb = in_b.get(key(ra))
        if rb is None:
            continue
        matched += 1
        va, vb = verdict_of(ra), verdict_of(rb)
        if va != vb:
            differ.append({"index": ra["index"], "goal": ra["goal"],
                           "method_a": ra["method"], "verdict_a": va,
                           "method_b": rb["method"], "verdict_b": vb})
    return Comparison(method_table(a.rows), method_table(b.rows), matched, differ,
                      {"a": a.name, "b": b.name, "rows_a": len(a.rows),
                       "rows_b": len(b.rows)})
