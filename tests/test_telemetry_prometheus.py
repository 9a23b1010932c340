"""The scrape endpoint, the shipped dashboard and the shipped alert rules, against a real Prometheus.

Prometheus (Debian's package) scrapes the exposition app under a real uvicorn every second while
real decisions of the bundled packs flow through :class:`Telemetry`, with a real audit trail (one
HTTP sink whose collector is down, so it spools), a real JWKS endpoint and a GeoIP database written
at test time. Every query of every dashboard panel and the inputs of every alert rule then return
series through Prometheus' HTTP API, and the records-lost alert fires once a record is lost.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml

from aidr_gate.audit import AuditTrail, FailurePolicy, HttpSinkConfig
from aidr_gate.audit.config import DeliveryConfig
from aidr_gate.decision import Effect
from aidr_gate.geo import MaxMindCountryResolver
from aidr_gate.jwks import RemoteJwks
from aidr_gate.telemetry import METRICS, PrometheusSettings, Telemetry, TelemetrySettings
from aidr_gate.telemetry.export import Exporters
from audit_support import file_config
from conftest import ROOT, require_tool
from jwks_server import JwksServer, jwks_of, rsa_key
from mmdb_files import write_country_db
from prometheus_server import PrometheusServer
from servers import free_port
from telemetry_support import audit_event, decisions, timed

DASHBOARD = ROOT / "deploy" / "grafana" / "aidr-gate.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yaml"
# Grafana's variables, as Prometheus would see them for "all gates, the last five minutes".
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__range": "5m", "$instance": ".*"}
NETWORKS = {"8.8.8.0/24": "US", "1.0.16.0/24": "JP"}
_NAME = re.compile(r"\baidr_gate_[a-z_]+")


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, with Grafana's variables filled in."""
    board = json.loads(DASHBOARD.read_text())

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for item in items:
            yield item
            yield from panels(item.get("panels", []))

    out = []
    for panel in panels(board["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            out.append((panel["title"], expr))
    return out


def alert_rules() -> list[dict[str, Any]]:
    """Every rule of the shipped alert rules."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_accepts_the_shipped_rules_and_configuration() -> None:
    promtool = require_tool("promtool")
    for command in (["check", "rules", str(ALERTS)], ["check", "config", str(PROMETHEUS_CONFIG)]):
        done = subprocess.run([promtool, *command], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_shipped_queries_name_only_metrics_and_labels_of_the_table() -> None:
    """A renamed metric or label breaks this test, not a dashboard in production."""
    samples = {spec.sample_name: spec for spec in METRICS}
    samples.update({spec.prometheus_name + "_count": spec for spec in METRICS})
    exprs = [expr for _, expr in dashboard_queries()] + [r["expr"] for r in alert_rules()]
    panels = {title for title, _ in dashboard_queries()}
    assert {"Decisions by effect", "Denials by reason", "Denials by network country"} <= panels
    assert {"Gate time p50 / p99", "Audit records lost", "Key set age"} <= panels
    for expr in exprs:
        names = set(_NAME.findall(expr))
        assert names, expr
        labels = {samples[n].prometheus_labels for n in names}
        known = {label for group in labels for label in group} | {"instance", "job", "le"}
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            assert {g.strip() for g in group.split(",")} <= known, expr
        for label in re.findall(r"([a-z_]+)=~?\"", expr):
            assert label in known, expr


def test_alert_rules_cover_what_must_page() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert {
        "AidrGateAuditRecordsLost",
        "AidrGateAuditSpoolGrowing",
        "AidrGateKeySetStale",
        "AidrGateReloadFailing",
        "AidrGateNotReady",
    } <= names
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"]


class Served:
    """The exporters' own metrics server (their port, as the sidecar runs it) in a thread."""

    def __init__(self, exporters: Exporters) -> None:
        self.server = exporters.metrics_server(log_level="warning")
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> uvicorn.Server:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "no metrics server"
            time.sleep(0.01)
        return self.server

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


async def send_traffic(telemetry: Telemetry, trail: AuditTrail, stop: asyncio.Event) -> int:
    """Real decisions, recorded and audited, a batch every 50 ms until *stop*; how many."""
    sent = 0
    while not stop.is_set():
        for _ in range(8):
            decision, seconds = timed(sent)
            telemetry.record(decision, seconds, "/v1/chat/completions")
            if not trail._closing:
                trail.submit(audit_event(decision))
            if decision.allowed:
                telemetry.upstream(200, 0.02 + (sent % 5) / 100, None)
            elif sent % 16 == 0:
                telemetry.upstream(None, 5.0, "UPSTREAM_TIMEOUT")
            sent += 1
        await asyncio.sleep(0.05)
    return sent


async def until(prometheus: PrometheusServer, expr: str) -> list[dict[str, Any]]:
    """Prometheus' series for *expr* once there are some (off the loop, bounded)."""
    return await asyncio.to_thread(prometheus.wait_until, expr, 30.0)


async def wait_for_alerts(prometheus: PrometheusServer, wanted: dict[str, set[str]]) -> None:
    deadline = time.monotonic() + 30
    while True:
        alerts = await asyncio.to_thread(prometheus.alerts)
        if all(alerts.get(name) in states for name, states in wanted.items()):
            return
        assert time.monotonic() < deadline, f"alerts now: {alerts}"
        await asyncio.sleep(0.3)


async def scenario(
    tmp_path: Path, exporters: Exporters, prometheus: PrometheusServer, jwks: str
) -> None:
    telemetry = exporters.telemetry
    keys = RemoteJwks(jwks, ["RS256"])
    telemetry.watch_keys(lambda: keys)
    await keys.start()
    geo = MaxMindCountryResolver(write_country_db(tmp_path / "country.mmdb", NETWORKS))
    telemetry.watch_geoip(lambda: geo)
    down = HttpSinkConfig(
        name="siem",
        format="hec",
        url=f"http://127.0.0.1:{free_port()}/services/collector/event",  # nobody listens
        delivery=DeliveryConfig(retries=1, backoff_base=0.02, backoff_max=0.1, batch_size=50),
    )
    trail = AuditTrail(
        file_config(tmp_path / "audit", sinks=(down,), on_failure=FailurePolicy.ALLOW)
    )
    await trail.start()
    telemetry.watch_audit(lambda: trail)
    upstream_up = False  # the model server is not there: the gate is not ready
    telemetry.watch_readiness(
        lambda: {
            "keys": keys.current is not None,
            "audit": trail.accepting,
            "upstream": upstream_up,
        }
    )
    telemetry.reload("policy", ok=True)
    telemetry.stream_cut("ACCESS_REVOKED")
    telemetry.restart_pending(1)
    stop = asyncio.Event()
    traffic = asyncio.create_task(send_traffic(telemetry, trail, stop))
    try:
        await until(prometheus, 'up{job="aidr-gate"} == 1')
        for title, expr in dashboard_queries():
            series = await until(prometheus, expr)
            assert series, title
        # The counters have been scraped at 0 (twice), so what happens now shows as an increase.
        await until(prometheus, "count_over_time(aidr_gate_audit_records_lost_total[1m]) >= 2")
        await until(
            prometheus, 'count_over_time(aidr_gate_reloads_total{aidr_result="failed"}[1m]) >= 2'
        )
        assert trail.stats().lost == 0
        telemetry.reload("policy", ok=False)  # refused: the last good state keeps serving
        await trail.close(5)
        lost = trail.submit(audit_event(timed(0)[0]))  # after close: stored nowhere, counted
        assert await lost is False and trail.stats().lost == 1
        await wait_for_alerts(
            prometheus,
            {
                "AidrGateAuditRecordsLost": {"firing"},
                "AidrGateReloadFailing": {"firing"},
                "AidrGateNotReady": {"pending", "firing"},
            },
        )
        for rule in alert_rules():
            prometheus.query(rule["expr"])  # runs (raises on a PromQL error)
            for name in set(_NAME.findall(rule["expr"])):
                assert await until(prometheus, name), (rule["alert"], name)
        spool = prometheus.query('aidr_gate_audit_spool_size_bytes{aidr_audit_sink="siem"}')
        assert float(spool[0]["value"][1]) > 0
        countries = prometheus.query(
            'sum by (aidr_network_country) (aidr_gate_network_decisions_total{aidr_effect="deny"})'
        )
        denied_from = {
            (d.evidence.origin.country if d.evidence.origin else None) or "unknown"
            for d in decisions()
            if d.effect is Effect.DENY
        }
        assert len(denied_from) >= 4
        assert {s["metric"]["aidr_network_country"] for s in countries} == denied_from
    finally:
        stop.set()
        await traffic
        await trail.close(5)
        await keys.close()
        geo.close()


@pytest.mark.timeout(180)
def test_prometheus_scrapes_the_gate_and_the_shipped_dashboard_and_alerts_work(
    tmp_path: Path,
) -> None:
    port = free_port()
    exporters = Exporters(TelemetrySettings(prometheus=PrometheusSettings(port=port)))
    with (
        JwksServer(jwks_of(rsa_key())) as issuer,
        Served(exporters),
        PrometheusServer(
            tmp_path / "prometheus", [f"127.0.0.1:{port}"], rule_files=[ALERTS]
        ) as prometheus,
    ):
        asyncio.run(scenario(tmp_path, exporters, prometheus, issuer.url))
