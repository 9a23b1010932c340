"""The ``audit:`` configuration section: format, sinks, spool, signing, failure policy.

Parsed once at load with a :class:`~aidr_gate.document.Checker`, so every problem is reported with
the file, the key path (``audit.sinks[1].port``) and the line. Relative paths resolve against the
configuration file's directory; with no ``audit`` section the trail writes a rotating file under
``./aidr-gate-audit`` (relative to the working directory).

The sinks' settings and their readers are :mod:`aidr_gate.settings.audit_sinks`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from aidr_gate.document import Checker, join
from aidr_gate.settings.audit_sinks import (
    CODECS,
    RETENTION_FLOOR_DAYS,
    SYSLOG_FACILITIES,
    DeliveryConfig,
    FieldReader,
    FileSinkConfig,
    FsyncPolicy,
    HttpSinkConfig,
    SinkConfig,
    StdoutSinkConfig,
    SyslogSinkConfig,
    read_sink,
    sink_docs,
)
from aidr_gate.settings.schema import EVERY_KEY, Configured, KeyDoc, Section, subkeys

# Defined here, and the sinks' settings from audit_sinks, which the audit package imports from here.
__all__ = [
    "ALWAYS_REDACTED",
    "AUDIT",
    "CODECS",
    "DEFAULT_BATCH_LINGER",
    "DEFAULT_DIRECTORY",
    "DEFAULT_HEADERS",
    "KEYS",
    "MAX_BATCH_LINGER",
    "RETENTION_FLOOR_DAYS",
    "SYSLOG_FACILITIES",
    "AuditConfig",
    "DeliveryConfig",
    "FailurePolicy",
    "FileSinkConfig",
    "FsyncPolicy",
    "HttpSinkConfig",
    "RecordFormat",
    "SigningConfig",
    "SinkConfig",
    "StdoutSinkConfig",
    "SyslogSinkConfig",
    "audit_config",
    "read_audit",
]

DEFAULT_DIRECTORY = "aidr-gate-audit"
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


class FailurePolicy(StrEnum):
    """What happens when a record can be stored nowhere, not even in the local spool."""

    DENY = "deny"  # no audit, no access: new requests are refused with 503
    ALLOW = "allow"  # keep serving; every lost record is counted and logged


class RecordFormat(StrEnum):
    """How records are rendered."""

    ECS = "ecs"
    OCSF = "ocsf"


@dataclass(frozen=True, slots=True)
class SigningConfig:
    """Periodic Ed25519-signed checkpoint records."""

    key_file: Path
    every_records: int = 1000
    every_seconds: float = 60.0


# 100 ms: at most 10 batches a second unless full ones wait, each a few wake-ups of the writer
# thread (its timer, the GIL changing hands), so under 250 a second at any rate
# (bench/middleware.py counts them: 279 to 291/s at 50 ms, 110 to 125/s at 100 ms, 2026-12-03).
# A record reaches its file at most this much later; under ``fsync: interval`` that is within
# the sync interval's own delay, and under ``fsync: always`` nothing lingers.
DEFAULT_BATCH_LINGER = 0.1
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
    reader = FieldReader(check, base_dir)
    directory = Path.cwd() / DEFAULT_DIRECTORY
    if data.get("directory") is not None:
        directory = reader.path(data["directory"], "audit.directory") or directory
        _writable(check, directory, "audit.directory")
    sinks = _sinks(reader, data.get("sinks"), directory)
    headers = _headers(check, data["headers"]) if data.get("headers") is not None else None
    signing = _signing(reader, data["signing"]) if data.get("signing") is not None else None
    per_process = reader.flag(data, "per_process", "audit", False)
    if per_process:
        _check_per_process(check, sinks, directory)
    if data.get("sinks") is not None and not any(isinstance(s, FileSinkConfig) for s in sinks):
        check.warn(
            "audit.sinks",
            "no file sink: records are durable only once delivered, and the chain position "
            "is kept in the audit directory",
        )
    return AuditConfig(
        directory=directory,
        sinks=sinks,
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
        headers=DEFAULT_HEADERS if headers is None else headers,
        signing=signing,
        per_process=per_process,
    )


def _sinks(reader: FieldReader, raw: Any, directory: Path) -> tuple[SinkConfig, ...]:
    """``audit.sinks`` (absent: the one file sink); at most one file sink, as it is the journal."""
    if raw is None:
        return (FileSinkConfig(name="file", path=directory / "audit.jsonl"),)
    check = reader.check
    sinks: list[SinkConfig] = []
    names: set[str] = set()
    for index, item in enumerate(check.sequence(raw, "audit.sinks", allow_empty=False) or []):
        sink = read_sink(reader, item, join("audit.sinks", index), directory, names)
        if sink is not None:
            sinks.append(sink)
    files = [i for i, s in enumerate(sinks) if isinstance(s, FileSinkConfig)]
    if len(files) > 1:
        check.error(
            join("audit.sinks", files[1]), "only one file sink is allowed (it is the journal)"
        )
    return tuple(sinks)


def _headers(check: Checker, raw: Any) -> tuple[str, ...]:
    names: list[str] = []
    for index, item in enumerate(check.sequence(raw, "audit.headers") or []):
        text = check.string(item, join("audit.headers", index))
        if text is None:
            continue
        if text.lower() in ALWAYS_REDACTED:
            check.warn(
                join("audit.headers", index),
                f"{text!r} carries credentials and is never recorded",
            )
        names.append(text.lower())
    return tuple(names)


def _signing(reader: FieldReader, raw: Any) -> SigningConfig | None:
    where, check = "audit.signing", reader.check
    sign = check.mapping(raw, where, keys=subkeys(KEYS, "signing"), required=("key_file",))
    if sign is None or sign.get("key_file") is None:
        return None
    key_file = reader.path(sign["key_file"], join(where, "key_file"))
    if key_file is None:
        return None
    if not key_file.is_file():
        check.error(join(where, "key_file"), f"no such file: {key_file}")
    return SigningConfig(
        key_file=key_file,
        every_records=reader.count(sign, "every_records", where, 1000),
        every_seconds=reader.positive(sign, "every_seconds", where, 60.0),
    )


def _check_per_process(check: Checker, sinks: tuple[SinkConfig, ...], directory: Path) -> None:
    for sink in sinks:
        if isinstance(sink, FileSinkConfig) and not sink.path.is_relative_to(directory):
            check.error(
                "audit.per_process",
                f"the file sink {sink.path} must be inside audit.directory {directory}: "
                "each process writes under its own <directory>/p<N>",
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
        sink_docs(),
    ),
)

# The trail holds its directory's lock and its sinks' connections for the life of the process.
AUDIT: Section[AuditConfig] = Section("audit", read_audit, KEYS, restart=(EVERY_KEY,))
