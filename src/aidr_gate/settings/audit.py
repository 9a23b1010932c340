"""The ``audit:`` configuration section: format, sinks, spool, signing, failure policy.

Parsed once at load with a :class:`~aidr_gate.document.Checker`, so every problem is reported with
the file, the key path (``audit.sinks[1].port``) and the line. Relative paths resolve against the
configuration file's directory; with no ``audit`` section the trail writes a rotating file under
``./aidr-gate-audit`` (relative to the working directory).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aidr_gate.document import Checker, join
from aidr_gate.settings.schema import EVERY_KEY, Configured, KeyDoc, Section, subkeys

DEFAULT_DIRECTORY = "aidr-gate-audit"
# Rotated files are compressed with one of these (aidr_gate.audit.compression).
CODECS = ("gzip", "zstd")
ALWAYS_REDACTED: frozenset[str] = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",
        "x-auth-token",
        "x-amz-security-token",
    }
)
DEFAULT_HEADERS: tuple[str, ...] = ("user-agent", "x-request-id", "traceparent")

# 15 CFR 762.6: export records are kept five years. Retention below this is warned about.
RETENTION_FLOOR_DAYS = 5 * 365 + 2


class FsyncPolicy(StrEnum):
    """When the file sink forces records to disk."""

    ALWAYS = "always"  # after every batch, before the records' submit() awaitables resolve
    INTERVAL = "interval"  # every ``fsync_interval`` seconds
    NEVER = "never"  # left to the operating system (still at rotation and close)


class FailurePolicy(StrEnum):
    """What happens when a record can be stored nowhere, not even in the local spool."""

    DENY = "deny"  # no audit, no access: new requests are refused with 503
    ALLOW = "allow"  # keep serving; every lost record is counted and logged


class RecordFormat(StrEnum):
    """How records are rendered."""

    ECS = "ecs"
    OCSF = "ocsf"


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


@dataclass(frozen=True, slots=True)
class SigningConfig:
    """Periodic Ed25519-signed checkpoint records."""

    key_file: Path
    every_records: int = 1000
    every_seconds: float = 60.0


# 50 ms: at most 20 batches a second, each a few wake-ups of the writer thread (its
# timer, the GIL), so under 250 a second at any rate (bench/middleware.py counts them).
DEFAULT_BATCH_LINGER = 0.05
MAX_BATCH_LINGER = 1.0


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """The parsed ``audit`` section."""

    directory: Path
    sinks: tuple[SinkConfig, ...]
    format: RecordFormat = RecordFormat.ECS
    queue_size: int = 10_000
    batch_size: int = 512
    # Seconds the writer lets records gather before it takes a batch (0: take what is there).
    # Every batch is a round trip to the I/O thread; see AuditTrail._write_loop.
    batch_linger: float = DEFAULT_BATCH_LINGER
    on_failure: FailurePolicy = FailurePolicy.DENY
    shutdown_timeout: float = 5.0
    headers: tuple[str, ...] = DEFAULT_HEADERS
    signing: SigningConfig | None = None
    # Each process claims its own slot, <directory>/p<N>: one chain per process (see lock.py).
    per_process: bool = False

    def in_slot(self, slot: int) -> AuditConfig:
        """This configuration for process slot *slot*: everything under ``<directory>/p<slot>``."""
        directory = self.directory / f"p{slot}"
        sinks = tuple(
            replace(s, path=directory / s.path.relative_to(self.directory))
            if isinstance(s, FileSinkConfig)
            else s
            for s in self.sinks
        )
        return replace(self, directory=directory, sinks=sinks, per_process=False)

    @property
    def journal(self) -> FileSinkConfig | None:
        """The file sink, if any (there is at most one)."""
        for sink in self.sinks:
            if isinstance(sink, FileSinkConfig):
                return sink
        return None

    @property
    def spool_directory(self) -> Path:
        """Where per-sink spools and delivery cursors live."""
        return self.directory / "spool"


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


class _Reader:
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


def _read_sink(
    reader: _Reader, raw: Any, where: str, directory: Path, names: set[str]
) -> SinkConfig | None:
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
    name = reader.text(data, "name", where) or kind
    if name in names:
        check.error(join(where, "name"), f"sink name {name!r} is used twice (set distinct names)")
    names.add(name)
    if not Checker.IDENT.match(name):
        check.error(join(where, "name"), f"{name!r} must be a lower-case identifier")
    if kind == "file":
        default = FileSinkConfig(name=name, path=directory / "audit.jsonl")
        path = default.path
        if data.get("path") is not None:
            got = check.string(data["path"], join(where, "path"))
            if got is not None:
                value = Path(got).expanduser()
                path = value if value.is_absolute() else directory / value
        rotate = default.rotate_seconds
        if "rotate_seconds" in data:
            rotate = (
                None
                if data["rotate_seconds"] is None
                else reader.positive(data, "rotate_seconds", where, 86_400.0)
            )
        retention = None
        if data.get("retention_days") is not None:
            retention = check.integer(
                data["retention_days"], join(where, "retention_days"), minimum=1
            )
            if retention is not None and retention < RETENTION_FLOOR_DAYS:
                check.warn(
                    join(where, "retention_days"),
                    f"{retention} days is less than the 5 years export records are kept "
                    "under 15 CFR 762.6",
                )
        return FileSinkConfig(
            name=name,
            path=path,
            max_bytes=reader.count(data, "max_bytes", where, default.max_bytes),
            rotate_seconds=rotate,
            fsync=FsyncPolicy(
                reader.choice(
                    data, "fsync", where, [p.value for p in FsyncPolicy], default.fsync.value
                )
            ),
            fsync_interval=reader.positive(data, "fsync_interval", where, default.fsync_interval),
            compress=reader.flag(data, "compress", where, default.compress),
            compression=reader.choice(data, "compression", where, list(CODECS), "zstd"),
            compress_level=_level(reader, data, where, default.compress_level),
            retention_days=retention,
            spool_max_bytes=reader.count(data, "spool_max_bytes", where, default.spool_max_bytes),
        )
    delivery = reader.delivery(data, where)
    if kind == "stdout":
        return StdoutSinkConfig(name=name, delivery=delivery)
    if kind == "syslog":
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
            ca_file=reader.path(data["ca_file"], join(where, "ca_file"))
            if data.get("ca_file")
            else None,
            cert_file=reader.path(data["cert_file"], join(where, "cert_file"))
            if data.get("cert_file")
            else None,
            key_file=reader.path(data["key_file"], join(where, "key_file"))
            if data.get("key_file")
            else None,
            verify=reader.flag(data, "verify", where, True),
            server_name=reader.text(data, "server_name", where),
            timeout=reader.positive(data, "timeout", where, 10.0),
            delivery=delivery,
        )
    fmt = reader.choice(data, "format", where, ["hec", "elasticsearch"], "")
    url = reader.text(data, "url", where)
    if url is None:
        check.error(join(where, "url"), "is required")
    elif not url.startswith(("http://", "https://")) or not _host_of(url):
        check.error(join(where, "url"), f"{url!r} is not an http:// or https:// URL with a host")
    if not fmt:
        check.error(join(where, "format"), "is required (hec or elasticsearch)")
    headers: list[tuple[str, str]] = []
    if data.get("headers") is not None:
        mapping = check.mapping(data["headers"], join(where, "headers"))
        for key, value in (mapping or {}).items():
            text = check.string(value, join(join(where, "headers"), key))
            if text is not None:
                headers.append((key, text))
    return HttpSinkConfig(
        name=name,
        format=fmt or "hec",
        url=url or "http://invalid",
        index=reader.text(data, "index", where),
        token_file=reader.path(data["token_file"], join(where, "token_file"))
        if data.get("token_file")
        else None,
        auth_scheme=reader.text(data, "auth_scheme", where),
        headers=tuple(headers),
        max_batch_bytes=reader.count(data, "max_batch_bytes", where, 4 * 1024 * 1024),
        timeout=reader.positive(data, "timeout", where, 10.0),
        ca_file=reader.path(data["ca_file"], join(where, "ca_file"))
        if data.get("ca_file")
        else None,
        verify=reader.flag(data, "verify", where, True),
        delivery=delivery,
    )


# A DNS name, an IPv4 address or a bracket-free IPv6 address.
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}\.?)*|[0-9A-Fa-f:.]+)$")


def _host_of(url: str) -> str:
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def _level(reader: _Reader, data: Mapping[str, Any], where: str, default: int) -> int:
    """``compress_level``: 1 (fastest) to 9; zstd and gzip both take it."""
    level = reader.count(data, "compress_level", where, default)
    if level > 9:
        reader.check.error(join(where, "compress_level"), f"must be 1 to 9, not {level}")
        return default
    return level


def read_audit(check: Checker, raw: Any, base_dir: Path) -> AuditConfig | None:
    """Read the section (``None`` or empty: the defaults); problems go to *check*.

    The directory must be writable (or creatable) now, as the trail's start needs it.
    """
    if not raw:
        directory = Path.cwd() / DEFAULT_DIRECTORY
        return AuditConfig(
            directory=directory,
            sinks=(FileSinkConfig(name="file", path=directory / "audit.jsonl"),),
        )
    data = check.mapping(raw, "audit", keys=[k.name for k in KEYS])
    if data is None:
        return None
    reader = _Reader(check, base_dir)
    directory = Path.cwd() / DEFAULT_DIRECTORY
    if data.get("directory") is not None:
        directory = reader.path(data["directory"], "audit.directory") or directory
        _writable(check, directory, "audit.directory")
    sinks: list[SinkConfig] = []
    names: set[str] = set()
    raw_sinks = data.get("sinks")
    if raw_sinks is None:
        sinks.append(FileSinkConfig(name="file", path=directory / "audit.jsonl"))
    else:
        for index, item in enumerate(
            check.sequence(raw_sinks, "audit.sinks", allow_empty=False) or []
        ):
            sink = _read_sink(reader, item, join("audit.sinks", index), directory, names)
            if sink is not None:
                sinks.append(sink)
    files = [i for i, s in enumerate(sinks) if isinstance(s, FileSinkConfig)]
    if len(files) > 1:
        check.error(
            join("audit.sinks", files[1]), "only one file sink is allowed (it is the journal)"
        )
    headers = DEFAULT_HEADERS
    if data.get("headers") is not None:
        names_list: list[str] = []
        for index, item in enumerate(check.sequence(data["headers"], "audit.headers") or []):
            text = check.string(item, join("audit.headers", index))
            if text is None:
                continue
            if text.lower() in ALWAYS_REDACTED:
                check.warn(
                    join("audit.headers", index),
                    f"{text!r} carries credentials and is never recorded",
                )
            names_list.append(text.lower())
        headers = tuple(names_list)
    signing = None
    if data.get("signing") is not None:
        where = "audit.signing"
        sign = check.mapping(
            data["signing"],
            where,
            keys=subkeys(KEYS, "signing"),
            required=("key_file",),
        )
        if sign is not None and sign.get("key_file") is not None:
            key_file = reader.path(sign["key_file"], join(where, "key_file"))
            if key_file is not None:
                if not key_file.is_file():
                    check.error(join(where, "key_file"), f"no such file: {key_file}")
                signing = SigningConfig(
                    key_file=key_file,
                    every_records=reader.count(sign, "every_records", where, 1000),
                    every_seconds=reader.positive(sign, "every_seconds", where, 60.0),
                )
    per_process = reader.flag(data, "per_process", "audit", False)
    if per_process:
        for sink in sinks:
            if isinstance(sink, FileSinkConfig) and not sink.path.is_relative_to(directory):
                check.error(
                    "audit.per_process",
                    f"the file sink {sink.path} must be inside audit.directory {directory}: "
                    "each process writes under its own <directory>/p<N>",
                )
    if not files and raw_sinks is not None:
        check.warn(
            "audit.sinks",
            "no file sink: records are durable only once delivered, and the chain position "
            "is kept in the audit directory",
        )
    return AuditConfig(
        directory=directory,
        sinks=tuple(sinks),
        format=RecordFormat(
            reader.choice(data, "format", "audit", [f.value for f in RecordFormat], "ecs")
        ),
        queue_size=reader.count(data, "queue_size", "audit", 10_000),
        batch_size=reader.count(data, "batch_size", "audit", 512),
        batch_linger=reader.seconds(
            data, "batch_linger", "audit", DEFAULT_BATCH_LINGER, MAX_BATCH_LINGER
        ),
        on_failure=FailurePolicy(
            reader.choice(data, "on_failure", "audit", [p.value for p in FailurePolicy], "deny")
        ),
        shutdown_timeout=reader.positive(data, "shutdown_timeout", "audit", 5.0),
        headers=headers,
        signing=signing,
        per_process=per_process,
    )


def _writable(check: Checker, directory: Path, where: str) -> None:
    """The directory, or the nearest folder above it that exists, must take new files."""
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        check.error(where, f"{probe} is not a directory")
    elif not os.access(probe, os.W_OK | os.X_OK):
        what = (
            "is not writable"
            if probe == directory
            else f"cannot be created ({probe} is not writable)"
        )
        check.error(where, f"{directory} {what}")


def audit_config(config: Configured) -> AuditConfig:
    """The ``audit:`` settings of a loaded configuration."""
    audit: AuditConfig = config.get(AUDIT)
    return audit


def _sink_docs() -> tuple[KeyDoc, ...]:
    names = dict.fromkeys(key for keys in _SINK_KEYS.values() for key in keys)
    return (
        KeyDoc("type", "file, stdout, syslog or http"),
        KeyDoc("name", "the sink's name in metrics and spools (default: its type)"),
        *(
            KeyDoc(name, "for " + ", ".join(t for t, keys in _SINK_KEYS.items() if name in keys))
            for name in names
        ),
    )


KEYS = (
    KeyDoc("directory", "the journal, spools and chain state; default ./aidr-gate-audit"),
    KeyDoc("per_process", "true: one chain per process, in slots p0, p1 and on"),
    KeyDoc("format", "ecs or ocsf"),
    KeyDoc("queue_size", "records waiting for the writer at most"),
    KeyDoc("batch_size", "records written in one batch at most"),
    KeyDoc("batch_linger", "seconds records gather before a batch is taken"),
    KeyDoc("on_failure", "deny (no audit, no access) or allow (and count the loss)"),
    KeyDoc("shutdown_timeout", "seconds a shutdown waits for records to be flushed"),
    KeyDoc("headers", "request header values recorded (never credentials)"),
    KeyDoc(
        "signing",
        "Ed25519-signed checkpoint records",
        (
            KeyDoc("key_file", "the Ed25519 private key"),
            KeyDoc("every_records", "a checkpoint every this many records"),
            KeyDoc("every_seconds", "and at least this often"),
        ),
    ),
    KeyDoc(
        "sinks",
        "where records go: file, stdout, syslog, http",
        _sink_docs(),
    ),
)

# The trail holds its directory's lock and its sinks' connections for the life of the process.
AUDIT: Section[AuditConfig] = Section("audit", read_audit, KEYS, restart=(EVERY_KEY,))
