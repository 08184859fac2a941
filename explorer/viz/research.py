"""Plotly figures for the research results: pure functions, no model, no Gradio.

Each function takes a result object (or its ``to_dict()`` form) from
:mod:`explorer.research.utility`, :mod:`explorer.research.transfer`, :mod:`explorer.research.minimal`,
:mod:`explorer.research.defense` or a :class:`~explorer.methods.rosais.RosaisResult`, and returns a
``plotly.graph_objects.Figure``.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.viz.figures import FONT, empty_figure

_RED, _BLUE, _GREY = "#d62728", "#1f77b4", "#7f7f7f"


def _d(x) -> dict[str, Any]:
    if x is None:
        return {}
    if isinstance(x, dict):
        return x
    return x.to_dict() if hasattr(x, "to_dict") else dict(vars(x))


def _layout(fig: go.Figure, title: str | None, height: int | None = None,
            sub: str = "") -> go.Figure:
    """Common layout; ``sub`` goes on a second, smaller title line (never over the plot)."""
    text = (title or "") + (f"<br><sup>{sub}</sup>" if sub else "")
    fig.update_layout(
        title=dict(text=text, x=0.01, xanchor="left", y=0.97, yanchor="top",
                   font=dict(size=14)) if text else None,
        template="plotly_white", font=FONT, height=height,
        margin=dict(l=60, r=20, t=(80 if sub else 50) if text else 20, b=60))
    return fig


def _labelled(values, fmt: str) -> dict:
    """Bar text for every value, zeros included (a bar of height 0 is otherwise invisible)."""
    return dict(text=[None if v is None else fmt.format(v) for v in values],
                textposition="outside", cliponaxis=False)


def _empty(message: str) -> go.Figure:
    return empty_figure(message)


def _short(text: str, n: int = 28) -> str:
    text = text or ""
    return text if len(text) <= n else text[: n - 1] + "…"


def utility_figure(result, title: str | None = "Utility cost on benign prompts") -> go.Figure:
    """Per route: change in benign refusal rate (pp) and in mean log-likelihood per token of
    the model's own answers; ASR on harmful prompts in the hover when measured."""
    d = _d(result)
    routes = d.get("routes") or []
    if not routes:
        return _empty("No routes evaluated")
    labels = [f"#{i}" for i in range(len(routes))]
    hover = [f"{r['label']}<br>ASR: "
             + ("n/a" if r.get("asr") is None else f"{100 * r['asr']:.0f}%") for r in routes]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Δ benign refusal rate (pp)",
                                                        "Δ log-likelihood (nats/token)"))
    refusals = [100 * r["refusal_change"] for r in routes]
    lls = [r["ll_change"] for r in routes]
    fig.add_trace(go.Bar(x=labels, y=refusals, marker_color=_RED, hovertext=hover,
                         name="Δ refusals", **_labelled(refusals, "{:+.0f}")), 1, 1)
    fig.add_trace(go.Bar(x=labels, y=lls, marker_color=_BLUE, hovertext=hover,
                         name="Δ log-likelihood", **_labelled(lls, "{:+.3f}")), 1, 2)
    fig.update_layout(showlegend=False)
    return _layout(fig, title, 360)


def transfer_figure(result, title: str | None = "Route transfer") -> go.Figure:
    """Heatmap: rows = routes (plus the unattacked model), columns = prompts; colour =
    jailbroken; text = target log-prob. A route's own prompt is outlined.
    ``customdata = [route index (-1 = no route), prompt index]``."""
    d = _d(result)
    cells, prompts = d.get("cells") or [], d.get("prompts") or []
    if not cells or not prompts:
        return _empty("No transfer matrix yet")
    rows = [d.get("baseline") or [{}] * len(prompts)] + cells
    ylab = ["no route"] + [f"route {i}" for i in range(len(cells))]
    z = [[1.0 if c.get("jailbroken") else 0.0 for c in row] for row in rows]
    text = [[("" if c.get("target_logprob") is None else f"{c['target_logprob']:.1f}")
             for c in row] for row in rows]
    custom = [[[i - 1, j] for j in range(len(prompts))] for i in range(len(rows))]
    hover = [[f"{ylab[i]} on {_short(prompts[j], 60)!r}<br>jailbroken: {bool(c.get('jailbroken'))}"
              f"<br>log P(target): {text[i][j]}<br>edits kept: {c.get('edits_kept', 0)}"
              for j, c in enumerate(row)] for i, row in enumerate(rows)]
    fig = go.Figure(go.Heatmap(
        z=z, x=[f"{j}: {_short(p)}" for j, p in enumerate(prompts)], y=ylab, text=text,
        texttemplate="%{text}", customdata=custom, hovertext=hover, hoverinfo="text",
        zmin=0, zmax=1, colorscale=[[0, "#eef2f7"], [1, _RED]], showscale=False, xgap=1,
        ygap=1))
    sources = d.get("sources") or []
    for i, s in enumerate(sources):
        if s in prompts:
            j = prompts.index(s)
            fig.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=i + 0.5, y1=i + 1.5,
                          line=dict(color="black", width=2))
    fig.update_yaxes(autorange="reversed")
    rate = d.get("transfer_rate")
    sub = "" if rate is None else f" (transfer rate {100 * rate:.0f}%)"
    return _layout(fig, (title or "") + sub, max(260, 40 * len(rows) + 140))


