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
from tiny_models import tiny_model
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
    for bad in ("int8", "16bit", "8", 8):
        with pytest.raises(ValueError, match="quantize must be one of 8bit, 4bit"):
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
    with pytest.raises(ModelLoadError, match="quantize must be one of 8bit, 4bit, got 'int4'"):
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
    (["--quantize", "3bit"], "argument --quantize: expected 8bit or 4bit, got '3bit'"),
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
    with pytest.raises(ValueError, match="EXPLORER_QUANTIZE must be 8bit or 4bit"):
        Settings.from_env({"EXPLORER_QUANTIZE": "fp8"})
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


def test_app_shows_the_quantization(tmp_path):
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
    finally:
        ctx.jobs.shutdown(wait=True, timeout=30)
