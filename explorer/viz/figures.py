"""Plotly figures for the explorer: pure functions from traces, routes and scores.

Nothing here touches a model or Gradio. Traces are :class:`~explorer.core.trace.RoutingTrace`
objects (or their ``to_dict()`` form); routes are :class:`~explorer.core.route.Route` objects
(or their JSON dict). Every function returns a ``plotly.graph_objects.Figure``.

Heatmap convention (used by the UI's click bridge): x is the token index, y the row of
the MoE layer (0 = first MoE layer), and every clickable point carries
``customdata = [layer, position]`` (absolute decoder layer, token position).
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any, Iterable, Sequence

import plotly.graph_objects as go
from plotly.colors import qualitative

from explorer.core.route import Route
from explorer.core.trace import RoutingTrace

COLOR_MODES = {
    "expert": "expert id (top-1)",
    "weight": "top-1 gate weight",
    "entropy": "router entropy",
    "changed": "changed vs baseline",
}

_PALETTE = (list(qualitative.Dark24) + list(qualitative.Light24) + list(qualitative.Alphabet))
#: The font of every figure (the app, the notebook and the research views share it).
FONT = dict(family="Inter, system-ui, sans-serif", size=12)
_MAX_TICKS = 140
#: Roughly how many expert entries a row of the heatmap's legend holds (the figure's height
#: grows by a row's height for each further row).
LEGEND_PER_ROW = 12


def _trace(tr) -> RoutingTrace:
    if tr is None or isinstance(tr, RoutingTrace):
        return tr
    return RoutingTrace.from_dict(tr)


def _route(r) -> Route | None:
    if r is None or isinstance(r, Route):
        return r
    return Route.from_dict(r)


def token_label(tok: str) -> str:
    """A short, visible label for a token string (whitespace made visible)."""
    if tok == "":
        return "∅"
    s = tok.replace("\n", "↵").replace("\t", "⇥")
    if s.strip() == "":
        return "␣" * min(len(s), 3)
    if s.startswith(" "):
        s = "·" + s[1:]
    return s if len(s) <= 14 else s[:13] + "…"


def _base_layout(fig: go.Figure, title: str | None = None, height: int | None = None,
                 margin: dict | None = None) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0.01, xanchor="left", font=dict(size=14)) if title else None,
        template="plotly_white", font=FONT, height=height,
        margin=margin or dict(l=60, r=20, t=50 if title else 20, b=60),
        hoverlabel=dict(font=dict(family="ui-monospace, monospace", size=12)))
    return fig


#: A placeholder's message wraps at this many characters, so that it fits a phone (390 px).
PLACEHOLDER_LINE = 34


def empty_figure(message: str = "Nothing to show yet", height: int = 320) -> go.Figure:
    """A blank figure with a centred message (placeholder before the first run), wrapped
    on lines of at most :data:`PLACEHOLDER_LINE` characters so a narrow plot shows it all."""
    import textwrap
    fig = go.Figure()
    text = "<br>".join(textwrap.wrap(message, PLACEHOLDER_LINE)) or message
    fig.add_annotation(text=text, x=0.5, y=0.5, xref="paper", yref="paper",
                       showarrow=False, font=dict(size=14, color="#777"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _base_layout(fig, height=height)


#: Kelly's 20 colours of maximum contrast (without white and black): distinct for up to 20.
_KELLY = ["#F3C300", "#875692", "#F38400", "#A1CAF1", "#BE0032", "#C2B280", "#848482",
          "#008856", "#E68FAC", "#0067A5", "#F99379", "#604E97", "#F6A600", "#B3446C",
          "#DCD300", "#882D17", "#8DB600", "#654522", "#E25822", "#2B3D26"]
#: Up to this many experts get one distinct colour each and a legend (the families the
#: README names have 8-128 experts a layer); more fall back to a continuous colour bar.
MAX_DISTINCT_EXPERTS = 128


def expert_colors(n: int) -> list[str]:
    """``n`` qualitative colours for expert ids 0..n-1 (for n up to
    :data:`MAX_DISTINCT_EXPERTS`): Kelly's 20, then colours of a 6-level RGB grid picked
    one by one as far as possible from every colour chosen so far; any two stay at least
    28/255 apart in RGB (as far as Kelly's closest pair)."""
    return list(_distinct_colors()[:max(1, min(n, MAX_DISTINCT_EXPERTS))])


@functools.lru_cache(maxsize=1)
def _distinct_colors() -> tuple[str, ...]:
    def rgb(c: str) -> tuple[int, ...]:
        return tuple(int(c[i:i + 2], 16) for i in (1, 3, 5))

    def dist(a, b) -> float:
        return sum((x - y) ** 2 for x, y in zip(a, b)) ** 0.5

    chosen = [rgb(c) for c in _KELLY]
    levels = (0, 51, 102, 153, 204, 255)
    pool = [c for c in itertools.product(levels, repeat=3) if 60 < sum(c) / 3 < 225]
    while len(chosen) < MAX_DISTINCT_EXPERTS:
        chosen.append(max(pool, key=lambda c: (min(dist(c, x) for x in chosen), c)))
    return tuple("#{:02X}{:02X}{:02X}".format(*c) for c in chosen)


def _discrete_scale(n: int, colors: list[str] | None = None) -> list:
    """A stepwise colour scale for integer values 0..n-1 (zmin=-0.5, zmax=n-0.5)."""
    cols = colors or [_PALETTE[i % len(_PALETTE)] for i in range(max(n, 1))]
    scale = []
    for i, c in enumerate(cols):
        scale.append([i / len(cols), c])
        scale.append([(i + 1) / len(cols), c])
    return scale


def _top1(experts: Sequence[int], weights: Sequence[float]) -> tuple[int, float]:
    if not experts:
        return -1, float("nan")
    j = max(range(len(experts)), key=lambda i: weights[i] if i < len(weights) else 0.0)
    return experts[j], (weights[j] if j < len(weights) else float("nan"))


def heatmap(tr, mode: str = "expert", baseline=None, edits: Iterable[dict] | None = None,
            selected: dict | None = None, title: str | None = None,
            empty: str = "Enter a prompt and press Generate") -> go.Figure:
    """The routing heatmap: x = tokens (templated prompt, then generated), y = MoE layers.

    ``mode``: ``expert`` (top-1 expert id, categorical), ``weight`` (top-1 gate weight),
    ``entropy`` (router entropy in nats; needs recorded logits) or ``changed`` (expert
    set differs from ``baseline``). Hover shows the k experts and their weights.
    ``edits`` (route edit dicts) are drawn as markers; ``selected`` ({layer, position})
    as an outlined cell. ``empty``: the placeholder's message when there is no trace.
    """
    tr = _trace(tr)
    if tr is None:
        return empty_figure(empty)
    baseline = _trace(baseline)
    mode = mode if mode in COLOR_MODES else "expert"
    L, T = len(tr.moe_layers), tr.num_tokens
    labels = [token_label(t) for t in tr.tokens]
    ent = None
    if mode == "entropy":
        if tr.logits is None:
            mode = "weight"
        else:
            ent = tr.entropy()
    changed = tr.changed_vs(baseline) if (mode == "changed" and baseline is not None) else None
    if mode == "changed" and changed is None:
        mode = "expert"
    z, text, custom = [], [], []
    for i, layer in enumerate(tr.moe_layers):
        zr, tr_, cr = [], [], []
        for t in range(T):
            ex, w = tr.experts[i][t], tr.weights[i][t]
            e1, w1 = _top1(ex, w)
            pairs = ", ".join(f"{e} ({x:.2f})" for e, x in
                              sorted(zip(ex, w), key=lambda p: -p[1]))
            kind = "prompt" if t < tr.prompt_tokens else "generated"
            extra = ""
            if mode == "expert":
                v = e1
            elif mode == "weight":
                v = w1
            elif mode == "entropy":
                v = ent[i][t]
                extra = f"<br>entropy {v:.3f} nats"
            else:
                if t < len(changed[i]):
                    v = 1 if changed[i][t] else 0
                    b_ex = baseline.experts[i][t]
                    extra = (f"<br>baseline: {', '.join(map(str, b_ex))}"
                             + ("  <b>changed</b>" if v else ""))
                else:
                    v = 2
                    extra = "<br>(past the end of the baseline's answer)"
            zr.append(v)
            tr_.append(f"layer {layer} · pos {t} ({kind})<br>token {tr.tokens[t]!r}"
                       f"<br>experts: {pairs}{extra}")
            cr.append([layer, t])
        z.append(zr)
        text.append(tr_)
        custom.append(cr)
    hm = dict(z=z, x=list(range(T)), y=list(range(L)), text=text, customdata=custom,
              hovertemplate="%{text}<extra></extra>", xgap=1, ygap=1)
    legend: list[int] = []
    if mode == "expert":
        n = max(tr.num_experts) if tr.num_experts else 1
        if n <= MAX_DISTINCT_EXPERTS:  # one colour per expert, named in a legend
            colors = expert_colors(n)
            hm.update(colorscale=_discrete_scale(n, colors), zmin=-0.5, zmax=n - 0.5,
                      showscale=False)
            legend = sorted({v for row in z for v in row if 0 <= v < n})
        else:
            hm.update(colorscale="Turbo", zmin=0, zmax=n - 1,
                      colorbar=dict(title=dict(text="expert"), thickness=12))
    elif mode == "weight":
        hm.update(colorscale="Viridis", zmin=0, zmax=1,
                  colorbar=dict(title=dict(text="top-1 w"), thickness=12))
    elif mode == "entropy":
        n = max(tr.num_experts) if tr.num_experts else 2
        hm.update(colorscale="Magma", zmin=0, zmax=math.log(n),
                  colorbar=dict(title=dict(text="nats"), thickness=12))
    else:
        hm.update(colorscale=[[0, "#e8ecf1"], [1 / 3, "#e8ecf1"], [1 / 3, "#d62728"],
                              [2 / 3, "#d62728"], [2 / 3, "#c9ccd3"], [1, "#c9ccd3"]],
                  zmin=-0.5, zmax=2.5,
                  colorbar=dict(tickvals=[0, 1, 2], ticktext=["same", "changed", "no baseline"],
                                thickness=12))
    fig = go.Figure(go.Heatmap(**hm))
    for e in legend:  # legend-only markers: the expert ids this heatmap shows
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=str(e),
                                 marker={"symbol": "square", "size": 11, "color": colors[e]},
                                 hoverinfo="skip", showlegend=True))
    # prompt | generated boundary
    if 0 < tr.prompt_tokens < T:
        fig.add_vline(x=tr.prompt_tokens - 0.5, line=dict(color="#222", width=2, dash="dot"))
        fig.add_annotation(x=tr.prompt_tokens - 0.5, y=1.0, yref="paper", yanchor="top",
                           text="generated →", showarrow=False, xanchor="left",
                           bgcolor="rgba(255,255,255,0.8)", font=dict(size=10, color="#333"))
    _draw_edits(fig, tr, edits, size=13 if T <= 40 else 9)
    if selected and selected.get("layer") in tr.moe_layers:
        row = tr.moe_layers.index(selected["layer"])
        pos = selected.get("position")
        if pos is not None and 0 <= pos < T:
            fig.add_shape(type="rect", x0=pos - 0.5, x1=pos + 0.5, y0=row - 0.5, y1=row + 0.5,
                          line=dict(color="#000", width=3))
    step = max(1, math.ceil(T / _MAX_TICKS))
    fig.update_xaxes(tickmode="array", tickvals=list(range(0, T, step)),
                     ticktext=labels[::step], tickangle=-60, tickfont=dict(size=10),
                     range=[-0.5, T - 0.5], showgrid=False, zeroline=False,
                     title={"text": f"token (prompt {tr.prompt_tokens}, then generated "
                                    f"{T - tr.prompt_tokens})", "standoff": 4})
    fig.update_yaxes(tickmode="array", tickvals=list(range(L)),
                     ticktext=[f"L{x}" for x in tr.moe_layers], autorange="reversed",
                     range=None, title=dict(text="MoE layer"), showgrid=False, zeroline=False)
    title = title or f"Routing: {COLOR_MODES[mode]}"
    # the expert legend runs in rows above the plot (a column beside it scrolled past a few
    # experts and took most of a phone's width); the title keeps its own room above it
    rows = math.ceil(len(legend) / LEGEND_PER_ROW) if legend else 0
    _base_layout(fig, title, height=max(300, 140 + 34 * L) + 22 * rows,
                 margin=dict(l=60, r=20, t=50, b=110))
    fig.update_layout(clickmode="event", hovermode="closest", dragmode=False,
                      showlegend=bool(legend),
                      title={"automargin": True, "yref": "container", "y": 1,
                             "yanchor": "top", "pad": {"t": 10, "b": 6}},
                      legend={"title": {"text": "top-1 expert"}, "font": {"size": 10},
                              "orientation": "h", "x": 0, "xanchor": "left", "y": 1.0,
                              "yanchor": "bottom", "tracegroupgap": 0, "itemwidth": 30,
                              "itemclick": False, "itemdoubleclick": False})
    return fig


