"""Telemetry: what the gate records per decision and per event, and what it reads when collected.

Per decision the request path adds to a few in-process cells (:mod:`aidr_gate.telemetry.counts`
counts into them, :mod:`aidr_gate.telemetry.store` bounds them) and, when a tracer records, emits
one ``aidr_gate.decide`` span. Gauges, ages and the audit
trail's counters are read from the watched objects only when metrics are collected
(:mod:`aidr_gate.telemetry.sources`). With nothing configured and no OpenTelemetry SDK set by the
host, :meth:`Telemetry.record` returns at once.

Through opentelemetry-api only: a host that sets its own SDK ``MeterProvider`` gets the same
metrics as observable instruments reading these cells (and the two histograms recorded directly),
and a host ``TracerProvider`` gets the spans. Attribute names follow the semantic conventions where
they exist (``client.address``, ``enduser.id``, ``gen_ai.request.model``); the rest are under
``aidr.``. The same reason codes label metrics, responses and audit records.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from random import random
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.metrics import _internal as _metrics_api
from opentelemetry.trace import ProxyTracerProvider, SpanKind, Status, StatusCode, Tracer

from aidr_gate.decision import Decision, Effect
from aidr_gate.telemetry.counts import Counts
from aidr_gate.telemetry.settings import TelemetrySettings
from aidr_gate.telemetry.sources import (
    AuditSource,
    GeoSource,
    KeySource,
    PatternSource,
    ReadinessSource,
    RegistrySource,
    Source,
    read_sources,
)
from aidr_gate.telemetry.spans import span_attributes
from aidr_gate.telemetry.store import OTHER, Cells, HistogramPoint, Labels, Point
from aidr_gate.telemetry.table import (
    METRICS,
    Kind,
    MetricSpec,
)
from aidr_gate.version import __version__

if TYPE_CHECKING:
    from aidr_gate.audit.trail import AuditTrail
    from aidr_gate.patterns.tracker import PatternTracker
    from aidr_gate.request.geo import CountryResolver
    from aidr_gate.request.jwks import KeyProvider
    from aidr_gate.stores.cache import RegistryView

INSTRUMENTATION = "aidr_gate"

# Where opentelemetry-api keeps the global providers: None until a host sets one (or names one in
# OTEL_PYTHON_*_PROVIDER, loaded by the first get_tracer/get_meter). Its proxies read the same
# globals, so while both are None the proxy tracer and instruments drop everything. The public
# getters cost a microsecond each (they look up the environment), more than the work they would
# save; without these globals (another opentelemetry-api) every decision takes the full path.
_PROVIDER_GLOBALS = (
    hasattr(trace, "_TRACER_PROVIDER")
    and hasattr(_metrics_api, "_METER_PROVIDER")
    and hasattr(_metrics_api, "_ProxyMeterProvider")
)


@dataclass(frozen=True, slots=True)
class Collected:
    """One metric's series at collection time (``histograms`` for histograms, else ``points``)."""

    spec: MetricSpec
    points: tuple[Point, ...] = ()
    histograms: tuple[HistogramPoint, ...] = ()


