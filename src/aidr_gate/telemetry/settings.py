"""The ``telemetry:`` section: a Prometheus scrape endpoint, OTLP/HTTP export, label opt-ins.

Read with a :class:`~aidr_gate.document.Checker`, so every problem is reported as
``file:line: telemetry.key.path: message`` and one run lists them all. Each default is written
once, in the dataclasses below. Asking for an exporter without the ``telemetry`` install extra is
an error here, at ``validate`` time, not a crash at start::

    telemetry:
      prometheus:                # absent, null or false: no scrape endpoint; true or {}: defaults
        host: 127.0.0.1          # the metrics listener, a port of its own (sidecar or middleware)
        port: 9464
        path: /metrics
        on_main_port: false      # true: the sidecar (or the middleware) answers path on its main port
      otlp:                      # absent, null or false: no OTLP; true or {}: the defaults
        endpoint: http://127.0.0.1:4318   # the collector; /v1/metrics and /v1/traces are appended
        headers: {}              # none: OTEL_EXPORTER_OTLP_HEADERS is used, if set
        interval: 60             # seconds between metric exports
        timeout: 10              # seconds per export
        compression: gzip        # gzip or none
        metrics: true
        traces: true
        sample_ratio: 1.0        # share of decisions traced (a sampled parent's span is kept)
        resource: {service.name: aidr-gate}
      labels:
        entities: false          # per-entity decision counts (aidr_gate_entity_decisions_total)
        max_entities: 100        # at most this many entities get their own series
      max_series: 2000           # series per metric at most; past it, label values become _other
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from aidr_gate.document import Checker, join
from aidr_gate.settings.schema import EVERY_KEY, Configured, KeyDoc, Section, subkeys

SECTION = "telemetry"
EXTRA_HINT = "install the telemetry extra: pip install 'aidr-gate[telemetry]'"
# What each exporter imports; find_spec looks without importing.
PROMETHEUS_MODULES = ("prometheus_client",)
OTLP_MODULES = ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")
DEFAULT_RESOURCE: tuple[tuple[str, str | int | float | bool], ...] = (
    ("service.name", "aidr-gate"),
)
MAX_INTERVAL = 86_400.0
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an RFC 9110 token


@dataclass(frozen=True, slots=True)
class PrometheusSettings:
    """Where the scrape endpoint is served."""

    host: str = "127.0.0.1"
    port: int = 9464
    path: str = "/metrics"
    on_main_port: bool = False


@dataclass(frozen=True, slots=True)
class OtlpSettings:
    """OTLP/HTTP export of metrics and traces through the OpenTelemetry SDK's exporters."""

    endpoint: str = "http://127.0.0.1:4318"
    headers: tuple[tuple[str, str], ...] = ()
    interval: float = 60.0
    timeout: float = 10.0
    compression: str = "gzip"
    metrics: bool = True
    traces: bool = True
    sample_ratio: float = 1.0
    resource: tuple[tuple[str, str | int | float | bool], ...] = DEFAULT_RESOURCE

    def signal_url(self, signal: str) -> str:
        """The endpoint of one signal: ``http://collector:4318/v1/metrics``."""
        return f"{self.endpoint.rstrip('/')}/v1/{signal}"


@dataclass(frozen=True, slots=True)
class LabelSettings:
    """Labels an operator may opt into; bounded even then."""

    entities: bool = False
    max_entities: int = 100


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """The parsed ``telemetry:`` section; the defaults export nothing."""

    prometheus: PrometheusSettings | None = None
    otlp: OtlpSettings | None = None
    labels: LabelSettings = field(default_factory=LabelSettings)
    max_series: int = 2000

    @property
    def exporting(self) -> bool:
        """True when any exporter of ours reads the metrics (so the request path counts)."""
        return self.prometheus is not None or (self.otlp is not None and self.otlp.metrics)


