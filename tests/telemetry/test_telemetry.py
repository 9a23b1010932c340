"""Telemetry without an OpenTelemetry SDK, and once a host sets one after startup.

A provider can be set once per process (and test_middleware_behaviour sets both), so each case runs
in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """\
    import sys

    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from aidr_gate.decision import Decision, Effect, Evidence, PolicyRef
    from aidr_gate.telemetry import Telemetry

    DECISION = Decision(
        "d1",
        0.0,
        Effect.DENY,
        403,
        ("ENTITY_DENIED",),
        "rule",
        PolicyRef("pack", "digest", "in-force", True),
        Evidence(None, None, None, None, "none", (), None, None, "not-evaluated", None, None),
    )
    SPANS = InMemorySpanExporter()
    READER = InMemoryMetricReader()


    class CountingTracer:
        # Stands in front of the proxy tracer: counts the spans record() asks for.
        def __init__(self, inner):
            self.inner = inner
            self.started = 0

        def start_span(self, *args, **kwargs):
            self.started += 1
            return self.inner.start_span(*args, **kwargs)


    def counted():
        data = READER.get_metrics_data()
        return sum(
            point.value
            for rm in (data.resource_metrics if data else ())
            for sm in rm.scope_metrics
            for metric in sm.metrics
            if metric.name == "aidr_gate.decisions"
            for point in metric.data.data_points
        )


    def set_traces():
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(SPANS))
        trace.set_tracer_provider(provider)


    def set_metrics():
        metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))


    telemetry = Telemetry()  # at startup: no SDK provider anywhere
    tracer = telemetry._tracer = CountingTracer(telemetry._tracer)
    telemetry.record(DECISION, 0.001, "/v1/chat/completions")
    assert tracer.started == 0, "no provider: the fast path builds no span"

    first, second = (set_traces, set_metrics) if sys.argv[1] == "traces" else (set_metrics, set_traces)
    first()
    telemetry.record(DECISION, 0.001, "/v1/chat/completions")
    # A span is built only once a tracer provider records them.
    assert tracer.started == (1 if first is set_traces else 0)
    if first is set_traces:
        assert len(SPANS.get_finished_spans()) == 1
        assert SPANS.get_finished_spans()[0].attributes["aidr.reasons"] == ("ENTITY_DENIED",)
    else:
        assert counted() == 1

    second()
    telemetry.record(DECISION, 0.001, "/v1/chat/completions")
    assert len(SPANS.get_finished_spans()) == (2 if first is set_traces else 1)
    assert counted() == (1 if first is set_traces else 2)
    print("ok")
    """
)


@pytest.mark.parametrize("first", ["traces", "metrics"])
def test_a_provider_set_after_startup_is_used_at_once(first: str) -> None:
    """No SDK: record() does nothing. The decision after a host sets either provider emits."""
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, first], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_telemetry_reads_the_provider_globals_of_this_opentelemetry_api() -> None:
    """The fast path needs opentelemetry-api's provider globals; an upgrade that moves them fails
    here (decisions would still be recorded, only more slowly)."""
    from aidr_gate import telemetry

    assert telemetry._PROVIDER_GLOBALS
