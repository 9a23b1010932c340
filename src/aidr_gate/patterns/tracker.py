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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any, Generic, Protocol, TypeVar

from aidr_gate.facts import Identity, Origin
from aidr_gate.patterns.settings import PatternSettings, RedisSettings
from aidr_gate.patterns.signals import DEGRADED_KEY, Measure, SignalKey, Subject, parse_signal_key
from aidr_gate.patterns.sketches import RecentSet, Shares


class SharedHealthView(Protocol):
    """What the tracker and the metrics read of the shared view's health."""

    @property
    def state(self) -> str: ...
    @property
    def degraded(self) -> bool: ...
    @property
    def failures(self) -> int: ...
    def to_dict(self) -> dict[str, Any]: ...


class Sharing(Protocol):
    """A fleet's shared view as the tracker sees it (``shared.SharedState``, which imports this
    module: a protocol here keeps the two free of an import cycle)."""

    dirty: set[tuple[str, str]]

    @property
    def degraded(self) -> bool: ...
    def health(self) -> SharedHealthView: ...
    def pace(self, settings: RedisSettings) -> None: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...


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


# One request's keys: token (entity and subject), entity, client address, network prefix.
Keys = tuple[str | None, str, str | None, str | None]
# One request's rows: token, entity, address and network sets, then token and entity shares
# (``None`` where the request has no such key, or the row is not tracked).
Rows = list[RecentSet | Shares | None]
# A signal computed from one request's rows: (at, rows) -> value.
Compute = Callable[[float, Rows], float]
_SET_SLOT = {Subject.TOKEN: 0, Subject.ENTITY: 1, Subject.ADDRESS: 2, Subject.NETWORK: 3}
_SHARE_SLOT = {Subject.TOKEN: 4, Subject.ENTITY: 5}
NETWORK_CACHE = 65_536  # client addresses whose prefix is remembered


