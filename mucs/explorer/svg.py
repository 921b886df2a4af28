"""Small static charts as inline SVG: what the self-contained HTML report embeds. No plotting
library and no browser are needed (plotly's static export needs kaleido and a browser); the
charts are text, scale crisply and open offline in any browser."""
from typing import Optional, Sequence

import numpy as np

# the frame and the group charts, importable from here as before (the reports call svg.<chart>)
from .svg_frame import (BLUE, GREEN, GREY, H, MB, ML, MR, MT, ORANGE, RED, VIRIDIS, W, Axis, Chart, empty,  # noqa: F401
                        esc, fmt, viridis)
from .svg_groups import PALETTE, heatmap, interval_bars, points, strips  # noqa: F401


def histogram(values, bins: int = 50, title: str = "", xlabel: str = "", ylabel: str = "items",
              log_y: bool = True, vline: Optional[tuple] = None, color: str = BLUE) -> str:
    """Bars of a histogram; `vline` = (x, label) marks a value (e.g. the top-k cut-off)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if not len(v):
        return empty(title, "no values")
    lo, hi = float(v.min()), float(v.max())
    if vline is not None:
        lo, hi = min(lo, float(vline[0])), max(hi, float(vline[0]))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    top = max(1, int(counts.max()))
    c = Chart(title, xlabel, ylabel + (" (log)" if log_y else ""), (lo, hi), (0.8, top * 1.3) if log_y else (0, top * 1.1),
              ylog=log_y)
    base = c.h - MB
    for n, a, b in zip(counts, edges[:-1], edges[1:]):
        if n <= 0:
            continue
        x0, x1, y = float(c.x(a)), float(c.x(b)), float(c.y(n))
        c.add(f'<rect x="{x0:.1f}" y="{y:.1f}" width="{max(0.8, x1 - x0 - 0.6):.1f}" height="{base - y:.1f}" '
              f'fill="{color}"><title>{fmt(a)}–{fmt(b)}: {int(n)}</title></rect>')
    if vline is not None:
        c.vline(float(vline[0]), vline[1])
    return c.svg()


def scatter(x, y, colour=None, highlight: Sequence[int] | np.ndarray = (), title: str = "", xlabel: str = "", ylabel: str = "",
            log_x: bool = False, log_y: bool = False, diagonal: bool = False, labels: Optional[Sequence[str]] = None,
            colour_label: str = "") -> str:
    """Points (x_i, y_i) coloured by `colour` (low purple → high yellow), `highlight` ringed in red."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if log_x:
        ok &= x > 0
    if log_y:
        ok &= y > 0
    if not ok.any():
        return empty(title, "no values")
    xs, ys = x[ok], y[ok]
    xdom, ydom = [float(xs.min()), float(xs.max())], [float(ys.min()), float(ys.max())]
    if diagonal:
        lo, hi = min(xdom[0], ydom[0]), max(xdom[1], ydom[1])
        xdom = ydom = [lo, hi]
    pad = (lambda d, lg: [d[0] / 1.5, d[1] * 1.5] if lg else [d[0] - 0.05 * (d[1] - d[0]), d[1] + 0.05 * (d[1] - d[0])])
    c = Chart(title, xlabel, ylabel, pad(xdom, log_x), pad(ydom, log_y), log_x, log_y)
    if diagonal:
        a, b = c.x.lo, c.x.hi
        p = [float(c.x(10 ** a if log_x else a)), float(c.y(10 ** a if log_y else a)),
             float(c.x(10 ** b if log_x else b)), float(c.y(10 ** b if log_y else b))]
        c.add(f'<line x1="{p[0]:.1f}" y1="{p[1]:.1f}" x2="{p[2]:.1f}" y2="{p[3]:.1f}" stroke="{GREY}" '
              f'stroke-dasharray="3 3"/>')
    if colour is not None:
        col = np.asarray(colour, float)
        cl, ch = float(np.nanmin(col[ok])), float(np.nanmax(col[ok]))
        t = (col - cl) / (ch - cl) if ch > cl else np.full(len(col), 0.5)
    px, py = c.x(x), c.y(y)
    order = np.argsort(t) if colour is not None else np.arange(len(x))
    for i in order:
        if not ok[i]:
            continue
        fill = viridis(t[i]) if colour is not None else BLUE
        tip = (labels[i] if labels is not None else f"item {i}") + f": {fmt(x[i])}, {fmt(y[i])}"
        c.add(f'<circle cx="{px[i]:.1f}" cy="{py[i]:.1f}" r="2.4" fill="{fill}" fill-opacity="0.8">'
              f'<title>{esc(tip)}</title></circle>')
    for i in highlight:
        i = int(i)
        if 0 <= i < len(x) and ok[i]:
            c.add(f'<circle cx="{px[i]:.1f}" cy="{py[i]:.1f}" r="5.5" fill="none" stroke="{RED}" stroke-width="1.6"/>')
    if len(highlight):
        c.legend.append(("top-k (red rings)", RED, "item"))
    if colour is not None and colour_label:
        c.legend.append((f"colour: {colour_label} (purple low, yellow high)", VIRIDIS[2], "item"))
    return c.svg()


