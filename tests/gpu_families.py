"""Routing control on a GPU in bf16, for every family of tests/tiny_models.py.

Not collected by pytest (CI has no GPU): run ``python tests/gpu_families.py`` on a CUDA
machine. Per family, with the transformers default experts implementation on cuda:
recorded experts cover every MoE layer; a forced set is what the router dispatched;
logits before the forced position are unchanged; masked experts are never picked; B
routes batched equal B single forwards; the causal-cone score equals the full score.
Prints one line per family and exits 1 if any check fails.

``--quantize MODE`` runs the same checks on each tiny model saved to a temporary folder and
loaded with ``load_model(..., quantize=MODE)``, and also checks what was quantized (some
layers converted: bitsandbytes layers, FP8 linears and experts, integer experts modules)
while every router weight stayed a float tensor, and reports the largest logit difference
from the bf16 model. MODE: ``8bit`` / ``4bit`` (bitsandbytes), ``fp8``, ``int8-experts``
/ ``int4-experts``, ``bnb`` (both bitsandbytes modes), ``all`` (every mode). A mode that
cannot run here skips with one line (bitsandbytes missing; fp8 without a GPU of
capability 8.9 or the kernels package); a family FP8 experts cannot hold (gpt-oss, dbrx,
jetmoe, llama4) must be refused with the one-line message, which counts as a pass. The
tolerance is wider for quantized models: LLM.int8 picks its outlier columns from all the
rows of a batch, so batch composition moves the numbers a little.

``--suite`` runs everything a lent GPU should check in one go: every family in bf16, every
quantize mode, then ``bench --synthetic olmoe-real`` (fast vs reference, one search) and
its dataset mode (one prompt at a time vs multi-prompt, on the project's own prompts) in
bf16 and with int8 / int4 experts; the bench JSON goes to ``--out`` (default: $OUT, else
gpu-bench/). Without a CUDA GPU the script prints one ``skipped`` line and exits 0;
``EXPLORER_CHECK_DEVICE=cpu`` makes it a dry run on the CPU (the bench then uses
olmoe-small).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # tiny_models, and this checkout's explorer

from tiny_models import FAMILIES, other_experts, tiny_model  # noqa: E402

from explorer.core.errors import ModelLoadError  # noqa: E402
from explorer.core.forward import logits_for_routes, target_logprob  # noqa: E402
from explorer.core.model import MoEModel, load_model  # noqa: E402
from explorer.core.route import Route  # noqa: E402
from explorer.engine.cone import capture_layer_inputs, cone_target_logprob  # noqa: E402

IDS = [5, 17, 33, 9, 64, 21, 40, 77, 12, 3]
DEV = os.environ.get("EXPLORER_CHECK_DEVICE", "cuda")  # cpu: a dry run here


MODES = ("8bit", "4bit", "fp8", "int8-experts", "int4-experts")
GROUPS = {"bnb": ["8bit", "4bit"], "all": list(MODES)}
#: The one-line refusals expected for families whose experts a mode cannot hold.
REFUSALS = {"fp8": ("cannot be loaded with --quantize fp8",),
            "int8-experts": ("has no fused routed experts",),
            "int4-experts": ("has no fused routed experts",)}
#: Largest |logit - bf16 logit| accepted per mode on the tiny models (logits ~0.5).
DRIFT = {"8bit": 0.3, "4bit": 0.3, "fp8": 0.1, "int8-experts": 0.1, "int4-experts": 0.3}


def _quantized_modules(moe: MoEModel) -> int:
    """How many modules the load converted (bitsandbytes layers, FP8 linears and experts,
    integer experts modules)."""
    from explorer.core.experts_quant import is_quantized
    names = ("Linear8bitLt", "Linear4bit", "FP8Linear", "FP8Experts")
    return sum(1 for m in moe.model.modules()
               if is_quantized(m) or any(type(m).__name__.startswith(n) for n in names))


def _quantized(family: str, quantize: str, folder: str) -> tuple[MoEModel, dict]:
    """The tiny model saved to ``folder`` and loaded back quantized, with what was
    quantized, every router weight still a float tensor, and the drift from bf16."""
    model, _ = tiny_model(family)
    model.save_pretrained(folder)
    moe = load_model(folder, device=DEV, quantize=quantize)
    ref = model.to(DEV, torch.bfloat16)
    ids = torch.tensor([IDS], device=moe.device)
    with torch.inference_mode():
        drift = float((moe.model(ids).logits.float() - ref(ids).logits.float()).abs().max())
    return moe, {"quantization": moe.info.quantization,
                 "quantized_modules": _quantized_modules(moe),
                 "routers_float": all(h.weight.is_floating_point() for h in moe.handles),
                 "weight_mib": moe.info.weight_bytes / 2**20, "drift": drift}


def check(family: str, quantize: str | None = None) -> dict:
    out = {"family": family}
    if quantize:
        with tempfile.TemporaryDirectory() as folder:
            try:
                moe, q = _quantized(family, quantize, folder)
            except ModelLoadError as exc:
                if any(x in str(exc) for x in REFUSALS.get(quantize, ())):
                    return dict(out, ok=True, refused=str(exc))  # expected for these experts
                raise
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
    forced = other_experts(h, natural)
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
        out["ok"] = (out["ok"] and out["quantization"] == quantize
                     and out["quantized_modules"] > 0 and out["routers_float"]
                     and out["drift"] <= DRIFT[quantize])
    return out


def _skip_reason(quantize: str | None) -> str | None:
    """Why the checks of ``quantize`` cannot run here (None: they can)."""
    if not DEV.startswith("cuda"):
        return None if quantize in (None, "int8-experts", "int4-experts") else \
            f"--quantize {quantize} needs a CUDA GPU"
    if quantize in ("8bit", "4bit"):
        try:
            import bitsandbytes  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - missing or broken: skip either way
            return f"bitsandbytes is not usable here ({type(exc).__name__})"
    if quantize == "fp8":
        from transformers.utils import is_kernels_available
        if torch.cuda.get_device_capability() < (8, 9):
            return "--quantize fp8 needs compute capability 8.9"
        if not is_kernels_available():
            return "--quantize fp8 needs the kernels package"
    return None


def run_families(modes: list) -> int:
    """The route checks for each mode (None: bf16) and family; returns the failures."""
    bad = 0
    for mode in modes:
        why = _skip_reason(mode)
        if why:
            print(f"{mode or 'bf16'}: skipped: {why}")
            continue
        for fam in FAMILIES:
            tag = f"{fam} {mode}" if mode else fam
            try:
                r = check(fam, mode)
            except Exception as exc:  # report and go on: one line per family
                print(f"{tag:26s} ERROR {type(exc).__name__}: "
                      f"{str(exc).splitlines()[0][:160] if str(exc) else ''}")
                bad += 1
                continue
            bad += not r["ok"]
            if "refused" in r:
                print(f"{tag:26s} ok   refused as expected: {r['refused'][:120]}")
                continue
            extra = (f" quantized_modules={r['quantized_modules']} routers_float="
                     f"{r['routers_float']} weights={r['weight_mib']:.2f}MiB "
                     f"drift={r['drift']:.2e}" if mode else "")
            print(f"{tag:26s} {'ok  ' if r['ok'] else 'FAIL'} forced={r['forced_used']} "
                  f"masked={r['masked_never_used']} prefix={r['prefix_max_diff']:.2e} "
                  f"batched={r['batched_max_diff']:.2e} cone={r['cone_max_diff']:.2e}{extra}",
                  flush=True)
    return bad


def run_bench(out: Path, timeout: int = 420) -> int:
    """``bench --synthetic`` (olmoe-real on a GPU, olmoe-small on the CPU): fast vs
    reference in bf16, then one-at-a-time vs multi-prompt in bf16 and with int8 / int4
    experts; JSON under ``out``, one summary line each. Returns the failures."""
    import csv
    import json
    import subprocess

    from explorer.core.prompt_sets import HARMFUL_PROMPTS
    out.mkdir(parents=True, exist_ok=True)
    name = "olmoe-real" if DEV.startswith("cuda") else "olmoe-small"
    limit = 4 if DEV.startswith("cuda") else 1
    rows = out / "prompts.csv"  # the project's own prompts (the benchmark CSVs stay home)
    with rows.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["goal", "target"])
        w.writerows([p, "Sure, here is"] for p in HARMFUL_PROMPTS[:limit])
    base = [sys.executable, "-m", "explorer", "bench", "--synthetic", name, "--device", DEV,
            "--json"]
    light = [] if DEV.startswith("cuda") else ["--candidates", "2"]  # a CPU dry run
    runs = [("bench", base + ["--prompts", "1", "--sizes", "64,512"]
             + ([] if DEV.startswith("cuda") else ["--latency-only"]))]
    for mode in (None, "int8-experts", "int4-experts"):
        q = ["--quantize", mode] if mode else []
        runs.append((f"dataset-{mode or 'bf16'}",
                     base + q + light + ["--dataset", str(rows), "--all-rows", "--limit",
                                         str(limit), "--count-products", "0"]))
    bad = 0
    for tag, cmd in runs:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"{tag:26s} TIMEOUT after {timeout} s")
            bad += 1
            continue
        (out / f"{tag}.json").write_text(p.stdout)
        if p.returncode != 0:
            last = (p.stderr.strip().splitlines() or [""])[-1]
            print(f"{tag:26s} ERROR rc={p.returncode}: {last}")
            bad += 1
            continue
        b = json.loads(p.stdout)
        weights = f"{b.get('quantization') or b['dtype']} {b['weight_bytes'] / 2**30:.2f} GiB"
        if tag == "bench" and "fsour" not in b:
            print(f"{tag:26s} {weights}: trace {1000 * b['trace_prompt_s']:.1f} ms (latency only)")
        elif tag == "bench":
            print(f"{tag:26s} {weights}: fsour fast/reference x{b.get('fsour_speedup', 0):.2f}, "
                  f"identical routes {b.get('fsour_identical_routes')}")
        else:
            one, many = b["one_at_a_time"], b["multi_prompt"]
            print(f"{tag:26s} {weights}: one at a time {one['seconds_per_prompt']:.2f} s/prompt, "
                  f"multi-prompt {many['seconds_per_prompt']:.2f} s/prompt "
                  f"(x{b['speedup']:.2f}), identical rows {b['identical_rows']}/{b['prompts']}, "
                  f"peak {many['peak_memory_mb']:.0f} MB")
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantize", choices=MODES + tuple(GROUPS), default=None,
                        help="load each tiny model quantized (see the module's docs)")
    parser.add_argument("--suite", action="store_true",
                        help="bf16, every quantize mode, then the synthetic benchmarks")
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu-bench",
                        help="where --suite writes the bench JSON")
    args = parser.parse_args(argv)
    if DEV.startswith("cuda") and not torch.cuda.is_available():
        print("skipped: no CUDA GPU here (EXPLORER_CHECK_DEVICE=cpu: a dry run on the CPU)")
        return 0
    if args.suite:
        modes = [None] + list(MODES)
    else:
        modes = GROUPS.get(args.quantize, [args.quantize])
    name = torch.cuda.get_device_name(0) if DEV.startswith("cuda") else "cpu"
    print(f"device: {name}; torch {torch.__version__}", flush=True)
    bad = run_families(modes)
    if args.suite:
        bad += run_bench(Path(args.out))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
