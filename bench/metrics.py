"""What metrics cost per decision: the middleware's time per request with metrics enabled beside
disabled, in one run.

One gated app (a real ``AIDRGateMiddleware`` over an app that does almost nothing, called
in-process as uvicorn would, its default audit trail included) whose runtime's telemetry is swapped
between variants request by request, in rounds, the order shuffled each round (a shared machine's
speed drifts by tens of percent within seconds; so every variant sees the same drift):

- ``disabled``: no ``telemetry:`` section and no host SDK (the default): ``record`` returns at once;
- ``metrics``: the Prometheus exporter configured: every decision goes into the in-process cells
  (a scrape is not on the request path and is not run here);
- ``metrics + traces`` at sample ratio 1 and 0.01: an SDK tracer provider with the OTLP/HTTP span
  exporter posting to a local receiver, as ``telemetry.otlp`` builds it.

Per round and variant: the median per request of the event loop thread's CPU time (the request
path's cost, untouched by other processes and by the audit writer's and span exporter's threads)
and of wall time, each variant in a pass of its own beside ``disabled``. Printed: each variant's
median over rounds beside ``disabled``'s, and the median of the per-round differences with their
spread. Target: ``metrics`` within +3 us p50 of
``disabled`` in event-loop CPU. Also printed: what the OpenTelemetry SDK itself costs
per ``Counter.add`` and ``Histogram.record`` here (one reader), the measurement that made the gate
aggregate in its own cells, beside one ``Telemetry.record`` into them and one disabled, and the
sidecar's one more step per request (``count_upstream``: its upstream's status and time).

In-process, not under wrk: the difference sought is a microsecond or two per request, below what
server CPU per request resolves on a shared machine (bench/middleware.py measures the whole gate).

Run: .venv/bin/python bench/metrics.py [--requests 2000] [--rounds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aidr_gate.asgi.middleware import AIDRGateMiddleware
from aidr_gate.facts import declared_origin
from aidr_gate.gate import Gate
from aidr_gate.runtime import Runtime
from aidr_gate.stages import UPSTREAM_STATE_KEY, UpstreamResult
from aidr_gate.telemetry import OtlpSettings, PrometheusSettings, Telemetry, TelemetrySettings
from aidr_gate.telemetry.export import Exporters
from aidr_gate.telemetry.wiring import TelemetryWiring, count_upstream
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


async def timed(
    app: Any, headers: list[tuple[bytes, bytes]], count: int
) -> tuple[list[float], list[float]]:
    """Microseconds per request of *count* requests: wall time, and the event loop thread's CPU
    time (what the request path costs, without what other processes and threads take)."""
    walls: list[float] = []
    cpus: list[float] = []
    wall, cpu = time.perf_counter_ns, time.thread_time_ns
    for _ in range(count):
        started, used = wall(), cpu()
        status = await call(app, headers)
        # Let background work (audit delivery) take its turn, charged to this request: a server
        # pays it between requests too.
        await asyncio.sleep(0)
        cpus.append((cpu() - used) / 1000)
        walls.append((wall() - started) / 1000)
        if status != 200:
            raise SystemExit(f"unexpected status {status}")
    return walls, cpus


@dataclass
class Medians:
    """One variant's median per request of each round: wall time and event-loop CPU (us)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def variants(collector: str) -> dict[str, Exporters | None]:
    """Each variant's exporters as the runtime builds them from its ``telemetry:`` section
    (:class:`TelemetryWiring`; ``None``: disabled, no section)."""
    out: dict[str, Exporters | None] = {
        DISABLED: TelemetryWiring().exporters,
        METRICS: TelemetryWiring(TelemetrySettings(prometheus=PrometheusSettings())).exporters,
    }
    for ratio in (1.0, 0.01):
        otlp = OtlpSettings(endpoint=collector, metrics=False, sample_ratio=ratio, interval=3600)
        traced = TelemetryWiring(TelemetrySettings(prometheus=PrometheusSettings(), otlp=otlp))
        out[f"metrics + traces ({ratio:g})"] = traced.exporters
    return out


def settle(exporters: Exporters | None) -> None:
    """Between rounds, off the clock: export the spans a round queued and collect garbage."""
    if exporters is not None and exporters.tracer_provider is not None:
        exporters.tracer_provider.force_flush()
    gc.collect()


async def rounds_of(
    config: Path,
    token: str,
    count: int,
    rounds: int,
    telemetries: dict[str, Telemetry],
    built: dict[str, Exporters | None],
) -> list[dict[str, Medians]]:
    """Passes over one gated app, each ``disabled`` beside one other variant, interleaved."""
    gated = AIDRGateMiddleware(minimal_app, config=str(config))  # type: ignore[arg-type]
    headers = headers_for(token)
    await timed(gated, headers, 500)  # warm: keys, caches, the runtime's first start
    runtime = gated.runtime
    assert runtime is not None
    for telemetry in telemetries.values():
        telemetry.watch_runtime(runtime)  # as the runtime does: read at collection only
        runtime.telemetry = telemetry
        await timed(gated, headers, 200)
    # One pass per variant beside ``disabled``: a traced request's aftermath (its span's
    # garbage, the export thread) would otherwise fall on its neighbours of another variant.
    passes = []
    for names in ([DISABLED, other] for other in telemetries if other != DISABLED):
        chosen = {name: telemetries[name] for name in names}
        passes.append(await interleaved(gated, runtime, headers, chosen, built, count, rounds))
    await runtime.close()
    return passes


