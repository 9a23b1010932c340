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
from dataclasses import replace
from typing import Any, Protocol

from aidr_gate.facts import Identity, Origin
from aidr_gate.patterns.reach import Need, capacities
from aidr_gate.patterns.settings import PatternSettings, RedisSettings
from aidr_gate.patterns.signals import DEGRADED_KEY, Measure, SignalKey, Subject, parse_signal_key
from aidr_gate.patterns.sketches import COUNTS, FIRST_AT, MORE, OLDEST, TOUCHED, Row, Shares


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


class Table:
    """Keys to their rows, at most *limit*; the least recently seen are evicted first."""

    __slots__ = ("evicted", "limit", "rows", "spare")

    def __init__(self, limit: int, spare: float) -> None:
        self.rows: dict[str, Row] = {}
        self.limit = limit
        self.spare = spare  # a key seen within this many seconds gets a second chance
        self.evicted = 0

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, key: str, at: float) -> Row:
        """A new, empty row for *key* (evicting first when the table is full)."""
        if len(self.rows) >= self.limit:
            self.make_room(at)
        row = self.rows[key] = Row()
        return row

    def merged(
        self, key: str, items: list[tuple[str, float]], capacity: int, horizon: float, now: float
    ) -> None:
        """Take another replica's items of *key* (not empty) into its row, made if need be."""
        row = self.rows.get(key)
        if row is None:
            row = self.add(key, now)
        news = row.news  # what another replica told is no news of this one's
        row.merge(items, capacity, horizon)
        row.news = news

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


NETWORK_CACHE = 65_536  # client addresses whose prefix is remembered
SUBJECTS = (Subject.TOKEN, Subject.ENTITY, Subject.ADDRESS, Subject.NETWORK)
_SHARE_MEASURES = (Measure.ANONYMIZER_SHARE, Measure.WORSE_SHARE)


def network_of(ip: str, v4: int, v6: int) -> str | None:
    """The prefix a client address belongs to (``203.0.113.0/24``); ``None`` for no address."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    bits = v4 if address.version == 4 else v6
    return str(ipaddress.ip_network(f"{address}/{bits}", strict=False))


class Plan:
    """One subject's part of the tracker: its table, and what a request counts and reads in it.

    Built by :meth:`PatternTracker.want`; per request the tracker calls :meth:`count` (or
    :meth:`read`) once per subject it tracks, which does every window of that subject on one row.
    """

    __slots__ = (
        "capacity",
        "counts",
        "horizon",
        "ones",
        "sets",
        "shares",
        "subject",
        "table",
        "taus",
    )

    def __init__(self, subject: str, table: Table) -> None:
        self.subject = subject
        self.table = table
        self.sets = False  # distinct items counted (countries or entities)
        self.taus: tuple[float, ...] = ()  # the windows of the shares counted (time constants)
        self.counts: tuple[tuple[str, float], ...] = ()  # (signal, window) of each count
        self.ones: dict[str, float] = {}  # each count at 1 (a key holding one item, seen now)
        # (signal, index of its window's request count, index of its share's count, window)
        self.shares: tuple[tuple[str, int, int, float], ...] = ()
        self.capacity = 0  # distinct items kept per key
        self.horizon = 0.0  # the longest window of the tracker (what a full key may forget)

    def count(
        self,
        key: str,
        item: str | None,
        at: float,
        anonymous: bool,
        worse: bool,
        out: dict[str, float],
    ) -> None:
        """Count one request in *key*'s row and write this subject's signals into *out*.

        The usual requests (an item the key holds seen again, the shares this replica's alone,
        windows that start before anything the key holds) are done here, without a call per
        window: this runs once per subject and request.
        """
        table = self.table
        row = table.rows.get(key)
        taus = self.taus
        if row is None:
            if item is None and not taus:
                return  # nothing to count and nothing held: the signals stay 0
            row = table.add(key, at)
        if item is not None and self.sets:
            more = row.more
            if item == row.first:
                if at > row[FIRST_AT]:
                    row[FIRST_AT] = at
                if at > row[TOUCHED]:
                    row[TOUCHED] = at
            elif more is not None and (index := more.get(item)) is not None:
                if at > row[index]:
                    row[index] = at
                if at > row[TOUCHED]:
                    row[TOUCHED] = at
            else:
                row.add(item, at, self.capacity, self.horizon)
                more = row.more
            if more is None:  # the only item, seen at *at* or later: inside every window
                out.update(self.ones)
            else:  # windows(), inline: the key's items are all held (first is not None)
                oldest = row[OLDEST]
                held = len(row) - MORE + 1
                for name, seconds in self.counts:
                    since = at - seconds
                    out[name] = held if since < oldest else row.count(since)
        elif self.sets:
            self.windows(row, at, out)
        if taus:
            shares = row.shares
            if shares is None:
                shares = row.shares = Shares(len(taus))
            if at > row[TOUCHED]:
                row[TOUCHED] = at
            shares.note(at, anonymous, worse, taus, self.shares, out)

    def windows(self, row: Row, at: float, out: dict[str, float]) -> None:
        """Write the distinct counts of *row* in each window into *out*."""
        oldest, held = row[OLDEST], row.held()
        for name, seconds in self.counts:
            since = at - seconds
            out[name] = held if since < oldest else row.count(since)

    def read(self, key: str, at: float, out: dict[str, float]) -> None:
        """Write this subject's signals for *key* into *out*, counting nothing."""
        row = self.table.rows.get(key)
        if row is None:
            return
        shares = row.shares
        if shares is not None:
            shares.answer(at, self.shares, out)
        if self.sets:
            self.windows(row, at, out)


