"""An outbox per delivery sink: a bounded memory queue, a disk spool, and one delivery worker.

Order is kept by one invariant: records in memory are always older than records in the spool. A
record goes to memory unless the sink is spooling (it is down, or its queue is full); once
spooling, every new record goes to the spool until the worker has drained memory and then the
spool. The worker retries a batch with exponential backoff and jitter, forever, in order; after
``retries`` failed attempts the sink counts as down and new records spool (durable across a
restart). The cursor (last acknowledged sequence number) is saved after every batch, so records
read back from the spool after a restart are delivered exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

from aidr_gate.audit.sinks import DeliverySink, SinkError, SinkRejected
from aidr_gate.audit.spool import Spool, line_seq
from aidr_gate.settings.audit import DeliveryConfig
from aidr_gate.tasks import stop_task

logger = logging.getLogger("aidr_gate.audit")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SinkStats:
    """Counters of one sink."""

    name: str
    kind: str
    state: str  # "up", "down" or "spooling"
    delivered: int
    pending: int  # in memory and in the spool
    spooled: int  # records ever written to the spool
    spool_bytes: int
    lost: int  # could not be delivered nor spooled
    rejected: int  # refused for good by the receiver
    failures: int  # failed delivery attempts


class Outbox:
    """Feeds one sink, in order."""

    def __init__(
        self,
        sink: DeliverySink,
        config: DeliveryConfig,
        spool: Spool,
        io: Executor,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.sink = sink
        self.config = config
        self.spool = spool
        self._io = io
        self._rng = rng
        self._memory: deque[bytes] = deque()
        self._memory_first = 0  # seq of _memory[0]
        self._spooling = False
        self._to_spool: list[bytes] = []
        self._to_spool_first = 0
        self._spills_running = 0
        self._inflight: list[bytes] | None = None
        self._inflight_first = 0
        self._inflight_spool_bytes = 0
        self._inflight_spool_lines = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._stopping = False  # close() gave up waiting: the worker stops at its next step
        self.cursor = -1
        self.down = False
        self.storable = True
        self.delivered = 0
        self.spooled = 0
        self.lost = 0
        self.rejected = 0
        self.failures = 0
        self._last_loss_log = 0.0
        self._cursor_failed = False

    async def _run_io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    # -- lifecycle -------------------------------------------------------------------------------

    async def open(self, journal_tail: int) -> None:
        """Open the spool and load the cursor (the trail may then backfill the spool)."""
        await self._run_io(self.spool.open)
        cursor = await self._run_io(self.spool.load_cursor)
        if cursor is None or (cursor > journal_tail and self.spool.empty):
            # A new sink starts from now; a cursor ahead of the chain means the chain was reset.
            cursor = journal_tail
            await self._run_io(self.spool.save_cursor, cursor)
        self.cursor = cursor

    async def start(self) -> None:
        """Open the sink and start the worker, spooled records first."""
        self._spooling = not self.spool.empty
        if self._spooling:
            logger.info(
                "audit sink %s: %d spooled bytes to deliver", self.sink.name, self.spool.bytes
            )
        await self.sink.open()
        self._task = asyncio.create_task(self._worker(), name=f"aidr-audit-{self.sink.name}")
        self._task.add_done_callback(self._worker_done)

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.error(
                "audit sink %s: the delivery worker failed; records for it wait in memory and "
                "the spool until the next start",
                self.sink.name,
                exc_info=error,
            )

    def stats(self) -> SinkStats:
        """A snapshot of the counters."""
        pending = len(self._memory) + len(self._to_spool) + self.spool.count
        pending += len(self._inflight) if self._inflight and not self._inflight_spool_bytes else 0
        return SinkStats(
            name=self.sink.name,
            kind=self.sink.kind,
            state="down"
            if self.down
            else ("spooling" if self._spooling and not self.spool.empty else "up"),
            delivered=self.delivered,
            pending=pending,
            spooled=self.spooled,
            spool_bytes=max(0, self.spool.bytes),
            lost=self.lost,
            rejected=self.rejected,
            failures=self.failures,
        )

    @property
    def idle(self) -> bool:
        """True when nothing waits for delivery."""
        return (
            not self._memory
            and self._inflight is None
            and not self._to_spool
            and self._spills_running == 0
            and (not self._spooling or self.spool.empty)
        )

    # -- feeding (the writer, on the event loop) --------------------------------------------------

    def offer(self, lines: Sequence[bytes], first_seq: int) -> None:
        """Queue a batch of linked lines whose first sequence number is *first_seq*."""
        memory = self._memory
        limit = self.config.queue_size
        for offset, line in enumerate(lines):
            if not self._spooling and len(memory) < limit:
                if not memory:
                    self._memory_first = first_seq + offset
                memory.append(line)
                continue
            if not self._spooling:
                self._spooling = True
                logger.warning(
                    "audit sink %s: queue full (%d records); spooling to %s",
                    self.sink.name,
                    limit,
                    self.spool.directory,
                )
            if not self._to_spool:
                self._to_spool_first = first_seq + offset
            self._to_spool.append(line)
        self._wake.set()

    def take_spill(self) -> tuple[list[bytes], int] | None:
        """Lines waiting to be spooled, for the writer's next I/O job."""
        if not self._to_spool:
            return None
        lines, first = self._to_spool, self._to_spool_first
        self._to_spool = []
        self._spills_running += 1
        return lines, first

    def spill(self, lines: list[bytes], first_seq: int) -> OSError | None:
        """Append to the spool (on the I/O thread); the error, if it failed."""
        try:
            self.spool.append(lines, first_seq)
        except OSError as exc:
            return exc
        return None

    def spilled(self, lines: list[bytes], error: OSError | None) -> None:
        """Account for a spill (back on the event loop)."""
        self._spills_running -= 1
        if error is None:
            self.spooled += len(lines)
            if not self.storable:
                logger.warning("audit sink %s: the spool is writable again", self.sink.name)
            self.storable = True
        else:
            self.storable = False
            self.lost += len(lines)
            now = time.monotonic()
            if now - self._last_loss_log >= 1.0:
                self._last_loss_log = now
                logger.error(
                    "audit sink %s: %d records LOST (sink unavailable and spool not writable: "
                    "%s); %d lost in total",
                    self.sink.name,
                    len(lines),
                    error,
                    self.lost,
                )
        self._wake.set()

    # -- delivering (the worker) -----------------------------------------------------------------

    async def _next_batch(self) -> bool:
        """Fill ``_inflight``; False when there is nothing to send now."""
        size = self.config.batch_size
        if self._memory:
            count = min(size, len(self._memory))
            self._inflight = [self._memory.popleft() for _ in range(count)]
            self._inflight_first = self._memory_first
            self._memory_first += count
            self._inflight_spool_bytes = 0
            return True
        if not self._spooling:
            return False
        lines, used = await self._run_io(self.spool.read, size)
        if not lines:
            if not self._to_spool and self._spills_running == 0 and self.spool.empty:
                self._spooling = False
                logger.info("audit sink %s: spool drained; delivering directly", self.sink.name)
            return False
        fresh = [line for line in lines if line_seq(line) > self.cursor]
        if not fresh:  # all delivered before a restart: never twice
            await self._run_io(self.spool.consume, used, len(lines))
            return True
        self._inflight = fresh
        self._inflight_first = line_seq(fresh[0])
        self._inflight_spool_bytes = used
        self._inflight_spool_lines = len(lines)
        return True

    async def _worker(self) -> None:
        while not self._stopping:
            if self._inflight is None:
                self._wake.clear()
                if not await self._next_batch():
                    if self._closing and self.idle:
                        return
                    await self._wake.wait()
                    continue
                if self._inflight is None:
                    continue
            await self._deliver()

    async def _deliver(self) -> None:
        attempt = 0
        while self._inflight and not self._stopping:
            lines = self._inflight
            try:
                await self.sink.send(lines)
            except SinkRejected as exc:
                self.rejected += exc.rejected
                logger.error(
                    "audit sink %s: %d records refused for good by the receiver (seq %d..%d); "
                    "they remain in the journal",
                    self.sink.name,
                    exc.rejected,
                    self._inflight_first,
                    self._inflight_first + len(lines) - 1,
                )
                await self._acknowledge(len(lines))
                return
            except SinkError as exc:
                self.failures += 1
                attempt += 1
                if exc.delivered:
                    await self._acknowledge(exc.delivered, partial=True)
                if attempt >= self.config.retries and not self.down:
                    self.down = True
                    self._spooling = True
                    logger.warning(
                        "audit sink %s is down after %d attempts (%s); spooling to %s",
                        self.sink.name,
                        attempt,
                        exc,
                        self.spool.directory,
                    )
                delay = min(
                    self.config.backoff_max, self.config.backoff_base * 2 ** min(attempt, 20)
                )
                await asyncio.sleep(delay / 2 + self._rng() * delay / 2)
                continue
            await self._acknowledge(len(lines))
        if self.down and not self._inflight:
            self.down = False
            logger.warning("audit sink %s is back; delivering in order", self.sink.name)

    async def _acknowledge(self, count: int, *, partial: bool = False) -> None:
        lines = self._inflight or []
        done, rest = lines[:count], lines[count:]
        self.delivered += len(done)
        self.storable = True
        self.cursor = line_seq(done[-1]) if done else self.cursor
        if rest and partial:
            self._inflight = rest
            self._inflight_first += count
        else:
            self._inflight = None
            spool_bytes, self._inflight_spool_bytes = self._inflight_spool_bytes, 0
            if spool_bytes:
                await self._run_io(self.spool.consume, spool_bytes, self._inflight_spool_lines)
        try:
            await self._run_io(self.spool.save_cursor, self.cursor)
        except OSError as exc:
            # The worker carries on with the cursor in memory; after a restart records acknowledged
            # since the last save may be delivered a second time (never lost).
            if not self._cursor_failed:
                logger.error(
                    "audit sink %s: cannot save the delivery cursor (%s); keeping it in memory",
                    self.sink.name,
                    exc,
                )
            self._cursor_failed = True
            return
        if self._cursor_failed:
            self._cursor_failed = False
            logger.warning("audit sink %s: the delivery cursor is saved again", self.sink.name)

    # -- shutdown --------------------------------------------------------------------------------

    async def close(self, deadline: float) -> None:
        """Deliver until *deadline* (monotonic); then keep what is left in the spool."""
        self._closing = True
        self._wake.set()
        loop = asyncio.get_running_loop()
        task = self._task
        if task is not None:
            # A sink that is down gets no grace: what is left goes to the spool at once.
            remaining = 0.0 if self.down else deadline - loop.time()
            if remaining > 0:
                # The worker's own failure is reported below, never raised into the trail's close.
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(remaining):
                        await asyncio.shield(task)
            if not task.done():
                # stop_task sends a cancel Python 3.11 lost again, for a bounded time; the flag
                # also ends the worker's loop at its next step, so a sink that is down cannot keep
                # it retrying. A cancel of this close itself is held off: what is left is still
                # spooled below, kept rather than lost.
                self._stopping = True
                with contextlib.suppress(asyncio.CancelledError):
                    await stop_task(task)
        leftovers: list[bytes] = []
        first = 0
        if self._inflight and not self._inflight_spool_bytes:
            leftovers.extend(self._inflight)
            first = self._inflight_first
        if self._memory:
            if not leftovers:
                first = self._memory_first
            leftovers.extend(self._memory)
            self._memory.clear()
        if leftovers:
            try:
                await self._run_io(self.spool.prepend, leftovers, first)
                logger.warning(
                    "audit sink %s: %d undelivered records kept in the spool for the next start",
                    self.sink.name,
                    len(leftovers),
                )
            except OSError as exc:
                self.lost += len(leftovers)
                logger.error(
                    "audit sink %s: %d records LOST at shutdown (spool: %s)",
                    self.sink.name,
                    len(leftovers),
                    exc,
                )
        with contextlib.suppress(OSError):
            await self._run_io(self.spool.sync)
        await self.sink.close()
