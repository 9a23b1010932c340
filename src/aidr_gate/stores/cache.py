"""The gate's view of a registry store: a bounded in-process cache the request path reads without I/O.

The request path calls :meth:`EntityCache.lookup` (sync: a dict read) and, only on :data:`MISS`,
``await fetch(id)``, which asks the store without blocking the loop; concurrent misses for one entity
share one read, unknown entities are remembered briefly. The store's change feed invalidates entries
(and tells listeners, so admitted streams can be cut); while the feed is lost, cached entries serve
until ``max_staleness`` after the last confirmed sync, then every lookup answers
:data:`UNAVAILABLE` (the gate denies with ``REGISTRY_UNAVAILABLE``) until the store is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Final, Literal, Protocol

from aidr_gate.errors import AidrGateError
from aidr_gate.registry import Entity
from aidr_gate.stores.base import RegistryChange, RegistryStore
from aidr_gate.tasks import stop_task

log = logging.getLogger("aidr_gate.registry")


class Absent(Enum):
    """Why a lookup has no answer yet."""

    MISS = "miss"  # not cached: ``await fetch(id)``
    UNAVAILABLE = "unavailable"  # the store is lost past max_staleness (or the read failed)


MISS: Final = Absent.MISS
UNAVAILABLE: Final = Absent.UNAVAILABLE
Unavailable = Literal[Absent.UNAVAILABLE]
ChangeListener = Callable[[RegistryChange], None]


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """Bounds and timings of an :class:`EntityCache`."""

    max_entries: int = 100_000
    max_negative: int = 10_000  # unknown ids remembered: a flood of them cannot evict entities
    negative_ttl: float = 5.0
    max_staleness: float = 60.0
    max_inflight: int = 1024  # distinct entities being read at once; more answer UNAVAILABLE
    feed_timeout: float = 5.0  # a feed silent this long (no heartbeat) is lost
    retry_min: float = 0.1
    retry_max: float = 2.0


@dataclass(frozen=True, slots=True)
class RegistryHealth:
    """What ``/readyz`` and metrics say of the registry."""

    state: str  # "starting", "ready", "stale" (serving cached data), "unavailable"
    kind: str
    source: str
    revision: str | None
    stale_for: float | None  # seconds since the last confirmed sync, while the feed is lost
    entries: int
    negatives: int
    hits: int
    misses: int
    fetch_errors: int
    last_error: str | None

    @property
    def ready(self) -> bool:
        """True while lookups are answered (fresh, or stale within max_staleness)."""
        return self.state in ("ready", "stale")


class RegistryView(Protocol):
    """What the request path and the runtime use: :class:`EntityCache` or :class:`SnapshotView`."""

    def lookup(self, entity_id: str) -> Entity | Absent | None:
        """The cached answer: an entity, ``None`` (no such entity), MISS or UNAVAILABLE."""
        ...

    async def fetch(self, entity_id: str) -> Entity | Unavailable | None:
        """The answer after reading the store if needed."""
        ...

    def on_change(self, listener: ChangeListener) -> Callable[[], None]:
        """Call *listener* after each change is applied; returns the unsubscribe function."""
        ...

    def health(self) -> RegistryHealth:
        """The current state, for readiness and metrics."""
        ...

    @property
    def revision(self) -> str | None:
        """The store revision the cached data reflects (for audit records)."""
        ...

    async def start(self) -> None:
        """Open the store and follow its changes."""
        ...

    async def close(self) -> None:
        """Stop following changes and close the store."""
        ...


class _Feed:
    """Follows a store's change feed in a task: reconnects with backoff, reports to *apply*/*lost*."""

    def __init__(self, store: RegistryStore, settings: CacheSettings) -> None:
        self.store = store
        self.settings = settings
        self.opened = False
        self.revision: str | None = None
        self.task: asyncio.Task[None] | None = None

    async def run(
        self, apply: Callable[[RegistryChange], None], lost: Callable[[BaseException], None]
    ) -> None:
        delay = self.settings.retry_min
        while True:
            try:
                if not self.opened:
                    await self.store.open()
                    self.opened = True
                if self.revision is None:
                    self.revision = await self.store.revision()
                    apply(RegistryChange(self.revision, frozenset()))
                feed = self.store.watch(self.revision)
                try:
                    while True:
                        async with asyncio.timeout(self.settings.feed_timeout):
                            change = await anext(feed)
                        self.revision = change.revision
                        apply(change)
                        delay = self.settings.retry_min
                finally:
                    await feed.aclose()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of the store or its driver: lost, retried
                lost(exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.retry_max)


