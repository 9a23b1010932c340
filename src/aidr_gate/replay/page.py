"""The HTML replay report: one self-contained file a compliance officer opens and attaches.

Everything is inline: the styles, the SVG charts (``charts.py``) and a few lines of script that
make tables sortable. A Content-Security-Policy forbids loading anything from anywhere, so the
file shows the same thing offline, years later, as on the day it was made. Every chart has a table
of the same numbers beside it, for screen readers and for copying into a memo.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

from aidr_gate.replay.charts import Series, grouped_bars, stacked_rows
from aidr_gate.replay.report import DIRECTION_LABELS, DIRECTIONS, direction, unread_note
from aidr_gate.replay.run import EFFECTS

CHART_ROWS = 15  # rows drawn per bar chart; the table beside it lists every row
TABLE_ROWS = 200  # rows per long table (flips, cannot-decide); the JSON report has them all
COLORS = {"cut_off": "#b03a2e", "let_in": "#1e8449", "log_change": "#b9770e"}
DIRECTION_SERIES = tuple(Series(d, DIRECTION_LABELS[d], COLORS[d]) for d in DIRECTIONS)
EFFECT_SERIES = (Series("before", "before", "#8e9aa6"), Series("after", "after", "#1f4e79"))

_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "img-src data:; base-uri 'none'; form-action 'none'"
)

_STYLE = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
  max-width: 72rem; padding: 0 1.5rem; color: #1b1b1b; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .25rem; }
h2 { font-size: 1.2rem; margin-top: 2.2rem; border-bottom: 1px solid #ccc; padding-bottom: .2rem; }
.sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid #ccc; padding: .25rem .55rem; text-align: left; vertical-align: top; }
th { background: #f2f4f6; }
th.sortable { cursor: pointer; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.cards { display: flex; flex-wrap: wrap; gap: .8rem; margin: 1rem 0; padding: 0; list-style: none; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: .6rem .9rem; min-width: 9rem; }
.card .value { font-size: 1.5rem; font-weight: 600; display: block; }
.card.cut_off .value { color: #b03a2e; } .card.let_in .value { color: #1e8449; }
.pair { display: flex; flex-wrap: wrap; gap: 1.5rem; align-items: flex-start; }
figure { margin: 0; } figcaption { font-size: .85rem; color: #555; }
code, .mono { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: .85rem; }
.ok { color: #1e8449; } .bad { color: #b03a2e; font-weight: 600; }
.note { background: #fff8e1; border-left: 4px solid #b9770e; padding: .4rem .8rem; }
.scroll { overflow-x: auto; max-width: 100%; }
.compact td, .compact th { white-space: nowrap; font-size: .82rem; }
@media print { th.sortable { cursor: auto; } .pair { display: block; } }
"""

# Recorded first so that any later script error lands in the DOM (a headless test reads it).
_ERRORS_SCRIPT = """
window.replayErrors = [];
window.addEventListener("error", function (event) {
  window.replayErrors.push(String(event.message));
  document.documentElement.setAttribute("data-js-errors", window.replayErrors.join(" | "));
});
"""

_SORT_SCRIPT = """
(function () {
  function value(cell) {
    var text = cell.getAttribute("data-sort") || cell.textContent.trim();
    var number = Number(text.replace(/[,%+]/g, ""));
    return text !== "" && !isNaN(number) ? number : text.toLowerCase();
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("th").forEach(function (th, column) {
      th.classList.add("sortable");
      th.setAttribute("tabindex", "0");
      th.setAttribute("aria-sort", "none");
      function sort() {
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        var up = th.getAttribute("aria-sort") !== "ascending";
        rows.sort(function (a, b) {
          var x = value(a.cells[column]), y = value(b.cells[column]);
          return (x < y ? -1 : x > y ? 1 : 0) * (up ? 1 : -1);
        });
        table.querySelectorAll("th").forEach(function (other) {
          other.setAttribute("aria-sort", "none");
        });
        th.setAttribute("aria-sort", up ? "ascending" : "descending");
        rows.forEach(function (row) { body.appendChild(row); });
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sort(); }
      });
    });
  });
  document.documentElement.setAttribute("data-ready", "1");
})();
"""


