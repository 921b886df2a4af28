"""Plotly figures for the explorer: skew histogram, L_o vs L_u scatter, unlearning curve,
top-k class breakdown, overlap heatmap and overlap distribution vs random top-k sets, and one
training item's losses over the noise levels ("why this image")."""
from typing import Optional, Sequence

import numpy as np
import plotly.graph_objects as go

HEIGHT = 330
_GRID = dict(gridcolor="#e5ecf6", zerolinecolor="#e5ecf6", linecolor="#e5ecf6", ticks="", automargin=True)
# plotly_white's look in a few hundred bytes: the named template travels in every figure's JSON (~6.5 KB),
# and the live unlearning curve is sent with each progress event of an attribution
TEMPLATE = go.layout.Template(layout=dict(paper_bgcolor="white", plot_bgcolor="white", xaxis=_GRID, yaxis=_GRID,
                                          hoverlabel=dict(align="left"), font=dict(color="#2a3f5f")))


def _layout(fig: go.Figure, title: str, x: str = "", y: str = "", height: int = HEIGHT) -> go.Figure:
    fig.update_layout(title=dict(text=title, font=dict(size=14)), template=TEMPLATE, height=height,
                      margin=dict(l=50, r=20, t=45, b=45), xaxis_title=x, yaxis_title=y,
                      font=dict(family="system-ui, sans-serif"),
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0))
    return fig


def log_ticks(values, counts: bool = False) -> dict:
    """Tick values and labels for a log axis over `values`: whole decades, with 2 and 5 between them
    when the data span under two decades, each label the full value (plotly's own minor labels on a
    log axis are bare digits such as "2" and "5" that read like values of their own)."""
    v = np.asarray(values, float).ravel()
    v = v[np.isfinite(v) & (v > 0)]
    if not len(v):
        return {}
    lo, hi = float(v.min()), float(v.max())
    k0, k1 = int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi)))
    mults = (1,) if k1 - k0 > 2 else (1, 2, 5)
    ticks = [m * 10.0 ** k for k in range(k0, k1 + 1) for m in mults]
    ticks = [t for t in ticks if lo / 1.5 <= t <= hi * 1.5 and (not counts or t >= 1)]
    if len(ticks) < 2:  # less than one step of the grid: the ends themselves
        ticks = sorted({lo, hi})
    return dict(tickmode="array", tickvals=ticks, ticktext=[f"{t:.3g}" for t in ticks])


def _names(labels, class_names) -> list:
    if labels is None:
        return ["" for _ in range(0)]
    out = []
    for y in labels:
        y = int(y)
        out.append(str(class_names[y]) if class_names and 0 <= y < len(class_names) else str(y))
    return out


def empty(title: str = "", message: str = "nothing to show yet") -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, title)


def skew_histogram(scores: np.ndarray, top: Sequence[int], bins: int = 60, mark: Optional[int] = None) -> go.Figure:
    """Distribution of the skew over all training items, with the top-k cut-off marked (and, with
    `mark`, where one item's skew falls)."""
    scores = np.asarray(scores, float)
    fig = go.Figure(go.Histogram(x=scores, nbinsx=bins, marker_color="#7b8fb2", name="all items"))
    if len(top):
        cut = float(scores[np.asarray(top, int)].min())
        fig.add_vline(x=cut, line_dash="dash", line_color="#d62728",
                      annotation_text=f"top-{len(top)} cut-off {cut:.3g}", annotation_position="top left")
    if mark is not None:
        v = float(scores[int(mark)])
        fig.add_vline(x=v, line_color="#2a9d4b", line_width=3,
                      annotation_text=f"item {int(mark)}: {v:.4g}", annotation_position="bottom right")
    fig.update_yaxes(type="log", **log_ticks([1, max(len(scores), 1)], counts=True))
    title = "Skew of every training item" if mark is None else f"Where item {int(mark)} falls among all skews"
    return _layout(fig, title, "skew", "items (log)")


