"""The ``audit:`` configuration section: defaults, every sink type, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from aidr_gate.audit import (
    AuditConfig,
    FailurePolicy,
    FileSinkConfig,
    FsyncPolicy,
    HttpSinkConfig,
    RecordFormat,
    StdoutSinkConfig,
    SyslogSinkConfig,
    audit_config,
)
from aidr_gate.errors import ConfigError, Problem
from aidr_gate.settings.loader import config_from_text

BASE = "policy: aidr-2025-01\nregistry: {examples}/entities.yaml\ncatalog: {examples}/models.yaml\n"


def parse(tmp_path: Path, examples_dir: Path, section: str) -> tuple[AuditConfig, list[Problem]]:
    text = BASE.format(examples=examples_dir) + section
    warnings: list[Problem] = []
    config = config_from_text(text, str(tmp_path / "config.yaml"), warnings=warnings)
    return audit_config(config), warnings


def test_defaults_without_a_section(
    tmp_path: Path, examples_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config, warnings = parse(tmp_path, examples_dir, "")
    assert warnings == []
    assert config.directory == tmp_path / "aidr-gate-audit"
    assert config.format is RecordFormat.ECS
    assert config.on_failure is FailurePolicy.DENY
    assert (config.queue_size, config.batch_size, config.shutdown_timeout) == (10_000, 512, 5.0)
    assert config.batch_linger == 0.1
    assert config.headers == ("user-agent", "x-request-id", "traceparent")
    assert config.signing is None
    (journal,) = config.sinks
    assert isinstance(journal, FileSinkConfig)
    assert journal.path == tmp_path / "aidr-gate-audit" / "audit.jsonl"
    assert journal.fsync is FsyncPolicy.INTERVAL
    assert (journal.max_bytes, journal.rotate_seconds, journal.compress) == (
        100 * 1024 * 1024,
        86_400.0,
        True,
    )
    assert journal.retention_days is None


def test_every_sink_type(tmp_path: Path, examples_dir: Path) -> None:
    (tmp_path / "key.pem").write_text("not read at parse time")
    section = """
audit:
  directory: var/audit
  format: ocsf
  on_failure: allow
  queue_size: 2000
  headers: [User-Agent, X-Request-Id]
  signing: {key_file: key.pem, every_records: 100, every_seconds: 30}
  sinks:
    - {type: file, path: a.jsonl, fsync: always, max_bytes: 1000000, rotate_seconds: 3600,
       compress: false, retention_days: 1830}
    - {type: stdout}
    - {type: syslog, name: siem-tls, transport: tls, host: logs.example, ca_file: ca.pem,
       facility: authpriv, retries: 3}
    - {type: syslog, name: siem-udp, port: 5514}
    - {type: http, name: splunk, format: hec, url: "https://splunk:8088/services/collector/event",
       token_file: hec.token, index: aidr, queue_size: 50, spool_max_bytes: 1048576}
    - {type: http, name: elastic, format: elasticsearch, url: "https://es:9200",
       headers: {X-Tenant: t1}, verify: false}
