"""Small static charts as inline SVG: what the self-contained HTML report embeds. No plotting
library and no browser are needed (plotly's static export needs kaleido and a browser); the
charts are text, scale crisply and open offline in any browser."""
import html
import math
from typing import Optional, Sequence

import numpy as np

W, H = 560, 300
ML, MR, MT, MB = 64, 18, 44, 46          # margins: left, right, top, bottom
BLUE, RED, GREY, ORANGE, GREEN = "#4c72b0", "#d62728", "#888888", "#dd8452", "#55a868"
VIRIDIS = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"]


def _e(s) -> str:
    return html.escape(str(s), quote=True)


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e4 or a < 1e-3:
        m, ex = f"{v:.0e}".split("e")
        return f"{m}e{int(ex)}"
    return f"{v:.4g}"


class Axis:
    """Maps data values to pixels, linear or log10, and picks readable ticks."""

    def __init__(self, lo: float, hi: float, p0: float, p1: float, log: bool = False):
        self.log = log
        if log:
            lo, hi = max(lo, 1e-12), max(hi, 1e-12)
            lo, hi = math.log10(lo), math.log10(hi)
        if not np.isfinite(lo) or not np.isfinite(hi):
            lo, hi = 0.0, 1.0
        if hi <= lo:
            pad = abs(lo) * 0.1 or (0.5 if log else 1.0)
            lo, hi = lo - pad, hi + pad
        self.lo, self.hi, self.p0, self.p1 = lo, hi, p0, p1

    def __call__(self, v) -> np.ndarray:
        v = np.asarray(v, float)
        if self.log:
            v = np.log10(np.maximum(v, 1e-12))
        return self.p0 + (v - self.lo) / (self.hi - self.lo) * (self.p1 - self.p0)

    def ticks(self, n: int = 5) -> list:
        if self.log:
            a, b = math.floor(self.lo), math.ceil(self.hi)
            step = max(1, int(math.ceil((b - a) / 6)))
            out = [10.0 ** e for e in range(a, b + 1, step) if self.lo - 1e-9 <= e <= self.hi + 1e-9]
            if len(out) < 2:   # less than a decade: a few values inside it
                out = [10.0 ** v for v in np.linspace(self.lo, self.hi, 3)]
            return out
        span = self.hi - self.lo
        raw = span / max(1, n)
        mag = 10 ** math.floor(math.log10(raw))
        step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=mag * 10)
        start = math.ceil(self.lo / step) * step
        return [round(start + i * step, 12) for i in range(int((self.hi - start) / step + 1e-9) + 1)]


class Chart:
    """A titled frame with two axes; marks are appended as SVG elements."""

    def __init__(self, title: str, xlabel: str, ylabel: str, xdom, ydom, xlog=False, ylog=False,
                 width: int = W, height: int = H):
        self.w, self.h = width, height
        self.x = Axis(xdom[0], xdom[1], ML, width - MR, xlog)
        self.y = Axis(ydom[0], ydom[1], height - MB, MT, ylog)
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        self.parts: list = []
        self.legend: list = []

    def add(self, s: str) -> None:
        self.parts.append(s)

    def hline(self, y: float, label: str = "", color: str = GREY, dash: str = "5 4", right: bool = False) -> None:
        py = float(self.y(y))
        if not MT - 1 <= py <= self.h - MB + 1:
            return
        self.add(f'<line x1="{ML}" x2="{self.w - MR}" y1="{py:.1f}" y2="{py:.1f}" stroke="{color}" '
                 f'stroke-dasharray="{dash}" stroke-width="1.3"/>')
        if label:
            x, anchor = (self.w - MR - 4, "end") if right else (ML + 4, "start")
            self.add(f'<text x="{x}" y="{py - 4:.1f}" font-size="11" fill="{color}" text-anchor="{anchor}">'
                     f'{_e(label)}</text>')

    def vline(self, x: float, label: str = "", color: str = RED, dash: str = "5 4") -> None:
        px = float(self.x(x))
        self.add(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{MT}" y2="{self.h - MB}" stroke="{color}" '
                 f'stroke-dasharray="{dash}" stroke-width="1.5"/>')
        if label:
            anchor = "end" if px > (ML + self.w - MR) / 2 else "start"
            dx = -4 if anchor == "end" else 4
            self.add(f'<text x="{px + dx:.1f}" y="{MT + 12}" font-size="11" fill="{color}" '
                     f'text-anchor="{anchor}">{_e(label)}</text>')

    def svg(self) -> str:
        w, h = self.w, self.h
        g = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" '
             f'role="img" aria-label="{_e(self.title)}" font-family="system-ui, sans-serif" class="chart">',
             f'<rect x="0" y="0" width="{w}" height="{h}" fill="white"/>',
             f'<text x="{w / 2}" y="18" font-size="13" font-weight="600" text-anchor="middle">{_e(self.title)}</text>']
        for t in self.x.ticks():
            px = float(self.x(t))
            g.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{MT}" y2="{h - MB}" stroke="#eee"/>')
            g.append(f'<text x="{px:.1f}" y="{h - MB + 14}" font-size="10" text-anchor="middle">{_fmt(t)}</text>')
        for t in self.y.ticks():
            py = float(self.y(t))
            g.append(f'<line x1="{ML}" x2="{w - MR}" y1="{py:.1f}" y2="{py:.1f}" stroke="#eee"/>')
            g.append(f'<text x="{ML - 5}" y="{py + 3:.1f}" font-size="10" text-anchor="end">{_fmt(t)}</text>')
        g.append(f'<rect x="{ML}" y="{MT}" width="{w - ML - MR}" height="{h - MT - MB}" fill="none" stroke="#999"/>')
        g += self.parts
        g.append(f'<text x="{(ML + w - MR) / 2}" y="{h - 8}" font-size="11" text-anchor="middle">{_e(self.xlabel)}</text>')
        g.append(f'<text x="14" y="{(MT + h - MB) / 2}" font-size="11" text-anchor="middle" '
                 f'transform="rotate(-90 14 {(MT + h - MB) / 2})">{_e(self.ylabel)}</text>')
        x = float(ML)
        for name, color, _ in self.legend:     # one row between the title and the frame
            g.append(f'<rect x="{x:.1f}" y="{MT - 16}" width="10" height="8" fill="{color}"/>')
            g.append(f'<text x="{x + 13:.1f}" y="{MT - 8}" font-size="10">{_e(name)}</text>')
            x += 13 + 5.6 * len(name) + 14
        g.append("</svg>")
        return "\n".join(g)


