"""The sinks of the ``audit:`` section: one reader per sink kind, and the settings they build.

:mod:`aidr_gate.settings.audit` reads the section and re-exports these names; each sink kind
(``file``, ``stdout``, ``syslog``, ``http``) has its keys in ``_SINK_KEYS`` and its reader in
``_SINK_READERS``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aidr_gate.document import Checker, join
from aidr_gate.settings.schema import KeyDoc

# Rotated files are compressed with one of these (aidr_gate.audit.compression).
CODECS = ("gzip", "zstd")

# 15 CFR 762.6: export records are kept five years. Retention below this is warned about.
RETENTION_FLOOR_DAYS = 5 * 365 + 2


class FsyncPolicy(StrEnum):
    """When the file sink forces records to disk."""

    ALWAYS = "always"  # after every batch, before the records' submit() awaitables resolve
    INTERVAL = "interval"  # every ``fsync_interval`` seconds
    NEVER = "never"  # left to the operating system (still at rotation and close)


SYSLOG_FACILITIES: dict[str, int] = {
    "kern": 0,
    "user": 1,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "authpriv": 10,
    "local0": 16,
    "local1": 17,
    "local2": 18,
    "local3": 19,
    "local4": 20,
    "local5": 21,
    "local6": 22,
    "local7": 23,
}


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    """Queueing, spooling and retrying for one sink."""

    queue_size: int = 10_000
    batch_size: int = 500
    spool_max_bytes: int = 1 << 30
    retries: int = 5  # attempts before the sink counts as down and new records spool
    backoff_base: float = 0.5
    backoff_max: float = 30.0


@dataclass(frozen=True, slots=True)
class FileSinkConfig:
    """The rotating JSONL file: the trail's journal, from which the chain is recovered."""

    name: str
    path: Path
    max_bytes: int = 100 * 1024 * 1024
    rotate_seconds: float | None = 86_400.0
    fsync: FsyncPolicy = FsyncPolicy.INTERVAL
    fsync_interval: float = 1.0
    compress: bool = True
    # zstd (default) or gzip, and its level: zstd 1 costs under a microsecond a record and packs
    # tighter than gzip 9 (20 µs a record); bench/audit.py measures them.
    compression: str = "zstd"
    compress_level: int = 1
    retention_days: int | None = None  # None: never delete
    spool_max_bytes: int = 1 << 30  # where records go while the file cannot be written


@dataclass(frozen=True, slots=True)
class StdoutSinkConfig:
    """One record per line on standard output (container log collection)."""

    name: str
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)


@dataclass(frozen=True, slots=True)
class SyslogSinkConfig:
    """RFC 5424 syslog over UDP, TCP (RFC 6587 octet counting) or TLS (RFC 5425)."""

    name: str
    transport: str = "udp"
    host: str = "127.0.0.1"
    port: int = 514
    facility: int = 16
    app_name: str = "aidr-gate"
    hostname: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify: bool = True
    server_name: str | None = None
    timeout: float = 10.0
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)


@dataclass(frozen=True, slots=True)
class HttpSinkConfig:
    """Batches to Splunk HEC (``hec``) or Elasticsearch ``_bulk`` (``elasticsearch``)."""

    name: str
    format: str
    url: str
    index: str | None = None
    token_file: Path | None = None
    auth_scheme: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    max_batch_bytes: int = 4 * 1024 * 1024
    timeout: float = 10.0
    ca_file: Path | None = None
    verify: bool = True
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)


SinkConfig = FileSinkConfig | StdoutSinkConfig | SyslogSinkConfig | HttpSinkConfig


