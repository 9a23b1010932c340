"""The monitoring kit under deploy/: the Grafana dashboard, the Prometheus alert rules and the
example Prometheus configuration, checked offline as tests/deploy/test_deploy.py checks the rest.

``promtool`` (Debian's ``prometheus`` package) checks the rules and the configuration, and runs
the rules' unit tests: each alert fires on its condition, after its ``for``, with its labels, and a
healthy gate raises none. The queries name only metrics and labels of the one metric table. The
dashboard is laid out on Grafana's 24-column grid. tests/telemetry/test_telemetry_prometheus.py runs the
same files against a real Prometheus scraping a gate.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from aidr_gate.telemetry import METRICS
from support.environment import require_tool
from support.telemetry_support import (
    ALERTS,
    DASHBOARD,
    PROMETHEUS_CONFIG,
    alert_rules,
    dashboard_panels,
    dashboard_queries,
)

_NAME = re.compile(r"\baidr_gate_[a-z_]+")
SAMPLES = {spec.sample_name: spec for spec in METRICS} | {
    spec.prometheus_name + suffix: spec
    for spec in METRICS
    for suffix in ("_count", "_sum")
    if spec.sample_name.endswith("_bucket")
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool; its output is in the assertion message when it fails."""
    return subprocess.run(
        [require_tool("promtool"), *args], capture_output=True, text=True, timeout=60
    )


def test_promtool_accepts_the_shipped_rules_and_configuration() -> None:
    for command in (["check", "rules", str(ALERTS)], ["check", "config", str(PROMETHEUS_CONFIG)]):
        done = promtool(*command)
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_shipped_queries_name_only_metrics_and_labels_of_the_table() -> None:
    """A renamed metric or label breaks this test, not a dashboard in production."""
    exprs = [expr for _, expr in dashboard_queries()] + [r["expr"] for r in alert_rules()]
    for expr in exprs:
        names = set(_NAME.findall(expr))
        assert names and names <= set(SAMPLES), expr
        labels = {label for n in names for label in SAMPLES[n].prometheus_labels}
        known = labels | {"instance", "job", "le"}
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            assert {g.strip() for g in group.split(",")} <= known, expr
        for label in re.findall(r"([a-z_]+)=~?\"", expr):
            assert label in known, expr


def test_the_dashboard_shows_what_the_issue_asks_for_on_a_sound_grid() -> None:
    panels = dashboard_panels()
    titles = {p["title"] for p in panels}
    assert {
        "Decisions by effect",
        "Denials by reason",
        "Denials by network country",
        "Gate time p50 / p99",
        "Audit records lost",
        "Audit spool size",
        "Key set age",
        "Registry state",
        "Readiness by check",
    } <= titles
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel.get("description"), panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert 'instance=~"$instance"' in target["expr"], panel["title"]
    assert DASHBOARD.read_text().endswith("\n")


def test_alert_rules_cover_what_must_page() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert {
        "AidrGateAuditRecordsLost",
        "AidrGateAuditSpoolGrowing",
        "AidrGateKeySetStale",
        "AidrGateReloadFailing",
        "AidrGateNotReady",
        "AidrGateRegistryUnavailable",
    } <= names
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"]


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    """One input series of a rules unit test (its name checked against the table)."""
    assert name in SAMPLES, name
    allowed = set(SAMPLES[name].prometheus_labels) | {"instance"}
    assert set(labels) <= allowed, (name, labels)
    text = ", ".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return {"series": f"{name}{{{text}}}", "values": values}


def healthy(instance: str, minutes: int) -> list[dict[str, str]]:
    """A gate with nothing wrong for *minutes*: every series an alert reads, at good values."""
    sink = {"aidr_audit_sink": "siem", "aidr_audit_sink_kind": "http"}
    steady = f"0x{minutes}"
    return [
        series("aidr_gate_audit_records_lost_total", steady, instance=instance, **sink),
        series("aidr_gate_audit_spool_size_bytes", steady, instance=instance, **sink),
        series("aidr_gate_audit_accepting", f"1x{minutes}", instance=instance),
        series(
            "aidr_gate_keys_age_seconds",
            f"60+60x{minutes}",
            instance=instance,
            aidr_keys_source="jwks",
        ),
        series("aidr_gate_keys_loaded", f"2x{minutes}", instance=instance, aidr_keys_source="jwks"),
        series("aidr_gate_registry_staleness_seconds", steady, instance=instance),
        series(
            "aidr_gate_registry_state",
            steady,
            instance=instance,
            aidr_registry_kind="postgres",
            aidr_registry_state="unavailable",
        ),
        series(
            "aidr_gate_reloads_total",
            steady,
            instance=instance,
            aidr_component="policy",
            aidr_result="failed",
        ),
        series("aidr_gate_reload_restart_pending", steady, instance=instance),
        series("aidr_gate_ready", f"1x{minutes}", instance=instance),
        series(
            "aidr_gate_geoip_build_age_seconds",
            f"86400+60x{minutes}",
            instance=instance,
            aidr_geoip_role="country",
        ),
    ]


