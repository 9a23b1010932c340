"""The sidecar's upstream client (sidecar/upstream.py) against raw TCP upstreams on 127.0.0.1.

Each upstream here is a real socket server whose every byte is scripted, so the answers a general
HTTP server would never send (1xx before the answer, a body ended by closing, a kept-alive
connection closed under a request, a head too large) can be sent; the proxy runs under uvicorn.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aidr_gate.sidecar.proxy import ProxySettings, UpstreamProxy
from aidr_gate.sidecar.upstream import HIGH_WATER, MAX_HEAD_BYTES, UpstreamPool
from support.audit_support import self_signed_certificate
from support.servers import ThreadedServer

Script = Callable[[socket.socket, int], None]
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


class ScriptedUpstream:
    """Accepts connections and runs *script(conn, number)* on each, number counting from 0."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self.open_now = 0
        self.most_open = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                number = self.accepted
                self.accepted += 1
                self.open_now += 1
                self.most_open = max(self.most_open, self.open_now)
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        try:
            with conn:
                self.script(conn, number)
        except OSError:
            pass
        finally:
            with self._lock:
                self.open_now -= 1

    def close(self) -> None:
        """Stop accepting."""
        self.sock.close()


def read_request(conn: socket.socket) -> bytes:
    """One request head (and whatever came with it); b'' when the peer closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        data += chunk
    return data


Through = Callable[..., tuple[ThreadedServer, ScriptedUpstream]]


@pytest.fixture
def through() -> Iterator[Through]:
    """Start the proxy under uvicorn in front of a scripted upstream (stopped after the test)."""
    started: list[tuple[ThreadedServer, ScriptedUpstream]] = []

    def start(script: Script, **settings: float) -> tuple[ThreadedServer, ScriptedUpstream]:
        upstream = ScriptedUpstream(script)
        proxy = UpstreamProxy(
            f"http://127.0.0.1:{upstream.port}",
            ProxySettings(**settings),  # type: ignore[arg-type]
        )
        server = ThreadedServer(proxy, proxy_headers=False).start()
        started.append((server, upstream))
        return server, upstream

    yield start
    for server, upstream in started:
        server.stop()
        upstream.close()


def keep_answering(conn: socket.socket, number: int) -> None:
    """Answer every request on the connection with 200 ok."""
    while read_request(conn):
        conn.sendall(OK)


def test_connections_are_kept_alive_and_reused(through: Through) -> None:
    server, upstream = through(keep_answering)
    with httpx.Client(base_url=server.url) as client:
        for _ in range(20):
            assert client.get("/x").text == "ok"
    assert upstream.accepted == 1


def test_the_pool_bounds_connections_open_at_once(through: Through) -> None:
    def slow(conn: socket.socket, number: int) -> None:
        while read_request(conn):
            threading.Event().wait(0.05)
            conn.sendall(OK)

    server, upstream = through(slow, pool_size=2)

    async def many() -> list[str]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            answers = await asyncio.gather(*(client.get(f"/{n}") for n in range(12)))
        return [a.text for a in answers]

    assert asyncio.run(many()) == ["ok"] * 12
    assert upstream.most_open <= 2


def test_interim_answers_are_skipped(through: Through) -> None:
    def hints(conn: socket.socket, number: int) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n" + OK)

    server, _ = through(hints)
    answer = httpx.get(server.url + "/x")
    assert (answer.status_code, answer.text) == (200, "ok")
    assert "link" not in answer.headers


def test_a_body_ended_by_closing_the_connection(through: Through) -> None:
    def until_close(conn: socket.socket, number: int) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it")

    server, upstream = through(until_close)
    for _ in range(2):  # the closed connection is not reused
        assert httpx.get(server.url + "/x").text == "all of it"
    assert upstream.accepted == 2


def test_head_answers_have_no_body(through: Through) -> None:
    def head(conn: socket.socket, number: int) -> None:
        while read_request(conn):
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n")

    server, _ = through(head)
    with httpx.Client(base_url=server.url) as client:
        for _ in range(2):
            answer = client.head("/x")
            assert answer.status_code == 200
            assert answer.headers["content-length"] == "1234"


@pytest.mark.parametrize(("method", "status"), [("GET", 200), ("POST", 502)])
def test_a_kept_alive_connection_closed_under_a_request(
    through: Through, method: str, status: int
) -> None:
    """Closed by the upstream as the request arrives: an idempotent one is sent again on a new
    connection; any other is not (the upstream may have acted on it), and is a 502."""

    def once_per_connection(conn: socket.socket, number: int) -> None:
        read_request(conn)
        conn.sendall(OK)
        read_request(conn)  # the next request on this connection: hang up without answering

    server, _ = through(once_per_connection)
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/first").text == "ok"
        answer = client.request(method, "/second", content=b"{}" if method == "POST" else None)
    assert answer.status_code == status
    if status == 502:
        assert answer.json()["error"]["code"] == "UPSTREAM_UNAVAILABLE"


def test_an_oversized_answer_head_is_502(through: Through) -> None:
    def huge(conn: socket.socket, number: int) -> None:
        read_request(conn)
        filler = b"".join(b"x-fill-%d: %s\r\n" % (n, b"v" * 1000) for n in range(80))
        conn.sendall(b"HTTP/1.1 200 OK\r\n" + filler + b"content-length: 2\r\n\r\nok")

    assert MAX_HEAD_BYTES < 80 * 1000
    server, _ = through(huge)
    answer = httpx.get(server.url + "/x")
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "UPSTREAM_UNAVAILABLE"


def test_an_upstream_silent_before_its_answer_is_504(
    through: Through,
) -> None:
    def silent(conn: socket.socket, number: int) -> None:
        read_request(conn)
        conn.recv(1)  # until the proxy gives up and closes

    server, _ = through(silent, read_timeout=0.3)
    answer = httpx.get(server.url + "/x", timeout=10)
    assert answer.status_code == 504
    assert answer.json()["error"]["code"] == "UPSTREAM_TIMEOUT"


def test_reading_pauses_while_the_proxy_holds_unsent_bytes() -> None:
    """A client reading slowly: the bytes held for it stay bounded, the rest waits upstream."""
    size = 16 * 1024 * 1024

    def firehose(conn: socket.socket, number: int) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        piece = b"z" * 65536
        for _ in range(size // len(piece)):
            conn.sendall(piece)

    upstream = ScriptedUpstream(firehose)

    async def exchange() -> tuple[int, int]:
        pool = UpstreamPool(
            "127.0.0.1",
            upstream.port,
            tls=False,
            size=4,
            connect_timeout=5,
            read_timeout=30,
            keepalive_timeout=30,
        )
        conn = await pool.acquire()
        conn.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", None, False, False)
        await conn.response_head()
        await asyncio.sleep(0.5)  # the upstream writes as fast as it can; nobody reads
        held = conn.response.held
        total = 0
        async for piece in conn.pieces():
            total += len(piece)
        conn.finish(reuse=False)
        pool.close()
        return held, total

    try:
        held, total = asyncio.run(exchange())
    finally:
        upstream.close()
    assert total == size
    assert held < HIGH_WATER + 1024 * 1024  # one read past the mark at most, never the 16 MiB


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted", "untrusted"])
def test_an_https_upstream_is_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trusted: bool
) -> None:
    """TLS to the upstream with the default verification: its certificate must be trusted (the
    system's store, or ``SSL_CERT_FILE``), else the answer is 502."""
    cert, key = self_signed_certificate(tmp_path)
    if trusted:
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    else:
        other = tmp_path / "other"
        other.mkdir()
        monkeypatch.setenv("SSL_CERT_FILE", str(self_signed_certificate(other)[0]))

    async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"over tls"})

    upstream = ThreadedServer(hello, ssl_certfile=str(cert), ssl_keyfile=str(key)).start()
    proxy = ThreadedServer(
        UpstreamProxy(f"https://127.0.0.1:{upstream.port}"), proxy_headers=False
    ).start()
    try:
        answer = httpx.get(proxy.url + "/x", timeout=10)
    finally:
        proxy.stop()
        upstream.stop()
    if trusted:
        assert (answer.status_code, answer.text) == (200, "over tls")
    else:
        assert answer.status_code == 502
        assert answer.json()["error"]["code"] == "UPSTREAM_UNAVAILABLE"
