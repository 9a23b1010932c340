"""How a sidecar request ended, as the audit record says it: the proxy's view against the middleware's.

The sidecar app (gate + proxy) runs under uvicorn in a thread; the upstreams are the demo model
server (in a thread) and a raw TCP upstream that fails mid-stream. The middleware decides the
ending with the proxy's ``UpstreamResult.error``: a client that left first is client-disconnected,
an answer the upstream broke off is an error, a 502/504 sent whole is completed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aidr_gate.demo.model_server import build_model_app
from aidr_gate.settings.loader import load_config
from aidr_gate.sidecar.app import build_sidecar
from support.gate_env import IP, GateEnv, make_gate_env
from support.servers import ThreadedServer, serve
from support.sidecar_support import CuttingUpstream


@pytest.fixture
def env(tmp_path: Path) -> GateEnv:
    """Keys, GeoIP databases and a configuration on disk."""
    return make_gate_env(tmp_path)


def gate_in_front_of(env: GateEnv, upstream: str, read_timeout: float = 5.0) -> ThreadedServer:
    """The sidecar app under uvicorn in a thread."""
    text = env.config.read_text() + f"proxy:\n  read_timeout: {read_timeout}\n"
    env.config.write_text(text)
    app = build_sidecar(load_config(env.config), upstream)
    return ThreadedServer(app, proxy_headers=False).start()


def last_record(env: GateEnv, timeout: float = 5.0) -> dict[str, Any]:
    """The newest audit record, once one is on disk."""
    deadline = time.monotonic() + timeout
    while True:
        records = env.audit_records()
        if records:
            return records[-1]
        if time.monotonic() > deadline:
            raise AssertionError("no audit record")
        time.sleep(0.05)


def headers(env: GateEnv) -> dict[str, str]:
    """A valid token for a Tier 1 lab calling from the US."""
    return {"authorization": f"Bearer {env.token('lab-us')}", "x-forwarded-for": IP["US"]}


@pytest.fixture
def slow_upstream() -> Iterator[ThreadedServer]:
    """The demo model server, honouring x-demo-delay."""
    with serve(build_model_app(faults=True)) as server:
        yield server


def test_upstream_timeout_before_the_answer_is_recorded(
    env: GateEnv, slow_upstream: ThreadedServer
) -> None:
    gate = gate_in_front_of(env, slow_upstream.url, read_timeout=0.5)
    try:
        answer = httpx.post(
            f"{gate.url}/v1/chat/completions",
            json={"model": "aurora-mini", "messages": [{"role": "user", "content": "x"}]},
            headers={**headers(env), "x-demo-delay": "1.5"},
            timeout=10,
        )
    finally:
        gate.stop()
    assert answer.status_code == 504
    record = last_record(env)
    assert record["event"]["id"] == answer.headers["x-aidr-decision-id"]
    assert record["http"]["response"]["status_code"] == 504
    assert record["aidr"]["request"]["ending"] == "completed"  # a whole answer was sent: the 504
    assert record["aidr"]["upstream"]["error"] == "UPSTREAM_TIMEOUT"


def test_client_leaving_before_the_answer_is_recorded_as_disconnected(
    env: GateEnv, slow_upstream: ThreadedServer
) -> None:
    gate = gate_in_front_of(env, slow_upstream.url)
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{gate.url}/v1/chat/completions",
                json={"model": "aurora-mini", "messages": [{"role": "user", "content": "x"}]},
                headers={**headers(env), "x-demo-delay": "1.5"},
                timeout=0.4,
            )
        record = last_record(env)
    finally:
        gate.stop()
    assert record["aidr"]["request"]["ending"] == "client-disconnected"


def test_upstream_failing_mid_stream_is_recorded_as_an_error(env: GateEnv) -> None:
    upstream = CuttingUpstream(stall=False)
    gate = gate_in_front_of(env, f"http://127.0.0.1:{upstream.port}")
    try:
        with (
            httpx.stream(
                "POST",
                f"{gate.url}/v1/chat/completions",
                json={"model": "aurora-mini", "stream": True, "messages": []},
                headers=headers(env),
                timeout=10,
            ) as response,
            pytest.raises(httpx.RemoteProtocolError),
        ):
            response.read()
        record = last_record(env)
    finally:
        gate.stop()
        upstream.close()
    assert record["aidr"]["upstream"]["status"] == 200
    assert record["aidr"]["upstream"]["error"] == "UPSTREAM_FAILED_MIDSTREAM"
    assert record["aidr"]["request"]["ending"] == "error"
