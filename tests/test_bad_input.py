"""Bad input everywhere gives exit status 2 and one clear line on stderr; plus the model's
prompt limits, the CLI's model cache, and the security rules (JSON only, no key leaks,
no remote code unless asked)."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from conftest import closed_port

from explorer.cli import main as cli
from explorer.cli import options
from explorer.cli.main import main
from explorer.core.errors import one_line
from explorer.core.route import Route, RouteError

ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-test-SECRET-4f1c9a"


_closed_port = closed_port


@pytest.fixture(scope="module")
def dense_ckpt(tmp_path_factory, tiny_ckpt) -> Path:
    """A tiny dense Llama (no MoE layers) with the demo tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    tok = AutoTokenizer.from_pretrained(tiny_ckpt)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32,
                                         intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4))
    out = tmp_path_factory.mktemp("dense") / "tiny-llama"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_ckpt) -> dict[str, str]:
    """Input files, good and bad, named by key."""
    d = tmp_path_factory.mktemp("inputs")
    hash_ = _tiny_provenance(tiny_ckpt)["chat_template_hash"]

    def route(edits, **info):
        return json.dumps({"edits": edits, "info": info})

    def edit(layer=0, position=2, experts=(6, 7), mode="force"):
        return {"layer": layer, "position": position, "experts": list(experts), "mode": mode}
    texts = {
        "ok.json": route([edit()], prompt="Hello there", chat_template_hash=hash_),
        "noprompt.json": route([edit()]),
        "emptyprompt.json": route([edit()], prompt="  "),
        "notjson.json": "{not json",
        "list.json": "[1, 2]",
        "editsobj.json": '{"edits": {}}',
        "deep.json": "[" * 50_000,
        "missing.json": json.dumps({"edits": [{"layer": 0, "position": 1}]}),
        "unknownkey.json": json.dumps({"edits": [{**edit(), "weight": 2}]}),
        "strexpert.json": route([edit(experts=("1", 2))]),
        "twice.json": route([edit(experts=(3, 3))]),
        "mode.json": route([edit(mode="swap")]),
        "layer9.json": route([edit(layer=9)], prompt="hi"),
        "layerneg.json": route([edit(layer=-1)], prompt="hi"),
        "pos500.json": route([edit(position=500)], prompt="hi"),
        "posneg.json": route([edit(position=-3)], prompt="hi"),
        "expert8.json": route([edit(experts=(1, 8))], prompt="hi"),
        "expertneg.json": route([edit(experts=(-1, 2))], prompt="hi"),
        "size3.json": route([edit(experts=(1, 2, 3))], prompt="hi"),
        "size1.json": route([edit(experts=(1,))], prompt="hi"),
        "maskall.json": route([edit(position=None, experts=range(7), mode="mask")],
                              prompt="hi"),
        "other.json": route([edit(layer=5)], prompt="hi", model="someone/other-moe",
                            chat_template_hash="0123456789abcdef"),
        "nogoal.csv": "prompt,target\nx,y\n",
        "broken.csv": "goal,target\nfirst,Sure\nsecond\n",
        "emptygoal.csv": "goal,target\n ,Sure\n",
        "empty.csv": "",
        "ok.csv": "goal,target\nSay hello,Sure\n",
    }
    out = {}
    for name, text in texts.items():
        (d / name).write_text(text, encoding="utf-8")
        out[name] = str(d / name)
    (d / "binary.json").write_bytes(b"\x80\x81\xfe{")
    out["binary.json"] = str(d / "binary.json")
    (d / "latin1.csv").write_bytes("goal\ncaf\xe9\n".encode("latin-1"))
    out["latin1.csv"] = str(d / "latin1.csv")
    (d / "notamodel").mkdir()
    out["notamodel"] = str(d / "notamodel")
    out["dir"] = str(d)
    return out


def _tiny_provenance(tiny_ckpt) -> dict:
    from explorer import load_model
    return load_model(str(tiny_ckpt), device="cpu").info.provenance()