def _draw_edits(fig: go.Figure, tr: RoutingTrace, edits, size: int = 13) -> None:
    if not edits:
        return
    xs, ys, sym, txt, cd = [], [], [], [], []
    for e in edits:
        e = e.to_dict() if hasattr(e, "to_dict") else e
        if e["layer"] not in tr.moe_layers:
            continue
        row = tr.moe_layers.index(e["layer"])
        what = f"{e['mode']} {', '.join(map(str, e['experts']))}"
        if e.get("position") is None:
            fig.add_shape(type="rect", x0=-0.5, x1=tr.num_tokens - 0.5, y0=row - 0.45,
                          y1=row + 0.45, line=dict(color="#ff7f0e" if e["mode"] == "mask"
                                                   else "#111", width=2, dash="dash"))
            continue
        xs.append(e["position"])
        ys.append(row)
        sym.append("x-thin-open" if e["mode"] == "mask" else "star")
        txt.append(f"pending edit · layer {e['layer']} pos {e['position']}<br>{what}")
        cd.append([e["layer"], e["position"]])
    if xs:
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="markers", text=txt, customdata=cd,
            hovertemplate="%{text}<extra></extra>",
            marker=dict(symbol=sym, size=size, color="#fff",
                        line=dict(color="#000", width=2 if size > 10 else 1.5)),
            showlegend=False))


