"""The README's second way, as written there: a middleware host builds the exporters, hands the
telemetry to its runtime and routes ``/metrics`` to the scrape app beside the gated routes.

A real Starlette app (the demo model server) under a real uvicorn, real tokens and GeoIP files
from the test gate, an httpx client: the gated requests show in the exposition, with the audit
trail, the key set and readiness read at scrape time; the scrape itself is exempt from the gate.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from starlette.routing import Route

from aidr_gate import AIDRGateMiddleware, Runtime
from aidr_gate.demo.model_server import build_model_app
from aidr_gate.telemetry import PrometheusSettings, TelemetrySettings
from aidr_gate.telemetry.export import Exporters
from support.gate_env import IP, make_gate_env
from support.servers import serve
from support.telemetry_support import samples


def test_a_host_mounts_the_scrape_app_beside_its_gated_routes(tmp_path: Path) -> None:
    env = make_gate_env(tmp_path)
    exporters = Exporters(TelemetrySettings(prometheus=PrometheusSettings()))
    runtime = Runtime.from_config(str(env.config))
    runtime.telemetry = exporters.telemetry  # what the middleware records into
    exporters.telemetry.watch_runtime(runtime)  # audit trail, keys, GeoIP, readiness: at scrape
    app = build_model_app(token_delay=0)
    app.add_middleware(AIDRGateMiddleware, runtime=runtime)
    assert exporters.metrics_app is not None
    # Exactly /metrics (a Mount would redirect /metrics to /metrics/), exempt from the gate.
    app.router.routes.append(Route("/metrics", exporters.metrics_app))
    chat = {"model": "aurora-frontier", "messages": [{"role": "user", "content": "hi"}]}
    with serve(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        for entity, country, status in (("lab-us", "US", 200), ("nordlys-se", "SE", 451)):
            answer = client.post(
                "/v1/chat/completions",
                json=chat,
                headers={
                    "authorization": f"Bearer {env.token(entity)}",
                    "x-forwarded-for": IP[country],
                },
            )
            assert answer.status_code == status, answer.text
        scrape = client.get("/metrics")  # no token: exempt from the gate
    asyncio.run(exporters.close())
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain; version=0.0.4")
    got = samples(scrape.text)
    allowed = (("aidr_effect", "allow"), ("aidr_network_country", "US"))
    denied = (("aidr_effect", "deny"), ("aidr_network_country", "SE"))
    assert got["aidr_gate_network_decisions_total", allowed] == 1
    assert got["aidr_gate_network_decisions_total", denied] == 1
    assert got["aidr_gate_audit_records_written_total", ()] >= 1
    assert got["aidr_gate_keys_loaded", (("aidr_keys_source", "file"),)] == 1
    assert got["aidr_gate_geoip_build_age_seconds", (("aidr_geoip_role", "country"),)] > 0
    assert got["aidr_gate_readiness_check", (("aidr_check", "keys"),)] == 1
    assert got["aidr_gate_ready", ()] == 1
