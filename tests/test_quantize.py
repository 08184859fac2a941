"""Quantized loading (``--quantize 8bit|4bit``, bitsandbytes): what is refused before any
weight is read and how it is worded, the ``BitsAndBytesConfig`` that reaches
``from_pretrained`` (routers and the output layer kept out of it, for several families),
the CLI flag, the app's setting and the provenance.

This machine has no CUDA GPU and no bitsandbytes, so the quantized load itself is checked
by ``python tests/gpu_families.py --quantize all`` on a GPU. Here, where a test needs to get
past the checks, it says so: ``torch.cuda.is_available`` answers True and a stand-in module
takes bitsandbytes' place; nothing then touches CUDA or bitsandbytes, because
``from_pretrained`` is replaced too and loads the checkpoint unquantized on the CPU.
"""

from __future__ import annotations

import re
import sys
import types

import pytest
import torch
import transformers
from tiny_models import other_experts, tiny_model
from torch import nn
from transformers.quantizers.quantizers_utils import should_convert_module

from explorer.cli.main import build_parser, main
from explorer.cli.options import clear_model_cache, load_from_args
from explorer.core.errors import ModelLoadError, RouteError
from explorer.core.model import MoEModel, load_model, parameter_count
from explorer.core.quantize import (
    INSTALL_HINT,
    bitsandbytes_config,
    parse_quantize,
    quantization_of,
    skip_modules,
)
from explorer.settings import Settings

HAS_CUDA = torch.cuda.is_available()
ROUTER_NAME = re.compile(r"(Router|TopKGating|TopkRouter)$")


@pytest.fixture
def no_loading(monkeypatch):
    """Record every attempt to read a config or weights (there must be none)."""
    calls = []
    for cls in (transformers.AutoConfig, transformers.AutoModelForCausalLM):
        monkeypatch.setattr(cls, "from_pretrained",
                            lambda *a, _c=cls.__name__, **k: calls.append(_c))
    return calls


@pytest.fixture
def gpu_and_bnb(monkeypatch):
    """Pretend a CUDA GPU and bitsandbytes are there (see the module's docs)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    fake = types.ModuleType("bitsandbytes")
    fake.__version__ = "0.49.0"
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    return fake


# -- the value ------------------------------------------------------------------------------
def test_parse_quantize():
    assert parse_quantize("8bit") == "8bit" and parse_quantize(" 4BIT ") == "4bit"
    assert parse_quantize(None) is None and parse_quantize("  ") is None
    assert parse_quantize("FP8") == "fp8" and parse_quantize("Int4-Experts") == "int4-experts"
    for bad in ("int8", "16bit", "8", 8, "int8-expert"):
        with pytest.raises(ValueError, match="quantize must be one of 8bit, 4bit, fp8, "
                                             "int8-experts, int4-experts"):
            parse_quantize(bad)


# -- refused before anything is loaded --------------------------------------------------------
@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_cpu_device_is_refused(tiny_ckpt, no_loading, device):
    with pytest.raises(ModelLoadError) as e:
        load_model(str(tiny_ckpt), device=device, quantize="8bit")
    assert str(e.value) == (f"--quantize 8bit (bitsandbytes) needs a CUDA GPU, but the device "
                            f"asked for is {device}; use --device cuda, or load without "
                            f"--quantize")
    assert no_loading == []


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("device", ["auto", "cuda", "cuda:1"])
def test_no_cuda_is_refused(tiny_ckpt, no_loading, device):
    with pytest.raises(ModelLoadError, match=re.escape(
            f"--quantize 4bit (bitsandbytes) needs a CUDA GPU, but none is available "
            f"(device {device})")):
        load_model(str(tiny_ckpt), device=device, quantize="4bit")
    assert no_loading == []


def test_unknown_value_is_refused(tiny_ckpt, no_loading):
    with pytest.raises(ModelLoadError, match="quantize must be one of 8bit, 4bit, fp8, "
                                             "int8-experts, int4-experts, got 'int4'"):
        load_model(str(tiny_ckpt), device="cpu", quantize="int4")
    assert no_loading == []


def test_missing_bitsandbytes_says_how_to_install(tiny_ckpt, no_loading, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` fails
    with pytest.raises(ModelLoadError) as e:
        load_model(str(tiny_ckpt), quantize="8bit")
    assert str(e.value) == f"--quantize 8bit (bitsandbytes) needs the bitsandbytes package: " \
                           f"{INSTALL_HINT}"
    assert 'pip install "sparse-safety-explorer[quantize]"' in str(e.value)
    assert no_loading == []


def test_broken_or_old_bitsandbytes(tiny_ckpt, no_loading, gpu_and_bnb, monkeypatch):
    gpu_and_bnb.__version__ = "0.41.0"
    with pytest.raises(ModelLoadError, match=r"bitsandbytes 0\.41\.0 is too old .*"
                                             r"pip install -U 'bitsandbytes>=0\.46\.1'"):
        load_model(str(tiny_ckpt), quantize="4bit")
    monkeypatch.setattr("builtins.__import__", _failing_import(
        "bitsandbytes", OSError("libcudart.so.12: cannot open shared object file")))
    with pytest.raises(ModelLoadError, match="bitsandbytes cannot be imported: libcudart"):
        load_model(str(tiny_ckpt), quantize="4bit")
    assert no_loading == []


def _failing_import(name, exc):
    real = __import__

    def imp(mod, *a, **k):
        if mod == name:
            raise exc
        return real(mod, *a, **k)
    return imp


def test_no_quantize_never_imports_bitsandbytes(tiny_ckpt, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # any import of it would fail
    moe = load_model(str(tiny_ckpt), device="cpu")
    assert moe.info.quantization is None and "quantization" not in moe.info.provenance()


def test_prequantized_checkpoint_is_refused(tmp_path, gpu_and_bnb, monkeypatch):
    model, _ = tiny_model("mixtral")
    model.config.quantization_config = {"quant_method": "fp8", "weight_block_size": [8, 8]}
    model.save_pretrained(tmp_path)
    calls = []
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: calls.append(k))
    with pytest.raises(ModelLoadError, match=r"is already quantized \(fp8\); --quantize "
                                             r"applies to full-precision checkpoints"):
        load_model(str(tmp_path), quantize="8bit")
    assert calls == []


def test_a_dense_model_is_refused_before_its_weights(tmp_path, gpu_and_bnb, monkeypatch):
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=32,
                                   num_hidden_layers=1, num_attention_heads=2)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    calls = []
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: calls.append(k))
    with pytest.raises(ModelLoadError, match="no MoE layers"):
        load_model(str(tmp_path), quantize="4bit")
    assert calls == []


# -- the config that reaches from_pretrained ---------------------------------------------------
def _router_names(model) -> list[str]:
    """Routers found independently of explorer.core.layers: by class name, outside
    attention (JetMoe's attention experts have a router too, which is not routed)."""
    return [n for n, m in model.named_modules()
            if ROUTER_NAME.search(type(m).__name__) and "attn" not in n and "attention" not in n]


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe", "deepseek_v3", "gpt_oss", "dbrx",
                                    "jetmoe", "llama4"])
