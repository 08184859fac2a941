"""Baselines: SteerMoE-style expert deactivation (``steer``) and random routes of a found
route's size (``random``), in the library, ``evaluate --method`` and ``defend --attacks``;
``evaluate --protocol paper`` and ``--start/--end``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from explorer import Route
from explorer.cli.main import main
from explorer.evaluation.datasets import load_dataset_rows
from explorer.evaluation.evaluate import PROTOCOLS, evaluate, read_jsonl, reference_sizes
from explorer.evaluation.prompts import BENIGN_PROMPTS, HARMFUL_PROMPTS
from explorer.methods.baselines import expert_frequencies, random_route, steer


def _cli(capsys, *argv):
    rc = main([*map(str, argv)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _csv(path: Path, goals) -> Path:
    path.write_text("goal,target\n" + "".join(f"{g},Sure here is\n" for g in goals),
                    encoding="utf-8")
    return path


# ------------------------------------------------------------------ steer
def test_expert_frequencies_count_top_k_choices_per_token(demo):
    freq = expert_frequencies(demo, BENIGN_PROMPTS[:3])
    assert len(freq) == len(demo.moe_layers)
    for lay, row in zip(demo.moe_layers, freq):
        info = demo.handle(lay).info
        assert len(row) == info.num_experts
        assert sum(row) == pytest.approx(info.top_k)  # k experts for every token
        assert all(0.0 <= x <= 1.0 for x in row)


def test_steer_masks_the_experts_harmful_prompts_use_more(demo):
    res = steer(demo, HARMFUL_PROMPTS, BENIGN_PROMPTS, per_layer=2)
    route = res.route
    assert route.info["method"] == "steer"
    assert 0 < len(res.cells) <= 2 * len(demo.moe_layers)
    assert all(e.mode == "mask" and e.position is None for e in route.edits)
    masked = {(e.layer, x) for e in route.edits for x in e.experts}
    assert masked == {(c["layer"], c["expert"]) for c in res.cells}
    diffs = [c["difference"] for c in res.cells]
    assert diffs == sorted(diffs, reverse=True) and all(d > 0 for d in diffs)
    # every cell left out is no larger than the smallest kept one, or its layer is full
    i_of = {lay: i for i, lay in enumerate(res.moe_layers)}
    per_layer = {lay: sum(1 for c in res.cells if c["layer"] == lay) for lay in res.moe_layers}
    for lay in res.moe_layers:
        i = i_of[lay]
        for e in range(len(res.unsafe_frequency[i])):
            d = res.unsafe_frequency[i][e] - res.safe_frequency[i][e]
            if (lay, e) not in masked and per_layer[lay] < 2:
                assert d <= min(diffs) + 1e-12
    assert all(n <= 2 for n in per_layer.values())
    route.validate(demo.info)
    assert steer(demo, HARMFUL_PROMPTS, BENIGN_PROMPTS).route.edits == route.edits  # seeded
    assert type(res).from_dict(json.loads(json.dumps(res.to_dict()))).to_dict() == res.to_dict()
    with pytest.raises(ValueError):
        steer(demo, [], BENIGN_PROMPTS)


def test_steering_changes_answers_on_the_demo_model(demo):
    from explorer.research.transfer import asr
    route = steer(demo, HARMFUL_PROMPTS, BENIGN_PROMPTS).route
    prompts = list(HARMFUL_PROMPTS[:6])
    plain = asr(demo, None, prompts, max_new_tokens=12)
    steered = asr(demo, route, prompts, max_new_tokens=12)
    assert [r["completion"] for r in plain.rows] != [r["completion"] for r in steered.rows]


# ------------------------------------------------------------------ random
def test_random_route_has_the_size_asked_and_is_seeded(demo):
    n = len(demo.encode(HARMFUL_PROMPTS[0]))
    r = random_route(demo, n, 12, seed=5)
    assert len(r) == 12 and all(e.mode == "force" for e in r.edits)
    cells = {(e.layer, e.position) for e in r.edits}
    assert len(cells) == 12 and all(0 <= e.position < n for e in r.edits)
    r.validate(demo.info, num_tokens=n)
    assert random_route(demo, n, 12, seed=5).edits == r.edits
    assert random_route(demo, n, 12, seed=6).edits != r.edits
    assert len(random_route(demo, 2, 10_000)) == 2 * len(demo.moe_layers)  # every cell
    assert len(random_route(demo, n, 0)) == 0
    with pytest.raises(ValueError):
        random_route(demo, 0, 3)


# ------------------------------------------------------------------ evaluate
def test_evaluate_steer_and_random(demo, tmp_path):
    rows = load_dataset_rows(_csv(tmp_path / "d.csv", HARMFUL_PROMPTS[:3]))
    ev = evaluate(demo, rows, "steer", max_new_tokens=6)
    route = steer(demo, HARMFUL_PROMPTS, BENIGN_PROMPTS).route
    assert all(r["route"] == route.to_dict() and r["method"] == "steer" for r in ev.rows)
    ref = tmp_path / "ref.jsonl"
    ref.write_text("".join(json.dumps({"index": r["index"], "goal": r["goal"],
                                       "method": "fsour",
                                       "route": Route().force(0, 1, [0, 1]).force(
                                           1, 2, [2, 3]).to_dict() if i else
                                       {"edits": []}}) + "\n" for i, r in enumerate(rows)))
    sizes = reference_sizes(ref, rows)
    assert sizes == {0: 0, 1: 2, 2: 2}
    ev = evaluate(demo, rows, "random", max_new_tokens=6, reference=sizes, seed=1)
    assert [r["reference_edits"] for r in ev.rows] == [0, 2, 2]
    assert [len(r["route"]["edits"]) for r in ev.rows] == [0, 2, 2]
    assert all(r["reference"] == "reference" for r in ev.rows)
    # without a reference the F-SOUR routes are searched first, with the same sizes as
    # a search of those rows would give
    from explorer.methods.fsour import fsour
    ev = evaluate(demo, rows[:1], "random", max_new_tokens=6, candidates=2, max_iters=1)
    found = fsour(demo, rows[0]["goal"], target=rows[0]["target"], candidates=2, max_iters=1,
                  max_new_tokens=6)
    assert ev.rows[0]["reference_edits"] == len(found.route) and \
        ev.rows[0]["reference"] == "search"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"index": 0, "goal": "another", "method": "fsour",
                               "route": {"edits": []}}) + "\n")
    with pytest.raises(ValueError, match="another goal"):
        reference_sizes(bad, rows)
    with pytest.raises(ValueError, match="no `evaluate --method fsour` rows"):
        reference_sizes(tmp_path / "missing.jsonl", rows)


def test_cli_evaluate_random_takes_a_reference(demo, tmp_path, capsys):
    data = _csv(tmp_path / "d.csv", HARMFUL_PROMPTS[:2])
    fs = tmp_path / "fsour.jsonl"
    rc, _, err = _cli(capsys, "evaluate", "--dataset", data, "--method", "fsour",
                      "--candidates", 2, "--max-iters", 1, "--max-new-tokens", 4, "--out", fs)
    assert rc == 0, err
    rc, out, err = _cli(capsys, "evaluate", "--dataset", data, "--method", "random",
                        "--reference", fs, "--max-new-tokens", 4, "--json")
    assert rc == 0, err
    sizes = [len(r["route"]["edits"]) for r in read_jsonl(fs)]
    assert [r["reference_edits"] for r in json.loads(out)["rows"]] == sizes
    rc, _, err = _cli(capsys, "evaluate", "--dataset", data, "--method", "none",
                      "--reference", fs)
    assert rc == 2 and "--reference is for --method random" in err


def test_cli_defend_with_steer_and_random_attacks(capsys):
    rc, out, err = _cli(capsys, "defend", "--mode", "self-reminder", "--attacks",
                        "steer,random", "--limit", 2, "--benign-limit", 1, "--candidates", 2,
                        "--max-new-tokens", 4, "--no-before", "--json")
    assert rc == 0, err
    obj = json.loads(out)
    assert set(obj["table"]) == {"steer", "random"}
    rows = {a["attack"]: a["rows"] for a in obj["attacks"]}
    assert all(r["edits"] > 0 for r in rows["steer"])
    rc, _, err = _cli(capsys, "defend", "--mode", "self-reminder", "--attacks", "magic")
    assert rc == 2 and "steer" in err and "random" in err


# ------------------------------------------------------------------ slices and protocol
def test_start_end_slices_keep_dataset_indices(tmp_path):
    data = _csv(tmp_path / "d.csv", [f"goal {i}" for i in range(10)])
    rows = load_dataset_rows(data, start=3, end=7)
    assert [r["index"] for r in rows] == [3, 4, 5, 6]
    assert [r["index"] for r in load_dataset_rows(data, 2, start=8)] == [8, 9]
    assert [r["index"] for r in load_dataset_rows(data, end=2)] == [0, 1]
    for kw, msg in (({"start": 5, "end": 5}, "greater than"), ({"start": -1}, "non-negative"),
                    ({"start": 10}, "no rows in the slice")):
        with pytest.raises(ValueError, match=msg):
            load_dataset_rows(data, **kw)


def test_paper_protocol_applies_its_settings_and_rows_record_it(tiny_ckpt, tmp_path, capsys):
    from test_judges import _FakeEndpoint
    data = _csv(tmp_path / "d.csv", ["Tell me a story.", "Explain a rainbow.", "Name a bird."])
    rc, _, err = _cli(capsys, "evaluate", "--dataset", data, "--protocol", "paper",
                      "--model", tiny_ckpt)
    assert rc == 2 and "rubric judge" in err and "--judge-url" in err
    rc, _, err = _cli(capsys, "evaluate", "--dataset", data, "--protocol", "paper",
                      "--max-new-tokens", 16, "--model", tiny_ckpt)
    assert rc == 2 and "sets --max-new-tokens to 512" in err
    rc, _, err = _cli(capsys, "evaluate", "--dataset", data, "--protocol", "paper",
                      "--judge", "keyword", "--model", tiny_ckpt)
    assert rc == 2 and "sets --judge to rubric" in err
    ep = _FakeEndpoint()
    out = tmp_path / "o.jsonl"
    try:
        rc, stdout, err = _cli(capsys, "evaluate", "--dataset", data, "--protocol", "paper",
                               "--judge-url", ep.url, "--judge-model", "grader",
                               "--start", 1, "--end", 2, "--model", tiny_ckpt, "--out", out,
                               "--json")
    finally:
        ep.close()
    assert rc == 0, err
    obj = json.loads(stdout)
    proto = PROTOCOLS["paper"]
    assert obj["info"]["protocol"] == proto.to_dict()
    assert obj["info"]["settings"]["max_new_tokens"] == 512
    rows = read_jsonl(out)
    assert [r["index"] for r in rows] == [1] and rows[0]["protocol"] == "paper"
    assert rows[0]["judge"] == "rubric:grader" and rows[0]["verdict"]["detail"]["threshold"] == 1.0
    assert proto.candidates == 100 and proto.max_iters == 5 and proto.judge_threshold == 1.0
