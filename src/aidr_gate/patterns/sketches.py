"""Fixed-size counting structures: recent distinct items, and decaying request shares.

:class:`RecentSet` holds, for one key, each distinct item it saw with the last time it saw it, at
most ``capacity`` of them. The number of distinct items in any window is the number of entries
seen since the window's start: exact below the capacity, saturated at it above (a network fronting
500 entities reads as ``capacity`` entities, which is what a threshold needs to know). Merging two
sets is taking the later time of each item, which is idempotent and commutative: a replica can
merge the fleet's view into its own state as often as it likes without counting anything twice.

:class:`Shares` holds, per window, exponentially decaying counts of requests, anonymizer requests
and requests from worse tiers (time constant: the window), so a share over ``1h`` weighs the last
hour most and forgets older traffic smoothly, in three floats per window whatever the volume.

:class:`Row` is one key's whole state: its distinct items and, when its subject counts shares,
its :class:`Shares`, so a request looks up one row per subject whatever it counts.

Why arrays: on a working set of many keys the request path's cost is cache misses, not
arithmetic. A float attribute is an object of its own elsewhere in memory (reading it is a miss,
and so is replacing it: the old one's reference count is written). Both structures are therefore
``array('d')`` subclasses holding their times and counts inline, one buffer per key, and the
first distinct item is held inline too: most tokens are seen from one country, and a dict per
key would cost two more objects.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence
from math import exp
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from typing import Self

    _Floats = array[float]
else:
    _Floats = array

# A RecentSet's floats: when the key was last observed (or merged into: the eviction order), the
# first item's last time, at most the earliest time held (exact after a full count: while a
# window starts before it, every entry is inside and the count is the number held, with no loop),
# when this replica last shared the set (a fleet); then the times of the items in ``more``.
TOUCHED, FIRST_AT, OLDEST, FLUSHED, MORE = 0, 1, 2, 3, 4
_SET_FLOATS = (0.0, 0.0, math.inf, 0.0)
# A Shares' floats: the time its counts are as of, when this replica last shared them, the time
# ``others`` is as of; then three counts per window (requests, anonymizer, worse tier).
AT, SHARED_AT, OTHERS_AT, COUNTS = 0, 1, 2, 3


class RecentSet(_Floats):
    """Distinct items with the time each was last seen; at most *capacity* (the most recent).

    The first item is held inline (``first``, its time at ``FIRST_AT``); the others in ``more``,
    each to the index of its time in the array (from ``MORE`` on): the times stay floats in one
    buffer, and the indexes, below 256 at the default capacity, are Python's shared small ints.
    """

    __slots__ = ("first", "more", "news")

    first: str | None
    more: dict[str, int] | None
    news: bool  # for a fleet: an item this replica has not shared yet

    def __new__(cls) -> Self:
        self = cast("Self", super().__new__(cls, "d", _SET_FLOATS))
        self.first = None
        self.more = None
        self.news = False
        return self

    @property
    def touched(self) -> float:
        """When this key was last observed or merged into (the table's eviction order)."""
        return self[TOUCHED]

    @property
    def flushed(self) -> float:
        """When this replica last shared the set."""
        return self[FLUSHED]

    @flushed.setter
    def flushed(self, at: float) -> None:
        self[FLUSHED] = at

    def add(self, item: str, at: float, capacity: int, horizon: float) -> None:
        """Note *item* at *at*; past *capacity*, forget what is older than *horizon* seconds, then
        the least recently seen."""
        if at > self[TOUCHED]:
            self[TOUCHED] = at
        first = self.first
        if item == first:
            if at > self[FIRST_AT]:
                self[FIRST_AT] = at
            return
        more = self.more
        index = more.get(item) if more is not None else None
        if index is not None:
            if at > self[index]:
                self[index] = at
            return
        if first is not None and len(self) - MORE + 1 >= capacity:
            self._make_room(at, capacity, horizon)
        self._hold_new(item, at)

    def _hold_new(self, item: str, at: float) -> None:
        if self.first is None:
            self.first = item
            self[FIRST_AT] = at
        else:
            more = self.more
            if more is None:
                more = self.more = {}
            more[item] = len(self)
            self.append(at)
        self.news = True
        if at < self[OLDEST]:
            self[OLDEST] = at

    def _make_room(self, at: float, capacity: int, horizon: float) -> None:
        seen = self.seen
        cutoff = at - horizon
        for item in [i for i, t in seen.items() if t <= cutoff]:
            del seen[item]
        while len(seen) >= capacity:
            del seen[min(seen, key=seen.__getitem__)]
        self.first, self.more = None, None
        del self[MORE:]
        self[OLDEST] = math.inf
        news = self.news
        for item, t in seen.items():
            self._hold_new(item, t)
        self.news = news

    @property
    def seen(self) -> dict[str, float]:
        """Every item held with its last time, in the order first seen (a copy)."""
        first = self.first
        if first is None:
            return {}
        out = {first: self[FIRST_AT]}
        more = self.more
        if more:
            for item, index in more.items():
                out[item] = self[index]
        return out

    def held(self) -> int:
        """How many items are held."""
        return 0 if self.first is None else len(self) - MORE + 1

    def count(self, since: float) -> int:
        """Distinct items seen after *since*."""
        if self.first is None:
            return 0
        if since < self[OLDEST]:
            return len(self) - MORE + 1
        first_at = self[FIRST_AT]
        n = 1 if first_at > since else 0
        oldest = first_at
        if len(self) > MORE:
            for t in self[MORE:]:
                if t > since:
                    n += 1
                if t < oldest:
                    oldest = t
        self[OLDEST] = oldest
        return n

    def merge(self, items: Iterable[tuple[str, float]], capacity: int, horizon: float) -> None:
        """Take the later time of each item (another replica's view of the same key)."""
        for item, at in items:
            self.add(item, at, capacity, horizon)

    def items_since(self, since: float) -> list[tuple[str, float]]:
        """The entries seen after *since* (what a replica shares)."""
        return [(i, t) for i, t in self.seen.items() if t > since]


class Shares(_Floats):
    """Per window: decaying counts of requests, anonymizer requests and worse-tier requests.

    The counts are flat, three per window from ``COUNTS`` on, all as of ``self[AT]``; ``others``
    is the same for the rest of the fleet (as of ``self[OTHERS_AT]``), from the shared view.
    """

    __slots__ = ("others",)

    others: list[float] | None

    def __new__(cls, windows: int) -> Self:
        self = cast("Self", super().__new__(cls, "d", bytes(8 * (COUNTS + 3 * windows))))  # zeros
        self.others = None
        return self

    @property
    def values(self) -> list[float]:
        """This replica's counts, three per window, as of ``self[AT]``."""
        return self[COUNTS:].tolist()

    @property
    def windows(self) -> int:
        """How many windows are counted."""
        return (len(self) - COUNTS) // 3

    @property
    def flushed(self) -> float:
        """When this replica last shared its counts."""
        return self[SHARED_AT]

    @flushed.setter
    def flushed(self, at: float) -> None:
        self[SHARED_AT] = at

    def add(self, at: float, anonymous: bool, worse: bool, taus: Sequence[float]) -> None:
        """Count one request at *at* in every window (time constants *taus*)."""
        elapsed = at - self[AT]
        base = COUNTS
        if elapsed > 0.0:
            self[AT] = at
            one_anonymous = 1.0 if anonymous else 0.0
            one_worse = 1.0 if worse else 0.0
            for tau in taus:
                keep = exp(-elapsed / tau)
                self[base] = self[base] * keep + 1.0
                self[base + 1] = self[base + 1] * keep + one_anonymous
                self[base + 2] = self[base + 2] * keep + one_worse
                base += 3
            return
        # The same instant, or an older request (replay out of order): counted now, undecayed.
        for _ in taus:
            self[base] += 1.0
            if anonymous:
                self[base + 1] += 1.0
            if worse:
                self[base + 2] += 1.0
            base += 3

    def note(
        self,
        at: float,
        anonymous: bool,
        worse: bool,
        taus: Sequence[float],
        signals: Sequence[tuple[str, int, int, float]],
        out: dict[str, float],
    ) -> None:
        """Count one request (:meth:`add`), then write the *signals* into *out* (:meth:`answer`)."""
        self.add(at, anonymous, worse, taus)
        if self.others is None:  # this replica's counts alone: their decay cancels out
            for name, base, part, _ in signals:
                total = self[base]
                out[name] = self[part] / total if total > 1e-9 else 0.0
        else:
            self.answer(at, signals, out)

    def answer(
        self, at: float, signals: Sequence[tuple[str, int, int, float]], out: dict[str, float]
    ) -> None:
        """Write each share of *signals* at *at* into *out*: (name, index of its window's request
        count, index of its share's count, window)."""
        for name, base, part, tau in signals:
            out[name] = self.share((base - COUNTS) // 3, part - base, at, tau)

    def share(self, index: int, which: int, at: float, tau: float) -> float:
        """Window *index*'s share of anonymizer (*which* 1) or worse-tier (2) requests at *at*."""
        base = COUNTS + 3 * index
        others = self.others
        if others is None:  # one decay factor for both counts: it cancels out of the share
            total = self[base]
            return self[base + which] / total if total > 1e-9 else 0.0
        mine = math.exp(-max(at - self[AT], 0.0) / tau)
        keep = math.exp(-max(at - self[OTHERS_AT], 0.0) / tau)
        mark = 3 * index
        total = self[base] * mine + others[mark] * keep
        part = self[base + which] * mine + others[mark + which] * keep
        return part / total if total > 1e-9 else 0.0

    def decayed(self, at: float, taus: Sequence[float]) -> list[float]:
        """This replica's own counts as of *at* (what it shares)."""
        out = self.values
        for index, tau in enumerate(taus):
            keep = math.exp(-max(at - self[AT], 0.0) / tau)
            for k in range(3 * index, 3 * index + 3):
                out[k] *= keep
        return out

    def take_others(self, others: list[float], at: float) -> None:
        """The rest of the fleet's counts, as of *at* (the shared view)."""
        self.others = others
        self[OTHERS_AT] = at


class Row(RecentSet):
    """One key's state: its distinct items, and its shares when its subject counts them."""

    __slots__ = ("shares",)

    shares: Shares | None

    def __new__(cls) -> Self:
        self = super().__new__(cls)
        self.shares = None
        return self
