"""The hardening defense (explorer.research.harden): only the chosen experts learn, the loss
drops, the refusal gains probability under the attack routes it was trained under, the
checkpoint saves and loads, and the defense runs from the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from explorer import load_model
from explorer.cli.main import main as cli_main
from explorer.core.forward import target_logprob
from explorer.core.prompt_sets import BENIGN_PROMPTS, HARMFUL_PROMPTS
from explorer.core.route import Route
from explorer.research.harden import (
    HardenResult,
    expert_usage,
    expert_weights,
    gather_attack_routes,
    harden,
    load_provenance,
    save_hardened,
    select_experts,
)

REFUSAL = "I cannot help with that request."


def _snapshot(moe) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in moe.model.named_parameters()}


def _check_only_chosen_changed(moe, before: dict, res: HardenResult) -> int:
    """Every parameter bit-identical except the chosen experts' rows of the fused expert
    weights; returns how many chosen rows changed."""
    chosen: dict[str, set[int]] = {}
    for c in res.experts:
        for name in expert_weights(moe, c["layer"]):
            chosen.setdefault(name, set()).add(c["expert"])
    assert sorted(chosen) == res.changed
    changed_rows = 0
    for name, p in moe.model.named_parameters():
        old = before[name]
        if name not in chosen:
            assert torch.equal(p, old), name
            continue
        for e in range(p.shape[0]):
            if e in chosen[name]:
                changed_rows += not torch.equal(p[e], old[e])
            else:
                assert torch.equal(p[e], old[e]), (name, e)
    return changed_rows


def _lp(moe, prompt, route, text=REFUSAL) -> float:
    return float(target_logprob(moe, moe.encode(prompt), moe.target_ids(text), [route])[0])


# -- tiny model: exact properties ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_routes(tiny):
    """Two prompts, each with a hand-made attack route (a forced pair at two positions)."""
    out = []
    for i, p in enumerate(HARMFUL_PROMPTS[:2]):
        r = Route(info={"prompt": p, "method": "manual"})
        r.force(tiny.moe_layers[0], 2 + i, [0, 1])
        r.force(tiny.moe_layers[-1], 4, [2, 3])
        out.append(r)
    return out


def test_harden_trains_only_the_chosen_experts(tiny, tiny_routes):
    before = _snapshot(tiny)
    targets = {r.info["prompt"]: REFUSAL for r in tiny_routes}
    lp0 = [_lp(tiny, r.info["prompt"], r) for r in tiny_routes]
    hard, res = harden(tiny, routes=tiny_routes, benign_prompts=BENIGN_PROMPTS[:2],
                       targets=targets, steps=6, lr=1e-2, experts=3, seed=1, rounds=1,
                       max_new_tokens=6)
    # the model passed in is untouched; the copy differs only in the chosen experts' rows
    assert all(torch.equal(p, before[n]) for n, p in tiny.model.named_parameters())
    assert len(res.experts) == 3
    assert _check_only_chosen_changed(hard, before, res) >= 1
    assert not any(p.requires_grad for p in hard.model.parameters())
    # the loss drops and the refusal gains probability under each fixed attack route
    assert res.losses[-1]["loss"] < res.losses[0]["loss"]
    assert res.refusal_lp_after > res.refusal_lp_before
    lp1 = [_lp(hard, r.info["prompt"], r) for r in tiny_routes]
    assert sum(lp1) > sum(lp0)
    # the benign answers' likelihood change is reported, from its own figures
    assert len(res.benign) == 2 and all(set(b) >= {"before", "after"} for b in res.benign)
    assert res.ll_change == pytest.approx(res.benign_ll_after - res.benign_ll_before)
    assert res.info["method"] == "harden" and res.info["settings"]["steps"] == 6
    # JSON round trip
    again = HardenResult.from_json(res.to_json())
    assert again == res and json.loads(again.to_json()) == json.loads(res.to_json())


def test_harden_is_deterministic(tiny, tiny_routes):
    targets = {r.info["prompt"]: REFUSAL for r in tiny_routes}
    kw = dict(routes=tiny_routes, benign_prompts=BENIGN_PROMPTS[:1], targets=targets,
              steps=3, lr=1e-2, experts=2, seed=0, max_new_tokens=4, rounds=1)
    a, ra = harden(tiny, **kw)
    b, rb = harden(tiny, **kw)
    assert ra.losses == rb.losses and ra.experts == rb.experts
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


def test_select_experts_finds_the_forced_ones(tiny):
    # forcing the two least-used experts of the LAST MoE layer everywhere: nothing after it
    # is routed, so those two gain the most uses
    lay = tiny.moe_layers[-1]
    items = [(tiny.encode(p), tiny.target_ids(REFUSAL)) for p in HARMFUL_PROMPTS[:2]]
    plain = expert_usage(tiny, items, [None, None])
    E = tiny.handle(lay).info.num_experts
    rare = sorted(range(E), key=lambda e: (plain.get((lay, e), 0), e))[:2]
    r = Route()
    r.force(lay, None, rare)
    got = select_experts(tiny, items, [r, r], count=2)
    assert [(c["layer"], c["expert"]) for c in got] == [(lay, e) for e in sorted(rare)]
    n = sum(len(p) + len(a) for p, a in items)
    assert all(c["attacked"] == n for c in got)


def test_hardened_checkpoint_round_trip(tiny, tiny_routes, tmp_path):
    targets = {r.info["prompt"]: REFUSAL for r in tiny_routes}
    hard, res = harden(tiny, routes=tiny_routes, benign_prompts=BENIGN_PROMPTS[:1],
                       targets=targets, steps=2, lr=1e-2, experts=2, max_new_tokens=4,
                       rounds=1)
    folder = save_hardened(hard, res, tmp_path / "hardened")
    back = load_model(str(folder), device="cpu")
    assert load_provenance(folder) == res
    ids = torch.tensor([tiny.encode(HARMFUL_PROMPTS[0])])
    with torch.no_grad():
        assert torch.equal(back.model(input_ids=ids).logits, hard.model(input_ids=ids).logits)


def test_harden_refuses_bad_settings(tiny, tiny_routes):
    from explorer.core.errors import InputError
    with pytest.raises(InputError):
        harden(tiny, routes=tiny_routes, steps=0, targets={})
    with pytest.raises(InputError, match="nothing to harden"):
        harden(tiny, routes=tiny_routes, targets={"another prompt": REFUSAL}, steps=1,
               rounds=1)
    with pytest.raises(InputError, match="refuses none"):  # a random model refuses nothing
        harden(tiny, HARMFUL_PROMPTS[:1], routes=tiny_routes, steps=1, rounds=1)


# -- the demo model -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_routes(demo):
    return gather_attack_routes(demo, HARMFUL_PROMPTS[:2], candidates=4, samples=4, top=1,
                                max_new_tokens=8)


def test_harden_demo_model(demo, demo_routes):
    assert {r.info["method"] for r in demo_routes} == {"fsour", "rosais"}
    before = _snapshot(demo)
    hard, res = harden(demo, HARMFUL_PROMPTS[:2], BENIGN_PROMPTS[:3], demo_routes, steps=4,
                       experts=4, max_new_tokens=16, rounds=1)
    assert all(torch.equal(p, before[n]) for n, p in demo.model.named_parameters())
    assert _check_only_chosen_changed(hard, before, res) >= 1
    assert res.losses[-1]["loss"] < res.losses[0]["loss"]
    # the demo model's own refusals, generated unattacked, are the targets
    assert set(res.targets) <= set(HARMFUL_PROMPTS[:2]) and res.targets
    pair = res.pairs[0]
    route = Route.from_dict(pair["route"])
    text = res.targets[pair["prompt"]]
    assert _lp(hard, pair["prompt"], route, text) > _lp(demo, pair["prompt"], route, text)
    assert pair["after"] > pair["before"]
    assert isinstance(res.ll_change, float) and abs(res.ll_change) < 1.0
    assert HardenResult.from_json(res.to_json()) == res


def test_harden_and_defend_cli(demo, demo_routes, tmp_path, capsys):
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps([r.to_dict() for r in demo_routes]))
    out = tmp_path / "hardened"
    assert cli_main(["harden", "--out", str(out), "--route", str(routes), "--steps", "2",
                     "--rounds", "1", "--experts", "2", "--max-new-tokens", "12", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["out"] == str(out) and len(obj["losses"]) == 2
    assert "--steps 2" in obj["info"]["command"]
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert cli_main(["defend", "--mode", "hardened", "--hardened", str(out), "--attacks",
                     "none", "--prompts", "harmful", "--limit", "1", "--benign", "benign",
                     "--benign-limit", "1", "--max-new-tokens", "6", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert set(obj["table"]["none"]) == {"before", "after"}
    assert obj["defense"]["info"]["hardened"] == str(out)
    u = obj["utility"]
    assert 0.0 <= u["routes"][0]["refusal_rate"] <= 1.0 and "ll_change" in u
    # benchmark files are for evaluation only
    from explorer.settings import Settings
    data = tmp_path / "data"
    data.mkdir()
    (data / "bench.csv").write_text("goal,target\nSome request,Sure\n")
    assert cli_main(["harden", "--out", str(tmp_path / "x"), "--prompts",
                     str(data / "bench.csv")], settings=Settings(shared_data=str(data))) == 2
    assert "evaluation only" in capsys.readouterr().err


def test_defense_view_hardened_mode(demo, tmp_path):
    """The Research tab's Defense view names ``hardened``: the bundled checkpoint is
    attacked beside the model, and its utility cost is reported."""
    pytest.importorskip("gradio")
    from explorer.app.context import Explorer
    from explorer.app.tabs.research import tab as ur
    from explorer.research.harden import DEMO_HARDENED_DIR
    if not (DEMO_HARDENED_DIR / "model.safetensors").exists():
        pytest.skip("the hardened demo model is not built")
    ctx = Explorer(demo, data_dir=tmp_path)
    fig, table, md, dj = ctx.gate.call(ur.defense_view, "", "", "", HARMFUL_PROMPTS[0],
                                       BENIGN_PROMPTS[0], ["none"], 2, 1, 1, 1, 6,
                                       "keyword", "hardened")
    assert table["attack"].tolist() == ["none"] and table["prompts"].tolist() == [1]
    assert "hardened checkpoint" in md and "Utility cost" in md
    assert Route.from_json(dj).info["settings"] == {"mode": "hardened"}
    assert len(fig.data) == 3  # before / after, and the benign refusals


def test_harden_rounds_search_again_against_the_hardened_model(tiny, tiny_routes):
    targets = {r.info["prompt"]: REFUSAL for r in tiny_routes}
    before = _snapshot(tiny)
    hard, res = harden(tiny, routes=tiny_routes, benign_prompts=BENIGN_PROMPTS[:1],
                       targets=targets, steps=2, lr=1e-2, experts=2, rounds=2, candidates=2,
                       samples=2, top=1, max_new_tokens=4)
    assert [x["round"] for x in res.losses] == [0, 0, 1, 1]
    fresh = [p for p in res.pairs if p["route"]["info"].get("round") == 1]
    assert fresh and {p["method"] for p in fresh} <= {"fsour", "rosais"}
    assert len(res.pairs) == len(tiny_routes) + len(fresh)
    assert 2 <= len(res.experts) <= 4 and {e["round"] for e in res.experts} <= {0, 1}
    _check_only_chosen_changed(hard, before, res)


@pytest.mark.parametrize("bad", [["--lr", "nan"], ["--lr", "0"], ["--benign-weight", "inf"],
                                 ["--save-dtype", "int8"]])
def test_harden_cli_refuses_bad_settings(tmp_path, capsys, bad):
    assert cli_main(["harden", "--out", str(tmp_path / "h")] + bad) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert not (tmp_path / "h").exists()