def usage(tr) -> go.Figure:
    """Expert usage per MoE layer: how many tokens dispatched to each expert.

    Experts run down the y axis and MoE layers across, so the figure stays readable in a
    narrow column beside the routing heatmap.
    """
    tr = _trace(tr)
    if tr is None:
        return empty_figure("Expert usage appears here")
    n = max(tr.num_experts)
    L = len(tr.moe_layers)
    counts = [[0] * L for _ in range(n)]
    for i in range(L):
        for ex in tr.experts[i]:
            for e in ex:
                if 0 <= e < n:
                    counts[e][i] += 1
    fig = go.Figure(go.Heatmap(
        z=counts, x=list(range(L)), y=list(range(n)), colorscale="Blues",
        texttemplate="%{z}" if n <= 32 and L <= 12 else None, textfont=dict(size=9),
        hovertemplate="layer %{customdata}, expert %{y}: %{z} tokens<extra></extra>",
        customdata=[list(tr.moe_layers) for _ in range(n)], xgap=1, ygap=1,
        colorbar=dict(title=dict(text="tokens"), thickness=10)))
    fig.update_xaxes(tickmode="array", tickvals=list(range(L)),
                     ticktext=[f"L{x}" for x in tr.moe_layers], side="top", showgrid=False)
    fig.update_yaxes(title=dict(text="expert"), autorange="reversed", showgrid=False,
                     dtick=1 if n <= 32 else None, tickfont=dict(size=10))
    height = max(300, 140 + 34 * L, min(110 + 15 * n, 720))
    return _base_layout(fig, "Expert usage (tokens × k)", height=height,
                        margin=dict(l=50, r=10, t=80, b=20))


