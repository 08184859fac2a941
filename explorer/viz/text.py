"""Numbers as short text, the same in the CLI, the app and the demo model's card."""

from __future__ import annotations


def pct(x: float | None, digits: int = 0) -> str:
    """``x`` (a rate in 0..1) as a percentage with ``digits`` decimals; ``"n/a"`` for None."""
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"
