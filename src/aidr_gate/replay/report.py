"""The replay report: one JSON document, and the terminal summary and progress bar built on it.

The JSON report (``format: "aidr-gate.replay/1"``) is the single source of every number shown;
the terminal summary and the HTML report (``replay/html.py``) render it. Its shape::

    format            "aidr-gate.replay/1"
    generated_at      ISO 8601 time the report was made
    pack              the pack replayed to: id, title, status, digest, effective {from, until},
                      extends (the packs it builds on, nearest first)
    recorded_packs    [{id, digest, status, records, title, effective}]: the packs the records
                      were decided under (title and window when a bundled pack matches the digest)
    screening_lists   [{version, records}]: the restricted-party list versions ("date/sha256:...")
                      the re-decided records saw, "(none)" for records without screening
    registry, catalog file names given with --registry/--catalog, or null (evidence as recorded)
    at                ISO time every record was re-decided at (--at), or null (each its own time)
    files             [{path, lines, records, first_seq, last_seq, torn, error}] in chain order
    range             {first, last}: the earliest and latest decision times read
    totals            lines, records, policy_decisions, replayed, cannot_decide, gate_refusals,
                      listings, checkpoints, unreadable, not_records, flips, outside_pack_window
                      (records are the JSON lines: policy decisions, gate refusals, listings,
                      checkpoints and not_records, JSON lines without an aidr tree; unreadable
                      lines are not JSON objects)
    effects           {before: {allow, log, deny}, after: {allow, log, deny}} over replayed records
    transitions       [{from, to, count}] for every (before, after) pair seen
    flips             by_kind {"allow->deny": n, ...}; by_direction {cut_off, let_in, log_change};
                      by_entity, by_country, by_effective_tier, by_model, by_model_tier, by_reason:
                      [{value, total, by_kind}] largest first; groups: [{kind, from, to, entity,
                      country, effective_tier, model, model_tier_before, model_tier, reason_before,
                      reason, count, first, last, sample_decision_id}] largest first (at most
                      MAX_GROUPS; groups_omitted counts the rest)
    top_entities      [{entity, records, flips, cut_off, let_in, log_change, share}]
    reason_changes    [{effect, reason_before, reason, count}]: same effect, another reason
    cannot_decide     {count, before: {effect: n}, by_why: [{why, count}], records: [{decision_id,
                      at, effect, file, line, why}] (at most 1000), records_omitted}
    gate_refusals     {count, by_reason: [{reason, rule, status, count}]}
    listings          model listings (GET /v1/models), not re-decided
    chain             {ok, errors, warnings, findings: [audit verify findings]}
    elapsed_seconds, records_per_second

Flip kinds are ``before->after``. A flip's ``reason`` is the new reason when the new effect is
more restrictive (why it is now denied or flagged) and the old one otherwise (what no longer
applies). Countries are ISO codes, ``(unknown)`` when the request's country was not known; an
effective tier is ``(none)`` under a pack without country tiers (or with no country known).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any, TextIO

from aidr_gate.document import Checker, format_timestamp
from aidr_gate.errors import ConfigError
from aidr_gate.policy.pack import bundled_pack_dir, load_pack
from aidr_gate.replay.diff import pack_ref, pack_window, window_text
from aidr_gate.replay.run import EFFECTS, RANK, ReplayResult

FORMAT = "aidr-gate.replay/1"
MAX_GROUPS = 5000
KINDS: tuple[str, ...] = (
    "allow->deny",
    "log->deny",
    "deny->allow",
    "deny->log",
    "allow->log",
    "log->allow",
)
DIRECTIONS: tuple[str, ...] = ("cut_off", "let_in", "log_change")
DIRECTION_LABELS = {
    "cut_off": "cut off (now denied)",
    "let_in": "let in (no longer denied)",
    "log_change": "flagging changed (allow/log)",
}
DIMENSIONS: tuple[tuple[str, str], ...] = (
    ("by_entity", "entity"),
    ("by_country", "network country"),
    ("by_effective_tier", "effective tier (new pack)"),
    ("by_model", "model"),
    ("by_model_tier", "model tier (new pack)"),
    ("by_reason", "reason"),
)


def direction(kind: str) -> str:
    """``cut_off`` (now denied), ``let_in`` (no longer denied) or ``log_change``."""
    before, _, after = kind.partition("->")
    if after == "deny":
        return "cut_off"
    if before == "deny":
        return "let_in"
    return "log_change"


def _time(seconds: float | None) -> str | None:
    return None if seconds is None else format_timestamp(seconds)


def bundled_pack_info(pack_id: str, digest: str) -> dict[str, Any]:
    """Title and window of a recorded pack, when a bundled pack has that id and digest."""
    info: dict[str, Any] = {"title": None, "effective": None}
    # Only pack ids, and only the bundled file of that name: never a path taken from a record
    # (an id like ``mine.yaml`` is a valid id, and load_pack would read it from the current
    # directory).
    if not Checker.IDENT.match(pack_id):
        return info
    path = bundled_pack_dir() / f"{pack_id}.yaml"
    if not path.is_file():
        return info
    try:
        pack = load_pack(path)
    except ConfigError:
        return info
    if pack.digest == digest:
        info["title"] = pack.title
        info["effective"] = pack_window(pack)
    return info


def _ranked(counts: dict[str, Counter[str]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {"value": value, "total": sum(kinds.values()), "by_kind": dict(kinds)}
        for value, kinds in counts.items()
    ]
    rows.sort(key=lambda row: (-row["total"], row["value"]))
    return rows


def build_report(result: ReplayResult, *, top: int = 10) -> dict[str, Any]:
    """The JSON report of a finished replay (shape in the module docstring)."""
    tally = result.tally
    options = result.options
    pack = options.pack
    before: Counter[str] = Counter()
    after: Counter[str] = Counter()
    for (old, new), count in tally.transitions.items():
        before[old] += count
        after[new] += count
    by_kind: Counter[str] = Counter()
    dims: dict[str, dict[str, Counter[str]]] = {name: {} for name, _ in DIMENSIONS}
    entity_dirs: dict[str, Counter[str]] = {}
    groups: list[dict[str, Any]] = []
    for key, stats in tally.flips.items():
        kind, entity, country, eff_tier, model, old_tier, new_tier, old_reason, new_reason = key
        old, _, new = kind.partition("->")
        reason = new_reason if RANK[new] > RANK[old] else old_reason
        count = stats.count
        by_kind[kind] += count
        for name, value in (
            ("by_entity", entity),
            ("by_country", country),
            ("by_effective_tier", eff_tier),
            ("by_model", model),
            ("by_model_tier", new_tier),
            ("by_reason", reason),
        ):
            dims[name].setdefault(value, Counter())[kind] += count
        entity_dirs.setdefault(entity, Counter())[direction(kind)] += count
        groups.append(
            {
                "kind": kind,
                "from": old,
                "to": new,
                "entity": entity,
                "country": country,
                "effective_tier": eff_tier,
                "model": model,
                "model_tier_before": old_tier,
                "model_tier": new_tier,
                "reason_before": old_reason,
                "reason": new_reason,
                "count": count,
                "first": _time(stats.first),
                "last": _time(stats.last),
                "sample_decision_id": stats.sample,
            }
        )
    groups.sort(key=lambda g: (-g["count"], g["kind"], g["entity"], g["country"], g["model"]))
    by_direction: Counter[str] = Counter()
    for kind, count in by_kind.items():
        by_direction[direction(kind)] += count
    top_entities: list[dict[str, Any]] = []
    for entity, dirs in entity_dirs.items():
        flips = sum(dirs.values())
        records = tally.entity_records.get(entity, 0)
        top_entities.append(
            {
                "entity": entity,
                "records": records,
                "flips": flips,
                "cut_off": dirs["cut_off"],
                "let_in": dirs["let_in"],
                "log_change": dirs["log_change"],
                "share": round(flips / records, 4) if records else None,
            }
        )
    top_entities.sort(key=lambda row: (-row["flips"], row["entity"]))
    refusals = [
        {"reason": reason, "rule": rule, "status": status, "count": count}
        for (reason, rule, status), count in tally.refusals.most_common()
    ]
    cannot = sum(tally.cannot_decide.values())
    errors = [f for f in result.findings if f.severity == "error"]
    warnings = [f for f in result.findings if f.severity != "error"]
    replayed = tally.replayed
    return {
        "format": FORMAT,
        "generated_at": _time(time.time()),
        "pack": pack_ref(pack),
        "recorded_packs": [
            {
                "id": str(pid),
                "digest": str(digest),
                "status": str(status),
                "records": count,
                **bundled_pack_info(str(pid), str(digest)),
            }
            for (pid, digest, status), count in tally.recorded_packs.most_common()
        ],
        # Which restricted-party lists the re-decided records saw (their screening evidence).
        "screening_lists": [
            {"version": version, "records": count}
            for version, count in tally.list_versions.most_common()
        ],
        "registry": options.registry_source,
        "catalog": options.catalog_source,
        "at": _time(options.at),
        "files": [
            {
                "path": str(chain.path),
                "lines": chain.lines,
                "records": chain.chained,
                "first_seq": chain.first_seq,
                "last_seq": chain.last_seq,
                "torn": chain.torn,
                "error": chain.error,
            }
            for chain in result.chains
        ],
        "range": {"first": _time(tally.first_at), "last": _time(tally.last_at)},
        "totals": {
            "lines": tally.lines,
            "records": tally.records,
            "policy_decisions": replayed + cannot,
            "replayed": replayed,
            "cannot_decide": cannot,
            "gate_refusals": sum(tally.refusals.values()),
            "listings": tally.listings,
            "checkpoints": tally.checkpoints,
            "unreadable": tally.unreadable,
            "not_records": tally.not_records,
            "flips": tally.flip_count,
            "outside_pack_window": tally.outside_window,
        },
        "effects": {
            "before": {e: before[e] for e in EFFECTS},
            "after": {e: after[e] for e in EFFECTS},
        },
        "transitions": [
            {"from": old, "to": new, "count": count}
            for (old, new), count in sorted(
                tally.transitions.items(), key=lambda item: (-item[1], item[0])
            )
        ],
        "flips": {
            "by_kind": {k: by_kind[k] for k in KINDS if by_kind[k]},
            "by_direction": {d: by_direction[d] for d in DIRECTIONS},
            **{name: _ranked(dims[name]) for name, _ in DIMENSIONS},
            "groups": groups[:MAX_GROUPS],
            "groups_omitted": max(0, len(groups) - MAX_GROUPS),
        },
        "top_entities": top_entities[:top],
        "reason_changes": [
            {"effect": effect, "reason_before": old, "reason": new, "count": count}
            for (effect, old, new), count in tally.reason_changes.most_common()
        ],
        "cannot_decide": {
            "count": cannot,
            "before": {e: n for e, n in tally.cannot_before.items() if n},
            "by_why": [{"why": why, "count": n} for why, n in tally.cannot_decide.most_common()],
            "records": [{**item, "at": _time(item["at"])} for item in tally.cannot_list],
            "records_omitted": max(0, cannot - len(tally.cannot_list)),
        },
        "gate_refusals": {"count": sum(tally.refusals.values()), "by_reason": refusals},
        "listings": tally.listings,
        "chain": {
            "ok": not errors,
            "errors": len(errors),
            "warnings": len(warnings),
            "findings": [f.to_dict() for f in result.findings],
        },
        "elapsed_seconds": round(result.elapsed, 3),
        "records_per_second": round(result.records_per_second),
    }


# -- terminal ------------------------------------------------------------------------------------


def _n(value: int) -> str:
    return f"{value:,}"


def _short(digest: str) -> str:
    return digest[:19] + "…" if len(digest) > 20 else digest


def _table(headers: Iterable[str], rows: Iterable[Iterable[object]], indent: str = "  ") -> str:
    head = [str(h) for h in headers]
    body = [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = []
    for row in [head, *body]:
        cells = [
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ]
        lines.append(indent + "  ".join(cells).rstrip())
    return "\n".join(lines)


def unread_note(report: dict[str, Any]) -> str | None:
    """What the report says of files that could not be read to the end (None: there are none)."""
    unread = sum(1 for f in report["files"] if f["error"])
    if not unread:
        return None
    return (
        f"{unread} file(s) could not be read to the end: the records after the damage were not "
        "replayed"
    )


def summary(report: dict[str, Any], *, top: int = 10) -> str:
    """The terminal summary of a report."""
    pack = report["pack"]
    totals = report["totals"]
    span = report["range"]
    out = []
    when = f" as of {report['at']}" if report["at"] else ""
    out.append(
        f"Replay under {pack['id']} ({pack['status']}, {_short(pack['digest'])}){when}: "
        f"{_n(totals['lines'])} lines from {len(report['files'])} file(s), "
        f"{(span['first'] or '-')[:10]} .. {(span['last'] or '-')[:10]}"
    )
    for recorded in report["recorded_packs"]:
        out.append(
            f"  recorded under {recorded['id']} ({recorded['status']}, "
            f"{_short(recorded['digest'])}): {_n(recorded['records'])} records"
        )
    screened = [row for row in report.get("screening_lists", []) if row["version"] != "(none)"]
    for row in screened:
        out.append(f"  screening lists {row['version']}: {_n(row['records'])} records")
    if report["registry"] or report["catalog"]:
        out.append(
            f"  registry: {report['registry'] or 'as recorded'}; "
            f"catalogue: {report['catalog'] or 'as recorded'}"
        )
    out.append("")
    effects = report["effects"]
    out.append(
        _table(
            ("effect", "before", "after", "change"),
            (
                (e, _n(effects["before"][e]), _n(effects["after"][e]), _signed(effects, e))
                for e in EFFECTS
            ),
        )
    )
    flips = report["flips"]
    replayed = totals["replayed"]
    share = f" ({totals['flips'] / replayed:.1%})" if replayed else ""
    out.append("")
    out.append(f"Flips: {_n(totals['flips'])} of {_n(replayed)} re-decided{share}")
    for kind, count in flips["by_kind"].items():
        out.append(f"  {kind:12} {_n(count):>10}")
    if totals["flips"]:
        rows = report["top_entities"][:top]
        out.append("")
        out.append("Top entities affected")
        out.append(
            _table(
                ("entity", "flips", "cut off", "let in", "log", "records"),
                (
                    (
                        r["entity"],
                        _n(r["flips"]),
                        _n(r["cut_off"]),
                        _n(r["let_in"]),
                        _n(r["log_change"]),
                        _n(r["records"]),
                    )
                    for r in rows
                ),
            )
        )
        for name, label in (
            ("by_country", "network country"),
            ("by_effective_tier", "effective tier"),
            ("by_model_tier", "model tier"),
            ("by_model", "model"),
            ("by_reason", "reason"),
        ):
            items = flips[name][:top]
            text = ", ".join(f"{row['value']} {_n(row['total'])}" for row in items)
            more = len(flips[name]) - len(items)
            out.append(f"By {label}: {text}" + (f" (+{more} more)" if more > 0 else ""))
    out.append("")
    refusals = report["gate_refusals"]
    detail = ", ".join(f"{r['reason']} {_n(r['count'])}" for r in refusals["by_reason"][:6])
    out.append(
        f"Not re-decided: {_n(refusals['count'])} gate refusals"
        + (f" ({detail})" if detail else "")
        + f", {_n(report['listings'])} model listings, {_n(totals['checkpoints'])} checkpoints"
    )
    if totals["unreadable"] or totals["not_records"]:
        out.append(
            f"Not records: {_n(totals['unreadable'])} line(s) that are not JSON objects, "
            f"{_n(totals['not_records'])} JSON line(s) without an aidr tree"
        )
    cannot = report["cannot_decide"]
    if cannot["count"]:
        why = "; ".join(f"{w['why']} ({_n(w['count'])})" for w in cannot["by_why"][:5])
        out.append(f"Cannot decide: {_n(cannot['count'])} record(s): {why}")
    if totals["outside_pack_window"]:
        out.append(
            f"Note: {_n(totals['outside_pack_window'])} records fall outside the legal window of "
            f"{pack['id']} ({window_text(pack['effective'])})"
        )
    chain = report["chain"]
    if chain["findings"]:
        replayed_note = unread_note(report) or "the records were replayed all the same"
        out.append(
            f"Chain: {chain['errors']} problem(s), {chain['warnings']} warning(s) "
            f"({replayed_note}):"
        )
        for finding in chain["findings"][:10]:
            out.append(
                f"  {finding['severity']}: {finding['file']}:{finding['line']}: "
                f"{finding['kind']}: {finding['message']}"
            )
    else:
        out.append("Chain: intact")
    return "\n".join(out)


def _signed(effects: dict[str, dict[str, int]], effect: str) -> str:
    change = effects["after"][effect] - effects["before"][effect]
    return f"{change:+,}" if change else "0"


class ProgressBar:
    """A one-line progress bar on stderr, drawn only on a terminal (or when forced)."""

    def __init__(
        self, stream: TextIO | None = None, *, enabled: bool | None = None, interval: float = 0.2
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.interval = interval
        self._started = time.monotonic()
        self._drawn: float | None = None  # when last drawn; None: never
        self._width = 0

    def update(self, done: int, total: int, records: int, flips: int) -> None:
        """Redraw the bar (at most every *interval* seconds, and always at 100%)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if done < total and self._drawn is not None and now - self._drawn < self.interval:
            return
        self._drawn = now
        fraction = min(1.0, done / total) if total else 1.0
        filled = int(fraction * 30)
        rate = records / max(now - self._started, 1e-6)
        text = (
            f"\r[{'#' * filled}{'.' * (30 - filled)}] {fraction:4.0%} "
            f"{records:,} records, {flips:,} flips, {rate:,.0f}/s"
        )
        self._width = max(self._width, len(text))
        self.stream.write(text.ljust(self._width))
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line."""
        if self.enabled and self._drawn is not None:
            self.stream.write("\n")
            self.stream.flush()
