"""Inline-SVG charts that compare groups (runs of a collection, methods, classes): labelled points
by group, a heatmap of pairs, strips of values per group, bars with intervals."""
from typing import Optional, Sequence

import numpy as np

from .svg_frame import BLUE, MB, ML, MR, ORANGE, RED, Chart, empty, esc, fmt


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
        attrs = "".join(f' data-{k}="{esc(v)}"' for k, v in (data[i] if data else {}).items())
        c.add(f'<g class="pt"{attrs} style="cursor:pointer"><circle cx="{px[i]:.1f}" cy="{py[i]:.1f}" r="6" '
              f'fill="{colour[str(groups[i])]}" fill-opacity="0.85" stroke="white"/>'
              f'<title>{esc(labels[i])}</title></g>')
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
         f'aria-label="{esc(title)}" font-family="system-ui, sans-serif" class="chart">',
         f'<rect x="0" y="0" width="{w}" height="{h}" fill="white"/>',
         f'<text x="{w / 2}" y="18" font-size="13" font-weight="600" text-anchor="middle">{esc(title)}</text>']
    top = 30
    for i in range(n):
        for j in range(n):
            v = float(m[i, j])
            shade = int(round(255 - 200 * min(1.0, max(0.0, v))))
            fill = f"#{shade:02x}{min(255, shade + 20):02x}ff" if v > 0 else "#ffffff"
            g.append(f'<rect x="{left + j * cell:.1f}" y="{top + i * cell:.1f}" width="{cell:.1f}" height="{cell:.1f}" '
                     f'fill="{fill}" stroke="#eee" stroke-width="0.5"><title>{esc(names[i])} vs {esc(names[j])}: '
                     f'{v:.2f}</title></rect>')
        if show:
            attrs = "".join(f' data-{k}="{esc(v)}"' for k, v in (data[i] if data else {}).items())
            label = str(names[i]) if len(str(names[i])) <= 17 else str(names[i])[:16] + "…"
            g.append(f'<text class="pt"{attrs} x="{left - 4}" y="{top + (i + 0.5) * cell + 3:.1f}" font-size="9.5" '
                     f'text-anchor="end" style="cursor:pointer">{esc(label)}<title>{esc(names[i])}</title></text>')
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
                  f'stroke-width="2.5"><title>{esc(name)}: mean {mean:.3f}, n = {len(v)}</title></line>')
        c.add(f'<text x="{cx:.1f}" y="{c.h - MB + 14}" font-size="10" text-anchor="middle">{esc(name)} '
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
              f'<title>{esc(names[i])}: {fmt(val)}</title></rect>')
        if lo is not None and hi is not None and np.isfinite(lo[i]) and np.isfinite(hi[i]):
            cx, ya, yb = x0 + bw / 2, float(c.y(lo[i])), float(c.y(hi[i]))
            c.add(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{ya:.1f}" y2="{yb:.1f}" stroke="#222" stroke-width="1.4"/>')
            for yy in (ya, yb):
                c.add(f'<line x1="{cx - 5:.1f}" x2="{cx + 5:.1f}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#222"/>')
        if ref is not None and np.isfinite(ref[i]):
            yr = float(c.y(ref[i]))
            c.add(f'<line x1="{x0 + bw * 0.1:.1f}" x2="{x0 + bw * 0.9:.1f}" y1="{yr:.1f}" y2="{yr:.1f}" stroke="{ORANGE}" '
                  f'stroke-width="3"><title>{esc(ref_label)}: {fmt(ref[i])}</title></line>')
        label = str(names[i]) if len(str(names[i])) <= 22 else str(names[i])[:21] + "…"
        c.add(f'<text x="{x0 + bw / 2:.1f}" y="{base + 13}" font-size="9.5" text-anchor="middle">{esc(label)}</text>')
    if ref is not None:
        c.legend.append((f"orange: {ref_label}", ORANGE, "item"))
    if lo is not None:
        c.legend.append(("whiskers: spread", "#222", "item"))
    return c.svg()
