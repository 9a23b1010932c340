"""OTLP/HTTP export through the OpenTelemetry SDK: metrics every interval, a span per decision.

Metrics: the gate's own cells are the aggregation (the SDK's ``Counter.add`` costs several
microseconds a call, bench/metrics.py), so a thread of ours turns :meth:`Telemetry.collect` into
the SDK's ``MetricsData`` (cumulative sums, gauges and explicit-bucket histograms) and hands it to
the SDK's ``OTLPMetricExporter``, which encodes, compresses, retries and posts it. Traces: an SDK
``TracerProvider`` of the gate's own (the host's global provider is left alone), parent-based,
with the root ratio applied by :class:`Telemetry` before a span is started, and a
``BatchSpanProcessor`` feeding ``OTLPSpanExporter``, whose bounded queue drops spans rather than
grow or block the request path.

Needs the ``telemetry`` install extra.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from aidr_gate.telemetry.record import INSTRUMENTATION, Collected, Telemetry, attributes
from aidr_gate.telemetry.settings import OtlpSettings
from aidr_gate.telemetry.table import Kind
from aidr_gate.version import __version__

logger = logging.getLogger("aidr_gate.telemetry")

CUMULATIVE = AggregationTemporality.CUMULATIVE


def resource_of(settings: OtlpSettings) -> Resource:
    """The resource every export carries (``service.name`` and the configured attributes)."""
    return Resource.create(dict(settings.resource))


def _exporter_options(settings: OtlpSettings, signal: str) -> dict[str, Any]:
    return {
        "endpoint": settings.signal_url(signal),
        # None: the SDK reads OTEL_EXPORTER_OTLP_HEADERS, so a secret can come from the environment.
        "headers": dict(settings.headers) or None,
        "timeout": settings.timeout,
        "compression": Compression.Gzip
        if settings.compression == "gzip"
        else Compression.NoCompression,
    }


def tracer_provider(settings: OtlpSettings) -> TracerProvider:
    """An SDK tracer provider exporting to the collector (not installed as the global one).

    A span with a parent follows the parent's sampling; a root span is always kept here because
    :class:`Telemetry` applies ``sample_ratio`` before it starts one (``root_sample_ratio``): an
    SDK span that is started and dropped costs about 4 us, the check before it a fraction of one.
    """
    provider = TracerProvider(resource=resource_of(settings), sampler=ParentBased(ALWAYS_ON))
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(**_exporter_options(settings, "traces")),
            export_timeout_millis=settings.timeout * 1000,
        )
    )
    return provider


def metrics_data(
    collected: list[Collected], resource: Resource, start_ns: int, now_ns: int
) -> MetricsData:
    """The SDK's data model of one collection: every table metric with its series."""
    out: list[Metric] = []
    for item in collected:
        spec = item.spec
        data: Sum | Gauge | Histogram
        if spec.kind is Kind.HISTOGRAM:
            data = Histogram(
                data_points=[
                    HistogramDataPoint(
                        attributes=attributes(spec, labels),
                        start_time_unix_nano=start_ns,
                        time_unix_nano=now_ns,
                        count=sum(counts),
                        sum=total,
                        bucket_counts=counts,
                        explicit_bounds=spec.buckets,
                        # Not tracked (two comparisons per request for little): left unset.
                        min=None,  # type: ignore[arg-type]
                        max=None,  # type: ignore[arg-type]
                    )
                    for labels, counts, total in item.histograms
                ],
                aggregation_temporality=CUMULATIVE,
            )
        else:
            points = [
                NumberDataPoint(
                    attributes=attributes(spec, labels),
                    start_time_unix_nano=start_ns,
                    time_unix_nano=now_ns,
                    value=value,
                )
                for labels, value in item.points
            ]
            if spec.kind is Kind.COUNTER:
                data = Sum(
                    data_points=points, aggregation_temporality=CUMULATIVE, is_monotonic=True
                )
            else:
                data = Gauge(data_points=points)
        if data.data_points:
            out.append(Metric(name=spec.name, description=spec.help, unit=spec.unit, data=data))
    scope = InstrumentationScope(INSTRUMENTATION, __version__)
    return MetricsData(
        resource_metrics=[
            ResourceMetrics(
                resource=resource,
                scope_metrics=[ScopeMetrics(scope=scope, metrics=out, schema_url="")],
                schema_url="",
            )
        ]
    )


class OtlpMetrics:
    """Exports the gate's metrics every ``interval`` seconds from a daemon thread, and once more
    when closed."""

    def __init__(
        self,
        telemetry: Telemetry,
        settings: OtlpSettings,
        *,
        exporter: MetricExporter | None = None,
    ) -> None:
        self.telemetry = telemetry
        self.settings = settings
        self.exporter = exporter or OTLPMetricExporter(**_exporter_options(settings, "metrics"))
        self.resource = resource_of(settings)
        self.exports = 0
        self.failures = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one export at a time (the ticker and close)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start exporting (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="aidr-otlp-metrics", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.interval):
            self.export_now()

    def export_now(self) -> bool:
        """Collect and export once (blocking: call it off the event loop); True when accepted."""
        with self._lock:
            data = metrics_data(
                self.telemetry.collect(), self.resource, self.telemetry.started_ns, time.time_ns()
            )
            try:
                result = self.exporter.export(data, timeout_millis=self.settings.timeout * 1000)
            except Exception as exc:  # an exporter bug must not end the thread
                logger.warning("OTLP metrics export failed (%s)", type(exc).__name__)
                result = MetricExportResult.FAILURE
            self.exports += 1
            if result is not MetricExportResult.SUCCESS:
                self.failures += 1
            return result is MetricExportResult.SUCCESS

    def close(self) -> None:
        """Stop the thread, export the last values, and shut the exporter down (blocking)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.interval + self.settings.timeout)
            self._thread = None
        self.export_now()
        self.exporter.shutdown()
