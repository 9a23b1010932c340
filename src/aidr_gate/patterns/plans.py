"""One subject's part of the tracker: its table of rows, and what a request counts and reads.

:class:`Table` bounds the keys of one subject (the least recently seen are forgotten first);
:class:`Plan` says what a pack's signals count in it. The tracker builds both, and
:mod:`~aidr_gate.patterns.compiled` writes a request's counting out from the plans.
"""

from __future__ import annotations

from aidr_gate.patterns.sketches import OLDEST, Row

# Between the entity and the subject in a token's key.
SUBJECT_SEPARATOR = "\x1f"


def token_key(entity: str, subject: str) -> str:
    """The key of one token subject of one entity in the token table."""
    return entity + SUBJECT_SEPARATOR + subject


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


class Plan:
    """One subject's part of the tracker: its table, and what a request counts and reads in it.

    Built by :meth:`PatternTracker.want`, which writes the counting of a request out from the
    plans (:mod:`~aidr_gate.patterns.compiled`); reading without counting is :meth:`read`, once
    per subject tracked, every window of that subject on one row.
    """

    __slots__ = (
        "capacity",
        "counts",
        "horizon",
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
        # (signal, index of its window's request count, index of its share's count, window)
        self.shares: tuple[tuple[str, int, int, float], ...] = ()
        self.capacity = 0  # distinct items kept per key
        self.horizon = 0.0  # the longest window of the tracker (what a full key may forget)

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
