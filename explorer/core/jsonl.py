"""JSON lines files: one JSON object a line, appended durably as results finish, so that an
interrupted run keeps what it wrote (``evaluate`` rows, benchmark rows)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from explorer.core.errors import InputError


def read_jsonl(path) -> list[dict]:
    """The JSON objects in ``path`` (missing file: []); a torn last line is dropped."""
    p = Path(path)
    if not p.exists():
        return []
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:  # a ValueError, but bad input: someone else's file
        raise InputError(f"{path}: not a UTF-8 text file") from None
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue  # an interrupted write; the row is redone
        if isinstance(obj, dict):
            rows.append(obj)
    return rows


def append_jsonl(path, row: dict) -> None:
    """Append one row to ``path`` and make it durable (flush + fsync)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_jsonl(path, rows: list[dict]) -> None:
    """Replace ``path`` atomically with ``rows``."""
    p = Path(path)
    tmp = p.with_name(p.name + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)
