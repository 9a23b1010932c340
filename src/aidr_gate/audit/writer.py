"""The trail's writer thread: it takes batches from the queue, renders, links and stores them.

The event loop only appends each record's ``(decision, request)`` to a deque (no lock, no future
unless someone waits: ``trail.py``); everything else a record costs happens here, on a thread
named ``aidr-audit-io`` (``top -H`` shows it): rendering (``ecs.py``, ``ocsf.py``) with the shared
facts each file holds once (``facts.py``), the hash chain, signed checkpoints, the journal's
write and fsync, its spool (``stores.py``). Each batch is reported back to the event loop with
one ``call_soon_threadsafe``: counters, futures, the delivery sinks' outboxes.

Why a thread and batches: rendering and hashing a record cost a few microseconds, a thread
wake-up more than that. The thread shares the GIL with the event loop, and every time it wants
the GIL back (after a wait, after a write) while the loop is busy, it is woken each time the loop
lets the GIL go, and goes back to sleep until it gets it: a wake-up costs both threads futex
calls, and happens a few times per GIL hand-off. So the writer takes the GIL as seldom as it
can: it sleeps while the queue is empty (the first record queued wakes it), then lets records
gather for ``batch_linger`` (or until ``batch_size`` wait), and takes a batch at most once per
linger whatever the rate; a batch is rendered, linked and joined in one go and written with one
``write``. Under ``fsync: always`` it never lingers, as each response waits for its batch (group
commit: what arrives during one fsync is the next batch). Records are under 2 KiB, so hashing
never releases the GIL record by record (hashlib releases it for 2 KiB and more).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aidr_gate.audit.chain import Chain, Signer
from aidr_gate.audit.record import (
    AuditEvent,
    Renderer,
    RequestContext,
    escape_line_breaks,
    fallback_record,
)
from aidr_gate.audit.stores import TrailStores
from aidr_gate.decision import Decision
from aidr_gate.settings.audit import AuditConfig, FsyncPolicy

logger = logging.getLogger("aidr_gate.audit")

IO_THREAD = "aidr-audit-io"
SPOOL_THREAD = "aidr-audit-spool"

# What the event loop queues for one record: the decision and the transport's context as they
# are (an AuditEvent is made on the writer thread), or an AuditEvent handed to submit().
Queued = tuple[Decision, RequestContext | None] | AuditEvent
# Back on the event loop after each batch: (first index, end index) of its records (None for a
# checkpoint alone), their count, the batch's bytes, its first seq, and whether it was stored.
Report = Callable[[tuple[int, int] | None, int, bytes, int, bool], None]


def name_thread(name: str) -> None:
    """Name the calling thread for the operating system (``top -H``, ``/proc``); Linux only,
    best effort."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as comm:
            comm.write(name[:15])
    except OSError:
        pass


