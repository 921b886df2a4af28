"""Plotly figures: each builds from realistic inputs and carries the expected traces."""
import numpy as np

from mucs.explorer import plots


def test_all_figures():
    rng = np.random.default_rng(0)
    n = 50
    scores = rng.normal(size=n)
    top = np.argsort(-scores)[:5]
    labels = np.arange(n) % 4
    names = ["a", "b", "c", "d"]
    f = plots.skew_histogram(scores, top)
    assert f.data[0].type == "histogram" and "top-5" in f.layout.annotations[0].text
    f = plots.loss_scatter(rng.random(n), rng.random(n), scores, top, labels, names)
    assert len(f.data) == 3 and len(f.data[0].x) == n and "item" in f.data[0].hovertemplate
    assert f.data[0].customdata[3][1] == "d"
    curve = [dict(step=i, loss_f=0.1 * i, loss_r=0.05) for i in range(5)]
    f = plots.unlearning_curve(curve, 0.5, 0.05)
    assert [t.name for t in f.data] == ["L_f (forget)", "L_r (retain)"] and len(f.layout.shapes) == 2
    f = plots.class_breakdown(top, labels, names, query_label=1)
    assert list(f.data[0].x) == names and sum(f.data[0].y) == 5
    assert abs(sum(f.data[1].y) - 5) < 1e-9
    assert plots.class_breakdown(top, None).layout.annotations
    m = np.array([[1, 0.2], [0.2, 1]])
    f = plots.overlap_heatmap(m, ["q1", "q2"])
    assert f.data[0].type == "heatmap"
    f = plots.overlap_distribution(np.array([0.2]), rng.random(100))
    assert len(f.data) == 2
    assert plots.empty("x").layout.annotations[0].text
    # figures serialise (what gr.Plot sends to the browser)
    assert len(f.to_json()) > 100


def test_unconditional_scatter_and_empty_curve():
    f = plots.loss_scatter(np.ones(3), np.ones(3) * 2, np.zeros(3), [], None, None)
    assert len(f.data) == 2
    f = plots.unlearning_curve([], None)
    assert len(f.data) == 2


def test_why_figures():
    from types import SimpleNamespace
    w = SimpleNamespace(index=7, sigmas=np.array([80.0, 10.0, 1.0]), timesteps=np.array([990, 700, 400]),
                        loss_original=np.array([0.9, 0.1, 0.01]), loss_unlearned=np.array([1.0, 0.8, 0.5]),
                        mean_unlearned=0.77, loss_null=1.1)
    f = plots.why_losses(w)
    assert [t.name for t in f.data] == ["L_o (original model)", "L_u (unlearned model)"]
    assert list(f.data[0].x) == [1.0, 10.0, 80.0] and f.layout.xaxis.type == "log"
    w.loss_unlearned = None          # no unlearned model in memory: its stored mean as a dashed line
    f = plots.why_losses(w)
    assert len(f.data) == 1 and any("mean L_u" in (a.text or "") for a in f.layout.annotations)
    scores = np.linspace(0, 1, 20)
    f = plots.skew_histogram(scores, [19, 18], mark=3)
    assert any("item 3" in (a.text or "") for a in f.layout.annotations)
    assert plots.methods_overlap(np.eye(2), ["a", "b"]).data[0].type == "heatmap"


def test_log_axes_label_full_values_and_figures_stay_small():
    """Log axes carry their own ticks, each labelled with its full value (plotly's minor labels on a log
    axis are bare "2" and "5" that read like values), and a figure does not carry plotly's 6.5 KB
    named template (the live curve is sent with every progress event)."""
    rng = np.random.default_rng(1)
    lo, lu = 10 ** rng.uniform(-2.5, -1.2, 200), 10 ** rng.uniform(-2, 0.3, 200)
    f = plots.loss_scatter(lo, lu, rng.normal(size=200), [0, 1])
    for ax, vals in ((f.layout.xaxis, lo), (f.layout.yaxis, lu)):
        ticks, text = list(ax.tickvals), list(ax.ticktext)
        assert len(ticks) >= 2 and ax.type == "log"
        assert [float(t) for t in text] == [float(f"{v:.3g}") for v in ticks]
        assert min(ticks) <= vals.min() * 2.5 and max(ticks) >= vals.max() / 2.5   # ticks span the data
    assert set(f.layout.yaxis.ticktext) >= {"0.01", "0.1", "1"}
    ticks = plots.log_ticks([3, 7])            # under one step of the grid: 5 and the ends, full values
    assert ticks["ticktext"] and all(float(t) > 0 for t in ticks["ticktext"])
    assert plots.log_ticks([]) == {} and plots.log_ticks([0, -1, np.nan]) == {}
    h = plots.skew_histogram(rng.normal(size=1000), [0])
    assert h.layout.yaxis.tickvals[0] == 1 and 1000 in h.layout.yaxis.tickvals
    curve = [dict(step=i, loss_f=0.1 * i, loss_r=0.05) for i in range(30)]
    assert len(plots.unlearning_curve(curve, 0.5, 0.05).to_json()) < 4000