def run_cli(argv, capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_one_error_line(err: str, fragment: str) -> None:
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.endswith("\n"), repr(err)
    assert err.startswith("error: "), err
    assert fragment in err, f"{fragment!r} not in {err!r}"


LONG = "hello " * 600  # > 512 tokens: the tiny model's context
CASES = [
    # prompts
    ("empty prompt", ["trace", "--prompt", ""], "the prompt is empty"),
    ("blank prompt", ["trace", "--prompt", " \n\t "], "the prompt is empty"),
    ("empty prompt rosais", ["rosais", "--prompt", ""], "the prompt is empty"),
    ("empty prompt fsour", ["fsour", "--prompt", "  "], "the prompt is empty"),
    ("lone surrogate", ["trace", "--prompt", "hi \ud800"], "not valid Unicode"),
    ("replay without prompt", ["replay", "--route", "F:noprompt.json"], "pass --prompt"),
    ("replay empty prompt", ["replay", "--route", "F:emptyprompt.json"], "prompt is empty"),
    ("prompt beyond context", ["trace", "--prompt", LONG],
     "the limit is 512 (the model's context)"),
    ("prompt beyond context rosais", ["rosais", "--prompt", LONG], "too long"),
    ("prompt beyond context fsour", ["fsour", "--prompt", LONG], "too long"),
    ("prompt beyond context replay", ["replay", "--route", "F:ok.json", "--prompt", LONG],
     "too long"),
    ("generation beyond context", ["trace", "--prompt", "hi", "--max-new-tokens", "513"],
     "--max-new-tokens 513 is more than the model's context of 512"),
    # route files
    ("route not JSON", ["trace", "--prompt", "hi", "--route", "F:notjson.json"],
     "route is not valid JSON"),
    ("route a list", ["trace", "--prompt", "hi", "--route", "F:list.json"],
     "must be an object"),
    ("route edits not a list", ["trace", "--prompt", "hi", "--route", "F:editsobj.json"],
     "'edits' list"),
    ("route nested too deeply", ["trace", "--prompt", "hi", "--route", "F:deep.json"],
     "nested too deeply"),
    ("route not UTF-8", ["trace", "--prompt", "hi", "--route", "F:binary.json"],
     "not UTF-8"),
    ("route file missing", ["trace", "--prompt", "hi", "--route", "/no/such/route.json"],
     "cannot read route file"),
    ("route file is a folder", ["trace", "--prompt", "hi", "--route", "F:dir"],
     "cannot read route file"),
    ("edit missing experts", ["trace", "--prompt", "hi", "--route", "F:missing.json"],
     "missing experts"),
    ("edit unknown key", ["trace", "--prompt", "hi", "--route", "F:unknownkey.json"],
     "unknown keys ['weight']"),
    ("expert not an int", ["trace", "--prompt", "hi", "--route", "F:strexpert.json"],
     "expert indices must be integers"),
    ("expert twice", ["trace", "--prompt", "hi", "--route", "F:twice.json"], "twice"),
    ("bad mode", ["trace", "--prompt", "hi", "--route", "F:mode.json"], "mode must be"),
    ("layer out of range", ["trace", "--prompt", "hi", "--route", "F:layer9.json"],
     "layer 9 is out of range: the model has decoder layers 0..1"),
    ("negative layer", ["replay", "--route", "F:layerneg.json"], "layer -1 is out of range"),
    ("position out of range", ["trace", "--prompt", "hi", "--route", "F:pos500.json"],
     "position 500 is out of range"),
    ("negative position", ["replay", "--route", "F:posneg.json"], "position -3 is negative"),
    ("expert out of range", ["trace", "--prompt", "hi", "--route", "F:expert8.json"],
     "expert 8 is out of range at layer 0: experts are 0..7"),
    ("negative expert", ["replay", "--route", "F:expertneg.json"], "expert -1 is out of range"),
    ("forced set too big", ["trace", "--prompt", "hi", "--route", "F:size3.json"],
     "must have exactly top-k = 2 experts, got 3"),
    ("forced set too small", ["replay", "--route", "F:size1.json"],
     "must have exactly top-k = 2 experts, got 1"),
    ("mask leaves too few", ["replay", "--route", "F:maskall.json"],
     "leave 1 allowed expert(s)"),
    ("route for another model", ["replay", "--route", "F:other.json"],
     "route was made for model 'someone/other-moe'"),
    # models
    ("model path missing", ["info", "--model", "/no/such/model"],
     "model path /no/such/model does not exist"),
    ("relative model path missing", ["trace", "--prompt", "hi", "--model", "./nope"],
     "does not exist"),
    ("folder without config", ["info", "--model", "F:notamodel"], "not a model folder"),
    ("model name not a hub id", ["info", "--model", "two words"],
     "neither an existing folder nor a hub id"),
    ("model with no MoE layers", ["info", "--model", "DENSE"], "has no MoE layers"),
    ("bad device", ["info", "--device", "tpu9"], "argument --device"),
    ("bad dtype", ["info", "--dtype", "float8"], "argument --dtype"),
    # datasets
    ("dataset without goal column", ["evaluate", "--dataset", "F:nogoal.csv"],
     "no 'goal' column"),
    ("dataset broken row", ["evaluate", "--dataset", "F:broken.csv"],
     "row 2 (line 3) has 1 fields, the header has 2"),
    ("dataset empty goal", ["evaluate", "--dataset", "F:emptygoal.csv"],
     "row 1 (line 2) has an empty goal"),
    ("dataset empty file", ["evaluate", "--dataset", "F:empty.csv"], "the file is empty"),
    ("dataset not UTF-8", ["evaluate", "--dataset", "F:latin1.csv"], "not a UTF-8"),
    ("dataset missing", ["evaluate", "--dataset", "/no/such.csv"], "is not a file"),
    # judges
    ("unreachable judge evaluate", ["evaluate", "--dataset", "F:ok.csv", "--judge", "rubric",
                                    "--judge-url", "URL", "--judge-model", "m"],
     "is unreachable"),
    ("unreachable judge fsour", ["fsour", "--prompt", "hi", "--judge", "rubric",
                                 "--judge-url", "URL", "--judge-model", "m"], "is unreachable"),
    ("judge URL scheme", ["fsour", "--prompt", "hi", "--judge", "rubric", "--judge-url",
                          "file:///etc/passwd", "--judge-model", "m"], "must start with http"),
    ("unknown judge", ["evaluate", "--dataset", "F:ok.csv", "--judge", "oracle"],
     "unknown judge 'oracle'"),
    ("classifier without model", ["fsour", "--prompt", "hi", "--judge", "classifier"],
     "needs --judge-model"),
    ("classifier path missing", ["evaluate", "--dataset", "F:ok.csv", "--judge",
                                 "classifier", "--judge-model", "/no/such/clf"],
     "does not exist"),
    # budgets and numbers
    ("zero candidates", ["fsour", "--prompt", "hi", "--candidates", "0"],
     "argument --candidates: expected a positive integer, got 0"),
    ("negative candidates", ["fsour", "--prompt", "hi", "--candidates", "-4"],
     "argument --candidates: expected a positive integer, got -4"),
    ("zero iterations", ["fsour", "--prompt", "hi", "--max-iters", "0"], "--max-iters"),
    ("zero samples", ["rosais", "--prompt", "hi", "--samples", "0"], "--samples"),
    ("negative top", ["rosais", "--prompt", "hi", "--top", "-1"], "--top"),
    ("evaluate zero candidates", ["evaluate", "--dataset", "F:ok.csv", "--candidates", "0"],
     "--candidates"),
    ("evaluate zero iterations", ["evaluate", "--dataset", "F:ok.csv", "--max-iters", "0"],
     "--max-iters"),
    ("evaluate zero samples", ["evaluate", "--dataset", "F:ok.csv", "--samples", "0"],
     "--samples"),
    ("evaluate zero limit", ["evaluate", "--dataset", "F:ok.csv", "--limit", "0"], "--limit"),
    ("bench zero candidates", ["bench", "--candidates", "0"], "--candidates"),
    ("bench zero samples", ["bench", "--samples", "0"], "--samples"),
    ("defend zero candidates", ["defend", "--candidates", "0"], "positive integer"),
    ("rosais-curve zero samples", ["rosais-curve", "--samples", "0"], "positive integer"),
    ("negative max-new-tokens", ["trace", "--prompt", "hi", "--max-new-tokens", "-3"],
     "non-negative"),
    ("junk max-new-tokens", ["trace", "--prompt", "hi", "--max-new-tokens", "lots"],
     "expected an integer"),
    ("NaN threshold", ["fsour", "--prompt", "hi", "--threshold", "nan"], "log-probability"),
    ("positive threshold", ["fsour", "--prompt", "hi", "--threshold", "0.5"],
     "log-probability"),
    ("NaN threshold defend", ["defend", "--threshold", "nan"], "log-probability"),
    ("mask ratio 0", ["rosais", "--prompt", "hi", "--mask-ratio", "0"], "between 0 and 1"),
    ("mask ratio NaN", ["rosais-curve", "--mask-ratio", "nan"], "between 0 and 1"),
    ("negative seed", ["fsour", "--prompt", "hi", "--seed", "-1"], "a seed must lie in"),
    ("huge seed", ["evaluate", "--dataset", "F:ok.csv", "--seed", str(2**70)],
     "a seed must lie in"),
    ("huge seed defend", ["defend", "--seed", str(2**70)], "a seed must lie in"),
    ("empty target", ["fsour", "--prompt", "hi", "--target", " "], "the target is empty"),
    ("out folder missing", ["fsour", "--prompt", "hi", "--out", "/no/such/dir/r.json"],
     "does not exist"),
    ("out is a folder", ["evaluate", "--dataset", "F:ok.csv", "--out", "F:dir"],
     "is a folder"),
    ("out under a file", ["evaluate", "--dataset", "F:ok.csv", "--out", "F:ok.csv/x/r.jsonl"],
     "is not a folder"),
    ("resume without out", ["evaluate", "--dataset", "F:ok.csv", "--resume"],
     "--resume needs --out"),
    # the command line itself
    ("unknown command", ["nosuchcommand"], "invalid choice"),
    ("unknown option", ["info", "--colour"], "unrecognized arguments"),
    ("missing value", ["trace", "--prompt"], "expected one argument"),
    ("no command", [], "choose a command"),
]


@pytest.mark.parametrize("argv,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line(argv, fragment, tiny_ckpt, dense_ckpt, files,
                                         capsys, monkeypatch):
    monkeypatch.delenv("EXPLORER_MAX_PROMPT_TOKENS", raising=False)
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    argv = [files[a[2:].split("/")[0]] + a[2:][len(a[2:].split("/")[0]):]
            if a.startswith("F:") else str(dense_ckpt) if a == "DENSE"
            else url if a == "URL" else a for a in argv]
    if argv and argv[0] in cli.COMMANDS and "--model" not in argv:
        argv += ["--model", str(tiny_ckpt)]
    rc, out, err = run_cli(argv, capsys)
    assert rc == 2, (rc, err)
    assert_one_error_line(err, fragment)
    if argv:
        assert out == ""


def test_generation_within_context_is_fine(tiny_ckpt, capsys):
    rc, out, err = run_cli(["trace", "--prompt", "hi", "--max-new-tokens", "0", "--json",
                            "--model", tiny_ckpt], capsys)
    assert rc == 0 and err == ""
    assert json.loads(out)["completion"] == ""


@pytest.mark.parametrize("cap,ok", [("8", False), ("400", True)])
def test_prompt_cap_from_environment(cap, ok, tiny_ckpt, capsys, monkeypatch):
    monkeypatch.setenv("EXPLORER_MAX_PROMPT_TOKENS", cap)
    rc, out, err = run_cli(["trace", "--prompt", "tell me a long story about a cat please",
                            "--max-new-tokens", "0", "--model", tiny_ckpt], capsys)
    if ok:
        assert rc == 0, err
    else:
        assert rc == 2
        assert_one_error_line(err, "the limit is 8 (EXPLORER_MAX_PROMPT_TOKENS)")


@pytest.mark.parametrize("cap", ["0", "-5", "many"])
def test_malformed_prompt_cap_is_reported(cap, tiny_ckpt, capsys, monkeypatch):
    monkeypatch.setenv("EXPLORER_MAX_PROMPT_TOKENS", cap)
    rc, _, err = run_cli(["trace", "--prompt", "hi", "--model", tiny_ckpt], capsys)
    assert rc == 2
    assert_one_error_line(err, "EXPLORER_MAX_PROMPT_TOKENS must be a positive integer")


def test_model_prompt_limits(tiny, monkeypatch):
    from explorer.core.model import MoEModel
    assert tiny.prompt_cap is None
    assert tiny.context_length == 512 and tiny.max_prompt_tokens == 512
    n = len(tiny.encode("hello world"))
    capped = MoEModel(tiny.model, tiny.tokenizer, tiny.name, max_prompt_tokens=n)
    assert capped.max_prompt_tokens == n and len(capped.encode("hello world")) == n
    capped = MoEModel(tiny.model, tiny.tokenizer, tiny.name, max_prompt_tokens=n - 1)
    with pytest.raises(ValueError, match=f"{n} tokens with the chat template, the limit is "
                                         f"{n - 1} \\(EXPLORER_MAX_PROMPT_TOKENS\\)"):
        capped.encode("hello world")
    big = MoEModel(tiny.model, tiny.tokenizer, tiny.name, max_prompt_tokens=100000)
    assert big.max_prompt_tokens == 512  # the context still wins
    for bad in (0, -5, "8"):
        with pytest.raises(ValueError, match="EXPLORER_MAX_PROMPT_TOKENS must be a positive"):
            MoEModel(tiny.model, tiny.tokenizer, tiny.name, max_prompt_tokens=bad)
    # a smaller, sane tokenizer limit wins; the "no limit" sentinel does not
    monkeypatch.setattr(tiny.tokenizer, "model_max_length", 100)
    assert tiny.context_length == 100
    monkeypatch.setattr(tiny.tokenizer, "model_max_length", int(1e30))
    assert tiny.context_length == 512
    with pytest.raises(ValueError, match="limit is 512"):
        tiny.encode("hello " * 600)


def test_provenance_mismatch_warns_then_applies(tiny_ckpt, tmp_path, capsys):
    route = Route().force(0, 2, [6, 7])
    route.info = {"model": "someone/other-moe", "chat_template_hash": "0123456789abcdef",
                  "prompt": "Hello there"}
    route.save(tmp_path / "r.json")
    rc, out, err = run_cli(["replay", "--route", tmp_path / "r.json", "--max-new-tokens",
                            "0", "--json", "--model", tiny_ckpt], capsys)
    assert rc == 0
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: route was made for model "
                                                   "'someone/other-moe'")
    assert "chat template 0123456789abcdef" in lines[0]
    assert sorted(json.loads(out)["experts"][0][2]) == [6, 7]
    # the same route with the loaded model's own provenance: silent
    route.info.update(_tiny_provenance(tiny_ckpt))
    route.save(tmp_path / "r.json")
    rc, _, err = run_cli(["replay", "--route", tmp_path / "r.json", "--max-new-tokens", "0",
                          "--model", tiny_ckpt], capsys)
    assert rc == 0 and err == ""