def minimal_figure(result, title: str | None = "Edits the minimal route needs") -> go.Figure:
    """Bars: the target log-prob lost when each edit of the minimal route is removed."""
    d = _d(result)
    nec = d.get("necessity") or []
    if not nec:
        return _empty("The minimal route has no edits")
    labels = [(f"L{x['layer']} @{x['position']} {x.get('token')!r}" if x["position"] is not None
               else f"L{x['layer']} all") for x in nec]
    colors = [_GREY if x.get("template") else _BLUE for x in nec]
    fig = go.Figure(go.Bar(x=labels, y=[x["drop"] for x in nec], marker_color=colors,
                           hovertext=[f"experts {x['experts']} ({x['mode']}), "
                                      f"{x.get('from_end')} from the end, "
                                      f"{'template' if x.get('template') else 'content'} token"
                                      for x in nec]))
    fig.update_yaxes(title="log-prob drop without it")
    sub = f" ({d.get('edits_before')} → {d.get('edits_after')} edits)"
    return _layout(fig, (title or "") + sub, 360)


def defense_figure(result, title: str | None = "ASR before / after the defense") -> go.Figure:
    """Grouped bars: ASR of each attack without and with the defense."""
    d = _d(result)
    table = d.get("table") or {}
    if not table:
        return _empty("No defense evaluated")
    attacks = list(table)
    fig = go.Figure()
    before = [None if table[a].get("before") is None else 100 * table[a]["before"]
              for a in attacks]
    after = [100 * table[a]["after"] for a in attacks]
    fig.add_trace(go.Bar(name="before", x=attacks, marker_color=_RED, y=before,
                         **_labelled(before, "{:.0f}%")))
    fig.add_trace(go.Bar(name="after", x=attacks, marker_color=_BLUE, y=after,
                         **_labelled(after, "{:.0f}%")))
    # the legend sits below the plot: above it, it ran into the title
    fig.update_layout(barmode="group", legend=dict(orientation="h", y=-0.18, x=0))
    fig.update_yaxes(title="ASR (%)", range=[0, 112])
    u = d.get("utility")
    sub = ""
    if u:
        sub = (f"benign refusals {100 * u['baseline_refusal_rate']:.0f}% → "
               f"{100 * u['routes'][0]['refusal_rate']:.0f}%, ΔLL {u['ll_change']:+.3f}")
    return _layout(fig, title, 380, sub=sub)


def rosais_distribution_figure(result, kind: str = "box",
                               title: str | None = "RoSais score spread per router") -> go.Figure:
    """Box (or violin, ``kind="violin"``) of every random mask's score per MoE layer, from a
    RoSais result or a RoSais curve (pooled over prompts); the best score is the max."""
    d = _d(result)
    layers, dists = d.get("moe_layers") or [], d.get("distributions") or []
    if not layers or not dists:
        return _empty("No RoSais scores yet")
    fig = go.Figure()
    for lay, vals in zip(layers, dists):
        if kind == "violin":
            fig.add_trace(go.Violin(y=vals, name=f"L{lay}", box_visible=True,
                                    meanline_visible=True, points=False, line_color=_BLUE))
        else:
            fig.add_trace(go.Box(y=vals, name=f"L{lay}", boxpoints="outliers",
                                 marker_color=_BLUE))
    fig.add_hline(y=0, line=dict(color=_GREY, dash="dot"))
    fig.update_layout(showlegend=False)
    fig.update_yaxes(title="Δ log P(affirmative) under a mask")
    return _layout(fig, title, 360)


