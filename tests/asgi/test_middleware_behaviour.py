"""Middleware behaviour in-process (httpx over ASGI) and on a raw socket: modes, websockets,
model sources, telemetry, scope state, reloads, disconnects and "no audit, no access"."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from aidr_gate.asgi.middleware import AIDRGateMiddleware
from aidr_gate.decision import Decision
from aidr_gate.demo.model_server import build_model_app
from aidr_gate.registry import Entity
from aidr_gate.runtime import Runtime
from support.gate_env import IP, GateEnv, make_gate_env
from support.servers import serve

SPANS = InMemorySpanExporter()
METRICS = InMemoryMetricReader()


@pytest.fixture(scope="module", autouse=True)
def otel_sdk() -> None:
    """The OpenTelemetry SDK, configured once per process as a host would."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(SPANS))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[METRICS]))


def headers_for(env: GateEnv, entity: str, country: str) -> dict[str, str]:
    """Authorization and X-Forwarded-For for a caller."""
    return {"authorization": f"Bearer {env.token(entity)}", "x-forwarded-for": IP[country]}


def chat(model: str) -> dict[str, Any]:
    """A minimal chat completion body."""
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


Scenario = Callable[[httpx.AsyncClient, Runtime], Awaitable[None]]


def run_in_process(env: GateEnv, scenario: Scenario, app: Any = None) -> None:
    """Run *scenario* against the model app behind the gate, in-process, then close the runtime."""

    async def main() -> None:
        runtime = Runtime.from_config(str(env.config))
        inner = app if app is not None else build_model_app(token_delay=0, echo_digest=True)
        gated = AIDRGateMiddleware(inner, runtime=runtime)
        transport = httpx.ASGITransport(app=gated, client=("127.0.0.1", 40000))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://gate") as client:
                await scenario(client, runtime)
        finally:
            await runtime.close()

    asyncio.run(main())


def test_dry_run_never_blocks_and_says_what_would_have_happened(tmp_path: Path) -> None:
    env = make_gate_env(tmp_path, mode="dry-run")

    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        response = await client.post(
            "/v1/chat/completions",
            json=chat("aurora-frontier"),
            headers=headers_for(env, "nordlys-se", "SE"),
        )
        assert response.status_code == 200
        assert response.headers["x-aidr-dry-run"] == "deny 451 TIER3_CONTROLLED_MODEL"
        allowed = await client.post(
            "/v1/chat/completions",
            json=chat("aurora-frontier"),
            headers=headers_for(env, "lab-us", "US"),
        )
        assert allowed.headers["x-aidr-dry-run"] == "allow"

    run_in_process(env, scenario)
    records = env.audit_records()
    assert [r["event"]["outcome"] for r in records] == ["failure", "success"]
    assert {r["aidr"]["decision"]["mode"] for r in records} == {"dry-run"}
    assert [r["aidr"]["decision"]["blocked"] for r in records] == [False, False]


def test_shadow_pack_disagreements_are_recorded_and_counted(tmp_path: Path) -> None:
    env = make_gate_env(tmp_path, shadow="aidr-2025-05-rescinded")

    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        response = await client.post(
            "/v1/chat/completions",
            json=chat("aurora-frontier"),
            headers=headers_for(env, "andes-br", "BR"),
        )
        assert response.status_code == 403  # the enforced pack decides

    run_in_process(env, scenario)
    (record,) = env.audit_records()
    shadow = record["aidr"]["shadow"]
    assert shadow["policy"]["id"] == "aidr-2025-05-rescinded"
    assert shadow["effect"] == "allow" and shadow["agrees"] is False
    data = METRICS.get_metrics_data()
    assert data is not None
    counted = [
        point.value
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == "aidr_gate.shadow.disagreements"
        for point in metric.data.data_points
        if isinstance(point, NumberDataPoint)
    ]
    assert sum(counted) >= 1


