"""The exporters a ``telemetry:`` section asks for, around the one :class:`Telemetry` they read.

``Exporters(settings)`` builds the telemetry and, as configured, the Prometheus scrape app, the
OTLP metrics thread and the OTLP tracer; ``start``/``close`` bracket the process's life (the
sidecar and the middleware call them from their lifespan). Without the ``telemetry`` install
extra, asking for an exporter is a :class:`~aidr_gate.errors.ConfigError` (``validate`` reports
the same through :func:`~aidr_gate.telemetry.settings.read_telemetry`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aidr_gate.errors import ConfigError
from aidr_gate.telemetry.record import INSTRUMENTATION, Telemetry
from aidr_gate.telemetry.settings import (
    EXTRA_HINT,
    OTLP_MODULES,
    PROMETHEUS_MODULES,
    SECTION,
    TelemetrySettings,
    installed,
)
from aidr_gate.version import __version__

if TYPE_CHECKING:
    import uvicorn

    from aidr_gate.telemetry.otlp import OtlpMetrics
    from aidr_gate.telemetry.prometheus import MetricsApp


class Exporters:
    """One process's telemetry and the exporters its settings name."""

    def __init__(self, settings: TelemetrySettings, *, file: str = "<telemetry>") -> None:
        _require_extra(settings, file)
        self.settings = settings
        self.tracer_provider: Any = None
        tracer = None
        ratio = 1.0
        otlp = settings.otlp
        if otlp is not None and otlp.traces:
            from aidr_gate.telemetry.otlp import tracer_provider

            self.tracer_provider = tracer_provider(otlp)
            tracer = self.tracer_provider.get_tracer(INSTRUMENTATION, __version__)
            ratio = otlp.sample_ratio
        self.telemetry = Telemetry(settings, tracer=tracer, root_sample_ratio=ratio)
        self.metrics_app: MetricsApp | None = None
        if settings.prometheus is not None:
            from aidr_gate.telemetry.prometheus import metrics_app

            self.metrics_app = metrics_app(self.telemetry, path=settings.prometheus.path)
        self.otlp_metrics: OtlpMetrics | None = None
        if otlp is not None and otlp.metrics:
            from aidr_gate.telemetry.otlp import OtlpMetrics

            self.otlp_metrics = OtlpMetrics(self.telemetry, otlp)

    def start(self) -> None:
        """Start the periodic OTLP export (the scrape app needs nothing started)."""
        if self.otlp_metrics is not None:
            self.otlp_metrics.start()

    async def close(self) -> None:
        """Export what is left and stop, off the event loop (exports are blocking HTTP calls)."""
        if self.otlp_metrics is not None:
            await asyncio.to_thread(self.otlp_metrics.close)
        if self.tracer_provider is not None:
            await asyncio.to_thread(self.tracer_provider.shutdown)

    def metrics_server(self, **options: Any) -> uvicorn.Server:
        """A uvicorn server for the scrape app on ``prometheus.host:port`` (its own port)."""
        import uvicorn

        from aidr_gate.sidecar.app import uvicorn_config

        prometheus = self.settings.prometheus
        if prometheus is None or self.metrics_app is None:
            raise ValueError("no prometheus exporter is configured")
        config = uvicorn_config(
            self.metrics_app, host=prometheus.host, port=prometheus.port, **options
        )
        return uvicorn.Server(config)


def _require_extra(settings: TelemetrySettings, file: str) -> None:
    missing = []
    if settings.prometheus is not None and not installed(PROMETHEUS_MODULES):
        missing.append(("prometheus", "prometheus_client"))
    if settings.otlp is not None and not installed(OTLP_MODULES):
        missing.append(("otlp", "the OpenTelemetry SDK and its OTLP/HTTP exporter"))
    if missing:
        raise ConfigError.merge(
            [
                ConfigError.single(file, f"{SECTION}.{key}", f"needs {what}: {EXTRA_HINT}")
                for key, what in missing
            ]
        )
