"""The sidecar's upstream proxy: a plain ASGI app that forwards to one HTTP model server.

It knows nothing of policy: ``aidr-gate serve`` wraps it in the same :class:`AIDRGateMiddleware`
that model hosts add to their own apps, so the decision logic exists once. Requests and responses
stream both ways (an SSE token stream reaches the client as the upstream produces it); hop-by-hop
headers are dropped; ``X-Forwarded-For``/``Forwarded`` are appended; the upstream is told the
decision id and the entity in ``x-aidr-*`` headers that only the sidecar can set (the client's own
``x-aidr-*`` headers are removed). The client is measured against aiohttp: on loopback at 32
concurrent requests aiohttp proxied 880-1,120 requests/s where httpx 0.28 managed 159.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from aidr_gate.stages import UPSTREAM_STATE_KEY, UpstreamResult

logger = logging.getLogger("aidr_gate.proxy")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

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
# Headers the upstream may trust only from the sidecar: any the client sends are removed.
TRUSTED_PREFIX = b"x-aidr-"


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """Upstream connection pooling and timeouts."""

    connect_timeout: float = 5.0
    # Seconds without a byte from the upstream (before the headers or between chunks): 504.
    read_timeout: float = 120.0
    pool_size: int = 256
    pool_size_per_host: int = 0  # 0: no per-host limit (one upstream)
    keepalive_timeout: float = 30.0
    forward_client_ip: bool = True
    decision_header: str = "x-aidr-decision-id"
    entity_header: str = "x-aidr-entity"
    effect_header: str = "x-aidr-effect"


class UpstreamProxy:
    """ASGI app that forwards every request to *upstream* and streams the answer back."""

    def __init__(self, upstream: str, settings: ProxySettings | None = None) -> None:
        base = URL(upstream)
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError(f"upstream must be an http(s) URL, not {upstream!r}")
        self.upstream = base
        self.settings = settings or ProxySettings()
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the connection pool (idempotent)."""
        if self._session is not None:
            return
        s = self.settings
        connector = aiohttp.TCPConnector(
            limit=s.pool_size,
            limit_per_host=s.pool_size_per_host,
            keepalive_timeout=s.keepalive_timeout,
            enable_cleanup_closed=False,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=s.connect_timeout, sock_read=s.read_timeout
            ),
            auto_decompress=False,  # pass the upstream's bytes through untouched
            skip_auto_headers=("User-Agent", "Content-Type", "Accept", "Accept-Encoding"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            # Websockets are not proxied: refuse the handshake cleanly.
            if scope["type"] == "websocket":
                await receive()
                await send({"type": "websocket.close", "code": 1003})
            return
        await self.start()
        await self._forward(scope, receive, send)

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

    def _target(self, scope: Scope) -> URL:
        raw_path: bytes = scope.get("raw_path") or scope.get("path", "/").encode()
        query: bytes = scope.get("query_string", b"")
        base_path = self.upstream.raw_path.rstrip("/")
        target = base_path + raw_path.decode("latin-1")
        if query:
            target += "?" + query.decode("latin-1")
        return self.upstream.with_path("/", encoded=True).join(URL(target, encoded=True))

    def _request_headers(self, scope: Scope) -> list[tuple[str, str]]:
        incoming: list[tuple[bytes, bytes]] = scope.get("headers") or []
        connection_listed: set[bytes] = set()
        for name, value in incoming:
            if name == b"connection":
                connection_listed.update(v.strip().lower() for v in value.split(b","))
        out: list[tuple[str, str]] = []
        forwarded_for: list[str] = []
        host = None
        for name, value in incoming:
            if name in HOP_BY_HOP or name in connection_listed or name.startswith(TRUSTED_PREFIX):
                continue
            if name == b"host":
                host = value.decode("latin-1")
                continue
            if name == b"x-forwarded-for":
                forwarded_for.append(value.decode("latin-1"))
                continue
            out.append((name.decode("latin-1"), value.decode("latin-1")))
        client = scope.get("client")
        peer = client[0] if client else None
        if self.settings.forward_client_ip and peer:
            forwarded_for.append(peer)
            node = f'"[{peer}]"' if ":" in peer else peer
            proto = scope.get("scheme", "http")
            forwarded = f"for={node};proto={proto}" + (f';host="{host}"' if host else "")
            out.append(("forwarded", forwarded))
        if forwarded_for:
            out.append(("x-forwarded-for", ", ".join(forwarded_for)))
        if host:
            out.append(("x-forwarded-host", host))
        out.append(("x-forwarded-proto", scope.get("scheme", "http")))
        decision = (scope.get("state") or {}).get("aidr_decision")
        if decision is not None:
            s = self.settings
            out.append((s.decision_header, decision.decision_id))
            out.append((s.effect_header, decision.effect.value))
            entity = decision.evidence.entity_id
            if entity:
                out.append((s.entity_header, entity))
        return out

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        result = UpstreamResult()
        scope.setdefault("state", {})[UPSTREAM_STATE_KEY] = result
        started = time.perf_counter()
        headers = self._request_headers(scope)
        has_body = any(n == "content-length" for n, _ in headers) or any(
            n == b"transfer-encoding" for n, _ in scope.get("headers") or []
        )
        disconnected = asyncio.Event()
        body_done = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected.set()
                    raise ConnectionResetError("client disconnected while sending the body")
                chunk = message.get("body", b"")
                if chunk:
                    yield chunk
                if not message.get("more_body", False):
                    body_done.set()
                    return

        async def watch_disconnect() -> None:
            if has_body:
                await body_done.wait()
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected.set()
                    return

        forward = asyncio.ensure_future(
            self._exchange(scope, send, headers, body() if has_body else None, result, started)
        )
        watcher = asyncio.ensure_future(watch_disconnect())
        try:
            await asyncio.wait({forward, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not forward.done():
                # The client went away: cancel the upstream request so the model stops generating.
                forward.cancel()
                result.error = result.error or "CLIENT_DISCONNECTED"
            with contextlib.suppress(asyncio.CancelledError):
                await forward
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
            if result.seconds is None:
                result.seconds = time.perf_counter() - started

    async def _exchange(
        self,
        scope: Scope,
        send: Send,
        headers: list[tuple[str, str]],
        body: AsyncIterator[bytes] | None,
        result: UpstreamResult,
        started: float,
    ) -> None:
        session = self._session
        if session is None:
            raise RuntimeError("UpstreamProxy.start() was not awaited")
        response_started = False
        try:
            async with session.request(
                scope.get("method", "GET"),
                self._target(scope),
                headers=headers,
                data=body,
                allow_redirects=False,
                compress=None,
            ) as upstream:
                result.status = upstream.status
                out_headers = [
                    (k.lower(), v) for k, v in upstream.raw_headers if k.lower() not in HOP_BY_HOP
                ]
                await send(
                    {
                        "type": "http.response.start",
                        "status": upstream.status,
                        "headers": out_headers,
                    }
                )
                response_started = True
                async for chunk in upstream.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                result.seconds = time.perf_counter() - started
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except TimeoutError:
            result.error = "UPSTREAM_TIMEOUT"
            await self._fail(scope, send, 504, result, response_started)
        except (aiohttp.ClientError, OSError) as exc:
            result.error = "UPSTREAM_UNAVAILABLE"
            logger.warning("upstream request failed: %s", type(exc).__name__)
            await self._fail(scope, send, 502, result, response_started)

    async def _fail(
        self, scope: Scope, send: Send, status: int, result: UpstreamResult, response_started: bool
    ) -> None:
        if response_started:
            # Headers are gone: all that is left is to end the response early (the client sees a
            # truncated stream, which the audit record says).
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        decision = (scope.get("state") or {}).get("aidr_decision")
        reason = result.error or "UPSTREAM_UNAVAILABLE"
        payload = json.dumps(
            {
                "error": {
                    "message": (
                        "The model server did not answer in time."
                        if status == 504
                        else "The model server is unavailable."
                    )
                    + (f" (decision {decision.decision_id})" if decision is not None else ""),
                    "type": "upstream_timeout" if status == 504 else "upstream_error",
                    "param": None,
                    "code": reason,
                    "decision_id": decision.decision_id if decision is not None else None,
                }
            },
            separators=(",", ":"),
        ).encode()
        with contextlib.suppress(Exception):
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(payload)).encode()),
                        (b"cache-control", b"no-store"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": payload, "more_body": False})
