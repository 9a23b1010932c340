"""The exchange's calls to Redis, and the bound on its work between two yields to the event loop.

The exchange runs on the event loop that serves requests, so whatever it computes in one go, a
request arriving meanwhile waits for. Two things keep that short:

- :class:`Slices`: every loop of the exchange checks the clock and yields after ``STALL`` seconds;
- :class:`Wire`: one script call per chunk of keys, the command packed here (a bulk string per
  key name, the chunk's records in one argument, joined by the caller) and sent on one connection
  of redis-py's pool. redis-py's own ``execute_command`` encodes each argument in Python (about a
  microsecond each, in one go) and takes a pool connection per call; a reply here is one bulk
  string, which hiredis turns into one ``str`` at memcpy speed.
"""

from __future__ import annotations

import asyncio
import hashlib
from time import perf_counter
from typing import Any

# Seconds of work the exchange does between two yields to the event loop, about: a request
# arriving meanwhile waits no longer than this (plus one key's work).
STALL = 20e-6


class Slices:
    """When the exchange's current slice of work is spent (wall clock: a preemption only ends a
    slice early)."""

    __slots__ = ("until",)

    def __init__(self) -> None:
        self.until = perf_counter() + STALL

    def over(self) -> bool:
        """True when it is time to yield (``await pause()``)."""
        return perf_counter() > self.until

    async def pause(self) -> None:
        """Let the event loop run what waits (requests), then start a new slice."""
        await asyncio.sleep(0)
        self.until = perf_counter() + STALL


def bulk(text: str) -> bytes:
    """*text* as one RESP bulk string."""
    data = text.encode()
    return b"$%d\r\n%b\r\n" % (len(data), data)


class Script:
    """A Lua script called by its digest (loaded on the first ``NOSCRIPT``)."""

    __slots__ = ("body", "head")

    def __init__(self, body: str) -> None:
        self.body = body
        # Redis names a script by the SHA-1 of its body (a name, not a security measure).
        self.head = bulk(hashlib.sha1(body.encode(), usedforsecurity=False).hexdigest())


class Wire:
    """Calls on one connection of a redis-py asyncio client's pool (taken at the first call;
    redis-py reconnects it after a failure, with the client's timeouts)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._connection: Any = None
        self._lock = asyncio.Lock()

    async def call(self, script: Script, keys: list[bytes], args: list[bytes]) -> Any:
        """Run *script* with *keys* and *args* (each packed by :func:`bulk`); its reply."""
        tail = [bulk(str(len(keys))), *keys, *args]
        count = b"*%d\r\n" % (2 + len(tail))
        try:
            return await self._send(b"".join((count, b"$7\r\nEVALSHA\r\n", script.head, *tail)))
        except Exception as exc:
            from redis.exceptions import NoScriptError  # the fleet extra's: imported when in use

            if not isinstance(exc, NoScriptError):
                raise
        # Redis restarted (or flushed its scripts): once with the body, which caches it again.
        return await self._send(b"".join((count, b"$4\r\nEVAL\r\n", bulk(script.body), *tail)))

    async def ping(self) -> None:
        """Find out whether Redis is there."""
        await self._send(b"*1\r\n$4\r\nPING\r\n")

    async def _send(self, packed: bytes) -> Any:
        async with self._lock:  # one command at a time on the connection
            connection = self._connection
            if connection is None:
                connection = await self.client.connection_pool.get_connection()
                self._connection = connection
            await connection.send_packed_command(packed, check_health=False)
            return await connection.read_response()
