"""Inline SVG plots drawn in Python: the report opens offline, with no JavaScript and no fonts to fetch.

Every plot has a <title> (what it shows), labelled axes with ticks, and a <title> on each mark, which
browsers show as a tooltip. Text is XML-escaped here; the result is `Markup`, safe to put in the page.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

WIDTH = 540  # default plot width in px (the viewBox scales with the page)
HEIGHT = 340  # default plot height in px
MARGIN = (24, 20, 56, 76)  # top, right, bottom, left: room for the axis titles and tick labels
COLORS = {
    "point": "#8c96a6",  # ordinary candidates
    "front": "#d1495b",  # Pareto-front candidates and the best-so-far line
    "accent": "#2e6f9e",  # group means, winner
    "axis": "#444444",
    "grid": "#e4e7ec",
}


@dataclass(frozen=True)
class Point:
    """One mark on a scatter plot."""

    x: float  # data coordinate (already transformed from the metric, e.g. us/token)
    y: float  # data coordinate
    tip: str  # tooltip text, plain (escaped when drawn)
    key: int | str  # what the mark stands for (candidate id); written as data-key
    highlight: bool = False  # drawn in the front colour, and joined by the front line


BOLD = ' font-weight="bold"'


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def short(v: float) -> str:
    """Compact tick text: 0.85, 12, 1.5k, 3.2M, 4e-05."""
    if v == 0:
        return "0"
    a = abs(v)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if a >= scale:
            return f"{v / scale:.3g}{unit}"
    if a < 1e-3:
        return f"{v:.1e}"
    return f"{v:.3g}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round ticks (steps of 1, 2 or 5 x 10^k) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    out = []
    t = start
    while t <= hi + step * 1e-9:
        out.append(round(t, 12))
        t += step
    return out


def _log_ticks(lo: float, hi: float, binary: bool = False) -> list[float]:
    """Powers of ten in [lo, hi] (with 2 and 5 between when too few); `binary`: powers of two, at most 7."""
    if binary:
        ks = list(range(math.ceil(math.log2(lo)), math.floor(math.log2(hi)) + 1))
        every = max(1, math.ceil(len(ks) / 7))
        return [2.0**k for k in ks[::every]]
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    ticks = [10.0**k for k in range(a, b + 1) if lo <= 10.0**k <= hi]
    if len(ticks) < 3:
        ticks = sorted(m * 10.0**k for k in range(a, b + 1) for m in (1, 2, 5) if lo <= m * 10.0**k <= hi)
    return ticks


def _binary_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Multiples of a power-of-two step (256 KiB, 512 KiB, 768 KiB, 1 MiB): round numbers for byte sizes."""
    if hi <= lo:
        return [lo]
    step = 2.0 ** max(0, math.ceil(math.log2((hi - lo) / n)))
    return [k * step for k in range(math.ceil(lo / step), math.floor(hi / step) + 1)]


