"""Routing control on a GPU in bf16, for every family of tests/tiny_models.py.

Not collected by pytest (CI has no GPU): run ``python tests/gpu_families.py`` on a CUDA
machine. Per family, with the transformers default experts implementation on cuda:
recorded experts cover every MoE layer; a forced set is what the router dispatched;
logits before the forced position are unchanged; masked experts are never picked; B
routes batched equal B single forwards; the causal-cone score equals the full score.
Prints one line per family and exits 1 if any check fails.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tiny_models (the package is installed)

from tiny_models import FAMILIES, tiny_model  # noqa: E402

from explorer.core.forward import logits_for_routes, target_logprob  # noqa: E402
from explorer.core.model import MoEModel  # noqa: E402
from explorer.core.route import Route  # noqa: E402
from explorer.engine.cone import capture_layer_inputs, cone_target_logprob  # noqa: E402

IDS = [5, 17, 33, 9, 64, 21, 40, 77, 12, 3]
DEV = os.environ.get("EXPLORER_CHECK_DEVICE", "cuda")  # cpu: a dry run here


def _other(h, natural):
    info = h.info
    pool = [e for e in range(info.num_experts) if e not in natural]
    if info.n_group:
        g = info.group_of(pool[0])
        pool = [e for e in pool if info.group_of(e) == g]
    return sorted(pool[: info.top_k])


def check(family: str) -> dict:
    model, _ = tiny_model(family)
    model = model.to(DEV, torch.bfloat16)
    moe = MoEModel(model, None, family)
    ids = torch.tensor([IDS], device=DEV)
    out = {"family": family}
    with moe.control(record=True) as ctl, torch.inference_mode():
        base = moe.model(ids).logits
    out["recorded_all_layers"] = all(ctl.collected(lay)["experts"].shape[1] == len(IDS)
                                     for lay in moe.moe_layers)
    t, lay = 4, moe.moe_layers[-1]
    h = moe.handle(lay)
    natural = set(ctl.collected(lay)["experts"][0, t].tolist())
    forced = _other(h, natural)
    route = Route().force(lay, t, forced)
    with moe.control(route, record=True) as c2, torch.inference_mode():
        new = moe.model(ids).logits
    out["forced_used"] = sorted(c2.collected(lay)["experts"][0, t].tolist()) == forced
    out["prefix_max_diff"] = float((new[0, :t] - base[0, :t]).abs().max())
    nat_all = set(ctl.collected(lay)["experts"][0].flatten().tolist())
    masked = sorted(nat_all)[: max(1, min(len(nat_all), h.info.num_experts - h.info.top_k))]
    if h.info.n_group:  # keep group limits satisfiable: mask one expert
        masked = masked[:1]
    mroute = Route().mask(lay, masked)
    with moe.control(mroute, record=True) as c3, torch.inference_mode():
        moe.model(ids)
    used = set(c3.collected(lay)["experts"][0].flatten().tolist())
    out["masked_never_used"] = not (used & set(masked))
    routes = [Route(), route, mroute]
    batched = logits_for_routes(moe, IDS, routes).float()
    single = torch.cat([logits_for_routes(moe, IDS, [r]).float() for r in routes])
    out["batched_max_diff"] = float((batched - single).abs().max())
    prompt, target = IDS[:7], IDS[7:]
    cands = [Route().force(lay, 5, forced), Route().force(lay, 5, sorted(natural))]
    full = target_logprob(moe, prompt, target, cands)
    inputs = capture_layer_inputs(moe, prompt + target, Route())
    cone = cone_target_logprob(moe, prompt, target, cands, lay, inputs[lay])
    out["cone_max_diff"] = float((full - cone).abs().max())
    tol = 0.25  # bf16 logits of a random model: a few units in the last place
    out["ok"] = (out["recorded_all_layers"] and out["forced_used"] and out["masked_never_used"]
                 and out["prefix_max_diff"] <= tol and out["batched_max_diff"] <= tol
                 and out["cone_max_diff"] <= tol)
    return out


def main() -> int:
    name = torch.cuda.get_device_name(0) if DEV.startswith("cuda") else "cpu"
    print(f"device: {name}; torch {torch.__version__}")
    bad = 0
    for fam in FAMILIES:
        try:
            r = check(fam)
        except Exception as exc:  # report and go on: one line per family
            print(f"{fam:14s} ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
            bad += 1
            continue
        bad += not r["ok"]
        print(f"{fam:14s} {'ok  ' if r['ok'] else 'FAIL'} forced={r['forced_used']} "
              f"masked={r['masked_never_used']} prefix={r['prefix_max_diff']:.2e} "
              f"batched={r['batched_max_diff']:.2e} cone={r['cone_max_diff']:.2e}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
