"""The ``telemetry:`` section: defaults, every key, and every problem at its file, line and key."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from aidr_gate.errors import ConfigError
from aidr_gate.settings.loader import config_from_text
from aidr_gate.telemetry import (
    LabelSettings,
    OtlpSettings,
    PrometheusSettings,
    TelemetrySettings,
    telemetry_settings,
)
from aidr_gate.telemetry.export import Exporters
from aidr_gate.telemetry.settings import KEYS
from support.environment import EXAMPLES

HEAD = f"""\
policy: aidr-2025-01
registry: {EXAMPLES / "entities.yaml"}
catalog: {EXAMPLES / "models.yaml"}
"""


def read(tmp_path: Path, section: str) -> TelemetrySettings:
    """The settings of a configuration whose last lines are *section*."""
    text = HEAD + textwrap.dedent(section)
    return telemetry_settings(config_from_text(text, str(tmp_path / "config.yaml")))


def problems(tmp_path: Path, section: str) -> list[str]:
    """Every problem the section has, as printed."""
    with pytest.raises(ConfigError) as caught:
        read(tmp_path, section)
    return [str(p) for p in caught.value.problems]


def test_no_section_exports_nothing(tmp_path: Path) -> None:
    settings = read(tmp_path, "")
    assert settings == TelemetrySettings()
    assert not settings.exporting
    assert settings.prometheus is None and settings.otlp is None


def test_true_and_empty_mappings_are_the_defaults(tmp_path: Path) -> None:
    settings = read(tmp_path, "telemetry: {prometheus: true, otlp: {}}\n")
    assert settings.prometheus == PrometheusSettings()
    assert settings.otlp == OtlpSettings()
    assert settings.otlp.resource == (("service.name", "aidr-gate"),)
    assert settings.otlp.signal_url("metrics") == "http://127.0.0.1:4318/v1/metrics"
    assert settings.exporting
    off = read(tmp_path, "telemetry: {prometheus: false, otlp: false}\n")
    assert off.prometheus is None and off.otlp is None


def test_every_key_is_read(tmp_path: Path) -> None:
    settings = read(
        tmp_path,
        """\
        telemetry:
          prometheus: {host: 0.0.0.0, port: 9100, path: /internal/metrics}
          otlp:
            endpoint: https://collector.example:4318/
            headers: {authorization: "Bearer abc", x-tenant: gates}
            interval: 15
            timeout: 5
            compression: none
            metrics: true
            traces: false
            sample_ratio: 0.25
            resource: {deployment.environment: prod, service.instance.id: gate-1, team.size: 3}
          labels: {entities: true, max_entities: 50}
          max_series: 500
        """,
    )
    assert settings.prometheus == PrometheusSettings("0.0.0.0", 9100, "/internal/metrics", False)
    otlp = settings.otlp
    assert otlp is not None
    assert otlp.signal_url("traces") == "https://collector.example:4318/v1/traces"
    assert otlp.headers == (("authorization", "Bearer abc"), ("x-tenant", "gates"))
    assert (otlp.interval, otlp.timeout, otlp.compression) == (15.0, 5.0, "none")
    assert (otlp.metrics, otlp.traces, otlp.sample_ratio) == (True, False, 0.25)
    assert dict(otlp.resource) == {
        "service.name": "aidr-gate",  # added when the resource does not name the service
        "deployment.environment": "prod",
        "service.instance.id": "gate-1",
        "team.size": 3,
    }
    assert settings.labels == LabelSettings(entities=True, max_entities=50)
    assert settings.max_series == 500


def test_main_port_mode(tmp_path: Path) -> None:
    settings = read(tmp_path, "telemetry: {prometheus: {on_main_port: true, path: /metrics}}\n")
    assert settings.prometheus == PrometheusSettings(on_main_port=True)


BROKEN = [
    ("prometheus: {port: 70000}", "telemetry.prometheus.port: must be at most 65535"),
    ("prometheus: {path: metrics}", "telemetry.prometheus.path: 'metrics' must start with '/'"),
    ("prometheus: {prot: 9464}", "telemetry.prometheus.prot: unknown key"),
    ("prometheus: {on_main_port: true, port: 9100}", "telemetry.prometheus.port: is for the"),
    ("prometheus: 9464", "telemetry.prometheus: must be a mapping"),
    ("otlp: {endpoint: 'ftp://collector'}", "telemetry.otlp.endpoint: 'ftp://collector' is not"),
    ("otlp: {interval: 0}", "telemetry.otlp.interval: must be at least 0.1"),
    ("otlp: {timeout: 0}", "telemetry.otlp.timeout: must be more than 0"),
    ("otlp: {interval: 10, timeout: 30}", "telemetry.otlp.timeout: must be at most the interval"),
    ("otlp: {compression: brotli}", "telemetry.otlp.compression: 'brotli' is not one of"),
    ("otlp: {sample_ratio: 1.5}", "telemetry.otlp.sample_ratio: must be at least 0 and at most 1"),
    ("otlp: {headers: {'bad header': x}}", "telemetry.otlp.headers.bad header: is not a valid"),
    ("otlp: {headers: {x-key: 3}}", "telemetry.otlp.headers.x-key: must be a str, not int"),
    ("otlp: {metrics: false, traces: false}", "telemetry.otlp: exports nothing"),
    ("otlp: {resource: {service.name: [a]}}", "telemetry.otlp.resource.service.name: must be"),
    ("otlp: {traces: yes}", "telemetry.otlp.traces: must be true or false"),
    ("labels: {entities: 'yes'}", "telemetry.labels.entities: must be true or false"),
    ("labels: {max_entities: 0}", "telemetry.labels.max_entities: must be at least 1"),
    ("labels: {entity: true}", "telemetry.labels.entity: unknown key"),
    ("max_series: 5", "telemetry.max_series: must be at least 10"),
    ("prometheus_port: 9464", "telemetry.prometheus_port: unknown key"),
]


@pytest.mark.parametrize(("section", "message"), BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_section_names_file_line_and_key(
    tmp_path: Path, section: str, message: str
) -> None:
    found = problems(tmp_path, f"telemetry:\n  {section}\n")
    assert any(message in p for p in found), found
    assert all(p.startswith(f"{tmp_path / 'config.yaml'}:") for p in found), found
    assert any(":5: telemetry" in p for p in found), found  # the section's own line


def test_every_problem_is_reported_in_one_run(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        telemetry:
          prometheus: {port: 0}
          otlp: {compression: zstd, sample_ratio: -1}
          max_series: nine
        """,
    )
    assert len(found) == 4, found
    assert [p.split(": ", 2)[1] for p in found] == [
        "telemetry.prometheus.port",
        "telemetry.otlp.compression",
        "telemetry.otlp.sample_ratio",
        "telemetry.max_series",
    ]
    assert ":5:" in found[0] and ":6:" in found[1] and ":7:" in found[3]


