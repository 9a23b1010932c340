"""One round of a replica's exchange with Redis: what it writes, what it reads, and the merge.

:class:`~aidr_gate.patterns.shared.SharedState` decides when a round runs and what its outcome
means (the view's health, backing off); this module is the protocol itself: two Lua scripts (one
call per chunk of keys), which keys are due for a write or a read, and merging the replies into the
tracker's tables (see :mod:`aidr_gate.patterns.shared` for the data model in Redis).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

from aidr_gate.patterns.settings import RedisSettings
from aidr_gate.patterns.tracker import PatternTracker

Key = tuple[str, str]  # (a Subject, the key)
# Round trips are cut into chunks of keys, with a yield to the event loop between
# chunks, so merging a large view never holds requests up for long.
CHUNK = 256  # keys per round trip at most
# Seconds of work the exchange does between two yields to the event loop, about: a request
# arriving meanwhile waits no longer than this.
STALL = 20e-6
# Keys per round trip at least. A floor of 32 (fewer, larger calls: redis-py spends tens of
# microseconds per call) made more rounds complete under load but raised the p99 a loop turn
# spends by about 0.1 ms (bench/patterns.py, 2026-12-02 17:32): small chunks are kept.
MIN_CHUNK = 1
_SEP = "\x1f"
TRIM_EVERY = 16  # a key's sorted set is trimmed about one write in this many


# Writes of one chunk. ARGV: ttl, trim-below score, capacity, replica; then one per key, in KEYS
# order: "s" (or "t": and trim) and score, member, score, member... joined by \x1f (a sorted set
# of items by last-seen time, ZADD GT: a later time wins whoever wrote it), or "c" and this
# replica's counts (its field of the key's hash). Item names never hold \x1f (ids and codes).
_WRITE = """
local ttl, low, cap, replica = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
for i, key in ipairs(KEYS) do
  local arg = ARGV[i + 4]
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
# at position i of ARGV[2]) or every replica's counts (a hash: "c"), as flat lists.
_READ = """
local out = {}
for i, key in ipairs(KEYS) do
  if string.sub(ARGV[2], i, i) == "s" then
    out[i] = redis.call("ZRANGEBYSCORE", key, ARGV[1], "+inf", "WITHSCORES")
  else
    out[i] = redis.call("HGETALL", key)
  end
end
return out
"""


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
        self.client: Any = None
        self.flushed_at = 0.0  # when the last round that succeeded began
        self._replied = replied  # called after each reply: the view is being refreshed
        self._scripts: tuple[Any, ...] = ()
        self._watched: dict[Key, float] = {}
        self._trims = 0
        self._cursor = 0
        self._read_at: dict[Key, float] = {}
        self._rotation: list[Key] = []
        self._chunk = 8  # keys per round trip: adapted to the CPU their handling takes

    def connect(self, client: Any) -> None:
        """Use *client* (redis-py's asyncio client) and register the two scripts with it."""
        self.client = client
        self._scripts = (client.register_script(_WRITE), client.register_script(_READ))

    def _key(self, subject: str, kind: str, key: str) -> str:
        return f"{self.settings.prefix}{subject}:{kind}:{key}"

    async def run(self, now: float, changed: set[Key]) -> None:
        """One round: note what changed, write what is news, read back what is due."""
        watched = self._watched
        for entry in changed:
            watched.pop(entry, None)
            watched[entry] = now  # most recently changed last
        writes = await self._write(now, changed)
        reads = self._reads_due(now, changed)
        if not writes and not reads:
            await self.client.ping()  # nothing to exchange: still find out whether Redis is there
        await self._read(now, reads)

    async def _write(self, now: float, changed: set[Key]) -> list[Key]:
        """Write what is news: an item this replica has not shared, or counts and last-seen times
        not shared for ``resolution`` seconds (a window's edge moves by at most that much)."""
        tracker = self.tracker
        resolution = max(self.settings.interval, min(tracker.windows or (60.0,)) / 20)
        writes = [k for k in changed if self._due(k, now, resolution)]
        self._trims += 1
        start = 0
        while start < len(writes):
            # One script call per chunk: redis-py spends far more per command than per argument.
            began = time.thread_time()
            size = self._chunk
            keys, args = self._write_args(now, writes[start : start + size])
            start += size
            self._adapt(time.thread_time() - began)
            if keys:
                await self._scripts[0](keys=keys, args=args, client=self.client)
                self._replied()
            await asyncio.sleep(0)
        return writes

    def _write_args(self, now: float, chunk: list[Key]) -> tuple[list[str], list[str | float]]:
        """The write script's keys and arguments for *chunk* (see ``_WRITE``)."""
        tracker = self.tracker
        horizon = max(tracker.horizon, 1.0)
        since = max(now - horizon, self.flushed_at - 2 * self.settings.interval)
        keys: list[str] = []
        cap = max((tracker.capacity, *tracker.capacities.values()))  # a trim bound, for size only
        args: list[str | float] = [int(horizon) + 60, now - horizon, cap, self.replica]
        for subject, key in chunk:
            held = tracker.table(subject).rows.get(key)
            row = held if tracker.tracks_sets(subject) else None
            if row is not None:
                row.news, row.flushed = False, now
                keys.append(self._key(subject, "s", key))
                # Trimming is for size only (reads ask for the window): now and then.
                trim = (self._trims + len(key)) % TRIM_EVERY == 0
                # One argument per key: redis-py encodes each argument in Python.
                packed = _SEP.join(
                    f"{at:.3f}{_SEP}{item}"
                    for item, at in row.items_since(since)
                    if _SEP not in item
                )
                args.append(("t" if trim else "s") + packed)
            srow = held.shares if held is not None and tracker.tracks_shares(subject) else None
            if srow is not None:
                srow.flushed = now
                keys.append(self._key(subject, "c", key))
                values = srow.decayed(now, tracker.share_windows)
                args.append("c" + _encode(tracker.share_windows, now, values))
        return keys, args

    def _reads_due(self, now: float, changed: set[Key]) -> list[Key]:
        """What changed here (read again at most every other round: a change another replica
        made is seen within about three intervals), and a rotating slice of the other keys seen
        within ``watch``; at most ``max_batch`` keys."""
        watched = self._watched
        cutoff = now - self.settings.watch
        while watched:
            first = next(iter(watched))
            if watched[first] >= cutoff:
                break
            del watched[first]
        budget = self.settings.max_batch
        refresh = 2 * self.settings.interval
        read_at = self._read_at
        reads = [k for k in changed if now - read_at.get(k, 0.0) >= refresh][:budget]
        if len(reads) < budget and watched:
            if self._cursor >= len(self._rotation):
                self._rotation, self._cursor = list(watched), 0
            take = min(max(budget // 4, 1), budget - len(reads))
            for entry in self._rotation[self._cursor : self._cursor + take]:
                if entry in watched and entry not in changed:
                    reads.append(entry)
            self._cursor += take
        if len(read_at) > 2 * max(len(watched), 1024):
            self._read_at = {k: t for k, t in read_at.items() if k in watched}
        return reads

    async def _read(self, now: float, reads: list[Key]) -> None:
        """Read *reads* back in chunks and merge the fleet's view into the tables."""
        tracker = self.tracker
        low = now - max(tracker.horizon, 1.0)
        start = 0
        while start < len(reads):
            chunk = reads[start : start + self._chunk]
            start += len(chunk)
            keys: list[str] = []
            kinds: list[str] = []
            for entry in chunk:
                self._read_at[entry] = now
                subject, key = entry
                if tracker.tracks_sets(subject):
                    keys.append(self._key(subject, "s", key))
                    kinds.append("s")
                if tracker.tracks_shares(subject):
                    keys.append(self._key(subject, "c", key))
                    kinds.append("c")
            replies = await self._scripts[1](
                keys=keys, args=[low, "".join(kinds)], client=self.client
            )
            self._replied()
            began = time.thread_time()
            self._merge(now, chunk, replies)
            self._adapt(time.thread_time() - began)
            await asyncio.sleep(0)  # let requests through between chunks

    def _adapt(self, spent: float) -> None:
        """Size the next chunk so that the work between two yields stays near ``STALL`` (this
        thread's CPU time: a scheduler's preemption on a shared machine is not work)."""
        if spent > STALL and self._chunk > MIN_CHUNK:
            self._chunk = max(MIN_CHUNK, self._chunk // 2)
        elif spent < STALL / 2 and self._chunk < CHUNK:
            self._chunk = min(CHUNK, self._chunk * 2)

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

    def _merge(self, now: float, chunk: list[Key], replies: list[Any]) -> None:
        tracker = self.tracker
        horizon = max(tracker.horizon, 1.0)
        windows = tracker.share_windows
        position = 0
        for subject, key in chunk:
            table = tracker.table(subject)
            if tracker.tracks_sets(subject):
                items = replies[position]
                position += 1
                if items:
                    pairs = [(items[n], float(items[n + 1])) for n in range(0, len(items), 2)]
                    table.merged(key, pairs, tracker.capacity_of(subject), horizon, now)
            if not tracker.tracks_shares(subject):
                continue
            fields = replies[position]
            position += 1
            held = table.rows.get(key)
            srow = held.shares if held is not None else None
            if srow is None or srow.windows != len(windows):
                continue
            others = [0.0] * (3 * len(windows))
            pairs = fields or []
            for n in range(0, len(pairs) - 1, 2):
                replica, text = pairs[n], pairs[n + 1]
                if replica == self.replica:
                    continue
                decoded = _decode(str(text), windows)
                if decoded is None:
                    continue
                at, values = decoded
                for index, tau in enumerate(windows):
                    keep = _decay(now - at, tau)
                    for k in range(3 * index, 3 * index + 3):
                        others[k] += values[k] * keep
            srow.take_others(others, now)


def _decay(elapsed: float, tau: float) -> float:
    return math.exp(-max(elapsed, 0.0) / tau)