KEYS: tuple[KeyDoc, ...] = (
    KeyDoc(
        "prometheus",
        "a scrape endpoint (true or a mapping; absent: none)",
        (
            KeyDoc("host", "address of the metrics listener (a port of its own)"),
            KeyDoc("port", "port of the metrics listener"),
            KeyDoc("path", "path the endpoint answers"),
            KeyDoc("on_main_port", "serve the path on the main port instead of a port of its own"),
        ),
    ),
    KeyDoc(
        "otlp",
        "OTLP/HTTP export (true or a mapping; absent: none)",
        (
            KeyDoc("endpoint", "the collector's base URL; /v1/metrics and /v1/traces are appended"),
            KeyDoc(
                "headers", "HTTP headers sent with every export (none: OTEL_EXPORTER_OTLP_HEADERS)"
            ),
            KeyDoc("interval", "seconds between metric exports"),
            KeyDoc("timeout", "seconds an export may take"),
            KeyDoc("compression", "gzip or none"),
            KeyDoc("metrics", "export metrics"),
            KeyDoc("traces", "export a span per decision"),
            KeyDoc("sample_ratio", "share of decisions traced, 0 to 1"),
            KeyDoc("resource", "resource attributes, such as service.name"),
        ),
    ),
    KeyDoc(
        "labels",
        "labels to opt into",
        (
            KeyDoc("entities", "count decisions per entity too"),
            KeyDoc("max_entities", "entities with their own series at most; the rest are _other"),
        ),
    ),
    KeyDoc(
        "max_series", "series per metric at most; past it, new label sets are counted as _other"
    ),
)


def defaults(cls: type[Any]) -> dict[str, Any]:
    """Each field's default of a settings dataclass, by name."""
    return {f.name: getattr(cls(), f.name) for f in fields(cls)}


def installed(modules: tuple[str, ...]) -> bool:
    """True when every module can be imported (checked without importing it)."""
    for name in modules:
        try:
            if importlib.util.find_spec(name) is None:
                return False
        except (ImportError, ValueError):  # a parent package missing, or blocked in sys.modules
            return False
    return True


class _Section:
    """Typed reads of one mapping of the section; an absent or bad key gives the class default."""

    def __init__(self, check: Checker, data: Mapping[str, Any], where: str, cls: type[Any]):
        self.check = check
        self.data = data
        self.where = where
        self.default = defaults(cls)

    def at(self, key: str) -> str:
        return join(self.where, key)

    def given(self, key: str) -> bool:
        return self.data.get(key) is not None

    def number(self, key: str, minimum: float, maximum: float, *, above: bool = False) -> float:
        if not self.given(key):
            return float(self.default[key])
        got = self.check.number(self.data[key], self.at(key), minimum=minimum)
        if got is None:
            return float(self.default[key])
        if got > maximum or (above and got <= minimum):
            low = f"more than {minimum:g}" if above else f"at least {minimum:g}"
            self.check.error(self.at(key), f"must be {low} and at most {maximum:g}, not {got:g}")
            return float(self.default[key])
        return got

    def integer(self, key: str, minimum: int, maximum: int) -> int:
        if not self.given(key):
            return int(self.default[key])
        got = self.check.integer(self.data[key], self.at(key), minimum=minimum)
        if got is not None and got > maximum:
            self.check.error(self.at(key), f"must be at most {maximum}, not {got}")
            got = None
        return int(self.default[key]) if got is None else got

    def flag(self, key: str) -> bool:
        if not self.given(key):
            return bool(self.default[key])
        got = self.check.boolean(self.data[key], self.at(key))
        return bool(self.default[key]) if got is None else got

    def text(self, key: str, *, choices: tuple[str, ...] | None = None) -> str:
        if not self.given(key):
            return str(self.default[key])
        got = self.check.string(self.data[key], self.at(key), choices=choices)
        return str(self.default[key]) if got is None else got


def _switch(check: Checker, raw: Any, where: str) -> dict[str, Any] | None:
    """An exporter's value: ``true`` or ``{}`` for the defaults, ``false`` for none, or a mapping."""
    if raw is False:
        return None
    if raw is True:
        return {}
    return check.mapping(raw, where, keys=subkeys(KEYS, where.rsplit(".", 1)[-1]))


def _read_prometheus(check: Checker, raw: Any) -> PrometheusSettings | None:
    where = join(SECTION, "prometheus")
    data = _switch(check, raw, where)
    if data is None:
        return None
    r = _Section(check, data, where, PrometheusSettings)
    path = r.text("path")
    if not path.startswith("/"):
        check.error(r.at("path"), f"{path!r} must start with '/'")
        path = r.default["path"]
    on_main = r.flag("on_main_port")
    if on_main:
        for key in ("host", "port"):
            if r.given(key):
                check.error(r.at(key), "is for the metrics port of its own; on_main_port is true")
    if not installed(PROMETHEUS_MODULES):
        check.error(where, f"needs prometheus_client, which is not installed: {EXTRA_HINT}")
    return PrometheusSettings(
        host=r.text("host"), port=r.integer("port", 1, 65535), path=path, on_main_port=on_main
    )


