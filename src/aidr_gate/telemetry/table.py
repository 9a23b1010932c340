"""The one table of every metric the gate exports: name, type, unit, labels and help.

The Prometheus exposition, the OTLP export, the bridge to a host's own OpenTelemetry SDK, the
README's metric list and the tests all read :data:`METRICS`; nothing else names a metric.

Names are OpenTelemetry names (dotted, with UCUM units and attribute keys as labels). The
Prometheus names follow the translation Prometheus itself applies to OTLP and the OpenTelemetry
Collector's Prometheus exporter applies (dots to underscores, a unit suffix, ``_total`` on
counters), so one dashboard works whether the gate is scraped or its OTLP is converted on the way.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    """The instrument type."""

    COUNTER = "counter"  # monotonic, cumulative since the process started
    GAUGE = "gauge"  # a value now
    HISTOGRAM = "histogram"  # explicit buckets, cumulative


class Source(StrEnum):
    """Where values come from: the request path (or an event), or read when metrics are collected."""

    RECORDED = "recorded"  # Telemetry's methods, into cheap in-process cells
    OBSERVED = "observed"  # read from a watched object at collection time: free per request


# Decision time: the gate adds tens of microseconds warm, milliseconds when a key fetch is awaited.
DECISION_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
# Upstream time to the end of the response: a completion streams for seconds to minutes.
UPSTREAM_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)

# Components a reload names: the configuration file itself, the policy packs, the registry and the
# catalogue (read again together on a change or SIGHUP), the key file or JWKS, the GeoIP databases,
# and the configuration's sections a reload applies in place. Their series start at 0, so the
# first failed reload after a start is an increase an alert sees, not a new series.
RELOAD_COMPONENTS = (
    "config",
    "policy",
    "registry",
    "catalog",
    "keys",
    "geoip",
    "screening",  # the restricted-party list files (re-screened when one changes)
    "identity",
    "network",
    "middleware",
    "audit",
    "proxy",
    "patterns",
)
RELOAD_RESULTS = ("ok", "failed")
# The registry view's states (RegistryHealth.state): one series each, 1 for the state it is in.
REGISTRY_STATES = ("starting", "ready", "stale", "unavailable")

_UNIT_SUFFIX = {"s": "seconds", "By": "bytes"}


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric: its OpenTelemetry name, type, UCUM unit, label keys and help text."""

    name: str
    kind: Kind
    unit: str
    labels: tuple[str, ...]
    help: str
    source: Source
    read_from: str  # what feeds it, for the docs: a Telemetry method or a watched object
    buckets: tuple[float, ...] = ()
    opt_in: bool = False  # only exported when the operator turns it on (bounded even then)

    @property
    def prometheus_name(self) -> str:
        """The exposition name without ``_total``: ``aidr_gate_decision_duration_seconds``."""
        base = self.name.replace(".", "_")
        suffix = self.prometheus_unit
        return f"{base}_{suffix}" if suffix and not base.endswith(suffix) else base

    @property
    def prometheus_unit(self) -> str:
        """The exposition unit (``seconds``, ``bytes``), empty for annotations like ``{record}``."""
        return _UNIT_SUFFIX.get(self.unit, "")

    @property
    def prometheus_labels(self) -> tuple[str, ...]:
        """Label names as Prometheus spells them: ``aidr.effect`` is ``aidr_effect``."""
        return tuple(prometheus_label(label) for label in self.labels)

    @property
    def sample_name(self) -> str:
        """The name queries use: counters end in ``_total``, histograms are queried by bucket."""
        if self.kind is Kind.COUNTER:
            return self.prometheus_name + "_total"
        if self.kind is Kind.HISTOGRAM:
            return self.prometheus_name + "_bucket"
        return self.prometheus_name


def prometheus_label(key: str) -> str:
    """An attribute key as a Prometheus label name."""
    return key.replace(".", "_")


def _counter(name: str, unit: str, labels: tuple[str, ...], text: str, feed: str) -> MetricSpec:
    return MetricSpec(name, Kind.COUNTER, unit, labels, text, Source.RECORDED, feed)


def _observed(
    name: str, kind: Kind, unit: str, labels: tuple[str, ...], text: str, feed: str
) -> MetricSpec:
    return MetricSpec(name, kind, unit, labels, text, Source.OBSERVED, feed)


EFFECT = "aidr.effect"
REGISTRY = "RegistryView.health()"
PATTERNS = "PatternTracker.sizes() and SharedState.health()"
SINK = ("aidr.audit.sink", "aidr.audit.sink.kind")
KEYS_SOURCE = "aidr.keys.source"
_TRAIL = "AuditTrail.stats()"

