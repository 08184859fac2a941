"""Plotly figures of the expert pages: pure functions of an
:class:`~explorer.research.experts.ExpertStats`.

:func:`expert_overview` ranks the experts of one MoE layer by safety relevance (readable
at 64 to 128 experts: one bar each, the interval as error bars; every bar carries
``customdata = [expert, layer]`` for the app's click bridge). :func:`expert_frequencies`
compares one expert's selection frequencies on the harmful and the benign prompts.
"""

from __future__ import annotations

import plotly.graph_objects as go

from explorer.viz.figures import FONT, empty_figure

#: Bar colours: chosen more on harmful prompts (positive score), on benign ones, or neither.
HARMFUL_COLOR, BENIGN_COLOR, NEUTRAL_COLOR = "#b91c1c", "#1d4ed8", "#9ca3af"


def _layout(fig: go.Figure, title: str, height: int, bottom: int = 60) -> go.Figure:
    fig.update_layout(title={"text": title, "x": 0.01, "xanchor": "left",
                             "font": {"size": 14}},
                      template="plotly_white", font=FONT, height=height,
                      margin={"l": 60, "r": 20, "t": 50, "b": bottom}, showlegend=False,
                      hoverlabel={"font": {"family": "ui-monospace, monospace", "size": 12}})
    return fig


def expert_overview(stats, layer: int, selected: int | None = None) -> go.Figure:
    """The experts of ``layer`` ranked by safety relevance (harmful minus benign per-token
    selection frequency, averaged over prompts), highest first, with the bootstrap interval
    as error bars; red where the interval lies above zero, blue below, grey across it.
    ``selected``: an expert outlined. Empty placeholder without ``stats``."""
    if stats is None:
        return empty_figure("Compute the expert statistics to see the layer overview")
    r = stats.row(layer)
    order = stats.ranking(layer)
    n = len(order)
    sc = [stats.scores[r][e] for e in order]
    lo = [stats.low[r][e] for e in order]
    hi = [stats.high[r][e] for e in order]
    colors = [HARMFUL_COLOR if a > 0 else BENIGN_COLOR if b < 0 else NEUTRAL_COLOR
              for a, b in zip(lo, hi)]
    th, tb = stats.token_freq("harmful", layer), stats.token_freq("benign", layer)
    fig = go.Figure(go.Bar(
        x=list(range(n)), y=sc, marker={"color": colors,
                                        "line": {"width": [3 if e == selected else 0
                                                           for e in order],
                                                 "color": "#111827"}},
        error_y={"type": "data", "symmetric": False,
                 "array": [h - s for h, s in zip(hi, sc)],
                 "arrayminus": [s - lo_ for s, lo_ in zip(sc, lo)],
                 "thickness": 1 if n > 48 else 1.5, "width": 0 if n > 48 else 3},
        customdata=[[e, int(layer), th[e], tb[e], lo_, h]
                    for e, lo_, h in zip(order, lo, hi)],
        hovertemplate=("expert %{customdata[0]} (layer %{customdata[1]}): score %{y:.3f} "
                       "[%{customdata[4]:.3f}, %{customdata[5]:.3f}]<br>per token: harmful "
                       "%{customdata[2]:.3f}, benign %{customdata[3]:.3f}<extra></extra>")))
    step = 1 if n <= 48 else 2 if n <= 96 else 4
    fig.update_xaxes(tickmode="array", tickvals=list(range(0, n, step)),
                     ticktext=[str(order[i]) for i in range(0, n, step)],
                     tickangle=0 if n <= 32 else -90,
                     tickfont={"size": 11 if n <= 32 else 9 if n <= 64 else 8},
                     title={"text": "expert (ranked by safety relevance)"}, showgrid=False)
    fig.update_yaxes(title={"text": "harmful − benign frequency"}, zeroline=True,
                     zerolinecolor="#6b7280")
    return _layout(fig, f"Layer {layer}: experts by safety relevance "
                        f"({len(stats.prompts['harmful'])} harmful, "
                        f"{len(stats.prompts['benign'])} benign prompts)",
                   height=380, bottom=70 if n > 32 else 60)


def expert_frequencies(stats, layer: int, expert: int) -> go.Figure:
    """One expert's selection frequencies on harmful and benign prompts: per token (mean
    over prompts, with its standard error) and per prompt (share of prompts that selected
    it at least once)."""
    if stats is None:
        return empty_figure("Choose an expert to see its page")
    stats.check(layer, expert)
    e = int(expert)
    fig = go.Figure()
    for which, color in (("harmful", HARMFUL_COLOR), ("benign", BENIGN_COLOR)):
        mean = stats.prompt_means(which, layer)[e]
        se = stats.prompt_stderr(which, layer)[e]
        pf = stats.prompt_freq(which, layer)[e]
        fig.add_trace(go.Bar(
            name=which, x=["per token", "per prompt (at least once)"], y=[mean, pf],
            marker={"color": color},
            error_y={"type": "data", "array": [1.96 * se, 0], "visible": True},
            hovertemplate=f"{which}: %{{y:.3f}}<extra></extra>"))
    fig.update_yaxes(title={"text": "selection frequency"}, rangemode="tozero")
    _layout(fig, f"Expert {e} at layer {layer}: how often it is chosen", height=300)
    fig.update_layout(barmode="group", showlegend=True,
                      legend={"orientation": "h", "y": -0.15})
    return fig
