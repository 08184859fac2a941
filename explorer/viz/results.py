"""Figures of evaluation results and of why an answer flips: pure functions of the summaries
(:mod:`explorer.evaluation.results`) and of the lens results (:mod:`explorer.core.lens`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.viz.figures import FONT, empty_figure, expert_colors, token_label


def _layout(fig: go.Figure, title: str | None, height: int, bottom: int = 40) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0.01, xanchor="left", font=dict(size=14)) if title else None,
        template="plotly_white", font=FONT, height=height,
        margin=dict(l=60, r=20, t=60 if title else 30, b=bottom))
    return fig


def category_bars(table: Sequence[dict], title: str | None = "ASR per category"
                  ) -> go.Figure:
    """Grouped bars: for each category (x), the ASR of each method (one bar each, labelled
    k/n), from :func:`explorer.evaluation.results.category_table` records."""
    if not table:
        return empty_figure("No categories in these results (JailbreakBench rows have them)")
    methods = list(dict.fromkeys(r["method"] for r in table))
    cats = sorted({r["category"] for r in table})
    colors = expert_colors(max(len(methods), 2))
    fig = go.Figure()
    for m, color in zip(methods, colors):
        by = {r["category"]: r for r in table if r["method"] == m}
        ys = [100 * by[c]["asr"] if c in by else None for c in cats]
        text = [f"{by[c]['jailbroken']}/{by[c]['n']}" if c in by else "" for c in cats]
        fig.add_trace(go.Bar(name=m, x=cats, y=ys, text=text, textposition="outside",
                             marker_color=color, cliponaxis=False,
                             hovertemplate="%{x}<br>ASR %{y:.0f}% (%{text})<extra>" + m
                             + "</extra>"))
    fig.update_layout(barmode="group", legend=dict(orientation="h", y=-0.35, x=0))
    fig.update_yaxes(title="ASR (%)", range=[0, 112])
    fig.update_xaxes(tickangle=-30)
    return _layout(fig, title, 400, bottom=120)


def _lens_matrix(lens: Any) -> tuple[list[list[float]], list[list[str]]]:
    probs = [list(t.probs) for t in lens.top]
    text = [[token_label(s) for s in t.tokens] for t in lens.top]
    return probs, text


def lens_heatmap(lenses: Sequence[Any], names: Sequence[str] | None = None,
                 title: str | None = "Logit lens: the top tokens after each layer"
                 ) -> go.Figure:
    """One heatmap per :class:`~explorer.core.lens.LogitLens` (side by side): a row per
    decoder layer (the last at the top), a column per rank, each cell the token that rank
    holds after that layer, coloured by its probability."""
    lenses = [x for x in lenses if x is not None]
    if not lenses:
        return empty_figure("Generate (and re-run) first, then press Explain")
    names = list(names or [f"lens {i + 1}" for i in range(len(lenses))])
    fig = make_subplots(rows=1, cols=len(lenses), horizontal_spacing=0.08,
                        subplot_titles=[f"{n}: after token {token_label(x.token)!s} "
                                        f"(position {x.position})"
                                        for n, x in zip(names, lenses)])
    for c, lens in enumerate(lenses, start=1):
        probs, text = _lens_matrix(lens)
        k = max(len(p) for p in probs)
        fig.add_trace(go.Heatmap(
            z=probs, x=[f"#{i + 1}" for i in range(k)], y=[f"L{i}" for i in lens.layers],
            text=text, texttemplate="%{text}", zmin=0, zmax=1, colorscale="Blues",
            showscale=c == len(lenses), colorbar=dict(title="P"),
            hovertemplate="layer %{y}, rank %{x}: %{text} (P = %{z:.3f})<extra></extra>"),
            row=1, col=c)
    return _layout(fig, title, 130 + 34 * len(lenses[0].layers))