"""
    config, warnings = parse(tmp_path, examples_dir, section)
    assert warnings == []
    assert config.directory == tmp_path / "var" / "audit"
    assert config.format is RecordFormat.OCSF
    assert config.on_failure is FailurePolicy.ALLOW
    assert config.headers == ("user-agent", "x-request-id")
    assert config.signing is not None
    assert config.signing.key_file == tmp_path / "key.pem"
    file, stdout, tls, udp, hec, es = config.sinks
    assert isinstance(file, FileSinkConfig)
    assert file.path == tmp_path / "var" / "audit" / "a.jsonl"
    assert (file.fsync, file.max_bytes, file.rotate_seconds, file.compress) == (
        FsyncPolicy.ALWAYS,
        1_000_000,
        3600.0,
        False,
    )
    assert isinstance(stdout, StdoutSinkConfig)
    assert isinstance(tls, SyslogSinkConfig)
    assert (tls.transport, tls.port, tls.facility, tls.delivery.retries) == ("tls", 6514, 10, 3)
    assert tls.ca_file == tmp_path / "ca.pem"
    assert isinstance(udp, SyslogSinkConfig)
    assert (udp.transport, udp.port, udp.facility) == ("udp", 5514, 16)
    assert isinstance(hec, HttpSinkConfig)
    assert (hec.format, hec.index, hec.delivery.queue_size) == ("hec", "aidr", 50)
    assert hec.delivery.spool_max_bytes == 1048576
    assert hec.token_file == tmp_path / "hec.token"
    assert isinstance(es, HttpSinkConfig)
    assert (es.headers, es.verify) == ((("X-Tenant", "t1"),), False)
    assert config.journal is file
    assert config.spool_directory == tmp_path / "var" / "audit" / "spool"


def test_batch_linger_can_be_turned_off(tmp_path: Path, examples_dir: Path) -> None:
    config, warnings = parse(tmp_path, examples_dir, "audit: {batch_linger: 0}")
    assert (config.batch_linger, warnings) == (0.0, [])


@pytest.mark.parametrize(
    ("section", "path", "message"),
    [
        ("audit: {format: xml}", "audit.format", "not one of"),
        ("audit: {on_failure: ignore}", "audit.on_failure", "not one of"),
        ("audit: {queue_size: 0}", "audit.queue_size", "at least 1"),
        ("audit: {batch_linger: -0.1}", "audit.batch_linger", "at least 0"),
        ("audit: {batch_linger: 2}", "audit.batch_linger", "at most 1 seconds"),
        ("audit: {batch_linger: soon}", "audit.batch_linger", "must be a number"),
        ("audit: {colour: blue}", "audit.colour", "unknown key"),
        ("audit: {sinks: []}", "audit.sinks", "must not be empty"),
        ("audit: {sinks: [{type: kafka}]}", "audit.sinks[0].type", "not one of"),
        ("audit: {sinks: [{type: file, fsync: sometimes}]}", "audit.sinks[0].fsync", "not one of"),
        ("audit: {sinks: [{type: syslog, port: 70000}]}", "audit.sinks[0].port", "at most 65535"),
        (
            "audit: {sinks: [{type: syslog, transport: sctp}]}",
            "audit.sinks[0].transport",
            "not one of",
        ),
        ("audit: {sinks: [{type: http, format: hec}]}", "audit.sinks[0].url", "is required"),
        ("audit: {sinks: [{type: http, url: 'ftp://x'}]}", "audit.sinks[0].url", "not an http"),
        ("audit: {sinks: [{type: stdout}, {type: stdout}]}", "audit.sinks[1].name", "used twice"),
        (
            "audit: {sinks: [{type: file}, {type: file, name: b}]}",
            "audit.sinks[1]",
            "only one file",
        ),
        ("audit: {sinks: [{type: file, max_byte: 5}]}", "audit.sinks[0].max_byte", "unknown key"),
        ("audit: {signing: {key_file: missing.pem}}", "audit.signing.key_file", "no such file"),
        ("audit: {signing: {every_records: 5}}", "audit.signing.key_file", "is required"),
    ],
)
def test_errors_name_the_key(
    tmp_path: Path, examples_dir: Path, section: str, path: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(tmp_path, examples_dir, section)
    problems = caught.value.problems
    assert any(p.path == path and message in p.message for p in problems), problems
    assert all(p.line is not None for p in problems if p.path.startswith("audit"))


@pytest.mark.parametrize(
    ("section", "path", "message"),
    [
        (
            "audit: {sinks: [{type: file, retention_days: 30}]}",
            "audit.sinks[0].retention_days",
            "762.6",
        ),
        ("audit: {headers: [authorization]}", "audit.headers[0]", "never recorded"),
        ("audit: {sinks: [{type: stdout}]}", "audit.sinks", "no file sink"),
    ],
)
def test_warnings(
    tmp_path: Path, examples_dir: Path, section: str, path: str, message: str
) -> None:
    _, warnings = parse(tmp_path, examples_dir, section)
    assert any(w.path == path and message in w.message for w in warnings), warnings
