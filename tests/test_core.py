"""Core library: loading, Route and RoutingTrace JSON, validation, tracing, CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import warnings

import pytest
import torch
from conftest import ROOT

from explorer import ModelLoadError, Route, RouteEdit, RouteError, RoutingTrace, load_model, trace
from explorer.cli.main import main as cli_main


def test_route_json_round_trip_and_public_format():
    r = Route().force(5, 12, [9, 3]).mask(7, None, [1, 2])
    r.info["model"] = "demo"
    d = json.loads(r.to_json())
    assert d == {"edits": [{"layer": 5, "position": 12, "experts": [3, 9], "mode": "force"},
                           {"layer": 7, "position": None, "experts": [1, 2], "mode": "mask"}],
                 "info": {"model": "demo"}}
    assert Route.from_json(r.to_json()) == r
    assert Route.from_dict(d).edits[0] == RouteEdit(5, 12, (3, 9), "force")


def test_force_at_same_cell_replaces_and_edits_compose():
    r = Route().force(1, 3, [0, 1]).force(1, 3, [2, 3]).mask(1, None, [4])
    assert len(r) == 2
    assert r.allowed(1, 3, 8) == {2, 3}
    assert r.allowed(1, 5, 8) == {0, 1, 2, 3, 5, 6, 7}


def _mask_edit(layer, position, experts):
    return [RouteEdit(layer, position, tuple(experts), "mask")]


@pytest.mark.parametrize("build,position", [
    # the form to use: the order of force, (layer, position, experts)
    (lambda: Route().mask(2, None, [1, 5]), None),
    (lambda: Route().mask(2, 4, [1, 5]), 4),
    (lambda: Route().mask(2, 4, experts=[1, 5]), 4),
    (lambda: Route().mask(2, position=4, experts=[1, 5]), 4),
    (lambda: Route().mask(layer=2, position=None, experts=(1, 5)), None),
    (lambda: Route().mask(2, experts=[1, 5]), None),  # position defaults to every one
    (lambda: Route().mask(2, None, range(1, 6, 4)), None),  # any iterable of ints
    (lambda: Route().mask(2, 4, (e for e in (1, 5))), 4),
    # the older order, kept for compatibility: (layer, experts[, position])
    (lambda: Route().mask(2, [1, 5]), None),
    (lambda: Route().mask(2, [1, 5], None), None),
    (lambda: Route().mask(2, [1, 5], 4), 4),
    (lambda: Route().mask(2, [1, 5], position=4), 4),
    (lambda: Route().mask(2, experts=[1, 5], position=4), 4),
])
def test_mask_accepts_the_force_order_and_the_old_one(build, position):
    r = build()
    assert r.edits == _mask_edit(2, position, [1, 5])
    assert Route.from_json(r.to_json()) == r


def test_mask_orders_give_equal_routes():
    new = Route().force(1, 3, [0, 1]).mask(1, None, [4]).mask(0, 2, [6, 7])
    old = Route().force(1, 3, [0, 1]).mask(1, [4]).mask(0, [6, 7], 2)
    assert new == old and new.to_json() == old.to_json()
    assert new.allowed(0, 2, 8) == old.allowed(0, 2, 8) == {0, 1, 2, 3, 4, 5}
    assert Route().mask(0, 2, [6, 7]) != Route().mask(0, None, [6, 7])


@pytest.mark.parametrize("args,kwargs,match", [
    ((3, 4), {}, "cannot tell the position from the experts"),  # two ints
    (([0], [1]), {}, "cannot tell the position from the experts"),  # two lists
    ((None, None), {}, "cannot tell the position from the experts"),
    (("ab", 3), {}, "cannot tell the position from the experts"),  # text is not experts
    ((True, [1, 2]), {}, "cannot tell the position from the experts"),  # nor a bool a position
    ((3,), {}, "needs experts"),  # a position alone
    ((None,), {}, "needs experts"),
    ((), {}, "needs experts"),
    ((), {"position": 3}, "needs experts"),
    (([0],), {"experts": [1]}, "should be the position"),
    ((), {"position": [1], "experts": [2]}, "int or None"),
    ((), {"position": 1, "experts": 2}, "iterable of ints"),
])
def test_mask_refuses_calls_that_fit_neither_order(args, kwargs, match):
    with pytest.raises(RouteError, match=match) as info:
        Route().mask(1, *args, **kwargs)
    assert "mask(layer, position, experts)" in str(info.value)


def test_mask_refuses_too_many_or_repeated_arguments():
    with pytest.raises(TypeError, match="positional arguments"):
        Route().mask(1, 2, [3], 4)
    with pytest.raises(TypeError, match="twice"):
        Route().mask(1, [3], 4, position=4)
    with pytest.raises(TypeError, match="twice"):
        Route().mask(1, 2, [3], experts=[3])
    with pytest.raises(TypeError, match="twice"):
        Route().mask(1, 2, position=2, experts=[3])


@pytest.mark.parametrize("text", [
    "not json", "[]", '{"edits": 3}', '{"edits": [{"layer": 1}]}',
    '{"edits": [{"layer": "a", "position": 0, "experts": [1, 2]}]}',
    '{"edits": [{"layer": 1, "position": 0, "experts": [1, 1]}]}',
    '{"edits": [{"layer": 1, "position": 0, "experts": [1, 2], "mode": "swap"}]}',
    '{"edits": [{"layer": 1, "position": 0.5, "experts": [1, 2]}]}',
    '{"edits": [], "info": []}',
])
def test_malformed_route_json_is_a_route_error(text):
    with pytest.raises(RouteError):
        Route.from_json(text)


def test_load_local_checkpoint_discovers_layers(tiny):
    assert tiny.moe_layers == [0, 1]
    lay = tiny.info.layers[0]
    assert (lay.num_experts, lay.top_k, lay.router_class) == (8, 2, "OlmoeTopKRouter")
    assert tiny.info.device == "cpu" and tiny.info.dtype == "float32"
    assert tiny.info.chat_template_hash and tiny.info.transformers_version


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))


def test_dense_model_is_rejected(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=16,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="no MoE layers"):
        load_model(str(tmp_path), device="cpu")


def test_trace_records_prompt_and_generated_tokens(tiny):
    tr = trace(tiny, "How do I bake bread?", max_new_tokens=5)
    ids = tiny.encode("How do I bake bread?")
    assert tr.token_ids[:tr.prompt_tokens] == ids
    n = tr.num_tokens
    assert n > tr.prompt_tokens  # something was generated (random weights: no early EOS)
    for i in range(len(tr.moe_layers)):
        assert len(tr.experts[i]) == n and all(len(x) == 2 for x in tr.experts[i])
        assert len(tr.logits[i]) == n and len(tr.logits[i][0]) == 8
        for t in range(n):  # softmax-top-k: chosen experts are the top-2 logits
            top = sorted(range(8), key=lambda e: -tr.logits[i][t][e])[:2]
            assert sorted(tr.experts[i][t]) == sorted(top)
    assert tr.info["model"] == tiny.name and tr.info["chat_template_hash"]
    assert RoutingTrace.from_json(tr.to_json()) == tr


def _softmax_topk_weights(logits: list[float], experts: list[int], norm: bool) -> list[float]:
    """OLMoE's gate weights for the chosen ``experts``, from the raw router ``logits``: the
    softmax over all experts at those experts, divided by their sum when ``norm``."""
    m = max(logits)
    ex = [math.exp(x - m) for x in logits]
    z = sum(ex)
    w = [ex[e] / z for e in experts]
    return [x / sum(w) for x in w] if norm else w


@pytest.mark.parametrize("model,norm", [("tiny", False), ("tiny_norm", True)])
def test_trace_weights_are_the_softmax_top_k_of_the_logits(model, norm, request):
    moe = request.getfixturevalue(model)
    assert moe.model.config.norm_topk_prob is norm  # the case this parameter is about
    tr = trace(moe, "How do I bake bread?", max_new_tokens=3)
    sums = []
    for i in range(len(tr.moe_layers)):
        for t in range(tr.num_tokens):
            want = _softmax_topk_weights(tr.logits[i][t], tr.experts[i][t], norm)
            assert tr.weights[i][t] == pytest.approx(want, abs=1e-5), (i, t)
            sums.append(sum(tr.weights[i][t]))
    if norm:
        assert sums == pytest.approx([1.0] * len(sums), abs=1e-5)
    else:  # 2 of 8 experts' probabilities: short of 1 for every token
        assert max(sums) < 1.0 - 1e-3


def _two_layer_trace(logits: bool = True) -> RoutingTrace:
    """A hand-made trace of a model whose MoE layers are decoder layers 1 and 3 (0 and 2
    dense), so that rows and absolute layer indices differ."""
    return RoutingTrace(
        prompt="p", tokens=["a", "b"], token_ids=[5, 6], prompt_tokens=2, moe_layers=[1, 3],
        num_experts=[4, 4], top_k=[2, 2],
        experts=[[[0, 1], [2, 3]], [[1, 2], [3, 0]]],
        weights=[[[0.6, 0.4], [0.7, 0.3]], [[0.5, 0.5], [0.9, 0.1]]],
        logits=[[[1.0, 0.5, 0.0, -1.0], [0.0, 0.1, 2.0, 1.0]],
                [[0.2, 1.5, 1.4, 0.0], [0.8, -1.0, 0.0, 3.0]]] if logits else None)


def test_trace_accessors_take_absolute_layers():
    tr = _two_layer_trace()
    assert tr.layer_row(1) == 0 and tr.layer_row(3) == 1
    assert tr.experts_at(1, 1) == [2, 3] and tr.experts_at(3, 1) == [3, 0]
    assert tr.weights_at(1, 0) == [0.6, 0.4] and tr.weights_at(3, 1) == [0.9, 0.1]
    assert tr.logits_at(3, 0) == [0.2, 1.5, 1.4, 0.0]
    for layer in (0, 2, 4):  # dense or out of range: never a row index in disguise
        for get in (tr.experts_at, tr.weights_at, tr.logits_at):
            with pytest.raises(KeyError, match=f"layer {layer} is not an MoE layer"):
                get(layer, 0)
    assert tr.by_layer() == {1: tr.experts[0], 3: tr.experts[1]}
    assert tr.by_layer("weights") == {1: tr.weights[0], 3: tr.weights[1]}
    assert tr.by_layer("logits") == {1: tr.logits[0], 3: tr.logits[1]}
    for layer in tr.moe_layers:
        for t in range(tr.num_tokens):
            assert tr.by_layer()[layer][t] == tr.experts_at(layer, t)
            assert tr.by_layer("weights")[layer][t] == tr.weights_at(layer, t)
            assert tr.by_layer("logits")[layer][t] == tr.logits_at(layer, t)
    with pytest.raises(ValueError, match="experts, weights or logits"):
        tr.by_layer("tokens")
    bare = _two_layer_trace(logits=False)
    with pytest.raises(ValueError, match="without router logits"):
        bare.logits_at(1, 0)
    with pytest.raises(ValueError, match="without router logits"):
        bare.by_layer("logits")
    # the JSON form keeps its per-row lists and keys
    d = tr.to_dict()
    assert d["experts"] == tr.experts and d["moe_layers"] == [1, 3]
    assert RoutingTrace.from_dict(d) == tr


def test_trace_accessors_match_the_rows_of_a_real_trace(tiny):
    tr = trace(tiny, "Tell me a joke", max_new_tokens=2)
    for row, layer in enumerate(tr.moe_layers):
        for t in range(tr.num_tokens):
            assert tr.experts_at(layer, t) == tr.experts[row][t]
            assert tr.weights_at(layer, t) == tr.weights[row][t]
            assert tr.logits_at(layer, t) == tr.logits[row][t]
    assert list(tr.by_layer()) == tr.moe_layers


def test_generate_returns_a_generation_and_generate_recorded_the_records(tiny):
    from explorer import RouteControl, generate, generate_recorded
    from explorer.core.forward import Generation
    ids = tiny.encode("Tell me a joke")
    route = Route().force(1, len(ids) - 1, [6, 7])
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the plain call does not warn
        gen = generate(tiny, ids, route, max_new_tokens=3)
    assert isinstance(gen, Generation) and gen.ids[:len(ids)] == ids
    assert len(gen.ids) == len(ids) + 3 and gen.prompt_len == len(ids)
    pieces: list[str] = []
    rec, ctl = generate_recorded(tiny, ids, route, max_new_tokens=3, on_token=pieces.append)
    assert isinstance(ctl, RouteControl) and rec == gen and "".join(pieces) == gen.text
    for layer in tiny.moe_layers:  # records cover every prompt and generated token
        assert ctl.collected(layer)["experts"].shape[1] == len(gen.ids)
    assert sorted(ctl.collected(1)["experts"][0, len(ids) - 1].tolist()) == [6, 7]
    # nothing generated: the prompt alone is recorded
    none, ctl0 = generate_recorded(tiny, ids, None, max_new_tokens=0)
    assert none.ids == ids and none.text == ""
    assert ctl0.collected(0)["experts"].shape[1] == len(ids)


def test_generate_record_true_still_returns_the_pair_and_warns(tiny):
    from explorer import generate, generate_recorded
    ids = tiny.encode("Tell me a joke")
    with pytest.warns(DeprecationWarning, match="generate_recorded"):
        out = generate(tiny, ids, None, max_new_tokens=2, record=True)
    assert isinstance(out, tuple) and len(out) == 2
    gen, ctl = out
    want, want_ctl = generate_recorded(tiny, ids, None, max_new_tokens=2)
    assert gen == want
    for layer in tiny.moe_layers:
        assert torch.equal(ctl.collected(layer)["experts"], want_ctl.collected(layer)["experts"])
    with pytest.warns(DeprecationWarning):  # positional record, as old callers may pass it
        assert isinstance(generate(tiny, ids, None, 2, True), tuple)


def test_trace_with_route_forces_and_changes(tiny):
    base = trace(tiny, "Tell me a joke", max_new_tokens=3)
    pos = base.prompt_tokens - 1
    natural = set(base.experts[1][pos])
    forced = [e for e in range(8) if e not in natural][:2]
    route = Route().force(1, pos, forced)
    tr = trace(tiny, "Tell me a joke", max_new_tokens=3, route=route)
    assert sorted(tr.experts[1][pos]) == forced
    assert tr.experts[0][:pos + 1] == base.experts[0][:pos + 1]
    assert any(tr.changed_vs(base)[1])
    with pytest.raises(RouteError, match="out of range"):
        trace(tiny, "Tell me a joke", route=Route().force(1, 500, forced))


def test_cli_trace_json(tiny_ckpt, capsys):
    rc = cli_main(["trace", "--prompt", "Hello there", "--model", str(tiny_ckpt),
                   "--max-new-tokens", "3", "--json", "--device", "cpu"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("model", "tokens", "prompt_tokens", "moe_layers", "num_experts", "top_k",
                "experts", "weights", "completion"):
        assert key in out
    assert out["moe_layers"] == [0, 1] and out["num_experts"] == 8 and out["top_k"] == 2
    assert len(out["experts"][0]) == len(out["tokens"])


def test_cli_trace_applies_route_file(tiny_ckpt, tmp_path, capsys):
    Route().force(0, 2, [6, 7]).save(tmp_path / "r.json")
    rc = cli_main(["trace", "--prompt", "Hello there", "--model", str(tiny_ckpt),
                   "--max-new-tokens", "0", "--json", "--route", str(tmp_path / "r.json")])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(out["experts"][0][2]) == [6, 7]


@pytest.mark.parametrize("argv", [
    ["trace"],
    ["trace", "--prompt", ""],
    ["trace", "--prompt", "hi", "--model", "/no/such/dir"],
    ["trace", "--prompt", "hi", "--max-new-tokens", "-3"],
    ["trace", "--prompt", "hi", "--route", "/no/such/route.json"],
    ["nosuchcommand"],
])
def test_cli_bad_input_exits_2_with_one_line(argv, tiny_ckpt, capsys):
    argv = [a if a != "MODEL" else str(tiny_ckpt) for a in argv]
    if "--model" not in argv and argv[:1] == ["trace"] and len(argv) > 1:
        argv += ["--model", str(tiny_ckpt)]
    rc = cli_main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("error:") and "Traceback" not in err


def test_cli_bad_route_content_exits_2(tiny_ckpt, tmp_path, capsys):
    (tmp_path / "bad.json").write_text('{"edits": [{"layer": 9, "position": 0, "experts": [1, 2]}]}')
    rc = cli_main(["trace", "--prompt", "hi", "--model", str(tiny_ckpt),
                   "--route", str(tmp_path / "bad.json")])
    assert rc == 2 and "layer 9" in capsys.readouterr().err


def test_python_dash_m_entry_point(tiny_ckpt):
    proc = subprocess.run([sys.executable, "-m", "explorer", "info", "--model", str(tiny_ckpt),
                           "--json"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["moe_layers"] == [0, 1] and info["layers"][0]["router_class"] == "OlmoeTopKRouter"


def test_no_hooks_left_after_trace(tiny):
    def count():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks)
                   for m in tiny.model.modules())
    before = count()
    trace(tiny, "hi", max_new_tokens=2, route=Route().mask(0, [0]))
    assert count() == before and torch._C._len_torch_function_stack() == 0


def test_model_wide_defense_applies_under_every_route(tiny):
    defense = Route().mask(0, [0, 1, 2])
    forced_bad = Route().force(0, 1, [1, 5])
    forced_ok = Route().force(0, 1, [5, 6])
    with tiny.defended(defense):
        plain = trace(tiny, "Tell me a joke", max_new_tokens=2)
        assert all(not set(x) & {0, 1, 2} for x in plain.experts[0])
        bad = trace(tiny, "Tell me a joke", max_new_tokens=0, route=forced_bad)
        assert not set(bad.experts[0][1]) & {0, 1, 2}  # the defense wins over the force
        ok = trace(tiny, "Tell me a joke", max_new_tokens=0, route=forced_ok)
        assert sorted(ok.experts[0][1]) == [5, 6]
        # another thread using the same model is not defended (nothing is set on it)
        seen = {}
        worker = threading.Thread(target=lambda: seen.update(
            t=trace(tiny, "Tell me a joke", max_new_tokens=0, route=forced_bad)))
        worker.start()
        worker.join()
        assert sorted(seen["t"].experts[0][1]) == [1, 5]
        with tiny.defended(None):  # lifted inside the block, back after it
            assert sorted(trace(tiny, "Tell me a joke", max_new_tokens=0,
                                route=forced_bad).experts[0][1]) == [1, 5]
        again = trace(tiny, "Tell me a joke", max_new_tokens=0, route=forced_bad)
        assert not set(again.experts[0][1]) & {0, 1, 2}
    free = trace(tiny, "Tell me a joke", max_new_tokens=0, route=forced_bad)
    assert sorted(free.experts[0][1]) == [1, 5]
    assert not hasattr(tiny, "defense")
    # an explicit argument to the route control works without any context
    with tiny.control(forced_bad, record=True, defense=defense) as ctl:
        tiny.model(torch.tensor([tiny.encode("Tell me a joke")]))
    assert not set(ctl.collected(0)["experts"][0, 1].tolist()) & {0, 1, 2}


def test_trace_validates_its_route_once(tiny, monkeypatch):
    """trace checks a route against the model and the prompt's length once: the forwards
    that apply it do not check it again (a route valid for a model stays valid)."""
    from explorer.core.trace import trace
    calls = []
    validate = Route.validate

    def counted(self, *a, **k):
        calls.append(k.get("num_tokens"))
        return validate(self, *a, **k)
    monkeypatch.setattr(Route, "validate", counted)
    route = Route().force(tiny.moe_layers[0], 1, list(range(tiny.handle(
        tiny.moe_layers[0]).info.top_k)))
    route.info["trace-once"] = True  # another route than any other test's
    tiny.cache.valid_routes.clear()
    tr = trace(tiny, "Count the validations, please.", max_new_tokens=2, route=route)
    assert tr.route is route and len(calls) == 1 and calls[0] == tr.prompt_tokens
