"""The audit trail: a bounded queue, one writer that renders and chains, the journal, the outboxes.

``submit()`` only appends to a queue and returns a future; it never waits for a sink. One writer
task renders each event and links it into the hash chain, and hands the batch to a single I/O
thread, which appends it to the journal (the rotating file sink) and fsyncs it per policy; every delivery
sink's outbox gets the same linked lines. The future resolves ``True`` once the record is stored
as the journal's fsync policy promises (``always``: on disk), ``False`` if it could be stored
nowhere (counted as lost and logged). With the ``deny`` failure policy, :attr:`AuditTrail.accepting`
turns False while records cannot be stored or the queue is full, and the middleware refuses new
requests with 503 (``AuditUnavailable``): no audit, no access.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from aidr_gate.audit.chain import (
    GENESIS,
    Chain,
    Signer,
    load_private_key,
    open_bytes,
    parse_link,
    read_tail,
)
from aidr_gate.audit.config import (
    AuditConfig,
    FailurePolicy,
    FileSinkConfig,
    FsyncPolicy,
    HttpSinkConfig,
    RecordFormat,
    StdoutSinkConfig,
    SyslogSinkConfig,
)
from aidr_gate.audit.delivery import Outbox, SinkStats
from aidr_gate.audit.ecs import EcsRenderer
from aidr_gate.audit.lock import (
    DIRECTORY_LOCK,
    MAX_SLOTS,
    AuditWriterBusy,
    WriterLock,
    lock_path_for_journal,
)
from aidr_gate.audit.ocsf import OcsfRenderer
from aidr_gate.audit.record import AuditEvent, Redactor, Renderer, fallback_record
from aidr_gate.audit.sinks import DeliverySink
from aidr_gate.audit.sinks.file import FileJournal, first_seq_of, rotated_files
from aidr_gate.audit.spool import Spool
from aidr_gate.errors import ConfigError, Problem

logger = logging.getLogger("aidr_gate.audit")

_MAX_JOBS = 4  # I/O jobs in flight: bounds memory, lets rendering overlap writing
_LINK_RUN = 64  # records rendered before their run is hashed (see _write_loop)


def _finish(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def split_lines(data: bytes) -> list[bytes]:
    """The lines of a joined batch, each with its newline.

    ``bytes.splitlines`` breaks at ``\\n``, ``\\r`` and ``\\r\\n`` only, and a JSON record
    holds neither raw: its encoder escapes every control character.
    """
    return data.splitlines(keepends=True)


@dataclass(frozen=True, slots=True)
class TrailStats:
    """Counters of the whole trail."""

    submitted: int
    written: int  # records stored in the journal (or handed to the sinks when there is none)
    pending: int  # submitted, not yet written
    spooled: int  # records the journal had to spool
    lost: int  # records stored nowhere
    last_seq: int
    accepting: bool
    sinks: tuple[SinkStats, ...]


def build_sink(config: StdoutSinkConfig | SyslogSinkConfig | HttpSinkConfig) -> DeliverySink:
    """The delivery sink for a sink configuration."""
    if isinstance(config, StdoutSinkConfig):
        from aidr_gate.audit.sinks.stdout import StdoutSink

        return StdoutSink(config)
    if isinstance(config, SyslogSinkConfig):
        from aidr_gate.audit.sinks.syslog import SyslogSink

        return SyslogSink(config)
    from aidr_gate.audit.sinks.http import HttpSink

    return HttpSink(config)


class AuditTrail:
    """Records every decision, chained, durable, delivered; see the module docstring."""

    def __init__(
        self,
        config: AuditConfig,
        *,
        renderer: Renderer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.redactor = Redactor(config.headers)
        if renderer is None:
            renderer = (
                OcsfRenderer(self.redactor)
                if config.format is RecordFormat.OCSF
                else EcsRenderer(self.redactor)
            )
        self.renderer = renderer
        self._clock = clock
        self._queue: deque[AuditEvent] = deque()
        # Events submitted in the same stretch (until the writer takes a batch) share one future:
        # [first index, last index, future]. Futures resolve in order, as batches are stored.
        self._tickets: deque[list[Any]] = deque()
        self._open_ticket: asyncio.Future[bool] | None = None
        self._accepted = 0  # index of the next accepted event
        self._taken = 0  # events the writer has taken
        self._failed: list[tuple[int, int]] = []  # index ranges of batches that could not be stored
        self._wake = asyncio.Event()
        self._nap: asyncio.Future[None] | None = None  # the writer's linger, while it lasts
        self._io = ThreadPoolExecutor(1, thread_name_prefix="aidr-audit-io")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: asyncio.Task[None] | None = None
        self._timer: asyncio.Task[None] | None = None
        self._started = False
        self._closing = False
        self._closed = False
        self._journal_failed = False
        self._storable = True
        self.journal: FileJournal | None = None
        self._journal_spool: Spool | None = None
        self._fsync_always = False
        self.outboxes: list[Outbox] = []
        self._build_stores(config)
        self.signer: Signer | None = None
        if config.signing is not None:
            try:
                key = load_private_key(config.signing.key_file)
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    Problem(str(config.signing.key_file), "audit.signing.key_file", str(exc))
                ) from None
            self.signer = Signer(
                key,
                every_records=config.signing.every_records,
                every_seconds=config.signing.every_seconds,
                clock=clock,
            )
        self.chain = Chain()
        self.submitted = 0
        self.written = 0
        self.spooled = 0
        self.lost = 0
        self._jobs = 0
        self._inflight_jobs: set[asyncio.Future[bool]] = set()
        self._inflight_records = 0
        self._last_loss_log = 0.0
        self.recovered_torn = 0
        self._lock = WriterLock()

    def _build_stores(self, config: AuditConfig) -> None:
        """The journal, its spool and the delivery outboxes for *config* (nothing opened yet)."""
        self.config = config
        journal_config = config.journal
        self.journal = FileJournal(journal_config, clock=self._clock) if journal_config else None
        self._journal_spool = (
            Spool(config.spool_directory / journal_config.name, journal_config.spool_max_bytes)
            if journal_config
            else None
        )
        self._fsync_always = (
            journal_config is not None and journal_config.fsync is FsyncPolicy.ALWAYS
        )
        self.outboxes = []
        for sink_config in config.sinks:
            if isinstance(sink_config, FileSinkConfig):
                continue
            spool = Spool(
                config.spool_directory / sink_config.name, sink_config.delivery.spool_max_bytes
            )
            self.outboxes.append(
                Outbox(build_sink(sink_config), sink_config.delivery, spool, self._io)
            )

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover the chain's tail, drain leftover spools into place, start the workers."""
        if self._started:
            return
        loop = asyncio.get_running_loop()
        self._loop = loop
        try:
            if self.config.per_process:
                self._build_stores(await loop.run_in_executor(self._io, self._claim_slot))
            seq, digest = await loop.run_in_executor(self._io, self._recover)
            self.chain = Chain(seq + 1, digest)
            logger.info(
                "audit trail: chain continues at seq %d (%s sinks)",
                seq + 1,
                1 + len(self.outboxes) if self.journal else len(self.outboxes),
            )
            for outbox in self.outboxes:
                await outbox.open(seq)
                if self.journal is not None:
                    await loop.run_in_executor(self._io, self._backfill, outbox, seq)
                await outbox.start()
        except BaseException:
            await self._abandon_start()
            raise
        self._writer = asyncio.create_task(self._write_loop(), name="aidr-audit-writer")
        self._timer = asyncio.create_task(self._tick(), name="aidr-audit-timer")
        self._started = True

    async def _abandon_start(self) -> None:
        """A start that failed part way: close what it opened and release the writer lock, which a
        retry (a fresh trail) needs. The trail is done for."""
        self._closed = True
        loop = asyncio.get_running_loop()
        for outbox in self.outboxes:  # closing one never opened or started is harmless
            with contextlib.suppress(Exception):
                await outbox.close(loop.time())
        journal = self.journal
        if journal is not None:
            with contextlib.suppress(Exception):
                await loop.run_in_executor(self._io, partial(journal.close, 0.1))
        self._io.shutdown(wait=False)
        self._lock.release()

    def _recover(self) -> tuple[int, str]:
        """On the I/O thread: the last (seq, hash) of the chain, from the journal or the state file.

        Locks the directory and the journal first (see ``lock.py``): nothing is read or written
        while another process may be writing.
        """
        self.config.directory.mkdir(parents=True, exist_ok=True)
        if not self._lock.held:  # a claimed process slot is locked already
            self._lock_stores(self.config)
        if self.journal is None:
            return _read_state(self.config.directory / "chain.tail")
        recovery = self.journal.recover()
        self.recovered_torn = recovery.torn
        spool = self._journal_spool
        if spool is not None:
            spool.open()
            if not spool.empty:  # records the journal could not take before: put them in place
                self._drain_journal_spool()
        tail = recovery.tail
        if spool is not None and not spool.empty:
            raise OSError(f"audit journal {self.journal.path} cannot take its spooled records")
        if self.journal.written:  # the spool was drained into it: the tail moved
            tail = read_tail(self.journal.path) or tail
        if tail is None:
            return -1, GENESIS
        return tail.seq, tail.hash

    def _lock_stores(self, config: AuditConfig) -> None:
        """Lock *config*'s directory and journal for this process; raise AuditWriterBusy."""
        try:
            directory = config.directory
            self._lock.acquire(directory / DIRECTORY_LOCK, f"the audit directory {directory}")
            journal = config.journal
            if journal is not None:
                path = journal.path
                self._lock.acquire(lock_path_for_journal(path), f"the audit journal {path}")
        except BaseException:
            self._lock.release()
            raise

    def _claim_slot(self) -> AuditConfig:
        """On the I/O thread: the first process slot (``p0``, ``p1``, ...) no other process holds.

        A restarted process takes the lowest free slot, so each slot's chain goes on across
        restarts, always written by one process at a time.
        """
        for slot in range(MAX_SLOTS):
            config = self.config.in_slot(slot)
            try:
                self._lock_stores(config)
            except AuditWriterBusy:
                continue
            logger.info("audit trail: this process writes slot p%d (%s)", slot, config.directory)
            return config
        raise AuditWriterBusy(
            f"all {MAX_SLOTS} process slots of the audit directory {self.config.directory} are "
            "held by other processes"
        )

    def _drain_journal_spool(self) -> None:
        spool = self._journal_spool
        journal = self.journal
        if spool is None or journal is None:
            return
        while True:
            lines, used = spool.read(4096)
            if not lines:
                return
            link = parse_link(lines[0], check=False)
            journal.write_data(b"".join(lines), len(lines), link.seq if link else 0)
            spool.consume(used, len(lines))

    def _backfill(self, outbox: Outbox, tail_seq: int) -> None:
        """On the I/O thread: records a sink never received (lost from memory in a crash)."""
        journal = self.journal
        if journal is None:
            return
        start = outbox.cursor + 1
        spool_first = outbox.spool.first_seq()
        end = spool_first if spool_first is not None else tail_seq + 1
        if start >= end:
            return
        wanted: list[bytes] = []
        size = 0
        budget = outbox.spool.max_bytes
        over_budget = False
        unreadable: list[str] = []
        rotated = rotated_files(journal.path)
        firsts = [first_seq_of(p) for p in rotated]
        for index, path in enumerate([*rotated, journal.path]):
            if index + 1 < len(rotated) and firsts[index + 1] <= start:
                continue  # every record of this file comes before the gap
            if index < len(rotated) and firsts[index] >= end:
                break
            try:
                data = open_bytes(path)
            except (OSError, EOFError, zlib.error) as exc:
                unreadable.append(f"{path.name}: {exc}")
                continue
            for line in data.splitlines(keepends=True):
                link = parse_link(line, check=False)
                if link is not None and start <= link.seq < end and line.endswith(b"\n"):
                    size += len(line)
                    if size > budget:
                        over_budget = True
                        break
                    wanted.append(line)
            if over_budget:
                break
        missed = end - start - len(wanted)
        if missed > 0:  # more than the spool holds, or no longer in the journal (retention, damage)
            outbox.lost += missed
            why = []
            if over_budget:
                why.append(
                    f"more than its spool holds ({budget} bytes); they remain in the journal"
                )
            if unreadable:
                why.append(f"unreadable journal files ({'; '.join(unreadable)})")
            logger.error(
                "audit sink %s: %d records behind; %d of them LOST for it (%s)",
                outbox.sink.name,
                end - start,
                missed,
                ", ".join(why) or "no longer in the journal",
            )
        if wanted:
            outbox.spool.prepend(wanted, start)
            logger.warning(
                "audit sink %s: %d records it never received are re-sent from the journal",
                outbox.sink.name,
                len(wanted),
            )

    async def close(self, timeout: float | None = None) -> None:
        """Write what is queued, deliver what can be delivered, all within *timeout* seconds."""
        if self._closed:
            return
        self._closing = True
        self._closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.config.shutdown_timeout if timeout is None else timeout)
        self._wake.set()
        if self._nap is not None:  # the writer is letting a batch gather: no more waiting
            _finish(self._nap)
        if self._writer is not None:
            try:
                await asyncio.wait_for(
                    asyncio.shield(self._writer), max(0.0, deadline - loop.time())
                )
            except TimeoutError:
                self._writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._writer
        if self._inflight_jobs:
            # The writer is gone, not the I/O (it awaits its jobs shielded): account for every batch
            # handed to the I/O thread before the outboxes close. The journal's close below, on the
            # same thread, waits for them anyway.
            await asyncio.wait(list(self._inflight_jobs))
        if self._queue:
            self._lose(len(self._queue), "the shutdown timeout passed before they were written")
            self._queue.clear()
        for _, _, future in self._tickets:
            if not future.done():
                future.set_result(False)
        self._tickets.clear()
        if self._timer is not None:
            self._timer.cancel()
        closed = await asyncio.gather(
            *(o.close(deadline) for o in self.outboxes), return_exceptions=True
        )
        for outbox, error in zip(self.outboxes, closed, strict=True):
            if isinstance(error, Exception):  # the journal must still be closed
                logger.error("audit sink %s: closing failed", outbox.sink.name, exc_info=error)
        if self.journal is not None:
            journal = self.journal
            await loop.run_in_executor(
                self._io, partial(journal.close, max(0.1, deadline - loop.time()))
            )
        self._io.shutdown(wait=True)
        self._lock.release()  # after the journal and every spool are closed
        logger.info(
            "audit trail closed: %d written, %d lost, last seq %d",
            self.written,
            self.lost,
            self.chain.last_seq,
        )

    # -- the request path ------------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        """False when new requests must be refused (``deny`` policy and records cannot be stored)."""
        if self.config.on_failure is FailurePolicy.ALLOW:
            return True
        if self._closing or not self._storable:
            return False
        if len(self._queue) >= self.config.queue_size:
            return False
        return all(o.storable for o in self.outboxes)

    @property
    def durable_on_await(self) -> bool:
        """True when awaiting :meth:`submit`'s future means the record is on disk (fsync always)."""
        return self._fsync_always

    def submit(self, event: AuditEvent) -> asyncio.Future[bool]:
        """Queue one event; never blocks. The future resolves when the record is stored.

        Events submitted before the writer takes its next batch share one future (cheaper than a
        future each); it resolves ``True`` when all of them are stored, ``False`` if any is lost.
        Await it through ``asyncio.shield``: cancelling an awaiter cancels the shared future.
        """
        self.submitted += 1
        limit = self.config.queue_size
        if self.config.on_failure is FailurePolicy.DENY:
            limit *= 2  # requests admitted before accepting turned False still get their record
        if self._closing or len(self._queue) >= limit:
            self._lose(1, "submitted after close" if self._closing else "the audit queue is full")
            lost: asyncio.Future[bool] = (self._loop or asyncio.get_running_loop()).create_future()
            lost.set_result(False)
            return lost
        self._queue.append(event)
        index = self._accepted
        self._accepted = index + 1
        ticket = self._open_ticket
        if ticket is None:
            ticket = (self._loop or asyncio.get_running_loop()).create_future()
            self._open_ticket = ticket
            self._tickets.append([index, index, ticket])
        else:
            self._tickets[-1][1] = index
        self._wake.set()
        if self._nap is not None and len(self._queue) >= self.config.batch_size:
            _finish(self._nap)  # a full batch waits: the writer's linger is over
        return ticket

    async def drain(self, *, sinks: bool = False) -> None:
        """Wait until everything submitted is written (and, with *sinks*, delivered everywhere)."""
        # Several tasks and a thread move these counters: polling is the simple, honest wait.
        while self._queue or self._jobs or (sinks and not all(o.idle for o in self.outboxes)):  # noqa: ASYNC110
            await asyncio.sleep(0.005)

    def _lose(self, count: int, why: str) -> None:
        self.lost += count
        now = time.monotonic()
        if now - self._last_loss_log >= 1.0:
            self._last_loss_log = now
            logger.error("audit: %d records LOST (%s); %d lost in total", count, why, self.lost)

    # -- the writer ------------------------------------------------------------------------------

    def _render(self, event: AuditEvent) -> bytes:
        try:
            return self.renderer.render(event)
        except Exception as exc:  # a renderer bug must not lose the record
            logger.exception("audit: rendering failed; writing a minimal record")
            return fallback_record(event, exc)

    async def _write_loop(self) -> None:
        """Render and link on the event loop; the I/O thread only writes and syncs.

        Hashing stays on this thread on purpose: SHA-256 releases the GIL for each record over
        2 KiB, and a second thread taking the GIL back hundreds of times a batch costs more than
        the hashing (measured in bench/audit.py). The I/O thread gets one joined buffer a batch.
        """
        loop = asyncio.get_running_loop()
        jobs: deque[asyncio.Future[Any]] = deque()
        batch_size = self.config.batch_size
        # Every batch is a round trip to the I/O thread, two thread wake-ups that cost more CPU
        # than rendering a record (about 200 µs a batch on a small VM): under moderate load,
        # records taken as they come make batches of one or two. So batches are taken at most
        # once per linger unless a full one is waiting. Not under fsync always, where each
        # response waits for its batch.
        linger = 0.0 if self._fsync_always else self.config.batch_linger
        taken_at = -linger
        queue = self._queue
        render = self._render
        while True:
            if queue and linger and len(queue) < batch_size and not self._closing:
                wait = taken_at + linger - loop.time()
                if wait > 0:
                    # asyncio.sleep, but close() can cut it short (it finishes _nap).
                    nap = self._nap = loop.create_future()
                    timer = loop.call_later(wait, _finish, nap)
                    await nap
                    timer.cancel()
                    self._nap = None
                    continue
            if not queue:
                if jobs:
                    # Shielded: cancelling the writer (a close timeout) must not cancel the I/O.
                    await asyncio.shield(jobs.popleft())
                    continue
                if self._closing:
                    if self.signer is not None and self.signer.pending:
                        self._checkpoint(loop, jobs, final=True)
                        continue
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            count = min(batch_size, len(queue))
            taken_at = loop.time()
            self._open_ticket = None  # later submissions get a new future
            first = self._taken
            self._taken += count
            # Render a run of records, then hash the run: SHA-256 of a 3 KB record costs about
            # 2 µs while its code stays hot, twice that when every hash follows a render. A run of
            # 64 bodies (~190 KB) still sits in the CPU's L2 cache when it is hashed.
            # The lines are never copied one by one: the chain appends each line's pieces and the
            # batch is joined once.
            extend = self.chain.extend
            popleft = queue.popleft
            pieces: list[bytes | memoryview] = []
            for start in range(0, count, _LINK_RUN):
                extend(pieces, [render(popleft()) for _ in range(min(_LINK_RUN, count - start))])
            lines = count + self._sign(pieces, count)
            self._dispatch(loop, jobs, (first, first + count), b"".join(pieces), lines, count)
            if len(jobs) >= _MAX_JOBS:
                await asyncio.shield(jobs.popleft())
            elif count == batch_size:
                await asyncio.sleep(0)  # let requests run between large batches

    def _checkpoint(
        self, loop: asyncio.AbstractEventLoop, jobs: deque[asyncio.Future[Any]], final: bool = False
    ) -> None:
        """Write a signed checkpoint on its own when one is due (or, *final*, pending)."""
        pieces: list[bytes | memoryview] = []
        lines = self._sign(pieces, 0, final=final)
        self._dispatch(loop, jobs, None, b"".join(pieces), lines, 0)

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

    def _dispatch(
        self,
        loop: asyncio.AbstractEventLoop,
        jobs: deque[asyncio.Future[Any]],
        span: tuple[int, int] | None,
        data: bytes,
        lines: int,
        count: int,
    ) -> None:
        """Hand *data*, *lines* linked lines of which *count* are records, to the I/O thread."""
        if not lines:
            return
        first = self.chain.next_seq - lines
        position = self.chain.position() if self.journal is None else None
        job = loop.run_in_executor(self._io, self._store, data, lines, first, position)
        self._jobs += 1
        self._inflight_records += count
        self._inflight_jobs.add(job)
        job.add_done_callback(partial(self._stored, span, count, data, first))
        jobs.append(job)

    def _store(self, data: bytes, lines: int, first: int, position: tuple[int, str] | None) -> bool:
        """On the I/O thread: write to the journal (or its spool); True when stored."""
        stored = True
        journal = self.journal
        if journal is not None:
            try:
                if self._journal_failed:
                    self._drain_journal_spool()
                    self._journal_failed = False
                    logger.warning("audit journal %s is writable again", journal.path)
                journal.write_data(data, lines, first)
            except OSError as exc:
                if not self._journal_failed:
                    logger.error("audit journal %s failed (%s); spooling", journal.path, exc)
                self._journal_failed = True
                stored = self._spool_journal(split_lines(data), first)
        elif position is not None:
            try:
                _write_state(self.config.directory / "chain.tail", position)
            except OSError as exc:
                logger.error("audit: cannot save the chain position: %s", exc)
        self._storable = stored
        return stored

    def _spool_journal(self, lines: list[bytes], first: int) -> bool:
        spool = self._journal_spool
        if spool is None:
            return False
        try:
            spool.append(lines, first)
            if self._fsync_always:
                spool.sync()
        except OSError as exc:
            logger.error("audit journal spool %s failed too: %s", spool.directory, exc)
            return False
        self.spooled += len(lines)
        return True

    def _stored(
        self,
        span: tuple[int, int] | None,
        count: int,
        data: bytes,
        first: int,
        job: asyncio.Future[bool],
    ) -> None:
        """Back on the event loop: resolve the futures, hand the lines to the outboxes."""
        self._jobs -= 1
        self._inflight_records -= count
        self._inflight_jobs.discard(job)
        if job.cancelled():  # the I/O thread never ran it (the executor went away first)
            logger.error("audit: a batch of %d records was cancelled before it was stored", count)
            stored = False
        else:
            try:
                stored = job.result()
            except Exception:  # a bug on the I/O thread: count the loss, never hide it
                logger.exception("audit: storing a batch failed")
                stored = False
        if stored:
            self.written += count
        else:
            self._lose(count, "the journal and its spool could not be written")
        if span is not None:
            self._settle(span, stored)
        if self.outboxes:
            lines = split_lines(data)
            for outbox in self.outboxes:
                outbox.offer(lines, first)
        spills = [(o, s) for o in self.outboxes if (s := o.take_spill()) is not None]
        if spills:
            loop = asyncio.get_running_loop()
            spill_job = loop.run_in_executor(
                self._io, lambda: [outbox.spill(*spill) for outbox, spill in spills]
            )
            spill_job.add_done_callback(partial(self._spilled, spills))

    def _settle(self, span: tuple[int, int], stored: bool) -> None:
        """Resolve every future whose events are all written now (batches complete in order)."""
        first, end = span
        if not stored:
            self._failed.append((first, end))
        tickets = self._tickets
        while tickets and tickets[0][1] < end:
            low, high, future = tickets.popleft()
            ok = not any(a <= high and low < b for a, b in self._failed)
            if not future.done():
                future.set_result(ok)
        horizon = tickets[0][0] if tickets else end
        if self._failed:
            self._failed = [(a, b) for a, b in self._failed if b > horizon]

    @staticmethod
    def _spilled(
        spills: list[tuple[Outbox, tuple[list[bytes], int]]],
        job: asyncio.Future[list[OSError | None]],
    ) -> None:
        errors: list[OSError | None]
        if job.cancelled():
            errors = [OSError("the spill was cancelled") for _ in spills]
        else:
            try:
                errors = job.result()
            except Exception as exc:  # pragma: no cover - spill() catches OSError itself
                errors = [OSError(str(exc)) for _ in spills]
        for (outbox, (lines, _)), error in zip(spills, errors, strict=True):
            outbox.spilled(lines, error)

    async def _tick(self) -> None:
        """Interval fsync, and time-based checkpoints while the trail is idle."""
        loop = asyncio.get_running_loop()
        journal = self.journal
        interval = 1.0
        if journal is not None and journal.config.fsync is FsyncPolicy.INTERVAL:
            interval = min(interval, journal.config.fsync_interval)
        while True:
            await asyncio.sleep(interval)
            if journal is not None and not self._journal_failed:
                try:
                    await loop.run_in_executor(self._io, journal.sync_due)
                except OSError as exc:
                    logger.error("audit journal sync failed: %s", exc)
            signer = self.signer
            if signer is not None and signer.due() and not self._queue and not self._closing:
                self._checkpoint(loop, deque())

    def describe(self) -> str:
        """One line for startup logs: the format, where records go and where the chain stands."""
        parts = []
        if self.journal is not None:
            journal = self.journal.config
            parts.append(f"file {journal.path} (fsync {journal.fsync.value})")
        for outbox in self.outboxes:
            sink = outbox.sink
            parts.append(f"{sink.kind} {sink.name}")
        signed = ", signed checkpoints" if self.signer is not None else ""
        return (
            f"{self.config.format.value} records to {', '.join(parts) or 'nowhere'}{signed}; "
            f"chain at seq {self.chain.next_seq}; on failure: {self.config.on_failure.value}"
        )

    # -- counters --------------------------------------------------------------------------------

    def stats(self) -> TrailStats:
        """A snapshot of every counter."""
        sinks: list[SinkStats] = []
        pending = len(self._queue) + self._inflight_records
        if self.journal is not None:
            sinks.append(
                SinkStats(
                    name=self.journal.name,
                    kind="file",
                    state="spooling" if self._journal_failed else "up",
                    delivered=self.written,
                    pending=pending,
                    spooled=self.spooled,
                    spool_bytes=max(0, self._journal_spool.bytes) if self._journal_spool else 0,
                    lost=self.lost,
                    rejected=0,
                    failures=0,
                )
            )
        sinks.extend(o.stats() for o in self.outboxes)
        return TrailStats(
            submitted=self.submitted,
            written=self.written,
            pending=pending,
            spooled=self.spooled,
            lost=self.lost,
            last_seq=self.chain.last_seq,
            accepting=self.accepting,
            sinks=tuple(sinks),
        )


def _read_state(path: Path) -> tuple[int, str]:
    try:
        seq_text, digest = path.read_text().split()
        if len(digest) == 64:
            return int(seq_text), digest
    except (OSError, ValueError):
        pass
    return -1, GENESIS


def _write_state(path: Path, position: tuple[int, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{position[0]} {position[1]}\n")
    os.replace(tmp, path)
