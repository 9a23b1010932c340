"""The plain upstream proxy (no gate) under uvicorn, in front of small upstreams on 127.0.0.1.

What the sidecar's proxy must do whatever the gate decided: build the upstream URL safely, pass the
right headers each way, stream, and turn upstream failures into answers of the gate's shape.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import httpx
import pytest

from aidr_gate.decision import Effect
from aidr_gate.sidecar.proxy import ProxySettings, UpstreamProxy
from support.servers import ThreadedServer, free_port, serve
from support.sidecar_support import CuttingUpstream

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


async def echo_app(scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
    """An upstream that answers with what it received, and a few headers of its own."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    payload = json.dumps(
        {
            "method": scope["method"],
            "raw_path": scope["raw_path"].decode("latin-1"),
            "query": scope["query_string"].decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
            "body_bytes": len(body),
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 201,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"x-upstream", b"yes"),
                (b"x-private", b"hidden"),
                (b"connection", b"x-private"),
                (b"set-cookie", b"a=1"),
                (b"set-cookie", b"b=2"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


@pytest.fixture(scope="module")
def upstream() -> Iterator[ThreadedServer]:
    """The echo upstream under uvicorn."""
    with serve(echo_app) as server:
        yield server


def proxied(target: str, **settings: Any) -> ThreadedServer:
    """The plain proxy in front of *target*, under uvicorn."""
    return ThreadedServer(
        UpstreamProxy(target, ProxySettings(**settings)), proxy_headers=False
    ).start()


@pytest.fixture(scope="module")
def proxy(upstream: ThreadedServer) -> Iterator[ThreadedServer]:
    """The proxy, with a base path on the upstream URL."""
    server = proxied(upstream.url + "/base/")
    yield server
    server.stop()


def headers_of(answer: httpx.Response) -> dict[str, list[str]]:
    """The headers the upstream saw, by name."""
    out: dict[str, list[str]] = {}
    for name, value in answer.json()["headers"]:
        out.setdefault(name, []).append(value)
    return out


# -- the upstream URL ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "raw_path", "query"),
    [
        ("/v1/chat/completions", "/base/v1/chat/completions", ""),
        ("/v1/models?limit=2&q=a%20b", "/base/v1/models", "limit=2&q=a%20b"),
        ("//evil.example/steal", "/base//evil.example/steal", ""),
        ("/a%2Fb/%E2%98%95", "/base/a%2Fb/%E2%98%95", ""),
        ("/@evil.example/x", "/base/@evil.example/x", ""),
    ],
    ids=["plain", "query", "double-slash", "encoded", "at-sign"],
)
def test_path_and_query_are_forwarded_as_written(
    proxy: ThreadedServer, path: str, raw_path: str, query: str
) -> None:
    # A raw request line, so nothing normalises the path on the way in.
    answer = raw_request(proxy.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer["raw_path"] == raw_path  # still on the upstream: never another host
    assert answer["query"] == query


def raw_request(port: int, text: str) -> dict[str, Any]:
    """Send *text* over a socket; the JSON body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(text.encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 201"), head
    parsed: dict[str, Any] = json.loads(body)
    return parsed


@pytest.mark.parametrize("path", ["/v1/../admin", "/v1/./x", "/..", "/v1/%2e%2e/admin"])
def test_dot_segments_are_refused(proxy: ThreadedServer, path: str) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(body)["error"]["code"] == "PATH_NOT_CANONICAL"


@pytest.mark.parametrize(
    "upstream",
    ["ftp://127.0.0.1:1", "http://", "127.0.0.1:8000", "http://127.0.0.1:1/?a=b", "http://x/#f"],
)
def test_bad_upstreams_are_refused(upstream: str) -> None:
    with pytest.raises(ValueError, match="upstream"):
        UpstreamProxy(upstream)


# -- headers ---------------------------------------------------------------------------------------


def test_request_headers_both_ways(proxy: ThreadedServer) -> None:
    answer = httpx.post(
        f"{proxy.url}/v1/x",
        content=b"abc",
        headers={
            "x-forwarded-for": "203.0.113.9",
            "forwarded": "for=203.0.113.9",
            "x-aidr-entity": "forged",
            "x-aidr-decision-id": "forged",
            "keep-alive": "timeout=5",
            "connection": "keep-alive, x-hop",
            "x-hop": "gone",
            "proxy-authorization": "Basic Zm9vOmJhcg==",
            "te": "trailers",
            "expect": "100-continue",
            "x-kept": "1",
            "authorization": "Bearer kept",
        },
    )
    assert answer.status_code == 201
    seen = headers_of(answer)
    for gone in (
        "x-aidr-entity",
        "x-aidr-decision-id",
        "keep-alive",
        "connection",
        "x-hop",
        "proxy-authorization",
        "te",
        "expect",
        "transfer-encoding",
    ):
        assert gone not in seen, gone
    assert seen["x-kept"] == ["1"]
    assert seen["authorization"] == ["Bearer kept"]
    assert seen["host"] == [f"127.0.0.1:{proxy_upstream_port(answer)}"]
    assert seen["x-forwarded-for"] == ["203.0.113.9, 127.0.0.1"]
    assert seen["forwarded"] == [
        f'for=203.0.113.9, for=127.0.0.1;proto=http;host="127.0.0.1:{proxy.port}"'
    ]
    assert seen["x-forwarded-host"] == [f"127.0.0.1:{proxy.port}"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["content-length"] == ["3"]
    assert answer.json()["body_bytes"] == 3
    # Back to the client: the upstream's headers, less the hop-by-hop ones it named.
    assert answer.headers["x-upstream"] == "yes"
    assert "x-private" not in answer.headers
    assert answer.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert len(answer.headers.get_list("date")) == 1


def proxy_upstream_port(answer: httpx.Response) -> str:
    """The upstream's port, from the Host header it saw."""
    host: str = dict(answer.json()["headers"])["host"]
    return host.rsplit(":", 1)[1]


def test_client_ip_can_be_left_out(upstream: ThreadedServer) -> None:
    server = proxied(upstream.url, forward_client_ip=False)
    try:
        seen = headers_of(httpx.get(f"{server.url}/x", headers={"x-forwarded-for": "1.2.3.4"}))
    finally:
        server.stop()
    assert seen["x-forwarded-for"] == ["1.2.3.4"]  # passed on, nothing appended
    assert "forwarded" not in seen


class _Decision:
    """What the proxy reads of the middleware's decision."""

    decision_id = "01a2feedfeedfeedfeed00000000"
    effect = Effect.ALLOW

    class evidence:
        entity_id = "café-ünïcode\r\ninjected: yes"


def test_decision_headers_are_safe_text() -> None:
    proxy = UpstreamProxy("http://127.0.0.1:1")
    scope = {
        "type": "http",
        "headers": [(b"x-aidr-effect", b"deny")],
        "client": ("::1", 4000),
        "scheme": "https",
        "state": {"aidr_decision": _Decision()},
    }
    headers = dict(proxy.request_headers(scope))
    assert headers["x-aidr-decision-id"] == _Decision.decision_id
    assert headers["x-aidr-effect"] == "allow"
    assert headers["x-aidr-entity"] == "caf%C3%A9-%C3%BCn%C3%AFcode%0D%0Ainjected%3A%20yes"
    assert headers["forwarded"] == 'for="[::1]";proto=https'
    assert headers["x-forwarded-proto"] == "https"


# -- bodies and streams ----------------------------------------------------------------------------


def test_streamed_upload_and_empty_bodies(proxy: ThreadedServer) -> None:
    def pieces() -> Iterator[bytes]:
        for _ in range(64):
            yield b"x" * 65536

    answer = httpx.post(f"{proxy.url}/up", content=pieces(), timeout=30)
    assert answer.json()["body_bytes"] == 64 * 65536
    assert headers_of(answer)["transfer-encoding"] == ["chunked"]
    for method in ("GET", "DELETE", "POST"):
        assert httpx.request(method, f"{proxy.url}/e").json()["body_bytes"] == 0


def test_upstream_down_is_502(upstream: ThreadedServer) -> None:
    server = proxied(f"http://127.0.0.1:{free_port()}", connect_timeout=2)
    try:
        answer = httpx.get(f"{server.url}/x")
    finally:
        server.stop()
    assert answer.status_code == 502
    error = answer.json()["error"]
    assert error["code"] == "UPSTREAM_UNAVAILABLE" and error["type"] == "upstream_error"
    assert error["decision_id"] is None  # no gate in front of this one


@pytest.mark.parametrize("stall", [False, True], ids=["upstream-hangs-up", "upstream-stalls"])
def test_upstream_failing_mid_stream_cuts_the_stream(stall: bool) -> None:
    upstream = CuttingUpstream(stall=stall)
    server = proxied(f"http://127.0.0.1:{upstream.port}", read_timeout=0.5)
    try:
        with httpx.stream("GET", f"{server.url}/s", timeout=10) as response:
            assert response.status_code == 200
            received: list[bytes] = []
            with pytest.raises(httpx.RemoteProtocolError):
                received.extend(response.iter_raw())
            # What arrived before the failure did reach the client; the end was not faked.
            assert b"".join(received) == b"data: first\n\n"
    finally:
        server.stop()
        upstream.close()


def test_websockets_are_refused() -> None:
    proxy = UpstreamProxy("http://127.0.0.1:1")
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(proxy({"type": "websocket"}, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1003}]