def _finish(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


def _event(item: Queued) -> AuditEvent:
    if isinstance(item, AuditEvent):
        return item
    return AuditEvent(item[0], item[1])


class BatchWriter:
    """The writer thread and the queue it takes from (see the module docstring).

    The event loop appends to :attr:`queue` and calls :meth:`wake` when :attr:`wants_wake`
    says so; everything else here runs on the thread.
    """

    def __init__(
        self,
        config: AuditConfig,
        renderer: Renderer,
        stores: TrailStores,
        signer: Signer | None,
        report: Report,
    ) -> None:
        self.config = config
        self.renderer = renderer
        self.stores = stores
        self.signer = signer
        self._report = report
        self.chain = Chain()
        self.queue: deque[Queued] = deque()
        self.batch_size = config.batch_size
        self.taken = 0  # records the writer has taken (their indexes are below it)
        # The loop wakes the writer through this, only when it sleeps or a full batch ends its
        # linger: not once per record.
        self._cv = threading.Condition(threading.Lock())
        self.sleeping = False  # the writer waits for any record
        self.lingering = False  # the writer waits for a full batch or the end of its linger
        self._stop = False
        self._abandon = False  # close() timed out: the writer stops after the batch in hand
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Future[None] | None = None
        self._thread: threading.Thread | None = None

    # -- the event loop's side ---------------------------------------------------------------------

    @property
    def wants_wake(self) -> bool:
        """True when a record just queued must wake the writer (read without the lock: the
        writer checks the queue again under it before it sleeps)."""
        return self.sleeping or (self.lingering and len(self.queue) >= self.batch_size)

    def wake(self) -> None:
        """Cut the writer's wait short (once: the records queued until it runs need not)."""
        with self._cv:
            self.sleeping = self.lingering = False
            self._cv.notify()

    def start(self, loop: asyncio.AbstractEventLoop, next_seq: int, digest: str) -> None:
        """Start the thread; the chain goes on at *next_seq* after *digest*."""
        self.chain = Chain(next_seq, digest)
        self.config = self.stores.config  # a claimed process slot's
        self._loop = loop
        self._done = loop.create_future()
        self._thread = threading.Thread(target=self._main, name=IO_THREAD, daemon=True)
        self._thread.start()

    async def stop(self, deadline: float) -> None:
        """Write what is queued and stop by the loop's time *deadline*; past it, stop after the
        batch in hand (never abandoned half way: it is finished, counted and reported)."""
        with self._cv:  # no more lingering: write what is queued, then stop
            self._stop = True
            self._cv.notify()
        done = self._done
        if done is None:
            return
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                await asyncio.shield(done)
        except TimeoutError:
            with self._cv:
                self._abandon = True
            await done

    # -- the thread --------------------------------------------------------------------------------

    def _main(self) -> None:
        """Take a batch, render, link, store; report it to the loop. Interval fsync and
        time-based checkpoints run here while the trail is idle."""
        name_thread(IO_THREAD)
        linger = 0.0 if self.stores.fsync_always else self.config.batch_linger
        tick = self._tick_interval()
        now = time.monotonic
        taken_at = -linger
        next_tick = now() + tick
        while True:
            try:
                events, first, stop = self._take(linger, taken_at, next_tick)
                if events:
                    taken_at = now()
                    self._write_batch(events, first)
                if now() >= next_tick:
                    next_tick = now() + tick
                    self._idle_tick()
                if stop and not events:
                    if self.signer is not None and self.signer.pending and not self._abandon:
                        self._write_batch([], self.taken)  # the final checkpoint
                    break
            except Exception:  # a bug here must not stop the trail silently
                logger.exception("audit: the writer thread failed on a batch; it carries on")
                time.sleep(0.01)
        self._call_loop(_finish, self._done)

    def _take(
        self, linger: float, taken_at: float, next_tick: float
    ) -> tuple[list[AuditEvent], int, bool]:
        """Wait for records (or the next tick), linger, and take a batch: events, their first
        index, and whether the trail is stopping."""
        queue = self.queue
        batch_size = self.batch_size
        cv = self._cv
        with cv:
            if not queue and not self._stop:
                self.sleeping = True
                if not queue:  # queued before the flag was up: the loop did not wake us
                    cv.wait(max(0.0, next_tick - time.monotonic()))
                self.sleeping = False
            if queue and linger and not self._stop and len(queue) < batch_size:
                wait = taken_at + linger - time.monotonic()
                if wait > 0:
                    self.lingering = True
                    if len(queue) < batch_size:
                        cv.wait(wait)  # cut short by a full batch or by close()
                    self.lingering = False
            stop = self._stop
            abandon = self._abandon
        # The loop only appends: the batch is taken without the lock.
        count = 0 if abandon else min(batch_size, len(queue))
        pop = queue.popleft
        events = [_event(pop()) for _ in range(count)]
        first = self.taken
        self.taken = first + count
        return events, first, stop and (abandon or not queue)

    def _tick_interval(self) -> float:
        journal = self.stores.journal
        interval = 1.0
        if journal is not None and journal.config.fsync is FsyncPolicy.INTERVAL:
            interval = min(interval, journal.config.fsync_interval)
        return interval

    def _idle_tick(self) -> None:
        """Interval fsync, and a time-based checkpoint while no records come."""
        journal = self.stores.journal
        if journal is not None and not self.stores.journal_failed:
            try:
                journal.sync_due()
            except OSError as exc:
                logger.error("audit journal sync failed: %s", exc)
        signer = self.signer
        if signer is not None and signer.due() and not self.queue and not self._stop:
            self._write_batch([], self.taken)

    def _render_batch(self, events: list[AuditEvent]) -> list[bytes]:
        """The bodies of a batch's lines."""
        renderer = self.renderer
        journal = self.stores.journal
        if journal is not None and events and journal.rotation_due():
            try:  # rotate before rendering: the new file holds the facts of its records
                journal.rotate()
            except OSError as exc:
                logger.error("audit journal %s: rotation failed: %s", journal.path, exc)
            renderer.new_file()
        bodies: list[bytes] = []
        for event in events:
            try:
                body = renderer.render(event)
            except Exception as exc:  # a renderer bug must not lose the record
                logger.exception("audit: rendering failed; writing a minimal record")
                body = fallback_record(event, exc)
            bodies.append(escape_line_breaks(body))
        return bodies

    def _write_batch(self, events: list[AuditEvent], first: int) -> None:
        """Render, link and store one batch (with a checkpoint when due); report to the loop."""
        bodies = self._render_batch(events)
        pieces: list[bytes | memoryview] = []
        self.chain.extend(pieces, bodies)
        lines = len(bodies) + self._sign(pieces, len(events), final=not events)
        if not lines:
            return
        data = b"".join(pieces)
        first_seq = self.chain.next_seq - lines
        position = self.chain.position() if self.stores.journal is None else None
        try:
            stored = self.stores.store(data, lines, first_seq, position)
        except Exception:  # a bug: count the loss, never hide it
            logger.exception("audit: storing a batch failed")
            stored = False
        span = (first, first + len(events)) if events else None
        self._call_loop(self._report, span, len(events), data, first_seq, stored)

    def _call_loop(self, callback: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is left to tell
            loop.call_soon_threadsafe(callback, *args)

    def _sign(self, pieces: list[bytes | memoryview], count: int, final: bool = False) -> int:
        """Append a signed checkpoint to a batch of *count* new records when one is due; the
        number of lines appended (0 or 1)."""
        signer = self.signer
        if signer is not None:
            signer.note(count)
            if signer.due() or (final and signer.pending):
                seq, digest = self.chain.position()
                self.chain.extend(pieces, (signer.checkpoint(seq, digest),))
                return 1
        return 0
