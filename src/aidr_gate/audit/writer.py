"""The trail's writer thread: it takes batches from the queue, renders, links and stores them.

The event loop only queues each event (``AuditTrail.submit``); everything else a record costs
happens here, on a thread named ``aidr-audit-io`` (``top -H`` shows it): rendering (``ecs.py``,
``ocsf.py``) with the shared facts each file holds once (``facts.py``), the hash chain, signed
checkpoints, the journal's write and fsync, its spool. Each batch is reported back to the event
loop with one ``call_soon_threadsafe``: counters, futures, the delivery sinks' outboxes.

Why a thread and batches: rendering and hashing a record cost a few microseconds, the thread
wake-ups around a batch more than that (a timer, the GIL changing hands: tens of microseconds on a
small VM). Taking a batch at most once per ``batch_linger`` bounds the wake-ups a second whatever
the request rate. Records are under 2 KiB, so hashing never releases the GIL record by record
(hashlib releases it for 2 KiB and more); the GIL changes hands around a batch's write and fsync.
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
from aidr_gate.audit.record import AuditEvent, Renderer, escape_line_breaks, fallback_record
from aidr_gate.audit.sinks.file import FileJournal
from aidr_gate.settings.audit import AuditConfig, FsyncPolicy

logger = logging.getLogger("aidr_gate.audit")

IO_THREAD = "aidr-audit-io"
SPOOL_THREAD = "aidr-audit-spool"


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


class WriterThread:
    """The writer thread's half of :class:`~aidr_gate.audit.trail.AuditTrail` (a mixin)."""

    config: AuditConfig
    renderer: Renderer
    journal: FileJournal | None
    signer: Signer | None
    chain: Chain
    _queue: deque[AuditEvent]
    _cv: threading.Condition
    _sleeping: bool
    _lingering: bool
    _stop: bool
    _abandon: bool
    _taken: int
    _open_ticket: asyncio.Future[bool] | None
    _fsync_always: bool
    _journal_failed: bool
    _loop: asyncio.AbstractEventLoop | None
    _writer_done: asyncio.Future[None] | None

    def _store(self, data: bytes, lines: int, first: int, position: tuple[int, str] | None) -> bool:
        raise NotImplementedError

    def _stored(
        self, span: tuple[int, int] | None, count: int, data: bytes, first: int, stored: bool
    ) -> None:
        raise NotImplementedError

    # -- the writer thread -----------------------------------------------------------------------

    def _writer_main(self) -> None:
        """The writer thread: take a batch, render, link, store; resolve its futures on the loop.

        Rendering and hashing happen here, off the event loop, which only queues each event.
        Every batch costs thread wake-ups (the timer, the GIL), so a batch is taken at most once
        per ``batch_linger`` unless a full one waits, whatever the request rate; never lingering
        under fsync always, where each response waits for its batch (group commit: what arrives
        during one fsync is the next batch). Interval fsync and time-based checkpoints run here
        while the trail is idle.
        """
        name_thread(IO_THREAD)
        linger = 0.0 if self._fsync_always else self.config.batch_linger
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
                        self._write_batch([], self._taken)  # the final checkpoint
                    break
            except Exception:  # a bug here must not stop the trail silently
                logger.exception("audit: the writer thread failed on a batch; it carries on")
                time.sleep(0.01)
        self._call_loop(_finish, self._writer_done)

    def _take(
        self, linger: float, taken_at: float, next_tick: float
    ) -> tuple[list[AuditEvent], int, bool]:
        """Wait for records (or the next tick), linger, and take a batch: events, their first
        index, and whether the trail is stopping."""
        queue = self._queue
        batch_size = self.config.batch_size
        cv = self._cv
        with cv:
            if not queue and not self._stop:
                self._sleeping = True
                cv.wait(max(0.0, next_tick - time.monotonic()))
                self._sleeping = False
            if queue and linger and not self._stop and len(queue) < batch_size:
                wait = taken_at + linger - time.monotonic()
                if wait > 0:
                    self._lingering = True
                    cv.wait(wait)  # cut short by a full batch or by close()
                    self._lingering = False
            stop = self._stop
            count = 0 if self._abandon else min(batch_size, len(queue))
            events = [queue.popleft() for _ in range(count)]
            first = self._taken
            self._taken = first + count
            if count:
                self._open_ticket = None  # later submissions get a new future
        return events, first, stop and (self._abandon or not queue)

    def _tick_interval(self) -> float:
        journal = self.journal
        interval = 1.0
        if journal is not None and journal.config.fsync is FsyncPolicy.INTERVAL:
            interval = min(interval, journal.config.fsync_interval)
        return interval

    def _idle_tick(self) -> None:
        """Interval fsync, and a time-based checkpoint while no records come."""
        journal = self.journal
        if journal is not None and not self._journal_failed:
            try:
                journal.sync_due()
            except OSError as exc:
                logger.error("audit journal sync failed: %s", exc)
        signer = self.signer
        if signer is not None and signer.due() and not self._queue and not self._stop:
            self._write_batch([], self._taken)

    def _render_batch(self, events: list[AuditEvent]) -> list[bytes]:
        """The bodies of a batch's lines."""
        renderer = self.renderer
        journal = self.journal
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
        position = self.chain.position() if self.journal is None else None
        try:
            stored = self._store(data, lines, first_seq, position)
        except Exception:  # a bug: count the loss, never hide it
            logger.exception("audit: storing a batch failed")
            stored = False
        span = (first, first + len(events)) if events else None
        self._call_loop(self._stored, span, len(events), data, first_seq, stored)

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