def asr_curve_figure(curve, title: str | None = "ASR vs routers masked") -> go.Figure:
    """ASR against the number L of top-RoSais routers masked (L = 0: no mask)."""
    d = _d(curve)
    tops, rates = d.get("tops") or [], d.get("asr_by_top") or []
    if not tops:
        return _empty("No curve yet")
    fig = go.Figure(go.Scatter(x=tops, y=[100 * r for r in rates], mode="lines+markers",
                               line=dict(color=_RED)))
    fig.update_xaxes(title="top-L routers masked", dtick=1)
    fig.update_yaxes(title="ASR (%)", range=[0, 100])
    n = len(d.get("prompts") or [])
    return _layout(fig, (title or "") + (f" ({n} prompts)" if n else ""), 340)


def sweep_figure(rows, title: str | None = "ASR vs SAFEx experts masked") -> go.Figure:
    """ASR against the number of SAFEx-selected experts masked: the rows of
    :func:`explorer.research.sweep.safex_sweep` (0: no mask)."""
    rows = list(rows or [])
    if not rows:
        return _empty("No sweep yet")
    xs = [r["masked"] for r in rows]
    fig = go.Figure(go.Scatter(
        x=xs, y=[100 * r["asr"] for r in rows], mode="lines+markers", line=dict(color=_RED),
        customdata=[[r["jailbroken"], r["n"]] for r in rows],
        hovertemplate="%{x} experts masked: %{y:.0f}% (%{customdata[0]}/%{customdata[1]})"
                      "<extra></extra>"))
    fig.update_xaxes(title="experts masked (most stable first)")
    fig.update_yaxes(title="ASR (%)", range=[0, 100])
    return _layout(fig, (title or "") + f" ({rows[0]['n']} prompts)", 340)


def utility_asr_figure(result, title: str | None = "Attack success vs utility cost") -> go.Figure:
    """Per route, side by side: ASR on the harmful prompts (%, when measured), change in the
    benign refusal rate (pp) and change in mean log-likelihood per token of the model's own
    benign answers. Routes are ``#i`` on the x axes (the label is in the hover)."""
    d = _d(result)
    routes = d.get("routes") or []
    if not routes:
        return _empty("No routes evaluated")
    labels = [f"#{i}" for i in range(len(routes))]
    hover = [r.get("label", "") for r in routes]
    n_h = len(d.get("harmful_prompts") or [])
    n_b = len(d.get("prompts") or [])
    fig = make_subplots(rows=1, cols=3, subplot_titles=(
        f"ASR on {n_h} harmful prompts (%)" if n_h else "ASR (not measured)",
        f"Δ benign refusals on {n_b} prompts (pp)", "Δ log-likelihood (nats/token)"))
    asr = [None if r.get("asr") is None else 100 * r["asr"] for r in routes]
    refusals = [100 * r["refusal_change"] for r in routes]
    lls = [r["ll_change"] for r in routes]
    # every bar carries its value, so a 0 reads "+0" instead of an empty panel
    fig.add_trace(go.Bar(x=labels, y=asr, marker_color=_RED, hovertext=hover, name="ASR",
                         **_labelled(asr, "{:.0f}%")), 1, 1)
    fig.add_trace(go.Bar(x=labels, y=refusals, marker_color=_GREY, hovertext=hover,
                         name="Δ refusals", **_labelled(refusals, "{:+.0f}")), 1, 2)
    fig.add_trace(go.Bar(x=labels, y=lls, marker_color=_BLUE, hovertext=hover,
                         name="Δ log-likelihood", **_labelled(lls, "{:+.3f}")), 1, 3)
    for col, values, what in ((2, refusals, "no change in benign refusals"),
                              (3, lls, "no change in log-likelihood")):
        if values and all(abs(v) < 1e-9 for v in values):
            fig.add_annotation(text=f"0 for every route:<br>{what}", showarrow=False,
                               xref=f"x{col} domain", yref=f"y{col} domain", x=0.5, y=0.6,
                               font=dict(size=12, color=_GREY))
    fig.update_yaxes(range=[0, 112], row=1, col=1)
    fig.update_layout(showlegend=False)
    return _layout(fig, title, 360)


