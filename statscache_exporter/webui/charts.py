"""Charts as inline SVG, drawn on the server: bars for counters (one per bucket the store
holds: a bucket it lacks counted nothing), step lines for gauges, and sparklines.

Every drawn bucket is an element of class ``point`` carrying ``data-t`` (bucket start, epoch
seconds) and ``data-v`` (its value), with a ``<title>`` a browser shows on hover; no script
is needed to read a chart, and a test can count what it holds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

from markupsafe import Markup

Points = Sequence[tuple[int, float]]

#: candidate spacings of time labels, seconds
_TIME_STEPS = (
    60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800,
    1209600, 2592000, 7776000, 15552000, 31536000,
)  # fmt: skip
#: colours of a gauge chart's lines (the stylesheet's --series-N, as attributes here so that
#: the legend and the lines agree even without the stylesheet)
PALETTE = ("#3c6eb4", "#e66c2c", "#2e9e6b", "#a245b8", "#c9a227", "#d64562")
#: the colour of the rest of a stacked bar
OTHER = "#b8c2d0"


@dataclass(frozen=True)
class Frame:
    """The time span a chart covers: [start, stop) in epoch seconds, in buckets of ``step``."""

    start: int
    stop: int
    step: int

    @property
    def buckets(self) -> int:
        return max(1, math.ceil((self.stop - self.start) / self.step))


def when(epoch: float, step: int = 60) -> str:
    """A bucket's time, as precise as its step: '2024-03-01 14:05 UTC'."""
    moment = datetime.fromtimestamp(epoch, UTC)
    if step % 86400 == 0:
        return moment.strftime("%Y-%m-%d")
    if step < 60:
        return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def number(value: float) -> str:
    """12,345 or 0.25 or 1.2e+09: readable, exact for whole numbers."""
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:,.3g}" if abs(value) < 1e6 else f"{value:.3g}"


