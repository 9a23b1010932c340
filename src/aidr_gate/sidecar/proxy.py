"""The sidecar's upstream proxy: a plain ASGI app that forwards to one HTTP model server.

It knows nothing of policy: ``aidr-gate serve`` wraps it in the same :class:`AIDRGateMiddleware`
that model hosts add to their own apps, so the decision logic exists once. Requests and responses
stream both ways (an SSE token stream reaches the client as the upstream produces it); hop-by-hop
headers are dropped; ``X-Forwarded-For``/``Forwarded`` are appended; the upstream is told the
decision id and the entity in ``x-aidr-*`` headers that only the sidecar can set (the client's own
``x-aidr-*`` headers are removed). The client is measured against aiohttp: on loopback at 32
concurrent requests aiohttp proxied 880-1,120 requests/s where httpx 0.28 managed 159.

What the upstream did is left in ``scope["state"]["aidr_upstream"]`` (an :class:`UpstreamResult`),
from where the middleware's audit record takes the upstream status and duration. When the client
goes away, the upstream request is cancelled and its connection closed, so the model server stops
generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from aidr_gate.asgi.responses import own_answer
from aidr_gate.asgi.types import Message, Receive, Scope, Send
from aidr_gate.settings.proxy import ProxySettings, upstream_problem
from aidr_gate.stages import CLIENT_DISCONNECTED, UPSTREAM_STATE_KEY, UpstreamResult

logger = logging.getLogger("aidr_gate.proxy")

__all__ = [
    "HOP_BY_HOP",
    "UPSTREAM_TIMEOUT",
    "UPSTREAM_UNAVAILABLE",
    "ProxySettings",
    "UpstreamProxy",
]

# RFC 9110 section 7.6.1, plus the de-facto ones; never forwarded in either direction.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Request headers the proxy sets or handles itself: the client's are not passed on. ``expect``:
# uvicorn already answered any ``100-continue``; the upstream must not wait for another.
_REQUEST_DROP = HOP_BY_HOP | {b"host", b"expect", b"x-forwarded-for", b"forwarded"}
# Response headers replaced by the sidecar's own (uvicorn writes ``date``).
_RESPONSE_DROP = HOP_BY_HOP | {b"date"}
# Headers the upstream may trust only from the sidecar: any the client sends are removed.
TRUSTED_PREFIX = b"x-aidr-"

# Reason codes of the sidecar's own failures, in the same places as a deny's reason code.
UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
UPSTREAM_TIMEOUT = "UPSTREAM_TIMEOUT"
UPSTREAM_FAILED_MIDSTREAM = "UPSTREAM_FAILED_MIDSTREAM"
PATH_NOT_CANONICAL = "PATH_NOT_CANONICAL"
# A header value the upstream can read as it is; anything else is percent-encoded.
_PLAIN_VALUE = re.compile(r"[\x21-\x7e]{1,512}")
_HOST_VALUE = re.compile(r"[A-Za-z0-9.:\[\]-]{1,255}")
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
        # Requests are built as text on this prefix: never by URL joining, which would let a path
        # such as ``//other.host/`` choose another host.
        self._prefix = str(base.origin()) + base.raw_path.rstrip("/")
        s = self.settings
        reserved = {s.decision_header, s.entity_header, s.effect_header}
        self._reserved = frozenset(_folded(name.encode("latin-1")) for name in reserved)
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the connection pool (idempotent)."""
        if self._session is not None:
            return
        s = self.settings
        connector = aiohttp.TCPConnector(
            limit=s.pool_size,
            limit_per_host=s.pool_size_per_host,
            keepalive_timeout=s.keepalive_timeout,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=s.connect_timeout, sock_read=s.read_timeout
            ),
            auto_decompress=False,  # pass the upstream's bytes through untouched
            skip_auto_headers=("User-Agent", "Content-Type", "Accept", "Accept-Encoding"),
            cookie_jar=aiohttp.DummyCookieJar(),
            raise_for_status=False,
        )

    async def close(self) -> None:
        """Close the connection pool."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def reachable(self, timeout: float = 1.0) -> bool:
        """True when a TCP connection to the upstream opens within *timeout* (for ``/readyz``)."""
        host = self.upstream.host or "127.0.0.1"
        port = self.upstream.port or (443 if self.upstream.scheme == "https" else 80)
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
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
            if self._session is None:
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
        raw_path: bytes = scope.get("raw_path") or scope.get("path", "/").encode()
        text = self._prefix + raw_path.decode("latin-1")
        query: bytes = scope.get("query_string", b"")
        if query:
            text += "?" + query.decode("latin-1")
        return URL(text, encoded=True)

    def request_headers(self, scope: Scope) -> list[tuple[str, str]]:
        """The headers sent upstream: the client's, less hop-by-hop and ``x-aidr-*``, plus ours."""
        incoming: list[tuple[bytes, bytes]] = scope.get("headers") or []
        listed: frozenset[bytes] | set[bytes] = frozenset()
        for name, value in incoming:
            if name == b"connection":
                listed = {v.strip().lower() for v in value.split(b",")}
                break
        out: list[tuple[str, str]] = []
        forwarded_for: list[str] = []
        forwarded: list[str] = []
        host: str | None = None
        has_proto = has_host = False
        reserved = self._reserved
        for name, value in incoming:
            if name in _REQUEST_DROP:
                if name == b"x-forwarded-for":
                    forwarded_for.append(value.decode("latin-1"))
                elif name == b"forwarded":
                    forwarded.append(value.decode("latin-1"))
                elif name == b"host":
                    host = value.decode("latin-1")
                continue
            if name in listed or _trusted_spelling(name, reserved):
                continue
            if name == b"x-forwarded-proto":
                has_proto = True
            elif name == b"x-forwarded-host":
                has_host = True
            out.append((name.decode("latin-1"), value.decode("latin-1")))
        proto = scope.get("scheme", "http")
        client = scope.get("client")
        peer = client[0] if client else None
        if self.settings.forward_client_ip and peer:
            forwarded_for.append(peer)
            node = f'"[{peer}]"' if ":" in peer else peer
            element = f"for={node};proto={proto}"
            if host is not None and _HOST_VALUE.fullmatch(host):
                element += f';host="{host}"'
            forwarded.append(element)
        if forwarded_for:
            out.append(("x-forwarded-for", ", ".join(forwarded_for)))
        if forwarded:
            out.append(("forwarded", ", ".join(forwarded)))
        if host is not None and not has_host:
            out.append(("x-forwarded-host", host))
        if not has_proto:
            out.append(("x-forwarded-proto", proto))
        decision = (scope.get("state") or {}).get(self.settings.state_key)
        if decision is not None:
            s = self.settings
            out.append((s.decision_header, decision.decision_id))
            out.append((s.effect_header, decision.effect.value))
            entity = decision.evidence.entity_id
            if entity:
                out.append((s.entity_header, _header_text(entity)))
        return out

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
        session = self._session
        if session is None:
            raise RuntimeError("UpstreamProxy.start() was not awaited")
        headers = self.request_headers(scope)
        first = await watch.receive()
        data: bytes | AsyncIterator[bytes] | None
        if first["type"] == "http.disconnect":
            watch.client_gone = True
            result.error = CLIENT_DISCONNECTED
            return
        chunk: bytes = first.get("body", b"")
        if first.get("more_body", False):
            data = _body(chunk, watch)
        else:
            # The whole body at once (the middleware replays a buffered body this way when small):
            # send it as bytes with its exact length.
            headers = [(n, v) for n, v in headers if n != "content-length"]
            data = chunk if chunk or scope.get("method") not in ("GET", "HEAD") else None
            watch.body_done()
        response: aiohttp.ClientResponse | None = None
        response_started = False
        try:
            response = await session.request(
                scope.get("method", "GET"),
                self.target(scope),
                headers=headers,
                data=data,
                allow_redirects=False,
                compress=None,
            )
            result.status = response.status
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": _response_headers(response.raw_headers),
                }
            )
            response_started = True
            length = response.content_length
            received = 0
            async for piece in response.content.iter_any():
                received += len(piece)
                if length is not None and received >= length:
                    result.seconds = time.perf_counter() - started
                    watch.stop()  # uvicorn reports a completed response as a disconnect
                    await send({"type": "http.response.body", "body": piece, "more_body": False})
                    break
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            else:
                result.seconds = time.perf_counter() - started
                watch.stop()
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            response.release()
            response = None
        except TimeoutError:
            await self._failed(scope, send, result, UPSTREAM_TIMEOUT, response_started)
        except _ClientGone:
            watch.client_gone = True
            result.error = CLIENT_DISCONNECTED
        except (aiohttp.ClientError, OSError) as exc:
            if watch.client_gone:
                result.error = CLIENT_DISCONNECTED
                return
            logger.warning("upstream request failed: %s", type(exc).__name__)
            await self._failed(scope, send, result, UPSTREAM_UNAVAILABLE, response_started)
        finally:
            if response is not None:
                # Not read to the end (cancelled, timed out, cut): close the connection rather
                # than return it to the pool, so the upstream sees the request end.
                response.close()

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


