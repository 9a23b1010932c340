"""The tracker: observes each decided request and answers the signals its pack and settings name.

One :class:`PatternTracker` per gate, kept across reloads (the counts are about traffic, not about
the pack). Per request it updates one entry per subject it tracks (token, entity, address,
network) and computes the signals wanted: a few dict operations, no I/O. State is bounded twice:
per key (:mod:`~aidr_gate.patterns.sketches`) and per table (``max_keys``; past it the least
recently seen keys are forgotten first).

A fleet shares state through :mod:`~aidr_gate.patterns.shared`: the tracker then notes which keys
changed (a set add), and a background task writes them in batches and merges the fleet's view
back into the same tables; the request path never waits for it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from aidr_gate.facts import Identity, Origin
from aidr_gate.patterns.settings import PatternSettings
from aidr_gate.patterns.signals import DEGRADED_KEY, Measure, SignalKey, Subject, parse_signal_key
from aidr_gate.patterns.sketches import RecentSet, Shares

if TYPE_CHECKING:
    from aidr_gate.patterns.shared import SharedState

Signals = Mapping[str, float]
NO_SIGNALS: Signals = {}
# How many times a recently seen key at the front of a full table is moved back before one is
# evicted anyway: eviction stays O(1) amortised.
_SECOND_CHANCES = 8


class _Touched(Protocol):
    touched: float


V = TypeVar("V", bound=_Touched)


class Table(Generic[V]):
    """Keys to per-key state, at most *limit*; the least recently seen are evicted first."""

    __slots__ = ("evicted", "limit", "rows", "spare")

    def __init__(self, limit: int, spare: float) -> None:
        self.rows: dict[str, V] = {}
        self.limit = limit
        self.spare = spare  # a key seen within this many seconds gets a second chance
        self.evicted = 0

    def __len__(self) -> int:
        return len(self.rows)

    def make_room(self, at: float) -> None:
        """Evict until one more key fits (insertion order, sparing the recently seen a few times)."""
        rows = self.rows
        chances = _SECOND_CHANCES
        while len(rows) >= self.limit:
            key = next(iter(rows))
            row = rows.pop(key)
            if chances and row.touched > at - self.spare:
                chances -= 1
                rows[key] = row  # to the back of the line
                continue
            self.evicted += 1


@dataclass(frozen=True, slots=True)
class _Wanted:
    """One signal to compute per request: its name, what it reads, and its window."""

    name: str
    subject: Subject
    measure: Measure
    seconds: float
    index: int  # the window's position among the tracked windows (Shares' layout)


@lru_cache(maxsize=65_536)
def network_of(ip: str, v4: int, v6: int) -> str | None:
    """The prefix a client address belongs to (``203.0.113.0/24``); ``None`` for no address."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    bits = v4 if address.version == 4 else v6
    return str(ipaddress.ip_network(f"{address}/{bits}", strict=False))