def route_cells_figure(before, after, moe_layers, tokens=None,
                       title: str | None = "Kept and removed edits") -> go.Figure:
    """Heatmap of a route before / after minimisation: rows = MoE layers, columns = prompt
    positions (tokens when given; an ``all`` column for whole-prompt edits). Colour: 0 no
    edit, 1 removed edit, 2 kept edit; the cell text is the edit's experts.
    ``before`` / ``after``: route dicts (``{"edits": [...]}``) or objects with ``to_dict``."""
    b, a = _d(before).get("edits") or [], _d(after).get("edits") or []
    if not b:
        return _empty("The route has no edits")
    layers = list(moe_layers) or sorted({e["layer"] for e in b})
    for e in b:
        if e["layer"] not in layers:
            layers.append(e["layer"])
    layers = sorted(layers)
    npos = max([len(tokens or [])] + [e["position"] + 1 for e in b if e["position"] is not None])
    whole = any(e["position"] is None for e in b)
    cols = list(range(npos)) + ([None] if whole else [])
    xlab = [(f"{j}: {tokens[j]!r}" if tokens and j < len(tokens) else str(j))
            if j is not None else "all" for j in cols]
    key = lambda e: (e["layer"], e["position"], tuple(e["experts"]), e["mode"])  # noqa: E731
    kept = {key(e) for e in a}
    z = [[0.0] * len(cols) for _ in layers]
    text = [[""] * len(cols) for _ in layers]
    for e in b:
        i, j = layers.index(e["layer"]), cols.index(e["position"])
        state = 2.0 if key(e) in kept else 1.0
        z[i][j] = max(z[i][j], state)
        mark = ("" if e["mode"] == "force" else "¬") + ",".join(map(str, e["experts"]))
        text[i][j] = (text[i][j] + " " if text[i][j] else "") + mark
    fig = go.Figure(go.Heatmap(
        z=z, x=xlab, y=[f"L{lay}" for lay in layers], text=text, texttemplate="%{text}",
        zmin=0, zmax=2, xgap=1, ygap=1, hoverinfo="x+y+text",
        colorscale=[[0, "#eef2f7"], [0.33, "#eef2f7"], [0.33, "#f5c6c6"], [0.66, "#f5c6c6"],
                    [0.66, _RED], [1, _RED]],
        colorbar=dict(tickvals=[1 / 3, 1, 5 / 3], ticktext=["none", "removed", "kept"],
                      len=0.6)))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(tickangle=-45)
    sub = f" ({len(b)} → {len(a)} edits)"
    return _layout(fig, (title or "") + sub, max(300, 36 * len(layers) + 180))


def defense_overview_figure(result, title: str | None = "Defense: ASR and utility cost"
                            ) -> go.Figure:
    """Left: ASR of each attack without and with the defense (grouped bars). Right: the
    benign refusal rate without and with it (its utility cost; ΔLL in the subplot title)."""
    d = _d(result)
    table = d.get("table") or {}
    if not table:
        return _empty("No defense evaluated")
    u = d.get("utility")
    right = "benign refusal rate (%)"
    if u:
        right += f", ΔLL {u['ll_change']:+.3f} nats/token"
    fig = make_subplots(rows=1, cols=2, column_widths=[0.65, 0.35],
                        subplot_titles=(f"ASR on {len(d.get('prompts') or [])} harmful "
                                        "prompts (%)", right))
    attacks = list(table)
    fig.add_trace(go.Bar(name="without defense", x=attacks, marker_color=_RED,
                         y=[None if table[a].get("before") is None else 100 * table[a]["before"]
                            for a in attacks]), 1, 1)
    fig.add_trace(go.Bar(name="with defense", x=attacks, marker_color=_BLUE,
                         y=[None if table[a].get("after") is None else 100 * table[a]["after"]
                            for a in attacks]), 1, 1)
    if u:
        fig.add_trace(go.Bar(x=["without", "with"], showlegend=False,
                             marker_color=[_RED, _BLUE],
                             y=[100 * u["baseline_refusal_rate"],
                                100 * u["routes"][0]["refusal_rate"]]), 1, 2)
    fig.update_layout(barmode="group", legend=dict(orientation="h", y=-0.2))
    fig.update_yaxes(range=[0, 100])
    return _layout(fig, title, 380)


__all__ = ["asr_curve_figure", "defense_figure", "defense_overview_figure", "minimal_figure",
           "rosais_distribution_figure", "route_cells_figure", "sweep_figure",
           "transfer_figure", "utility_asr_figure", "utility_figure"]
