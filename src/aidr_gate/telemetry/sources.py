"""The observed metrics: values read from the running gate's objects when metrics are collected.

Nothing here runs per request. Each source takes a getter rather than the object itself, so a
reload that replaces the audit trail, the key provider or the GeoIP resolver is followed at the
next collection without re-wiring.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Protocol

from aidr_gate.telemetry.store import Labels
from aidr_gate.telemetry.table import REGISTRY_STATES

if TYPE_CHECKING:
    from aidr_gate.audit.trail import AuditTrail
    from aidr_gate.patterns.tracker import PatternTracker
    from aidr_gate.request.geo import CountryResolver
    from aidr_gate.request.jwks import KeyProvider
    from aidr_gate.request.keys import KeySet
    from aidr_gate.stores.cache import RegistryView

logger = logging.getLogger("aidr_gate.telemetry")

# (metric name, label values, value)
Sample = tuple[str, Labels, float]


class Source(Protocol):
    """Something that yields samples of observed metrics when asked."""

    def samples(self) -> Iterator[Sample]:
        """The values now."""
        ...


class AuditSource:
    """The audit trail's counters, from :meth:`AuditTrail.stats`."""

    def __init__(self, trail: Callable[[], AuditTrail | None]) -> None:
        self._trail = trail

    def samples(self) -> Iterator[Sample]:
        """Queue depth, accepting, written; per sink delivered, spooled, lost and spool bytes."""
        trail = self._trail()
        if trail is None:
            return
        stats = trail.stats()
        yield "aidr_gate.audit.queue.depth", (), stats.pending
        yield "aidr_gate.audit.accepting", (), 1.0 if stats.accepting else 0.0
        yield "aidr_gate.audit.records.written", (), stats.written
        for sink in stats.sinks:
            labels = (sink.name, sink.kind)
            yield "aidr_gate.audit.records.delivered", labels, sink.delivered
            yield "aidr_gate.audit.records.spooled", labels, sink.spooled
            yield "aidr_gate.audit.records.lost", labels, sink.lost
            yield "aidr_gate.audit.spool.size", labels, sink.spool_bytes


