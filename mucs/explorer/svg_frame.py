"""The frame every inline-SVG chart of the reports shares: axes (linear or log) with ticks, the chart
(title, labels, reference lines, legend), escaping and number formatting, colours."""
import html
import math

import numpy as np

W, H = 560, 300
ML, MR, MT, MB = 64, 18, 44, 46          # margins: left, right, top, bottom
BLUE, RED, GREY, ORANGE, GREEN = "#4c72b0", "#d62728", "#888888", "#dd8452", "#55a868"
VIRIDIS = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"]


def esc(s) -> str:
    return html.escape(str(s), quote=True)


def fmt(v: float) -> str:
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
                     f'{esc(label)}</text>')

    def vline(self, x: float, label: str = "", color: str = RED, dash: str = "5 4") -> None:
        px = float(self.x(x))
        self.add(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{MT}" y2="{self.h - MB}" stroke="{color}" '
                 f'stroke-dasharray="{dash}" stroke-width="1.5"/>')
        if label:
            anchor = "end" if px > (ML + self.w - MR) / 2 else "start"
            dx = -4 if anchor == "end" else 4
            self.add(f'<text x="{px + dx:.1f}" y="{MT + 12}" font-size="11" fill="{color}" '
                     f'text-anchor="{anchor}">{esc(label)}</text>')

    def svg(self) -> str:
        w, h = self.w, self.h
        g = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" '
             f'role="img" aria-label="{esc(self.title)}" font-family="system-ui, sans-serif" class="chart">',
             f'<rect x="0" y="0" width="{w}" height="{h}" fill="white"/>',
             f'<text x="{w / 2}" y="18" font-size="13" font-weight="600" text-anchor="middle">{esc(self.title)}</text>']
        for t in self.x.ticks():
            px = float(self.x(t))
            g.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{MT}" y2="{h - MB}" stroke="#eee"/>')
            g.append(f'<text x="{px:.1f}" y="{h - MB + 14}" font-size="10" text-anchor="middle">{fmt(t)}</text>')
        for t in self.y.ticks():
            py = float(self.y(t))
            g.append(f'<line x1="{ML}" x2="{w - MR}" y1="{py:.1f}" y2="{py:.1f}" stroke="#eee"/>')
            g.append(f'<text x="{ML - 5}" y="{py + 3:.1f}" font-size="10" text-anchor="end">{fmt(t)}</text>')
        g.append(f'<rect x="{ML}" y="{MT}" width="{w - ML - MR}" height="{h - MT - MB}" fill="none" stroke="#999"/>')
        g += self.parts
        g.append(f'<text x="{(ML + w - MR) / 2}" y="{h - 8}" font-size="11" text-anchor="middle">{esc(self.xlabel)}</text>')
        g.append(f'<text x="14" y="{(MT + h - MB) / 2}" font-size="11" text-anchor="middle" '
                 f'transform="rotate(-90 14 {(MT + h - MB) / 2})">{esc(self.ylabel)}</text>')
        x = float(ML)
        for name, color, _ in self.legend:     # one row between the title and the frame
            g.append(f'<rect x="{x:.1f}" y="{MT - 16}" width="10" height="8" fill="{color}"/>')
            g.append(f'<text x="{x + 13:.1f}" y="{MT - 8}" font-size="10">{esc(name)}</text>')
            x += 13 + 5.6 * len(name) + 14
        g.append("</svg>")
        return "\n".join(g)


def empty(title: str, message: str = "nothing to show") -> str:
    c = Chart(title, "", "", (0, 1), (0, 1))
    c.add(f'<text x="{W / 2}" y="{H / 2}" font-size="12" text-anchor="middle" fill="{GREY}">{esc(message)}</text>')
    return c.svg()


def viridis(t: float) -> str:
    """Viridis-like colour for t in [0, 1]."""
    t = min(1.0, max(0.0, float(t))) * (len(VIRIDIS) - 1)
    i = min(int(t), len(VIRIDIS) - 2)
    f = t - i
    a, b = VIRIDIS[i], VIRIDIS[i + 1]
    rgb = [round(int(a[j:j + 2], 16) * (1 - f) + int(b[j:j + 2], 16) * f) for j in (1, 3, 5)]
    return "#" + "".join(f"{x:02x}" for x in rgb)
