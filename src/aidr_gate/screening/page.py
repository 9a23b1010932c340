"""The screening review report as one self-contained HTML page, for a compliance officer.

The page's shell (head, styles, sortable tables, footer) is ``pages/shell.py``'s: everything
inline, nothing fetched. Each hit to review shows the screened name, the listed name, the score
and why they matched, the entry's details, and the registry text that records a decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aidr_gate.pages.shell import card_list, esc, number, page, sortable_table

_EXTRA_STYLE = """
.card.potential .value { color: #b9770e; } .card.listed .value { color: #b03a2e; }
.hit { border: 1px solid #ccc; border-radius: 6px; padding: .5rem .9rem; margin: .8rem 0; }
.hit h3 { font-size: 1rem; margin: .2rem 0 .4rem; }
.score { font-weight: 600; font-variant-numeric: tabular-nums; }
pre.snippet { background: #f2f4f6; padding: .5rem .7rem; overflow-x: auto; font-size: .82rem; }
dl.entry { display: grid; grid-template-columns: max-content 1fr; gap: .1rem .8rem; margin: .3rem 0; }
dl.entry dt { color: #555; } dl.entry dd { margin: 0; }
"""
MAX_HIT_CARDS = 500  # hits shown in full; the CSV and JSON reports hold them all


def render_html(report: dict[str, Any]) -> str:
    """The self-contained review page for a screening report (see ``report.build_report``)."""
    lists = report["lists"]
    title = f"Screening review: {report['registry']}"
    return page(
        title=title,
        generator="screen",
        style=_EXTRA_STYLE,
        header=(
            f"<h1>Restricted-party screening: {esc(report['registry'])}</h1>",
            f'<p class="sub">{number(report["entities"])} entities, '
            f"{number(report['names_screened'])} names screened against "
            f"{number(lists['entries'])} list entries, list version "
            f'<span class="mono" id="list-version">{esc(lists["date"])} '
            f"{esc(lists['digest'])}</span>, match threshold "
            f"{report['threshold']:g}/100.</p>",
            _lists_table(lists),
        ),
        main=(
            _cards(report["totals"]),
            _pending(report),
            _decided(report),
            _ownership(report),
            _gaps(report),
            _stale(report),
            _how_to_record(),
        ),
        generated_at=report["generated_at"],
        report_format=report["format"],
        colophon=f" in {report['seconds']} s. A hit is evidence for a person to review, not a "
        "finding.",
    )


def _lists_table(lists: dict[str, Any]) -> str:
    rows = [
        (s["name"], s["format"], s["entries"], s["date"], s["date_basis"], s["digest"])
        for s in lists["sources"]
    ]
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in lists["notes"])
    table = sortable_table(
        "table-lists",
        "Lists screened against (each decision that uses them records this version)",
        ("file", "format", "entries", "dated", "date from", "digest"),
        rows,
        numeric=(2,),
        compact=True,
    )
    return table + notes


def _cards(totals: dict[str, int]) -> str:
    cards = [
        ("potential", "hits to review", totals["potential"]),
        ("entities", "entities with hits to review", totals["entities_to_review"]),
        ("listed", "entities confirmed listed", totals["listed"]),
        ("owned", "owned 50%+ by listed parties", totals["owned_by_listed"]),
        (
            "maybe-owned",
            "would be, if owner hits are confirmed",
            totals["potential_owned_by_listed"],
        ),
        ("confirmed", "hits confirmed", totals["confirmed"]),
        ("cleared", "hits cleared (false positives)", totals["cleared"]),
        ("unknown", "ownership unknown", totals["ownership_unknown"]),
        ("partial", "ownership partial", totals["ownership_partial"]),
        ("stale", "stale reviews", totals["stale_reviews"]),
    ]
    return f'<section id="totals"><h2>Totals</h2>{card_list(cards, id_prefix="total-")}</section>'


def _entry_detail(detail: dict[str, Any] | None) -> str:
    if detail is None:
        return "<p>The entry is no longer on the lists.</p>"
    fields: Sequence[tuple[str, object]] = (
        ("list", detail["source"]),
        ("type", detail["type"]),
        ("programs", ", ".join(detail["programs"]) or "–"),
        ("countries", ", ".join(detail["countries"]) or "–"),
        ("addresses", "; ".join(detail["addresses"]) or "–"),
        ("other names", "; ".join(detail["aliases"]) or "–"),
        ("listed on", detail["start_date"] or "–"),
        ("born", "; ".join(detail["birth_dates"]) or "–"),
        ("in file", f"{detail['file']}:{detail['line']}"),
    )
    rows = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in fields)
    return f'<dl class="entry">{rows}</dl>'


def _hit_card(index: int, hit: dict[str, Any]) -> str:
    agree = {True: "yes", False: "no", None: "not known"}[hit["countries_agree"]]
    snippet = (
        "<p>To record a decision, add to the entity in the registry:</p>"
        f'<pre class="snippet">{esc(hit["snippet"])}</pre>'
        if hit["snippet"]
        else ""
    )
    return (
        f'<article class="hit" id="hit-{index}" data-entity="{esc(hit["entity"])}" '
        f'data-entry="{esc(hit["entry"])}" data-score="{hit["score"]}">'
        f"<h3>{esc(hit['entity'])}: {esc(hit['name'])} ~ {esc(hit['listed_name'])}</h3>"
        f"<p>Screened <code>{esc(hit['name_field'])}</code> ({esc(hit['subject'])}) matched the "
        f"{esc(hit['listed_field'])} of <code>{esc(hit['entry'])}</code> with score "
        f'<span class="score">{hit["score"]:g}</span> ({esc(hit["method"])}): '
        f"{esc('; '.join(hit['reasons']) or 'the same words')}. Country in common: {agree}.</p>"
        f"{_entry_detail(hit['entry_detail'])}{snippet}</article>"
    )


def _pending(report: dict[str, Any]) -> str:
    pending = [h for h in report["hits"] if h["state"] == "potential"]
    table = sortable_table(
        "table-pending",
        "Hits to review (unreviewed: packs see them as potential hits)",
        ("entity", "field", "name", "entry", "listed name", "score", "method"),
        [
            (h["entity"], h["name_field"], h["name"], h["entry"], h["listed_name"],
             f"{h['score']:g}", h["method"])
            for h in pending
        ],
    )  # fmt: skip
    cards = "".join(_hit_card(i, h) for i, h in enumerate(pending[:MAX_HIT_CARDS]))
    more = len(pending) - MAX_HIT_CARDS
    note = (
        f'<p class="note">{number(more)} more hits are in the CSV report.</p>' if more > 0 else ""
    )
    return f'<section id="pending"><h2>Hits to review</h2>{table}{cards}{note}</section>'


def _decided(report: dict[str, Any]) -> str:
    rows = [
        (h["state"], h["entity"], h["name"], h["entry"], h["listed_name"], f"{h['score']:g}",
         (h["review"] or {}).get("by", ""), (h["review"] or {}).get("at", ""),
         (h["review"] or {}).get("why", ""))
        for h in report["hits"]
        if h["state"] != "potential"
    ]  # fmt: skip
    table = sortable_table(
        "table-decided",
        "Hits decided by a recorded review",
        ("decision", "entity", "name", "entry", "listed name", "score", "by", "at", "why"),
        rows,
    )
    return f'<section id="decided"><h2>Reviewed hits</h2>{table}</section>'


def _ownership(report: dict[str, Any]) -> str:
    rows = [
        (r["entity"], r["name"] or "", f"{r['listed_share']:g}%",
         "yes" if r["owned_by_listed"] else ("if owner hits are confirmed"
                                             if r["potential_owned_by_listed"] else "no"),
         " ← ".join(r["path"]))
        for r in report["ownership"]
    ]  # fmt: skip
    table = sortable_table(
        "table-ownership",
        "Entities in which listed parties hold shares (50% or more in aggregate: treated as "
        "listed, the Affiliates rule and OFAC's 50 Percent Rule)",
        ("entity", "name", "listed share", "treated as listed", "path"),
        rows,
    )
    return f'<section id="ownership"><h2>Ownership by listed parties</h2>{table}</section>'


def _gaps(report: dict[str, Any]) -> str:
    gaps = report["ownership_gaps"]
    table = sortable_table(
        "table-gaps",
        "Entities whose owners are not all known (BIS Red Flag 29)",
        ("entity", "name", "ownership"),
        [(g["entity"], g["name"] or "", g["ownership"]) for g in gaps[:1000]],
    )
    return f'<section id="gaps"><h2>Unknown or partial ownership</h2>{table}</section>'


def _stale(report: dict[str, Any]) -> str:
    table = sortable_table(
        "table-stale",
        "Reviews that decide nothing today (the entry left the lists, or the hit is gone)",
        ("entity", "entry", "decision", "name", "by", "at", "why"),
        [
            (r["entity"], r["entry"], r["decision"], r["name"] or "", r["by"], r["at"], r["why"])
            for r in report["stale_reviews"]
        ],
    )
    return f'<section id="stale"><h2>Stale reviews</h2>{table}</section>'


def _how_to_record() -> str:
    return (
        '<section id="how"><h2>How to record a decision</h2>'
        "<p>Each decision is a line under the entity's <code>screening_reviews</code> in the "
        "registry file: the entry (<code>list:id</code>), the name that was screened, "
        "<code>confirmed</code> (the entity, or the owner named, is the listed party: requests "
        "are denied <code>RESTRICTED_PARTY</code>) or <code>false-positive</code> (a different "
        "party: cleared for that entry and that name only), who decided, when, and why. A "
        "confirmed owner counts toward the 50% ownership test. Reload the registry (or wait for "
        "the gate to see the change) and screen again: decided hits move to "
        "<a href='#decided'>Reviewed hits</a>.</p></section>"
    )