def test_skip_list_keeps_routers_and_output_unquantized(family):
    from accelerate import init_empty_weights
    _, config = tiny_model(family)
    with init_empty_weights():
        meta = transformers.AutoModelForCausalLM.from_config(config)
    skip = skip_modules(meta)
    routers = _router_names(meta)
    assert routers and set(routers) <= set(skip)
    # transformers' own rule (what replace_with_bnb_linear asks) on every nn.Linear
    linears = {n: m for n, m in meta.named_modules() if type(m) is nn.Linear}
    converted = {n for n in linears if should_convert_module(n, skip)}
    for r in routers:
        assert not should_convert_module(r, skip)
        assert not any(n.startswith(r + ".") for n in converted), family  # dbrx, jetmoe
    assert "lm_head" in linears and "lm_head" not in converted
    assert converted  # the attention projections, at least
    # what transformers 5.24 leaves alone: routed experts are fused 3-D parameters, not
    # nn.Linear, so bitsandbytes never converts them (the docs say so; this fails loudly
    # when a transformers release changes it)
    experts = [m for m in meta.modules() if type(m).__name__.endswith("Experts")]
    assert experts, family
    for ex in experts:
        assert not any(type(m) is nn.Linear for m in ex.modules()), family
    for kind in ("8bit", "4bit"):
        cfg = bitsandbytes_config(kind, skip=skip, compute_dtype=torch.bfloat16)
        assert cfg.llm_int8_skip_modules == skip


def test_bitsandbytes_config_fields():
    c8 = bitsandbytes_config("8bit", skip=["lm_head"], compute_dtype=torch.bfloat16)
    assert c8.load_in_8bit and not c8.load_in_4bit and c8.quantization_method() == "llm_int8"
    c4 = bitsandbytes_config("4bit", skip=["lm_head"], compute_dtype=torch.float16)
    assert c4.load_in_4bit and not c4.load_in_8bit and c4.quantization_method() == "nf4"
    assert c4.bnb_4bit_compute_dtype == torch.float16 and c4.bnb_4bit_use_double_quant
    with pytest.raises(ValueError):
        bitsandbytes_config("none", skip=[], compute_dtype=torch.float16)