def test_span_attributes_follow_semantic_conventions(tmp_path: Path) -> None:
    env = make_gate_env(tmp_path)
    SPANS.clear()

    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        await client.post(
            "/v1/chat/completions",
            json=chat("aurora-frontier"),
            headers=headers_for(env, "nordlys-se", "SE"),
        )

    run_in_process(env, scenario)
    (span,) = [s for s in SPANS.get_finished_spans() if s.name == "aidr_gate.decide"]
    attributes = dict(span.attributes or {})
    assert attributes["enduser.id"] == "nordlys-se"
    assert attributes["client.address"] == IP["SE"]
    assert attributes["gen_ai.request.model"] == "aurora-frontier"
    assert attributes["aidr.effect"] == "deny"
    assert attributes["aidr.reasons"] == ("TIER3_CONTROLLED_MODEL",)
    assert attributes["aidr.tier.effective"] == "tier3"
    assert attributes["aidr.network.country"] == "SE"
    assert attributes["aidr.model.tier"] == "controlled"
    assert attributes["http.response.status_code"] == 451
    data = METRICS.get_metrics_data()
    assert data is not None
    names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert {"aidr_gate.decisions", "aidr_gate.decision.duration"} <= names


def test_model_from_kserve_path_and_from_header(tmp_path: Path) -> None:
    env = make_gate_env(tmp_path, middleware="middleware:\n  model_header: x-model-id\n")

    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        denied = await client.post(
            "/v2/models/aurora-frontier/infer",
            json={"inputs": []},
            headers=headers_for(env, "andes-br", "BR"),
        )
        assert denied.status_code == 403
        allowed = await client.post(
            "/v2/models/llama-3.1-405b/infer",
            json={"inputs": [1]},
            headers=headers_for(env, "andes-br", "BR"),
        )
        assert allowed.status_code == 200 and allowed.json()["model_name"] == "llama-3.1-405b"
        # The header, when configured, must agree with the body (the app reads the body).
        conflict = await client.post(
            "/v1/embeddings",
            json={"model": "embed-small", "input": "x"},
            headers={**headers_for(env, "andes-br", "BR"), "x-model-id": "aurora-frontier"},
        )
        assert conflict.status_code == 400
        assert conflict.json()["error"]["code"] == "MODEL_CONFLICT"
        by_header = await client.post(
            "/v1/embeddings",
            json={"model": "aurora-frontier", "input": "x"},
            headers={**headers_for(env, "andes-br", "BR"), "x-model-id": "aurora-frontier"},
        )
        assert by_header.status_code == 403

    run_in_process(env, scenario)


def test_the_app_reads_the_decision_from_scope_state(tmp_path: Path) -> None:
    env = make_gate_env(tmp_path)

    async def whoami(request: Request) -> JSONResponse:
        decision: Decision = request.state.aidr_decision
        return JSONResponse(
            {
                "entity": decision.evidence.entity_id,
                "effect": decision.effect.value,
                "rule": decision.rule,
                "id": decision.decision_id,
            }
        )

    app = Starlette(routes=[Route("/v2/models/{model}/infer", whoami, methods=["POST"])])

    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        response = await client.post(
            "/v2/models/llama-3.1-405b/infer", json={}, headers=headers_for(env, "sakura-jp", "SG")
        )
        body = response.json()
        assert body["entity"] == "sakura-jp"
        assert body["effect"] == "log"
        assert body["rule"] == "aidr-2025-01/origin-worse-than-headquarters"
        assert body["id"] == response.headers["x-aidr-decision-id"]

    run_in_process(env, scenario, app)


def test_lifespan_passes_through(tmp_path: Path) -> None:
    env = make_gate_env(tmp_path)
    events: list[str] = []

    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, str]]:
        events.append("startup")
        yield {"greeting": "hello from lifespan"}
        events.append("shutdown")

    async def greet(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.state.greeting)

    import contextlib

    app = Starlette(
        routes=[Route("/v2/models/{model}/infer", greet, methods=["POST"])],
        lifespan=contextlib.asynccontextmanager(lifespan),
    )
    app.add_middleware(AIDRGateMiddleware, config=str(env.config))
    with TestClient(app, client=("127.0.0.1", 50000)) as client:
        response = client.post(
            "/v2/models/llama-3.1-405b/infer", json={}, headers=headers_for(env, "lab-us", "US")
        )
        assert response.text == "hello from lifespan"
    assert events == ["startup", "shutdown"]