def _response_headers(raw: Any) -> list[tuple[bytes, bytes]]:
    listed: set[bytes] = set()
    for name, value in raw:
        if name.lower() == b"connection":
            listed.update(v.strip().lower() for v in value.split(b","))
    out = []
    for name, value in raw:
        lower = name.lower()
        if lower in _RESPONSE_DROP or lower in listed:
            continue
        out.append((lower, value))
    return out


def _folded(name: bytes) -> bytes:
    """A header name as an upstream may fold it: any case, ``_`` read as ``-`` (WSGI servers map
    both ``x-aidr-entity`` and ``x_aidr_entity`` to ``HTTP_X_AIDR_ENTITY``)."""
    return name.lower().replace(b"_", b"-")


def _trusted_spelling(name: bytes, reserved: frozenset[bytes]) -> bool:
    """True for any spelling of a header only the sidecar may set."""
    if name.startswith(TRUSTED_PREFIX) or name in reserved:
        return True
    if b"_" not in name and name.islower():
        return False  # the common case: an ASGI name, already as the upstream reads it
    folded = _folded(name)
    return folded.startswith(TRUSTED_PREFIX) or folded in reserved


def _header_text(value: str) -> str:
    """A header value safe to send: printable ASCII as is, anything else percent-encoded."""
    return value if _PLAIN_VALUE.fullmatch(value) else quote(value, safe="")[:1024]


def _has_dot_segment(path: str) -> bool:
    return any(segment in (".", "..") for segment in path.split("/"))
