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
    registry, catalog file names given with --registry/--catalog, or null (evidence as recorded);
    registry_revision the --registry store's revision when replay read it, or null
    recorded_registries [{revision, records}]: the registry revisions the records were decided
                      on (records from before revisions were recorded are not counted)
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TextIO

from aidr_gate.document import Checker, format_timestamp
from aidr_gate.errors import ConfigError
from aidr_gate.policy.pack import bundled_pack_dir, load_pack
from aidr_gate.replay.diff import pack_ref, pack_window, window_text
from aidr_gate.replay.run import EFFECTS, RANK, ReplayResult, Tally

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


@dataclass(frozen=True, slots=True)
class _Flips:
    """The flip groups of a tally, counted every way the report shows them."""

    by_kind: Counter[str]
    dims: dict[str, dict[str, Counter[str]]]  # dimension -> value -> kind -> count
    entity_dirs: dict[str, Counter[str]]  # entity -> direction -> count
    groups: list[dict[str, Any]]  # largest first


@dataclass(frozen=True, slots=True)
class _Inputs:
    """What every section of the report is built from."""

    result: ReplayResult
    top: int
    flips: _Flips
    cannot: int  # records that could not be re-decided

    @property
    def tally(self) -> Tally:
        return self.result.tally


def _count_flips(tally: Tally) -> _Flips:
    flips = _Flips(Counter(), {name: {} for name, _ in DIMENSIONS}, {}, [])
    for key, stats in tally.flips.items():
        kind, entity, country, eff_tier, model, old_tier, new_tier, old_reason, new_reason = key
        old, _, new = kind.partition("->")
        reason = new_reason if RANK[new] > RANK[old] else old_reason
        count = stats.count
        flips.by_kind[kind] += count
        for name, value in (
            ("by_entity", entity),
            ("by_country", country),
            ("by_effective_tier", eff_tier),
            ("by_model", model),
            ("by_model_tier", new_tier),
            ("by_reason", reason),
        ):
            flips.dims[name].setdefault(value, Counter())[kind] += count
        flips.entity_dirs.setdefault(entity, Counter())[direction(kind)] += count
        flips.groups.append(
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
    flips.groups.sort(key=lambda g: (-g["count"], g["kind"], g["entity"], g["country"], g["model"]))
    return flips


def _recorded_packs(inputs: _Inputs) -> list[dict[str, Any]]:
    return [
        {
            "id": str(pid),
            "digest": str(digest),
            "status": str(status),
            "records": count,
            **bundled_pack_info(str(pid), str(digest)),
        }
        for (pid, digest, status), count in inputs.tally.recorded_packs.most_common()
    ]


def _files(inputs: _Inputs) -> list[dict[str, Any]]:
    return [
        {
            "path": str(chain.path),
            "lines": chain.lines,
            "records": chain.chained,
            "first_seq": chain.first_seq,
            "last_seq": chain.last_seq,
            "torn": chain.torn,
            "error": chain.error,
        }
        for chain in inputs.result.chains
    ]


def _totals(inputs: _Inputs) -> dict[str, int]:
    tally = inputs.tally
    return {
        "lines": tally.lines,
        "records": tally.records,
        "policy_decisions": tally.replayed + inputs.cannot,
        "replayed": tally.replayed,
        "cannot_decide": inputs.cannot,
        "gate_refusals": sum(tally.refusals.values()),
        "listings": tally.listings,
        "checkpoints": tally.checkpoints,
        "unreadable": tally.unreadable,
        "not_records": tally.not_records,
        "flips": tally.flip_count,
        "outside_pack_window": tally.outside_window,
    }


def _effects(inputs: _Inputs) -> dict[str, dict[str, int]]:
    before: Counter[str] = Counter()
    after: Counter[str] = Counter()
    for (old, new), count in inputs.tally.transitions.items():
        before[old] += count
        after[new] += count
    return {
        "before": {e: before[e] for e in EFFECTS},
        "after": {e: after[e] for e in EFFECTS},
    }


def _transitions(inputs: _Inputs) -> list[dict[str, Any]]:
    return [
        {"from": old, "to": new, "count": count}
        for (old, new), count in sorted(
            inputs.tally.transitions.items(), key=lambda item: (-item[1], item[0])
        )
    ]


def _flip_section(inputs: _Inputs) -> dict[str, Any]:
    flips = inputs.flips
    by_kind = flips.by_kind
    by_direction: Counter[str] = Counter()
    for kind, count in by_kind.items():
        by_direction[direction(kind)] += count
    return {
        "by_kind": {k: by_kind[k] for k in KINDS if by_kind[k]},
        "by_direction": {d: by_direction[d] for d in DIRECTIONS},
        **{name: _ranked(flips.dims[name]) for name, _ in DIMENSIONS},
        "groups": flips.groups[:MAX_GROUPS],
        "groups_omitted": max(0, len(flips.groups) - MAX_GROUPS),
    }


def _top_entities(inputs: _Inputs) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for entity, dirs in inputs.flips.entity_dirs.items():
        flips = sum(dirs.values())
        records = inputs.tally.entity_records.get(entity, 0)
        rows.append(
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
    rows.sort(key=lambda row: (-row["flips"], row["entity"]))
    return rows[: inputs.top]


def _reason_changes(inputs: _Inputs) -> list[dict[str, Any]]:
    return [
        {"effect": effect, "reason_before": old, "reason": new, "count": count}
        for (effect, old, new), count in inputs.tally.reason_changes.most_common()
    ]


def _cannot_decide(inputs: _Inputs) -> dict[str, Any]:
    tally = inputs.tally
    return {
        "count": inputs.cannot,
        "before": {e: n for e, n in tally.cannot_before.items() if n},
        "by_why": [{"why": why, "count": n} for why, n in tally.cannot_decide.most_common()],
        "records": [{**item, "at": _time(item["at"])} for item in tally.cannot_list],
        "records_omitted": max(0, inputs.cannot - len(tally.cannot_list)),
    }


def _gate_refusals(inputs: _Inputs) -> dict[str, Any]:
    refusals = inputs.tally.refusals
    return {
        "count": sum(refusals.values()),
        "by_reason": [
            {"reason": reason, "rule": rule, "status": status, "count": count}
            for (reason, rule, status), count in refusals.most_common()
        ],
    }


def _chain(inputs: _Inputs) -> dict[str, Any]:
    findings = inputs.result.findings
    errors = sum(1 for f in findings if f.severity == "error")
    return {
        "ok": not errors,
        "errors": errors,
        "warnings": len(findings) - errors,
        "findings": [f.to_dict() for f in findings],
    }


# The report's members in their order, each with what builds it (the shape is in the docstring).
_SECTIONS: tuple[tuple[str, Callable[[_Inputs], Any]], ...] = (
    ("format", lambda _: FORMAT),
    ("generated_at", lambda _: _time(time.time())),
    ("pack", lambda inputs: pack_ref(inputs.result.options.pack)),
    ("recorded_packs", _recorded_packs),
    # Which restricted-party lists the re-decided records saw (their screening evidence).
    (
        "screening_lists",
        lambda inputs: [
            {"version": version, "records": count}
            for version, count in inputs.tally.list_versions.most_common()
        ],
    ),
    ("registry", lambda inputs: inputs.result.options.registry_source),
    ("registry_revision", lambda inputs: inputs.result.options.registry_revision),
    (
        "recorded_registries",
        lambda inputs: [
            {"revision": revision, "records": count}
            for revision, count in inputs.tally.recorded_registries.most_common()
        ],
    ),
    ("catalog", lambda inputs: inputs.result.options.catalog_source),
    ("at", lambda inputs: _time(inputs.result.options.at)),
    ("files", _files),
    (
        "range",
        lambda inputs: {"first": _time(inputs.tally.first_at), "last": _time(inputs.tally.last_at)},
    ),
    # Pattern signals recomputed from the trail (a pack testing them; None otherwise).
    ("signals", lambda inputs: inputs.result.signals),
    ("totals", _totals),
    ("effects", _effects),
    ("transitions", _transitions),
    ("flips", _flip_section),
    ("top_entities", _top_entities),
    ("reason_changes", _reason_changes),
    ("cannot_decide", _cannot_decide),
    ("gate_refusals", _gate_refusals),
    ("listings", lambda inputs: inputs.tally.listings),
    ("chain", _chain),
    ("elapsed_seconds", lambda inputs: round(inputs.result.elapsed, 3)),
    ("records_per_second", lambda inputs: round(inputs.result.records_per_second)),
)


def build_report(result: ReplayResult, *, top: int = 10) -> dict[str, Any]:
    """The JSON report of a finished replay (shape in the module docstring)."""
    tally = result.tally
    inputs = _Inputs(result, top, _count_flips(tally), sum(tally.cannot_decide.values()))
    return {name: build(inputs) for name, build in _SECTIONS}


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


def _heading(report: dict[str, Any], top: int) -> list[str]:
    pack = report["pack"]
    totals = report["totals"]
    span = report["range"]
    when = f" as of {report['at']}" if report["at"] else ""
    out = [
        f"Replay under {pack['id']} ({pack['status']}, {_short(pack['digest'])}){when}: "
        f"{_n(totals['lines'])} lines from {len(report['files'])} file(s), "
        f"{(span['first'] or '-')[:10]} .. {(span['last'] or '-')[:10]}"
    ]
    out.extend(
        f"  recorded under {recorded['id']} ({recorded['status']}, "
        f"{_short(recorded['digest'])}): {_n(recorded['records'])} records"
        for recorded in report["recorded_packs"]
    )
    revisions = report["recorded_registries"]
    if revisions:
        shown = ", ".join(f"{r['revision']} ({_n(r['records'])})" for r in revisions[:3])
        others = f" and {len(revisions) - 3} more" if len(revisions) > 3 else ""
        out.append(f"  decided on registry revisions {shown}{others}")
    screened = [row for row in report.get("screening_lists", []) if row["version"] != "(none)"]
    out.extend(
        f"  screening lists {row['version']}: {_n(row['records'])} records" for row in screened
    )
    if report["registry"] or report["catalog"]:
        out.append(
            f"  registry: {report['registry'] or 'as recorded'}"
            + (f" at {report['registry_revision']}" if report["registry_revision"] else "")
            + "; "
            f"catalogue: {report['catalog'] or 'as recorded'}"
        )
    return out


def _effect_lines(report: dict[str, Any], top: int) -> list[str]:
    effects = report["effects"]
    rows = (
        (e, _n(effects["before"][e]), _n(effects["after"][e]), _signed(effects, e)) for e in EFFECTS
    )
    return ["", _table(("effect", "before", "after", "change"), rows)]


def _flip_lines(report: dict[str, Any], top: int) -> list[str]:
    totals = report["totals"]
    replayed = totals["replayed"]
    share = f" ({totals['flips'] / replayed:.1%})" if replayed else ""
    out = ["", f"Flips: {_n(totals['flips'])} of {_n(replayed)} re-decided{share}"]
    out.extend(f"  {kind:12} {_n(count):>10}" for kind, count in report["flips"]["by_kind"].items())
    return out


# The flip dimensions the summary names, in its order (the report has them all).
_SUMMARY_DIMENSIONS: tuple[tuple[str, str], ...] = (
    ("by_country", "network country"),
    ("by_effective_tier", "effective tier"),
    ("by_model_tier", "model tier"),
    ("by_model", "model"),
    ("by_reason", "reason"),
)


def _affected_lines(report: dict[str, Any], top: int) -> list[str]:
    """Who and what the flips fall on; nothing when there are none."""
    if not report["totals"]["flips"]:
        return []
    rows = (
        (
            r["entity"],
            _n(r["flips"]),
            _n(r["cut_off"]),
            _n(r["let_in"]),
            _n(r["log_change"]),
            _n(r["records"]),
        )
        for r in report["top_entities"][:top]
    )
    out = [
        "",
        "Top entities affected",
        _table(("entity", "flips", "cut off", "let in", "log", "records"), rows),
    ]
    flips = report["flips"]
    for name, label in _SUMMARY_DIMENSIONS:
        items = flips[name][:top]
        text = ", ".join(f"{row['value']} {_n(row['total'])}" for row in items)
        more = len(flips[name]) - len(items)
        out.append(f"By {label}: {text}" + (f" (+{more} more)" if more > 0 else ""))
    return out


def _not_redecided_lines(report: dict[str, Any], top: int) -> list[str]:
    refusals = report["gate_refusals"]
    totals = report["totals"]
    detail = ", ".join(f"{r['reason']} {_n(r['count'])}" for r in refusals["by_reason"][:6])
    out = [
        "",
        f"Not re-decided: {_n(refusals['count'])} gate refusals"
        + (f" ({detail})" if detail else "")
        + f", {_n(report['listings'])} model listings, {_n(totals['checkpoints'])} checkpoints",
    ]
    if totals["unreadable"] or totals["not_records"]:
        out.append(
            f"Not records: {_n(totals['unreadable'])} line(s) that are not JSON objects, "
            f"{_n(totals['not_records'])} JSON line(s) without an aidr tree"
        )
    cannot = report["cannot_decide"]
    if cannot["count"]:
        why = "; ".join(f"{w['why']} ({_n(w['count'])})" for w in cannot["by_why"][:5])
        out.append(f"Cannot decide: {_n(cannot['count'])} record(s): {why}")
    return out


def _window_lines(report: dict[str, Any], top: int) -> list[str]:
    outside = report["totals"]["outside_pack_window"]
    if not outside:
        return []
    pack = report["pack"]
    return [
        f"Note: {_n(outside)} records fall outside the legal window of "
        f"{pack['id']} ({window_text(pack['effective'])})"
    ]


def _chain_lines(report: dict[str, Any], top: int) -> list[str]:
    chain = report["chain"]
    if not chain["findings"]:
        return ["Chain: intact"]
    replayed_note = unread_note(report) or "the records were replayed all the same"
    out = [
        f"Chain: {chain['errors']} problem(s), {chain['warnings']} warning(s) ({replayed_note}):"
    ]
    out.extend(
        f"  {finding['severity']}: {finding['file']}:{finding['line']}: "
        f"{finding['kind']}: {finding['message']}"
        for finding in chain["findings"][:10]
    )
    return out


# The summary's parts in their order; each gives its lines (a part that starts a block leads
# with a blank line).
_SUMMARY: tuple[Callable[[dict[str, Any], int], list[str]], ...] = (
    _heading,
    _effect_lines,
    _flip_lines,
    _affected_lines,
    _not_redecided_lines,
    _window_lines,
    _chain_lines,
)


def summary(report: dict[str, Any], *, top: int = 10) -> str:
    """The terminal summary of a report."""
    return "\n".join(line for part in _SUMMARY for line in part(report, top))


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