class Telemetry:
    """Metrics and spans for decisions; next to free while nothing reads them."""

    def __init__(
        self,
        settings: TelemetrySettings | None = None,
        *,
        tracer: Tracer | None = None,
        root_sample_ratio: float = 1.0,
    ):
        self.settings = settings or TelemetrySettings()
        self.started_ns = time.time_ns()
        # Our exporters read the cells: count every decision. Otherwise only while a host SDK does.
        self.counting = self.settings.exporting
        self.counts = Counts(self.settings, counting=self.counting)
        self.cells = self.counts.cells
        self._entities_on = self.settings.labels.entities
        self._restart_pending = 0
        self._sources: dict[str, Source] = {}
        self._own_tracer = tracer is not None
        # With a tracer of ours: the share of decisions outside any span that start one (a
        # decision inside a span follows its sampling, through the tracer's parent-based sampler).
        self._root_ratio = root_sample_ratio if tracer is not None else 1.0
        self._tracer = tracer or trace.get_tracer(INSTRUMENTATION, __version__)
        self._host_histograms = _bridge(self)
        self._host_decision_time = self._host_histograms["aidr_gate.decision.duration"]
        # True when the global providers are opentelemetry-api's proxies, which stay no-ops until
        # a host sets a provider: then each call checks the globals rather than doing the work.
        self._proxied = bool(
            _PROVIDER_GLOBALS
            and isinstance(trace.get_tracer_provider(), ProxyTracerProvider)
            and isinstance(metrics.get_meter_provider(), _metrics_api._ProxyMeterProvider)
        )

    # -- the request path ------------------------------------------------------------------------

    def _host_meter(self) -> bool:
        return not self._proxied or _metrics_api._METER_PROVIDER is not None

    def record(self, decision: Decision, seconds: float, path: str | None) -> None:
        """Count one decision, record its time, and emit its span."""
        host_meter = not self._proxied or _metrics_api._METER_PROVIDER is not None
        if self.counting or host_meter:
            self.counts.decision(decision, seconds)
            if host_meter:
                self._host_decision_time.record(seconds, {"aidr.effect": decision.effect.value})
        if self._own_tracer or not self._proxied or trace._TRACER_PROVIDER is not None:
            if self._root_ratio < 1.0 and _unsampled_root(self._root_ratio):
                return
            span = self._tracer.start_span("aidr_gate.decide", kind=SpanKind.INTERNAL)
            if span.is_recording():
                span.set_attributes(span_attributes(decision, path))
                if decision.effect is Effect.DENY:
                    reason = decision.reasons[0] if decision.reasons else "NONE"
                    span.set_status(Status(StatusCode.ERROR, reason))
            span.end()

    # -- events ----------------------------------------------------------------------------------

    def _counts(self) -> bool:
        return self.counting or self._host_meter()

    def reload(self, component: str, ok: bool) -> None:
        """Count a reload attempt of *component* (policy, identity, geoip, ...)."""
        if self._counts():
            self.counts.add("aidr_gate.reloads", (component, "ok" if ok else "failed"))

    def restart_pending(self, settings: int) -> None:
        """Say how many changed settings wait for a restart (0 when none)."""
        self._restart_pending = max(0, settings)

    def upstream(self, status: int | None, seconds: float | None, error: str | None) -> None:
        """Count one sidecar upstream exchange: the upstream's status, or the error code instead."""
        host_meter = self._host_meter()
        if not (self.counting or host_meter):
            return
        self.counts.upstream(status, seconds, error)
        if seconds is not None and host_meter:
            self._host_histograms["aidr_gate.upstream.duration"].record(seconds)

    def stream_cut(self, reason: str) -> None:
        """Count an admitted stream ended because a change now denies it."""
        if self._counts():
            self.counts.add("aidr_gate.streams.cut", (reason,))

    def response_aborted(self, reason: str) -> None:
        """Count a response left incomplete (its connection closed) because its audit record
        was not stored: under ``fsync: always``, answered means recorded."""
        if self._counts():
            self.counts.add("aidr_gate.responses.aborted", (reason,))

    def truncated(self, part: str) -> None:
        """Count an audit record cut to its caps: ``value`` (one field) or ``record`` (the whole).

        Like every recording method, from one thread only: the cells are not locked (the audit
        writer's thread, where records are rendered, may be that thread for this counter).
        """
        if self._counts():
            self.counts.add("aidr_gate.audit.records.truncated", (part,))

    # -- watched objects -------------------------------------------------------------------------

    def watch_audit(self, trail: Callable[[], AuditTrail | None]) -> None:
        """Read the audit trail's counters (through *trail*, the current one) when collected."""
        self._sources["audit"] = AuditSource(trail)

    def watch_keys(self, keys: Callable[[], KeyProvider | None]) -> None:
        """Count key set loads and report the current set's age (through *keys*)."""
        self._sources["keys"] = KeySource(keys)

    def watch_geoip(self, geo: Callable[[], CountryResolver | None]) -> None:
        """Report the build age of the GeoIP databases in use (through *geo*)."""
        self._sources["geoip"] = GeoSource(geo)

    def watch_registry(self, view: Callable[[], RegistryView | None]) -> None:
        """Report the entity registry's state, staleness and cache counters (through *view*)."""
        self._sources["registry"] = RegistrySource(view)

    def watch_patterns(self, tracker: Callable[[], PatternTracker | None]) -> None:
        """Report the pattern tables' sizes and the shared view's state (through *tracker*)."""
        self._sources["patterns"] = PatternSource(tracker)

    def watch_readiness(self, checks: Callable[[], Mapping[str, bool]]) -> None:
        """Report each readiness check (what ``/readyz`` would say, without probing anything)."""
        self._sources["readiness"] = ReadinessSource(checks)

    def watch_runtime(self, runtime: Any) -> None:
        """Watch a :class:`~aidr_gate.runtime.Runtime`: its trail, keys, GeoIP, registry (when its
        state's registry is a view with ``health()``, as the database stores' cache is) and
        readiness."""
        self.watch_audit(lambda: runtime.audit)
        self.watch_keys(lambda: runtime.identity.keys)
        self.watch_geoip(lambda: runtime.origin.geo)
        self.watch_patterns(lambda: runtime.gate.patterns)

        def registry() -> RegistryView | None:
            view = runtime.gate.state.registry
            return view if callable(getattr(view, "health", None)) else None

        self.watch_registry(registry)
        self.watch_readiness(
            lambda: {
                "started": bool(runtime.started),
                "keys": bool(runtime.identity.ready),
                "audit": bool(runtime.audit_accepting),
                # A database registry past max_staleness (or never reached) refuses entities.
                "registry": getattr(runtime, "registry", None) is None
                or bool(runtime.registry.health().ready),
            }
        )

    # -- collection ------------------------------------------------------------------------------

    def collect(self) -> list[Collected]:
        """Every exported metric's series now, in table order (never on the request path)."""
        observed = read_sources(self._sources)
        observed["aidr_gate.reload.restart_pending"] = [((), float(self._restart_pending))]
        out: list[Collected] = []
        for spec in METRICS:
            if spec.opt_in and not self._entities_on:
                continue
            cells = self.cells.get(spec.name)
            if spec.kind is Kind.HISTOGRAM and cells is not None:
                out.append(Collected(spec, histograms=tuple(cells.histogram_points())))
            elif cells is not None:
                out.append(Collected(spec, points=tuple(cells.points())))
            else:
                out.append(Collected(spec, points=tuple(observed.get(spec.name, ()))))
        return out

    def points(self, name: str) -> list[Point]:
        """One counter's or gauge's series now (the host bridge's callbacks use this)."""
        spec = next(s for s in METRICS if s.name == name)
        cells = self.cells.get(name)
        if cells is not None:
            return cells.points()
        if name == "aidr_gate.reload.restart_pending":
            return [((), float(self._restart_pending))]
        if spec.opt_in and not self._entities_on:
            return []
        return read_sources(self._sources).get(name, [])