class PatternTracker:
    """Bounded signal state and the signals of each request (see the module docstring)."""

    def __init__(
        self, settings: PatternSettings | None = None, *, wanted: Iterable[str] = ()
    ) -> None:
        self.settings = settings or PatternSettings()
        limit = self.settings.max_keys
        self.capacity = self.settings.max_distinct
        self.shared: SharedState | None = None
        self.observed = 0
        self._pack_keys: tuple[str, ...] = ()
        self.windows: tuple[float, ...] = ()
        self.horizon = 0.0
        self._wanted: tuple[_Wanted, ...] = ()
        self.subjects: frozenset[Subject] = frozenset()
        self._degraded_wanted = False
        # One table per subject and kind of sketch; ``spare`` is filled in by ``want``.
        self.token_sets: Table[RecentSet] = Table(limit, 0.0)
        self.entity_sets: Table[RecentSet] = Table(limit, 0.0)
        self.address_sets: Table[RecentSet] = Table(limit, 0.0)
        self.network_sets: Table[RecentSet] = Table(limit, 0.0)
        self.token_shares: Table[Shares] = Table(limit, 0.0)
        self.entity_shares: Table[Shares] = Table(limit, 0.0)
        self.want(wanted)

    # -- what is tracked --------------------------------------------------------------------------

    def want(self, pack_keys: Iterable[str]) -> None:
        """Track the signals a (new) pack tests, besides those the settings record."""
        self._pack_keys = tuple(dict.fromkeys(pack_keys))
        keys: list[SignalKey] = []
        for name in (*self._pack_keys, *self.settings.recorded):
            parsed = parse_signal_key(name)
            if parsed is not None and parsed not in keys:
                keys.append(parsed)
        windows = tuple(sorted({k.seconds for k in keys}))
        if windows != self.windows:
            # Shares keep one slot per window: a new layout starts their counts afresh.
            self.token_shares.rows.clear()
            self.entity_shares.rows.clear()
        self.windows = windows
        self.horizon = windows[-1] if windows else 0.0
        shortest = windows[0] if windows else 0.0
        for table in self.tables():
            table.spare = shortest
        self._wanted = tuple(
            _Wanted(k.name, k.family.subject, k.family.measure, k.seconds, windows.index(k.seconds))
            for k in keys
        )
        self.subjects = frozenset(k.family.subject for k in keys)
        self._degraded_wanted = DEGRADED_KEY in self._pack_keys

    @property
    def active(self) -> bool:
        """True when some signal is tracked (else observing costs nothing)."""
        return bool(self._wanted) or self._reports_degraded

    @property
    def names(self) -> tuple[str, ...]:
        """The signals each decision carries, in order."""
        out = tuple(w.name for w in self._wanted)
        return (*out, DEGRADED_KEY) if self._reports_degraded else out

    @property
    def _reports_degraded(self) -> bool:
        # Tested by the pack, or a shared view is configured: every record says which it was.
        return self._degraded_wanted or self.shared is not None

    def tables(self) -> tuple[Table[RecentSet] | Table[Shares], ...]:
        """Every table (for sizes and the shared view)."""
        return (
            self.token_sets,
            self.entity_sets,
            self.address_sets,
            self.network_sets,
            self.token_shares,
            self.entity_shares,
        )

    @property
    def degraded(self) -> bool:
        """True when the fleet's view is configured but lost: signals count this replica only."""
        shared = self.shared
        return shared is not None and shared.degraded

    def keys_for(
        self, identity: Identity | None, origin: Origin
    ) -> tuple[str | None, str | None, str | None, str | None]:
        """The token, entity, address and network keys of one request."""
        if identity is None:
            return None, None, None, None
        entity = identity.entity_id
        token = f"{entity}\x1f{identity.subject}" if identity.subject is not None else None
        ip = origin.ip
        network = None
        if ip is not None and Subject.NETWORK in self.subjects:
            network = network_of(ip, self.settings.ipv4_prefix, self.settings.ipv6_prefix)
        return token, entity, ip, network

    # -- per request ------------------------------------------------------------------------------

    def observe(self, at: float, identity: Identity | None, origin: Origin, worse: bool) -> Signals:
        """Count one request, then give the signals wanted (the request itself included)."""
        if not self.active:
            return NO_SIGNALS
        if identity is not None:
            self._count(at, identity, origin, worse)
        return self.signals(at, identity, origin)

    def _count(self, at: float, identity: Identity, origin: Origin, worse: bool) -> None:
        token, _, ip, network = self.keys_for(identity, origin)
        entity = identity.entity_id
        subjects = self.subjects
        country = origin.country
        capacity, horizon = self.capacity, self.horizon
        shared = self.shared
        dirty = shared.dirty if shared is not None else None
        self.observed += 1
        if Subject.TOKEN in subjects and token is not None:
            if country is not None:
                self._set(self.token_sets, token, country, at, capacity, horizon)
            self._share(self.token_shares, token, at, origin, worse)
            if dirty is not None:
                dirty.add((Subject.TOKEN, token))
        if Subject.ENTITY in subjects:
            if country is not None:
                self._set(self.entity_sets, entity, country, at, capacity, horizon)
            self._share(self.entity_shares, entity, at, origin, worse)
            if dirty is not None:
                dirty.add((Subject.ENTITY, entity))
        if ip is not None and Subject.ADDRESS in subjects:
            self._set(self.address_sets, ip, entity, at, capacity, horizon)
            if dirty is not None:
                dirty.add((Subject.ADDRESS, ip))
        if network is not None:
            self._set(self.network_sets, network, entity, at, capacity, horizon)
            if dirty is not None:
                dirty.add((Subject.NETWORK, network))

    @staticmethod
    def _set(
        table: Table[RecentSet], key: str, item: str, at: float, capacity: int, horizon: float
    ) -> None:
        row = table.rows.get(key)
        if row is None:
            if len(table.rows) >= table.limit:
                table.make_room(at)
            row = table.rows[key] = RecentSet()
        row.add(item, at, capacity, horizon)

    def _share(
        self, table: Table[Shares], key: str, at: float, origin: Origin, worse: bool
    ) -> None:
        row = table.rows.get(key)
        if row is None:
            if len(table.rows) >= table.limit:
                table.make_room(at)
            row = table.rows[key] = Shares(len(self.windows))
        row.add(at, bool(origin.anonymizer), worse, self.windows)

    def signals(self, at: float, identity: Identity | None, origin: Origin) -> Signals:
        """The signals wanted for a request like this one, without counting it."""
        out: dict[str, float] = {}
        if not self.active:
            return out
        token, entity, ip, network = self.keys_for(identity, origin)
        for w in self._wanted:
            subject, measure = w.subject, w.measure
            key = (
                token
                if subject is Subject.TOKEN
                else entity
                if subject is Subject.ENTITY
                else ip
                if subject is Subject.ADDRESS
                else network
            )
            value = 0.0
            if key is not None:
                if measure is Measure.COUNTRIES or measure is Measure.ENTITIES:
                    sets = (
                        self.token_sets
                        if subject is Subject.TOKEN
                        else self.entity_sets
                        if subject is Subject.ENTITY
                        else self.address_sets
                        if subject is Subject.ADDRESS
                        else self.network_sets
                    )
                    row = sets.rows.get(key)
                    if row is not None:
                        value = row.count(at - w.seconds)
                else:
                    shares = self.token_shares if subject is Subject.TOKEN else self.entity_shares
                    srow = shares.rows.get(key)
                    if srow is not None:
                        which = 1 if measure is Measure.ANONYMIZER_SHARE else 2
                        value = round(srow.share(w.index, which, at, w.seconds), 4)
            out[w.name] = value
        if self._reports_degraded:
            out[DEGRADED_KEY] = 1.0 if self.degraded else 0.0
        return out

    def health(self) -> dict[str, Any]:
        """What ``/readyz`` says: local, or the shared view's state; and the signals tracked."""
        shared = self.shared
        out: dict[str, Any] = (
            {"state": "local", "degraded": False} if shared is None else shared.health().to_dict()
        )
        out["signals"] = list(self.names)
        return out

    def describe(self) -> str:
        """One line for the startup summary."""
        if not self.active:
            return "none tested"
        where = "local" if self.shared is None else f"shared ({self.shared.health().state})"
        return f"{len(self.names)} signals, {where}"

    def sizes(self) -> dict[str, int]:
        """Keys held per table (metrics, the bench)."""
        names = ("token", "entity", "address", "network", "token_shares", "entity_shares")
        return {name: len(table) for name, table in zip(names, self.tables(), strict=True)}