@pytest.mark.parametrize(
    ("section", "blocked", "key"),
    [
        ("prometheus: true", "prometheus_client", "telemetry.prometheus"),
        ("otlp: true", "opentelemetry.exporter.otlp.proto.http", "telemetry.otlp"),
        ("otlp: true", "opentelemetry.sdk", "telemetry.otlp"),
    ],
)
def test_an_exporter_without_the_extra_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, section: str, blocked: str, key: str
) -> None:
    """As on an install without ``aidr-gate[telemetry]``: the module cannot be imported."""
    monkeypatch.setitem(sys.modules, blocked, None)  # how Python marks a module unimportable
    found = problems(tmp_path, f"telemetry: {{{section}}}\n")
    assert len(found) == 1
    assert found[0].startswith(f"{tmp_path / 'config.yaml'}:4: {key}: needs ")
    assert "pip install 'aidr-gate[telemetry]'" in found[0]
    settings = TelemetrySettings(
        prometheus=PrometheusSettings() if "prometheus" in section else None,
        otlp=OtlpSettings() if "otlp" in section else None,
    )
    with pytest.raises(ConfigError, match=r"aidr-gate\[telemetry\]"):
        Exporters(settings)


def test_keys_document_every_field() -> None:
    """The documented keys (README reference) are exactly the settings classes' fields."""
    import dataclasses

    classes = {
        "prometheus": PrometheusSettings,
        "otlp": OtlpSettings,
        "labels": LabelSettings,
    }
    top = {f.name for f in dataclasses.fields(TelemetrySettings)}
    assert {k.name for k in KEYS} == top
    for key in KEYS:
        if key.name in classes:
            fields = {f.name for f in dataclasses.fields(classes[key.name])}
            assert {k.name for k in key.keys} == fields