def _unquantized_stand_in(monkeypatch):
    """Replace from_pretrained: record its arguments, load the checkpoint on the CPU in
    float32 without quantization and attach the quantization config it was given (what
    bitsandbytes would leave on the model's config)."""
    seen = []
    orig = transformers.AutoModelForCausalLM.from_pretrained

    def fake(path, **kw):
        seen.append(kw)
        model = orig(path, dtype=torch.float32)
        model.config.quantization_config = kw["quantization_config"]
        return model
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake)
    return seen


@pytest.mark.parametrize("kind,dtype,compute", [("8bit", None, torch.bfloat16),
                                                ("4bit", None, torch.bfloat16),
                                                ("4bit", "float16", torch.float16)])
def test_load_model_passes_the_config(tiny_ckpt, gpu_and_bnb, monkeypatch, kind, dtype,
                                      compute):
    seen = _unquantized_stand_in(monkeypatch)
    moe = load_model(str(tiny_ckpt), quantize=kind, dtype=dtype)
    (kw,) = seen
    qc = kw["quantization_config"]
    assert isinstance(qc, transformers.BitsAndBytesConfig)
    assert (qc.load_in_8bit, qc.load_in_4bit) == (kind == "8bit", kind == "4bit")
    if kind == "4bit":
        assert qc.bnb_4bit_quant_type == "nf4" and qc.bnb_4bit_compute_dtype == compute
    assert kw["dtype"] == compute and kw["device_map"] == "cuda"  # auto -> the one GPU
    assert sorted(qc.llm_int8_skip_modules) == ["lm_head", "model.layers.0.mlp.gate",
                                                "model.layers.1.mlp.gate"]
    # what the explorer records
    assert moe.info.quantization == kind
    assert moe.info.provenance()["quantization"] == kind
    assert moe.info.to_dict()["quantization"] == kind


def test_explicit_cuda_device_is_the_device_map(tiny_ckpt, gpu_and_bnb, monkeypatch):
    seen = _unquantized_stand_in(monkeypatch)
    load_model(str(tiny_ckpt), device="cuda:1", quantize="8bit")
    assert seen[0]["device_map"] == "cuda:1"


def test_loader_failure_is_one_line_naming_quantize(tiny_ckpt, gpu_and_bnb, monkeypatch):
    def fail(path, **kw):
        raise ValueError("Some modules are dispatched on the CPU or the disk. Make sure\n"
                         "you have enough GPU RAM")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fail)
    with pytest.raises(ModelLoadError) as e:
        load_model(str(tiny_ckpt), quantize="8bit")
    assert str(e.value) == (f"cannot load {tiny_ckpt} with --quantize 8bit: Some modules are "
                            f"dispatched on the CPU or the disk. Make sure")


# -- the loaded model: quantized routers refused, provenance ----------------------------------
@pytest.mark.parametrize("family", ["mixtral", "dbrx"])
def test_a_quantized_router_is_refused(family):
    model, _ = tiny_model(family)
    lin = next(m for n, m in model.named_modules() if ROUTER_NAME.search(type(m).__name__))
    owner = getattr(lin, "layer", lin)  # dbrx's router wraps an nn.Linear
    owner.weight = nn.Parameter(owner.weight.detach().to(torch.int8), requires_grad=False)
    with pytest.raises(RouteError, match=r"the router of layer 0 \(\w+\) holds quantized "
                                         r"weights \(int8\)"):
        MoEModel(model, None, family)


def test_quantization_of():
    model, _ = tiny_model("qwen3_moe")
    assert quantization_of(model) is None
    model.config.quantization_config = transformers.BitsAndBytesConfig(load_in_4bit=True)
    assert quantization_of(model) == "4bit"
    model.config.quantization_config = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    assert quantization_of(model) == "8bit"
    model.config.quantization_config = {"quant_method": "mxfp4"}
    assert quantization_of(model) == "mxfp4"
    moe = MoEModel(model, None, "q")
    assert moe.info.quantization == "mxfp4" and moe.info.provenance()["quantization"] == "mxfp4"


