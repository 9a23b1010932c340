"""The sidecar's upstream proxy: a plain ASGI app that forwards to one HTTP model server.

It knows nothing of policy: ``aidr-gate serve`` wraps it in the same :class:`AIDRGateMiddleware`
that model hosts add to their own apps, so the decision logic exists once. Requests and responses
stream both ways (an SSE token stream reaches the client as the upstream produces it); hop-by-hop
headers are dropped; ``X-Forwarded-For``/``Forwarded`` are appended; the upstream is told the
decision id and the entity in ``x-aidr-*`` headers that only the sidecar can set (the client's own
``x-aidr-*`` headers are removed). The upstream client is the sidecar's own
(:mod:`aidr_gate.sidecar.upstream`, a keep-alive pool parsing with httptools): aiohttp's general
client cost about 100 µs of CPU a request more (httpx, measured earlier, proxied a sixth of aiohttp's
requests/s).

What the upstream did is left in ``scope["state"]["aidr_upstream"]`` (an :class:`UpstreamResult`),
from where the middleware's audit record takes the upstream status and duration. When the client
goes away, the upstream request is cancelled and its connection closed, so the model server stops
generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from yarl import URL

from aidr_gate.asgi.responses import own_answer
from aidr_gate.asgi.types import Message, Receive, Scope, Send
from aidr_gate.settings.proxy import ProxySettings, upstream_problem
from aidr_gate.sidecar.headers import HOP_BY_HOP, RequestHeaders, response_headers
from aidr_gate.sidecar.upstream import IDEMPOTENT, UpstreamBroken, UpstreamConnection, UpstreamPool
from aidr_gate.stages import CLIENT_DISCONNECTED, UPSTREAM_STATE_KEY, UpstreamResult

logger = logging.getLogger("aidr_gate.proxy")

__all__ = [
    "HOP_BY_HOP",
    "UPSTREAM_TIMEOUT",
    "UPSTREAM_UNAVAILABLE",
    "ProxySettings",
    "UpstreamProxy",
]

# Reason codes of the sidecar's own failures, in the same places as a deny's reason code.
UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
UPSTREAM_TIMEOUT = "UPSTREAM_TIMEOUT"
UPSTREAM_FAILED_MIDSTREAM = "UPSTREAM_FAILED_MIDSTREAM"
PATH_NOT_CANONICAL = "PATH_NOT_CANONICAL"
# Seconds into an exchange before a task starts watching for the client going away (see
# _DisconnectWatch): short requests never need one.
WATCH_AFTER = 0.05


class _ClientGone(Exception):
    """The client disconnected while its body was being forwarded."""


class UpstreamProxy:
    """ASGI app that forwards every request to *upstream* and streams the answer back."""

    def __init__(self, upstream: str, settings: ProxySettings | None = None) -> None:
        problem = upstream_problem(upstream)
        if problem is not None:
            raise ValueError(problem)
        base = URL(upstream)
        self.upstream = base
        self.settings = settings or ProxySettings()
        # Requests are built as text on the base path: never by URL joining, which would let a
        # path such as ``//other.host/`` choose another host.
        self._origin = str(base.origin())
        self._base_path = base.raw_path.rstrip("/")
        self._host = base.host_port_subcomponent
        self._headers = RequestHeaders(self.settings)
        self._pool: UpstreamPool | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the connection pool (idempotent)."""
        if self._pool is not None:
            return
        s = self.settings
        base = self.upstream
        self._pool = UpstreamPool(
            base.host or "127.0.0.1",
            base.port or (443 if base.scheme == "https" else 80),
            tls=base.scheme == "https",
            # One upstream host: a per-host limit, when set, is the pool's limit too.
            size=min(s.pool_size, s.pool_size_per_host or s.pool_size),
            connect_timeout=s.connect_timeout,
            read_timeout=s.read_timeout,
            keepalive_timeout=s.keepalive_timeout,
        )

    async def close(self) -> None:
        """Close the connection pool."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    async def reachable(self, timeout: float = 1.0) -> bool:
        """True when a TCP connection to the upstream opens within *timeout* (for ``/readyz``)."""
        host = self.upstream.host or "127.0.0.1"
        port = self.upstream.port or (443 if self.upstream.scheme == "https" else 80)
        try:
            async with asyncio.timeout(timeout):
                _, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    # -- ASGI --------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if self._pool is None:
                await self.start()
            await self._forward(scope, receive, send)
            return
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind == "websocket":
            # Websockets are not proxied: refuse the handshake cleanly.
            await receive()
            await send({"type": "websocket.close", "code": 1003})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- the request -------------------------------------------------------------------------------

    def target(self, scope: Scope) -> URL:
        """The upstream URL of a request: the upstream's base path, then the raw path and query."""
        return URL(self._origin + self._path(scope), encoded=True)

    def _path(self, scope: Scope) -> str:
        """The request line's target: the upstream's base path, then the raw path and query, as
        written (never joined as URLs are, which would let ``//other.host/`` choose the host)."""
        raw_path: bytes = scope.get("raw_path") or scope.get("path", "/").encode()
        text = self._base_path + raw_path.decode("latin-1")
        query: bytes = scope.get("query_string", b"")
        if query:
            text += "?" + query.decode("latin-1")
        return text

    def request_headers(self, scope: Scope, whole_body: bool = False) -> list[tuple[str, str]]:
        """The headers sent upstream: the client's, less hop-by-hop and ``x-aidr-*``, plus ours
        (*whole_body*: without the client's ``content-length``, the body going as one piece)."""
        return self._headers.build(scope, whole_body)

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        result = UpstreamResult()
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state[UPSTREAM_STATE_KEY] = result
        path: str = scope.get("path", "/")
        if "/." in path and _has_dot_segment(path):
            # Gated as written, such a path could reach another route at an upstream that
            # normalises it: refuse rather than forward.
            result.error = PATH_NOT_CANONICAL
            await self._error(scope, send, PATH_NOT_CANONICAL)
            result.seconds = time.perf_counter() - started
            return
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - ASGI servers always run requests in tasks
            raise RuntimeError("UpstreamProxy must run inside an asyncio task")
        watch = _DisconnectWatch(receive, task)
        try:
            await self._exchange(scope, send, watch, result, started)
        except asyncio.CancelledError:
            # Cancelled by the watch (the client left) rather than by the server: finish quietly.
            if watch.client_gone and task.uncancel() == 0:
                result.error = CLIENT_DISCONNECTED
                return
            raise
        finally:
            watch.stop()
            if result.seconds is None:
                result.seconds = time.perf_counter() - started

    async def _exchange(
        self,
        scope: Scope,
        send: Send,
        watch: _DisconnectWatch,
        result: UpstreamResult,
        started: float,
    ) -> None:
        pool = self._pool
        if pool is None:
            raise RuntimeError("UpstreamProxy.start() was not awaited")
        first = await watch.receive()
        if first["type"] == "http.disconnect":
            watch.client_gone = True
            result.error = CLIENT_DISCONNECTED
            return
        method: str = scope.get("method", "GET")
        chunk: bytes = first.get("body", b"")
        body: bytes | None = None
        stream: AsyncIterator[bytes] | None = None
        if first.get("more_body", False):
            stream = _body(chunk, watch)
            headers = self.request_headers(scope)
        else:
            # The whole body at once (the middleware replays a buffered body this way when small):
            # send it as bytes with its exact length.
            headers = self.request_headers(scope, whole_body=True)
            body = chunk if chunk or method not in ("GET", "HEAD") else None
            watch.body_done()
        chunked = stream is not None and all(name != "content-length" for name, _ in headers)
        head = self._head(method, scope, headers, body, chunked)
        conn: UpstreamConnection | None = None
        response_started = False
        try:
            conn = await _request(pool, method, head, body, stream, chunked)
            answer = conn.response
            result.status = answer.status
            await send(
                {
                    "type": "http.response.start",
                    "status": answer.status,
                    "headers": response_headers(answer.raw_headers),
                }
            )
            response_started = True
            await self._relay(conn, send, watch, result, started)
            conn.finish(reuse=True)
            conn = None
        except TimeoutError:
            await self._failed(scope, send, result, UPSTREAM_TIMEOUT, response_started)
        except _ClientGone:
            watch.client_gone = True
            result.error = CLIENT_DISCONNECTED
        except OSError as exc:
            if watch.client_gone:
                result.error = CLIENT_DISCONNECTED
                return
            logger.warning("upstream request failed: %s", type(exc).__name__)
            await self._failed(scope, send, result, UPSTREAM_UNAVAILABLE, response_started)
        finally:
            if conn is not None:
                # Not read to the end (cancelled, timed out, cut): close the connection rather
                # than return it to the pool, so the upstream sees the request end.
                conn.finish(reuse=False)

    def _head(
        self,
        method: str,
        scope: Scope,
        headers: list[tuple[str, str]],
        body: bytes | None,
        chunked: bool,
    ) -> bytes:
        """The request line and headers, with the body's framing: its length when whole, chunked
        when streamed without the length the client gave."""
        lines = [f"{method} {self._path(scope)} HTTP/1.1\r\nhost: {self._host}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers]
        if body is not None:
            lines.append(f"content-length: {len(body)}\r\n")
        elif chunked:
            lines.append("transfer-encoding: chunked\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")

    async def _relay(
        self,
        conn: UpstreamConnection,
        send: Send,
        watch: _DisconnectWatch,
        result: UpstreamResult,
        started: float,
    ) -> None:
        """The response body, piece by piece as the upstream sends it."""
        length = conn.response.content_length
        received = 0
        async for piece in conn.pieces():
            received += len(piece)
            if length is not None and received >= length:
                result.seconds = time.perf_counter() - started
                watch.stop()  # uvicorn reports a completed response as a disconnect
                await send({"type": "http.response.body", "body": piece, "more_body": False})
                return
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        result.seconds = time.perf_counter() - started
        watch.stop()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _failed(
        self,
        scope: Scope,
        send: Send,
        result: UpstreamResult,
        code: str,
        response_started: bool,
    ) -> None:
        if response_started:
            # The headers are gone: end without completing the response, so the client sees a cut
            # stream (the connection closes) rather than a clean end.
            result.error = UPSTREAM_FAILED_MIDSTREAM
            logger.warning("upstream failed mid-response (%s); cutting the stream", code)
            return
        result.error = code
        await self._error(scope, send, code)

    async def _error(self, scope: Scope, send: Send, code: str) -> None:
        """An error answer in the shape of the gate's denials (and OpenAI's errors); its status
        and sentence are the code's registry entry."""
        decision = (scope.get("state") or {}).get(self.settings.state_key)
        decision_id = decision.decision_id if decision is not None else None
        status, payload, headers = own_answer(code, decision_id)
        with contextlib.suppress(OSError):
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": payload, "more_body": False})


class _DisconnectWatch:
    """Cancels the request's task when the client disconnects, once the body has been read.

    While the body is being read, the body reader itself sees a disconnect. After that, a watcher
    task waits on ``receive()``; it starts only once the exchange has lasted ``WATCH_AFTER``
    seconds, so the common short request never pays for a task (a disconnect is then noticed at
    most that much later). Cancelling the request's own task (as ``asyncio.timeout`` does)
    interrupts whatever it awaits, the upstream's headers or its next chunk alike.
    """

    __slots__ = ("_receive", "_task", "_timer", "_watcher", "client_gone", "stopped")

    def __init__(self, receive: Receive, task: asyncio.Task[Any]) -> None:
        self._receive = receive
        self._task = task
        self._timer: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.client_gone = False
        self.stopped = False

    async def receive(self) -> Message:
        """The next message of the request body."""
        return await self._receive()

    def body_done(self) -> None:
        """The body is read: from now on, a message can only be ``http.disconnect``."""
        if self._timer is None and not self.stopped:
            self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER, self._start)

    def _start(self) -> None:
        if not self.stopped and self._watcher is None:
            self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                break
        if not self.stopped:
            self.client_gone = True
            self._task.cancel()

    def stop(self) -> None:
        """The exchange is over (or about to send its last message): stop watching."""
        self.stopped = True
        if self._timer is not None:
            self._timer.cancel()
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()