# alert -> (input series of a gate "bad" with that alert's condition, minutes, the labels it
# fires with besides severity and instance). Conditions start at minute 2 unless said.
BAD = "bad"
SINK = {"aidr_audit_sink": "siem", "aidr_audit_sink_kind": "http"}
CASES: dict[str, tuple[list[dict[str, str]], int, dict[str, str]]] = {
    "AidrGateAuditRecordsLost": (
        [series("aidr_gate_audit_records_lost_total", "0 0 3 3 3", instance=BAD, **SINK)],
        3,
        {"aidr_audit_sink": "siem"},
    ),
    "AidrGateAuditSpoolGrowing": (
        [series("aidr_gate_audit_spool_size_bytes", "0+4096x30", instance=BAD, **SINK)],
        25,
        {"aidr_audit_sink": "siem"},
    ),
    "AidrGateAuditRefusing": (
        [series("aidr_gate_audit_accepting", "1 1 0 0 0 0", instance=BAD)],
        4,
        {},
    ),
    "AidrGateKeySetStale": (
        [series("aidr_gate_keys_age_seconds", "7000+60x20", instance=BAD, aidr_keys_source="jwks")],
        12,
        {},
    ),
    "AidrGateRegistryStale": (
        [series("aidr_gate_registry_staleness_seconds", "0 0 40 100 160", instance=BAD)],
        3,
        {},
    ),
    "AidrGateRegistryUnavailable": (
        [
            series(
                "aidr_gate_registry_state",
                "0 0 1 1 1 1",
                instance=BAD,
                aidr_registry_kind="postgres",
                aidr_registry_state="unavailable",
            )
        ],
        4,
        {},
    ),
    "AidrGateReloadFailing": (
        [
            series(
                "aidr_gate_reloads_total",
                "0 0 1 1 1",
                instance=BAD,
                aidr_component="policy",
                aidr_result="failed",
            )
        ],
        3,
        {"aidr_component": "policy"},
    ),
    "AidrGateRestartPending": (
        [series("aidr_gate_reload_restart_pending", "0 0 1x70", instance=BAD)],
        65,
        {},
    ),
    "AidrGateNotReady": ([series("aidr_gate_ready", "1 1 0 0 0 0 0", instance=BAD)], 5, {}),
    "AidrGateGeoipDatabaseOld": (
        [
            series(
                "aidr_gate_geoip_build_age_seconds",
                "2678400+60x80",
                instance=BAD,
                aidr_geoip_role="country",
            )
        ],
        65,
        {"aidr_geoip_role": "country"},
    ),
}


def unit_test(alert: str, rules: Path) -> dict[str, Any]:
    """The promtool unit test of one alert: silent before its condition, firing at the case's
    minute (past its ``for``) for the bad gate only (a healthy gate beside it raises nothing)."""
    inputs, minute, labels = CASES[alert]
    rule = next(r for r in alert_rules() if r["alert"] == alert)
    expected = {"instance": BAD, "severity": rule["labels"]["severity"], **labels}
    evaluations: list[dict[str, Any]] = [
        {"eval_time": f"{minute}m", "alertname": alert, "exp_alerts": [{"exp_labels": expected}]},
        {"eval_time": "1m", "alertname": alert, "exp_alerts": []},  # before the condition
    ]
    return {
        "interval": "1m",
        "input_series": healthy("good", 90) + inputs,
        "alert_rule_test": evaluations,
    }


def test_every_alert_fires_on_its_condition_and_only_then(tmp_path: Path) -> None:
    """The shipped expressions, ``for`` and labels under promtool's rule engine. Annotations are
    left out of the copy under test (their templates are checked by ``check rules`` above)."""
    assert set(CASES) == {rule["alert"] for rule in alert_rules()}
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules = tmp_path / "alerts.yaml"
    rules.write_text(yaml.safe_dump({"groups": groups}))
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [unit_test(alert, rules) for alert in CASES],
    }
    spec = tmp_path / "alerts.test.yaml"
    spec.write_text(yaml.safe_dump(tests))
    done = promtool("test", "rules", str(spec))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") >= 1, done.stdout