def test_parameter_count_unpacks_4bit_weights():
    model, _ = tiny_model("mixtral")
    n = sum(p.numel() for p in model.parameters())
    assert parameter_count(model) == n
    w = model.model.layers[0].self_attn.q_proj.weight
    full = w.numel()
    packed = nn.Parameter(w.detach().reshape(-1)[: full // 2].reshape(-1, 1).clone(),
                          requires_grad=False)
    packed.quant_state = types.SimpleNamespace(shape=torch.Size(w.shape))  # as Params4bit
    model.model.layers[0].self_attn.q_proj.weight = packed
    assert sum(p.numel() for p in model.parameters()) == n - full // 2
    assert parameter_count(model) == n


# -- the CLI --------------------------------------------------------------------------------
def test_every_command_that_loads_a_model_takes_quantize():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    loading = {name: p for name, p in sub.choices.items()
               if any("--model" in a.option_strings for a in p._actions)}
    assert {"trace", "info", "fsour", "evaluate", "bench"} <= set(loading)
    for name, p in loading.items():
        (opt,) = [a for a in p._actions if "--quantize" in a.option_strings]
        assert opt.default is None, name


@pytest.mark.parametrize("argv,fragment", [
    (["--quantize", "3bit"], "argument --quantize: expected one of 8bit, 4bit, fp8, "
                             "int8-experts, int4-experts, got '3bit'"),
    (["--quantize", "fp8", "--device", "cpu"],
     "--quantize fp8 needs a CUDA GPU of compute capability 8.9 or newer, but the device "
     "asked for is cpu; use --quantize int8-experts or int4-experts there"),
    (["--quantize", "8bit", "--device", "cpu"],
     "--quantize 8bit (bitsandbytes) needs a CUDA GPU, but the device asked for is cpu"),
])
def test_cli_errors_are_one_line(tiny_ckpt, capsys, argv, fragment):
    rc = main(["info", "--model", str(tiny_ckpt)] + argv)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert len(err.splitlines()) == 1 and fragment in err, err


def test_cli_flag_reaches_load_model_and_the_cache_key(tiny, tiny_ckpt, monkeypatch):
    import explorer.core.model as core_model
    calls = []

    def fake(name, **kw):
        calls.append(kw["quantize"])
        return tiny
    monkeypatch.setattr(core_model, "load_model", fake)
    parser = build_parser()

    def load(*extra):
        args = parser.parse_args(["info", "--model", str(tiny_ckpt), "--device", "cpu", *extra])
        args.settings = Settings()
        return load_from_args(args)
    clear_model_cache()
    try:
        load("--quantize", "4bit")
        load("--quantize", "4BIT")  # the same model: from the cache
        load("--quantize", "8bit")
        load()
        load("--quantize", "8bit")
    finally:
        clear_model_cache()
    assert calls == ["4bit", "8bit", None]


def test_info_says_how_the_model_was_loaded(tiny_ckpt, gpu_and_bnb, monkeypatch, capsys):
    import json
    _unquantized_stand_in(monkeypatch)
    clear_model_cache()
    try:
        assert main(["info", "--model", str(tiny_ckpt), "--quantize", "4bit"]) == 0
        assert ", quantized 4bit" in capsys.readouterr().out.splitlines()[0]
        assert main(["info", "--model", str(tiny_ckpt), "--quantize", "4bit", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["quantization"] == "4bit"
    finally:
        clear_model_cache()


# -- the app's setting ------------------------------------------------------------------------
def test_setting_from_environment_and_flag():
    assert Settings.from_env({}).quantize is None
    assert Settings.from_env({"EXPLORER_QUANTIZE": " 8BIT "}).quantize == "8bit"
    assert Settings.from_env({"EXPLORER_QUANTIZE": ""}).quantize is None
    assert Settings.from_env({"EXPLORER_QUANTIZE": "8bit"}, quantize="4bit").quantize == "4bit"
    assert Settings.from_env({"EXPLORER_QUANTIZE": "INT8-experts"}).quantize == "int8-experts"
    with pytest.raises(ValueError, match="EXPLORER_QUANTIZE must be one of 8bit, 4bit, fp8, "
                                         "int8-experts, int4-experts"):
        Settings.from_env({"EXPLORER_QUANTIZE": "fp4"})
    import app
    assert app.parse_args(["--quantize", "4bit"], env={}).settings.quantize == "4bit"
    assert app.parse_args([], env={"EXPLORER_QUANTIZE": "8bit"}).settings.quantize == "8bit"
    assert app.parse_args(["--quantize", "4bit"],
                          env={"EXPLORER_QUANTIZE": "8bit"}).settings.quantize == "4bit"
    with pytest.raises(SystemExit):
        app.parse_args(["--quantize", "2bit"], env={})
    with pytest.raises(SystemExit):
        app.parse_args([], env={"EXPLORER_QUANTIZE": "2bit"})


def test_app_loads_with_its_quantize_setting(tiny, tiny_ckpt, tmp_path):
    pytest.importorskip("gradio")
    from explorer.app.context import Explorer
    ctx = Explorer(tiny, data_dir=tmp_path, device="cpu", settings=Settings(quantize="8bit"))
    try:
        with pytest.raises(ModelLoadError, match="--quantize 8bit .* the device asked for is cpu"):
            ctx.load_model(str(tiny_ckpt))
        # at start-up the app keeps running and shows the one line
        bad = Explorer(str(tiny_ckpt), data_dir=tmp_path / "b", device="cpu",
                       settings=Settings(quantize="4bit"))
        assert bad.moe is None and bad.error.startswith("--quantize 4bit (bitsandbytes) "
                                                        "needs a CUDA GPU")
    finally:
        ctx.jobs.shutdown(wait=True, timeout=30)


def test_app_shows_the_quantization(tmp_path, tiny_ckpt):
    pytest.importorskip("gradio")
    from explorer.app.context import Explorer
    from explorer.app.format import model_card, model_header
    model, _ = tiny_model("olmoe")
    ctx = Explorer(MoEModel(model, None, "plain"), data_dir=tmp_path, device="cpu")
    try:
        assert "quantized" not in model_card(ctx)[0] and "bit)" not in model_header(ctx)
        model.config.quantization_config = {"quant_method": "bitsandbytes", "load_in_4bit": True}
        ctx.set_model(MoEModel(model, None, "q"))
        assert "quantized: **4bit**" in model_card(ctx)[0]
        assert model_header(ctx).endswith("cpu float32 (4bit)")
        ctx.set_model(load_model(str(tiny_ckpt), device="cpu", quantize="int8-experts"))
        card = model_card(ctx)[0]
        assert "quantized: **int8-experts**" in card
        assert f"{ctx.moe.info.weight_bytes / 2**20:.1f} MiB of weights as stored" in card
    finally:
        ctx.jobs.shutdown(wait=True, timeout=30)


# -- fp8 (transformers' fine-grained FP8, routed experts included) ---------------------------
@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_fp8_off_a_gpu_is_refused_in_one_line(tiny_ckpt, no_loading, device):
    with pytest.raises(ModelLoadError) as e:
        load_model(str(tiny_ckpt), device=device, quantize="fp8")
    assert str(e.value) == (f"--quantize fp8 needs a CUDA GPU of compute capability 8.9 or "
                            f"newer, but the device asked for is {device}; use --quantize "
                            f"int8-experts or int4-experts there")
    assert no_loading == []


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_fp8_without_cuda_is_refused(tiny_ckpt, no_loading, device):
    with pytest.raises(ModelLoadError) as e:
        load_model(str(tiny_ckpt), device=device, quantize="fp8")
    assert str(e.value) == (f"--quantize fp8 needs a CUDA GPU of compute capability 8.9 or "
                            f"newer, but none is available (device {device}); use --quantize "
                            f"int8-experts or int4-experts there")
    assert no_loading == []


@pytest.fixture
def fp8_gpu(monkeypatch):
    """Pretend a CUDA GPU of capability 9.0 and the kernels package are there (the load
    itself is replaced where a test gets that far: see the module's docs)."""
    import transformers.utils
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: "NVIDIA H100")
    monkeypatch.setattr(transformers.utils, "is_kernels_available", lambda: True)


def test_fp8_needs_capability_and_kernels(tiny_ckpt, no_loading, fp8_gpu, monkeypatch):
    import transformers.utils
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: "NVIDIA A100")
    with pytest.raises(ModelLoadError) as e:
        load_model(str(tiny_ckpt), device="cuda", quantize="fp8")
    assert str(e.value) == ("--quantize fp8 needs a CUDA GPU of compute capability 8.9 or "
                            "newer, but NVIDIA A100 has 8.0; use --quantize int8-experts or "
                            "int4-experts there")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: (8, 9))
    monkeypatch.setattr(transformers.utils, "is_kernels_available", lambda: False)
    with pytest.raises(ModelLoadError, match=r"^--quantize fp8 needs the kernels package .*"
                                             r"pip install kernels$"):
        load_model(str(tiny_ckpt), quantize="fp8")
    assert no_loading == []