class EntityCache:
    """A bounded LRU cache of entities in front of a database store; see the module docstring."""

    def __init__(
        self,
        store: RegistryStore,
        settings: CacheSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._settings = settings or CacheSettings()
        self._clock = clock
        self._entries: OrderedDict[str, Entity] = OrderedDict()
        self._negative: dict[str, float] = {}  # id -> monotonic expiry
        self._inflight: dict[str, asyncio.Task[Entity | Unavailable | None]] = {}
        self._dirty: set[str] = set()  # changed while being read: the read is not cached
        self._listeners: list[ChangeListener] = []
        self._feed = _Feed(store, self._settings)
        self._available = False  # lookups answer (fresh, or stale within max_staleness)
        self._feed_up = False
        self._synced_at: float | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._hits = self._misses = self._fetch_errors = 0
        self._last_error: str | None = None
        self._synced = asyncio.Event()

    # -- the request path ---------------------------------------------------------------------

    def lookup(self, entity_id: str) -> Entity | Absent | None:
        """The cached answer, without I/O: an entity, ``None``, MISS or UNAVAILABLE."""
        if not self._available:
            return UNAVAILABLE
        entries = self._entries
        entity = entries.get(entity_id)
        if entity is not None:
            entries.move_to_end(entity_id)
            self._hits += 1
            return entity
        expiry = self._negative.get(entity_id)
        if expiry is not None:
            if expiry > self._clock():
                self._hits += 1
                return None
            del self._negative[entity_id]
        return MISS

    async def fetch(self, entity_id: str) -> Entity | Unavailable | None:
        """The answer, reading the store on a miss; concurrent misses for one id share a read."""
        found = self.lookup(entity_id)
        if found is not MISS:
            return found
        task = self._inflight.get(entity_id)
        if task is None:
            if len(self._inflight) >= self._settings.max_inflight:
                return UNAVAILABLE
            task = asyncio.ensure_future(self._read(entity_id))
            self._inflight[entity_id] = task
            task.add_done_callback(lambda done: self._read_done(entity_id, done))
        # A waiter that is cancelled (its client left) must not cancel the others' read.
        return await asyncio.shield(task)

    def _read_done(self, entity_id: str, task: asyncio.Task[Entity | Unavailable | None]) -> None:
        if self._inflight.get(entity_id) is task:
            del self._inflight[entity_id]
        self._dirty.discard(entity_id)

    async def _read(self, entity_id: str) -> Entity | Unavailable | None:
        self._misses += 1
        try:
            entity = await self._store.get(entity_id)
        except AidrGateError as exc:
            self._fetch_errors += 1
            self._last_error = exc.message
            return UNAVAILABLE
        if entity_id in self._dirty:  # changed while read: answer it, but do not keep it
            return entity
        if entity is None:
            negative = self._negative
            if len(negative) >= self._settings.max_negative:
                del negative[next(iter(negative))]
            negative[entity_id] = self._clock() + self._settings.negative_ttl
        else:
            self._entries[entity_id] = entity
            if len(self._entries) > self._settings.max_entries:
                self._entries.popitem(last=False)
        return entity

    # -- changes ------------------------------------------------------------------------------

    def on_change(self, listener: ChangeListener) -> Callable[[], None]:
        """Call *listener* after each change is applied (entries already invalidated)."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _apply(self, change: RegistryChange) -> None:
        ids = change.entity_ids
        if ids is None:
            self._entries.clear()
            self._negative.clear()
            self._dirty.update(self._inflight)
        else:
            for entity_id in ids:
                self._entries.pop(entity_id, None)
                self._negative.pop(entity_id, None)
                if entity_id in self._inflight:
                    self._dirty.add(entity_id)
        self._synced_at = self._clock()
        if not self._feed_up:
            if self._last_error is not None:
                log.warning(
                    "registry %s is back at revision %s", self._store.source, change.revision
                )
            self._feed_up = True
        self._available = True
        self._synced.set()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if ids is None or ids:
            for listener in list(self._listeners):
                try:
                    listener(change)
                except Exception:  # one broken listener must not stop the others or the feed
                    log.exception("registry change listener failed")

    def _lost(self, exc: BaseException) -> None:
        message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        if self._feed_up or self._last_error != message:
            log.warning("registry %s lost: %s", self._store.source, message)
        self._feed_up = False
        self._last_error = message
        if self._synced_at is None or not self._available or self._expiry is not None:
            return
        # Serve what is cached until max_staleness after the last confirmed sync, then refuse.
        remaining = self._synced_at + self._settings.max_staleness - self._clock()
        if remaining <= 0:
            self._expire()
        else:
            self._expiry = asyncio.get_running_loop().call_later(remaining, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        if not self._feed_up:
            self._available = False
            log.error(
                "registry %s unavailable for more than %ss: entities are refused",
                self._store.source,
                self._settings.max_staleness,
            )

    # -- life cycle and health ----------------------------------------------------------------

    @property
    def revision(self) -> str | None:
        """The store revision the cache reflects."""
        return self._feed.revision

    async def start(self, wait: float = 5.0) -> None:
        """Follow the store; wait up to *wait* seconds for the first sync (a store that is down
        leaves the cache unavailable, retried in the background)."""
        if self._feed.task is None:
            self._feed.task = asyncio.create_task(self._feed.run(self._apply, self._lost))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._synced.wait()

    async def close(self) -> None:
        """Stop following the store and close it."""
        task, self._feed.task = self._feed.task, None
        await stop_task(task)
        if self._expiry is not None:
            self._expiry.cancel()
        for pending in list(self._inflight.values()):
            pending.cancel()
        if self._feed.opened:
            await self._store.close()
        self._available = False

    def health(self) -> RegistryHealth:
        """The cache's state, for readiness and metrics."""
        if self._feed_up:
            state = "ready"
        elif self._available:
            state = "stale"
        else:
            state = "starting" if self._last_error is None else "unavailable"
        stale_for = None
        if not self._feed_up and self._synced_at is not None:
            stale_for = self._clock() - self._synced_at
        return RegistryHealth(
            state=state,
            kind=self._store.kind,
            source=self._store.source,
            revision=self._feed.revision,
            stale_for=stale_for,
            entries=len(self._entries),
            negatives=len(self._negative),
            hits=self._hits,
            misses=self._misses,
            fetch_errors=self._fetch_errors,
            last_error=self._last_error,
        )


class SnapshotView:
    """The view of a store that holds every entity in memory (the file store): a lookup is a dict
    read that never misses; changes swap the snapshot and reach the listeners."""

    def __init__(self, store: RegistryStore, settings: CacheSettings | None = None) -> None:
        self._store = store
        self._feed = _Feed(store, settings or CacheSettings())
        self._entities: Mapping[str, Entity] = {}
        self._listeners: list[ChangeListener] = []
        self._ready = False
        self._last_error: str | None = None
        self._synced = asyncio.Event()

    def lookup(self, entity_id: str) -> Entity | Absent | None:
        """The entity, or ``None``; UNAVAILABLE only before the first load."""
        if not self._ready:
            return UNAVAILABLE
        return self._entities.get(entity_id)

    async def fetch(self, entity_id: str) -> Entity | Unavailable | None:
        """Same as :meth:`lookup`: nothing to read."""
        found = self.lookup(entity_id)
        return None if found is MISS else found

    def on_change(self, listener: ChangeListener) -> Callable[[], None]:
        """Call *listener* after each change of the snapshot."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _apply(self, change: RegistryChange) -> None:
        snapshot = self._store.snapshot
        if snapshot is not None:
            self._entities = snapshot
        self._ready = True
        self._synced.set()
        if change.entity_ids is None or change.entity_ids:
            for listener in list(self._listeners):
                try:
                    listener(change)
                except Exception:
                    log.exception("registry change listener failed")

    def _lost(self, exc: BaseException) -> None:
        self._last_error = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        log.warning("registry %s: %s", self._store.source, self._last_error)

    @property
    def revision(self) -> str | None:
        """The revision of the loaded snapshot."""
        return self._feed.revision

    async def start(self, wait: float = 30.0) -> None:
        """Load the store and follow it; waits for the first load."""
        if self._feed.task is None:
            self._feed.task = asyncio.create_task(self._feed.run(self._apply, self._lost))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._synced.wait()

    async def close(self) -> None:
        """Stop following the store."""
        task, self._feed.task = self._feed.task, None
        await stop_task(task)
        if self._feed.opened:
            await self._store.close()

    def health(self) -> RegistryHealth:
        """Ready once loaded; a reload that fails keeps the last good snapshot."""
        return RegistryHealth(
            state="ready"
            if self._ready
            else "starting"
            if self._last_error is None
            else "unavailable",
            kind=self._store.kind,
            source=self._store.source,
            revision=self._feed.revision,
            stale_for=None,
            entries=len(self._entities),
            negatives=0,
            hits=0,
            misses=0,
            fetch_errors=0,
            last_error=self._last_error,
        )


def registry_view(store: RegistryStore, settings: CacheSettings | None = None) -> RegistryView:
    """The view for *store*: a snapshot for stores held in memory, else a bounded cache."""
    if store.snapshot is not None or store.kind == "file":
        return SnapshotView(store, settings)
    return EntityCache(store, settings)
