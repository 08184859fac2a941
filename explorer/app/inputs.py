"""Values from the UI and the wire, checked: whole numbers, probabilities, text and a
method's parameters. Each check raises a one-line ``gr.Error`` naming the field."""

from __future__ import annotations

import math
from typing import Any

from explorer.app.errors import fail
from explorer.core.errors import brief

#: The largest row id SQLite stores (ids beyond it are refused before any query).
MAX_ROW_ID = 2**63 - 1


def need_prompt(prompt: Any) -> str:
    """``prompt`` when it is usable text, else "The prompt is empty"."""
    if not isinstance(prompt, str) or not prompt.strip():
        fail("The prompt is empty: type a request first.")
    return prompt


def whole_number(value: Any, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int in ``lo..hi`` (either may be None), else a one-line
    ``gr.Error`` naming ``name`` (floats must be whole, booleans are refused)."""
    v: int | None = None
    if value is not None and not isinstance(value, bool):
        if isinstance(value, int):
            v = value
        elif not (isinstance(value, str) and len(value) > 40):
            try:
                f = float(value)
            except (TypeError, ValueError, OverflowError):
                f = math.nan
            if math.isfinite(f) and f == int(f):
                v = int(f)
    if v is None:
        fail(f"{name} must be a whole number, got {brief(value)}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        fail(f"{name} must lie in {lo if lo is not None else '-∞'}.."
             f"{hi if hi is not None else '∞'}, got {brief(v)}")
    return v


def fraction(value: Any, name: str, kind: str = "a probability") -> float:
    """A number strictly between 0 and 1 (a probability, a mask ratio)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        fail(f"{name} must be {kind}, got {str(value)[:40]!r}")
    if not 0.0 < v < 1.0:
        fail(f"{name} must lie strictly between 0 and 1, got {v}")
    return v


def text_arg(value: Any, name: str) -> str:
    """``value`` if it is text (None: ""), else a one-line "expected text" error."""
    if value is None:
        return ""
    if not isinstance(value, str):
        fail(f"{name} must be text, got {type(value).__name__}")
    return value
