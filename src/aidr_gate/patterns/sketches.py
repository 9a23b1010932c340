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
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


class RecentSet:
    """Distinct items with the time each was last seen; at most *capacity* (the most recent)."""

    __slots__ = ("flushed", "news", "oldest", "seen", "touched")

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self.touched = 0.0  # when this key was last observed (or merged into): eviction order
        # At most the earliest time in ``seen`` (exact after a full count): while a window starts
        # before it, every entry is inside and the count is ``len(seen)``, with no loop.
        self.oldest = math.inf
        # For a fleet: an item this replica has not shared yet, and when it last shared the set.
        self.news = False
        self.flushed = 0.0

    def add(self, item: str, at: float, capacity: int, horizon: float) -> None:
        """Note *item* at *at*; past *capacity*, forget what is older than *horizon* seconds, then
        the least recently seen."""
        seen = self.seen
        old = seen.get(item)
        if old is None:
            if len(seen) >= capacity:
                self._make_room(at, capacity, horizon)
            seen[item] = at
            self.news = True
            if at < self.oldest:
                self.oldest = at
        elif old < at:
            seen[item] = at
        if at > self.touched:
            self.touched = at

    def _make_room(self, at: float, capacity: int, horizon: float) -> None:
        seen = self.seen
        cutoff = at - horizon
        for item in [i for i, t in seen.items() if t <= cutoff]:
            del seen[item]
        while len(seen) >= capacity:
            del seen[min(seen, key=seen.__getitem__)]
        self.oldest = min(seen.values(), default=math.inf)

    def count(self, since: float) -> int:
        """Distinct items seen after *since*."""
        if since < self.oldest:
            return len(self.seen)
        n = 0
        oldest = math.inf
        for t in self.seen.values():
            if t > since:
                n += 1
            if t < oldest:
                oldest = t
        self.oldest = oldest
        return n

    def merge(self, items: Iterable[tuple[str, float]], capacity: int, horizon: float) -> None:
        """Take the later time of each item (another replica's view of the same key)."""
        for item, at in items:
            self.add(item, at, capacity, horizon)

    def items_since(self, since: float) -> list[tuple[str, float]]:
        """The entries seen after *since* (what a replica shares)."""
        return [(i, t) for i, t in self.seen.items() if t > since]


class Shares:
    """Per window: decaying counts of requests, anonymizer requests and worse-tier requests.

    ``values`` is flat, three floats per window, all as of ``at``; ``others`` is the same for the
    rest of the fleet (as of ``others_at``), refreshed from the shared view.
    """

    __slots__ = ("at", "flushed", "others", "others_at", "touched", "values")

    def __init__(self, windows: int) -> None:
        self.values = [0.0] * (3 * windows)
        self.at = 0.0
        self.others: list[float] | None = None
        self.others_at = 0.0
        self.touched = 0.0
        self.flushed = 0.0  # when this replica last shared its counts

    def add(self, at: float, anonymous: bool, worse: bool, taus: Sequence[float]) -> None:
        """Count one request at *at* in every window (time constants *taus*)."""
        values = self.values
        elapsed = at - self.at
        if elapsed < 0.0:  # an older request than the last (replay out of order): count it now
            elapsed = 0.0
        for index, tau in enumerate(taus):
            keep = math.exp(-elapsed / tau) if elapsed else 1.0
            base = 3 * index
            values[base] = values[base] * keep + 1.0
            values[base + 1] = values[base + 1] * keep + (1.0 if anonymous else 0.0)
            values[base + 2] = values[base + 2] * keep + (1.0 if worse else 0.0)
        if at > self.at:
            self.at = at
        if at > self.touched:
            self.touched = at

    def share(self, index: int, which: int, at: float, tau: float) -> float:
        """Window *index*'s share of anonymizer (*which* 1) or worse-tier (2) requests at *at*."""
        base = 3 * index
        values = self.values
        others = self.others
        if others is None:  # one decay factor for both counts: it cancels out of the share
            total = values[base]
            return values[base + which] / total if total > 1e-9 else 0.0
        mine = math.exp(-max(at - self.at, 0.0) / tau)
        keep = math.exp(-max(at - self.others_at, 0.0) / tau)
        total = values[base] * mine + others[base] * keep
        part = values[base + which] * mine + others[base + which] * keep
        return part / total if total > 1e-9 else 0.0

    def decayed(self, at: float, taus: Sequence[float]) -> list[float]:
        """This replica's own counts as of *at* (what it shares)."""
        out = list(self.values)
        for index, tau in enumerate(taus):
            keep = math.exp(-max(at - self.at, 0.0) / tau)
            for k in range(3 * index, 3 * index + 3):
                out[k] *= keep
        return out
