"""The access-pattern report: signals over time per entity and per network, from audit trails.

The trail is read with the replay reader (rotated, gzip and zstd files, several ``per_process``
slots, the chain checked as read) and each line expanded by :class:`~aidr_gate.audit.reader.
RecordReader`. Slots are merged by time, and every request with a caller is fed, in time order,
to a :class:`~aidr_gate.patterns.tracker.PatternTracker`: the same code, windows and bounds the
gate decides with, so a signal in the report is the signal a pack rule would have seen (for one
gate; a fleet's trails read together give the fleet's view).

Per entity the report keeps bounded aggregates: requests, countries and anonymizer and worse-tier
requests per time bucket, the peak of each signal with the requests that led to it, and a score
of how far the entity departs from its own history and from its headquarters' tier:

    score = (peak countries in a window - the entity's median countries per bucket)
          + (peak countries of one token in a window - 1)
          + 2 x (peak anonymizer share - the entity's overall anonymizer share)
          + 2 x (share of its requests from a tier worse than its headquarters')
"""

from __future__ import annotations

import heapq
import statistics
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from aidr_gate.audit.reader import RecordReader
from aidr_gate.audit.verify import Finding, chains_of
from aidr_gate.bounded import store_bounded
from aidr_gate.facts import AnonymizerFlag, Identity, Origin
from aidr_gate.patterns.settings import PatternSettings
from aidr_gate.patterns.tracker import PatternTracker, network_of
from aidr_gate.replay.evidence import Clock
from aidr_gate.replay.reader import AuditReader, FileChain

REPORT_FORMAT = 1
MAX_BUCKETS = 1000  # buckets kept per entity (the most recent); older ones are folded away
MAX_COUNTRIES = 64  # distinct countries counted per entity and bucket
SAMPLES = 10  # requests kept behind each peak
_FLAG = frozenset({AnonymizerFlag.VPN})  # stands for "some anonymizer flag" (shares only count)
_NO_FLAG: frozenset[AnonymizerFlag] = frozenset()


class Row(NamedTuple):
    """What the report needs of one recorded request (a tuple: one is built per record)."""

    at: float
    decision_id: str
    effect: str
    reason: str
    entity: str
    subject: str | None
    ip: str | None
    country: str | None
    anonymous: bool
    worse: bool
    headquarters: str | None
    headquarters_tier: str | None
    network_tier: str | None


@dataclass(frozen=True, slots=True)
class ReportOptions:
    """The window the signals are computed over, the bucket of the time series, list sizes."""

    window: str = "1h"
    bucket: float = 3600.0
    top: int = 20
    settings: PatternSettings = field(default_factory=PatternSettings)


@dataclass(slots=True)
class Peak:
    """The highest value a signal reached, when, and the requests up to it."""

    value: float = 0.0
    at: float | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class EntityStats:
    """Bounded aggregates of one entity."""

    entity: str
    headquarters: str | None = None
    headquarters_tier: str | None = None
    requests: int = 0
    anonymous: int = 0
    worse: int = 0
    denied: int = 0
    first: float = 0.0
    last: float = 0.0
    countries: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    # bucket start -> [requests, anonymous, worse, set of countries]
    buckets: dict[int, list[Any]] = field(default_factory=dict)
    # The last requests, kept as (row, signals); made into samples only when a peak is set.
    recent: deque[tuple[Row, dict[str, float]]] = field(
        default_factory=lambda: deque(maxlen=SAMPLES)
    )
    countries_peak: Peak = field(default_factory=Peak)
    token_peak: Peak = field(default_factory=Peak)
    anonymizer_peak: Peak = field(default_factory=Peak)
    subjects: set[str] = field(default_factory=set)


@dataclass(slots=True)
class NetworkStats:
    """A network that fronted more than one entity within a window."""

    network: str
    requests: int = 0
    peak: Peak = field(default_factory=Peak)
    entities: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class PatternTally:
    """Everything a run counted."""

    lines: int = 0
    records: int = 0
    observed: int = 0
    skipped: int = 0  # records without a caller (refused before identity) or without a time
    entities: dict[str, EntityStats] = field(default_factory=dict)
    networks: dict[str, NetworkStats] = field(default_factory=dict)
    first: float | None = None
    last: float | None = None


