"""Inline SVG charts for the HTML report pages: no script, no library, no network.

Each chart is an ``<svg role="img">`` with a ``<title>`` and ``<desc>`` for screen readers, a
``<title>`` per bar for tooltips, and ``data-*`` attributes naming what each bar shows, so the
numbers can be checked by machine as well as read. The report always puts a table of the same
numbers beside the chart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from aidr_gate.pages.shell import esc, number

FONT = "font-family:system-ui,-apple-system,'Segoe UI',sans-serif;font-size:12px"


@dataclass(frozen=True, slots=True)
class Series:
    """One colour of bars: its key (for ``data-series``), label and fill colour."""

    key: str
    label: str
    color: str


def open_chart(chart_id: str, title: str, description: str, width: int, height: int) -> list[str]:
    """The ``<svg>`` start tag with its title and description (named by ``aria-labelledby``)."""
    ident = esc(chart_id)
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="{ident}" class="chart" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'aria-labelledby="{ident}-title {ident}-desc" style="{FONT}">',
        f'<title id="{ident}-title">{escape(title)}</title>',
        f'<desc id="{ident}-desc">{escape(description)}</desc>',
    ]


def _legend(series: Sequence[Series], x: float, y: float) -> list[str]:
    out = []
    for s in series:
        out.append(
            f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="10" height="10" fill="{s.color}"/>'
            f'<text x="{x + 14:.1f}" y="{y:.1f}">{escape(s.label)}</text>'
        )
        x += 22 + 7 * len(s.label)
    return out


def grouped_bars(
    chart_id: str,
    title: str,
    description: str,
    groups: Sequence[str],
    series: Sequence[Series],
    values: dict[str, dict[str, int]],  # series key -> group -> value
    *,
    width: int = 520,
    height: int = 280,
) -> str:
    """Vertical bars, one cluster per group and one bar per series in it."""
    left, right, top, bottom = 56, 16, 34, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([1, *(v for by_group in values.values() for v in by_group.values())])
    slot = plot_w / max(1, len(groups))
    bar_w = min(48.0, slot * 0.8 / max(1, len(series)))
    out = open_chart(chart_id, title, description, width, height)
    out.extend(_legend(series, left, 16))
    for tick in range(5):
        value = peak * tick / 4
        y = top + plot_h - plot_h * tick / 4
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{number(round(value))}</text>'
        )
    for g_index, group in enumerate(groups):
        cluster = left + slot * g_index + (slot - bar_w * len(series)) / 2
        for s_index, s in enumerate(series):
            value = values.get(s.key, {}).get(group, 0)
            h = plot_h * value / peak
            x = cluster + s_index * bar_w
            y = top + plot_h - h
            out.append(
                f'<g class="bar" data-group="{esc(group)}" data-series="{esc(s.key)}" '
                f'data-value="{value}">'
                f"<title>{escape(group)}, {escape(s.label)}: {number(value)}</title>"
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w - 3:.1f}" height="{h:.1f}" '
                f'fill="{s.color}"/>'
                f'<text x="{x + (bar_w - 3) / 2:.1f}" y="{y - 4:.1f}" text-anchor="middle">'
                f"{number(value)}</text></g>"
            )
        out.append(
            f'<text class="group-label" x="{left + slot * (g_index + 0.5):.1f}" '
            f'y="{height - bottom + 18}" text-anchor="middle">{escape(group)}</text>'
        )
    out.append(
        f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" '
        'stroke="#333"/>'
    )
    out.append("</svg>")
    return "".join(out)


def stacked_rows(
    chart_id: str,
    title: str,
    description: str,
    rows: Sequence[tuple[str, dict[str, int]]],  # label -> series key -> value
    series: Sequence[Series],
    *,
    width: int = 620,
    row_height: int = 24,
) -> str:
    """Horizontal bars, one row per label, stacked by series; the total at the end of each."""
    label_w = 10 + 7 * max([8, *(min(len(label), 28) for label, _ in rows)])
    left, right, top = label_w, 64, 30
    height = top + row_height * max(1, len(rows)) + 10
    plot_w = width - left - right
    peak = max([1, *(sum(parts.values()) for _, parts in rows)])
    out = open_chart(chart_id, title, description, width, height)
    out.extend(_legend(series, 8, 16))
    if not rows:
        out.append(f'<text x="{left}" y="{top + 16}">No flips.</text>')
    for index, (label, parts) in enumerate(rows):
        y = top + index * row_height
        shown = label if len(label) <= 28 else label[:27] + "…"
        total = sum(parts.values())
        out.append(
            f'<g class="row" data-label="{esc(label)}" data-total="{total}">'
            f'<text class="row-label" x="{left - 6}" y="{y + row_height * 0.65:.1f}" '
            f'text-anchor="end">{escape(shown)}</text>'
        )
        x = float(left)
        for s in series:
            value = parts.get(s.key, 0)
            if not value:
                continue
            w = plot_w * value / peak
            out.append(
                f'<g class="bar" data-series="{esc(s.key)}" data-value="{value}">'
                f"<title>{escape(label)}, {escape(s.label)}: {number(value)}</title>"
                f'<rect x="{x:.1f}" y="{y + 3}" width="{max(w, 1):.1f}" '
                f'height="{row_height - 6}" fill="{s.color}"/></g>'
            )
            x += w
        out.append(
            f'<text class="row-total" x="{x + 6:.1f}" y="{y + row_height * 0.65:.1f}">'
            f"{number(total)}</text></g>"
        )
    out.append("</svg>")
    return "".join(out)
