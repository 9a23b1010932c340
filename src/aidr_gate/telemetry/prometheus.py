"""The Prometheus scrape endpoint: an ASGI app serving the metrics table in the text format, or in
OpenMetrics when the scraper's ``Accept`` header asks for it (Prometheus does by default).

Needs ``prometheus_client`` (the ``telemetry`` install extra) for the exposition formats and their
content negotiation. Series come from :meth:`Telemetry.collect` at scrape time: a scrape reads the
cells and the watched objects, and the request path never waits for it.

The sidecar serves this app on a port of its own (``telemetry.prometheus.port``) or at a path of its
main port; a middleware host mounts it (``app.mount("/metrics", metrics_app(telemetry))`` in
Starlette or FastAPI).
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString

from aidr_gate.telemetry.record import Collected, Telemetry
from aidr_gate.telemetry.table import Kind

if TYPE_CHECKING:
    from aidr_gate.asgi.types import Receive, Scope, Send

# The bound text prometheus_client writes for its own histograms (``le="0.005"``); untyped there.
_bound_text = cast(Callable[[float], str], floatToGoString)
# Compressing a few kilobytes costs more than sending them; larger expositions are gzipped.
GZIP_MIN_BYTES = 4096


class GateCollector:
    """A ``prometheus_client`` collector that renders :meth:`Telemetry.collect` through the table."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    def collect(self) -> Iterator[Metric]:
        """One metric family per table row."""
        for collected in self.telemetry.collect():
            yield family(collected)


def family(collected: Collected) -> Metric:
    """The ``prometheus_client`` family of one collected metric."""
    spec = collected.spec
    labels = spec.prometheus_labels
    name, unit = spec.prometheus_name, spec.prometheus_unit
    if spec.kind is Kind.HISTOGRAM:
        histogram = HistogramMetricFamily(name, spec.help, labels=labels, unit=unit)
        bounds = [_bound_text(b) for b in spec.buckets] + ["+Inf"]
        for values, counts, total in collected.histograms:
            running, buckets = 0, []
            for bound, count in zip(bounds, counts, strict=True):
                running += count
                buckets.append((bound, float(running)))
            histogram.add_metric(list(values), buckets, total)
        return histogram
    made: CounterMetricFamily | GaugeMetricFamily
    if spec.kind is Kind.COUNTER:
        made = CounterMetricFamily(name, spec.help, labels=labels, unit=unit)
    else:
        made = GaugeMetricFamily(name, spec.help, labels=labels, unit=unit)
    for values, value in collected.points:
        made.add_metric(list(values), value)
    return made


def registry_for(telemetry: Telemetry) -> CollectorRegistry:
    """A registry holding the gate's metrics only (not the process-wide default registry)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GateCollector(telemetry))
    return registry


def exposition(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """The body and content type for a scraper that sent *accept*."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


class MetricsApp:
    """ASGI app answering ``GET``/``HEAD`` with the exposition (at *path* only, when given)."""

    def __init__(self, telemetry: Telemetry, *, path: str | None = None) -> None:
        self.telemetry = telemetry
        self.path = path
        self.registry = registry_for(telemetry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        if self.path is not None and scope.get("path") != self.path:
            await _plain(send, 404, b"not found\n")
            return
        method = scope.get("method")
        if method not in ("GET", "HEAD"):
            await _plain(send, 405, b"method not allowed\n", [(b"allow", b"GET, HEAD")])
            return
        headers = _headers(scope)
        body, content_type = exposition(self.registry, headers.get(b"accept", ""))
        extra = [(b"cache-control", b"no-store")]
        if len(body) >= GZIP_MIN_BYTES and "gzip" in headers.get(b"accept-encoding", ""):
            body = gzip.compress(body, compresslevel=1)
            extra.append((b"content-encoding", b"gzip"))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", content_type.encode()),
                    (b"content-length", str(len(body)).encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


def metrics_app(telemetry: Telemetry, *, path: str | None = None) -> MetricsApp:
    """The scrape endpoint of *telemetry*, to serve or to mount."""
    return MetricsApp(telemetry, path=path)


def _headers(scope: Scope) -> dict[bytes, str]:
    out: dict[bytes, str] = {}
    for name, value in scope.get("headers") or ():
        key = bytes(name).lower()
        if key in (b"accept", b"accept-encoding"):
            text = bytes(value).decode("latin-1")
            out[key] = f"{out[key]},{text}" if key in out else text  # repeated lines joined
    return out


async def _plain(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers: list[Any] = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