def _rows_of_slot(
    paths: Sequence[Path], chains: list[FileChain], findings: list[Finding], lines: list[int]
) -> Iterator[Row]:
    reader = AuditReader.open(paths)
    records = RecordReader()
    clock = Clock()
    for line, _, _ in reader:
        lines[0] += 1
        tree = records.tree(line)
        if not tree or "decision" not in tree:
            continue
        row = _row(tree, clock)
        if row is not None:
            yield row
        else:
            lines[1] += 1
    chains.extend(reader.chains)
    findings.extend(reader.findings())


def _row(tree: dict[str, Any], clock: Clock) -> Row | None:
    decision = tree.get("decision") or {}
    identity = tree.get("identity")
    origin = tree.get("origin") or {}
    at = clock.parse(decision.get("at"))
    if not isinstance(identity, dict) or at is None:
        return None
    entity = identity.get("entity_id")
    if not isinstance(entity, str):
        return None
    jurisdiction = tree.get("jurisdiction") or {}
    reasons = decision.get("reasons") or [""]
    return Row(
        at=at,
        decision_id=str(decision.get("id")),
        effect=str(decision.get("effect")),
        reason=str(reasons[0]),
        entity=entity,
        subject=identity.get("subject"),
        ip=origin.get("ip"),
        country=origin.get("country"),
        anonymous=bool(origin.get("anonymizer")),
        worse=bool(jurisdiction.get("origin_worse_than_headquarters")),
        headquarters=jurisdiction.get("headquarters"),
        headquarters_tier=jurisdiction.get("headquarters_tier"),
        network_tier=jurisdiction.get("network_tier"),
    )


def read_rows(
    paths: Sequence[Path], chains: list[FileChain], findings: list[Finding], counts: list[int]
) -> Iterator[Row]:
    """Every request with a caller, in time order across the trail's slots (merged as read).

    *chains* and *findings* are filled in as each slot's files are read to the end.
    """
    groups = chains_of(list(paths)).values()
    slots = [_rows_of_slot(files, chains, findings, counts) for files in groups]
    if len(slots) == 1:
        return slots[0]
    return heapq.merge(*slots, key=lambda row: row.at)


def _sample(row: Row, signals: dict[str, float]) -> dict[str, Any]:
    return {
        "decision_id": row.decision_id,
        "at": row.at,
        "subject": row.subject,
        "ip": row.ip,
        "country": row.country,
        "anonymous": row.anonymous,
        "effect": row.effect,
        "reason": row.reason,
        "signals": signals,
    }


def _raise(
    peak: Peak, value: float, row: Row, recent: Iterable[tuple[Row, dict[str, float]]]
) -> None:
    if value > peak.value:
        peak.value = value
        peak.at = row.at
        peak.requests = [_sample(r, s) for r, s in recent]


def run_report(paths: Sequence[Path], options: ReportOptions) -> dict[str, Any]:
    """Read *paths*, recompute the signals in time order, and build the report (JSON-ready)."""
    started = time.perf_counter()
    run = _Run(options)
    chains: list[FileChain] = []
    findings: list[Finding] = []
    counts = [0, 0]  # lines read, records skipped
    for row in read_rows(paths, chains, findings, counts):
        run.feed(row)
    run.tally.lines, run.tally.skipped = counts
    seconds = time.perf_counter() - started
    return build(run.tally, chains, findings, options, run.names, seconds)


