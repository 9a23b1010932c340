"""The sidecar's HTTP server limits: what uvicorn bounds itself, and what it needs added.

uvicorn bounds concurrent connections and requests (``limit_concurrency``: past it, 503) and idle
keep-alive connections (``timeout_keep_alive``); with h11 it bounds the bytes of a request head
(``h11_max_incomplete_event_size``). It has no deadline for receiving a request's headers, and
with httptools (its C parser, which the sidecar uses) no bound on their size: 300 connections
trickling header bytes stayed open indefinitely. :func:`guarded_protocol` adds both to uvicorn's
own protocol class: a connection whose request headers have not all arrived within
``limits.header_timeout`` seconds of its first byte (or of the connection) is answered 408 and
closed, and one whose head passes :func:`head_cap` bytes is answered 431 and closed, before any
of it reaches the gate. The gate's own, lower limits (``limits.max_header_bytes``, 431 with an
audit record) apply to what gets through.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aidr_gate.limits import Limits

__all__ = ["guarded_protocol", "head_cap", "server_options"]

_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n"
    b"connection: close\r\n\r\n"
)


def head_cap(limits: Limits) -> int:
    """Bytes a request head may take at the server: the gate's header limit with room for the
    request line and line endings (the gate answers 431 with a record below it)."""
    return 2 * limits.max_header_bytes + 16 * 1024


def guarded_protocol(limits: Limits) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with a header deadline and a head size cap (h11's, when
    httptools is not installed: uvicorn bounds its head size itself, no deadline is added)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - httptools is a dependency of the sidecar
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol
    timeout = limits.header_timeout
    cap = head_cap(limits)

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        """Requests' headers within a deadline and a size, else 408 / 431 and closed."""

        _header_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            if self._header_timer is None:
                self._head_bytes = 0
                self._header_timer = self.loop.call_later(timeout, self._refuse, _TIMEOUT)

        def _disarm(self) -> None:
            timer, self._header_timer = self._header_timer, None
            if timer is not None:
                timer.cancel()

        def _refuse(self, answer: bytes) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.write(answer)
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            # Counted after parsing: a chunk that completes the headers (and carries the start
            # of the body) disarmed the deadline, and is no head.
            if self._header_timer is not None:
                self._head_bytes += len(data)
                if self._head_bytes > cap:
                    self._disarm()
                    self._refuse(_TOO_LARGE)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()  # a keep-alive connection's next request: its own deadline

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return GuardedHttpToolsProtocol


def server_options(limits: Limits) -> dict[str, Any]:
    """The ``uvicorn.Config`` options that apply *limits* to the sidecar's server."""
    return {
        "http": guarded_protocol(limits),
        "limit_concurrency": limits.max_connections,
        # Typed int, used as a timer delay: a fraction of a second is honoured.
        "timeout_keep_alive": limits.keepalive_timeout,
        "h11_max_incomplete_event_size": head_cap(limits),
    }
