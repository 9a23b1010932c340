"""What metrics cost per decision: the middleware's added time with metrics enabled beside disabled.

One run, one gated app (a real ``AIDRGateMiddleware`` over a minimal ASGI app, called in-process
as uvicorn would, audit trail included), its runtime's telemetry swapped between variants in
interleaved rounds; the quietest round of each variant is kept (a shared machine):

- ``disabled``: no ``telemetry:`` section and no host SDK (the default): ``record`` returns at once;
- ``metrics``: the Prometheus exporter configured: every decision goes into the in-process cells
  (the scrape is not on the request path and is not run here);
- ``metrics + traces`` at sample ratio 1 and 0.01: an SDK tracer provider with the OTLP/HTTP span
  exporter posting to a local receiver, as ``telemetry.otlp`` builds it.

Target: ``metrics`` within +3 us p50 of ``disabled``. It also prints what the OpenTelemetry SDK
itself costs per ``Counter.add`` and ``Histogram.record`` here (one reader), the measurement that
made the gate aggregate in its own cells, beside one ``Telemetry.record`` into them.

Run: .venv/bin/python bench/metrics.py [--requests 3000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aidr_gate.facts import declared_origin
from aidr_gate.gate import Gate
from aidr_gate.middleware import AIDRGateMiddleware
from aidr_gate.telemetry import OtlpSettings, PrometheusSettings, Telemetry, TelemetrySettings
from aidr_gate.telemetry.export import Exporters
from loadgen import CLIENT_IP
from middleware import BODY, _timed, minimal_app, setup

TARGET_US = 3.0


class _Sink(BaseHTTPRequestHandler):
    """A collector that accepts every OTLP post (the spans' export thread needs somewhere to go)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def headers_for(token: str) -> list[tuple[bytes, bytes]]:
    """The request headers of the bench's chat completion."""
    return [
        (b"host", b"bench"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(BODY)).encode()),
        (b"authorization", f"Bearer {token}".encode()),
        (b"x-forwarded-for", CLIENT_IP.encode()),
        (b"user-agent", b"bench/1"),
    ]


def variants(collector: str) -> tuple[dict[str, Telemetry], list[Exporters]]:
    """Each variant's telemetry, and the exporters to close at the end."""
    prometheus = Exporters(TelemetrySettings(prometheus=PrometheusSettings()))
    built = [prometheus]
    out = {"disabled": Telemetry(), "metrics": prometheus.telemetry}
    for ratio in (1.0, 0.01):
        otlp = OtlpSettings(endpoint=collector, metrics=False, sample_ratio=ratio, interval=3600)
        traced = Exporters(TelemetrySettings(prometheus=PrometheusSettings(), otlp=otlp))
        built.append(traced)
        out[f"metrics + traces ({ratio:g})"] = traced.telemetry
    return out, built


async def middleware_rounds(
    config: Path, token: str, count: int, rounds: int, telemetries: dict[str, Telemetry]
) -> dict[str, list[float]]:
    """Per variant, the median time per request of each round, in microseconds."""
    gated = AIDRGateMiddleware(minimal_app, config=str(config))  # type: ignore[arg-type]
    headers = headers_for(token)
    await _timed(gated, headers, 500)  # warm: keys, caches, the runtime's first start
    runtime = gated._runtime
    assert runtime is not None
    for telemetry in telemetries.values():
        telemetry.watch_runtime(runtime)  # as the integration will: read at collection only
        runtime.telemetry = telemetry
        await _timed(gated, headers, 200)
    medians: dict[str, list[float]] = {name: [] for name in telemetries}
    for _ in range(rounds):
        for name, telemetry in telemetries.items():
            runtime.telemetry = telemetry
            times, _ = await _timed(gated, headers, count)
            medians[name].append(statistics.median(times))
    await runtime.close()
    return medians


def per_call(make: Callable[[], Callable[[], None]], count: int = 50_000) -> float:
    """Best of five: microseconds per call of what *make* returns."""
    call = make()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(count):
            call()
        best = min(best, (time.perf_counter() - start) / count * 1e6)
    return best


def sdk_costs(telemetry: Telemetry) -> dict[str, float]:
    """The OpenTelemetry SDK's own cost per measurement, beside one Telemetry.record."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    meter = MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("bench")
    counter = meter.create_counter("c")
    histogram = meter.create_histogram("h", unit="s")
    labels = {
        "aidr.effect": "deny",
        "aidr.reason": "NO_VALID_AGREEMENT",
        "aidr.mode": "enforce",
        "aidr.policy.id": "aidr-2025-01",
    }
    effect = {"aidr.effect": "deny"}
    off = Telemetry()
    decision = Gate.from_path(None).decide(
        identity=None, origin=declared_origin("US"), model_id="aurora-frontier"
    )
    return {
        "sdk Counter.add": per_call(lambda: lambda: counter.add(1, labels)),
        "sdk Histogram.record": per_call(lambda: lambda: histogram.record(4e-05, effect)),
        "Telemetry.record (cells)": per_call(
            lambda: lambda: telemetry.record(decision, 4e-05, "/")
        ),
        "Telemetry.record (disabled)": per_call(lambda: lambda: off.record(decision, 4e-05, "/")),
    }


def main() -> None:
    """Run the rounds and print the added time per variant."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000, help="requests per variant per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    collector = f"http://127.0.0.1:{receiver.server_address[1]}"
    telemetries, built = variants(collector)
    print(f"aidr_gate metrics bench (pid {os.getpid()}, {os.cpu_count()} CPUs)")
    print(f"\nmiddleware in-process, {args.rounds} interleaved rounds of {args.requests} requests")
    with tempfile.TemporaryDirectory() as tmp:
        config, token = setup(Path(tmp))
        medians = asyncio.run(
            middleware_rounds(config, token, args.requests, args.rounds, telemetries)
        )
    base = min(medians["disabled"])
    for name, rounds in medians.items():
        best, added = min(rounds), min(rounds) - base
        verdict = ""
        if name == "metrics":
            verdict = f"   target < +{TARGET_US:g} us   {'OK' if added < TARGET_US else 'MISSED'}"
        spread = max(rounds) - best
        print(
            f"   {name:26} p50 {best:7.1f} us   added {added:+6.1f} us   (spread {spread:.1f}){verdict}"
        )
    print("\nper call (best of 5 x 50,000)")
    for name, us in sdk_costs(telemetries["metrics"]).items():
        print(f"   {name:28} {us:6.2f} us")
    for exporters in built:
        asyncio.run(exporters.close())
    receiver.shutdown()


if __name__ == "__main__":
    main()
