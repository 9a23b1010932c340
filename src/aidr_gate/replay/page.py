"""The HTML replay report: one self-contained file a compliance officer opens and attaches.

The page's shell (head, styles, sortable tables, footer) is ``pages/shell.py``'s, the SVG charts
``pages/charts.py``'s; this module writes the replay's content. Every chart has a table of the same
numbers beside it, for screen readers and for copying into a memo.
"""

from __future__ import annotations

from typing import Any

from aidr_gate.pages.charts import Series, grouped_bars, stacked_rows
from aidr_gate.pages.shell import card_list, esc, number, page, sortable_table
from aidr_gate.replay.report import DIRECTION_LABELS, DIRECTIONS, direction, unread_note
from aidr_gate.replay.run import EFFECTS

CHART_ROWS = 15  # rows drawn per bar chart; the table beside it lists every row
TABLE_ROWS = 200  # rows per long table (flips, cannot-decide); the JSON report has them all
COLORS = {"cut_off": "#b03a2e", "let_in": "#1e8449", "log_change": "#b9770e"}
DIRECTION_SERIES = tuple(Series(d, DIRECTION_LABELS[d], COLORS[d]) for d in DIRECTIONS)
EFFECT_SERIES = (Series("before", "before", "#8e9aa6"), Series("after", "after", "#1f4e79"))
_EXTRA_STYLE = """
.card.cut_off .value { color: #b03a2e; } .card.let_in .value { color: #1e8449; }
"""


def _directions(row: dict[str, Any]) -> dict[str, int]:
    parts: dict[str, int] = {}
    for kind, count in row["by_kind"].items():
        key = direction(kind)
        parts[key] = parts.get(key, 0) + count
    return parts


def _dimension_section(
    report: dict[str, Any], name: str, section_id: str, title: str, label: str
) -> str:
    rows = report["flips"][name]
    chart_rows = [(str(r["value"]), _directions(r)) for r in rows[:CHART_ROWS]]
    more = len(rows) - len(chart_rows)
    chart = stacked_rows(
        f"chart-{section_id}",
        title,
        f"Flips by {label}, split into records now denied, no longer denied, and flagging "
        "changes. The table beside the chart lists the same numbers.",
        chart_rows,
        DIRECTION_SERIES,
    )
    table = _dimension_table(rows, f"table-{section_id}", f"{title} (every row)", label)
    note = (
        f"<figcaption>The chart shows the top {CHART_ROWS}; {more} more in the table.</figcaption>"
        if more > 0
        else ""
    )
    return (
        f'<section id="{section_id}"><h2>{esc(title)}</h2><div class="pair">'
        f"<figure>{chart}{note}</figure>{table}</div></section>"
    )


def render_html(report: dict[str, Any]) -> str:
    """The self-contained HTML page for a replay report (see ``report.build_report``)."""
    pack = report["pack"]
    totals = report["totals"]
    recorded = report["recorded_packs"]
    old_ids = ", ".join(p["id"] for p in recorded) or "unknown"
    title = f"Replay: {old_ids} → {pack['id']}"
    return page(
        title=title,
        generator="replay",
        style=_EXTRA_STYLE,
        header=(
            f"<h1>What would change under {esc(pack['id'])}</h1>",
            f'<p class="sub">{esc(pack["title"])}</p>',
            _packs_table(report),
            _scope(report),
        ),
        main=(
            _cards(report),
            _effects_section(report),
            _dimension_section(
                report, "by_country", "by-country", "Flips by network country", "country"
            ),
            _dimension_section(
                report,
                "by_model_tier",
                "by-model-tier",
                "Flips by model tier (new pack)",
                "model tier",
            ),
            _dimension_section(
                report,
                "by_effective_tier",
                "by-effective-tier",
                "Flips by effective tier (new pack)",
                "effective tier",
            ),
            _top_entities(report),
            _simple_dimension(report, "by_model", "by-model", "Flips by model", "model"),
            _simple_dimension(report, "by_reason", "by-reason", "Flips by reason", "reason"),
            _flips_table(report),
            _reason_changes(report),
            _cannot_decide(report),
            _refusals(report),
            _chain(report),
        ),
        generated_at=report["generated_at"],
        report_format=report["format"],
        colophon=f"; {number(totals['lines'])} lines read in {report['elapsed_seconds']} s.",
    )