@dataclass(frozen=True)
class Axis:
    """A map from data values to pixels along one axis."""

    lo: float  # data value at px0
    hi: float  # data value at px1
    px0: float  # pixel of lo
    px1: float  # pixel of hi
    log: bool = False  # log10 scale (all values > 0)
    binary: bool = False  # byte sizes: ticks round in KiB/MiB/GiB (powers of two on a log scale)

    @classmethod
    def fit(cls, values: Sequence[float], px0: float, px1: float, log: bool = False, pad: float = 0.06,
            binary: bool = False) -> Axis:
        """An axis covering `values` with a little room at both ends."""
        lo, hi = min(values), max(values)
        if log:
            llo, lhi = math.log10(lo), math.log10(hi)
            if lhi - llo < 1e-12:
                llo, lhi = llo - 0.5, lhi + 0.5
            span = lhi - llo
            return cls(10 ** (llo - pad * span), 10 ** (lhi + pad * span), px0, px1, True, binary)
        if hi - lo < 1e-12 * max(1.0, abs(hi)):
            d = abs(hi) * 0.1 or 1.0
            lo, hi = lo - d, hi + d
        span = hi - lo
        return cls(lo - pad * span, hi + pad * span, px0, px1, False, binary)

    def __call__(self, v: float) -> float:
        if self.log:
            t = (math.log10(v) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        else:
            t = (v - self.lo) / (self.hi - self.lo)
        return self.px0 + t * (self.px1 - self.px0)

    def ticks(self) -> list[float]:
        if self.log:
            return _log_ticks(self.lo, self.hi, self.binary)
        return _binary_ticks(self.lo, self.hi) if self.binary else nice_ticks(self.lo, self.hi)


def _want_log(values: Sequence[float]) -> bool:
    """Log scale when positive values span more than two decades (state bytes often do)."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > 100


class _Canvas:
    """An SVG document under construction: frame, axes, marks."""

    def __init__(self, title: str, width: int = WIDTH, height: int = HEIGHT, css: str = "") -> None:
        self.title = title
        self.width = width
        self.height = height
        self.css = css
        self.parts: list[str] = []
        top, right, bottom, left = MARGIN
        self.x0, self.x1 = left, width - right  # plot area, px
        self.y0, self.y1 = height - bottom, top  # y grows upward: y0 is the bottom edge

    def add(self, part: str) -> None:
        self.parts.append(part)

    def axes(self, x: Axis | None, y: Axis, x_label: str, y_label: str, fmt_x: Callable[[float], str] = short,
             fmt_y: Callable[[float], str] = short) -> None:
        """Grid lines, ticks with labels, the axis lines and the axis titles."""
        c = COLORS
        for t in y.ticks():
            py = y(t)
            self.add(f'<line class="grid" x1="{self.x0}" x2="{self.x1}" y1="{py:.1f}" y2="{py:.1f}" stroke="{c["grid"]}"/>')
            self.add(f'<line class="tick" x1="{self.x0 - 5}" x2="{self.x0}" y1="{py:.1f}" y2="{py:.1f}" stroke="{c["axis"]}"/>')
            self.add(f'<text class="tick-label" x="{self.x0 - 8}" y="{py + 4:.1f}" text-anchor="end">{_e(fmt_y(t))}</text>')
        if x is not None:
            for t in x.ticks():
                px = x(t)
                self.add(f'<line class="tick" x1="{px:.1f}" x2="{px:.1f}" y1="{self.y0}" y2="{self.y0 + 5}" stroke="{c["axis"]}"/>')
                self.add(f'<text class="tick-label" x="{px:.1f}" y="{self.y0 + 19}" text-anchor="middle">{_e(fmt_x(t))}</text>')
        self.add(f'<line class="axis" x1="{self.x0}" x2="{self.x1}" y1="{self.y0}" y2="{self.y0}" stroke="{c["axis"]}"/>')
        self.add(f'<line class="axis" x1="{self.x0}" x2="{self.x0}" y1="{self.y0}" y2="{self.y1}" stroke="{c["axis"]}"/>')
        cx = (self.x0 + self.x1) / 2
        cy = (self.y0 + self.y1) / 2
        self.add(f'<text class="axis-label" x="{cx:.1f}" y="{self.height - 12}" text-anchor="middle">{_e(x_label)}</text>')
        self.add(
            f'<text class="axis-label" x="18" y="{cy:.1f}" text-anchor="middle" transform="rotate(-90 18 {cy:.1f})">{_e(y_label)}</text>'
        )

    def render(self) -> Markup:
        cls = f"plot {self.css}".strip()
        head = (
            f'<svg class="{_e(cls)}" role="img" viewBox="0 0 {self.width} {self.height}" width="{self.width}" '
            f'height="{self.height}" font-family="sans-serif" font-size="11"><title>{_e(self.title)}</title>'
        )
        return Markup(head + "".join(self.parts) + "</svg>")


def scatter(points: Sequence[Point], *, title: str, x_label: str, y_label: str, log_x: bool | None = None,
            css: str = "", fmt_x: Callable[[float], str] = short, bytes_x: bool = False) -> Markup:
    """Candidates as dots; highlighted ones (the Pareto front) joined by a step line in x order.

    log_x None picks a log scale when x spans more than two decades; bytes_x puts x ticks on round
    binary sizes.
    """
    cv = _Canvas(title, css=css)
    xs = [p.x for p in points]
    log = _want_log(xs) if log_x is None else log_x
    x = Axis.fit(xs, cv.x0, cv.x1, log=log, binary=bytes_x)
    y = Axis.fit([p.y for p in points], cv.y0, cv.y1)
    cv.axes(x, y, x_label + (" (log scale)" if log else ""), y_label, fmt_x=fmt_x)
    front = sorted((p for p in points if p.highlight), key=lambda p: (p.x, p.y))
    if len(front) > 1:
        path = [f"M{x(front[0].x):.1f},{y(front[0].y):.1f}"]
        for a, b in zip(front, front[1:]):
            path.append(f"H{x(b.x):.1f}V{y(b.y):.1f}")  # the front is a staircase: no point between is reachable
        cv.add(f'<path class="front-line" d="{"".join(path)}" fill="none" stroke="{COLORS["front"]}" stroke-width="1.5" '
               f'stroke-dasharray="4 3"/>')
    # Ordinary points first so front points sit on top.
    for p in sorted(points, key=lambda p: p.highlight):
        cls, color, r = ("point front", COLORS["front"], 6) if p.highlight else ("point", COLORS["point"], 4.5)
        cv.add(
            f'<circle class="{cls}" data-key="{_e(p.key)}" cx="{x(p.x):.1f}" cy="{y(p.y):.1f}" r="{r}" fill="{color}" '
            f'fill-opacity="0.85" stroke="#ffffff"><title>{_e(p.tip)}</title></circle>'
        )
    return cv.render()


def progress(values: Sequence[tuple[float, str]], best: Sequence[float], *, title: str, x_label: str,
             y_label: str, fmt_y: Callable[[float], str] = short, bytes_y: bool = False) -> Markup:
    """Each finished evaluation's value (dots, in finishing order) and the best so far (a step line)."""
    cv = _Canvas(title, css="progress")
    n = len(values)
    x = Axis.fit([1.0, float(max(n, 2))], cv.x0, cv.x1, pad=0.03)
    y = Axis.fit([v for v, _ in values] + list(best), cv.y0, cv.y1, binary=bytes_y)
    cv.axes(x, y, x_label, y_label, fmt_x=lambda t: str(int(t)) if t == int(t) else "", fmt_y=fmt_y)
    path = [f"M{x(1):.1f},{y(best[0]):.1f}"]
    for i in range(1, n):
        path.append(f"H{x(i + 1):.1f}V{y(best[i]):.1f}")
    path.append(f"H{x(max(n, 1)) + 6:.1f}")
    cv.add(f'<path class="best-line" d="{"".join(path)}" fill="none" stroke="{COLORS["front"]}" stroke-width="2"/>')
    for i, (v, tip) in enumerate(values):
        cv.add(f'<circle class="point" cx="{x(i + 1):.1f}" cy="{y(v):.1f}" r="3.5" fill="{COLORS["point"]}">'
               f"<title>{_e(tip)}</title></circle>")
    return cv.render()


def strip(groups: Sequence[tuple[str, Sequence[tuple[float, str]]]], *, title: str, x_label: str, y_label: str,
          css: str = "") -> Markup:
    """Per category: one dot per candidate and a line at the group mean, so the spread shows as well as the mean.

    A line, not a bar: the value axis does not start at zero, and a bar's length would suggest it does.
    """
    cv = _Canvas(title, width=max(WIDTH, 90 * len(groups) + 120), css=css)
    allv = [v for _, vals in groups for v, _ in vals]
    y = Axis.fit(allv, cv.y0, cv.y1)
    cv.axes(None, y, x_label, y_label)
    band = (cv.x1 - cv.x0) / max(len(groups), 1)
    for gi, (name, vals) in enumerate(groups):
        cx = cv.x0 + band * (gi + 0.5)
        mean = sum(v for v, _ in vals) / len(vals)
        w = min(band * 0.6, 70)
        cv.add(f'<rect class="band" x="{cx - w / 2:.1f}" y="{cv.y1}" width="{w:.1f}" height="{cv.y0 - cv.y1}" fill="{COLORS["grid"]}" '
               f'fill-opacity="0.5"/>')
        cv.add(
            f'<line class="mean" x1="{cx - w / 2:.1f}" x2="{cx + w / 2:.1f}" y1="{y(mean):.1f}" y2="{y(mean):.1f}" '
            f'stroke="{COLORS["front"]}" stroke-width="3">'
            f"<title>{_e(f'{name}: mean {mean:.4g} over {len(vals)} candidate(s)')}</title></line>"
        )
        cv.add(f'<text class="tick-label" x="{cx:.1f}" y="{cv.y0 + 19}" text-anchor="middle">{_e(name)}</text>')
        cv.add(f'<text class="count-label" x="{cx:.1f}" y="{cv.y0 + 33}" text-anchor="middle" fill="#777">n={len(vals)}</text>')
        k = len(vals)
        for j, (v, tip) in enumerate(sorted(vals)):
            dx = (j - (k - 1) / 2) * min(8.0, w / max(k, 1))  # spread dots across the bar, deterministically
            cv.add(f'<circle class="point" cx="{cx + dx:.1f}" cy="{y(v):.1f}" r="4" fill="{COLORS["accent"]}">'
                   f"<title>{_e(tip)}</title></circle>")
    return cv.render()


@dataclass(frozen=True)
class TreeNode:
    """One candidate in a lineage drawing."""

    key: int  # candidate id
    depth: int  # 0 for the candidate itself, 1 for its parents, ...
    lines: tuple[str, ...]  # text lines inside the box (first one bold)
    tip: str  # tooltip text


def lineage_tree(nodes: Sequence[TreeNode], edges: Sequence[tuple[int, int, str]], *, title: str) -> Markup:
    """Ancestors left (oldest) to right (the candidate); each edge parent -> child carries its operator."""
    box_w, box_h, gap_x, gap_y = 230, 54, 90, 18
    max_depth = max(n.depth for n in nodes)
    cols: dict[int, list[TreeNode]] = {}
    for n in sorted(nodes, key=lambda n: (n.depth, n.key)):
        cols.setdefault(n.depth, []).append(n)
    rows = max(len(c) for c in cols.values())
    width = 20 + (max_depth + 1) * box_w + max_depth * gap_x + 20
    height = 20 + rows * box_h + (rows - 1) * gap_y + 20
    pos: dict[int, tuple[float, float]] = {}
    for depth, col in cols.items():
        x = 20 + (max_depth - depth) * (box_w + gap_x)
        offset = (rows - len(col)) * (box_h + gap_y) / 2  # centre short columns
        for i, n in enumerate(col):
            pos[n.key] = (x, 20 + offset + i * (box_h + gap_y))
    parts = []
    for child, parent, op in edges:
        if child not in pos or parent not in pos:
            continue
        px, py = pos[parent]
        cx, cy = pos[child]
        x1, y1, x2, y2 = px + box_w, py + box_h / 2, cx, cy + box_h / 2
        parts.append(
            f'<g class="edge"><title>{_e(f"#{parent} -> #{child} by {op}")}</title>'
            f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{COLORS["axis"]}" marker-end="url(#arrow)"/>'
            f'<text class="operator" x="{(x1 + x2) / 2:.1f}" y="{(y1 + y2) / 2 - 5:.1f}" text-anchor="middle" '
            f'fill="{COLORS["front"]}">{_e(op)}</text></g>'
        )
    for n in nodes:
        x, y = pos[n.key]
        stroke = COLORS["accent"] if n.depth == 0 else COLORS["point"]
        texts = "".join(
            f'<text x="{x + 8:.1f}" y="{y + 16 + 15 * i:.1f}"{BOLD if i == 0 else ""}>{_e(line)}</text>'
            for i, line in enumerate(n.lines[:3])
        )
        parts.append(
            f'<g class="node" data-key="{n.key}"><title>{_e(n.tip)}</title>'
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{box_w}" height="{box_h}" rx="6" fill="#ffffff" stroke="{stroke}" '
            f'stroke-width="{2 if n.depth == 0 else 1}"/>{texts}</g>'
        )
    # The arrow head is defined inline in this SVG; url(#...) is a same-document fragment, not a fetch.
    defs = (
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto">'
        f'<path d="M0,0L10,5L0,10z" fill="{COLORS["axis"]}"/></marker></defs>'
    )
    head = (
        f'<svg class="plot lineage" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11"><title>{_e(title)}</title>'
    )
    return Markup(head + defs + "".join(parts) + "</svg>")


__all__ = ["Point", "TreeNode", "Axis", "scatter", "progress", "strip", "lineage_tree", "nice_ticks", "short", "COLORS"]
