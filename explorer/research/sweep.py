"""How attack success grows with the number of experts masked: the SAFEx sweep.

:func:`safex_sweep` makes one SAFEx-style stable selection
(:mod:`explorer.methods.safex`, on the project's own prompt sets unless told otherwise)
and answers ``prompts`` (the prompts under evaluation, e.g. a benchmark's goals) with the
first 0, n1, n2, ... selected pairs masked model-wide; one row per size:
``{"experts", "masked", "cells", "n", "jailbroken", "asr", "forward_passes",
"seconds"}``. ``experts`` is the size asked for, ``masked`` what the selection had
(fewer when fewer pairs are stable). :func:`explorer.viz.research.sweep_figure` plots it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Sequence

from explorer.attacks import Run, answer, get_attack
from explorer.core.defaults import RESEARCH_MAX_NEW_TOKENS
from explorer.core.errors import InputError
from explorer.research.common import resolve_judge

if TYPE_CHECKING:
    from explorer.core.model import MoEModel


def safex_sweep(moe: MoEModel, prompts: Sequence[str], sizes: Sequence[int], *,
                judge: Any = None, max_new_tokens: int = RESEARCH_MAX_NEW_TOKENS,
                system: str | None = None, seed: int = 0, **params: Any) -> list[dict]:
    """ASR against the number of SAFEx-selected experts masked (see the module docs).
    ``params``: the ``safex`` attack's parameters (checked by its ``Params.parse``);
    ``safex_experts`` defaults to the largest size. ``judge``: a name or a judge object
    (default keyword)."""
    sizes = sorted({int(n) for n in sizes})
    if not prompts or not sizes or sizes[0] < 0:
        raise InputError("a sweep needs prompts and sizes >= 0")
    attack = get_attack("safex")
    p = attack.Params.parse({"safex_experts": max(1, sizes[-1]), **params})
    sel = p.selection(moe, system)
    run = Run(judge=resolve_judge(judge), max_new_tokens=max_new_tokens, seed=seed,
              system=system)
    rows = []
    for n in sizes:
        t0 = time.perf_counter()
        route = sel.route(limit=n) if n else None
        outs = [answer(moe, q, route, run) for q in prompts]
        hits = sum(o.jailbroken for o in outs)
        cells = sel.cells[:n]
        rows.append({"experts": n, "masked": len(cells),
                     "cells": [[c["layer"], c["expert"]] for c in cells],
                     "n": len(outs), "jailbroken": hits, "asr": hits / len(outs),
                     "forward_passes": sum(o.forward_passes for o in outs),
                     "seconds": round(time.perf_counter() - t0, 3),
                     "settings": sel.settings()})
    return rows


__all__ = ["safex_sweep"]
