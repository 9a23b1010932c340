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

from aidr_gate.bounded import StringPool, store_bounded
from aidr_gate.facts import Identity, Origin
from aidr_gate.patterns.compiled import Observe, build_observe
from aidr_gate.patterns.plans import Plan, Table, token_key
from aidr_gate.patterns.reach import Need, capacities
from aidr_gate.patterns.settings import PatternSettings, RedisSettings
from aidr_gate.patterns.signals import DEGRADED_KEY, Measure, SignalKey, Subject, parse_signal_key
from aidr_gate.patterns.sketches import COUNTS


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


class PatternTracker:
    """Bounded signal state and the signals of each request (see the module docstring).

    ``observe(at, identity, origin, worse)`` counts one request, then gives the signals wanted
    (the request itself included): a function :meth:`want` writes out for the plans
    (:mod:`~aidr_gate.patterns.compiled`), its source in ``observe_source``.
    """

    observe: Observe
    observe_source: str

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
        self.prefixes: dict[str, str | None] = {}  # client address to network (``network_of``)
        self._networks = StringPool(NETWORK_CACHE)
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
        self.observe, self.observe_source = build_observe(
            self, tracked, zeros, DEGRADED_KEY in self._pack_keys
        )
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
        prefixes = self.prefixes
        network = prefixes.get(ip, "")
        if network == "":
            settings = self.settings
            network = network_of(ip, settings.ipv4_prefix, settings.ipv6_prefix)
            if network is not None:  # one object per network: its table finds it by identity
                network = self._networks.one(network)
            store_bounded(prefixes, NETWORK_CACHE, ip, network)
        return network

    # -- per request ------------------------------------------------------------------------------

    def signals(self, at: float, identity: Identity | None, origin: Origin) -> Signals:
        """The signals wanted for a request like this one, without counting it."""
        if identity is None:
            return self.blank()
        out = self._zeros.copy()
        entity = identity.entity_id
        plan = self._token
        if plan is not None and identity.subject is not None:
            plan.read(token_key(entity, identity.subject), at, out)
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

    def blank(self) -> dict[str, float]:
        """The signals of a request without an identity: all 0."""
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
