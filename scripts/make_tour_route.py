"""Rebuild the guided tour's route (``assets/tour/route.json``) on the bundled demo model.

Two steps, the paper's second finding: F-SOUR searches an unsafe route for the tour's
prompt, then :func:`explorer.research.minimal.minimize` removes its edits one at a time
while the answer stays flipped. The tour ships the minimal route; its ``info`` records
the search's settings and size (``minimized_from``) and the minimal route's own log-prob.

    python scripts/make_tour_route.py            # writes assets/tour/route.json
    python scripts/make_tour_route.py --out r.json --threads 2

Run it whenever the demo model is retrained (``tests/test_tour.py`` checks the shipped
route still flips the demo model's answer and covers at most a quarter of its prompt
cells). The route JSON format is the project's usual one (:class:`explorer.Route`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: F-SOUR's settings for the tour route (the search of the first tour, kept).
SEARCH = {"candidates": 30, "seed": 0, "engine": "fast", "max_new_tokens": 48}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None,
                   help="where to write the route (default: the tour's route file)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = p.parse_args(argv)

    import torch

    from explorer.core.model import load_model
    from explorer.demo.tour import load_tour
    from explorer.methods.fsour import fsour
    from explorer.research.minimal import minimize

    torch.set_num_threads(max(1, args.threads))
    tour = load_tour()
    out = args.out or tour.route_path
    moe = load_model("demo")
    t0 = time.perf_counter()
    found = fsour(moe, tour.prompt, **SEARCH)
    t1 = time.perf_counter()
    if not found.success:
        print(f"F-SOUR did not flip the answer: {found.completion!r}", file=sys.stderr)
        return 1
    m = minimize(moe, tour.prompt, found.route, max_new_tokens=tour.max_new_tokens)
    t2 = time.perf_counter()
    if not m.jailbroken_after:
        print("the minimal route does not flip the answer", file=sys.stderr)
        return 1
    route = m.minimal_route
    route.info.update(logprob=m.logprob_after, minimize_max_new_tokens=tour.max_new_tokens)
    route.save(out)
    cells = len(moe.encode(tour.prompt)) * len(moe.moe_layers)
    print(f"F-SOUR: {len(found.route)} edits, {found.forward_passes} forward passes, "
          f"{t1 - t0:.1f} s; minimal: {len(route)} edits of {cells} prompt cells, "
          f"{m.forward_passes} forward passes, {m.generations} generations, {t2 - t1:.1f} s; "
          f"log P(target) {m.logprob_after:.3f}; answer: {m.completion_after!r}; -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
