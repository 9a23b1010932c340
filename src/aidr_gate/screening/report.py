"""The screening review report: what a compliance officer reads, decides and records.

``build_report`` turns a screening run into a plain JSON-ready dict (the one input of the terminal
summary, the CSV and the HTML page), with, for every hit, the explanation and the registry text
that records a decision on it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Collection, Iterable
from datetime import UTC, datetime
from typing import Any

from aidr_gate.registry import Entity, OwnershipStatus
from aidr_gate.screening.facts import ScreeningFacts, ScreeningTable
from aidr_gate.screening.screen import Hit, HitState, ScreeningRun
from aidr_gate.screening.store import ListSnapshot

REPORT_FORMAT = 1
CSV_COLUMNS = (
    "state",
    "entity",
    "subject",
    "name_field",
    "name",
    "entry",
    "listed_name",
    "listed_field",
    "score",
    "method",
    "reasons",
    "entry_type",
    "programs",
    "entry_countries",
    "countries_agree",
    "source",
    "reviewed_by",
    "reviewed_at",
    "review_why",
)


def _yaml_text(value: str) -> str:
    """A double-quoted YAML scalar (JSON string syntax is valid YAML)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def review_snippet(hit: Hit, today: str) -> str:
    """The registry text that records a decision on *hit*, to paste under the entity."""
    return (
        f"    screening_reviews:\n"
        f"      - entry: {_yaml_text(hit.entry)}\n"
        f"        name: {_yaml_text(hit.name)}\n"
        f"        decision: confirmed  # or: false-positive\n"
        f"        by: {_yaml_text('your.name')}\n"
        f"        at: {today}\n"
        f"        why: {_yaml_text('what you checked (registry number, address, date of birth)')}\n"
    )


def _hit_row(hit: Hit, snapshot: ListSnapshot, today: str) -> dict[str, Any]:
    row = hit.to_dict()
    entry = snapshot.get(hit.entry)
    row["entry_detail"] = (
        {
            "list": entry.list,
            "source": entry.source,
            "type": entry.type.value,
            "name": entry.name,
            "aliases": [a.name for a in entry.aliases][:12],
            "programs": list(entry.programs),
            "countries": sorted(entry.countries),
            "addresses": [a.text for a in entry.addresses][:5],
            "start_date": entry.start_date,
            "birth_dates": list(entry.birth_dates),
            "file": entry.file,
            "line": entry.line,
        }
        if entry is not None
        else None
    )
    row["snippet"] = review_snippet(hit, today) if hit.state is HitState.POTENTIAL else None
    return row


def _ownership_rows(entities: dict[str, Entity], table: ScreeningTable) -> list[dict[str, Any]]:
    rows = []
    for entity_id in sorted(entities):
        facts = table.get(entity_id)
        finding = table.findings.get(entity_id)
        if finding is None and not facts.potential_owned_by_listed:
            continue
        rows.append(
            {
                "entity": entity_id,
                "name": entities[entity_id].name,
                "owned_by_listed": facts.owned_by_listed,
                "potential_owned_by_listed": facts.potential_owned_by_listed,
                "listed_share": facts.listed_share,
                "path": list(finding.path) if finding is not None else [],
                "links": [link.to_dict() for link in finding.links] if finding else [],
            }
        )
    return rows


# Totals of entities by one screening fact of theirs, in the report's order.
_FACT_TOTALS: tuple[tuple[str, Callable[[ScreeningFacts], bool]], ...] = (
    ("entities_to_review", lambda f: f.potential_hit),
    ("listed", lambda f: f.listed),
    ("owned_by_listed", lambda f: f.owned_by_listed),
    ("potential_owned_by_listed", lambda f: f.potential_owned_by_listed),
    ("ownership_unknown", lambda f: f.ownership_unknown),
    ("ownership_partial", lambda f: f.ownership_partial),
)


def _totals(
    hits: list[dict[str, Any]], facts: Collection[ScreeningFacts], stale: int
) -> dict[str, int]:
    states = [h["state"] for h in hits]
    out = {
        "hits": len(hits),
        "potential": states.count(HitState.POTENTIAL.value),
        "confirmed": states.count(HitState.CONFIRMED.value),
        "cleared": states.count(HitState.CLEARED.value),
    }
    for name, holds in _FACT_TOTALS:
        out[name] = sum(1 for f in facts if holds(f))
    out["stale_reviews"] = stale
    return out


