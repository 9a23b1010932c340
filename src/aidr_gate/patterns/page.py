"""The access-pattern report as one self-contained HTML page, for a compliance officer.

The page's shell (head, styles, sortable tables, footer) is ``pages/shell.py``'s and the charts
draw as ``pages/charts.py``'s do: everything inline, nothing fetched. Charts: distinct countries
over time for each entity ranked first, and the networks fronting the most entities; each chart
has a table of the same numbers beside it. Then, per entity, the requests behind its peaks.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any

from aidr_gate.pages.charts import Series, open_chart, stacked_rows
from aidr_gate.pages.shell import card_list, esc, number, page, sortable_table

CHARTED_ENTITIES = 8  # entities with a countries-over-time chart
DETAILED_ENTITIES = 20  # entities with their peak requests listed
NETWORK_SERIES = (Series("entities", "distinct entities in one window", "#1f4e79"),)
_EXTRA_STYLE = """
.card.flagged .value { color: #b03a2e; }
.entity { border: 1px solid #ccc; border-radius: 6px; padding: .5rem .9rem; margin: .8rem 0; }
.entity h3 { font-size: 1rem; margin: .2rem 0 .4rem; }
"""


def _when(at: float | None) -> str:
    return "–" if at is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(at))


def countries_chart(chart_id: str, entity: str, series: list[dict[str, Any]]) -> str:
    """Distinct network countries per time bucket: a step line with a dot per bucket."""
    width, height = 520, 200
    left, right, top, bottom = 40, 12, 30, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [len(b["countries"]) for b in series]
    peak = max([1, *values])
    out = open_chart(
        chart_id,
        f"Countries over time: {entity}",
        f"Distinct network countries of {entity} per time bucket; the table beside it lists the "
        "same numbers.",
        width,
        height,
    )
    for tick in range(peak + 1) if peak <= 6 else range(0, peak + 1, max(1, peak // 4)):
        y = top + plot_h - plot_h * tick / peak
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick}</text>'
        )
    step = plot_w / max(1, len(values))
    points = []
    for index, (bucket, value) in enumerate(zip(series, values, strict=True)):
        x = left + step * (index + 0.5)
        y = top + plot_h - plot_h * value / peak
        points.append(f"{x:.1f},{y:.1f}")
        out.append(
            f'<g class="point" data-start="{bucket["start"]}" data-value="{value}">'
            f"<title>{escape(_when(bucket['start']))}: {value} countries "
            f"({escape(', '.join(bucket['countries']))}), {bucket['requests']} requests</title>"
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="#1f4e79"/></g>'
        )
    if points:
        out.append(
            f'<polyline fill="none" stroke="#1f4e79" stroke-width="1.5" '
            f'points="{" ".join(points)}"/>'
        )
    if series:
        out.append(
            f'<text x="{left}" y="{height - 10}">{escape(_when(series[0]["start"]))}</text>'
            f'<text x="{width - right}" y="{height - 10}" text-anchor="end">'
            f"{escape(_when(series[-1]['start']))}</text>"
        )
    out.append(
        f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" '
        'stroke="#333"/></svg>'
    )
    return "".join(out)


def render_html(report: dict[str, Any]) -> str:
    """The self-contained page for a patterns report (see ``report.run_report``)."""
    totals = report["totals"]
    title = f"Access patterns: {totals['records']:,} requests"
    return page(
        title=title,
        generator="patterns",
        style=_EXTRA_STYLE,
        header=(
            "<h1>Access patterns over time</h1>",
            f'<p class="sub">{number(totals["records"])} requests of '
            f"{number(totals['entities'])} entities from {esc(_when(totals['first']))} to "
            f"{esc(_when(totals['last']))} UTC; signals over a sliding window of "
            f"{esc(report['window'])}, series in steps of {esc(report['bucket_seconds'])} s.</p>",
        ),
        main=[section(report) for section in _SECTIONS],
        generated_at=report["generated_at"],
        report_format=report["format"],
        colophon=f" in {report['seconds']} s. A signal is a red flag for a person to look into, "
        "not a finding.",
    )


def _cards(report: dict[str, Any]) -> str:
    totals = report["totals"]
    flagged = sum(1 for row in report["entities"] if row["score"] > 0)
    cards = [
        ("records", "requests read", totals["records"]),
        ("entities", "entities", totals["entities"]),
        ("flagged", "entities listed with a score above 0", flagged),
        ("networks", "networks fronting several entities", totals["networks_fronting"]),
    ]
    return card_list(cards, id_prefix="card-")


def _chain(report: dict[str, Any]) -> str:
    if report["chain_ok"]:
        return '<p id="chain" class="ok">The hash chain holds over every file read.</p>'
    rows = [(f["file"], f["line"], f["kind"], f["message"]) for f in report["chain_findings"]]
    return (
        '<section id="chain"><p class="note bad">The hash chain does not hold: the trail may '
        "have been edited. Run <code>aidr-gate audit verify</code>.</p>"
        + sortable_table("table-chain", "Chain findings", ("file", "line", "kind", "what"), rows)
        + "</section>"
    )


def _ranking(report: dict[str, Any]) -> str:
    rows = []
    for row in report["entities"]:
        peaks = row["peaks"]
        rows.append(
            (
                row["entity"],
                f"{row['score']:.2f}",
                row["requests"],
                f"{peaks['entity_countries']['value']:g}",
                f"{peaks['token_countries']['value']:g}",
                f"{peaks['anonymizer_share']['value']:.2f}",
                f"{row['worse_share']:.2f}",
                f"{row['headquarters'] or '?'} ({row['headquarters_tier'] or '?'})",
                ", ".join(row["countries"]),
            )
        )
    table = sortable_table(
        "table-entities",
        f"Entities ranked by departure from their own history and their headquarters' tier "
        f"(peaks over {report['window']})",
        (
            "entity",
            "score",
            "requests",
            "countries (peak)",
            "one token's countries (peak)",
            "anonymizer share (peak)",
            "share from a worse tier",
            "headquarters (tier)",
            "countries seen",
        ),
        rows,
        numeric=(2,),
        compact=True,
    )
    note = (
        '<p class="sub">score = (peak countries in a window − the entity\'s usual countries per '
        "step) + (peak countries of one token − 1) + 2 × (peak anonymizer share − its overall "
        "share) + 2 × (share of its requests from a tier worse than its headquarters').</p>"
    )
    return f'<section id="ranking"><h2>Entities</h2>{note}{table}</section>'


def _countries_section(report: dict[str, Any]) -> str:
    figures = []
    for index, row in enumerate(report["entities"][:CHARTED_ENTITIES]):
        series = row["series"]
        chart = countries_chart(f"chart-countries-{index}", row["entity"], series)
        table = sortable_table(
            f"table-countries-{index}",
            f"Countries over time: {row['entity']}",
            ("from (UTC)", "countries", "which", "requests"),
            [
                (_when(b["start"]), len(b["countries"]), ", ".join(b["countries"]), b["requests"])
                for b in series
            ],
            numeric=(1, 3),
            compact=True,
        )
        figures.append(
            f'<div class="pair" data-entity="{esc(row["entity"])}"><figure>{chart}</figure>'
            f"{table}</div>"
        )
    body = "".join(figures) or "<p>No entity.</p>"
    return f'<section id="countries"><h2>Countries over time per entity</h2>{body}</section>'


def _networks_section(report: dict[str, Any]) -> str:
    networks = report["networks"]
    chart = stacked_rows(
        "chart-networks",
        "Entities per network",
        "Distinct entities behind one network prefix within one window, at its peak; the table "
        "beside it lists the same numbers.",
        [(n["network"], {"entities": int(n["peak_entities"])}) for n in networks[:15]],
        NETWORK_SERIES,
    )
    table = sortable_table(
        "table-networks",
        "Networks fronting several entities",
        ("network", "entities (peak)", "at (UTC)", "requests", "entities seen"),
        [
            (
                n["network"],
                int(n["peak_entities"]),
                _when(n["peak_at"]),
                n["requests"],
                ", ".join(n["entities"]),
            )
            for n in networks
        ],
        numeric=(1, 3),
        compact=True,
    )
    return (
        f'<section id="networks"><h2>Entities per network</h2><div class="pair">'
        f"<figure>{chart}</figure>{table}</div></section>"
    )


def _details(report: dict[str, Any]) -> str:
    blocks = []
    for index, row in enumerate(report["entities"][:DETAILED_ENTITIES]):
        peak = max(
            row["peaks"].values(),
            key=lambda p: p["value"] if p["at"] is not None else -1,
        )
        requests = [
            (
                r["decision_id"],
                _when(r["at"]),
                r["subject"] or "–",
                r["ip"] or "–",
                r["country"] or "–",
                "yes" if r["anonymous"] else "no",
                f"{r['effect']} {r['reason']}",
            )
            for name in ("token_countries", "entity_countries")
            for r in row["peaks"][name]["requests"]
        ][:20]
        table = sortable_table(
            f"table-requests-{index}",
            f"Requests behind the peaks of {row['entity']}",
            ("decision id", "at (UTC)", "token subject", "client address", "country",
             "anonymizer", "decision"),
            requests,
            compact=True,
        )  # fmt: skip
        blocks.append(
            f'<div class="entity" id="entity-{index}"><h3>{esc(row["entity"])}: score '
            f"{row['score']:.2f}, peak {peak['value']:g} at {esc(_when(peak['at']))}</h3>"
            f"{table}</div>"
        )
    body = "".join(blocks) or "<p>No entity.</p>"
    return f'<section id="requests"><h2>The requests behind the signals</h2>{body}</section>'


# The page's main part, in order: each section renders from the whole report.
_SECTIONS = (_cards, _chain, _ranking, _countries_section, _networks_section, _details)