def _ws_app() -> Starlette:
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        message = await websocket.receive_text()
        await websocket.send_text(f"echo {message}")
        await websocket.close()

    return Starlette(routes=[WebSocketRoute("/v1/models/{model}", echo)])


def test_websocket_is_decided_from_its_handshake(tmp_path: Path) -> None:
    env = make_gate_env(tmp_path)
    app = _ws_app()
    app.add_middleware(AIDRGateMiddleware, config=str(env.config))

    async def without_http_response(scope: Any, receive: Any, send: Any) -> None:
        # A server without the websocket.http.response extension: the deny is a close code.
        if scope["type"] == "websocket":
            scope = {**scope, "extensions": {}}
        await app(scope, receive, send)

    with TestClient(app, client=("127.0.0.1", 50000)) as client:
        with client.websocket_connect(
            "/v1/models/llama-3.1-405b", headers=headers_for(env, "andes-br", "BR")
        ) as ws:
            ws.send_text("hi")
            assert ws.receive_text() == "echo hi"
        with pytest.raises(WebSocketDenialResponse) as denial:  # noqa: SIM117 - the connect fails
            with client.websocket_connect(
                "/v1/models/aurora-frontier", headers=headers_for(env, "andes-br", "BR")
            ):
                pass
        assert denial.value.status_code == 403
        assert denial.value.json()["error"]["code"] == "NO_VALID_AGREEMENT"
    with TestClient(without_http_response, client=("127.0.0.1", 50000)) as client:
        with pytest.raises(WebSocketDisconnect) as closed:  # noqa: SIM117 - the connect fails
            with client.websocket_connect(
                "/v1/models/aurora-frontier", headers=headers_for(env, "andes-br", "BR")
            ):
                pass
        assert closed.value.code == 1008
        assert closed.value.reason == "NO_VALID_AGREEMENT"
    outcomes = [
        (r["event"]["outcome"], r["aidr"]["decision"]["reasons"][0]) for r in env.audit_records()
    ]
    assert outcomes == [("success", "ALLOWED"), *[("failure", "NO_VALID_AGREEMENT")] * 2]


def test_websocket_denial_with_http_response_extension(tmp_path: Path) -> None:
    env = make_gate_env(tmp_path)
    app = _ws_app()
    app.add_middleware(AIDRGateMiddleware, config=str(env.config))
    with serve(app, proxy_headers=False) as server:
        # A raw handshake: uvicorn supports websocket.http.response, so the deny is a real 451.
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            token = env.token("harbour-hk")
            sock.sendall(
                (
                    "GET /v1/models/aurora-frontier HTTP/1.1\r\nHost: gate\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n"
                    f"X-Forwarded-For: {IP['HK']}\r\n\r\n"
                ).encode()
            )
            reply = _read_http(sock)
        assert reply.startswith(b"HTTP/1.1 451")
        assert b'"code":"TIER3_CONTROLLED_MODEL"' in reply