def _packs_table(report: dict[str, Any]) -> str:
    pack = report["pack"]
    window = f"{pack['effective']['from'] or '–'} to {pack['effective']['until'] or '–'}"
    rows = [
        (
            "recorded under",
            p["id"],
            p["status"],
            p["digest"],
            f"{p['effective']['from'] or '–'} to {p['effective']['until'] or '–'}"
            if p["effective"]
            else "(not a bundled pack)",
            p["records"],
        )
        for p in report["recorded_packs"]
    ]
    rows.append(("replayed under", pack["id"], pack["status"], pack["digest"], window, None))
    body = "".join(
        "<tr>"
        + f'<th scope="row">{esc(role)}</th><td>{esc(pid)}</td><td>{esc(status)}</td>'
        + f'<td class="mono">{esc(digest)}</td><td>{esc(win)}</td>'
        + f'<td class="num">{number(count)}</td></tr>'
        for role, pid, status, digest, win, count in rows
    )
    return (
        '<table id="packs"><caption>Policy packs compared</caption><thead><tr>'
        '<th scope="col">role</th><th scope="col">pack</th><th scope="col">status</th>'
        '<th scope="col">digest</th><th scope="col">legal window</th>'
        '<th scope="col" class="num">records</th></tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


def _scope(report: dict[str, Any]) -> str:
    span = report["range"]
    items = [
        f"Records decided from <strong id='range-first'>{esc(span['first'] or '–')}</strong> to "
        f"<strong id='range-last'>{esc(span['last'] or '–')}</strong>, "
        f"read from {len(report['files'])} audit file(s)."
    ]
    if report["at"]:
        items.append(
            f"Every record was re-decided as if at <strong>{esc(report['at'])}</strong>, "
            "not at its own time."
        )
    else:
        items.append("Every record was re-decided at the time it was originally decided.")
    items.append(
        f"Entities: {esc(report['registry'] or 'as recorded in each record')}. "
        f"Models: {esc(report['catalog'] or 'as recorded in each record')}."
    )
    outside = report["totals"]["outside_pack_window"]
    if outside:
        pack = report["pack"]
        items.append(
            f'<span class="note">{number(outside)} records fall outside the legal window of '
            f"{esc(pack['id'])}: the replay shows what the pack would decide, not what was "
            "required at the time.</span>"
        )
    return "".join(f"<p>{item}</p>" for item in items)


def _cards(report: dict[str, Any]) -> str:
    totals = report["totals"]
    dirs = report["flips"]["by_direction"]
    chain = report["chain"]
    cards = [
        ("records", "records read", totals["records"]),
        ("replayed", "policy decisions re-decided", totals["replayed"]),
        ("flips", "decisions that change", totals["flips"]),
        ("cut_off", "cut off (now denied)", dirs["cut_off"]),
        ("let_in", "let in (no longer denied)", dirs["let_in"]),
        ("log_change", "flagging changed", dirs["log_change"]),
        ("cannot", "cannot be decided", totals["cannot_decide"]),
        ("refusals", "gate refusals (not re-decided)", totals["gate_refusals"]),
        ("listings", "model listings (not re-decided)", totals["listings"]),
    ]
    state = (
        '<span class="ok">intact</span>'
        if not chain["findings"]
        else f'<span class="bad">{chain["errors"]} problem(s), {chain["warnings"]} warning(s)</span>'
    )
    return (
        f'<section id="totals"><h2>Totals</h2>{card_list(cards, id_prefix="total-")}'
        f'<p id="chain-state">Audit chain: {state} (see <a href="#chain">chain</a>).</p></section>'
    )


def _effects_section(report: dict[str, Any]) -> str:
    effects = report["effects"]
    chart = grouped_bars(
        "chart-effects",
        "Decisions before and after, by effect",
        "For each effect (allow, log, deny), the number of re-decided records with that effect "
        "as recorded (before) and under the new pack (after).",
        EFFECTS,
        EFFECT_SERIES,
        {"before": effects["before"], "after": effects["after"]},
    )
    rows = [
        (e, effects["before"][e], effects["after"][e], effects["after"][e] - effects["before"][e])
        for e in EFFECTS
    ]
    table = sortable_table(
        "table-effects",
        "Decisions before and after, by effect",
        ("effect", "before", "after", "change"),
        [(e, b, a, f"{c:+,}" if c else "0") for e, b, a, c in rows],
        numeric=(1, 2),
    )
    transitions = sortable_table(
        "table-transitions",
        "Every transition (before → after)",
        ("before", "after", "records"),
        [(t["from"], t["to"], t["count"]) for t in report["transitions"]],
        numeric=(2,),
    )
    return (
        '<section id="effects"><h2>Before and after, by effect</h2><div class="pair">'
        f"<figure>{chart}</figure><div>{table}{transitions}</div></div></section>"
    )


def _top_entities(report: dict[str, Any]) -> str:
    rows = [
        (
            r["entity"],
            r["flips"],
            r["cut_off"],
            r["let_in"],
            r["log_change"],
            r["records"],
            f"{r['share']:.1%}" if r["share"] is not None else "–",
        )
        for r in report["top_entities"]
    ]
    table = sortable_table(
        "table-top-entities",
        "Entities with the most flips",
        ("entity", "flips", "cut off", "let in", "log change", "records", "share flipped"),
        rows,
        numeric=(1, 2, 3, 4, 5),
    )
    return f'<section id="top-entities"><h2>Top entities affected</h2>{table}</section>'


def _dimension_table(rows: list[dict[str, Any]], table_id: str, caption: str, label: str) -> str:
    table_rows = []
    for r in rows:
        parts = _directions(r)
        table_rows.append(
            (
                r["value"],
                r["total"],
                parts.get("cut_off", 0),
                parts.get("let_in", 0),
                parts.get("log_change", 0),
            )
        )
    return sortable_table(
        table_id,
        caption,
        (label, "flips", "cut off", "let in", "log change"),
        table_rows,
        numeric=(1, 2, 3, 4),
    )


def _simple_dimension(
    report: dict[str, Any], name: str, section_id: str, title: str, label: str
) -> str:
    table = _dimension_table(report["flips"][name], f"table-{section_id}", title, label)
    return f'<section id="{section_id}"><h2>{esc(title)}</h2>{table}</section>'


def _flips_table(report: dict[str, Any]) -> str:
    flips = report["flips"]
    groups = flips["groups"]
    rows = [
        (
            g["kind"].replace("->", " → "),
            g["entity"],
            g["country"],
            g["effective_tier"],
            g["model"],
            g["model_tier"]
            if g["model_tier_before"] == g["model_tier"]
            else f"{g['model_tier_before']} → {g['model_tier']}",
            g["reason_before"],
            g["reason"],
            g["count"],
            f"{(g['first'] or '')[:10]} – {(g['last'] or '')[:10]}",
            g["sample_decision_id"],
        )
        for g in groups[:TABLE_ROWS]
    ]
    omitted = len(groups) - len(rows) + flips["groups_omitted"]
    note = (
        f'<p class="note">{number(omitted)} more groups are in the JSON report.</p>'
        if omitted > 0
        else ""
    )
    table = sortable_table(
        "table-flips",
        "Flips grouped by kind, entity, country, tier, model and reason",
        (
            "flip",
            "entity",
            "country",
            "eff. tier",
            "model",
            "model tier",
            "reason before",
            "reason after",
            "records",
            "dates",
            "sample decision",
        ),
        rows,
        numeric=(8,),
        compact=True,
    )
    return f'<section id="flips"><h2>Every flip, grouped</h2>{table}{note}</section>'


def _reason_changes(report: dict[str, Any]) -> str:
    rows = [
        (r["effect"], r["reason_before"], r["reason"], r["count"]) for r in report["reason_changes"]
    ]
    if not rows:
        return ""
    table = sortable_table(
        "table-reason-changes",
        "Same effect, another reason",
        ("effect", "reason before", "reason after", "records"),
        rows[:TABLE_ROWS],
        numeric=(3,),
    )
    return f'<section id="reason-changes"><h2>Same effect, another reason</h2>{table}</section>'


def _cannot_decide(report: dict[str, Any]) -> str:
    cannot = report["cannot_decide"]
    why = sortable_table(
        "table-cannot-why",
        "Why records could not be decided",
        ("why", "records"),
        [(w["why"], w["count"]) for w in cannot["by_why"]],
        numeric=(1,),
    )
    listed = cannot["records"][:TABLE_ROWS]
    records = sortable_table(
        "table-cannot-records",
        "Records that could not be decided",
        ("decision", "time", "effect before", "file", "line", "why"),
        [(r["decision_id"], r["at"], r["effect"], r["file"], r["line"], r["why"]) for r in listed],
        numeric=(4,),
        compact=True,
    )
    omitted = cannot["count"] - len(listed)
    note = (
        f'<p class="note">{number(omitted)} more are counted above and not listed here.</p>'
        if omitted > 0
        else ""
    )
    return (
        f'<section id="cannot-decide"><h2>Cannot be decided ({number(cannot["count"])})</h2>'
        "<p>These records lack evidence the new pack needs. They are counted, never guessed.</p>"
        f"{why}{records}{note}</section>"
    )


def _refusals(report: dict[str, Any]) -> str:
    refusals = report["gate_refusals"]
    table = sortable_table(
        "table-refusals",
        "Refused by the gate before any policy ran",
        ("reason", "rule", "status", "records"),
        [(r["reason"], r["rule"], r["status"], r["count"]) for r in refusals["by_reason"]],
        numeric=(3,),
    )
    return (
        '<section id="refusals"><h2>Not policy decisions</h2>'
        "<p>Requests the gate refused before the policy ran (bad tokens, bad bodies, audit "
        f"unavailable) and {number(report['listings'])} model listings: no pack decides these "
        f"differently.</p>{table}</section>"
    )


def _chain(report: dict[str, Any]) -> str:
    chain = report["chain"]
    if not chain["findings"]:
        body = '<p class="ok">The hash chain of the audit files is intact.</p>'
    else:
        unread = unread_note(report)
        replayed = f"{esc(unread)}." if unread else "The records were replayed all the same."
        body = (
            '<p class="bad">The hash chain does not hold everywhere: records may have been '
            f"edited, removed or reordered. {replayed} Check the files with "
            "<code>aidr-gate audit verify</code>.</p>"
            + sortable_table(
                "table-chain",
                "Chain problems and warnings",
                ("severity", "kind", "file", "line", "seq", "message"),
                [
                    (f["severity"], f["kind"], f["file"], f["line"], f["seq"], f["message"])
                    for f in chain["findings"]
                ],
                numeric=(3,),
            )
        )
    files = sortable_table(
        "table-files",
        "Audit files read, in chain order",
        ("file", "lines", "first seq", "last seq", "torn end", "error"),
        [
            (
                f["path"],
                f["lines"],
                f["first_seq"],
                f["last_seq"],
                "yes" if f["torn"] else "",
                f["error"] or "",
            )
            for f in report["files"]
        ],
        numeric=(1,),
    )
    return f'<section id="chain"><h2>Audit chain</h2>{body}{files}</section>'