def rosais_bars(result, empty: str = "Run RoSais to see router safety importance per layer"
                ) -> go.Figure:
    """RoSais per MoE layer (bars) with the spread over the random masks (box per layer).

    ``result`` is a RosaisResult or its ``to_dict()``: ``moe_layers``, ``scores``,
    ``distributions`` (per layer, the log-prob increases of each random mask),
    ``top_layers`` (highlighted) and ``baseline_logprob``.
    """
    d = result.to_dict() if hasattr(result, "to_dict") else dict(result or {})
    layers = list(d.get("moe_layers") or [])
    if not layers:
        return empty_figure(empty)
    scores = list(d.get("scores") or [])
    dists = list(d.get("distributions") or [])
    top = set(d.get("top_layers") or [])
    names = [f"L{x}" for x in layers]
    colors = ["#d62728" if x in top else "#8da0cb" for x in layers]
    fig = go.Figure(go.Bar(
        x=names, y=scores, marker=dict(color=colors), name="RoSais", opacity=0.85, width=0.6,
        text=[f"{v:.2f}" if isinstance(v, (int, float)) else "" for v in scores],
        textposition="outside", cliponaxis=False,  # a 0 shows as "0.00", not as nothing
        hovertemplate="%{x}<br>RoSais %{y:.3f}<extra></extra>"))
    xs, ys = [], []
    for name, vals in zip(names, dists):
        for v in vals or []:
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                xs.append(name)
                ys.append(v)
    if xs:
        fig.add_trace(go.Box(x=xs, y=ys, name="random masks", boxpoints="all", jitter=0.4,
                             pointpos=0, marker=dict(size=3, color="rgba(40,40,40,0.45)"),
                             line=dict(color="#333", width=1), fillcolor="rgba(0,0,0,0)",
                             hovertemplate="%{x}<br>Δ log-prob %{y:.3f}<extra></extra>"))
    fig.add_hline(y=0, line=dict(color="#999", width=1))
    base = d.get("baseline_logprob")
    sub = f" · baseline p = {base:.3f}" if isinstance(base, (int, float)) else ""
    _base_layout(fig, f"RoSais per MoE layer (red: top layers){sub}", height=380)
    fig.update_layout(boxmode="overlay", barmode="overlay", showlegend=True,
                      legend=dict(orientation="h", y=-0.2))
    fig.update_yaxes(title=dict(text="increase of p (affirmative first-token log P)"))
    fig.update_xaxes(title={"text": "MoE layer (router)"})
    return fig


