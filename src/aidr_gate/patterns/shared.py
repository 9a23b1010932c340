"""A fleet's shared pattern state in Redis or Valkey: batched writes, a view refreshed in the background.

Requests never wait for Redis. The tracker notes which keys a request changed (a set add); every
``interval`` one background round trip writes those keys and reads back the fleet's view of every
key this replica saw within ``watch`` seconds, and merges it into the tracker's tables:

- distinct items (countries, entities) are a sorted set per key, member the item, score the last
  time any replica saw it (``ZADD GT``), trimmed to the longest window and to ``max_distinct``;
  merging takes the later time of each item, so reading back one's own writes counts nothing twice;
- request shares are a hash per key, one field per replica holding its own decayed counts (a
  replica overwrites its field, never adds to another's); the view sums the other replicas' fields.

When a round trip fails, or the view is older than ``stale_after``, the state is *degraded*: the
tables keep counting this replica's own requests (nothing is erased), the ``patterns_degraded``
signal is 1 (a pack may deny on it), ``/readyz`` and the metrics say so, and the next round that
succeeds writes what was counted meanwhile and clears it, without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from aidr_gate.patterns.exchange import Exchange, Key
from aidr_gate.patterns.settings import RedisSettings
from aidr_gate.patterns.tracker import PatternTracker
from aidr_gate.tasks import stop_task

logger = logging.getLogger("aidr_gate.patterns")

MAX_BACKOFF = 2.0
ROUND_LIMIT = 60.0  # seconds


@dataclass(frozen=True, slots=True)
class SharedHealth:
    """What ``/readyz`` and the metrics say of the shared view."""

    state: str  # "starting", "shared" or "degraded"
    degraded: bool
    age: float | None  # seconds since the view was last refreshed (None: never)
    since: float | None  # when the current state began (epoch seconds)
    error: str | None  # the last failure, while degraded
    rounds: int
    failures: int
    pending: int  # keys changed locally and not yet written

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``/readyz`` detail)."""
        return {
            "state": self.state,
            "degraded": self.degraded,
            "view_age_s": None if self.age is None else round(self.age, 3),
            "error": self.error,
            "pending": self.pending,
        }


class SharedState:
    """When a replica meets Redis and what the outcome means: the rounds in the background, the
    view's health (starting, shared, degraded), backing off after a failure.

    Each round's traffic is :class:`~aidr_gate.patterns.exchange.Exchange`'s."""

    def __init__(
        self,
        tracker: PatternTracker,
        settings: RedisSettings,
        *,
        replica: str | None = None,
        clock: Callable[[], float] = time.time,
        client: Any = None,
    ) -> None:
        self.tracker = tracker
        self.settings = settings
        self.replica = replica or f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self.dirty: set[Key] = set()
        self.exchange = Exchange(tracker, settings, self.replica, self._alive)
        self._clock = clock
        self._client = client
        self._task: asyncio.Task[None] | None = None
        self._state = "starting"
        self._since: float | None = None
        self._synced_at: float | None = None
        self._error: str | None = None
        self.rounds = 0
        self.failures = 0
        tracker.shared = self

    def pace(self, settings: RedisSettings) -> None:
        """Take a reload's pace (interval, stale_after, watch, max_batch); the connection (url,
        prefix, timeout) stays as it started (restart-only)."""
        self.settings = replace(
            settings,
            url=self.settings.url,
            prefix=self.settings.prefix,
            timeout=self.settings.timeout,
        )
        self.exchange.settings = self.settings

    # -- state -------------------------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        """True when the last round failed, or none succeeded within ``stale_after`` seconds."""
        synced = self._synced_at
        return (
            self._state == "degraded"
            or synced is None
            or self._clock() - synced > self.settings.stale_after
        )

    def health(self) -> SharedHealth:
        """The view's state now."""
        synced = self._synced_at
        now = self._clock()
        degraded = self.degraded
        state = "starting" if synced is None and self._error is None else self._state
        if degraded and state == "shared":
            state = "degraded"  # stale without a failure yet: a round trip that hangs
        return SharedHealth(
            state=state,
            degraded=degraded,
            age=None if synced is None else now - synced,
            since=self._since,
            error=self._error if degraded else None,
            rounds=self.rounds,
            failures=self.failures,
            pending=len(self.dirty),
        )

    def _enter(self, state: str, error: str | None = None) -> None:
        if state != self._state:
            self._since = self._clock()
            if state == "degraded":
                logger.warning(
                    "patterns: Redis %s unreachable (%s); signals count this replica only",
                    _safe_url(self.settings.url),
                    error,
                )
            elif self._state == "degraded":
                logger.info("patterns: Redis reachable again; the fleet's view is back")
        self._state = state
        self._error = error

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and make one round (a failure only degrades), then keep going in the background."""
        if self._client is None:
            import redis.asyncio as redis_asyncio

            self._client = redis_asyncio.from_url(
                self.settings.url,
                socket_timeout=self.settings.timeout,
                socket_connect_timeout=self.settings.timeout,
                decode_responses=True,
                health_check_interval=0,
                retry_on_timeout=False,
            )
        self.exchange.connect(self._client)
        await self.round()
        self._task = asyncio.create_task(self._run(), name="aidr-patterns-redis")

    async def close(self) -> None:
        """Stop the background task, write what is pending (best effort) and disconnect."""
        task, self._task = self._task, None
        await stop_task(task)  # a cancel redis-py's writes swallow on 3.11 is sent again
        if self._client is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.settings.timeout * 2):
                    await self.round()
            with contextlib.suppress(Exception):
                await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        delay = self.settings.interval
        while True:
            await asyncio.sleep(delay)
            ok = await self.round()
            # After a failure, retry at a slower pace (up to two seconds), never give up.
            delay = self.settings.interval if ok else min(max(delay * 2, 0.1), MAX_BACKOFF)

    # -- one round -------------------------------------------------------------------------------

    async def round(self) -> bool:
        """Write the changed keys and refresh the view; False (and degraded) when Redis fails."""
        now = self._clock()
        changed, self.dirty = self.dirty, set()
        try:
            # Each call has its own timeout (a server gone or hung fails the round at once); this
            # bound is a safety net only: a busy, healthy round may take long.
            async with asyncio.timeout(ROUND_LIMIT):
                await self.exchange.run(now, changed)
        except Exception as exc:  # any Redis failure only degrades; the next round retries
            if len(self.dirty) < self.tracker.settings.max_keys:
                self.dirty |= changed
            self.failures += 1
            self._enter("degraded", f"{type(exc).__name__}: {exc}"[:200])
            return False
        self.exchange.flushed_at = now
        self._synced_at = self._clock()
        self.rounds += 1
        self._enter("shared")
        return True

    def _alive(self) -> None:
        # A call answered while the round goes on: the view is being refreshed, not stale.
        if self._state == "shared":
            self._synced_at = self._clock()


def _safe_url(url: str) -> str:
    """The URL without its password (for logs)."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
