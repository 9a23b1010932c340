"""OTLP/HTTP export, received by a real HTTP server on loopback that decodes the protobuf payloads
with opentelemetry-proto, as a collector would: the decision spans, the counters and the histogram
arrive with the configured headers and resource."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from aidr_gate.decision import Effect
from aidr_gate.telemetry import OtlpSettings, TelemetrySettings
from aidr_gate.telemetry.export import Exporters
from support.otlp_receiver import Receiver, attrs, last_metrics, spans
from support.telemetry_support import decisions


@pytest.mark.timeout(60)
def test_otlp_receiver_gets_decision_spans_counters_and_the_histogram() -> None:
    with Receiver() as receiver:
        settings = OtlpSettings(
            endpoint=receiver.url,
            headers=(("x-api-key", "otlp-secret"),),
            interval=0.2,
            timeout=5,
            resource=(("service.name", "gate-under-test"), ("deployment.environment", "test")),
        )
        exporters = Exporters(TelemetrySettings(otlp=settings))
        telemetry = exporters.telemetry
        made = decisions()
        for decision in made:
            telemetry.record(decision, 0.00004, "/v1/chat/completions")
        exporters.start()
        deadline = time.monotonic() + 20
        while not receiver.metrics:  # the periodic export, before any close
            assert time.monotonic() < deadline, "no periodic metrics export"
            time.sleep(0.05)
        telemetry.record(made[0], 0.003, "/v1/chat/completions")
        asyncio.run(exporters.close())  # the last export and the span batch

    metrics = last_metrics(receiver)
    counted = Counter(
        (attrs(p.attributes)["aidr.effect"], attrs(p.attributes)["aidr.reason"])
        for p in metrics["aidr_gate.decisions"].sum.data_points
        for _ in range(int(p.as_int or p.as_double))
    )
    expected = Counter((d.effect.value, d.reasons[0]) for d in [*made, made[0]])
    assert counted == expected
    decisions_metric = metrics["aidr_gate.decisions"]
    assert decisions_metric.sum.is_monotonic and decisions_metric.unit == "{decision}"
    histogram = metrics["aidr_gate.decision.duration"].histogram
    assert sum(p.count for p in histogram.data_points) == len(made) + 1
    assert list(histogram.data_points[0].explicit_bounds)[:2] == [0.00001, 0.000025]
    countries = {
        attrs(p.attributes)["aidr.network.country"]
        for p in metrics["aidr_gate.network.decisions"].sum.data_points
    }
    assert "unknown" in countries and "US" in countries
    resource = attrs(receiver.metrics[-1].resource_metrics[0].resource.attributes)
    assert resource["service.name"] == "gate-under-test"
    assert resource["deployment.environment"] == "test"
    assert all(h.get("x-api-key") == "otlp-secret" for h in receiver.headers)
    assert all(h.get("content-encoding") == "gzip" for h in receiver.headers)

    got = list(spans(receiver))
    assert [s.name for s in got] == ["aidr_gate.decide"] * (len(made) + 1)
    by_id = {attrs(s.attributes)["aidr.decision.id"]: s for s in got}
    for decision in made:
        span = by_id[decision.decision_id]
        attributes = attrs(span.attributes)
        assert attributes["aidr.effect"] == decision.effect.value
        assert attributes["aidr.reasons"] == list(decision.reasons)
        assert attributes["aidr.policy.id"] == decision.policy.id
        # STATUS_CODE_ERROR is 2 in the OTLP protobuf.
        assert (span.status.code == 2) is (decision.effect is Effect.DENY)
    traced = attrs(receiver.traces[0].resource_spans[0].resource.attributes)
    assert traced["service.name"] == "gate-under-test"


def test_a_sample_ratio_of_zero_exports_metrics_and_no_spans() -> None:
    with Receiver() as receiver:
        settings = OtlpSettings(endpoint=receiver.url, compression="none", sample_ratio=0.0)
        exporters = Exporters(TelemetrySettings(otlp=settings))
        for decision in decisions():
            exporters.telemetry.record(decision, 0.00004, "/v1/chat/completions")
        asyncio.run(exporters.close())
    assert not list(spans(receiver))
    assert "aidr_gate.decisions" in last_metrics(receiver)
    assert all("content-encoding" not in h for h in receiver.headers)


def test_the_ratio_samples_roots_and_a_sampled_parent_keeps_its_decision_span() -> None:
    """At ratio 0.25, about a quarter of 400 root decisions are traced (bounds far outside the
    binomial's spread); at ratio 0, a decision inside a sampled request span is still traced, as
    its child: the parent decides."""
    made = decisions()
    with Receiver() as receiver:
        settings = OtlpSettings(endpoint=receiver.url, metrics=False, sample_ratio=0.25)
        exporters = Exporters(TelemetrySettings(otlp=settings))
        for index in range(400):
            exporters.telemetry.record(made[index % len(made)], 0.00004, None)
        asyncio.run(exporters.close())
    assert 50 <= len(list(spans(receiver))) <= 150

    with Receiver() as receiver:
        settings = OtlpSettings(endpoint=receiver.url, metrics=False, sample_ratio=0.0)
        exporters = Exporters(TelemetrySettings(otlp=settings))
        tracer = exporters.tracer_provider.get_tracer("host-app")
        with tracer.start_as_current_span("POST /v1/chat/completions") as request:
            exporters.telemetry.record(made[0], 0.00004, None)
        exporters.telemetry.record(made[0], 0.00004, None)  # a root: not traced at ratio 0
        asyncio.run(exporters.close())
    got = {s.name: s for s in spans(receiver)}
    assert set(got) == {"aidr_gate.decide", "POST /v1/chat/completions"}
    assert got["aidr_gate.decide"].parent_span_id == request.get_span_context().span_id.to_bytes(
        8, "big"
    )