def test_check_provenance():
    r = Route(info={"model": "a/b", "chat_template_hash": "h1"})
    assert r.check_provenance({"model": "a/b", "chat_template_hash": "h1"}) is None
    assert r.check_provenance({"model": "a/b"}) is None  # missing keys are not compared
    assert "model 'a/b', not 'c/d'" in r.check_provenance({"model": "c/d",
                                                           "chat_template_hash": "h1"})
    assert "chat template h1, not h2" in r.check_provenance({"model": "a/b",
                                                             "chat_template_hash": "h2"})
    assert Route().check_provenance({"model": "x/y", "chat_template_hash": "h"}) is None


def test_help_is_success(capsys):
    rc, out, err = run_cli(["trace", "--help"], capsys)
    assert rc == 0 and "--prompt" in out and err == ""


def test_internal_error_is_status_1_without_traceback(capsys, monkeypatch):
    def boom(args):
        raise KeyError("internal\nsecond line")
    monkeypatch.setitem(cli.COMMANDS, "boom", (lambda p: None, boom, "fails"))
    monkeypatch.delenv("EXPLORER_DEBUG", raising=False)
    rc, _, err = run_cli(["boom"], capsys)
    assert rc == 1 and err.startswith("error: KeyError: ") and len(err.splitlines()) == 1
    monkeypatch.setenv("EXPLORER_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["boom"])


def test_every_project_error_is_an_explorer_error():
    from explorer.app.hosted import PolicyError  # neither module imports gradio
    from explorer.app.links import LinkError
    from explorer.cli.options import UsageError
    from explorer.core.errors import ExplorerError, InputError, ModelLoadError, ParamError
    from explorer.demo.tour import TourError
    from explorer.judges import JudgeError
    from explorer.storage.library import StoreError
    errors = (RouteError, ParamError, ModelLoadError, JudgeError, PolicyError, LinkError,
              StoreError, TourError, UsageError, InputError)
    for cls in errors:
        assert issubclass(cls, ExplorerError), cls
    for cls in (RouteError, ParamError, JudgeError, PolicyError, LinkError, StoreError,
                TourError):  # bad input: InputErrors, hence ValueErrors for old callers
        assert issubclass(cls, InputError) and issubclass(cls, ValueError), cls
    assert not issubclass(ValueError, ExplorerError)
    import explorer
    assert {"ExplorerError", "InputError", "ParamError"} <= set(explorer.__all__)
    assert explorer.ExplorerError is ExplorerError and explorer.InputError is InputError
    assert explorer.ParamError is ParamError


def test_bare_value_error_is_a_bug_and_input_error_is_bad_input(capsys, monkeypatch):
    """Only an ExplorerError (or an OSError) counts as bad input: a bare ValueError raised
    by a bug is an internal error, status 1, one line naming its type."""
    from explorer.core.errors import InputError

    def bug(args):
        raise ValueError("internal invariant broken\nsecond line")

    def refusal(args):
        raise InputError("the value is out of range")

    def disk(args):
        raise OSError(28, "No space left on device")
    monkeypatch.setitem(cli.COMMANDS, "bug", (lambda p: None, bug, "fails"))
    monkeypatch.setitem(cli.COMMANDS, "refusal", (lambda p: None, refusal, "refuses"))
    monkeypatch.setitem(cli.COMMANDS, "disk", (lambda p: None, disk, "full disk"))
    monkeypatch.delenv("EXPLORER_DEBUG", raising=False)
    rc, out, err = run_cli(["bug"], capsys)
    assert (rc, out) == (1, "") and err == "error: ValueError: internal invariant broken\n"
    rc, out, err = run_cli(["refusal"], capsys)
    assert (rc, out) == (2, "") and err == "error: the value is out of range\n"
    rc, _, err = run_cli(["disk"], capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and "No space left" in err
    rc, _, err = run_cli(["refusal", "--no-such-option"], capsys)  # argparse: still 2
    assert rc == 2 and err.startswith("error: ") and len(err.splitlines()) == 1
    rc, _, err = run_cli(["no-such-command"], capsys)
    assert rc == 2 and err.startswith("error: ") and len(err.splitlines()) == 1
    monkeypatch.setenv("EXPLORER_DEBUG", "1")
    with pytest.raises(ValueError, match="internal invariant"):
        main(["bug"])
    assert main(["refusal"]) == 2  # bad input stays one line, debug or not
    capsys.readouterr()


def test_malformed_objects_for_routes_are_input_errors():
    """What the route parser and as_route refuse is bad input (an InputError), never a
    TypeError a caller would have to read as a bug."""
    from explorer.core.errors import InputError
    from explorer.research.common import as_route, routes_from_objects
    for obj in ({"best_masks": 1}, {"best_masks": [], "prompt": "p", "scores": "x"}):
        with pytest.raises(RouteError, match="x.json: not a usable RoSais result"):
            routes_from_objects([obj], where="x.json")
    with pytest.raises(InputError, match="cannot make a route from int"):
        as_route(3)


def test_one_line_escapes_control_characters():
    assert one_line("\n\n  first\rline\x1b[2J\u2028x\nsecond") == \
        "first\\rline\\x1b[2J\\u2028x"
    assert len(one_line("y" * 5000, limit=1000)) == 1000  # the CLI's cut
    assert len(one_line("y" * 5000)) == 400 and one_line("y" * 5000).endswith("...")
    assert one_line(KeyError("no such key")) == "no such key"
    assert one_line(ValueError(""), with_type=True) == "ValueError"
    assert one_line(OSError("disk\nfull"), with_type=True) == "OSError: disk"


# -- the in-process model cache -----------------------------------------------------------
def test_model_cache_reuses_and_reloads(tiny_ckpt, tmp_path, capsys, monkeypatch):
    import shutil

    import explorer.core.model as M
    calls = []
    real = M.load_model

    def counting(*a, **kw):
        calls.append((a, kw))
        return real(*a, **kw)
    monkeypatch.setattr(M, "load_model", counting)
    monkeypatch.delenv("EXPLORER_MODEL_CACHE", raising=False)
    ckpt = tmp_path / "copy"
    shutil.copytree(tiny_ckpt, ckpt)
    options.clear_model_cache()
    args = ["info", "--model", ckpt, "--device", "cpu"]
    for _ in range(3):
        assert run_cli(args, capsys)[0] == 0
    assert len(calls) == 1
    assert run_cli(args + ["--dtype", "bfloat16"], capsys)[0] == 0  # another key
    assert len(calls) == 2
    cfg = ckpt / "config.json"
    os.utime(cfg, ns=(cfg.stat().st_atime_ns, cfg.stat().st_mtime_ns + 10**9))
    assert run_cli(args, capsys)[0] == 0  # the checkpoint changed: reloaded
    assert len(calls) == 3
    monkeypatch.setenv("EXPLORER_MODEL_CACHE", "0")
    assert run_cli(args, capsys)[0] == 0
    assert len(calls) == 4
    assert len(options._MODEL_CACHE) <= options.MODEL_CACHE_SIZE
    options.clear_model_cache()


def test_cached_model_starts_without_defense(tiny_ckpt):
    import argparse

    from explorer.core.control import active_defense
    ns = argparse.Namespace(model=str(tiny_ckpt), device="cpu", dtype=None,
                            trust_remote_code=False, max_new_tokens=0)
    moe = options.load_from_args(ns)
    with moe.defended(Route().mask(0, [1])):
        assert active_defense() is not None
    again = options.load_from_args(ns)
    assert again is moe and active_defense() is None


# -- security ------------------------------------------------------------------------------
UNSAFE_CALLS = re.compile(
    r"\b(?:import|from)\s+(?:c?[pP]ickle|dill|shelve|marshal|joblib|cloudpickle)\b|"
    r"\b(?:c?[pP]ickle|dill|marshal|joblib|cloudpickle)\.loads?\s*\(|torch\.load\s*\(|"
    r"yaml\.(?:unsafe_)?load\s*\(|weights_only\s*=\s*False|(?<![.\w])eval\s*\(|"
    r"(?<![.\w])exec\s*\(|trust_remote_code\s*=\s*True")


def test_no_unsafe_deserialisation_or_eval_in_sources():
    for bad in ("import pickle", "x = torch.load(f)", "eval(text)", "yaml.load(s)",
                "AutoModel.from_pretrained(p, trust_remote_code=True)"):
        assert UNSAFE_CALLS.search(bad), bad  # the pattern itself works
    assert not UNSAFE_CALLS.search("model.eval()")
    hits = []
    for path in sorted([*(ROOT / "explorer").rglob("*.py"), ROOT / "app.py"]):
        if not path.exists():
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if UNSAFE_CALLS.search(code):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert hits == []


class _Marker:
    """Unpickling this would create a file: proof that a loader unpickled."""

    path = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_route_files_are_json_only(tiny_ckpt, tmp_path, capsys):
    from explorer.methods.fsour import FsourState
    marker = tmp_path / "unpickled"
    _Marker.path = str(marker)
    evil = tmp_path / "route.json"
    evil.write_bytes(pickle.dumps(_Marker()))
    with pytest.raises(RouteError):
        Route.load(evil)
    with pytest.raises(ValueError):
        FsourState.from_json(evil.read_bytes().decode("latin-1"))
    rc, _, err = run_cli(["trace", "--prompt", "hi", "--route", evil, "--model", tiny_ckpt],
                         capsys)
    assert rc == 2 and "not UTF-8" in err
    assert not marker.exists()
    pickle.loads(evil.read_bytes())  # the payload works: the loaders just never unpickle
    assert marker.exists()


def test_load_model_keeps_remote_code_off(tiny_ckpt, capsys, monkeypatch):
    import transformers
    seen: dict[str, list] = {}

    def recorder(cls_name, real):
        def wrapper(*a, **kw):
            seen.setdefault(cls_name, []).append(kw.get("trust_remote_code", "absent"))
            return real(*a, **kw)
        return wrapper
    for name in ("AutoConfig", "AutoModelForCausalLM", "AutoTokenizer"):
        cls = getattr(transformers, name)
        monkeypatch.setattr(cls, "from_pretrained", recorder(name, cls.from_pretrained))
    from explorer import load_model
    load_model(str(tiny_ckpt), device="cpu")
    # (AutoConfig is also called from inside the other two, with the same flag)
    assert {k: set(v) for k, v in seen.items()} == {
        "AutoConfig": {False}, "AutoModelForCausalLM": {False}, "AutoTokenizer": {False}}
    seen.clear()
    monkeypatch.setenv("EXPLORER_MODEL_CACHE", "0")
    assert run_cli(["info", "--model", tiny_ckpt], capsys)[0] == 0
    assert set(sum(seen.values(), [])) == {False}
    seen.clear()
    assert run_cli(["info", "--model", tiny_ckpt, "--trust-remote-code"], capsys)[0] == 0
    assert set(sum(seen.values(), [])) == {True}  # only when asked for


def test_judge_key_never_shown(tiny_ckpt, files, capsys, caplog, monkeypatch):
    from explorer.judges import JudgeError, RubricJudge
    caplog.set_level(logging.DEBUG)
    port = _closed_port()
    url = f"http://user:PASSWORD-{SECRET}@127.0.0.1:{port}/v1?api_key=Q-{SECRET}"
    j = RubricJudge(base_url=url, model="m", api_key=SECRET, retries=0, timeout=2)
    shown = [repr(j), str(j)]
    for call in (j.check, lambda: j.judge("p", "c")):
        with pytest.raises(JudgeError) as exc:
            call()
        shown.append(str(exc.value))
        assert "unreachable" in str(exc.value)
    monkeypatch.setenv("EXPLORER_JUDGE_API_KEY", SECRET)
    for argv in (["evaluate", "--dataset", files["ok.csv"], "--judge", "rubric"],
                 ["fsour", "--prompt", "hi", "--judge", "rubric"]):
        rc, out, err = run_cli(argv + ["--judge-url", url, "--judge-model", "m", "--model",
                                       tiny_ckpt], capsys)
        assert rc == 2 and "unreachable" in err
        shown += [out, err]
    shown.append(caplog.text)
    assert not [s for s in shown if SECRET in s]
