"""``plan``: a model's memory and cost from its config alone (explorer/bench/plan.py).

- On tiny random models of five families, saved with ``save_pretrained``, the plan's
  parameter count equals the loaded model's, and its weight memory lies within 10% of the
  loaded model's parameter and buffer bytes in float32 and bfloat16; in a fresh process the
  memory a larger model's weights take (resident-set growth) agrees too.
- The published configs of five real models (config.json only, tests/data/real_configs)
  give their known parameter totals within 3%, and the memory per precision says which fit
  one 80 GB GPU.
- The CLI's ``--json`` keys, its one-line errors (offline hub, bad options), ``--help``
  without torch; the app's Model tab's Plan view through the gate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_model

from explorer.bench.plan import PARTS, PRECISIONS, MemoryPlan, plan_model, plan_text
from explorer.core.errors import InputError, ModelLoadError
from explorer.core.layers import LayerHandles, discover_layers

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "tests" / "data" / "real_configs"
#: Published totals (billions of parameters) of the real configs' models.
KNOWN = {"Mixtral-8x7B-v0.1": 46.7, "OLMoE-1B-7B-0924": 6.9, "Qwen1.5-MoE-A2.7B": 14.3,
         "DeepSeek-V2-Lite": 15.7, "Qwen3-30B-A3B": 30.5}
MEASURED_FAMILIES = ["mixtral", "olmoe", "qwen3_moe", "deepseek_v3", "gpt_oss"]
JSON_KEYS = {"model", "model_type", "layers", "moe_layers", "experts", "top_k",
             "shared_experts", "params", "bnb_linear", "buffers", "total_params",
             "active_params", "precision", "gpu_memory_gb", "prompt_tokens", "target_tokens",
             "weights", "fits", "search", "fsour", "notes", "info"}


def _saved(family: str, folder: Path) -> Path:
    model, _ = tiny_model(family)
    model.save_pretrained(folder)
    return folder


def _bytes(model) -> int:
    return (sum(p.numel() * p.element_size() for p in model.parameters())
            + sum(b.numel() * b.element_size() for b in model.buffers()))


# -- tiny models: predicted against loaded -----------------------------------------------------
@pytest.mark.parametrize("family", MEASURED_FAMILIES)
def test_tiny_model_weights_match_the_loaded_model(family, tmp_path):
    from transformers import AutoModelForCausalLM
    folder = _saved(family, tmp_path / family)
    plan = plan_model(str(folder))
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        assert plan.total_params == sum(p.numel() for p in model.parameters())
        measured = _bytes(model)
        assert abs(plan.weights[precision] / measured - 1) < 0.10, (precision, measured)
    # the parts, against the loaded model's own modules
    handles = [h for h in discover_layers(model) if isinstance(h, LayerHandles)]
    routed = sum(p.numel() for h in handles for p in h.experts.parameters())
    routers = sum(p.numel() for h in handles for p in h.router.parameters())
    assert plan.params["routed_experts"] == routed
    assert plan.params["routers"] == routers
    emb = model.get_input_embeddings().weight.numel() + model.get_output_embeddings().weight.numel()
    assert plan.params["embeddings"] == emb
    assert sum(plan.params[p] for p in PARTS) == plan.total_params
    assert plan.moe_layers == len(handles) and plan.experts == handles[0].info.num_experts
    assert plan.params["attention"] > 0
    if family == "deepseek_v3":  # MLA attention, a dense first layer, shared experts
        assert plan.params["dense_mlp"] > 0 and plan.params["shared_experts"] > 0
        assert plan.shared_experts >= 1 and plan.moe_layers < plan.layers
    # quantized experts: smaller than bf16 by what the experts save, and no more
    saved = plan.weights["bf16"] - plan.weights["int8"]
    experts = plan.params["routed_experts"] + plan.params["shared_experts"]
    assert saved == pytest.approx(experts, rel=1e-6)


def test_process_memory_growth_matches_the_plan(tmp_path):
    """A ~55M-parameter Mixtral built from its config in a fresh process (random init
    writes every page; the modelling code imported first, by a meta-device build): the
    resident set grows by the plan's weight bytes within 10%."""
    from transformers import MixtralConfig
    MixtralConfig(vocab_size=1024, hidden_size=512, intermediate_size=1024,
                  num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                  num_local_experts=8, num_experts_per_tok=2,
                  max_position_embeddings=64).save_pretrained(tmp_path)
    plan = plan_model(str(tmp_path))
    code = ("import gc, sys, torch; from transformers import AutoConfig, AutoModelForCausalLM\n"
            "torch.set_num_threads(1)\n"
            "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * 4096\n"
            "c = AutoConfig.from_pretrained(sys.argv[1])\n"
            "with torch.device('meta'): AutoModelForCausalLM.from_config(c)  # imports\n"
            "for dt in ('float32', 'bfloat16'):\n"
            "    gc.collect(); r0 = rss()\n"
            "    m = AutoModelForCausalLM.from_config(c, dtype=getattr(torch, dt))\n"
            "    gc.collect(); print(rss() - r0); del m\n")
    # a fixed mmap threshold: every tensor is its own mapping, returned when freed, so the
    # second measurement does not reuse the first model's memory
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, timeout=300, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    grown = [int(x) for x in out.stdout.split()[-2:]]
    for precision, g in zip(("fp32", "bf16"), grown):
        assert abs(g / plan.weights[precision] - 1) < 0.10, (precision, g)


