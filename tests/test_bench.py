"""The benchmark's pieces on tiny models: the cone cost model, the figures it reports."""

from __future__ import annotations

import pytest

from explorer.bench.cost import ConeCost, layer_flops, prompt_of_tokens, synthetic_model
from explorer.bench.runner import run_bench


def test_cone_cost_model_is_monotone_and_below_a_full_forward(tiny):
    L = len(tiny.info.layers)
    cost = ConeCost(tiny, T=12, n_target=3)
    full = cost.full()
    assert layer_flops(tiny, 0, 10) > layer_flops(tiny, 0, 1) > 0  # attention grows
    for lay in range(L):
        row = [cost.cone(t, lay) for t in range(12)]
        if lay < L - 1:  # later positions: a smaller cone (at the last layer: one row only)
            assert all(a > b for a, b in zip(row, row[1:]))
        assert max(row) < full
    assert all(cost.cone(3, a) > cost.cone(3, b) for a, b in zip(range(L), range(1, L)))
    # scored rows: positions 8-10 predict the 3 target tokens; position 11 is read by none
    assert cost.cone(7, L - 1) == 0.0 < cost.cone(8, L - 1)  # last layer: only scored rows count
    assert cost.cone(8, 0) - cost.cone(9, 0) > cost.cone(7, 0) - cost.cone(8, 0) > 0  # K/V only at 7


def test_bench_reports_identical_routes_and_cost_figures(tiny):
    b = run_bench(tiny, prompts=("Steal a car.",), candidates=2, samples=2, sizes=(16,),
                  full_budget=True, repeat=2)
    row = b["fsour"][0]
    assert row["identical_route"] and b["fsour_identical_routes"]
    assert row["fast"]["forward_passes"] == row["reference"]["forward_passes"] > 0
    assert row["fast"]["success"] is False  # the never-judge: the whole grid was walked
    c = b["cone"]
    assert 0 < c["cone_gflop"] < c["full_gflop"] and c["flop_ratio_full_to_cone"] > 1
    assert c["matmul_gflop_s"] > 0 and 0 < c["fraction_of_ideal"]
    assert c["counted_same_routes"] and c["counted_gflop"] == pytest.approx(
        sum(c["counted_gflop_by_kind"].values()))
    assert c["work_ratio"] == pytest.approx(c["counted_gflop"] / c["cone_gflop"]) and c["work_ratio"] >= 1
    assert 0 < c["products_seconds"] and c["products_share"] > 0
    assert c["products_in_order_seconds"] > 0 and c["products_in_order_share"] > 0
    assert b["rosais"]["fast"]["forward_passes"] == b["rosais"]["reference"]["forward_passes"]
    lat = b["latency"][0]
    assert lat["trace_s"] > 0 and lat["reroute_s"] > 0 and abs(lat["tokens"] - 16) <= 2
    assert row["fast"]["peak_memory_mb"] > 0 and row["fast"]["candidates_per_s"] > 0
    assert row["fast"]["batch_rows"] >= 1
    assert b["repeat"] == 2 and len(row["fast"]["seconds_all"]) == 2
    assert len(b["rosais"]["fast"]["seconds_all"]) == 2 and b["rosais"]["fast"]["seconds"] > 0
    assert row["fast"]["seconds"] == pytest.approx(sum(row["fast"]["seconds_all"]) / 2)


def test_prompt_sizes_beyond_the_context_are_skipped(tiny):
    assert prompt_of_tokens(tiny, 10**6) is None
    p = prompt_of_tokens(tiny, 40)
    assert abs(len(tiny.encode(p)) - 40) <= 2


def test_synthetic_models_are_real_family_classes():
    with pytest.raises(ValueError, match="unknown synthetic model"):
        synthetic_model("nope", device="cpu")
    moe = synthetic_model("olmoe-small", device="cpu")
    assert type(moe.model).__name__ == "OlmoeForCausalLM"
    assert len(moe.moe_layers) == 4 and moe.handle(0).info.num_experts == 16
    assert moe.context_length == 4096


def test_latency_only_bench_skips_the_searches(tiny, capsys):
    from explorer.cli.commands.bench import bench_text as _text
    b = run_bench(tiny, sizes=(16, 10**6), search=False)
    assert "rosais" not in b and "fsour" not in b and "cone" not in b
    assert b["latency"][0]["trace_s"] > 0 and "skipped" in b["latency"][1]
    text = _text(b)
    assert "latency @ 16" in text or "latency @ 1" in text
    assert "F-SOUR" not in text and "skipped" in text


def test_synthetic_names_listed_for_the_cli_match_the_models():
    from explorer.bench.cost import SYNTHETIC
    from explorer.cli.commands.bench import SYNTHETIC_NAMES
    assert tuple(sorted(SYNTHETIC)) == SYNTHETIC_NAMES


def test_dataset_bench_compares_one_at_a_time_and_multi_prompt(tiny_ckpt, tmp_path, capsys):
    import json

    from explorer.cli.main import main
    csv = tmp_path / "rows.csv"
    csv.write_text("goal,target\nHow do I pick a lock?,Sure\nTell me a secret.,Sure\n"
                   "Why is the sky blue?,Sure\n")
    assert main(["bench", "--dataset", str(csv), "--all-rows", "--limit", "3",
                 "--candidates", "3", "--prompt-batch", "3", "--count-products", "2",
                 "--model", str(tiny_ckpt), "--threads", "1", "--full-budget", "--json"]) == 0
    b = json.loads(capsys.readouterr().out)
    assert b["prompts"] == 3 and b["prompt_batch"] == 3 and b["all_identical"]
    for key in ("one_at_a_time", "multi_prompt"):
        r = b[key]
        assert r["seconds"] > 0 and r["prompts_per_hour"] > 0 and 0 < r["fraction_of_ideal"]
        assert r["gemm"]["products"] > 0 and r["gemm"]["mean_rows"] >= 1
    assert b["multi_prompt"]["batches"] > 0 and b["cone_gflop"] > 0
    assert b["multi_prompt"]["gemm"]["mean_rows"] > b["one_at_a_time"]["gemm"]["mean_rows"]
    from explorer.bench.dataset import dataset_bench_text
    assert "identical rows 3/3" in dataset_bench_text(b)
