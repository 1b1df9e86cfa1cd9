"""Inline SVG charts for the console: no JavaScript, no build step, printable."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from markupsafe import Markup, escape

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
PALETTE = ("#1f6feb", "#2da44e", "#bf8700", "#8250df", "#cf222e", "#0a7f8c")


def heatmap(grid: Sequence[Sequence[int]], peak: int, windows: Sequence[tuple[int, int, int]] = ()) -> Markup:
    """Weekday (rows) x hour (columns); `windows` are (weekday, start hour, end hour) outlines."""
    cw, ch, left, top = 30, 26, 44, 22
    w, h = left + 24 * cw + 4, top + 7 * ch + 4
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="heatmap" viewBox="0 0 {w} {h}" width="{w}" '
           f'height="{h}" role="img" aria-label="inbound calls per weekday and hour">']
    for hr in range(24):
        out.append(f'<text x="{left + hr * cw + cw / 2}" y="14" text-anchor="middle" class="axis">{hr:02d}</text>')
    for d, row in enumerate(grid):
        y = top + d * ch
        out.append(f'<text x="{left - 6}" y="{y + ch * 0.65}" text-anchor="end" class="axis">{WEEKDAYS[d]}</text>')
        for hr, n in enumerate(row):
            level = n / peak if peak else 0.0
            fill = f"rgba(207,34,46,{0.06 + 0.94 * level:.3f})" if n else "#f6f8fa"
            out.append(f'<rect x="{left + hr * cw}" y="{y}" width="{cw - 2}" height="{ch - 2}" fill="{fill}" '
                       f'data-day="{d}" data-hour="{hr}"><title>{WEEKDAYS[d]} {hr:02d}:00 — {n} calls</title></rect>')
    for d, start, end in windows:
        out.append(f'<rect x="{left + start * cw - 1}" y="{top + d * ch - 1}" width="{(end - start) * cw}" '
                   f'height="{ch}" class="window"/>')
    out.append("</svg>")
    return Markup("".join(out))


#: every bar chart's drawing width: the same on every page, scaled to the page's width by the browser
BARS_WIDTH = 860
_CHAR_PX = 6.2  # an axis label character (10 px system-ui digits), for spacing the labels


def bars(rows: Sequence[Any], fields: Sequence[str]) -> Markup:
    """Grouped bars: one group per period, one bar per field, with a legend.

    Always BARS_WIDTH units wide (a viewBox the page scales to its width): many periods make thinner bars,
    never a wider chart. Periods are labelled at a regular step, counted back from the last one.
    """
    n = max(len(rows), 1)
    labels = _period_labels([r.period for r in rows])
    label_w = max(map(len, labels), default=0) * _CHAR_PX
    # the last period's label is centred under its group: room for its right half
    left, right, top, height = 40, math.ceil(label_w / 2) + 2, 28, 160
    group = (BARS_WIDTH - left - right) / n
    bw = min(36.0, (group - 2 * min(3.0, group * 0.15)) / len(fields))  # a few periods: bars, not slabs
    w, h = BARS_WIDTH, top + height + 34
    peak = max([getattr(r, f) for r in rows for f in fields] + [1])
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="bars" viewBox="0 0 {w} {h}" '
           f'preserveAspectRatio="xMinYMin meet" role="img">']
    for i, f in enumerate(fields):
        out.append(f'<rect x="{left + i * 130}" y="4" width="10" height="10" fill="{PALETTE[i % len(PALETTE)]}"/>'
                   f'<text x="{left + i * 130 + 14}" y="13" class="axis">{escape(f.replace("_", " "))}</text>')
    out.append(f'<text x="{left - 4}" y="{top + 8}" text-anchor="end" class="axis">{peak}</text>'
               f'<line x1="{left}" y1="{top + height}" x2="{w - right}" y2="{top + height}" class="base"/>')
    step = max(1, math.ceil((label_w + 8) / group))
    for g, r in enumerate(rows):
        x0 = left + g * group + (group - len(fields) * bw) / 2  # the group's bars centred under its label
        for i, f in enumerate(fields):
            v = getattr(r, f)
            bh = height * v / peak
            out.append(f'<rect x="{x0 + i * bw:.2f}" y="{top + height - bh:.1f}" width="{max(bw - 0.5, 0.3):.2f}" '
                       f'height="{bh:.1f}" fill="{PALETTE[i % len(PALETTE)]}"><title>{escape(r.period)} '
                       f'{escape(f.replace("_", " "))}: {v}</title></rect>')
        if (len(rows) - 1 - g) % step == 0:
            out.append(f'<text x="{left + (g + 0.5) * group:.1f}" y="{top + height + 14}" text-anchor="middle" '
                       f'class="axis small" data-period="{escape(r.period)}">{escape(labels[g])}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def _period_labels(periods: Sequence[str]) -> list[str]:
    """Axis labels: 2026-11-27 -> 11-27, 2026-W48 -> W48; with the year when the periods span several."""
    if len({p[:4] for p in periods}) > 1:
        return list(periods)
    return [p.split("-", 1)[1] for p in periods]
