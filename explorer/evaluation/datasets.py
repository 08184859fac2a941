"""Loading red-teaming benchmarks (AdvBench, JailbreakBench, custom CSV sets).

The project does not vendor benchmark data; users pass a CSV path, or a hub name
(``jbb``, ``advbench``) when the ``datasets`` package and the hub are available.
The project's own small prompt sets live in :mod:`explorer.core.prompt_sets`. Both the
lower-case (``goal,target``) and capitalised (``Goal,Target``) headers are accepted.
"""
from __future__ import annotations

import csv
from pathlib import Path

from explorer.core.errors import InputError


def _find(fields, name):
    for f in fields:
        if f is not None and f.strip().lower() == name:
            return f
    return None


def load_goals(csv_path) -> list[dict]:
    """Read a benchmark CSV into ``[{"goal": str, "target": str | None, ...}]``.

    The goal column is ``goal`` or ``Goal`` (any case); ``target``/``Target`` is
    optional (None when absent). Other columns are kept under their lower-cased
    names. Rows with an empty goal are skipped. Raises ``InputError`` when the
    file has no goal column.
    """
    path = Path(csv_path)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        goal_col = _find(fields, "goal")
        if goal_col is None:
            raise InputError(f"{path}: no 'goal' column (columns: {fields})")
        target_col = _find(fields, "target")
        rows = []
        for row in reader:
            goal = (row.get(goal_col) or "").strip()
            if not goal:
                continue
            rec = {(k or "").strip().lower(): v for k, v in row.items() if k not in (goal_col, target_col)}
            rec.pop("", None)
            rec["goal"] = goal
            rec["target"] = (row.get(target_col) or "").strip() if target_col else None
            rows.append(rec)
    return rows


# -- datasets for evaluation -------------------------------------------------------------
HUB_DATASETS = {
    "jbb": ("JailbreakBench/JBB-Behaviors", "behaviors", "harmful", "jbb_harmful_behaviors.csv"),
    "jbb-benign": ("JailbreakBench/JBB-Behaviors", "behaviors", "benign",
                   "jbb_benign_behaviors.csv"),
    "advbench": ("walledai/AdvBench", None, "train", "advbench_harmful_behaviors.csv"),
}


def load_dataset_rows(spec, limit: int | None = None, *, offline: bool = False,
                      start: int | None = None, end: int | None = None) -> list[dict]:
    """Rows of a dataset to evaluate: ``[{"index", "goal", "target", "meta"}]``.

    ``spec`` is a CSV path or a hub name (``jbb``, ``jbb-benign``, ``advbench``, loaded
    with the ``datasets`` package when it is installed and the hub is reachable).
    CSVs need a ``goal``/``Goal`` column; ``target``/``Target`` is optional (``None``
    when absent); other columns go to ``meta`` under lower-cased names. ``index`` is the
    0-based position in the dataset. ``start`` / ``end`` keep the rows whose index lies
    in ``start <= index < end`` (either may be None), then ``limit`` keeps the first rows
    of those. Raises ``InputError`` for a missing goal column, a broken row (naming its
    row number), a bad limit or slice (also one that keeps no row), or a hub dataset that
    cannot be fetched (``offline``: the hub is never tried, as with ``HF_HUB_OFFLINE=1``).
    """
    if limit is not None and (isinstance(limit, bool) or int(limit) <= 0):
        raise InputError(f"limit must be a positive integer, got {limit!r}")
    for what, v in (("start", start), ("end", end)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise InputError(f"{what} must be a non-negative integer, got {v!r}")
    if start is not None and end is not None and end <= start:
        raise InputError(f"end ({end}) must be greater than start ({start})")
    name = str(spec).strip()
    if name.lower() in HUB_DATASETS and not Path(name).exists():
        rows = _hub_rows(name.lower(), offline)
    else:
        rows = _csv_rows(Path(name).expanduser())
    total = len(rows)
    rows = [r for r in rows if (start is None or r["index"] >= start)
            and (end is None or r["index"] < end)]
    if not rows:
        raise InputError(f"{name}: no rows in the slice {start or 0}..{end or total} (the "
                         f"dataset has rows 0..{total - 1})")
    if limit is not None:
        rows = rows[:int(limit)]
    return rows


def _csv_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise InputError(f"dataset {path} is not a file (pass a CSV path, or one of "
                         f"{sorted(HUB_DATASETS)})")
    rows: list[dict] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header:
                raise InputError(f"{path}: the file is empty")
            cols = [h.strip().lower() for h in header]
            if "goal" not in cols:
                raise InputError(f"{path}: no 'goal' column (columns: {header})")
            gi = cols.index("goal")
            ti = cols.index("target") if "target" in cols else None
            for n, rec in enumerate(reader, start=1):
                if not rec or all(not c.strip() for c in rec):
                    continue  # blank line
                where = f"{path}: row {n} (line {reader.line_num})"
                if len(rec) != len(header):
                    raise InputError(f"{where} has {len(rec)} fields, the header has "
                                     f"{len(header)}")
                goal = rec[gi].strip()
                if not goal:
                    raise InputError(f"{where} has an empty goal")
                meta = {c: v for i, (c, v) in enumerate(zip(cols, rec))
                        if i not in (gi, ti) and c}
                rows.append({"index": len(rows), "goal": goal,
                             "target": rec[ti].strip() if ti is not None else None,
                             "meta": meta})
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a UTF-8 text file") from None
    except csv.Error as exc:
        raise InputError(f"{path}: broken CSV near line {reader.line_num}: {exc}") from None
    if not rows:
        raise InputError(f"{path}: no rows")
    return rows


def _hub_rows(name: str, offline: bool = False) -> list[dict]:
    repo, config, split, csv_name = HUB_DATASETS[name]
    unavailable = (f"{name}: cannot load {repo} from the hub (the `datasets` package is missing "
               f"or the hub is offline): pass a CSV path, e.g. ../shared/data/{csv_name}")
    try:
        import datasets
    except ImportError:
        raise InputError(unavailable) from None
    if offline:
        raise InputError(unavailable)
    try:
        ds = datasets.load_dataset(repo, config, split=split) if config else \
            datasets.load_dataset(repo, split=split)
    except Exception:  # noqa: BLE001 - network, auth, missing split: all mean "use a CSV"
        raise InputError(unavailable) from None
    rows = []
    for rec in ds:
        low = {str(k).strip().lower(): v for k, v in rec.items()}
        goal = str(low.pop("goal", None) or low.pop("prompt", None) or "").strip()
        if not goal:
            continue
        target = low.pop("target", None)
        rows.append({"index": len(rows), "goal": goal,
                     "target": str(target).strip() if target is not None else None,
                     "meta": low})
    return rows
