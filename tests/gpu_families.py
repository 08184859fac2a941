"""Routing control on a GPU in bf16, for every family of tests/tiny_models.py.

Not collected by pytest (CI has no GPU): run ``python tests/gpu_families.py`` on a CUDA
machine. Per family, with the transformers default experts implementation on cuda:
recorded experts cover every MoE layer; a forced set is what the router dispatched;
logits before the forced position are unchanged; masked experts are never picked; B
routes batched equal B single forwards; the causal-cone score equals the full score.
Prints one line per family and exits 1 if any check fails.

``python tests/gpu_families.py --quantize 8bit|4bit|all`` runs the same checks on each tiny
model saved to a temporary folder and loaded with ``load_model(..., quantize=...)``
(bitsandbytes), and also checks that some layers were quantized while every router weight
stayed a float tensor. It needs a CUDA GPU and bitsandbytes, and skips (exit 0, one line)
without them. The tolerance is wider there: LLM.int8 picks its outlier columns from all the
rows of a batch, so batch composition moves the numbers a little.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tiny_models (the package is installed)

from tiny_models import FAMILIES, tiny_model  # noqa: E402

from explorer.core.forward import logits_for_routes, target_logprob  # noqa: E402
from explorer.core.model import MoEModel, load_model  # noqa: E402
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


def _quantized(family: str, quantize: str, folder: str) -> tuple[MoEModel, dict]:
    """The tiny model saved to ``folder`` and loaded back quantized, with what was
    quantized: bitsandbytes layers found, every router weight still a float tensor."""
    model, _ = tiny_model(family)
    model.save_pretrained(folder)
    moe = load_model(folder, device=DEV, quantize=quantize)
    bnb_layers = [n for n, m in moe.model.named_modules()
                  if type(m).__name__ in ("Linear8bitLt", "Linear4bit")]
    return moe, {"quantization": moe.info.quantization, "bnb_layers": len(bnb_layers),
                 "routers_float": all(h.weight.is_floating_point() for h in moe.handles)}


def check(family: str, quantize: str | None = None) -> dict:
    out = {"family": family}
    if quantize:
        with tempfile.TemporaryDirectory() as folder:
            moe, q = _quantized(family, quantize, folder)
            out.update(q)
            return _check_routes(moe, out, quantize)
    model, _ = tiny_model(family)
    model = model.to(DEV, torch.bfloat16)
    return _check_routes(MoEModel(model, None, family), out, None)


def _check_routes(moe: MoEModel, out: dict, quantize: str | None) -> dict:
    ids = torch.tensor([IDS], device=moe.device)
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
    # bf16 logits of a random model: a few units in the last place; quantized layers add
    # batch-dependent rounding (LLM.int8's outlier columns), hence the wider bound
    tol = 1.0 if quantize else 0.25
    out["ok"] = (out["recorded_all_layers"] and out["forced_used"] and out["masked_never_used"]
                 and out["prefix_max_diff"] <= tol and out["batched_max_diff"] <= tol
                 and out["cone_max_diff"] <= tol)
    if quantize:
        out["ok"] = (out["ok"] and out["quantization"] == quantize and out["bnb_layers"] > 0
                     and out["routers_float"])
    return out


def _skip_reason(quantize: str | None) -> str | None:
    """Why the quantized checks cannot run here (None: they can)."""
    if not quantize:
        return None
    if not (DEV.startswith("cuda") and torch.cuda.is_available()):
        return "--quantize needs a CUDA GPU"
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - missing or broken: skip either way
        return f"bitsandbytes is not usable here ({type(exc).__name__})"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantize", choices=("8bit", "4bit", "all"), default=None,
                        help="load each tiny model through bitsandbytes (CUDA only)")
    args = parser.parse_args(argv)
    modes = {None: [None], "all": ["8bit", "4bit"]}.get(args.quantize, [args.quantize])
    why = _skip_reason(modes[0])
    if why:
        print(f"skipped: {why}")
        return 0
    name = torch.cuda.get_device_name(0) if DEV.startswith("cuda") else "cpu"
    print(f"device: {name}; torch {torch.__version__}")
    bad = 0
    for mode in modes:
        for fam in FAMILIES:
            tag = f"{fam} {mode}" if mode else fam
            try:
                r = check(fam, mode)
            except Exception as exc:  # report and go on: one line per family
                print(f"{tag:19s} ERROR {type(exc).__name__}: "
                      f"{str(exc).splitlines()[0][:160]}")
                bad += 1
                continue
            bad += not r["ok"]
            extra = (f" bnb_layers={r['bnb_layers']} routers_float={r['routers_float']}"
                     if mode else "")
            print(f"{tag:19s} {'ok  ' if r['ok'] else 'FAIL'} forced={r['forced_used']} "
                  f"masked={r['masked_never_used']} prefix={r['prefix_max_diff']:.2e} "
                  f"batched={r['batched_max_diff']:.2e} cone={r['cone_max_diff']:.2e}{extra}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
