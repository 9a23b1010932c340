"""What metrics cost per decision: the middleware's time per request with metrics enabled beside
disabled, in one run.

One gated app (a real ``AIDRGateMiddleware`` over an app that does almost nothing, called
in-process as uvicorn would, its default audit trail included) whose runtime's telemetry is swapped
between variants in interleaved rounds, the order rotated each round (a shared machine drifts):

- ``disabled``: no ``telemetry:`` section and no host SDK (the default): ``record`` returns at once;
- ``metrics``: the Prometheus exporter configured: every decision goes into the in-process cells
  (a scrape is not on the request path and is not run here);
- ``metrics + traces`` at sample ratio 1 and 0.01: an SDK tracer provider with the OTLP/HTTP span
  exporter posting to a local receiver, as ``telemetry.otlp`` builds it.

Per round and variant: the median time per request. Printed: each variant's median over rounds,
and the median of the per-round differences from ``disabled`` with their spread. Target:
``metrics`` within +3 us p50 of ``disabled``. Also printed: what the OpenTelemetry SDK itself costs
per ``Counter.add`` and ``Histogram.record`` here (one reader), the measurement that made the gate
aggregate in its own cells, beside one ``Telemetry.record`` into them and one disabled.

In-process, not under wrk: the difference sought is a microsecond or two per request, below what
server CPU per request resolves on a shared machine (bench/middleware.py measures the whole gate).

Run: .venv/bin/python bench/metrics.py [--requests 3000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
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
from middleware import BODY, PATH, setup
from serving import describe_machine, median_spread

TARGET_US = 3.0
DISABLED = "disabled"
METRICS = "metrics"


class _Sink(BaseHTTPRequestHandler):
    """A collector that accepts every OTLP post (the spans' export thread needs somewhere to go)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


async def minimal_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An app that does almost nothing, so what differs between variants is the gate's."""
    while (await receive()).get("more_body"):
        pass
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": b'{"ok":true}'})


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


async def call(app: Any, headers: list[tuple[bytes, bytes]]) -> int:
    """One chat completion through *app*, as uvicorn would call it; the response status."""
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    await app(scope, receive, send)
    return status


async def timed(app: Any, headers: list[tuple[bytes, bytes]], count: int) -> list[float]:
    """Microseconds per request of *count* requests."""
    times: list[float] = []
    for _ in range(count):
        start = time.perf_counter_ns()
        status = await call(app, headers)
        # Let background work (audit delivery) take its turn, charged to this request: a server
        # pays it between requests too.
        await asyncio.sleep(0)
        times.append((time.perf_counter_ns() - start) / 1000)
        if status != 200:
            raise SystemExit(f"unexpected status {status}")
    return times


def variants(collector: str) -> tuple[dict[str, Telemetry], list[Exporters]]:
    """Each variant's telemetry, and the exporters to close at the end."""
    prometheus = Exporters(TelemetrySettings(prometheus=PrometheusSettings()))
    built = [prometheus]
    out = {DISABLED: Telemetry(), METRICS: prometheus.telemetry}
    for ratio in (1.0, 0.01):
        otlp = OtlpSettings(endpoint=collector, metrics=False, sample_ratio=ratio, interval=3600)
        traced = Exporters(TelemetrySettings(prometheus=PrometheusSettings(), otlp=otlp))
        built.append(traced)
        out[f"metrics + traces ({ratio:g})"] = traced.telemetry
    return out, built


async def rounds_of(
    config: Path, token: str, count: int, rounds: int, telemetries: dict[str, Telemetry]
) -> dict[str, list[float]]:
    """Per variant, the median time per request of each round, in microseconds."""
    gated = AIDRGateMiddleware(minimal_app, config=str(config))  # type: ignore[arg-type]
    headers = headers_for(token)
    await timed(gated, headers, 500)  # warm: keys, caches, the runtime's first start
    runtime = gated._runtime
    assert runtime is not None
    for telemetry in telemetries.values():
        telemetry.watch_runtime(runtime)  # as the integration will: read at collection only
        runtime.telemetry = telemetry
        await timed(gated, headers, 200)
    names = list(telemetries)
    medians: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        for name in names[index % len(names) :] + names[: index % len(names)]:
            runtime.telemetry = telemetries[name]
            medians[name].append(statistics.median(await timed(gated, headers, count)))
    await runtime.close()
    return medians


def counted(telemetry: Telemetry) -> float:
    """Decisions the cells of *telemetry* hold (what a scrape would report)."""
    return sum(value for _, value in telemetry.points("aidr_gate.decisions"))


def per_call(make: Callable[[], Callable[[], None]], count: int = 50_000) -> float:
    """Best of five: microseconds per call of what *make* returns."""
    run = make()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(count):
            run()
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


def report(medians: dict[str, list[float]]) -> None:
    """Each variant's median time per request and its difference from ``disabled``."""
    base = medians[DISABLED]
    for name, rounds in medians.items():
        p50 = statistics.median(rounds)
        line = f"   {name:26} p50 {p50:7.1f} us"
        if name != DISABLED:
            added, low, high = median_spread([a - b for a, b in zip(rounds, base, strict=True)])
            line += f"   added {added:+6.2f} us (rounds {low:+.2f} .. {high:+.2f})"
            if name == METRICS:
                verdict = "OK" if added <= TARGET_US else "MISSED"
                line += f"   target <= +{TARGET_US:g} us: {verdict}"
        print(line)


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
    print(f"aidr_gate metrics bench: {describe_machine()}")
    print(f"\nmiddleware in-process, {args.rounds} interleaved rounds of {args.requests} requests")
    with tempfile.TemporaryDirectory() as tmp:
        config, token = setup(Path(tmp))
        medians = asyncio.run(rounds_of(config, token, args.requests, args.rounds, telemetries))
    report(medians)
    # The enabled variant did the work measured: its cells hold every one of its decisions.
    expected = 200 + args.rounds * args.requests
    if counted(telemetries[METRICS]) != expected or counted(telemetries[DISABLED]) != 0:
        raise SystemExit("the metrics variant did not count every decision it made")
    print(f"   (the metrics variant counted all {expected} of its decisions; disabled counted 0)")
    print("\nper call (best of 5 x 50,000)")
    for name, us in sdk_costs(telemetries[METRICS]).items():
        print(f"   {name:28} {us:6.2f} us")
    for exporters in built:
        asyncio.run(exporters.close())
    receiver.shutdown()


if __name__ == "__main__":
    main()