_DELIVERY = (
    "queue_size",
    "batch_size",
    "spool_max_bytes",
    "retries",
    "backoff_base",
    "backoff_max",
)
_SINK_KEYS: dict[str, tuple[str, ...]] = {
    "file": (
        "path",
        "max_bytes",
        "rotate_seconds",
        "fsync",
        "fsync_interval",
        "compress",
        "compression",
        "compress_level",
        "retention_days",
        "spool_max_bytes",
    ),
    "stdout": _DELIVERY,
    "syslog": (
        "transport",
        "host",
        "port",
        "facility",
        "app_name",
        "hostname",
        "ca_file",
        "cert_file",
        "key_file",
        "verify",
        "server_name",
        "timeout",
        *_DELIVERY,
    ),
    "http": (
        "format",
        "url",
        "index",
        "token_file",
        "auth_scheme",
        "headers",
        "max_batch_bytes",
        "timeout",
        "ca_file",
        "verify",
        *_DELIVERY,
    ),
}
_SYSLOG_PORTS = {"udp": 514, "tcp": 514, "tls": 6514}


class FieldReader:
    """Typed values of a section's keys, each problem recorded on the checker."""

    def __init__(self, check: Checker, base: Path) -> None:
        self.check = check
        self.base = base

    def path(self, raw: Any, where: str) -> Path | None:
        text = self.check.string(raw, where)
        if text is None:
            return None
        value = Path(text).expanduser()
        return value if value.is_absolute() else self.base / value

    def positive(self, data: Mapping[str, Any], key: str, where: str, default: float) -> float:
        if data.get(key) is None:
            return default
        got = self.check.number(data[key], join(where, key), minimum=0.0)
        if got is not None and got <= 0:
            self.check.error(join(where, key), "must be greater than 0")
            return default
        return default if got is None else got

    def seconds(
        self, data: Mapping[str, Any], key: str, where: str, default: float, maximum: float
    ) -> float:
        """A duration from 0 to *maximum* seconds."""
        if data.get(key) is None:
            return default
        got = self.check.number(data[key], join(where, key), minimum=0.0)
        if got is not None and got > maximum:
            self.check.error(join(where, key), f"must be at most {maximum:g} seconds, not {got:g}")
            return default
        return default if got is None else got

    def count(self, data: Mapping[str, Any], key: str, where: str, default: int) -> int:
        if data.get(key) is None:
            return default
        got = self.check.integer(data[key], join(where, key), minimum=1)
        return default if got is None else got

    def flag(self, data: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
        if data.get(key) is None:
            return default
        got = self.check.boolean(data[key], join(where, key))
        return default if got is None else got

    def choice(
        self, data: Mapping[str, Any], key: str, where: str, choices: list[str], default: str
    ) -> str:
        if data.get(key) is None:
            return default
        got = self.check.string(data[key], join(where, key), choices=choices)
        return default if got is None else got

    def text(self, data: Mapping[str, Any], key: str, where: str) -> str | None:
        if data.get(key) is None:
            return None
        return self.check.string(data[key], join(where, key))

    def delivery(self, data: Mapping[str, Any], where: str) -> DeliveryConfig:
        d = DeliveryConfig()
        return DeliveryConfig(
            queue_size=self.count(data, "queue_size", where, d.queue_size),
            batch_size=self.count(data, "batch_size", where, d.batch_size),
            spool_max_bytes=self.count(data, "spool_max_bytes", where, d.spool_max_bytes),
            retries=self.count(data, "retries", where, d.retries),
            backoff_base=self.positive(data, "backoff_base", where, d.backoff_base),
            backoff_max=self.positive(data, "backoff_max", where, d.backoff_max),
        )

    def file(self, data: Mapping[str, Any], key: str, where: str) -> Path | None:
        """An optional path (empty or absent: none)."""
        return self.path(data[key], join(where, key)) if data.get(key) else None


def read_sink(
    reader: FieldReader, raw: Any, where: str, directory: Path, names: set[str]
) -> SinkConfig | None:
    """One entry of ``audit.sinks``; *names* collects the names seen so far."""
    check = reader.check
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind not in _SINK_KEYS:
        if isinstance(raw, dict):
            check.string(kind, join(where, "type"), choices=list(_SINK_KEYS))
        else:
            check.mapping(raw, where)
        return None
    data = check.mapping(raw, where, keys=("type", "name", *_SINK_KEYS[kind]))
    if data is None:
        return None
    name = _sink_name(reader, data, where, kind, names)
    if kind == "file":
        return _file_sink(reader, data, where, name, directory)
    delivery = reader.delivery(data, where)
    return _SINK_READERS[kind](reader, data, where, name, delivery)


def _sink_name(
    reader: FieldReader, data: Mapping[str, Any], where: str, kind: str, names: set[str]
) -> str:
    name = reader.text(data, "name", where) or kind
    if name in names:
        reader.check.error(
            join(where, "name"), f"sink name {name!r} is used twice (set distinct names)"
        )
    names.add(name)
    if not Checker.IDENT.match(name):
        reader.check.error(join(where, "name"), f"{name!r} must be a lower-case identifier")
    return name


def _file_sink(
    reader: FieldReader, data: Mapping[str, Any], where: str, name: str, directory: Path
) -> FileSinkConfig:
    default = FileSinkConfig(name=name, path=directory / "audit.jsonl")
    path = _file_path(reader, data, where, directory) or default.path
    rotate = default.rotate_seconds
    if "rotate_seconds" in data:
        rotate = (
            None
            if data["rotate_seconds"] is None
            else reader.positive(data, "rotate_seconds", where, 86_400.0)
        )
    retention = _retention(reader, data, where)
    return FileSinkConfig(
        name=name,
        path=path,
        max_bytes=reader.count(data, "max_bytes", where, default.max_bytes),
        rotate_seconds=rotate,
        fsync=FsyncPolicy(
            reader.choice(data, "fsync", where, [p.value for p in FsyncPolicy], default.fsync.value)
        ),
        fsync_interval=reader.positive(data, "fsync_interval", where, default.fsync_interval),
        compress=reader.flag(data, "compress", where, default.compress),
        compression=reader.choice(data, "compression", where, list(CODECS), "zstd"),
        compress_level=_level(reader, data, where, default.compress_level),
        retention_days=retention,
        spool_max_bytes=reader.count(data, "spool_max_bytes", where, default.spool_max_bytes),
    )


def _file_path(
    reader: FieldReader, data: Mapping[str, Any], where: str, directory: Path
) -> Path | None:
    """``path``, relative to the audit directory (not the configuration file)."""
    if data.get("path") is None:
        return None
    got = reader.check.string(data["path"], join(where, "path"))
    if got is None:
        return None
    value = Path(got).expanduser()
    return value if value.is_absolute() else directory / value


def _retention(reader: FieldReader, data: Mapping[str, Any], where: str) -> int | None:
    if data.get("retention_days") is None:
        return None
    check = reader.check
    retention = check.integer(data["retention_days"], join(where, "retention_days"), minimum=1)
    if retention is not None and retention < RETENTION_FLOOR_DAYS:
        check.warn(
            join(where, "retention_days"),
            f"{retention} days is less than the 5 years export records are kept under 15 CFR 762.6",
        )
    return retention


def _stdout_sink(
    reader: FieldReader, data: Mapping[str, Any], where: str, name: str, delivery: DeliveryConfig
) -> StdoutSinkConfig:
    return StdoutSinkConfig(name=name, delivery=delivery)


def _syslog_sink(
    reader: FieldReader, data: Mapping[str, Any], where: str, name: str, delivery: DeliveryConfig
) -> SyslogSinkConfig:
    check = reader.check
    transport = reader.choice(data, "transport", where, ["udp", "tcp", "tls"], "udp")
    port = _SYSLOG_PORTS[transport]
    if data.get("port") is not None:
        got_port = check.integer(data["port"], join(where, "port"), minimum=1)
        if got_port is not None and got_port > 65535:
            check.error(join(where, "port"), "must be at most 65535")
        port = got_port or port
    facility = reader.choice(data, "facility", where, list(SYSLOG_FACILITIES), "local0")
    host = reader.text(data, "host", where) or "127.0.0.1"
    if not _HOST.match(host):
        check.error(join(where, "host"), f"{host!r} is not a host name or IP address")
    return SyslogSinkConfig(
        name=name,
        transport=transport,
        host=host,
        port=port,
        facility=SYSLOG_FACILITIES[facility],
        app_name=reader.text(data, "app_name", where) or "aidr-gate",
        hostname=reader.text(data, "hostname", where),
        ca_file=reader.file(data, "ca_file", where),
        cert_file=reader.file(data, "cert_file", where),
        key_file=reader.file(data, "key_file", where),
        verify=reader.flag(data, "verify", where, True),
        server_name=reader.text(data, "server_name", where),
        timeout=reader.positive(data, "timeout", where, 10.0),
        delivery=delivery,
    )


def _http_sink(
    reader: FieldReader, data: Mapping[str, Any], where: str, name: str, delivery: DeliveryConfig
) -> HttpSinkConfig:
    check = reader.check
    fmt = reader.choice(data, "format", where, ["hec", "elasticsearch"], "")
    url = reader.text(data, "url", where)
    if url is None:
        check.error(join(where, "url"), "is required")
    elif not url.startswith(("http://", "https://")) or not _host_of(url):
        check.error(join(where, "url"), f"{url!r} is not an http:// or https:// URL with a host")
    if not fmt:
        check.error(join(where, "format"), "is required (hec or elasticsearch)")
    return HttpSinkConfig(
        name=name,
        format=fmt or "hec",
        url=url or "http://invalid",
        index=reader.text(data, "index", where),
        token_file=reader.file(data, "token_file", where),
        auth_scheme=reader.text(data, "auth_scheme", where),
        headers=_http_headers(check, data, where),
        max_batch_bytes=reader.count(data, "max_batch_bytes", where, 4 * 1024 * 1024),
        timeout=reader.positive(data, "timeout", where, 10.0),
        ca_file=reader.file(data, "ca_file", where),
        verify=reader.flag(data, "verify", where, True),
        delivery=delivery,
    )


def _http_headers(
    check: Checker, data: Mapping[str, Any], where: str
) -> tuple[tuple[str, str], ...]:
    if data.get("headers") is None:
        return ()
    headers: list[tuple[str, str]] = []
    mapping = check.mapping(data["headers"], join(where, "headers"))
    for key, value in (mapping or {}).items():
        text = check.string(value, join(join(where, "headers"), key))
        if text is not None:
            headers.append((key, text))
    return tuple(headers)


_DeliveredSinkReader = Callable[
    [FieldReader, Mapping[str, Any], str, str, DeliveryConfig], SinkConfig
]
# The sinks that go through a delivery queue; the file sink is the journal and has none.
_SINK_READERS: dict[str, _DeliveredSinkReader] = {
    "stdout": _stdout_sink,
    "syslog": _syslog_sink,
    "http": _http_sink,
}


# A DNS name, an IPv4 address or a bracket-free IPv6 address.
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}\.?)*|[0-9A-Fa-f:.]+)$")


def _host_of(url: str) -> str:
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def _level(reader: FieldReader, data: Mapping[str, Any], where: str, default: int) -> int:
    """``compress_level``: 1 (fastest) to 9; zstd and gzip both take it."""
    level = reader.count(data, "compress_level", where, default)
    if level > 9:
        reader.check.error(join(where, "compress_level"), f"must be 1 to 9, not {level}")
        return default
    return level


def sink_docs() -> tuple[KeyDoc, ...]:
    names = dict.fromkeys(key for keys in _SINK_KEYS.values() for key in keys)
    return (
        KeyDoc("type", "file, stdout, syslog or http"),
        KeyDoc("name", "the sink's name in metrics and spools (default: its type)"),
        *(
            KeyDoc(name, "for " + ", ".join(t for t, keys in _SINK_KEYS.items() if name in keys))
            for name in names
        ),
    )