def why_losses(w) -> go.Figure:
    """One item's L_o (and L_u when known) at each of the K noise levels, over σ (log axes), with
    L_null; without per-noise L_u its stored mean is a dashed line."""
    x = np.asarray(w.sigmas, float)
    order = np.argsort(x)
    custom = np.asarray(w.timesteps)[order]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x[order], y=np.asarray(w.loss_original, float)[order], mode="lines+markers",
                             name="L_o (original model)", customdata=custom, marker=dict(size=6, color="#4c72b0"),
                             hovertemplate="σ %{x:.3g} (step %{customdata})<br>L_o %{y:.4g}<extra></extra>"))
    if w.loss_unlearned is not None:
        fig.add_trace(go.Scatter(x=x[order], y=np.asarray(w.loss_unlearned, float)[order], mode="lines+markers",
                                 name="L_u (unlearned model)", customdata=custom, marker=dict(size=6, color="#d62728"),
                                 hovertemplate="σ %{x:.3g} (step %{customdata})<br>L_u %{y:.4g}<extra></extra>"))
    else:
        fig.add_hline(y=max(w.mean_unlearned, 1e-12), line_color="#d62728", line_dash="dash",
                      annotation_text=f"mean L_u (stored) {w.mean_unlearned:.3g}", annotation_position="bottom right")
    fig.add_hline(y=w.loss_null, line_color="#555", line_dash="dot", annotation_text="L_null",
                  annotation_position="top left")
    ys = [w.loss_original, w.loss_null] + ([w.loss_unlearned] if w.loss_unlearned is not None else
                                           [max(w.mean_unlearned, 1e-12)])
    fig.update_xaxes(type="log", **log_ticks(x))
    fig.update_yaxes(type="log", **log_ticks(np.concatenate([np.ravel(np.asarray(a, float)) for a in ys])))
    return _layout(fig, f"Item {w.index}: loss at each noise level, before and after unlearning",
                   "σ, noise level (log)", "diffusion loss (log)")


def methods_overlap(matrix: np.ndarray, names: Sequence[str]) -> go.Figure:
    """Pairwise overlap of the methods' top-k sets for one query."""
    fig = overlap_heatmap(matrix, names)
    fig.update_layout(title=dict(text="Overlap of the methods' top-k sets |A∩B| / min(|A|,|B|)"))
    return fig


def loss_scatter(loss_original, loss_unlearned, scores, top: Sequence[int], labels=None,
                 class_names=None) -> go.Figure:
    """L_o vs L_u per training item (mean over noises), coloured by skew; hover: index and class.
    Log axes: the losses of 1,000 items span decades, which linear axes squash into two dots."""
    lo, lu, s = (np.asarray(a, float) for a in (loss_original, loss_unlearned, scores))
    idx = np.arange(len(s))
    cls = _names(labels, class_names) if labels is not None else [""] * len(s)
    custom = np.stack([idx, np.array(cls, dtype=object)], axis=1)
    fig = go.Figure(go.Scattergl(
        x=lo, y=lu, mode="markers", customdata=custom, name="training items",
        marker=dict(color=s, colorscale="Viridis", size=5, colorbar=dict(title="skew", thickness=12)),
        hovertemplate="item %{customdata[0]} (%{customdata[1]})<br>L_o %{x:.4g}<br>L_u %{y:.4g}"
                      "<br>skew %{marker.color:.4g}<extra></extra>"))
    if len(top):
        t = np.asarray(top, int)
        fig.add_trace(go.Scatter(x=lo[t], y=lu[t], mode="markers", name="top-k", customdata=custom[t],
                                 marker=dict(size=10, color="rgba(0,0,0,0)", line=dict(color="#d62728", width=2)),
                                 hovertemplate="top: item %{customdata[0]} (%{customdata[1]})<extra></extra>"))
    pos = np.concatenate([lo, lu])
    pos = pos[pos > 0]
    lim = [float(pos.min()), float(pos.max())] if len(pos) else [1e-3, 1]
    fig.add_trace(go.Scatter(x=lim, y=lim, mode="lines", line=dict(color="#999", dash="dot"), name="L_u = L_o",
                             hoverinfo="skip"))
    fig.update_xaxes(type="log", **log_ticks(lo))
    fig.update_yaxes(type="log", **log_ticks(lu))
    return _layout(fig, "Loss before (L_o) and after unlearning (L_u), mean over the K noises",
                   "L_o, original model (log)", "L_u, unlearned model (log)")