def search_progress(history: Sequence[Sequence[float]] | None, threshold: float | None = None,
                    title: str = "Best log P(target) over time") -> go.Figure:
    """Best target log-prob (y) against elapsed seconds (x) for a running search."""
    if not history:
        return empty_figure("Search progress appears here", height=300)
    xs = [h[0] for h in history]
    ys = [h[1] for h in history]
    fig = go.Figure(go.Scatter(x=xs, y=ys, mode="lines+markers", line=dict(shape="hv"),
                               name="best log-prob",
                               hovertemplate="%{x:.1f}s: %{y:.3f}<extra></extra>"))
    if threshold is not None and math.isfinite(threshold):
        fig.add_hline(y=threshold, line=dict(color="#d62728", dash="dash"),
                      annotation_text=f"threshold {threshold:.3f}",
                      annotation_position="bottom right")
    fig.update_xaxes(title=dict(text="elapsed (s)"))
    fig.update_yaxes(title=dict(text="log P(target)"))
    return _base_layout(fig, title, height=300)


def diff_heatmap(a, b, names: tuple[str, str] = ("A", "B"),
                 empty: str = "Pick two routes and press Compare") -> go.Figure:
    """Where two traces route differently: per MoE layer and token, 1 = expert sets differ."""
    a, b = _trace(a), _trace(b)
    if a is None or b is None:
        return empty_figure(empty)
    changed = a.changed_vs(b)
    n = min(a.num_tokens, b.num_tokens)
    text = []
    for i, layer in enumerate(a.moe_layers):
        row = []
        for t in range(n):
            ta = a.tokens[t]
            tb = b.tokens[t]
            tok = repr(ta) if ta == tb else f"{ta!r} / {tb!r}"
            row.append(f"layer {layer} · pos {t}<br>token {tok}<br>{names[0]}: "
                       f"{', '.join(map(str, a.experts[i][t]))}<br>{names[1]}: "
                       f"{', '.join(map(str, b.experts[i][t]))}")
        text.append(row)
    z = [[1 if c else 0 for c in row] for row in changed]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(n)), y=list(range(len(a.moe_layers))), text=text,
        hovertemplate="%{text}<extra></extra>", xgap=1, ygap=1, zmin=0, zmax=1,
        colorscale=[[0, "#e8ecf1"], [0.5, "#e8ecf1"], [0.5, "#9467bd"], [1, "#9467bd"]],
        colorbar=dict(tickvals=[0, 1], ticktext=["same", "differs"], thickness=12)))
    labels = [token_label(t) if t == u else token_label(t) + "/" + token_label(u)
              for t, u in zip(a.tokens[:n], b.tokens[:n])]
    step = max(1, math.ceil(n / _MAX_TICKS))
    if 0 < min(a.prompt_tokens, b.prompt_tokens) < n:
        fig.add_vline(x=min(a.prompt_tokens, b.prompt_tokens) - 0.5,
                      line=dict(color="#222", width=2, dash="dot"))
    fig.update_xaxes(tickmode="array", tickvals=list(range(0, n, step)), ticktext=labels[::step],
                     tickangle=-60, tickfont=dict(size=10), showgrid=False)
    fig.update_yaxes(tickmode="array", tickvals=list(range(len(a.moe_layers))),
                     ticktext=[f"L{x}" for x in a.moe_layers], autorange="reversed",
                     showgrid=False)
    frac = sum(map(sum, z)) / max(1, n * len(a.moe_layers))
    return _base_layout(fig, f"Routing differences {names[0]} vs {names[1]} "
                             f"({frac:.0%} of cells differ)",
                        height=max(300, 140 + 34 * len(a.moe_layers)),
                        margin=dict(l=60, r=20, t=50, b=90))