def _unsampled_root(ratio: float) -> bool:
    """True for a decision outside any span that the root ratio leaves untraced."""
    if trace.get_current_span().get_span_context().is_valid:
        return False
    return random() >= ratio  # noqa: S311 - sampling, not secrecy


def attributes(spec: MetricSpec, labels: Labels) -> dict[str, str]:
    """A series' labels as OpenTelemetry attributes (empty values left out)."""
    return {key: value for key, value in zip(spec.labels, labels, strict=True) if value}


# The bridge to a host's SDK: one set of instruments per process (a provider keeps every instrument
# registered with it), reading every live Telemetry. A counter is cumulative for the process: the
# counts of a Telemetry that is gone (a runtime replaced, a test's gate closed) are kept in
# _RETIRED, so a host's counters never go down; gauges of a gone Telemetry go with it.
_BRIDGED: weakref.WeakSet[Telemetry] = weakref.WeakSet()
_HOST_HISTOGRAMS: dict[str, metrics.Histogram] = {}
_RETIRED: dict[str, dict[Labels, float]] = {}
_BRIDGE_LOCK = threading.Lock()


def _bridge(telemetry: Telemetry) -> dict[str, metrics.Histogram]:
    """Observable instruments on the global meter for every counter and gauge, reading the cells
    of every live Telemetry; the histograms are recorded as they happen. All no-ops until a host
    sets an SDK provider."""
    with _BRIDGE_LOCK:
        _BRIDGED.add(telemetry)
        weakref.finalize(telemetry, _retire, telemetry.cells, telemetry.settings.max_series)
        if _HOST_HISTOGRAMS:
            return _HOST_HISTOGRAMS
        meter = metrics.get_meter(INSTRUMENTATION, __version__)
        for spec in METRICS:
            if spec.kind is Kind.HISTOGRAM:
                _HOST_HISTOGRAMS[spec.name] = meter.create_histogram(
                    spec.name,
                    unit=spec.unit,
                    description=spec.help,
                    explicit_bucket_boundaries_advisory=list(spec.buckets),
                )
                continue
            create = (
                meter.create_observable_counter
                if spec.kind is Kind.COUNTER
                else meter.create_observable_gauge
            )
            create(spec.name, callbacks=[_observer(spec)], unit=spec.unit, description=spec.help)
        return _HOST_HISTOGRAMS


def _retire(cells: dict[str, Cells], limit: int) -> None:
    """Keep the counts of a Telemetry that is gone (bounded like its own series: past *limit*
    label sets of one counter, the rest are added under ``_other``)."""
    with _BRIDGE_LOCK:
        for name, metric in cells.items():
            if metric.spec.kind is not Kind.COUNTER:
                continue  # histograms went to the host as they happened
            kept = _RETIRED.setdefault(name, {})
            for labels, value in metric.points():
                if labels not in kept and len(kept) >= limit:
                    labels = (OTHER,) * len(labels)
                kept[labels] = kept.get(labels, 0.0) + value


def _observer(spec: MetricSpec) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(options: CallbackOptions) -> Iterator[Observation]:
        with _BRIDGE_LOCK:
            live = list(_BRIDGED)
            retired = dict(_RETIRED.get(spec.name, {}))
        if spec.kind is not Kind.COUNTER:
            for telemetry in live:
                for labels, value in telemetry.points(spec.name):
                    yield Observation(value, attributes(spec, labels))
            return
        # One observation per label set: the SDK keeps the last of several, so they are summed.
        totals = retired
        for telemetry in live:
            for labels, value in telemetry.points(spec.name):
                totals[labels] = totals.get(labels, 0.0) + value
        for labels, value in totals.items():
            yield Observation(value, attributes(spec, labels))

    return observe
