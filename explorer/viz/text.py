"""Numbers as short text, the same in the CLI, the app and the demo model's card."""

from __future__ import annotations


def pct(x: float | None, digits: int = 0) -> str:
    """``x`` (a rate in 0..1) as a percentage with ``digits`` decimals; ``"n/a"`` for None."""
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


#: The order of RoSais's top layers, as the app and the CLI name it (see :func:`layer_list`).
BY_ROSAIS = "highest RoSais first"


def layer_list(layers, order: str | None = None) -> str:
    """Decoder layers as words, one convention everywhere: ``"layer 4"``, ``"layers 0 and
    4"``, ``"layers 0, 2 and 4"``; sorted ascending, or, with ``order`` (what the order
    means, e.g. ``"highest RoSais first"``), in the given order with that label in
    brackets. ``"no layers"`` for none."""
    xs = [int(x) for x in layers]
    if not xs:
        return "no layers"
    if order is None:
        xs = sorted(xs)
    words = [str(x) for x in xs]
    text = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    text = ("layer " if len(words) == 1 else "layers ") + text
    return text + (f" ({order})" if order and len(words) > 1 else "")