# -- real configs ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_plans():
    return {name: plan_model(str(REAL / name)) for name in KNOWN}


def test_real_configs_are_config_only():
    for name in KNOWN:
        assert sorted(f.name for f in (REAL / name).iterdir()) == ["config.json"]


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_real_config_totals(real_plans, name):
    plan = real_plans[name]
    assert plan.total_params / 1e9 == pytest.approx(KNOWN[name], rel=0.03)
    assert plan.weights["bf16"] == pytest.approx(2 * plan.total_params, rel=1e-3)
    assert plan.weights["fp32"] == pytest.approx(4 * plan.total_params, rel=1e-3)
    # experts-only precisions keep routers, embeddings and head in bf16
    keep = plan.total_params - plan.params["routed_experts"] - plan.params["shared_experts"]
    assert plan.weights["int4"] > 2 * keep
    order = [plan.weights[p] for p in ("fp32", "bf16", "int8", "mxfp4", "int4")]
    assert order == sorted(order, reverse=True)
    text = plan_text(plan)
    for p in PRECISIONS:
        assert p in text
    assert "fits one GPU" in text and "forward passes" in text


def test_which_fit_one_80gb_gpu(real_plans):
    fits = {name: {p: f["fits_one_gpu"] for p, f in plan.fits.items()}
            for name, plan in real_plans.items()}
    mix = real_plans["Mixtral-8x7B-v0.1"]
    assert 90e9 < mix.weights["bf16"] < 96e9  # ~93 GB
    assert not fits["Mixtral-8x7B-v0.1"]["bf16"] and mix.fits["bf16"]["gpus"] == 2
    assert fits["Mixtral-8x7B-v0.1"]["int8"] and fits["Mixtral-8x7B-v0.1"]["int4"]
    # bitsandbytes leaves the fused routed experts in bf16: --quantize 8bit does not fit
    assert not fits["Mixtral-8x7B-v0.1"]["bnb-8bit"]
    for name in ("OLMoE-1B-7B-0924", "Qwen1.5-MoE-A2.7B", "DeepSeek-V2-Lite", "Qwen3-30B-A3B"):
        assert fits[name]["bf16"], name
    assert not fits["Qwen3-30B-A3B"]["fp32"]
    # the multi-GPU note says the layers run one GPU at a time
    assert any("one GPU at a time" in n for n in mix.notes)


def test_search_memory_and_passes(real_plans):
    plan = real_plans["OLMoE-1B-7B-0924"]
    s, f = plan.search, plan.fsour
    assert plan.target_tokens == 4  # "Sure, here is"
    assert s["tokens"] == plan.prompt_tokens + plan.target_tokens
    assert 0 < s["kv_cache_bytes_per_row"] < s["row_bytes"]
    assert s["batch_bytes"] == s["rows"] * s["row_bytes"] <= s["free_bytes"]
    assert f["passes_per_restart"] == 1 + f["candidates"] * plan.prompt_tokens * plan.moe_layers
    assert f["passes_worst"] == f["passes_per_restart"] * f["max_iters"]
    longer = plan_model(str(REAL / "OLMoE-1B-7B-0924"), prompt_tokens=512)
    assert longer.search["kv_cache_bytes_per_row"] > s["kv_cache_bytes_per_row"]
    assert longer.fsour["passes_worst"] > f["passes_worst"]
    small = plan_model(str(REAL / "OLMoE-1B-7B-0924"), gpu_memory_gb=8)
    assert not small.fits["bf16"]["fits_one_gpu"] and small.fits["bf16"]["gpus"] == 3