async def interleaved(
    gated: Any,
    runtime: Runtime,
    headers: list[tuple[bytes, bytes]],
    telemetries: dict[str, Telemetry],
    built: dict[str, Exporters | None],
    count: int,
    rounds: int,
) -> dict[str, Medians]:
    """Per variant, the medians per request of each round, in microseconds."""
    names = list(telemetries)
    medians: dict[str, Medians] = {name: Medians() for name in names}
    for index in range(rounds):
        # Interleaved request by request, in an order shuffled each round: whatever slows the
        # machine for a while slows every variant alike, and no variant always follows the same
        # one (a sampled span's aftermath, its garbage, falls on the next request).
        order = random.Random(index).sample(names, len(names))
        walls: dict[str, list[float]] = {name: [] for name in names}
        cpus: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(count):
            for name in order:
                runtime.telemetry = telemetries[name]
                wall, cpu = await timed(gated, headers, 1)
                walls[name] += wall
                cpus[name] += cpu
        for name in names:
            medians[name].wall.append(statistics.median(walls[name]))
            medians[name].cpu.append(statistics.median(cpus[name]))
            settle(built[name])
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
    # The sidecar's one more step per request: the upstream exchange its proxy left in the scope.
    scope = {"state": {UPSTREAM_STATE_KEY: UpstreamResult(200, 0.02)}}
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
        "count_upstream (sidecar)": per_call(lambda: lambda: count_upstream(telemetry, scope)),
        "count_upstream (disabled)": per_call(lambda: lambda: count_upstream(off, scope)),
    }


def added(got: Medians, base: Medians, measure: str) -> tuple[float, float, float]:
    """Median, least and greatest per-round difference of *measure* from ``disabled``."""
    pairs = zip(getattr(got, measure), getattr(base, measure), strict=True)
    return median_spread([a - b for a, b in pairs])


def report(passes: list[dict[str, Medians]]) -> None:
    """Per variant, its p50 per request beside ``disabled`` of the same pass, and what it adds:
    in event-loop CPU (the target's measure), then in wall time (noisier: other processes and
    threads share 2 cores)."""
    print(f"   {'variant':25} {'loop CPU p50':>13} {'(disabled)':>10}   added (rounds)")
    for medians in passes:
        base = medians[DISABLED]
        for name, got in medians.items():
            if name == DISABLED:
                continue
            line = f"   {name:25} {statistics.median(got.cpu):10.1f} us {statistics.median(base.cpu):7.1f} us"
            cpu, low, high = added(got, base, "cpu")
            line += f"   {cpu:+6.2f} us ({low:+.2f} .. {high:+.2f})"
            wall, wlow, whigh = added(got, base, "wall")
            line += f"   wall {wall:+6.2f} us ({wlow:+.2f} .. {whigh:+.2f})"
            if name == METRICS:
                line += f"   target <= +{TARGET_US:g} us: {'OK' if cpu <= TARGET_US else 'MISSED'}"
            print(line)


def main() -> None:
    """Run the rounds and print the added time per variant."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000, help="requests per variant per round")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    collector = f"http://127.0.0.1:{receiver.server_address[1]}"
    built = variants(collector)
    telemetries = {name: e.telemetry if e else Telemetry() for name, e in built.items()}
    print(f"aidr_gate metrics bench: {describe_machine()}")
    print(f"\nmiddleware in-process, {args.rounds} interleaved rounds of {args.requests} requests")
    with tempfile.TemporaryDirectory() as tmp:
        config, token = setup(Path(tmp))
        passes = asyncio.run(
            rounds_of(config, token, args.requests, args.rounds, telemetries, built)
        )
    report(passes)
    # The enabled variant did the work measured: its cells hold every one of its decisions.
    expected = 200 + args.rounds * args.requests
    if counted(telemetries[METRICS]) != expected or counted(telemetries[DISABLED]) != 0:
        raise SystemExit("the metrics variant did not count every decision it made")
    print(f"   (the metrics variant counted all {expected} of its decisions; disabled counted 0)")
    print("\nper call (best of 5 x 50,000)")
    for name, us in sdk_costs(telemetries[METRICS]).items():
        print(f"   {name:28} {us:6.2f} us")
    for exporters in built.values():
        if exporters is not None:
            asyncio.run(exporters.close())
    receiver.shutdown()


if __name__ == "__main__":
    main()