def unlearning_curve(curve: Sequence[dict], loss_null: Optional[float], tol: Optional[float] = None) -> go.Figure:
    """L_f (bounded forget loss) and L_r (retain loss) per step, against L_null and the stop line."""
    steps = [c["step"] for c in curve]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=steps, y=[c["loss_f"] for c in curve], mode="lines+markers", name="L_f (forget)",
                             marker=dict(size=4)))
    fig.add_trace(go.Scatter(x=steps, y=[c["loss_r"] for c in curve], mode="lines+markers", name="L_r (retain)",
                             marker=dict(size=4)))
    if loss_null is not None:
        fig.add_hline(y=loss_null, line_color="#555", line_dash="dash", annotation_text="L_null",
                      annotation_position="top left")
        if tol is not None:
            fig.add_hline(y=(1 - tol) * loss_null, line_color="#d62728", line_dash="dot",
                          annotation_text="stop: (1-τ)·L_null", annotation_position="bottom left")
    return _layout(fig, "Mirrored unlearning", "step", "loss")


def class_breakdown(top: Sequence[int], labels, class_names=None, query_label=None) -> go.Figure:
    """Classes of the top-k items, next to each class's share of the training set."""
    if labels is None:
        return empty("Top-k classes", "unconditional model: no classes")
    labels = np.asarray(labels, int)
    n = len(class_names) if class_names else int(labels.max()) + 1
    names = _names(range(n), class_names)
    top_counts = np.bincount(labels[np.asarray(top, int)], minlength=n) if len(top) else np.zeros(n)
    expected = np.bincount(labels, minlength=n) / max(1, len(labels)) * len(top)
    colors = ["#d62728" if query_label is not None and i == int(query_label) else "#4c72b0" for i in range(n)]
    fig = go.Figure([go.Bar(x=names, y=top_counts, name="top-k", marker_color=colors),
                     go.Scatter(x=names, y=expected, mode="markers", name="expected at random",
                                marker=dict(symbol="line-ew-open", size=18, color="#333", line=dict(width=2)))])
    return _layout(fig, "Classes among the top-k (query class in red)", "class", "items")


def overlap_heatmap(matrix: np.ndarray, names: Sequence[str]) -> go.Figure:
    m = np.asarray(matrix, float)
    fig = go.Figure(go.Heatmap(z=m, x=list(names), y=list(names), zmin=0, zmax=1, colorscale="Blues",
                               text=np.round(m, 2), texttemplate="%{text}",
                               hovertemplate="%{y} vs %{x}: %{z:.2f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, "Overlap of top-k sets |A∩B| / min(|A|,|B|)", height=max(HEIGHT, 60 + 40 * len(names)))


def overlap_distribution(pairwise: np.ndarray, random: np.ndarray) -> go.Figure:
    """Pairwise overlaps of the chosen runs against those of random top-k sets of the same sizes."""
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=np.asarray(random, float), histnorm="probability", name="random top-k sets",
                               marker_color="#aaaaaa", opacity=0.7, xbins=dict(start=0, end=1.0001, size=0.05)))
    fig.add_trace(go.Histogram(x=np.asarray(pairwise, float), histnorm="probability", name="chosen runs (pairs)",
                               marker_color="#4c72b0", opacity=0.8, xbins=dict(start=0, end=1.0001, size=0.05)))
    fig.update_layout(barmode="overlay")
    return _layout(fig, "Pairwise overlap vs random", "overlap", "fraction of pairs")