def empty(title: str, message: str = "nothing to show") -> str:
    c = Chart(title, "", "", (0, 1), (0, 1))
    c.add(f'<text x="{W / 2}" y="{H / 2}" font-size="12" text-anchor="middle" fill="{GREY}">{_e(message)}</text>')
    return c.svg()


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
              f'fill="{color}"><title>{_fmt(a)}–{_fmt(b)}: {int(n)}</title></rect>')
    if vline is not None:
        c.vline(float(vline[0]), vline[1])
    return c.svg()


def _colour(t: float) -> str:
    """Viridis-like colour for t in [0, 1]."""
    t = min(1.0, max(0.0, float(t))) * (len(VIRIDIS) - 1)
    i = min(int(t), len(VIRIDIS) - 2)
    f = t - i
    a, b = VIRIDIS[i], VIRIDIS[i + 1]
    rgb = [round(int(a[j:j + 2], 16) * (1 - f) + int(b[j:j + 2], 16) * f) for j in (1, 3, 5)]
    return "#" + "".join(f"{x:02x}" for x in rgb)


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
        fill = _colour(t[i]) if colour is not None else BLUE
        tip = (labels[i] if labels is not None else f"item {i}") + f": {_fmt(x[i])}, {_fmt(y[i])}"
        c.add(f'<circle cx="{px[i]:.1f}" cy="{py[i]:.1f}" r="2.4" fill="{fill}" fill-opacity="0.8">'
              f'<title>{_e(tip)}</title></circle>')
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
              f'stroke="none"><title>{_e(b["name"])}</title></polygon>')
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
                c.add(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.6" fill="{color}"><title>{_e(s["name"])}: '
                      f'{_fmt(vx)}, {_fmt(vy)}</title></circle>')
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
              f'fill="{color}"><title>{_e(names[i])}: {_fmt(n)}</title></rect>')
        if expected is not None:
            ye = float(c.y(expected[i]))
            c.add(f'<line x1="{x0 + bw * 0.1:.1f}" x2="{x0 + bw * 0.9:.1f}" y1="{ye:.1f}" y2="{ye:.1f}" '
                  f'stroke="#222" stroke-width="2"/>')
        label = str(names[i])
        label = label if len(label) <= 11 else label[:10] + "…"
        c.add(f'<text x="{x0 + bw / 2:.1f}" y="{base + 13}" font-size="9.5" text-anchor="middle">{_e(label)}</text>')
    if expected is not None:
        c.legend.append(("black tick: expected at random", "#222", "item"))
    return c.svg()


PALETTE = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974",
           "#64b5cd"]