def short(value: float) -> str:
    """An axis label: 950, 1.2k, 3.4M."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}" if not float(value).is_integer() else str(int(value))


def nice_ceiling(value: float) -> tuple[float, float]:
    """(top of the y axis, spacing of its ticks): 1, 2 or 5 times a power of ten, ~4 ticks."""
    if value <= 0:
        return 1.0, 0.25
    raw = value / 4
    power = 10 ** math.floor(math.log10(raw))
    spacing = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    return math.ceil(value / spacing) * spacing, spacing


def time_ticks(frame: Frame, most: int = 7) -> list[int]:
    """Round times within the frame, at most ``most`` of them."""
    span = frame.stop - frame.start
    spacing = next((s for s in _TIME_STEPS if span / s <= most), _TIME_STEPS[-1])
    first = math.ceil(frame.start / spacing) * spacing
    return list(range(first, frame.stop + 1, spacing))


def _tick_label(t: int, span: int) -> str:
    moment = datetime.fromtimestamp(t, UTC)
    if span > 3 * 86400:
        return moment.strftime("%b %d")
    if moment.hour == 0 and moment.minute == 0:
        return moment.strftime("%b %d")
    return moment.strftime("%H:%M")


@dataclass(frozen=True)
class _Plot:
    width: int
    height: int
    left: int = 52
    right: int = 10
    top: int = 10
    bottom: int = 24

    @property
    def inner_width(self) -> int:
        return self.width - self.left - self.right

    @property
    def inner_height(self) -> int:
        return self.height - self.top - self.bottom


def _axes(plot: _Plot, frame: Frame, top: float, spacing: float, low: float = 0.0) -> list[str]:
    parts = []
    y0 = plot.top + plot.inner_height
    value = 0.0
    while value <= top + spacing / 2:
        y = y0 - value / top * plot.inner_height
        parts.append(
            f'<line class="grid" x1="{plot.left}" x2="{plot.width - plot.right}" '
            f'y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="ylabel" x="{plot.left - 6}" y="{y + 4:.1f}">{short(low + value)}</text>'
        )
        value += spacing
    span = frame.stop - frame.start
    for t in time_ticks(frame):
        x = plot.left + (t - frame.start) / span * plot.inner_width
        parts.append(
            f'<line class="tick" x1="{x:.1f}" x2="{x:.1f}" y1="{y0}" y2="{y0 + 4}"/>'
            f'<text class="xlabel" x="{x:.1f}" y="{y0 + 17}">{_tick_label(t, span)}</text>'
        )
    return parts


def _svg(plot: _Plot, css: str, label: str, body: list[str], chart_id: str) -> Markup:
    return Markup(
        f'<svg id="{escape(chart_id)}" class="{css}" viewBox="0 0 {plot.width} {plot.height}" '
        f'role="img" aria-label="{escape(label)}" preserveAspectRatio="xMidYMid meet">'
        f"<title>{escape(label)}</title>{''.join(body)}</svg>"
    )


def bar_chart(
    points: Points, frame: Frame, *, chart_id: str, label: str, unit: str,
    stacks: Sequence[tuple[str, Points]] = (), width: int = 960, height: int = 240,
) -> Markup:  # fmt: skip
    """One bar per bucket held, on a time axis over the whole frame. With ``stacks`` (the
    largest series, each (name, points)), each bar is split into their shares, the rest of
    the bucket's total on top as "other"; the bar (an element of class ``point``) keeps the
    total."""
    plot = _Plot(width, height)
    top, spacing = nice_ceiling(max((v for _, v in points), default=0.0))
    body = _axes(plot, frame, top, spacing)
    span = frame.stop - frame.start
    slot = frame.step / span * plot.inner_width
    gap = 1.0 if slot >= 4 else 0.0
    y0 = plot.top + plot.inner_height
    parts = [dict(pts) for _, pts in stacks]
    for t, v in points:
        x = plot.left + (t - frame.start) / span * plot.inner_width
        w = max(0.6, slot - gap)
        tip = f"{when(t, frame.step)}: {number(v)} {unit}"
        if not parts:
            h = max(0.0, v / top * plot.inner_height)
            body.append(
                f'<rect class="point bar" x="{x + gap / 2:.2f}" y="{y0 - h:.2f}" '
                f'width="{w:.2f}" height="{h:.2f}" data-t="{t}" data-v="{v:g}">'
                f"<title>{escape(tip)}</title></rect>"
            )
            continue
        shares = [(PALETTE[i % len(PALETTE)], part.get(t, 0.0)) for i, part in enumerate(parts)]
        shares.append((OTHER, max(0.0, v - sum(share for _, share in shares))))
        lines = [tip] + [
            f"{name}: {number(share)}"
            for (name, _), (_, share) in zip([*stacks, ("other", ())], shares, strict=True)
            if share
        ]
        segments: list[str] = []
        y = float(y0)
        for colour, share in shares:
            h = max(0.0, share / top * plot.inner_height)
            if h > 0:
                segments.append(
                    f'<rect x="{x + gap / 2:.2f}" y="{y - h:.2f}" width="{w:.2f}" '
                    f'height="{h:.2f}" fill="{colour}"/>'
                )
                y -= h
        body.append(
            f'<g class="point stack" data-t="{t}" data-v="{v:g}">'
            f"<title>{escape(chr(10).join(lines))}</title>{''.join(segments)}</g>"
        )
    if not points:
        body.append(_empty(plot))
    body.append(
        f'<line class="axis" x1="{plot.left}" x2="{width - plot.right}" y1="{y0}" y2="{y0}"/>'
    )
    return _svg(plot, "chart bars", label, body, chart_id)


def line_chart(
    lines: Sequence[tuple[str, Points]], frame: Frame, *, chart_id: str, label: str,
    width: int = 960, height: int = 240,
) -> Markup:  # fmt: skip
    """Step lines (a gauge holds its value until the next bucket that sets it), one per
    series, with a dot per bucket held."""
    plot = _Plot(width, height)
    values = [v for _, pts in lines for _, v in pts]
    low = min(0.0, min(values, default=0.0))
    top, spacing = nice_ceiling(max(values, default=0.0) - low)
    body = _axes(plot, frame, top, spacing, low)
    span = frame.stop - frame.start
    y0 = plot.top + plot.inner_height

    def xy(t: int, v: float) -> tuple[float, float]:
        x = plot.left + (t + frame.step / 2 - frame.start) / span * plot.inner_width
        return x, y0 - (v - low) / top * plot.inner_height

    for i, (name, pts) in enumerate(lines):
        colour = PALETTE[i % len(PALETTE)]
        path = []
        for j, (t, v) in enumerate(pts):
            x, y = xy(t, v)
            if j:
                path.append(f"H{x:.1f}V{y:.1f}")
            else:
                path.append(f"M{x:.1f} {y:.1f}")
        if pts:
            end_x = plot.left + plot.inner_width
            path.append(f"H{end_x:.1f}")
            body.append(f'<path class="line" stroke="{colour}" d="{"".join(path)}"/>')
        for t, v in pts:
            x, y = xy(t, v)
            body.append(
                f'<circle class="point dot" cx="{x:.1f}" cy="{y:.1f}" r="2.6" fill="{colour}" '
                f'data-t="{t}" data-v="{v:g}"><title>{escape(name)} at '
                f"{escape(when(t, frame.step))}: {number(v)}</title></circle>"
            )
    if not values:
        body.append(_empty(plot))
    body.append(
        f'<line class="axis" x1="{plot.left}" x2="{width - plot.right}" y1="{y0}" y2="{y0}"/>'
    )
    return _svg(plot, "chart lines", label, body, chart_id)


def sparkline(
    points: Points, frame: Frame, *, chart_id: str, label: str, width: int = 300, height: int = 56
) -> Markup:
    """Small bars without axes, for a plugin's card."""
    top = max((v for _, v in points), default=0.0) or 1.0
    span = frame.stop - frame.start
    slot = frame.step / span * width
    gap = 1.0 if slot >= 4 else 0.0
    body = [f'<line class="axis" x1="0" x2="{width}" y1="{height - 0.5}" y2="{height - 0.5}"/>']
    for t, v in points:
        x = (t - frame.start) / span * width
        h = max(1.0, v / top * (height - 4)) if v > 0 else 0.0
        body.append(
            f'<rect class="point bar" x="{x + gap / 2:.2f}" y="{height - h:.2f}" '
            f'width="{max(0.6, slot - gap):.2f}" height="{h:.2f}" data-t="{t}" data-v="{v:g}">'
            f"<title>{escape(when(t, frame.step))}: {number(v)}</title></rect>"
        )
    return Markup(
        f'<svg id="{escape(chart_id)}" class="spark" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(label)}" preserveAspectRatio="none">'
        f"<title>{escape(label)}</title>{''.join(body)}</svg>"
    )


def _empty(plot: _Plot) -> str:
    return (
        f'<text class="empty" x="{plot.left + plot.inner_width / 2:.0f}" '
        f'y="{plot.top + plot.inner_height / 2:.0f}">no data in this range</text>'
    )