class _Run:
    """One report's tracker and tallies, fed one row at a time, in time order."""

    def __init__(self, options: ReportOptions) -> None:
        w = options.window
        self.names = {
            "token": f"origin_countries_{w}",
            "countries": f"entity_countries_{w}",
            "anonymizer": f"entity_anonymizer_share_{w}",
            "network": f"network_entities_{w}",
            "address": f"address_entities_{w}",
        }
        self.options = options
        self.tracker = PatternTracker(options.settings, wanted=list(self.names.values()))
        self.tally = PatternTally()
        self.identities: dict[tuple[str, str | None], Identity] = {}
        self.prefixes: dict[str, str] = {}

    def feed(self, row: Row) -> None:
        """Count one request: the tracker's signals, the entity's aggregates, its network."""
        tally = self.tally
        tally.records += 1
        caller = (row.entity, row.subject)
        identity = self.identities.get(caller)
        if identity is None:
            identity = Identity(row.entity, subject=row.subject, method="declared")
            store_bounded(self.identities, 100_000, caller, identity)
        origin = Origin(
            ip=row.ip, country=row.country, anonymizer=_FLAG if row.anonymous else _NO_FLAG
        )
        signals: dict[str, float] = self.tracker.observe(row.at, identity, origin, row.worse)  # type: ignore[assignment]
        tally.observed += 1
        tally.first = row.at if tally.first is None else tally.first
        tally.last = row.at
        stats = tally.entities.get(row.entity)
        if stats is None:
            stats = tally.entities[row.entity] = EntityStats(row.entity, first=row.at)
        _count_entity(stats, row, self.options.bucket)
        stats.recent.append((row, signals))
        names = self.names
        _raise(stats.countries_peak, signals[names["countries"]], row, stats.recent)
        _raise(stats.token_peak, signals[names["token"]], row, stats.recent)
        _raise(stats.anonymizer_peak, signals[names["anonymizer"]], row, stats.recent)
        fronted = signals[names["network"]]
        if fronted >= 2 and row.ip is not None:
            self._count_network(row, row.ip, fronted, signals)

    def _count_network(self, row: Row, ip: str, fronted: float, signals: dict[str, float]) -> None:
        network = self.prefixes.get(ip)
        if network is None:
            settings = self.options.settings
            network = network_of(ip, settings.ipv4_prefix, settings.ipv6_prefix) or ip
            store_bounded(self.prefixes, 100_000, ip, network)
        net = self.tally.networks.get(network)
        if net is None:
            net = self.tally.networks[network] = NetworkStats(network)
        net.requests += 1
        if row.entity in net.entities or len(net.entities) < MAX_COUNTRIES:
            net.entities[row.entity] += 1
        if fronted > net.peak.value:
            net.peak.value, net.peak.at = fronted, row.at
            net.peak.requests = [_sample(row, signals)]