def points(x, y, groups: Sequence[str], labels: Sequence[str], title: str = "", xlabel: str = "", ylabel: str = "",
           data: Optional[Sequence[dict]] = None) -> str:
    """A scatter of labelled points coloured by group (a legend entry per group); `data` adds
    data-* attributes per point (e.g. the run a click opens)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if not len(x):
        return empty(title, "no values")
    pad = lambda lo, hi: (lo - 0.08 * ((hi - lo) or 1), hi + 0.08 * ((hi - lo) or 1))   # noqa: E731
    c = Chart(title, xlabel, ylabel, pad(float(x.min()), float(x.max())), pad(float(y.min()), float(y.max())))
    names = list(dict.fromkeys(str(g) for g in groups))
    colour = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(names)}
    px, py = c.x(x), c.y(y)
    for i in range(len(x)):
        attrs = "".join(f' data-{k}="{_e(v)}"' for k, v in (data[i] if data else {}).items())
        c.add(f'<g class="pt"{attrs} style="cursor:pointer"><circle cx="{px[i]:.1f}" cy="{py[i]:.1f}" r="6" '
              f'fill="{colour[str(groups[i])]}" fill-opacity="0.85" stroke="white"/>'
              f'<title>{_e(labels[i])}</title></g>')
    for g in names:
        c.legend.append((g or "no class", colour[g], "item"))
    return c.svg()


def heatmap(matrix, names: Sequence[str], title: str = "", data: Optional[Sequence[dict]] = None,
            size: int = 520) -> str:
    """A square matrix in [0, 1] as coloured cells (white 0 → dark blue 1), names along both axes
    (when there is room), the value in each cell's tooltip; `data`: data-* attributes per row label."""
    m = np.asarray(matrix, float)
    n = len(m)
    if not n:
        return empty(title, "no values")
    show = n <= 30
    left = 110 if show else 20
    cell = max(4.0, min(34.0, (size - left - 20) / n))
    w, h = int(left + cell * n + 20), int(30 + cell * n + 40)
    g = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
         f'aria-label="{_e(title)}" font-family="system-ui, sans-serif" class="chart">',
         f'<rect x="0" y="0" width="{w}" height="{h}" fill="white"/>',
         f'<text x="{w / 2}" y="18" font-size="13" font-weight="600" text-anchor="middle">{_e(title)}</text>']
    top = 30
    for i in range(n):
        for j in range(n):
            v = float(m[i, j])
            shade = int(round(255 - 200 * min(1.0, max(0.0, v))))
            fill = f"#{shade:02x}{min(255, shade + 20):02x}ff" if v > 0 else "#ffffff"
            g.append(f'<rect x="{left + j * cell:.1f}" y="{top + i * cell:.1f}" width="{cell:.1f}" height="{cell:.1f}" '
                     f'fill="{fill}" stroke="#eee" stroke-width="0.5"><title>{_e(names[i])} vs {_e(names[j])}: '
                     f'{v:.2f}</title></rect>')
        if show:
            attrs = "".join(f' data-{k}="{_e(v)}"' for k, v in (data[i] if data else {}).items())
            label = str(names[i]) if len(str(names[i])) <= 17 else str(names[i])[:16] + "…"
            g.append(f'<text class="pt"{attrs} x="{left - 4}" y="{top + (i + 0.5) * cell + 3:.1f}" font-size="9.5" '
                     f'text-anchor="end" style="cursor:pointer">{_e(label)}<title>{_e(names[i])}</title></text>')
    y0 = top + n * cell + 14
    for k, v in enumerate((0.0, 0.25, 0.5, 0.75, 1.0)):     # the colour key
        shade = int(round(255 - 200 * v))
        g.append(f'<rect x="{left + k * 34}" y="{y0}" width="34" height="9" fill="#{shade:02x}{min(255, shade + 20):02x}ff" '
                 f'stroke="#ccc" stroke-width="0.5"/><text x="{left + k * 34 + 17}" y="{y0 + 20}" font-size="9" '
                 f'text-anchor="middle">{v:g}</text>')
    g.append("</svg>")
    return "\n".join(g)