def lines(series: Sequence[dict], title: str = "", xlabel: str = "", ylabel: str = "", log_x: bool = False,
          log_y: bool = False, hlines: Sequence[tuple] = (), bands: Sequence[dict] = ()) -> str:
    """Line charts: series = [dict(name, x, y, color, markers=True, dash=None)]; hlines = [(y, label,
    color)]; bands = [dict(name, x, lo, hi, color)]: a shaded range (e.g. 95 % of random draws)."""
    xs = np.concatenate([np.asarray(s["x"], float) for s in series]) if series else np.zeros(0)
    ys = np.concatenate([np.asarray(s["y"], float) for s in series]) if series else np.zeros(0)
    for b in bands:
        ys = np.concatenate([ys, np.asarray(b["lo"], float), np.asarray(b["hi"], float)])
    ys_all = np.concatenate([ys, np.asarray([h[0] for h in hlines if h[0] is not None], float)])
    okx = np.isfinite(xs) & ((xs > 0) if log_x else True)
    oky = np.isfinite(ys_all) & ((ys_all > 0) if log_y else True)
    if not okx.any() or not oky.any():
        return empty(title, "no values")
    xd = [float(xs[okx].min()), float(xs[okx].max())]
    yd = [float(ys_all[oky].min()), float(ys_all[oky].max())]
    yd = [yd[0] / 1.6, yd[1] * 1.6] if log_y else [min(0.0, yd[0]), yd[1] + 0.08 * (yd[1] - yd[0] or 1)]
    if log_x:
        xd = [xd[0] / 1.2, xd[1] * 1.2]
    c = Chart(title, xlabel, ylabel, xd, yd, log_x, log_y)
    for j, (y, label, color) in enumerate(hlines):
        if y is not None:
            c.hline(float(y), label, color, right=j % 2 == 1)   # alternate sides: close lines stay readable
    for b in bands:
        x, lo, hi = (np.asarray(b[k], float) for k in ("x", "lo", "hi"))
        pts = [(float(c.x(a)), float(c.y(v))) for a, v in zip(x, hi)] + \
              [(float(c.x(a)), float(c.y(v))) for a, v in zip(x[::-1], lo[::-1])]
        color = b.get("color", GREY)
        c.add(f'<polygon points="{" ".join(f"{a:.1f},{v:.1f}" for a, v in pts)}" fill="{color}" fill-opacity="0.22" '
              f'stroke="none"><title>{esc(b["name"])}</title></polygon>')
        c.legend.append((b["name"], color, "band"))
    for s in series:
        x, y = np.asarray(s["x"], float), np.asarray(s["y"], float)
        ok = np.isfinite(x) & np.isfinite(y) & ((x > 0) if log_x else True) & ((y > 0) if log_y else True)
        if not ok.any():
            continue
        order = np.argsort(x[ok], kind="stable")
        px, py = c.x(x[ok][order]), c.y(y[ok][order])
        color = s.get("color", BLUE)
        line = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(px, py))
        dash = f' stroke-dasharray="{s["dash"]}"' if s.get("dash") else ""
        c.add(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="1.8"{dash}/>')
        if s.get("markers", True):
            for a, b, vx, vy in zip(px, py, x[ok][order], y[ok][order]):
                c.add(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.6" fill="{color}"><title>{esc(s["name"])}: '
                      f'{fmt(vx)}, {fmt(vy)}</title></circle>')
        c.legend.append((s["name"], color, "item"))
    return c.svg()


def bars(names: Sequence[str], values, expected=None, highlight: Optional[int] = None, title: str = "",
         xlabel: str = "", ylabel: str = "") -> str:
    """Vertical bars, one per name; `expected` draws a black tick per bar; `highlight` is drawn red."""
    v = np.asarray(values, float)
    if not len(v):
        return empty(title, "no values")
    top = max(float(v.max()), float(np.max(expected)) if expected is not None and len(expected) else 0.0, 1.0)
    c = Chart(title, xlabel, ylabel, (0, len(v)), (0, top * 1.15))
    c.x.ticks = lambda n=5: []        # type: ignore[method-assign]  # categories are labelled below each bar instead
    bw = (c.w - ML - MR) / len(v)
    base = c.h - MB
    for i, n in enumerate(v):
        x0 = ML + i * bw
        y = float(c.y(n))
        color = RED if highlight is not None and i == int(highlight) else BLUE
        c.add(f'<rect x="{x0 + bw * 0.15:.1f}" y="{y:.1f}" width="{bw * 0.7:.1f}" height="{base - y:.1f}" '
              f'fill="{color}"><title>{esc(names[i])}: {fmt(n)}</title></rect>')
        if expected is not None:
            ye = float(c.y(expected[i]))
            c.add(f'<line x1="{x0 + bw * 0.1:.1f}" x2="{x0 + bw * 0.9:.1f}" y1="{ye:.1f}" y2="{ye:.1f}" '
                  f'stroke="#222" stroke-width="2"/>')
        label = str(names[i])
        label = label if len(label) <= 11 else label[:10] + "…"
        c.add(f'<text x="{x0 + bw / 2:.1f}" y="{base + 13}" font-size="9.5" text-anchor="middle">{esc(label)}</text>')
    if expected is not None:
        c.legend.append(("black tick: expected at random", "#222", "item"))
    return c.svg()