METRICS: tuple[MetricSpec, ...] = (
    _counter(
        "aidr_gate.decisions",
        "{decision}",
        (EFFECT, "aidr.reason", "aidr.mode", "aidr.policy.id"),
        "Decisions by effect, first reason code, mode and enforced pack",
        "Telemetry.record",
    ),
    _counter(
        "aidr_gate.network.decisions",
        "{decision}",
        (EFFECT, "aidr.network.country"),
        "Decisions by effect and network country (ISO 3166-1 alpha-2 from GeoIP, or unknown)",
        "Telemetry.record",
    ),
    MetricSpec(
        "aidr_gate.entity.decisions",
        Kind.COUNTER,
        "{decision}",
        (EFFECT, "enduser.id"),
        "Decisions by effect and entity (telemetry.labels.entities; at most max_entities "
        "entities, the rest as _other)",
        Source.RECORDED,
        "Telemetry.record",
        opt_in=True,
    ),
    MetricSpec(
        "aidr_gate.decision.duration",
        Kind.HISTOGRAM,
        "s",
        (EFFECT,),
        "Time the gate added to a request before the app saw it",
        Source.RECORDED,
        "Telemetry.record",
        DECISION_BUCKETS,
    ),
    _counter(
        "aidr_gate.shadow.disagreements",
        "{decision}",
        (EFFECT, "aidr.shadow.effect", "aidr.shadow.policy.id"),
        "Decisions where the shadow pack's effect differs from the enforced one",
        "Telemetry.record",
    ),
    _counter(
        "aidr_gate.reloads",
        "{reload}",
        ("aidr.component", "aidr.result"),
        "Reload attempts by component (config, policy, registry, catalog, keys, geoip, screening, "
        "or a section applied in place) and result (ok, failed)",
        "Telemetry.reload",
    ),
    MetricSpec(
        "aidr_gate.reload.restart_pending",
        Kind.GAUGE,
        "{setting}",
        (),
        "Changed settings that take effect only after a restart (0 after one)",
        Source.RECORDED,
        "Telemetry.restart_pending",
    ),
    _observed(
        "aidr_gate.audit.queue.depth",
        Kind.GAUGE,
        "{record}",
        (),
        "Audit records submitted and not yet written",
        _TRAIL,
    ),
    _observed(
        "aidr_gate.audit.accepting",
        Kind.GAUGE,
        "",
        (),
        "1 while the audit trail takes records, 0 when requests are refused for want of it",
        _TRAIL,
    ),
    _observed(
        "aidr_gate.audit.records.written",
        Kind.COUNTER,
        "{record}",
        (),
        "Audit records stored in the journal (or handed to the sinks when there is none)",
        _TRAIL,
    ),
    _observed(
        "aidr_gate.audit.records.delivered",
        Kind.COUNTER,
        "{record}",
        SINK,
        "Audit records delivered, by sink",
        _TRAIL,
    ),
    _observed(
        "aidr_gate.audit.records.spooled",
        Kind.COUNTER,
        "{record}",
        SINK,
        "Audit records that went to a sink's local spool while it could not take them",
        _TRAIL,
    ),
    _observed(
        "aidr_gate.audit.records.lost",
        Kind.COUNTER,
        "{record}",
        SINK,
        "Audit records stored nowhere, by sink (the journal's count is the trail's)",
        _TRAIL,
    ),
    _observed(
        "aidr_gate.audit.spool.size",
        Kind.GAUGE,
        "By",
        SINK,
        "Bytes waiting in a sink's spool",
        _TRAIL,
    ),
    _counter(
        "aidr_gate.audit.records.truncated",
        "{record}",
        ("aidr.audit.part",),
        "Audit records cut to their size caps, by what was cut (value, record)",
        "Telemetry.truncated",
    ),
    _observed(
        "aidr_gate.keys.fetches",
        Kind.COUNTER,
        "{fetch}",
        (KEYS_SOURCE, "aidr.result"),
        "Key set loads by source (jwks, file, static) and result (ok, failed)",
        "the key provider: its swaps and failures",
    ),
    _observed(
        "aidr_gate.keys.age",
        Kind.GAUGE,
        "s",
        (KEYS_SOURCE,),
        "Seconds since the last good key set was installed (since watching began when none was); "
        "for a key file, since its keys last changed",
        "the key provider: its swaps",
    ),
    _observed(
        "aidr_gate.keys.loaded",
        Kind.GAUGE,
        "{key}",
        (KEYS_SOURCE,),
        "Verification keys in the current set (0 when none has loaded)",
        "KeyProvider.current",
    ),
    _observed(
        "aidr_gate.geoip.build.age",
        Kind.GAUGE,
        "s",
        ("aidr.geoip.role",),
        "Seconds since the GeoIP database in use was built, by role (country, anonymous_ip)",
        "MaxMindCountryResolver.country_info / anonymous_ip_info",
    ),
    _observed(
        "aidr_gate.registry.state",
        Kind.GAUGE,
        "",
        ("aidr.registry.kind", "aidr.registry.state"),
        "1 for the state the entity registry is in (starting, ready, stale: serving cached "
        "entities while its store is lost, unavailable: lookups denied), 0 for the others",
        REGISTRY,
    ),
    _observed(
        "aidr_gate.registry.staleness",
        Kind.GAUGE,
        "s",
        (),
        "Seconds since the registry store last confirmed the cached entities, while its change "
        "feed is lost; 0 while it is up",
        REGISTRY,
    ),
    _observed(
        "aidr_gate.registry.entries",
        Kind.GAUGE,
        "{entity}",
        (),
        "Entities held in memory: the whole file, or the database store's bounded cache",
        REGISTRY,
    ),
    _observed(
        "aidr_gate.registry.lookups",
        Kind.COUNTER,
        "{lookup}",
        ("aidr.result",),
        "Entity lookups of a database store's cache by result (hit, miss: read from the store)",
        REGISTRY,
    ),
    _observed(
        "aidr_gate.registry.fetch.errors",
        Kind.COUNTER,
        "{fetch}",
        (),
        "Reads of a database store that failed (the request is denied REGISTRY_UNAVAILABLE)",
        REGISTRY,
    ),
    _observed(
        "aidr_gate.patterns.shared",
        Kind.GAUGE,
        "",
        (),
        "1 while the fleet's shared pattern view (patterns.redis) is current, 0 while degraded: "
        "signals count this replica's requests only",
        PATTERNS,
    ),
    _observed(
        "aidr_gate.patterns.keys",
        Kind.GAUGE,
        "{key}",
        ("aidr.patterns.table",),
        "Keys held in each bounded pattern table (token, entity, address, network...)",
        PATTERNS,
    ),
    _observed(
        "aidr_gate.patterns.sync.failures",
        Kind.COUNTER,
        "{round}",
        (),
        "Background exchanges with the shared pattern store that failed",
        PATTERNS,
    ),
    _counter(
        "aidr_gate.upstream.responses",
        "{response}",
        ("http.response.status_code", "error.type"),
        "Sidecar upstream exchanges by the upstream's status, or by the error when it gave none",
        "Telemetry.upstream",
    ),
    MetricSpec(
        "aidr_gate.upstream.duration",
        Kind.HISTOGRAM,
        "s",
        (),
        "Time from forwarding a request to the end of the upstream's response",
        Source.RECORDED,
        "Telemetry.upstream",
        UPSTREAM_BUCKETS,
    ),
    _counter(
        "aidr_gate.streams.cut",
        "{stream}",
        ("aidr.reason",),
        "Admitted streams ended because a change now denies them, by reason",
        "Telemetry.stream_cut",
    ),
    _counter(
        "aidr_gate.responses.aborted",
        "{response}",
        ("aidr.reason",),
        "Responses not completed because their audit record could not be stored "
        "(fsync: always), by reason",
        "Telemetry.response_aborted",
    ),
    _observed(
        "aidr_gate.ready",
        Kind.GAUGE,
        "",
        (),
        "1 when /readyz answers 200, else 0",
        "the readiness checks (Telemetry.watch_readiness)",
    ),
    _observed(
        "aidr_gate.readiness.check",
        Kind.GAUGE,
        "",
        ("aidr.check",),
        "1 for each readiness check that passes, 0 for each that fails",
        "the readiness checks (Telemetry.watch_readiness)",
    ),
)

BY_NAME: dict[str, MetricSpec] = {spec.name: spec for spec in METRICS}


def metrics_markdown() -> str:
    """The README's metric list, one row per metric, rendered from :data:`METRICS`."""
    rows = [
        "| Prometheus name | Type | Labels | What |",
        "| --- | --- | --- | --- |",
    ]
    for spec in METRICS:
        labels = ", ".join(f"`{label}`" for label in spec.prometheus_labels) or "none"
        opt = " Opt-in." if spec.opt_in else ""  # bounded even then
        rows.append(
            f"| `{spec.sample_name.removesuffix('_bucket')}` | {spec.kind.value} | {labels} "
            f"| {spec.help}.{opt} (OTel `{spec.name}`, from {spec.read_from}) |"
        )
    return "\n".join(rows) + "\n"
