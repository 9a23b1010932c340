"""One round of a replica's exchange with Redis: what it writes, what it reads, and the merge.

:class:`~aidr_gate.patterns.shared.SharedState` decides when a round runs and what its outcome
means (the view's health, backing off); this module is the protocol itself: two Lua scripts (one
call per chunk of keys), which keys are due for a write or a read, and merging the replies into the
tracker's tables (see :mod:`aidr_gate.patterns.shared` for the data model in Redis).

The round runs on the event loop that serves requests: every loop below yields after a slice of
``wire.STALL`` seconds (:class:`~aidr_gate.patterns.wire.Slices`), and a chunk is one call whose
arguments and reply are a few strings (records joined by ``\\x1e``), so that neither redis-py nor
this module spends long on one call.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from itertools import islice
from typing import Any

from aidr_gate.patterns.settings import RedisSettings
from aidr_gate.patterns.tracker import PatternTracker
from aidr_gate.patterns.wire import Script, Slices, Wire, bulk

Key = tuple[str, str]  # (a Subject, the key)
CHUNK = 512  # keys per call at most
# Items a read call may bring back, about (the local rows' sizes): its reply is parsed in one go.
READ_ITEMS = 2048
_SEP = "\x1f"  # between the fields of a record
_RS = "\x1e"  # between the records of a chunk (one per key)
TRIM_EVERY = 16  # a key's sorted set is trimmed about one write in this many


# Writes of one chunk. ARGV: ttl, trim-below score, capacity, replica, then the records, one per
# key in KEYS order, joined by \x1e: "s" (or "t": and trim) and score, member, score, member...
# joined by \x1f (a sorted set of items by last-seen time, ZADD GT: a later time wins whoever
# wrote it), or "c" and this replica's counts (its field of the key's hash). Item names never
# hold \x1e or \x1f (ids and codes; one that does is not shared).
_WRITE = """
local ttl, low, cap, replica = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
local records, pos = ARGV[5], 1
for i, key in ipairs(KEYS) do
  local stop = string.find(records, "\\30", pos, true)
  local arg = string.sub(records, pos, stop and stop - 1 or -1)
  pos = (stop or #records) + 1
  local kind, body = string.sub(arg, 1, 1), string.sub(arg, 2)
  if kind == "c" then
    redis.call("HSET", key, replica, body)
  else
    local score = nil
    for part in string.gmatch(body, "[^\\31]+") do
      if score == nil then
        score = part
      else
        redis.call("ZADD", key, "GT", score, part)
        score = nil
      end
    end
    if kind == "t" then
      redis.call("ZREMRANGEBYSCORE", key, "-inf", low)
      redis.call("ZREMRANGEBYRANK", key, 0, -(cap + 1))
    end
  end
  redis.call("EXPIRE", key, ttl)
end
return #KEYS
"""
# Reads of one chunk: per key, the items seen since ARGV[1] with their times (a sorted set: "s"
# at position i of ARGV[2]) or every replica's counts (a hash: "c"), each a flat list joined by
# \x1f; the chunk's records joined by \x1e (one string: one object for the client to make).
_READ = """
local out = {}
for i, key in ipairs(KEYS) do
  if string.sub(ARGV[2], i, i) == "s" then
    out[i] = table.concat(redis.call("ZRANGEBYSCORE", key, ARGV[1], "+inf", "WITHSCORES"), "\\31")
  else
    out[i] = table.concat(redis.call("HGETALL", key), "\\31")
  end
end
return table.concat(out, "\\30")
"""
WRITE, READ = Script(_WRITE), Script(_READ)


def _encode(windows: tuple[float, ...], at: float, values: list[float]) -> str:
    head = ",".join(f"{w:g}" for w in windows)
    return f"{head};{at:.3f};" + ",".join(f"{v:.6g}" for v in values)


def _decode(text: str, windows: tuple[float, ...]) -> tuple[float, list[float]] | None:
    try:
        head, at, body = text.split(";")
        if tuple(float(w) for w in head.split(",")) != windows:
            return None  # another layout (a replica on another pack during a rollout): skipped
        values = [float(v) for v in body.split(",")]
    except ValueError:
        return None
    return (float(at), values) if len(values) == 3 * len(windows) else None


class Exchange:
    """The Redis protocol of one replica's tracker: writes, reads, and the merge of the view."""

    def __init__(
        self,
        tracker: PatternTracker,
        settings: RedisSettings,
        replica: str,
        replied: Callable[[], None],
    ) -> None:
        self.tracker = tracker
        self.settings = settings  # the pace in force (``SharedState.pace`` replaces it)
        self.replica = replica
        self.wire: Wire | None = None
        self.flushed_at = 0.0  # when the last round that succeeded began
        self._replied = replied  # called after each reply: the view is being refreshed
        self._watched: dict[Key, float] = {}
        self._trims = 0
        self._cursor = 0
        self._read_at: dict[Key, float] = {}
        self._rotation: list[Key] = []
        self._running = asyncio.Lock()

    def connect(self, client: Any) -> None:
        """Use *client* (redis-py's asyncio client): one connection of its pool."""
        self.wire = Wire(client)

    def _key(self, subject: str, kind: str, key: str) -> bytes:
        return bulk(f"{self.settings.prefix}{subject}:{kind}:{key}")

    async def run(self, now: float, changed: set[Key]) -> None:
        """One round: note what changed, write what is news, read back what is due."""
        async with self._running:  # a round called while the background one runs waits for it
            await self._run(now, changed)

    async def _run(self, now: float, changed: set[Key]) -> None:
        wire = self.wire
        assert wire is not None, "connect() first"
        slices = Slices()
        watched = self._watched
        tracker = self.tracker
        resolution = max(self.settings.interval, min(tracker.windows or (60.0,)) / 20)
        refresh = 2 * self.settings.interval
        budget = self.settings.max_batch
        read_at = self._read_at
        writes: list[Key] = []
        reads: list[Key] = []
        # *changed* is this round's own set (requests note their keys in a new one meanwhile).
        for entry in changed:
            watched.pop(entry, None)
            watched[entry] = now  # most recently changed last
            if self._due(entry, now, resolution):
                writes.append(entry)
            # What changed here is read again at most every other round: a change another
            # replica made is seen within about three intervals.
            if len(reads) < budget and now - read_at.get(entry, 0.0) >= refresh:
                reads.append(entry)
            if slices.over():
                await slices.pause()
        self._trims += 1
        await self._write(now, writes, slices)
        await self._rotate(now, changed, reads, slices)
        if not writes and not reads:
            await wire.ping()  # nothing to exchange: still find out whether Redis is there
        await self._read(now, reads, slices)
        if len(read_at) > 2 * max(len(watched), 1024):
            await self._forget_reads(slices)

    async def _write(self, now: float, writes: list[Key], slices: Slices) -> None:
        """Write what is news: an item this replica has not shared, or counts and last-seen times
        not shared for ``resolution`` seconds (a window's edge moves by at most that much)."""
        wire = self.wire
        assert wire is not None
        tracker = self.tracker
        horizon = max(tracker.horizon, 1.0)
        since = max(now - horizon, self.flushed_at - 2 * self.settings.interval)
        cap = max((tracker.capacity, *tracker.capacities.values()))  # a trim bound, for size only
        head = [bulk(str(int(horizon) + 60)), bulk(repr(now - horizon)), bulk(str(cap))]
        head.append(bulk(self.replica))
        keys: list[bytes] = []
        records: list[str] = []
        for position, (subject, key) in enumerate(writes, 1):
            held = tracker.table(subject).rows.get(key)
            if held is not None and tracker.tracks_sets(subject):
                held.news, held.flushed = False, now
                keys.append(self._key(subject, "s", key))
                # Trimming is for size only (reads ask for the window): now and then.
                trim = (self._trims + len(key)) % TRIM_EVERY == 0
                records.append(("t" if trim else "s") + _packed(held.seen, since))
            srow = held.shares if held is not None and tracker.tracks_shares(subject) else None
            if srow is not None:
                srow.flushed = now
                keys.append(self._key(subject, "c", key))
                values = srow.decayed(now, tracker.share_windows)
                records.append("c" + _encode(tracker.share_windows, now, values))
            if keys and (len(keys) >= CHUNK or position == len(writes)):
                await wire.call(WRITE, keys, [*head, bulk(_RS.join(records))])
                self._replied()
                keys, records = [], []
                slices.until = 0.0  # a reply arrived in this slice: yield before going on
            if slices.over():
                await slices.pause()

    async def _rotate(self, now: float, changed: set[Key], reads: list[Key], s: Slices) -> None:
        """Forget what was not seen within ``watch``, and add to *reads* a rotating slice of the
        other keys still watched; at most ``max_batch`` keys in all."""
        watched = self._watched
        cutoff = now - self.settings.watch
        while watched:
            first = next(iter(watched))
            if watched[first] >= cutoff:
                break
            del watched[first]
            if s.over():
                await s.pause()
        budget = self.settings.max_batch
        if len(reads) >= budget or not watched:
            return
        if self._cursor >= len(self._rotation):
            # A copy of the keys watched, made a slice at a time (nothing else changes *watched*
            # while a round runs: rounds do not overlap).
            rotation: list[Key] = []
            keys = iter(watched)
            while part := list(islice(keys, 256)):
                rotation += part
                await s.pause()
            self._rotation, self._cursor = rotation, 0
        take = min(max(budget // 4, 1), budget - len(reads))
        for entry in self._rotation[self._cursor : self._cursor + take]:
            if entry in watched and entry not in changed:
                reads.append(entry)
            if s.over():
                await s.pause()
        self._cursor += take

    async def _forget_reads(self, s: Slices) -> None:
        """Keep the read times of the keys still watched only (a slice at a time)."""
        watched = self._watched
        kept: dict[Key, float] = {}
        items = iter(self._read_at.items())
        while part := list(islice(items, 256)):
            for entry, at in part:
                if entry in watched:
                    kept[entry] = at
            await s.pause()
        self._read_at = kept

    async def _read(self, now: float, reads: list[Key], slices: Slices) -> None:
        """Read *reads* back in chunks and merge the fleet's view into the tables."""
        wire = self.wire
        assert wire is not None
        tracker = self.tracker
        low = bulk(repr(now - max(tracker.horizon, 1.0)))
        read_at = self._read_at
        chunk: list[Key] = []
        keys: list[bytes] = []
        kinds: list[str] = []
        items = 0
        for position, entry in enumerate(reads, 1):
            read_at[entry] = now
            subject, key = entry
            chunk.append(entry)
            if tracker.tracks_sets(subject):
                keys.append(self._key(subject, "s", key))
                kinds.append("s")
                held = tracker.table(subject).rows.get(key)
                items += 1 + (held.held() if held is not None else 0)
            if tracker.tracks_shares(subject):
                keys.append(self._key(subject, "c", key))
                kinds.append("c")
                items += 2
            last = position == len(reads)
            if keys and (last or len(keys) >= CHUNK or items >= READ_ITEMS):
                reply = await wire.call(READ, keys, [low, bulk("".join(kinds))])
                self._replied()
                await slices.pause()  # the reply was read in this slice: yield before the merge
                text = reply.decode() if isinstance(reply, bytes) else str(reply)
                records = text.split(_RS)
                if len(records) == len(keys):  # else a record held \x1e: nothing to trust
                    await self._merge(now, chunk, records, slices)
                chunk, keys, kinds, items = [], [], [], 0
            elif slices.over():
                await slices.pause()

    def _due(self, entry: Key, now: float, resolution: float) -> bool:
        """True when a key changed here holds something to share."""
        subject, key = entry
        tracker = self.tracker
        row = tracker.table(subject).rows.get(key)
        if row is None:
            return False
        if tracker.tracks_sets(subject) and (row.news or now - row.flushed >= resolution):
            return True
        srow = row.shares if tracker.tracks_shares(subject) else None
        return srow is not None and now - srow.flushed >= resolution

    async def _merge(self, now: float, chunk: list[Key], records: list[str], s: Slices) -> None:
        tracker = self.tracker
        horizon = max(tracker.horizon, 1.0)
        windows = tracker.share_windows
        position = 0
        for subject, key in chunk:
            if s.over():
                await s.pause()
            table = tracker.table(subject)
            if tracker.tracks_sets(subject):
                record = records[position]
                position += 1
                if record:
                    parts = record.split(_SEP)
                    pairs = [(parts[n], float(parts[n + 1])) for n in range(0, len(parts) - 1, 2)]
                    table.merged(key, pairs, tracker.capacity_of(subject), horizon, now)
            if not tracker.tracks_shares(subject):
                continue
            record = records[position]
            position += 1
            held = table.rows.get(key)
            srow = held.shares if held is not None else None
            if srow is None or srow.windows != len(windows):
                continue
            others = [0.0] * (3 * len(windows))
            fields = record.split(_SEP) if record else []
            for n in range(0, len(fields) - 1, 2):
                replica, text = fields[n], fields[n + 1]
                if replica == self.replica:
                    continue
                decoded = _decode(text, windows)
                if decoded is None:
                    continue
                at, values = decoded
                for index, tau in enumerate(windows):
                    keep = _decay(now - at, tau)
                    for k in range(3 * index, 3 * index + 3):
                        others[k] += values[k] * keep
            srow.take_others(others, now)


def _packed(seen: dict[str, float], since: float) -> str:
    """The items of a set seen after *since*: time, item, time, item... joined by ``\\x1f``."""
    return _SEP.join(
        f"{at:.3f}{_SEP}{item}"
        for item, at in seen.items()
        if at > since and _SEP not in item and _RS not in item
    )


def _decay(elapsed: float, tau: float) -> float:
    return math.exp(-max(elapsed, 0.0) / tau)