def _e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def _n(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def _table(
    table_id: str,
    caption: str,
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    numeric: Sequence[int] = (),
    compact: bool = False,
) -> str:
    head = "".join(
        f'<th scope="col"{" class=num" if i in numeric else ""}>{_e(h)}</th>'
        for i, h in enumerate(headers)
    )
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            if i in numeric and isinstance(cell, int):
                cells.append(f'<td class="num" data-sort="{cell}">{_n(cell)}</td>')
            else:
                cells.append(f"<td>{_e(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    if not body:
        body.append(f'<tr><td colspan="{len(headers)}">None.</td></tr>')
    table = (
        f'<table id="{_e(table_id)}" class="sortable{" compact" if compact else ""}">'
        f"<caption>{_e(caption)}</caption>"
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )
    return f'<div class="scroll">{table}</div>' if compact else table


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
        f'<section id="{section_id}"><h2>{_e(title)}</h2><div class="pair">'
        f"<figure>{chart}{note}</figure>{table}</div></section>"
    )


def render_html(report: dict[str, Any]) -> str:
    """The self-contained HTML page for a replay report (see ``report.build_report``)."""
    pack = report["pack"]
    totals = report["totals"]
    recorded = report["recorded_packs"]
    old_ids = ", ".join(p["id"] for p in recorded) or "unknown"
    title = f"Replay: {old_ids} → {pack['id']}"
    parts: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="aidr-gate replay">',
        f"<title>{_e(title)}</title>",
        f"<script>{_ERRORS_SCRIPT}</script>",
        f"<style>{_STYLE}</style></head><body>",
        "<header>",
        f"<h1>What would change under {_e(pack['id'])}</h1>",
        f'<p class="sub">{_e(pack["title"])}</p>',
        _packs_table(report),
        _scope(report),
        "</header><main>",
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
        "</main><footer>",
        f'<p class="sub">Generated by <code>aidr-gate replay</code> at {_e(report["generated_at"])} '
        f"(report format {_e(report['format'])}); {_n(totals['lines'])} lines read in "
        f"{report['elapsed_seconds']} s.</p>",
        "</footer>",
        f"<script>{_SORT_SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(parts)


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
        + f'<th scope="row">{_e(role)}</th><td>{_e(pid)}</td><td>{_e(status)}</td>'
        + f'<td class="mono">{_e(digest)}</td><td>{_e(win)}</td>'
        + f'<td class="num">{_n(count)}</td></tr>'
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
        f"Records decided from <strong id='range-first'>{_e(span['first'] or '–')}</strong> to "
        f"<strong id='range-last'>{_e(span['last'] or '–')}</strong>, "
        f"read from {len(report['files'])} audit file(s)."
    ]
    if report["at"]:
        items.append(
            f"Every record was re-decided as if at <strong>{_e(report['at'])}</strong>, "
            "not at its own time."
        )
    else:
        items.append("Every record was re-decided at the time it was originally decided.")
    items.append(
        f"Entities: {_e(report['registry'] or 'as recorded in each record')}. "
        f"Models: {_e(report['catalog'] or 'as recorded in each record')}."
    )
    outside = report["totals"]["outside_pack_window"]
    if outside:
        pack = report["pack"]
        items.append(
            f'<span class="note">{_n(outside)} records fall outside the legal window of '
            f"{_e(pack['id'])}: the replay shows what the pack would decide, not what was "
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
    items = "".join(
        f'<li class="card {key}" id="total-{key}"><span class="value">{_n(value)}</span>'
        f"{_e(label)}</li>"
        for key, label, value in cards
    )
    state = (
        '<span class="ok">intact</span>'
        if not chain["findings"]
        else f'<span class="bad">{chain["errors"]} problem(s), {chain["warnings"]} warning(s)</span>'
    )
    return (
        f'<section id="totals"><h2>Totals</h2><ul class="cards">{items}</ul>'
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
    table = _table(
        "table-effects",
        "Decisions before and after, by effect",
        ("effect", "before", "after", "change"),
        [(e, b, a, f"{c:+,}" if c else "0") for e, b, a, c in rows],
        numeric=(1, 2),
    )
    transitions = _table(
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
    table = _table(
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
    return _table(
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
    return f'<section id="{section_id}"><h2>{_e(title)}</h2>{table}</section>'


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
        f'<p class="note">{_n(omitted)} more groups are in the JSON report.</p>'
        if omitted > 0
        else ""
    )
    table = _table(
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
    table = _table(
        "table-reason-changes",
        "Same effect, another reason",
        ("effect", "reason before", "reason after", "records"),
        rows[:TABLE_ROWS],
        numeric=(3,),
    )
    return f'<section id="reason-changes"><h2>Same effect, another reason</h2>{table}</section>'


def _cannot_decide(report: dict[str, Any]) -> str:
    cannot = report["cannot_decide"]
    why = _table(
        "table-cannot-why",
        "Why records could not be decided",
        ("why", "records"),
        [(w["why"], w["count"]) for w in cannot["by_why"]],
        numeric=(1,),
    )
    listed = cannot["records"][:TABLE_ROWS]
    records = _table(
        "table-cannot-records",
        "Records that could not be decided",
        ("decision", "time", "effect before", "file", "line", "why"),
        [(r["decision_id"], r["at"], r["effect"], r["file"], r["line"], r["why"]) for r in listed],
        numeric=(4,),
        compact=True,
    )
    omitted = cannot["count"] - len(listed)
    note = (
        f'<p class="note">{_n(omitted)} more are counted above and not listed here.</p>'
        if omitted > 0
        else ""
    )
    return (
        f'<section id="cannot-decide"><h2>Cannot be decided ({_n(cannot["count"])})</h2>'
        "<p>These records lack evidence the new pack needs. They are counted, never guessed.</p>"
        f"{why}{records}{note}</section>"
    )


def _refusals(report: dict[str, Any]) -> str:
    refusals = report["gate_refusals"]
    table = _table(
        "table-refusals",
        "Refused by the gate before any policy ran",
        ("reason", "rule", "status", "records"),
        [(r["reason"], r["rule"], r["status"], r["count"]) for r in refusals["by_reason"]],
        numeric=(3,),
    )
    return (
        '<section id="refusals"><h2>Not policy decisions</h2>'
        "<p>Requests the gate refused before the policy ran (bad tokens, bad bodies, audit "
        f"unavailable) and {_n(report['listings'])} model listings: no pack decides these "
        f"differently.</p>{table}</section>"
    )


def _chain(report: dict[str, Any]) -> str:
    chain = report["chain"]
    if not chain["findings"]:
        body = '<p class="ok">The hash chain of the audit files is intact.</p>'
    else:
        unread = unread_note(report)
        replayed = f"{_e(unread)}." if unread else "The records were replayed all the same."
        body = (
            '<p class="bad">The hash chain does not hold everywhere: records may have been '
            f"edited, removed or reordered. {replayed} Check the files with "
            "<code>aidr-gate audit verify</code>.</p>"
            + _table(
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
    files = _table(
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