def test_fp8_config_reaches_from_pretrained(tiny_ckpt, fp8_gpu, monkeypatch):
    seen = _unquantized_stand_in(monkeypatch)
    moe = load_model(str(tiny_ckpt), quantize="fp8")
    (kw,) = seen
    qc = kw["quantization_config"]
    assert isinstance(qc, transformers.FineGrainedFP8Config)
    assert sorted(qc.modules_to_not_convert) == ["lm_head", "model.layers.0.mlp.gate",
                                                 "model.layers.1.mlp.gate"]
    assert qc.weight_block_size == (32, 32)  # the tiny model's experts: 32 x 32 and 64 x 32
    assert qc.activation_scheme == "dynamic" and kw["device_map"] == "cuda"
    assert moe.info.quantization == "fp8" and moe.info.provenance()["quantization"] == "fp8"


@pytest.mark.parametrize("family", ["mixtral", "olmoe", "qwen3_moe", "deepseek_v3"])
def test_fp8_converts_experts_but_not_routers_or_output(family):
    """transformers' own conversion (on an empty model) with our config: the routed
    experts become FP8Experts and the attention FP8Linear; routers and lm_head stay."""
    from accelerate import init_empty_weights
    from transformers.integrations.finegrained_fp8 import (
        FP8Experts,
        FP8Linear,
        replace_with_fp8_linear,
    )

    from explorer.core.layers import LayerHandles, discover_layers
    from explorer.core.quantize import fp8_block_size, fp8_config, fp8_refusal
    _, config = tiny_model(family)
    with init_empty_weights():
        meta = transformers.AutoModelForCausalLM.from_config(config)
    assert fp8_refusal(meta) is None
    routers = [x.router for x in discover_layers(meta) if isinstance(x, LayerHandles)]
    router_types = [type(r) for r in routers]
    cfg = fp8_config(skip=skip_modules(meta), block=fp8_block_size(meta))
    replace_with_fp8_linear(meta, modules_to_not_convert=cfg.modules_to_not_convert,
                            quantization_config=cfg)
    experts = [m for n, m in meta.named_modules() if n.endswith(".experts")]
    assert experts and all(isinstance(m, FP8Experts) for m in experts)
    after = [x.router for x in discover_layers(meta) if isinstance(x, LayerHandles)]
    assert [type(r) for r in after] == router_types
    assert all(not isinstance(m, FP8Linear) for r in after for m in r.modules())
    assert type(meta.lm_head) is nn.Linear
    assert isinstance(meta.model.layers[0].self_attn.o_proj, FP8Linear)