async def _body(first: bytes, watch: _DisconnectWatch) -> AsyncIterator[bytes]:
    """The request body as it arrives, for a streamed upload."""
    if first:
        yield first
    while True:
        message = await watch.receive()
        if message["type"] == "http.disconnect":
            watch.client_gone = True
            raise _ClientGone
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            watch.body_done()
            return


def _has_dot_segment(path: str) -> bool:
    return any(segment in (".", "..") for segment in path.split("/"))


async def _request(
    pool: UpstreamPool,
    method: str,
    head: bytes,
    body: bytes | None,
    stream: AsyncIterator[bytes] | None,
    chunked: bool,
) -> UpstreamConnection:
    """Send the request on a pooled connection; the connection once the answer's head is in.

    An idempotent request with its body in hand is sent once more, on a new connection, when a
    kept-alive one turns out closed before any answer (the upstream closed it while idle).
    """
    retry = method in IDEMPOTENT and stream is None
    while True:
        conn = await pool.acquire()
        try:
            conn.send(head, body, stream is not None, method == "HEAD")
            if stream is not None:
                conn.stream_body(stream, chunked)
            await conn.response_head()
            return conn
        except UpstreamBroken:
            conn.finish(reuse=False)
            if not (retry and conn.reused and not conn.response.headers_done):
                raise
            retry = False
        except BaseException:
            conn.finish(reuse=False)
            raise
