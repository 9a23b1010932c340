"""Metrics and traces of the gate: one table of metrics, cheap recording, exporters on request.

- :mod:`~aidr_gate.telemetry.table`: every metric (name, type, unit, labels, help).
- :mod:`~aidr_gate.telemetry.record`: :class:`Telemetry`, what the request path and events call;
  :mod:`~aidr_gate.telemetry.counts` adds to the cells for it.
- :mod:`~aidr_gate.telemetry.settings`: the ``telemetry:`` configuration section.
- :mod:`~aidr_gate.telemetry.prometheus` and :mod:`~aidr_gate.telemetry.otlp`: the exporters,
  which need the ``telemetry`` install extra; :mod:`~aidr_gate.telemetry.export` builds them.

The core imports opentelemetry-api only.
"""

from __future__ import annotations

from aidr_gate.telemetry.record import _PROVIDER_GLOBALS, INSTRUMENTATION, Collected, Telemetry
from aidr_gate.telemetry.settings import (
    LabelSettings,
    OtlpSettings,
    PrometheusSettings,
    TelemetrySettings,
    read_telemetry,
    telemetry_settings,
)
from aidr_gate.telemetry.table import METRICS, Kind, MetricSpec

__all__ = [
    "INSTRUMENTATION",
    "METRICS",
    "_PROVIDER_GLOBALS",
    "Collected",
    "Kind",
    "LabelSettings",
    "MetricSpec",
    "OtlpSettings",
    "PrometheusSettings",
    "Telemetry",
    "TelemetrySettings",
    "read_telemetry",
    "telemetry_settings",
]