def _read_mapping(
    check: Checker, raw: Any, where: str, values: tuple[type, ...]
) -> tuple[tuple[str, Any], ...]:
    data = check.mapping(raw, where) or {}
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, bool | int | float | str) and isinstance(value, values):
            if isinstance(value, str) and not value.strip():
                check.error(join(where, key), "must not be empty")
                continue
            out.append((key, value))
        else:
            kinds = " or ".join(t.__name__ for t in values)
            check.error(join(where, key), f"must be a {kinds}, not {type(value).__name__}")
    return tuple(out)


def _read_otlp(check: Checker, raw: Any) -> OtlpSettings | None:
    where = join(SECTION, "otlp")
    data = _switch(check, raw, where)
    if data is None:
        return None
    r = _Section(check, data, where, OtlpSettings)
    endpoint = r.text("endpoint")
    if not endpoint.startswith(("http://", "https://")) or "?" in endpoint:
        check.error(r.at("endpoint"), f"{endpoint!r} is not an http:// or https:// URL")
        endpoint = r.default["endpoint"]
    headers: tuple[tuple[str, str], ...] = ()
    if r.given("headers"):
        headers = _read_mapping(check, data["headers"], r.at("headers"), (str,))
        for name, _ in headers:
            if not _HEADER_NAME.match(name):
                check.error(join(r.at("headers"), name), "is not a valid HTTP header name")
    resource = r.default["resource"]
    if r.given("resource"):
        given = _read_mapping(check, data["resource"], r.at("resource"), (str, int, float, bool))
        if "service.name" not in dict(given):
            given = (*DEFAULT_RESOURCE, *given)
        resource = given
    interval = r.number("interval", 0.1, MAX_INTERVAL)
    timeout = r.number("timeout", 0.0, MAX_INTERVAL, above=True)
    if r.given("timeout") and timeout > interval:
        check.error(r.at("timeout"), f"must be at most the interval ({interval:g} s)")
    metrics, traces = r.flag("metrics"), r.flag("traces")
    if not (metrics or traces):
        check.error(where, "exports nothing: metrics and traces are both false")
    if not installed(OTLP_MODULES):
        check.error(where, f"needs the OpenTelemetry SDK and its OTLP exporter: {EXTRA_HINT}")
    return OtlpSettings(
        endpoint=endpoint,
        headers=headers,
        interval=interval,
        timeout=timeout,
        compression=r.text("compression", choices=("gzip", "none")),
        metrics=metrics,
        traces=traces,
        sample_ratio=r.number("sample_ratio", 0.0, 1.0),
        resource=resource,
    )


def read_telemetry(
    check: Checker, raw: Any, base_dir: Path | None = None
) -> TelemetrySettings | None:
    """Read the section (``None``: the defaults, nothing exported); problems go to *check*.

    *base_dir* is unused (the section names no file); it keeps the signature of the other
    section readers.
    """
    if raw is None:
        return TelemetrySettings()
    data = check.mapping(raw, SECTION, keys=[k.name for k in KEYS])
    if data is None:
        return None
    where = join(SECTION, "labels")
    labels = LabelSettings()
    if data.get("labels") is not None:
        label_data = check.mapping(data["labels"], where, keys=subkeys(KEYS, "labels"))
        if label_data is not None:
            r = _Section(check, label_data, where, LabelSettings)
            labels = LabelSettings(
                entities=r.flag("entities"), max_entities=r.integer("max_entities", 1, 10_000)
            )
    top = _Section(check, data, SECTION, TelemetrySettings)
    return TelemetrySettings(
        prometheus=_read_prometheus(check, data["prometheus"])
        if data.get("prometheus") is not None
        else None,
        otlp=_read_otlp(check, data["otlp"]) if data.get("otlp") is not None else None,
        labels=labels,
        max_series=top.integer("max_series", 10, 1_000_000),
    )


def telemetry_settings(config: Configured) -> TelemetrySettings:
    """The ``telemetry:`` settings of a loaded configuration."""
    settings: TelemetrySettings = config.get(TELEMETRY)
    return settings


# Every key is restart-only: exporters are built when the process starts.
TELEMETRY: Section[TelemetrySettings] = Section(SECTION, read_telemetry, KEYS, restart=(EVERY_KEY,))