def _count_entity(stats: EntityStats, row: Row, bucket_size: float) -> None:
    """The entity's totals and its time bucket."""
    stats.headquarters = row.headquarters or stats.headquarters
    stats.headquarters_tier = row.headquarters_tier or stats.headquarters_tier
    stats.requests += 1
    stats.anonymous += row.anonymous
    stats.worse += row.worse
    stats.denied += row.effect == "deny"
    stats.last = row.at
    stats.reasons[row.reason] += 1
    if row.subject is not None and len(stats.subjects) < 1000:
        stats.subjects.add(row.subject)
    country = row.country
    if country is not None and (country in stats.countries or len(stats.countries) < MAX_COUNTRIES):
        stats.countries[country] += 1
    start = int(row.at // bucket_size * bucket_size)
    bucket = stats.buckets.get(start)
    if bucket is None:
        if len(stats.buckets) >= MAX_BUCKETS:
            del stats.buckets[min(stats.buckets)]
        bucket = stats.buckets[start] = [0, 0, 0, set()]
    bucket[0] += 1
    bucket[1] += row.anonymous
    bucket[2] += row.worse
    if country is not None and len(bucket[3]) < MAX_COUNTRIES:
        bucket[3].add(country)


def _score(stats: EntityStats) -> tuple[float, dict[str, float]]:
    per_bucket = [len(b[3]) for b in stats.buckets.values()] or [0]
    median = float(statistics.median(per_bucket))
    anon_share = stats.anonymous / stats.requests if stats.requests else 0.0
    worse_share = stats.worse / stats.requests if stats.requests else 0.0
    parts = {
        "countries_above_usual": max(0.0, stats.countries_peak.value - median),
        "token_countries_above_one": max(0.0, stats.token_peak.value - 1),
        "anonymizer_above_usual": 2 * max(0.0, stats.anonymizer_peak.value - anon_share),
        "worse_than_headquarters": 2 * worse_share,
    }
    return round(sum(parts.values()), 3), {k: round(v, 3) for k, v in parts.items()}


def _entity_row(stats: EntityStats) -> dict[str, Any]:
    score, parts = _score(stats)
    return {
        "entity": stats.entity,
        "score": score,
        "score_parts": parts,
        "headquarters": stats.headquarters,
        "headquarters_tier": stats.headquarters_tier,
        "requests": stats.requests,
        "denied": stats.denied,
        "subjects": len(stats.subjects),
        "first": stats.first,
        "last": stats.last,
        "countries": dict(stats.countries.most_common()),
        "anonymizer_share": round(stats.anonymous / stats.requests, 4) if stats.requests else 0,
        "worse_share": round(stats.worse / stats.requests, 4) if stats.requests else 0,
        "reasons": dict(stats.reasons.most_common(10)),
        "peaks": {
            "entity_countries": _peak(stats.countries_peak),
            "token_countries": _peak(stats.token_peak),
            "anonymizer_share": _peak(stats.anonymizer_peak),
        },
        "series": [
            {
                "start": start,
                "requests": b[0],
                "anonymous": b[1],
                "worse": b[2],
                "countries": sorted(b[3]),
            }
            for start, b in sorted(stats.buckets.items())
        ],
    }


def _peak(peak: Peak) -> dict[str, Any]:
    return {"value": peak.value, "at": peak.at, "requests": peak.requests}


def build(
    tally: PatternTally,
    chains: list[FileChain],
    findings: list[Finding],
    options: ReportOptions,
    names: dict[str, str],
    seconds: float,
) -> dict[str, Any]:
    """The JSON-ready report."""
    ranked = sorted(
        (_entity_row(s) for s in tally.entities.values()),
        key=lambda r: (-r["score"], -r["requests"], r["entity"]),
    )
    networks = sorted(
        tally.networks.values(), key=lambda n: (-n.peak.value, -n.requests, n.network)
    )
    return {
        "format": REPORT_FORMAT,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(seconds, 2),
        "window": options.window,
        "bucket_seconds": options.bucket,
        "signals": names,
        "files": [
            {"path": str(c.path), "lines": c.lines, "broken": c.broken, "error": c.error}
            for c in chains
        ],
        "chain_ok": not any(c.broken or c.error for c in chains) and not findings,
        "chain_findings": [
            {"file": f.file, "line": f.line, "kind": f.kind, "message": f.message} for f in findings
        ],
        "totals": {
            "lines": tally.lines,
            "records": tally.records,
            "skipped": tally.skipped,
            "entities": len(tally.entities),
            "networks_fronting": len(tally.networks),
            "first": tally.first,
            "last": tally.last,
        },
        "entities": ranked[: options.top],
        "networks": [
            {
                "network": n.network,
                "peak_entities": n.peak.value,
                "peak_at": n.peak.at,
                "requests": n.requests,
                "entities": dict(n.entities.most_common(20)),
                "sample": n.peak.requests,
            }
            for n in networks[: options.top]
        ],
    }


def _when(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))


def summary(report: dict[str, Any], *, top: int = 10) -> str:
    """The terminal summary: totals, the entities ranked first, the networks fronting most."""
    totals = report["totals"]
    lines = [
        f"aidr-gate patterns: {totals['records']:,} requests of {totals['entities']:,} entities "
        f"from {_when(totals['first'])} to {_when(totals['last'])} UTC "
        f"(window {report['window']}, {report['seconds']} s)",
    ]
    if not report["chain_ok"]:
        lines.append("  warning: the hash chain does not hold (run aidr-gate audit verify)")
    lines.append("")
    lines.append(f"  {'entity':<28} {'score':>6} {'reqs':>8} {'ctry':>5} {'tok':>4} {'anon':>5} "
                 f"{'worse':>5}  hq")  # fmt: skip
    for row in report["entities"][:top]:
        peaks = row["peaks"]
        lines.append(
            f"  {row['entity'][:28]:<28} {row['score']:>6.2f} {row['requests']:>8,} "
            f"{peaks['entity_countries']['value']:>5g} {peaks['token_countries']['value']:>4g} "
            f"{peaks['anonymizer_share']['value']:>5.2f} {row['worse_share']:>5.2f}  "
            f"{row['headquarters'] or '?'} ({row['headquarters_tier'] or '?'})"
        )
    if report["networks"]:
        lines.append("")
        lines.append(f"  networks fronting several entities within {report['window']}:")
        for net in report["networks"][:top]:
            lines.append(
                f"  {net['network']:<28} {net['peak_entities']:>4g} entities at "
                f"{_when(net['peak_at'])}, {net['requests']:,} requests"
            )
    return "\n".join(lines)