def network_of(ip: str, v4: int, v6: int) -> str | None:
    """The prefix a client address belongs to (``203.0.113.0/24``); ``None`` for no address."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    bits = v4 if address.version == 4 else v6
    return str(ipaddress.ip_network(f"{address}/{bits}", strict=False))


def _counter(slot: int, seconds: float) -> Compute:
    def count(at: float, rows: Rows) -> float:
        row = rows[slot]
        return row.count(at - seconds) if row is not None else 0  # type: ignore[union-attr]

    return count


def _sharer(slot: int, window: int, which: int, tau: float) -> Compute:
    def share(at: float, rows: Rows) -> float:
        row = rows[slot]
        return row.share(window, which, at, tau) if row is not None else 0.0  # type: ignore[union-attr]

    return share


class PatternTracker:
    """Bounded signal state and the signals of each request (see the module docstring)."""

    def __init__(
        self, settings: PatternSettings | None = None, *, wanted: Iterable[str] = ()
    ) -> None:
        self.settings = settings or PatternSettings()
        limit = self.settings.max_keys
        self.capacity = self.settings.max_distinct
        self.shared: Sharing | None = None
        self.observed = 0
        self._pack_keys: tuple[str, ...] = ()
        self.windows: tuple[float, ...] = ()
        self.share_windows: tuple[float, ...] = ()  # the windows of share signals only
        self.horizon = 0.0
        self._computes: tuple[tuple[str, Compute], ...] = ()
        self.subjects: frozenset[str] = frozenset()
        self._token_sets = self._token_shares = self._entity_sets = self._entity_shares = False
        self._addresses = self._networks = False
        self._degraded_wanted = False
        self._prefixes: dict[str, str | None] = {}
        # One table per subject and kind of sketch; ``spare`` is filled in by ``want``.
        self.token_sets: Table[RecentSet] = Table(limit, 0.0)
        self.entity_sets: Table[RecentSet] = Table(limit, 0.0)
        self.address_sets: Table[RecentSet] = Table(limit, 0.0)
        self.network_sets: Table[RecentSet] = Table(limit, 0.0)
        self.token_shares: Table[Shares] = Table(limit, 0.0)
        self.entity_shares: Table[Shares] = Table(limit, 0.0)
        self.want(wanted)

    # -- what is tracked --------------------------------------------------------------------------

    def want(self, pack_keys: Iterable[str], *, settings: PatternSettings | None = None) -> None:
        """Track the signals a (new) pack tests, besides those the settings record.

        *settings*: a reload's ``patterns:`` section. What it records (``windows``, ``record``)
        and the exchange's pace apply now; the state's shape (``max_keys``, ``max_distinct``, the
        prefixes) and the Redis connection stay as they were built (restart-only: the loader kept
        their running values, and the tables are sized by them).
        """
        if settings is not None:
            self.settings = replace(self.settings, windows=settings.windows, record=settings.record)
            shared = self.shared
            if shared is not None and settings.redis is not None:
                shared.pace(settings.redis)
        self._pack_keys = tuple(dict.fromkeys(pack_keys))
        keys: list[SignalKey] = []
        for name in (*self._pack_keys, *self.settings.recorded):
            parsed = parse_signal_key(name)
            if parsed is not None and parsed not in keys:
                keys.append(parsed)
        windows = tuple(sorted({k.seconds for k in keys}))
        share_windows = tuple(
            sorted(
                {
                    k.seconds
                    for k in keys
                    if k.family.measure in (Measure.ANONYMIZER_SHARE, Measure.WORSE_SHARE)
                }
            )
        )
        if share_windows != self.share_windows:
            # Shares keep one slot per window: a new layout starts their counts afresh.
            self.token_shares.rows.clear()
            self.entity_shares.rows.clear()
        self.windows = windows
        self.share_windows = share_windows
        self.horizon = windows[-1] if windows else 0.0
        shortest = windows[0] if windows else 0.0
        for table in self.tables():
            table.spare = shortest
        computes: list[tuple[str, Compute]] = []
        wanted: set[tuple[str, bool]] = set()  # (subject, counts distinct items)
        for k in keys:
            subject, measure = k.family.subject, k.family.measure
            if measure in (Measure.COUNTRIES, Measure.ENTITIES):
                computes.append((k.name, _counter(_SET_SLOT[subject], k.seconds)))
                wanted.add((subject, True))
            else:
                which = 1 if measure == Measure.ANONYMIZER_SHARE else 2
                slot = share_windows.index(k.seconds)
                computes.append((k.name, _sharer(_SHARE_SLOT[subject], slot, which, k.seconds)))
                wanted.add((subject, False))
        self._computes = tuple(computes)
        self.subjects = frozenset(subject for subject, _ in wanted)
        self._token_sets = (Subject.TOKEN, True) in wanted
        self._token_shares = (Subject.TOKEN, False) in wanted
        self._entity_sets = (Subject.ENTITY, True) in wanted
        self._entity_shares = (Subject.ENTITY, False) in wanted
        self._addresses = Subject.ADDRESS in self.subjects
        self._networks = Subject.NETWORK in self.subjects
        self._degraded_wanted = DEGRADED_KEY in self._pack_keys
        self.needs_worse = any(k.family.measure == Measure.WORSE_SHARE for k in keys)

    @property
    def active(self) -> bool:
        """True when some signal is tracked (else observing costs nothing)."""
        return bool(self._computes) or self._reports_degraded

    @property
    def names(self) -> tuple[str, ...]:
        """The signals each decision carries, in order."""
        out = tuple(name for name, _ in self._computes)
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

    def tracks_sets(self, subject: str) -> bool:
        """True when distinct items are counted for *subject* (a :class:`Subject`)."""
        if subject == Subject.TOKEN:
            return self._token_sets
        if subject == Subject.ENTITY:
            return self._entity_sets
        return self._addresses if subject == Subject.ADDRESS else self._networks

    def tracks_shares(self, subject: str) -> bool:
        """True when request shares are counted for *subject*."""
        if subject == Subject.TOKEN:
            return self._token_shares
        return self._entity_shares if subject == Subject.ENTITY else False

    @property
    def degraded(self) -> bool:
        """True when the fleet's view is configured but lost: signals count this replica only."""
        shared = self.shared
        return shared is not None and shared.degraded

    def keys_for(self, identity: Identity, origin: Origin) -> Keys:
        """The token, entity, address and network keys of one request."""
        entity = identity.entity_id
        subject = identity.subject
        ip = origin.ip
        network = None
        if ip is not None and self._networks:
            prefixes = self._prefixes
            if ip in prefixes:
                network = prefixes[ip]
            else:
                if len(prefixes) >= NETWORK_CACHE:
                    prefixes.clear()
                settings = self.settings
                network = prefixes[ip] = network_of(ip, settings.ipv4_prefix, settings.ipv6_prefix)
        return (
            entity + "\x1f" + subject if subject is not None else None,
            entity,
            ip,
            network,
        )

    # -- per request ------------------------------------------------------------------------------

    def observe(self, at: float, identity: Identity | None, origin: Origin, worse: bool) -> Signals:
        """Count one request, then give the signals wanted (the request itself included)."""
        if identity is None:
            return self._blank()
        keys = self.keys_for(identity, origin)
        rows = self._count(at, keys, origin.country, bool(origin.anonymizer), worse)
        return self._compute(at, rows)

    def signals(self, at: float, identity: Identity | None, origin: Origin) -> Signals:
        """The signals wanted for a request like this one, without counting it."""
        if identity is None:
            return self._blank()
        token, entity, ip, network = self.keys_for(identity, origin)
        rows: Rows = [
            self.token_sets.rows.get(token) if token is not None else None,
            self.entity_sets.rows.get(entity),
            self.address_sets.rows.get(ip) if ip is not None else None,
            self.network_sets.rows.get(network) if network is not None else None,
            self.token_shares.rows.get(token) if token is not None else None,
            self.entity_shares.rows.get(entity),
        ]
        return self._compute(at, rows)

    def _blank(self) -> dict[str, float]:
        out = {name: 0.0 for name, _ in self._computes}
        if self._reports_degraded:
            out[DEGRADED_KEY] = 1.0 if self.degraded else 0.0
        return out

    def _compute(self, at: float, rows: Rows) -> dict[str, float]:
        out = {name: compute(at, rows) for name, compute in self._computes}
        if self._degraded_wanted or self.shared is not None:
            out[DEGRADED_KEY] = 1.0 if self.degraded else 0.0
        return out

    def _count(
        self, at: float, keys: Keys, country: str | None, anonymous: bool, worse: bool
    ) -> Rows:
        """Count one request in every tracked row; the rows it touched (for its signals)."""
        token, entity, ip, network = keys
        capacity, horizon = self.capacity, self.horizon
        shared = self.shared
        dirty = shared.dirty if shared is not None else None
        rows: Rows = [None, None, None, None, None, None]
        self.observed += 1
        if token is not None:
            if self._token_sets:
                rows[0] = (
                    _add(self.token_sets, token, country, at, capacity, horizon)
                    if country is not None
                    else self.token_sets.rows.get(token)
                )
            if self._token_shares:
                rows[4] = self._share(self.token_shares, token, at, anonymous, worse)
            if dirty is not None and (self._token_sets or self._token_shares):
                dirty.add((Subject.TOKEN, token))
        if self._entity_sets or self._entity_shares:
            if self._entity_sets:
                rows[1] = (
                    _add(self.entity_sets, entity, country, at, capacity, horizon)
                    if country is not None
                    else self.entity_sets.rows.get(entity)
                )
            if self._entity_shares:
                rows[5] = self._share(self.entity_shares, entity, at, anonymous, worse)
            if dirty is not None:
                dirty.add((Subject.ENTITY, entity))
        if ip is not None and self._addresses:
            rows[2] = _add(self.address_sets, ip, entity, at, capacity, horizon)
            if dirty is not None:
                dirty.add((Subject.ADDRESS, ip))
        if network is not None:
            rows[3] = _add(self.network_sets, network, entity, at, capacity, horizon)
            if dirty is not None:
                dirty.add((Subject.NETWORK, network))
        return rows

    def _share(
        self, table: Table[Shares], key: str, at: float, anonymous: bool, worse: bool
    ) -> Shares:
        row = table.rows.get(key)
        if row is None:
            if len(table.rows) >= table.limit:
                table.make_room(at)
            row = table.rows[key] = Shares(len(self.share_windows))
        row.add(at, anonymous, worse, self.share_windows)
        return row

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


def _add(
    table: Table[RecentSet], key: str, item: str, at: float, capacity: int, horizon: float
) -> RecentSet:
    row = table.rows.get(key)
    if row is None:
        if len(table.rows) >= table.limit:
            table.make_room(at)
        row = table.rows[key] = RecentSet()
    row.add(item, at, capacity, horizon)
    return row