class PatternTracker:
    """Bounded signal state and the signals of each request (see the module docstring)."""

    def __init__(
        self,
        settings: PatternSettings | None = None,
        *,
        wanted: Iterable[str] = (),
        needs: Iterable[Need] = (),
    ) -> None:
        self.settings = settings or PatternSettings()
        limit = self.settings.max_keys
        self.capacity = self.settings.max_distinct
        # Subjects whose pack tests need more than ``max_distinct`` items per key: that many.
        self.capacities: dict[str, int] = {}
        self.shared: Sharing | None = None
        self._pack_keys: tuple[str, ...] = ()
        self.windows: tuple[float, ...] = ()
        self.share_windows: tuple[float, ...] = ()  # the windows of share signals only
        self.horizon = 0.0
        self.computed: tuple[str, ...] = ()  # the signals computed, in order
        self.subjects: frozenset[str] = frozenset()
        self.needs_worse = False
        self._degraded_wanted = False
        self._prefixes: dict[str, str | None] = {}
        # One table per subject: a row per key holds all of the key's windows.
        self.tokens: Table = Table(limit, 0.0)
        self.entities: Table = Table(limit, 0.0)
        self.addresses: Table = Table(limit, 0.0)
        self.networks: Table = Table(limit, 0.0)
        self._tables = dict(zip(SUBJECTS, self.tables(), strict=True))
        # The plans of the subjects tracked (``None``: not tracked), and the answers' zeros.
        self._token: Plan | None = None
        self._entity: Plan | None = None
        self._address: Plan | None = None
        self._network: Plan | None = None
        self._plans: dict[str, Plan] = {}
        self._zeros: dict[str, float] = {}
        self.want(wanted, needs=needs)

    # -- what is tracked --------------------------------------------------------------------------

    def want(
        self,
        pack_keys: Iterable[str],
        *,
        settings: PatternSettings | None = None,
        needs: Iterable[Need] = (),
    ) -> None:
        """Track the signals a (new) pack tests, besides those the settings record.

        *needs*: the pack's count tests (:func:`~aidr_gate.patterns.reach.distinct_needs`); a
        subject whose tests need more items than ``max_distinct`` holds that many per key, so
        that no threshold is beyond what its count can reach.

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
            sorted({k.seconds for k in keys if k.family.measure in _SHARE_MEASURES})
        )
        if share_windows != self.share_windows:
            # Shares keep one slot per window: a new layout starts their counts afresh.
            for table in self.tables():
                for row in table.rows.values():
                    row.shares = None
        self.windows = windows
        self.share_windows = share_windows
        self.horizon = windows[-1] if windows else 0.0
        shortest = windows[0] if windows else 0.0
        for table in self.tables():
            table.spare = shortest
        self.capacities = capacities(needs, self.capacity)
        plans, zeros = self._plans_for(keys)
        tracked = {s: p for s, p in plans.items() if p.counts or p.shares}
        self._token = tracked.get(Subject.TOKEN)
        self._entity = tracked.get(Subject.ENTITY)
        self._address = tracked.get(Subject.ADDRESS)
        self._network = tracked.get(Subject.NETWORK)
        self._plans = tracked
        self._zeros = zeros
        self.computed = tuple(zeros)
        self.subjects = frozenset(tracked)
        self._degraded_wanted = DEGRADED_KEY in self._pack_keys
        self.needs_worse = any(k.family.measure == Measure.WORSE_SHARE for k in keys)

    def _plans_for(self, keys: list[SignalKey]) -> tuple[dict[str, Plan], dict[str, float]]:
        """A plan per subject for *keys*, and the answer's zeros (an int for a count, a float
        for a share, as the signals themselves are), in the order of *keys*."""
        plans = {s: Plan(s, self._tables[s]) for s in SUBJECTS}
        counts: dict[str, list[tuple[str, float]]] = {s: [] for s in SUBJECTS}
        shares: dict[str, list[tuple[str, int, int, float]]] = {s: [] for s in SUBJECTS}
        zeros: dict[str, float] = {}
        for k in keys:
            subject, measure = k.family.subject, k.family.measure
            if measure in _SHARE_MEASURES:
                which = 1 if measure == Measure.ANONYMIZER_SHARE else 2
                base = COUNTS + 3 * self.share_windows.index(k.seconds)
                shares[subject].append((k.name, base, base + which, k.seconds))
                zeros[k.name] = 0.0
            else:
                counts[subject].append((k.name, k.seconds))
                zeros[k.name] = 0
        for subject, plan in plans.items():
            plan.counts = tuple(counts[subject])
            plan.ones = dict.fromkeys((name for name, _ in plan.counts), 1)
            plan.shares = tuple(shares[subject])
            plan.sets = bool(plan.counts)
            plan.taus = self.share_windows if plan.shares else ()
            plan.capacity = self.capacity_of(subject)
            plan.horizon = self.horizon
        return plans, zeros

    @property
    def active(self) -> bool:
        """True when some signal is tracked (else observing costs nothing)."""
        return bool(self.computed) or self.reports_degraded

    @property
    def names(self) -> tuple[str, ...]:
        """The signals each decision carries, in order (``patterns_degraded`` last, when
        reported)."""
        return (*self.computed, DEGRADED_KEY) if self.reports_degraded else self.computed

    @property
    def reports_degraded(self) -> bool:
        """Tested by the pack, or a shared view is configured: every record says which it was."""
        return self._degraded_wanted or self.shared is not None

    def capacity_of(self, subject: str) -> int:
        """Distinct items each key of *subject* holds at most."""
        return self.capacities.get(subject, self.capacity)

    def tables(self) -> tuple[Table, ...]:
        """Every table (for sizes and the shared view)."""
        return (self.tokens, self.entities, self.addresses, self.networks)

    def table(self, subject: str) -> Table:
        """The table of *subject* (a :class:`Subject`)."""
        return self._tables[subject]

    def tracks_sets(self, subject: str) -> bool:
        """True when distinct items are counted for *subject* (a :class:`Subject`)."""
        plan = self._plans.get(subject)
        return plan is not None and plan.sets

    def tracks_shares(self, subject: str) -> bool:
        """True when request shares are counted for *subject*."""
        plan = self._plans.get(subject)
        return plan is not None and bool(plan.taus)

    @property
    def degraded(self) -> bool:
        """True when the fleet's view is configured but lost: signals count this replica only."""
        shared = self.shared
        return shared is not None and shared.degraded

    def network_of(self, ip: str) -> str | None:
        """The network prefix of a client address (remembered for the next requests)."""
        prefixes = self._prefixes
        network = prefixes.get(ip, "")
        if network == "":
            if len(prefixes) >= NETWORK_CACHE:
                prefixes.clear()
            settings = self.settings
            network = prefixes[ip] = network_of(ip, settings.ipv4_prefix, settings.ipv6_prefix)
        return network

    # -- per request ------------------------------------------------------------------------------

    def observe(self, at: float, identity: Identity | None, origin: Origin, worse: bool) -> Signals:
        """Count one request, then give the signals wanted (the request itself included)."""
        if identity is None:
            return self._blank()
        out = self._zeros.copy()
        entity = identity.entity_id
        country = origin.country
        anonymous = bool(origin.anonymizer)
        shared = self.shared
        dirty = shared.dirty if shared is not None else None
        plan = self._token
        if plan is not None:
            subject = identity.subject
            if subject is not None:
                key = entity + "\x1f" + subject
                plan.count(key, country, at, anonymous, worse, out)
                if dirty is not None:
                    dirty.add((Subject.TOKEN, key))
        plan = self._entity
        if plan is not None:
            plan.count(entity, country, at, anonymous, worse, out)
            if dirty is not None:
                dirty.add((Subject.ENTITY, entity))
        ip = origin.ip
        if ip is not None:
            plan = self._address
            if plan is not None:
                plan.count(ip, entity, at, anonymous, worse, out)
                if dirty is not None:
                    dirty.add((Subject.ADDRESS, ip))
            plan = self._network
            if plan is not None:
                network = self._prefixes.get(ip, "")  # "": not remembered yet
                if network == "":
                    network = self.network_of(ip)
                if network is not None:
                    plan.count(network, entity, at, anonymous, worse, out)
                    if dirty is not None:
                        dirty.add((Subject.NETWORK, network))
        if shared is not None or self._degraded_wanted:
            out[DEGRADED_KEY] = 1.0 if shared is not None and shared.degraded else 0.0
        return out

    def signals(self, at: float, identity: Identity | None, origin: Origin) -> Signals:
        """The signals wanted for a request like this one, without counting it."""
        if identity is None:
            return self._blank()
        out = self._zeros.copy()
        entity = identity.entity_id
        plan = self._token
        if plan is not None and identity.subject is not None:
            plan.read(entity + "\x1f" + identity.subject, at, out)
        plan = self._entity
        if plan is not None:
            plan.read(entity, at, out)
        ip = origin.ip
        if ip is not None:
            plan = self._address
            if plan is not None:
                plan.read(ip, at, out)
            plan = self._network
            if plan is not None:
                network = self.network_of(ip)
                if network is not None:
                    plan.read(network, at, out)
        if self.reports_degraded:
            out[DEGRADED_KEY] = 1.0 if self.degraded else 0.0
        return out

    def _blank(self) -> dict[str, float]:
        out = dict.fromkeys(self.computed, 0.0)
        if self.reports_degraded:
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
        return {subject: len(table) for subject, table in self._tables.items()}