def forced_cells(route) -> set[tuple[int, int]]:
    """The (layer, expert) pairs a route forces anywhere."""
    route = _route(route)
    if route is None:
        return set()
    return {(e.layer, x) for e in route.edits if e.mode == "force" for x in e.experts}


def route_overlap(a, b) -> dict[str, Any]:
    """Overlap of two routes' forced (layer, expert) cells: counts and Jaccard index."""
    ca, cb = forced_cells(a), forced_cells(b)
    union = ca | cb
    return {"a_only": len(ca - cb), "b_only": len(cb - ca), "both": len(ca & cb),
            "jaccard": (len(ca & cb) / len(union)) if union else None}


def overlap_figure(a, b, moe_layers: Sequence[int], num_experts: int,
                   names: tuple[str, str] = ("A", "B")) -> go.Figure:
    """Forced (layer, expert) cells of two routes: only A, only B, or both."""
    ca, cb = forced_cells(a), forced_cells(b)
    if not moe_layers or num_experts <= 0:
        return empty_figure("No layers to compare")
    z, text = [], []
    for layer in moe_layers:
        zr, tr_ = [], []
        for e in range(num_experts):
            v = (1 if (layer, e) in ca else 0) + (2 if (layer, e) in cb else 0)
            zr.append(v)
            tr_.append(f"layer {layer}, expert {e}: "
                       + ["not forced", f"forced by {names[0]} only",
                          f"forced by {names[1]} only", "forced by both"][v])
        z.append(zr)
        text.append(tr_)
    cols = ["#f4f5f7", "#1f77b4", "#ff7f0e", "#2ca02c"]
    scale = []
    for i, c in enumerate(cols):
        scale += [[i / 4, c], [(i + 1) / 4, c]]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(num_experts)), y=list(range(len(moe_layers))), text=text,
        hovertemplate="%{text}<extra></extra>", colorscale=scale, zmin=-0.5, zmax=3.5,
        xgap=1, ygap=1,
        colorbar=dict(tickvals=[0, 1, 2, 3], ticktext=["none", f"{names[0]} only",
                                                      f"{names[1]} only", "both"],
                      thickness=12)))
    fig.update_xaxes(title=dict(text="expert"), dtick=1 if num_experts <= 32 else None,
                     showgrid=False)
    fig.update_yaxes(tickmode="array", tickvals=list(range(len(moe_layers))),
                     ticktext=[f"L{x}" for x in moe_layers], autorange="reversed",
                     showgrid=False)
    ov = route_overlap(a, b)
    jac = "n/a" if ov["jaccard"] is None else f"{ov['jaccard']:.2f}"
    return _base_layout(fig, f"Forced (layer, expert) cells · both {ov['both']}, "
                             f"{names[0]} only {ov['a_only']}, {names[1]} only {ov['b_only']}, "
                             f"Jaccard {jac}",
                        height=max(260, 120 + 30 * len(moe_layers)))