def build_report(
    entities: Iterable[Entity],
    snapshot: ListSnapshot,
    run: ScreeningRun,
    table: ScreeningTable,
    *,
    registry_source: str = "<registry>",
    now: datetime | None = None,
) -> dict[str, Any]:
    """The whole review report as a JSON-ready dict."""
    moment = now or datetime.now(UTC)
    today = moment.date().isoformat()
    by_id = {e.id: e for e in entities}
    hits = [_hit_row(h, snapshot, today) for h in run.hits()]
    order = {HitState.POTENTIAL.value: 0, HitState.CONFIRMED.value: 1, HitState.CLEARED.value: 2}
    hits.sort(key=lambda h: (order[h["state"]], -h["score"], h["entity"], h["name_field"]))
    facts = {eid: table.get(eid) for eid in by_id}
    stale = [
        {"entity": r.entity, **review.to_dict()}
        for r in run.results.values()
        for review in r.stale_reviews
    ]
    gaps = [
        {"entity": e.id, "name": e.name, "ownership": e.ownership.value}
        for e in by_id.values()
        if e.ownership is not OwnershipStatus.COMPLETE
    ]
    return {
        "format": REPORT_FORMAT,
        "generated_at": moment.isoformat(timespec="seconds"),
        "registry": registry_source,
        "entities": len(by_id),
        "names_screened": run.names_screened,
        "threshold": run.threshold,
        "seconds": round(run.seconds, 3),
        "lists": {**run.version.to_dict(), "entries": len(snapshot), "notes": list(snapshot.notes)},
        "totals": _totals(hits, facts.values(), len(stale)),
        "hits": hits,
        "ownership": _ownership_rows(by_id, table),
        "ownership_gaps": gaps,
        "stale_reviews": stale,
    }


def summary(report: dict[str, Any], top: int = 20) -> str:
    """The terminal summary: the lists, the totals, and the hits to review first."""
    lists, totals = report["lists"], report["totals"]
    lines = [
        f"Screened {report['entities']:,} entities ({report['names_screened']:,} names) from "
        f"{report['registry']} against {lists['entries']:,} list entries "
        f"(version {lists['date']} {lists['digest'][:19]}, threshold {report['threshold']:g}) "
        f"in {report['seconds']:.1f} s.",
    ]
    for source in lists["sources"]:
        lines.append(
            f"  list {source['name']}: {source['format']}, {source['entries']:,} entries, "
            f"dated {source['date']} ({source['date_basis']}), {source['digest'][:19]}"
        )
    lines += [f"  note: {note}" for note in lists["notes"]]
    lines.append(
        f"Hits: {totals['potential']:,} to review, {totals['confirmed']:,} confirmed, "
        f"{totals['cleared']:,} cleared as false positives. Entities: {totals['listed']:,} "
        f"listed, {totals['owned_by_listed']:,} owned 50%+ by listed parties, "
        f"{totals['entities_to_review']:,} with hits to review, "
        f"{totals['potential_owned_by_listed']:,} that would be owned 50%+ if owner hits are "
        f"confirmed; ownership unknown for {totals['ownership_unknown']:,}, partial for "
        f"{totals['ownership_partial']:,}; {totals['stale_reviews']:,} stale review(s)."
    )
    pending = [h for h in report["hits"] if h["state"] == HitState.POTENTIAL.value]
    if pending:
        lines.append(f"To review (best first, {min(top, len(pending))} of {len(pending)}):")
    for hit in pending[:top]:
        lines.append(
            f"  {hit['entity']} {hit['name_field']} {hit['name']!r} ~ {hit['entry']} "
            f"{hit['listed_name']!r} ({hit['listed_field']}): {hit['score']:g} {hit['method']}; "
            + "; ".join(hit["reasons"])
        )
    for row in report["ownership"]:
        if row["owned_by_listed"]:
            lines.append(
                f"  {row['entity']}: owned {row['listed_share']:g}% by listed parties: "
                + " <- ".join(row["path"])
            )
    if pending:
        lines.append(
            "Record each decision in the registry under the entity's screening_reviews "
            "(entry, name, decision: confirmed or false-positive, by, at, why)."
        )
    return "\n".join(lines)


def _cell(value: object) -> str:
    """A text cell a spreadsheet shows as text: a leading = + - @ would make it a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def render_csv(report: dict[str, Any]) -> str:
    """One row per hit, for a spreadsheet: the explanation and any recorded review."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for hit in report["hits"]:
        detail = hit["entry_detail"] or {}
        review = hit["review"] or {}
        writer.writerow(
            _cell(value)
            for value in [
                hit["state"],
                hit["entity"],
                hit["subject"],
                hit["name_field"],
                hit["name"],
                hit["entry"],
                hit["listed_name"],
                hit["listed_field"],
                f"{hit['score']:g}",
                hit["method"],
                "; ".join(hit["reasons"]),
                detail.get("type", ""),
                "; ".join(detail.get("programs", [])),
                " ".join(detail.get("countries", [])),
                "" if hit["countries_agree"] is None else str(hit["countries_agree"]).lower(),
                detail.get("source", ""),
                review.get("by", ""),
                review.get("at", ""),
                review.get("why", ""),
            ]
        )
    return out.getvalue()