def _read_http(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_client_disconnect_mid_body_is_recorded_and_harmless(tmp_path: Path) -> None:
    env = make_gate_env(tmp_path)
    app = build_model_app(token_delay=0)
    app.add_middleware(AIDRGateMiddleware, config=str(env.config))
    with serve(app, proxy_headers=False) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(
                (
                    "POST /v1/chat/completions HTTP/1.1\r\nHost: gate\r\nContent-Type: application/json\r\n"
                    f"Content-Length: 5000\r\nAuthorization: Bearer {env.token('lab-us')}\r\n"
                    f"X-Forwarded-For: {IP['US']}\r\n\r\n"
                    '{"model": "aurora-fron'
                ).encode()
            )
            time.sleep(0.2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not env.audit_records():
            time.sleep(0.05)
        (record,) = env.audit_records()
        assert record["aidr"]["request"]["ending"] == "client-disconnected"
        # The server is unharmed.
        ok = httpx.post(
            f"{server.url}/v1/chat/completions",
            json=chat("llama-3.1-405b"),
            headers=headers_for(env, "lab-us", "US"),
        )
        assert ok.status_code == 200


def test_reload_swaps_whole_and_keeps_the_last_good_state(tmp_path: Path) -> None:
    registry = tmp_path / "entities.yaml"
    registry.write_text("entities:\n  fresh-co:\n    headquarters: BR\n")
    env = make_gate_env(tmp_path, registry=registry)

    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        async def status() -> int:
            response = await client.post(
                "/v1/chat/completions",
                json=chat("aurora-frontier"),
                headers=headers_for(env, "fresh-co", "BR"),
            )
            return response.status_code

        assert await status() == 403  # Tier 2, no agreement
        registry.write_text(
            "entities:\n  fresh-co:\n    headquarters: BR\n    agreements:\n"
            "      - {id: SA-9, type: security-agreement, status: active, countries: [BR]}\n"
        )
        report = await runtime.reload()
        assert report.ok and report.changed
        assert await status() == 200
        registry.write_text("entities:\n  fresh-co:\n    headquarters: Brazil\n")
        report = await runtime.reload()
        assert not report.ok and "Brazil" in report.detail
        assert await status() == 200  # the last good state still decides

    run_in_process(env, scenario)


def test_policy_files_are_watched(tmp_path: Path) -> None:
    registry = tmp_path / "entities.yaml"
    registry.write_text("entities:\n  fresh-co:\n    headquarters: BR\n")
    env = make_gate_env(tmp_path, registry=registry)

    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        await client.get(
            "/v1/models", headers=headers_for(env, "fresh-co", "BR")
        )  # starts the runtime
        registry.write_text("entities:\n  fresh-co:\n    headquarters: CN\n")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            entity = runtime.gate.state.registry.lookup("fresh-co")
            if isinstance(entity, Entity) and entity.headquarters == "CN":
                return
            await asyncio.sleep(0.1)
        pytest.fail("the registry change was not picked up")

    run_in_process(env, scenario)


def test_no_audit_no_access(tmp_path: Path) -> None:
    env = make_gate_env(tmp_path)

    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        ok = await client.post(
            "/v1/chat/completions",
            json=chat("llama-3.1-405b"),
            headers=headers_for(env, "lab-us", "US"),
        )
        assert ok.status_code == 200
        assert runtime.audit is not None
        # The trail refuses records (as when even its spool cannot be written).
        runtime.audit.stores.storable = False
        refused = await client.post(
            "/v1/chat/completions",
            json=chat("llama-3.1-405b"),
            headers=headers_for(env, "lab-us", "US"),
        )
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "AUDIT_UNAVAILABLE"
        runtime.audit.stores.storable = True

    run_in_process(env, scenario)


def test_tokens_never_reach_the_audit_file(tmp_path: Path) -> None:
    env = make_gate_env(
        tmp_path,
        audit=(
            f"audit:\n  directory: {tmp_path / 'audit'}\n  headers: [authorization, x-api-key, user-agent]\n"
            f"  sinks:\n    - {{type: file, path: {tmp_path / 'audit' / 'audit.jsonl'}, fsync: always}}\n"
        ),
    )
    token = env.token("lab-us")

    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        for headers in (
            {"authorization": f"Bearer {token}"},
            {"authorization": "Bearer broken", "x-api-key": token},
            {"authorization": f"Bearer {token}", "user-agent": token, "cookie": f"s={token}"},
        ):
            await client.post(
                "/v1/chat/completions",
                json=chat("llama-3.1-405b"),
                headers={**headers, "x-forwarded-for": IP["US"]},
            )

    run_in_process(env, scenario)
    text = "".join(p.read_text() for p in (tmp_path / "audit").glob("*.jsonl*"))
    assert len(env.audit_records()) == 3
    assert token not in text
    assert token.split(".")[2] not in text  # not even the signature
    assert json.loads(text.splitlines()[0])["user"]["id"] == "lab-us"


def test_repeated_authorization_or_model_headers_are_refused(tmp_path: Path) -> None:
    env = make_gate_env(tmp_path, middleware="middleware:\n  model_header: x-model-id\n")
    good = f"Bearer {env.token('lab-us')}"
    bad = f"Bearer {env.token('pars-ir')}"

    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        # Two tokens: the gate must not check one while the app reads the other.
        twice = await client.post(
            "/v1/chat/completions",
            json=chat("llama-3.1-405b"),
            headers=[
                ("authorization", good),
                ("authorization", bad),
                ("x-forwarded-for", IP["US"]),
            ],
        )
        assert twice.status_code == 401
        assert twice.json()["error"]["code"] == "TOKEN_MALFORMED"
        models = await client.post(
            "/v1/embeddings",
            json={"model": "embed-small", "input": "x"},
            headers=[
                ("authorization", good),
                ("x-forwarded-for", IP["US"]),
                ("x-model-id", "embed-small"),
                ("x-model-id", "aurora-frontier"),
            ],
        )
        assert models.status_code == 400
        assert models.json()["error"]["code"] == "HEADER_REPEATED"

    run_in_process(env, scenario)


def test_dry_run_leaves_the_model_listing_alone(tmp_path: Path) -> None:
    env = make_gate_env(tmp_path, mode="dry-run")

    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        listing = await client.get("/v1/models", headers=headers_for(env, "andes-br", "BR"))
        assert listing.status_code == 200
        assert "aurora-frontier" in {m["id"] for m in listing.json()["data"]}

    run_in_process(env, scenario)


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/v1/chat/completions", b"application/json"),
        ("/v1/audio/transcriptions", b"multipart/form-data; boundary=x"),
    ],
)
@pytest.mark.parametrize("refusal", ["TOKEN_MALFORMED", "AUDIT_UNAVAILABLE"])
def test_no_body_is_read_from_a_request_refused_before_its_body_matters(
    tmp_path: Path, path: str, kind: bytes, refusal: str
) -> None:
    """A caller the gate cannot identify, or any caller while audit records cannot be written:
    the gate reads (and parses, for up to 32 MiB of form) none of the body."""
    env = make_gate_env(tmp_path)
    reads: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the app must not be reached")

    async def main() -> tuple[int, dict[str, Any]]:
        runtime = Runtime.from_config(str(env.config))
        await runtime.start()
        gate = AIDRGateMiddleware(app, runtime=runtime)
        sent: list[dict[str, Any]] = []
        token = b"not.a.token"
        if refusal == "AUDIT_UNAVAILABLE":
            token = env.token("lab-us").encode()
            assert runtime.audit is not None
            runtime.audit.stores.storable = False  # as when even its spool cannot be written

        async def receive() -> dict[str, Any]:
            reads.append("body")
            return {"type": "http.request", "body": b"x" * 65536, "more_body": True}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(dict(message))

        scope = {
            "type": "http",
            "method": "POST",
            "path": path,
            "headers": [(b"content-type", kind), (b"authorization", b"Bearer " + token)],
            "client": ("127.0.0.1", 5000),
            "state": {},
        }
        await gate(scope, receive, send)
        if runtime.audit is not None:
            runtime.audit.stores.storable = True
        await runtime.close()
        return sent[0]["status"], json.loads(sent[1]["body"])

    status, body = asyncio.run(main())
    assert status == (401 if refusal == "TOKEN_MALFORMED" else 503)
    assert body["error"]["code"] == refusal
    assert reads == []  # not one chunk of the body was read