def test_round_trip(real_plans):
    for plan in real_plans.values():
        again = MemoryPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
        assert again == plan


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(InputError, match="precision"):
        plan_model(str(REAL / "Mixtral-8x7B-v0.1"), precision="int3")
    with pytest.raises(InputError, match="GPU memory"):
        plan_model(str(REAL / "Mixtral-8x7B-v0.1"), gpu_memory_gb=0)
    with pytest.raises(ModelLoadError, match="no config.json"):
        plan_model(str(tmp_path))


# -- CLI -------------------------------------------------------------------------------------
def _cli(args, capsys):
    from explorer.cli.main import main
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_json_keys(capsys):
    rc, out, err = _cli(["plan", "--model", str(REAL / "Mixtral-8x7B-v0.1"), "--json",
                         "--quantize", "8bit", "--gpu-memory", "80", "--prompt-tokens", "32"],
                        capsys)
    assert rc == 0, err
    d = json.loads(out)
    assert set(d) == JSON_KEYS
    assert d["precision"] == "bnb-8bit" and d["prompt_tokens"] == 32
    assert set(d["weights"]) == set(d["fits"]) == set(PRECISIONS)
    assert set(d["params"]) == set(PARTS)
    assert set(d["search"]) >= {"row_bytes", "kv_cache_bytes_per_row", "rows", "batch_bytes"}
    assert set(d["fsour"]) >= {"passes_per_restart", "passes_worst", "budget"}
    rc, out, _ = _cli(["plan", "--model", str(REAL / "Qwen3-30B-A3B")], capsys)
    assert rc == 0 and "routed experts" in out and "fits one GPU" in out


def test_cli_errors(capsys, monkeypatch, tmp_path):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    rc, _, err = _cli(["plan", "--model", "no-such-owner/no-such-model"], capsys)
    assert rc == 2 and "unreachable" in err and len(err.strip().splitlines()) == 1
    for bad in (["--gpu-memory", "-1"], ["--quantize", "int3"], ["--prompt-tokens", "0"],
                ["--model", str(tmp_path / "missing")]):
        rc, _, err = _cli(["plan", *bad], capsys)
        assert rc == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_cli_help_needs_no_torch():
    code = ("import sys; from explorer.cli.main import main; rc = main(['plan', '--help']); "
            "print(rc, [m for m in ('torch', 'transformers', 'gradio') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "0 []", out.stderr


# -- the app's Model tab ------------------------------------------------------------------------
def test_app_model_tab_plan(tiny, tmp_path):
    pytest.importorskip("gradio")
    import gradio as gr
    from conftest import ui_handler

    from explorer.app.build import build_app
    from explorer.app.context import Explorer
    from explorer.app.hosted import HostedPolicy
    from explorer.app.tabs.model import plan_view
    demo = build_app(tiny, data_dir=tmp_path / "data")
    plan = ui_handler(demo, "plan-model-btn")  # registered through the gate
    md = plan(str(REAL / "Mixtral-8x7B-v0.1"), 80, "int8", 64)
    assert "routed experts" in md and "| int8 * |" in md and "fits one 80 GB GPU" in md
    assert "no: 2 GPUs" in md  # bf16
    assert tiny.name not in md  # nothing loaded: the app's model is still the tiny one
    assert demo.explorer.moe is tiny
    blank = plan("", 40, "bf16", 16)  # the demo model's config
    assert "demo" in blank
    with pytest.raises(gr.Error, match="GPU memory"):
        plan(str(REAL / "Mixtral-8x7B-v0.1"), 0, "bf16", 64)
    # hosted: only the models the server could load
    hosted = HostedPolicy.from_env({"EXPLORER_HOSTED": "1"})
    app = Explorer(tiny, data_dir=tmp_path / "hosted", policy=hosted)
    with pytest.raises(gr.Error, match="local model paths"):
        app.gate.call(plan_view, str(REAL / "Mixtral-8x7B-v0.1"), 80, "bf16", 64)


@pytest.mark.parametrize("family", ["mixtral", "olmoe", "qwen3_moe", "deepseek_v3", "gpt_oss"])
def test_the_loaders_integer_experts_match_the_plan(family, tmp_path):
    """``--quantize int8-experts|int4-experts`` as loaded (bf16 around the experts), against
    the plan's rows for those modes: within 10% of the measured weight memory."""
    from explorer import load_model
    folder = _saved(family, tmp_path / family)
    plan = plan_model(str(folder))
    for mode in ("int8-experts", "int4-experts"):
        moe = load_model(str(folder), device="cpu", dtype="bfloat16", quantize=mode)
        measured = moe.info.weight_bytes
        assert abs(plan.weights[mode] / measured - 1) < 0.10, (mode, plan.weights[mode],
                                                               measured)
    assert plan.weights["int4-experts"] < plan.weights["int8-experts"] < plan.weights["bf16"]
