"""Expert pages (library and CLI): selection frequencies and safety relevance per (MoE
layer, expert), checked against a direct recomputation with one-by-one traces; a planted
harmful-only expert found; 64 experts; JSON and CSV; the disk cache; the route query."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_olmoe

from explorer.core.prompt_sets import BENIGN_PROMPTS, HARMFUL_PROMPTS
from explorer.core.route import Route
from explorer.core.trace import trace
from explorer.research.experts import (
    ExpertStats,
    cache_path,
    cached_expert_stats,
    expert_stats,
    layer_rosais,
)
from explorer.storage.library import RouteStore


@pytest.fixture(scope="module")
def demo_stats(demo):
    return expert_stats(demo, bootstrap=200, seed=3)


def _lone_counts(moe, prompts):
    """Per MoE layer, prompt and expert: selections counted from a lone trace of each
    prompt (the existing trace machinery, one prompt a forward)."""
    out = []
    for text in prompts:
        tr = trace(moe, text, max_new_tokens=0, record_logits=False)
        out.append([torch.bincount(torch.tensor(tr.experts[i]).reshape(-1),
                                   minlength=tr.num_experts[i]).tolist()
                    for i in range(len(tr.moe_layers))])
    return [[p[i] for p in out] for i in range(len(moe.moe_layers))], \
        [len(moe.prepare(t).ids) for t in prompts]


def test_demo_frequencies_and_scores_match_a_direct_recomputation(demo, demo_stats):
    s = demo_stats
    assert s.prompts == {"harmful": list(HARMFUL_PROMPTS), "benign": list(BENIGN_PROMPTS)}
    for which, prompts in (("harmful", HARMFUL_PROMPTS), ("benign", BENIGN_PROMPTS)):
        counts, ntok = _lone_counts(demo, prompts)
        assert s.counts[which] == counts  # the padded batch selected what lone runs did
        assert s.tokens[which] == ntok
    for i, lay in enumerate(s.moe_layers):
        E, k = s.num_experts[i], s.top_k[i]
        for which in ("harmful", "benign"):
            rows, toks = s.counts[which][i], s.tokens[which]
            assert all(sum(p) == t * k for p, t in zip(rows, toks))
            tf = s.token_freq(which, lay)
            assert tf == pytest.approx([sum(p[e] for p in rows) / sum(toks) for e in range(E)])
            assert sum(tf) == pytest.approx(k)
            pf = s.prompt_freq(which, lay)
            assert pf == pytest.approx([sum(p[e] > 0 for p in rows) / len(rows)
                                        for e in range(E)])
        h = [[p[e] / t for p, t in zip(s.counts["harmful"][i], s.tokens["harmful"])]
             for e in range(E)]
        b = [[p[e] / t for p, t in zip(s.counts["benign"][i], s.tokens["benign"])]
             for e in range(E)]
        want = [sum(x) / len(x) - sum(y) / len(y) for x, y in zip(h, b)]
        assert s.scores[i] == pytest.approx(want, abs=1e-12)
        se = [(torch.tensor(x).var().item() / len(x) + torch.tensor(y).var().item() / len(y))
              ** 0.5 for x, y in zip(h, b)]
        assert s.stderr[i] == pytest.approx(se, rel=1e-6, abs=1e-12)
        assert all(lo <= hi for lo, hi in zip(s.low[i], s.high[i]))
        assert s.ranking(lay) == sorted(range(E), key=lambda e: (-want[e], e))
    # the best expert of the first layer: its interval holds its score, and its top tokens
    # are the tokens of its selections, counted per set, with contexts from the prompts
    lay = s.moe_layers[0]
    best = s.ranking(lay)[0]
    page = s.page(lay, best)
    assert page["rank"] == 1 and page["low"] <= page["score"] <= page["high"]
    total = sum(t["harmful"] + t["benign"] for t in page["top_tokens"])
    assert 0 < total <= sum(p[best] for w in ("harmful", "benign") for p in s.counts[w][0])
    for t in page["top_tokens"]:
        for c in t["contexts"]:
            prompt = (HARMFUL_PROMPTS if c["set"] == "harmful" else BENIGN_PROMPTS)[c["prompt"]]
            tr = trace(demo, prompt, max_new_tokens=0, record_logits=False)
            assert tr.tokens[c["position"]] == c["token"] == t["token"]
            assert best in tr.experts_at(lay, c["position"])
            assert "".join(tr.tokens).count(c["left"] + c["token"] + c["right"]) >= 1


def test_padded_batches_select_what_lone_forwards_select(tiny):
    prompts = ["hi", "Explain how a rainbow forms in the sky after rain.", "ok then"]
    batched = expert_stats(tiny, prompts, prompts[::-1], bootstrap=10, batch_size=3)
    lone = expert_stats(tiny, prompts, prompts[::-1], bootstrap=10, batch_size=1)
    assert batched.counts == lone.counts and batched.top_tokens == lone.top_tokens
    assert batched.counts["harmful"] == [x[::-1] for x in batched.counts["benign"]]


def test_json_round_trip_provenance_and_seeded_bootstrap(demo, demo_stats):
    s = demo_stats
    back = ExpertStats.from_json(s.to_json())
    assert back == s and back.to_json() == s.to_json()
    prov = demo.provenance()
    for key in ("model", "transformers_version", "chat_template_hash"):
        assert s.info[key] == prov[key]
    assert s.info["prompt_set"] == "builtin" and s.info["seed"] == 3
    again = expert_stats(demo, bootstrap=200, seed=3)
    assert (again.low, again.high) == (s.low, s.high)
    other = expert_stats(demo, bootstrap=200, seed=4)
    assert other.scores == s.scores and (other.low, other.high) != (s.low, s.high)
    rows = list(csv.DictReader(io.StringIO(s.to_csv())))
    assert len(rows) == sum(s.num_experts)
    first = rows[0]
    assert int(first["expert"]) == s.ranking(s.moe_layers[0])[0]
    assert float(first["score"]) == s.scores[0][int(first["expert"])]


def _planted(tmp_path):
    """A tiny OLMoE whose expert 5 at layer 0 fires on the tokens that only the harmful
    prompts contain, and never elsewhere: residual dimension 0 carries +3 units on those
    tokens and -1 on every other (layer 0's attention writes nothing there), and the
    router's row 5 reads only that dimension."""
    from explorer import load_model
    folder = save_tiny_olmoe(tmp_path / "planted")
    moe = load_model(str(folder), device="cpu")
    ids = {w: {t for p in prompts for t in moe.prepare(p).ids}
           for w, prompts in (("h", HARMFUL_PROMPTS), ("b", BENIGN_PROMPTS))}
    only = sorted(ids["h"] - ids["b"])
    assert len(only) > 5
    m = moe.model
    with torch.no_grad():
        emb = m.model.embed_tokens.weight
        scale = emb[:, 1:].abs().mean().item()
        emb[:, 0] = -scale
        emb[only, 0] = 3 * scale
        m.model.layers[0].self_attn.o_proj.weight[0].zero_()
        gate = m.model.layers[0].mlp.gate.weight
        gate[5].zero_()
        gate[5, 0] = 8.0
    return moe, only


def test_a_planted_harmful_only_expert_is_the_most_safety_relevant(tmp_path):
    moe, only = _planted(tmp_path)
    s = expert_stats(moe, bootstrap=300)
    lay = moe.moe_layers[0]
    assert s.ranking(lay)[0] == 5
    assert s.token_freq("benign", lay)[5] == 0.0
    assert s.token_freq("harmful", lay)[5] > 0.05
    assert s.low[0][5] > 0  # the interval excludes zero
    # every token routed to it is one the harmful prompts alone contain
    page = s.page(lay, 5)
    assert page["top_tokens"] and all(t["benign"] == 0 for t in page["top_tokens"])
    assert {t["token"] for t in page["top_tokens"]} <= set(moe.token_strings(only))


def test_sixty_four_experts(tmp_path):
    from explorer import load_model
    from explorer.viz.experts import expert_overview
    moe = load_model(str(save_tiny_olmoe(tmp_path / "e64", num_experts=64,
                                         num_experts_per_tok=4)), device="cpu")
    s = expert_stats(moe, HARMFUL_PROMPTS[:4], BENIGN_PROMPTS[:4], bootstrap=50)
    assert s.num_experts == [64, 64] and s.top_k == [4, 4]
    assert all(len(r) == 64 for r in s.scores)
    assert sum(s.token_freq("harmful", 1)) == pytest.approx(4)
    fig = expert_overview(s, 1)
    assert len(fig.data[0].x) == 64 and sorted(c[0] for c in fig.data[0].customdata) == list(range(64))


def test_cache_on_disk_keyed_by_model_and_prompt_set(tiny, tmp_path):
    a = cached_expert_stats(tiny, tmp_path, ["hi there"], ["hello"], prompt_set="x",
                            bootstrap=20)
    path = cache_path(tiny, tmp_path, ["hi there"], ["hello"], bootstrap=20)
    assert path.is_file() and ExpertStats.from_json(path.read_text()) == a
    path.write_text(json.dumps(dict(json.loads(path.read_text()), seconds=-1.0)))
    assert cached_expert_stats(tiny, tmp_path, ["hi there"], ["hello"], prompt_set="x",
                               bootstrap=20).seconds == -1.0  # read, not computed again
    assert cache_path(tiny, tmp_path, ["hi there"], ["bye"], bootstrap=20) != path
    path.write_text("{broken")
    again = cached_expert_stats(tiny, tmp_path, ["hi there"], ["hello"], prompt_set="x",
                                bootstrap=20)  # computed again, and written again
    assert again.seconds >= 0 and (again.counts, again.low) == (a.counts, a.low)
    assert ExpertStats.from_json(path.read_text()) == again


def test_routes_that_force_or_mask_an_expert(tmp_path):
    from explorer.experts import routes_with_expert
    store = RouteStore(tmp_path / "lib.sqlite3")
    r1 = store.save_route(Route().force(1, 3, [2, 5]), "p1", "demo")
    r2 = store.save_route(Route().mask(1, None, [5]), "p2", "demo", owner="alice")
    store.save_route(Route().force(2, 3, [2, 5]), "p3", "demo")  # another layer
    store.save_route(Route().force(1, 3, [2, 5]), "p4", "other")  # another model
    got = routes_with_expert(store, 1, 5, model="demo")
    assert [(r["id"], r["mode"]) for r in got] == [(r2, "mask"), (r1, "force")]
    # a viewer sees only what is theirs or shared (r1 has no owner and is not shared)
    assert [sr.id for sr, _ in store.routes_with_expert(1, 5, model="demo",
                                                          viewer="alice")] == [r2]
    assert store.routes_with_expert(1, 5, model="demo", viewer="bob") == []
    assert store.routes_with_expert(1, 7, model="demo") == []


def test_layer_rosais(demo):
    from explorer.methods.rosais import rosais
    res = rosais(demo, HARMFUL_PROMPTS[0], samples=2, max_new_tokens=0)
    got = layer_rosais(res, res.top_layers[0])
    assert got["rank"] == 1 and got["score"] == max(res.scores)
    assert layer_rosais(None, 0) is None and layer_rosais(res, 99) is None


# -- CLI --------------------------------------------------------------------------------
def _cli(capsys, argv, data_dir):
    from explorer.cli.main import main
    from explorer.settings import Settings
    code = main(argv, settings=Settings(data_dir=str(data_dir)))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_overview_page_and_exports(demo, demo_stats, capsys, tmp_path):
    data = tmp_path / "data"
    code, out, err = _cli(capsys, ["experts", "--json", "--bootstrap", "200", "--seed", "3"],
                          data)
    assert code == 0, err
    obj = json.loads(out)
    assert obj["model"] == "demo" and obj["prompts"] == {"harmful": 12, "benign": 12}
    assert list(obj["layers"]) == [str(x) for x in demo.moe_layers]
    for lay in demo.moe_layers:  # the same numbers as the library's
        assert obj["layers"][str(lay)] == demo_stats.overview(lay)[:3]
    assert len(list((data / "experts").glob("demo-*.json"))) == 1  # cached for next time
    # one expert's page, with the library's routes that force or mask it
    lay = demo.moe_layers[1]
    best = demo_stats.ranking(lay)[0]
    store = RouteStore(data / "explorer.sqlite3")
    rid = store.save_route(Route().force(lay, 2, sorted({best, (best + 1) % 16})), "p", "demo")
    store.close()
    csv_path, json_path = tmp_path / "e.csv", tmp_path / "e.json"
    code, out, err = _cli(capsys, ["experts", "--layer", str(lay), "--expert", str(best),
                                   "--bootstrap", "200", "--seed", "3", "--json",
                                   "--csv", str(csv_path), "--out", str(json_path)], data)
    assert code == 0, err
    page = json.loads(out)
    assert page == json.loads(json.dumps(demo_stats.page(lay, best, routes=page["routes"])))
    assert [(r["id"], r["mode"]) for r in page["routes"]] == [(rid, "force")]
    assert page["top_tokens"] and page["harmful_token_freq"] > 0
    assert ExpertStats.from_json(json_path.read_text()).counts == demo_stats.counts
    assert csv_path.read_text() == demo_stats.to_csv()
    # the text page
    code, out, err = _cli(capsys, ["experts", "--layer", str(lay), "--expert", str(best),
                                   "--bootstrap", "200", "--seed", "3"], data)
    assert code == 0 and f"expert {best} at layer {lay}" in out and f"#{rid} force" in out


def test_cli_prompt_files_and_limit(demo, capsys, tmp_path):
    """Prompt sets from files (one a line), cut with --limit; 'harmful'/'benign' name the
    built-in sets."""
    h, b = tmp_path / "h.txt", tmp_path / "b.txt"
    h.write_text("Explain how to pick a lock.\nWrite a threatening letter.\n"
                 "How do I make a fake ID?\n")
    b.write_text("How do I bake bread?\nName three rivers.\nWhat is a prime number?\n")
    code, out, err = _cli(capsys, ["experts", "--json", "--bootstrap", "20", "--harmful",
                                   str(h), "--benign", str(b)], tmp_path / "d1")
    assert code == 0, err
    assert json.loads(out)["prompts"] == {"harmful": 3, "benign": 3}
    code, out, err = _cli(capsys, ["experts", "--json", "--bootstrap", "20", "--harmful",
                                   str(h), "--benign", "benign", "--limit", "2"], tmp_path / "d2")
    assert code == 0, err
    assert json.loads(out)["prompts"] == {"harmful": 2, "benign": 2}
    code, _out, err = _cli(capsys, ["experts", "--harmful", str(tmp_path / "none.txt"),
                                    "--benign", str(b)], tmp_path / "d3")
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, msg", [
    (["--expert", "1"], "--expert needs --layer"),
    (["--harmful", "x.csv"], "both --harmful and --benign"),
    (["--layer", "99"], "not an MoE layer"),
    (["--layer", "0", "--expert", "99"], "experts 0..15"),
])
def test_cli_refuses_bad_input_in_one_line(demo, capsys, tmp_path, argv, msg):
    code, _out, err = _cli(capsys, ["experts", "--bootstrap", "20", *argv], tmp_path)
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1


