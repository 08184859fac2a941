"""Issue 30, layout (no browser): ``?present=`` links, placeholders that fit a phone, Utility
cost's zero bars, the heatmap's legend at 64-128 experts and a hub load that fails fast
when the hub cannot be reached."""

from __future__ import annotations

import pytest


def test_present_links_parse_strictly():
    from explorer.app.links import LinkError, parse_link
    assert parse_link({"present": "1"}) == {"present": True}
    assert parse_link({"present": "0"}) == {"present": False}
    assert parse_link({"route": "3", "present": "1"}) == {"route": 3, "present": True}
    assert parse_link({"job": "abc", "present": "1"}) == {"job": "abc", "present": True}
    assert parse_link({}) == {} and parse_link({"n": "4"}) == {}
    for bad in ("yes", "2", "1" * 5000, ""):
        with pytest.raises(LinkError, match="presenter mode must be 0 or 1"):
            parse_link({"present": bad})


def test_placeholders_wrap_to_fit_a_phone():
    from explorer.viz.figures import PLACEHOLDER_LINE, empty_figure
    from explorer.viz.research import transfer_figure
    fig = empty_figure('Press "1 · Ask the demo model" to fill this and read the answer')
    lines = fig.layout.annotations[0].text.split("<br>")
    assert len(lines) >= 2 and max(map(len, lines)) <= PLACEHOLDER_LINE
    assert " ".join(lines) == 'Press "1 · Ask the demo model" to fill this and read the answer'
    assert transfer_figure(None).layout.annotations[0].text == "No transfer matrix yet"


def test_utility_bars_say_zero_instead_of_empty_panels():
    from explorer.viz.research import utility_asr_figure
    routes = [{"label": "rosais top-1", "asr": 0.5, "refusal_change": 0.0, "ll_change": 0.0,
               "refusal_rate": 0.0},
              {"label": "rosais top-2", "asr": 0.0, "refusal_change": 0.0, "ll_change": 0.0,
               "refusal_rate": 0.0}]
    fig = utility_asr_figure({"routes": routes, "prompts": ["a"], "harmful_prompts": ["b"]})
    assert [list(t.text) for t in fig.data] == [["50%", "0%"], ["+0", "+0"],
                                                ["+0.000", "+0.000"]]
    notes = [a.text for a in fig.layout.annotations if a.text.startswith("0 for every")]
    assert len(notes) == 2  # the two panels of zeros say why they are empty
    routes[1] = dict(routes[1], refusal_change=0.25, ll_change=-0.1)
    fig = utility_asr_figure({"routes": routes, "prompts": ["a"], "harmful_prompts": ["b"]})
    assert not [a for a in fig.layout.annotations if a.text.startswith("0 for every")]


@pytest.mark.parametrize("n", [64, 96, 128])
def test_heatmap_legend_names_each_shown_expert_at_64_to_128_experts(n):
    from explorer.core.trace import RoutingTrace
    from explorer.viz import figures as plots
    T, L = 40, 4
    experts = [[[(3 * t + 7 * i) % n, (3 * t + 7 * i + 1) % n] for t in range(T)]
               for i in range(L)]
    tr = RoutingTrace.from_dict({
        "prompt": "p", "tokens": [f"t{i}" for i in range(T)], "token_ids": list(range(T)),
        "prompt_tokens": 30, "moe_layers": list(range(L)), "num_experts": [n] * L,
        "top_k": [2] * L, "completion": "c", "experts": experts,
        "weights": [[[0.6, 0.4]] * T] * L, "logits": None, "info": {}})
    fig = plots.heatmap(tr, "expert")
    shown = sorted({e[0] for row in experts for e in row})
    names = [t.name for t in fig.data[1:] if t.showlegend]
    assert names == [str(e) for e in shown]
    colors = [t.marker.color for t in fig.data[1:] if t.showlegend]
    assert len(set(colors)) == len(colors)  # one colour per expert
    assert fig.data[0].showscale is False
    # the figure grows with the legend's rows instead of squeezing the heatmap
    small = plots.heatmap(RoutingTrace.from_dict(dict(tr.to_dict(), experts=[[[0, 1]] * T] * L)),
                          "expert")
    assert fig.layout.height > small.layout.height


def test_a_hub_id_fails_at_once_with_one_line_when_the_hub_cannot_be_reached(monkeypatch):
    from huggingface_hub import constants

    from explorer import load_model
    from explorer.core.errors import ModelLoadError
    from explorer.core.model import hub_unreachable
    # a closed local port: refused at once, with or without a network
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert "127.0.0.1:9" in hub_unreachable()
    with pytest.raises(ModelLoadError) as info:
        load_model("explorer-tests/no-such-moe-model", device="cpu")
    message = str(info.value)
    assert "hub is unreachable" in message and "not in the local cache" in message
    assert "\n" not in message
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub_unreachable() == "offline mode (HF_HUB_OFFLINE=1)"
    with pytest.raises(ModelLoadError, match="offline mode"):
        load_model("explorer-tests/no-such-moe-model", device="cpu")