@pytest.mark.parametrize("family,why", [
    ("gpt_oss", "its GptOssExperts have biases, which FP8 experts do not support"),
    ("dbrx", "its DbrxExperts modules are not fused experts FP8 can hold"),
])
def test_fp8_refuses_experts_it_cannot_hold(tmp_path, fp8_gpu, monkeypatch, family, why):
    tiny_model(family)[0].save_pretrained(tmp_path)
    calls = []
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: calls.append(k))
    with pytest.raises(ModelLoadError) as e:
        load_model(str(tmp_path), quantize="fp8")
    assert str(e.value) == (f"{tmp_path} cannot be loaded with --quantize fp8: {why}; use "
                            f"--quantize int8-experts or int4-experts")
    assert calls == []


# -- int8 / int4 routed experts (explorer.core.experts_quant) ---------------------------------
EXPERT_FAMILIES = ["mixtral", "olmoe", "qwen3_moe", "deepseek_v3", "gpt_oss"]
IDS = [5, 17, 33, 9, 64, 21, 40, 77, 12, 3]
#: Largest |logit - float logit| allowed on the tiny models (measured: int8 <= 2.6e-3,
#: int4 <= 6.5e-2, with logits of magnitude ~0.5).
LOGIT_TOL = {"int8-experts": 5e-3, "int4-experts": 0.15}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``saved(family)``: the tiny model saved once to a folder."""
    folders = {}

    def get(family):
        if family not in folders:
            folders[family] = tmp_path_factory.mktemp(family)
            tiny_model(family)[0].save_pretrained(folders[family])
        return str(folders[family])
    return get


def _expected_bytes(module, mode) -> tuple[int, int]:
    """(float bytes, bytes as stored once quantized) of an experts module's projections,
    computed from the format's description (not from the code under test)."""
    fl = q = 0
    for name in ("gate_up_proj", "up_proj", "down_proj"):
        p = module._parameters.get(name)
        if p is None:
            continue
        E, a, b = p.shape
        out, k = (b, a) if module.is_transposed else (a, b)
        fl += p.numel() * p.element_size()
        if mode == "int8-experts":
            q += E * out * k + E * out * 4
        else:
            g = min(64, k)
            groups = -(-k // g)
            q += E * out * groups * g // 2 + E * out * groups * 4
    return fl, q


@pytest.mark.parametrize("mode", ["int8-experts", "int4-experts"])
@pytest.mark.parametrize("family", EXPERT_FAMILIES)
def test_experts_quantized_load(saved, family, mode):
    from explorer.core.experts_quant import is_quantized, weight_bytes
    plain = load_model(saved(family), device="cpu")
    moe = load_model(saved(family), device="cpu", quantize=mode)
    assert moe.info.quantization == mode and plain.info.quantization is None
    prov = moe.info.provenance()
    assert prov["quantization"] == mode and prov["weight_bytes"] == weight_bytes(moe.model)
    assert moe.info.to_dict()["weight_bytes"] == moe.info.weight_bytes
    assert moe.info.parameters == plain.info.parameters  # the weights they stand for
    # every routed experts module converted; everything else as it was, bit for bit
    assert all(is_quantized(h.experts) for h in moe.handles)
    converted = {f"{n}.{p}" for n, m in plain.model.named_modules() for p in
                 ("gate_up_proj", "up_proj", "down_proj") if any(
                     m is h.experts for h in plain.handles) and p in m._parameters}
    kept = dict(moe.model.named_parameters())
    assert set(kept) == set(dict(plain.model.named_parameters())) - converted
    for name, p in plain.model.named_parameters():
        if name not in converted:
            assert kept[name].dtype == p.dtype and torch.equal(kept[name], p), name
    # the memory: exactly the experts' saving, by the expected ratio
    fl = q = 0
    for h in plain.handles:
        a, b = _expected_bytes(h.experts, mode)
        fl, q = fl + a, q + b
    assert weight_bytes(plain.model) - weight_bytes(moe.model) == fl - q
    assert fl / q >= (3.5 if mode == "int8-experts" else 6.0)
    # the logits: close to the float model's, within the mode's bound
    ids = torch.tensor([IDS])
    with torch.inference_mode():
        diff = float((moe.model(ids).logits - plain.model(ids).logits).abs().max())
    assert 0 < diff <= LOGIT_TOL[mode], diff


def test_int4_is_coarser_than_int8(saved):
    ids = torch.tensor([IDS])
    with torch.inference_mode():
        base = load_model(saved("mixtral"), device="cpu").model(ids).logits
        d8, d4 = (float((load_model(saved("mixtral"), device="cpu", quantize=m).model(ids)
                         .logits - base).abs().max()) for m in ("int8-experts", "int4-experts"))
    assert 4 * d8 < d4


@pytest.mark.parametrize("bits,transposed", [(8, False), (8, True), (4, False), (4, True)])
def test_quantize_error_is_within_half_a_step(bits, transposed):
    from explorer.core.experts_quant import dequantize, quantize
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 70, 150, generator=gen)  # 150 inputs: int4 pads the third group
    if transposed:  # the layout (E, in, out)
        w = w.transpose(1, 2).contiguous()
    wn = w.transpose(1, 2) if transposed else w  # a view (E, out, in)
    wn[1, 2] = 0.0  # an all-zero output channel stays zero
    group = 64 if bits == 4 else None
    q, scale, spec = quantize(w, bits, group, transposed)
    back = dequantize(q, scale, spec)
    assert back.shape == w.shape and back.dtype == w.dtype
    assert q.dtype == (torch.int8 if bits == 8 else torch.uint8)
    assert q.numel() == (3 * 70 * 150 if bits == 8 else 3 * 70 * 192 // 2)
    step = {8: 127, 4: 7}[bits]
    if bits == 8:
        s = wn.abs().amax(-1, keepdim=True) / step
    else:
        s = torch.nn.functional.pad(wn, (0, 42)).reshape(3, 70, 3, 64).abs().amax(-1) / step
        s = s.repeat_interleave(64, -1)[..., :150]
    back_n = back.transpose(1, 2) if transposed else back
    err = back_n - wn
    assert bool((err.abs() <= s / 2 + 1e-6).all())
    assert float(err.abs().max()) > 1e-3  # it did round
    assert torch.equal(back_n[1, 2], torch.zeros(150))
    # values on the grid come back (to float rounding)
    again = dequantize(*quantize(back, bits, group, transposed))
    assert torch.allclose(again, back, rtol=0, atol=1e-6)


def _computed(log, module) -> set[int]:
    return {e for m, experts in log if m is module for e in experts}


@pytest.mark.parametrize("mode", ["int8-experts", "int4-experts"])
@pytest.mark.parametrize("family", EXPERT_FAMILIES)
def test_route_control_on_quantized_experts(saved, family, mode):
    from explorer.core.experts_quant import dequantize_log
    from explorer.core.route import Route
    moe = load_model(saved(family), device="cpu", quantize=mode)
    ids = torch.tensor([IDS])
    with moe.control(record=True) as ctl, torch.inference_mode():
        base = moe.model(ids).logits
    t, lay = 4, moe.moe_layers[-1]
    h = moe.handle(lay)
    natural = set(ctl.collected(lay)["experts"][0, t].tolist())
    forced = other_experts(h, natural)
    with dequantize_log() as log, moe.control(Route().force(lay, t, forced), record=True) \
            as c2, torch.inference_mode():
        new = moe.model(ids).logits
    assert sorted(c2.collected(lay)["experts"][0, t].tolist()) == forced
    assert set(forced) <= _computed(log, h.experts)
    assert torch.equal(new[0, :t], base[0, :t])  # earlier positions: the same bits
    assert not torch.equal(new[0, t:], base[0, t:])
    # forced at every position: exactly the forced experts are dequantized and computed
    with dequantize_log() as log, moe.control(Route().force(lay, None, forced), record=True) \
            as c3, torch.inference_mode():
        moe.model(ids)
    assert _computed(log, h.experts) == set(forced)
    assert set(c3.collected(lay)["experts"].flatten().tolist()) == set(forced)
    # masked: never recorded, never dequantized
    nat_all = set(ctl.collected(lay)["experts"][0].flatten().tolist())
    masked = sorted(nat_all)[: max(1, min(len(nat_all), h.info.num_experts - h.info.top_k))]
    if h.info.n_group:  # keep group limits satisfiable: mask one expert
        masked = masked[:1]
    with dequantize_log() as log, moe.control(Route().mask(lay, None, masked), record=True) \
            as c4, torch.inference_mode():
        moe.model(ids)
    assert not set(c4.collected(lay)["experts"].flatten().tolist()) & set(masked)
    assert _computed(log, h.experts) and not _computed(log, h.experts) & set(masked)


def test_dequantize_log_is_scoped(saved):
    from explorer.core.experts_quant import dequantize_log
    moe = load_model(saved("olmoe"), device="cpu", quantize="int8-experts")
    with dequantize_log() as log, torch.inference_mode():
        moe.model(torch.tensor([IDS]))
    n = len(log)
    assert n == len(moe.handles)  # one entry per MoE layer and call
    with torch.inference_mode():
        moe.model(torch.tensor([IDS]))
    assert len(log) == n  # nothing recorded outside the block


def test_experts_modes_need_fused_experts(tmp_path):
    tiny_model("dbrx")[0].save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError) as e:
        load_model(str(tmp_path), device="cpu", quantize="int8-experts")
    assert str(e.value) == (f"{tmp_path} has no fused routed experts that --quantize "
                            f"int8-experts can convert; load it without --quantize")


