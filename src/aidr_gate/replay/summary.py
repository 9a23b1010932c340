"""The replay report on a terminal: the summary built from the JSON report, and a progress bar.

Every number shown comes from the report (:mod:`aidr_gate.replay.report`), as the HTML page's do;
:mod:`aidr_gate.replay.report` re-exports :func:`summary`, :func:`unread_note` and
:class:`ProgressBar`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from aidr_gate.replay.diff import window_text
from aidr_gate.replay.run import EFFECTS


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