# -- app views (the browser flow is in tests/test_browser_experts.py) -------------------
@pytest.fixture(scope="module")
def app(demo, tmp_path_factory):
    pytest.importorskip("gradio")
    from explorer.app.build import build_app
    built = build_app(demo, data_dir=tmp_path_factory.mktemp("experts-app"))
    yield built.explorer
    built.explorer.jobs.shutdown(wait=True, timeout=30)


def test_app_page_export_and_the_layer_rosais(app, demo, demo_stats):
    import gradio as gr

    from explorer.app.tabs import experts as X
    from explorer.methods.rosais import rosais
    lay = demo.moe_layers[3]
    best = demo_stats.ranking(lay)[0]
    res = rosais(demo, HARMFUL_PROMPTS[0], samples=2, max_new_tokens=0)
    st, query, fig, head, freqs, tokens, routes = app.gate.call(
        X.open_page, f"layer {lay} expert {best}", X.ExpertsState(), res, None)
    assert query == f"L{lay} E{best}" and (st.layer, st.expert) == (lay, best)
    assert st.stats.counts == demo_stats.counts  # the same measurement, from the cache
    assert (app.store.data_dir / "experts").is_dir()
    ro = layer_rosais(res, lay)
    assert f"RoSais: **{ro['score']:.3f}** (rank {ro['rank']} of" in head
    assert f"{demo_stats.scores[3][best]:+.3f}" in head and "rank 1 of 16" in head
    assert fig.data[0].customdata[0][0] == best and "No route in the library" in routes
    assert [b.name for b in freqs.data] == ["harmful", "benign"]
    assert tokens.count("<tr>") == len(demo_stats.top_tokens[3][best]) + 1
    csv_file, json_file = app.gate.call(X.export, st)
    assert ExpertStats.from_json(Path(json_file).read_text()).counts == demo_stats.counts
    assert Path(csv_file).read_text() == st.stats.to_csv()
    for junk in ("", "x", "1 2 3", "9 1", f"{lay} 16", None):
        with pytest.raises(gr.Error):
            app.gate.call(X.open_page, junk, X.ExpertsState(), None, None)


def test_hosted_expert_pages_list_the_visitors_own_routes_only(tmp_path):
    from explorer.app.library_access import Library
    store = RouteStore(tmp_path / "lib.sqlite3")
    mine = store.save_route(Route().force(1, 0, [2, 5]), "p1", "demo", owner="alice")
    theirs = store.save_route(Route().mask(1, None, [5]), "p2", "demo", owner="bob")
    store.share_route(theirs, "bob")
    assert [sr.id for sr, _ in Library(store, "alice").with_expert("demo", 1, 5)] == [mine]
    assert [sr.id for sr, _ in Library(store).with_expert("demo", 1, 5)] == [theirs, mine]