def test_info_and_bench_report_the_weights(tiny_ckpt, capsys):
    import json

    from explorer.bench.cost import synthetic_model
    from explorer.bench.runner import run_bench
    from explorer.cli.commands.bench import bench_text
    from explorer.core.errors import InputError
    clear_model_cache()
    try:
        assert main(["info", "--model", str(tiny_ckpt), "--device", "cpu", "--json"]) == 0
        plain = json.loads(capsys.readouterr().out)
        assert main(["info", "--model", str(tiny_ckpt), "--device", "cpu", "--quantize",
                     "int4-experts", "--json"]) == 0
        q = json.loads(capsys.readouterr().out)
        assert main(["info", "--model", str(tiny_ckpt), "--device", "cpu", "--quantize",
                     "int4-experts"]) == 0
        head = capsys.readouterr().out.splitlines()[0]
    finally:
        clear_model_cache()
    assert plain["quantization"] is None and q["quantization"] == "int4-experts"
    assert 0 < q["weight_bytes"] < plain["weight_bytes"]
    assert q["parameters"] == plain["parameters"]
    assert f", quantized int4-experts, weights {q['weight_bytes'] / 2**20:.1f} MiB as " \
           f"stored" in head
    with pytest.raises(InputError, match="--quantize fp8 needs a checkpoint"):
        synthetic_model("olmoe-small", device="cpu", quantize="fp8")
    moe = synthetic_model("olmoe-small", device="cpu", quantize="int8-experts")
    b = run_bench(moe, sizes=(), search=False)
    assert b["quantization"] == "int8-experts" and b["weight_bytes"] == moe.info.weight_bytes
    assert f"weights: int8-experts, {b['weight_bytes'] / 2**20:.1f} MiB as stored" \
        in bench_text(b)