def strips(groups: Sequence[tuple], title: str = "", ylabel: str = "", hlines: Sequence[tuple] = (),
           lo: float = 0.0, hi: float = 1.0) -> str:
    """One column of dots per (name, values) with its mean (a bar) and quartiles (a box); hlines =
    [(y, label, color)]."""
    names = [str(n) for n, _ in groups]
    if not names:
        return empty(title, "no values")
    c = Chart(title, "", ylabel, (0, len(names)), (lo, hi))
    c.x.ticks = lambda n=5: []   # type: ignore[method-assign]  # categories: no numeric x ticks
    bw = (c.w - ML - MR) / len(names)
    rng = np.random.default_rng(0)
    for j, (name, vals) in enumerate(groups):
        v = np.asarray(vals, float)
        cx = ML + (j + 0.5) * bw
        if len(v):
            q1, q3, mean = np.percentile(v, 25), np.percentile(v, 75), float(v.mean())
            y1, y3 = float(c.y(q3)), float(c.y(q1))
            c.add(f'<rect x="{cx - bw * 0.22:.1f}" y="{y1:.1f}" width="{bw * 0.44:.1f}" height="{max(1.0, y3 - y1):.1f}" '
                  f'fill="{BLUE}" fill-opacity="0.12" stroke="{BLUE}"/>')
            for val, jit in zip(v[:400], rng.uniform(-0.18, 0.18, min(len(v), 400))):
                c.add(f'<circle cx="{cx + jit * bw:.1f}" cy="{float(c.y(val)):.1f}" r="2.2" fill="{BLUE}" '
                      f'fill-opacity="0.55"/>')
            ym = float(c.y(mean))
            c.add(f'<line x1="{cx - bw * 0.3:.1f}" x2="{cx + bw * 0.3:.1f}" y1="{ym:.1f}" y2="{ym:.1f}" stroke="{RED}" '
                  f'stroke-width="2.5"><title>{_e(name)}: mean {mean:.3f}, n = {len(v)}</title></line>')
        c.add(f'<text x="{cx:.1f}" y="{c.h - MB + 14}" font-size="10" text-anchor="middle">{_e(name)} '
              f'(n={len(v)})</text>')
    for y, label, color in hlines:
        if y is not None:
            c.hline(float(y), label, color, right=True)
    c.legend.append(("red bar: mean; box: middle half of the pairs", RED, "item"))
    return c.svg()


def interval_bars(names: Sequence[str], values, lo=None, hi=None, ref=None, title: str = "", ylabel: str = "",
                  top: Optional[float] = None, ref_label: str = "random") -> str:
    """Bars with whiskers (lo..hi) and, per bar, a black tick at `ref` (e.g. what random sets give)."""
    v = np.asarray(values, float)
    if not len(v):
        return empty(title, "no values")
    cand = [float(np.nanmax(v))] + [float(np.nanmax(a)) for a in (hi, ref) if a is not None and len(a)]
    ymax = top if top is not None else max(cand + [1e-9]) * 1.15
    c = Chart(title, "", ylabel, (0, len(v)), (0, ymax))
    c.x.ticks = lambda n=5: []   # type: ignore[method-assign]  # categories: no numeric x ticks
    bw = (c.w - ML - MR) / len(v)
    base = c.h - MB
    for i, val in enumerate(v):
        x0 = ML + i * bw
        y = float(c.y(val)) if np.isfinite(val) else base
        c.add(f'<rect x="{x0 + bw * 0.2:.1f}" y="{y:.1f}" width="{bw * 0.6:.1f}" height="{base - y:.1f}" fill="{BLUE}">'
              f'<title>{_e(names[i])}: {_fmt(val)}</title></rect>')
        if lo is not None and hi is not None and np.isfinite(lo[i]) and np.isfinite(hi[i]):
            cx, ya, yb = x0 + bw / 2, float(c.y(lo[i])), float(c.y(hi[i]))
            c.add(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{ya:.1f}" y2="{yb:.1f}" stroke="#222" stroke-width="1.4"/>')
            for yy in (ya, yb):
                c.add(f'<line x1="{cx - 5:.1f}" x2="{cx + 5:.1f}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#222"/>')
        if ref is not None and np.isfinite(ref[i]):
            yr = float(c.y(ref[i]))
            c.add(f'<line x1="{x0 + bw * 0.1:.1f}" x2="{x0 + bw * 0.9:.1f}" y1="{yr:.1f}" y2="{yr:.1f}" stroke="{ORANGE}" '
                  f'stroke-width="3"><title>{_e(ref_label)}: {_fmt(ref[i])}</title></line>')
        label = str(names[i]) if len(str(names[i])) <= 22 else str(names[i])[:21] + "…"
        c.add(f'<text x="{x0 + bw / 2:.1f}" y="{base + 13}" font-size="9.5" text-anchor="middle">{_e(label)}</text>')
    if ref is not None:
        c.legend.append((f"orange: {ref_label}", ORANGE, "item"))
    if lo is not None:
        c.legend.append(("whiskers: spread", "#222", "item"))
    return c.svg()
