"""The scrape endpoint, the shipped dashboard and the shipped alert rules, against a real Prometheus.

Prometheus (Debian's package) scrapes the exposition app under a real uvicorn every second while
real decisions of the bundled packs flow through :class:`Telemetry`, with a real audit trail (one
HTTP sink whose collector is down, so it spools), a real JWKS endpoint, a GeoIP database written
at test time and a SQLite registry behind the entity cache. Every query of every dashboard panel
and every alert rule runs, the panels' queries and the rules' inputs return series through
Prometheus' HTTP API, and the records-lost, reload-failing and not-ready alerts fire when their
conditions are produced. tests/deploy/test_deploy_monitoring.py checks the same files offline (promtool).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from aidr_gate.audit import AuditTrail, FailurePolicy, HttpSinkConfig
from aidr_gate.cli import main
from aidr_gate.decision import Effect
from aidr_gate.request.geo import MaxMindCountryResolver
from aidr_gate.request.jwks import RemoteJwks
from aidr_gate.settings.audit import DeliveryConfig
from aidr_gate.stores.cache import EntityCache
from aidr_gate.stores.sqlite import SqliteStore
from aidr_gate.telemetry import PrometheusSettings, Telemetry, TelemetrySettings
from aidr_gate.telemetry.export import Exporters
from support.audit_support import file_config
from support.jwks_server import JwksServer, jwks_of, rsa_key
from support.mmdb_files import write_country_db
from support.prometheus_server import PrometheusServer
from support.registry_support import entity_id, write_yaml_registry
from support.servers import free_port
from support.telemetry_support import (
    ALERTS,
    alert_rules,
    audit_event,
    dashboard_queries,
    decisions,
    timed,
)

NETWORKS = {"8.8.8.0/24": "US", "1.0.16.0/24": "JP"}
_NAME = re.compile(r"\baidr_gate_[a-z_]+")


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


async def send_traffic(
    telemetry: Telemetry, trail: AuditTrail, registry: EntityCache, stop: asyncio.Event
) -> int:
    """Real decisions, recorded and audited, and entity lookups, a batch every 50 ms until
    *stop*; how many decisions."""
    sent = 0
    while not stop.is_set():
        await registry.fetch(entity_id(sent % 20))  # a miss, then hits
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
    registry = EntityCache(SqliteStore(str(tmp_path / "registry.db")))
    await registry.start()
    telemetry.watch_registry(lambda: registry)
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
    traffic = asyncio.create_task(send_traffic(telemetry, trail, registry, stop))
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
        await registry.close()
        geo.close()


@pytest.mark.timeout(180)
def test_prometheus_scrapes_the_gate_and_the_shipped_dashboard_and_alerts_work(
    tmp_path: Path,
) -> None:
    database = str(tmp_path / "registry.db")  # a SQLite registry of 20 entities
    assert main(["registry", "migrate", database]) == 0
    assert (
        main(["registry", "import", str(write_yaml_registry(tmp_path / "e.yaml", 20)), database])
        == 0
    )
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