class KeySource:
    """Key set loads and freshness, counted through the provider's swap listener.

    Every good load (a JWKS fetch, a key file read) installs a set and calls the listeners; failed
    JWKS fetches are the provider's ``failures`` counter. A set already loaded when watching begins
    (or when a reload brings a new provider) counts as installed then.
    """

    def __init__(
        self,
        keys: Callable[[], KeyProvider | None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = keys
        self._clock = clock
        self._provider: KeyProvider | None = None
        self._installs = 0
        self._installed_at: float | None = None
        self._since = clock()
        self._follow()

    def _follow(self) -> KeyProvider | None:
        provider = self._keys()
        if provider is not self._provider:
            self._provider = provider
            self._since = self._clock()
            self._installed_at = None
            if provider is not None:
                provider.add_listener(self._installed)
                if provider.current is not None:
                    self._installed_at = self._since
        return provider

    def _installed(self, old: KeySet | None, new: KeySet) -> None:
        self._installs += 1
        self._installed_at = self._clock()

    def samples(self) -> Iterator[Sample]:
        """Loads by result, the age of the set in force, and how many keys it holds."""
        provider = self._follow()
        if provider is None:
            return
        kind = (key_source(provider),)
        yield "aidr_gate.keys.fetches", (*kind, "ok"), self._installs
        yield "aidr_gate.keys.fetches", (*kind, "failed"), getattr(provider, "failures", 0)
        since = self._installed_at if self._installed_at is not None else self._since
        yield "aidr_gate.keys.age", kind, max(0.0, self._clock() - since)
        current = provider.current
        yield "aidr_gate.keys.loaded", kind, len(current) if current is not None else 0


def key_source(provider: KeyProvider) -> str:
    """``jwks`` for a fetched key set, ``file`` for a key file, ``static`` for keys in memory."""
    from aidr_gate.request.jwks import FileKeys, RemoteJwks

    if isinstance(provider, RemoteJwks):
        return "jwks"
    return "file" if isinstance(provider, FileKeys) else "static"


class GeoSource:
    """The build age of the GeoIP databases in use (MaxMind files; the embedded data has none)."""

    def __init__(
        self,
        geo: Callable[[], CountryResolver | None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._geo = geo
        self._clock = clock

    def samples(self) -> Iterator[Sample]:
        """One age per role, through any override table in front of the database."""
        resolver: object = self._geo()
        while resolver is not None and not hasattr(resolver, "country_info"):
            resolver = getattr(resolver, "inner", None)  # OverrideCountryResolver wraps one
        if resolver is None:
            return
        now = self._clock()
        for role, attribute in (("country", "country_info"), ("anonymous_ip", "anonymous_ip_info")):
            info = getattr(resolver, attribute, None)
            if info is not None:
                yield "aidr_gate.geoip.build.age", (role,), max(0.0, now - info.build_epoch)


class RegistrySource:
    """The entity registry's state, staleness and cache counters, from its view's ``health()``."""

    def __init__(self, view: Callable[[], RegistryView | None]) -> None:
        self._view = view

    def samples(self) -> Iterator[Sample]:
        """One series per state (1 for the current one), staleness, entries, lookups, errors."""
        view = self._view()
        if view is None:
            return
        health = view.health()
        for state in REGISTRY_STATES:
            value = 1.0 if health.state == state else 0.0
            yield "aidr_gate.registry.state", (health.kind, state), value
        yield "aidr_gate.registry.staleness", (), health.stale_for or 0.0
        yield "aidr_gate.registry.entries", (), health.entries
        yield "aidr_gate.registry.lookups", ("hit",), health.hits
        yield "aidr_gate.registry.lookups", ("miss",), health.misses
        yield "aidr_gate.registry.fetch.errors", (), health.fetch_errors


class PatternSource:
    """The pattern tracker's table sizes and, when shared, the view's state and failures."""

    def __init__(self, tracker: Callable[[], PatternTracker | None]) -> None:
        self._tracker = tracker

    def samples(self) -> Iterator[Sample]:
        """Keys per table; shared (1/0) and failed rounds when a fleet view is configured."""
        tracker = self._tracker()
        if tracker is None:
            return
        for table, size in tracker.sizes().items():
            yield "aidr_gate.patterns.keys", (table,), size
        shared = tracker.shared
        if shared is not None:
            health = shared.health()
            yield "aidr_gate.patterns.shared", (), 0.0 if health.degraded else 1.0
            yield "aidr_gate.patterns.sync.failures", (), health.failures


class ReadinessSource:
    """The readiness checks: each one's result, and whether all pass."""

    def __init__(self, checks: Callable[[], Mapping[str, bool]]) -> None:
        self._checks = checks

    def samples(self) -> Iterator[Sample]:
        """``aidr_gate.ready`` and one ``aidr_gate.readiness.check`` per check."""
        checks = self._checks()
        for name, passed in checks.items():
            yield "aidr_gate.readiness.check", (name,), 1.0 if passed else 0.0
        yield "aidr_gate.ready", (), 1.0 if checks and all(checks.values()) else 0.0


def read_sources(sources: Mapping[str, Source]) -> dict[str, list[tuple[Labels, float]]]:
    """Every source's samples by metric name; a source that fails is logged and skipped, so a
    broken reader never breaks a scrape."""
    out: dict[str, list[tuple[Labels, float]]] = {}
    for kind, source in list(sources.items()):
        try:
            for name, labels, value in source.samples():
                out.setdefault(name, []).append((labels, float(value)))
        except Exception as exc:  # collection must go on without this source
            logger.warning("telemetry: reading %s failed (%s)", kind, type(exc).__name__)
    return out
