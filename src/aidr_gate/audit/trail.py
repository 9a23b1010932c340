"""The audit trail: a queue, one writer thread that renders and chains, the journal, the outboxes.

``submit()`` only appends to a queue and returns a future; it never waits for a sink, and it is all
the event loop does for a record. The writer thread (``writer.py``) takes batches, renders each
event, links it into the hash chain, appends the batch to the journal (the rotating file sink) and
fsyncs it per policy; every delivery sink's outbox gets the same linked lines. The future resolves
``True`` once the record is stored as the journal's fsync policy promises (``always``: on disk),
``False`` if it could be stored nowhere (counted as lost and logged). With the ``deny`` failure
policy, :attr:`AuditTrail.accepting` turns False while records cannot be stored or the queue is
full, and the middleware refuses new requests with 503 (``AuditUnavailable``): no audit, no
access. A full queue never loses a record under ``deny``: a request whose record finds it full
waits for it to be stored before it is answered (:attr:`AuditTrail.backlogged`), backpressure
rather than loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from aidr_gate.audit.chain import GENESIS, Chain, Signer, load_private_key, parse_link
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
from aidr_gate.audit.reader import read_tail
from aidr_gate.audit.record import AuditEvent, Redactor, Renderer
from aidr_gate.audit.recovery import backfill, read_state, write_state
from aidr_gate.audit.sinks import DeliverySink
from aidr_gate.audit.sinks.file import FileJournal
from aidr_gate.audit.spool import Spool
from aidr_gate.audit.writer import IO_THREAD, SPOOL_THREAD, WriterThread, name_thread
from aidr_gate.errors import ConfigError, Problem
from aidr_gate.settings.audit import (
    AuditConfig,
    FailurePolicy,
    FileSinkConfig,
    FsyncPolicy,
    HttpSinkConfig,
    RecordFormat,
    StdoutSinkConfig,
    SyslogSinkConfig,
)

logger = logging.getLogger("aidr_gate.audit")


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


class AuditTrail(WriterThread):
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
        self._settled = 0  # events whose batch was stored or lost (counted on the event loop)
        # The writer thread and the event loop meet here: the queue, the open ticket, the flags.
        self._cv = threading.Condition(threading.Lock())
        self._sleeping = False  # the writer waits for any record
        self._lingering = False  # the writer waits for a full batch or the end of its linger
        self._stop = False
        self._abandon = False  # close() timed out: the writer stops after the batch in hand
        # Startup, and the delivery sinks' spools and cursors: a thread of their own.
        self._io = ThreadPoolExecutor(
            1,
            thread_name_prefix=SPOOL_THREAD,
            initializer=name_thread,
            initargs=(SPOOL_THREAD,),
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: threading.Thread | None = None
        self._writer_done: asyncio.Future[None] | None = None
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
                    await loop.run_in_executor(self._io, backfill, self.journal, outbox, seq)
                await outbox.start()
        except BaseException:
            await self._abandon_start()
            raise
        self._writer_done = loop.create_future()
        self._writer = threading.Thread(target=self._writer_main, name=IO_THREAD, daemon=True)
        self._writer.start()
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
            return read_state(self.config.directory / "chain.tail")
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

    async def close(self, timeout: float | None = None) -> None:
        """Write what is queued, deliver what can be delivered, all within *timeout* seconds."""
        if self._closed:
            return
        self._closing = True
        self._closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.config.shutdown_timeout if timeout is None else timeout)
        with self._cv:  # no more lingering: write what is queued, then stop
            self._stop = True
            self._cv.notify()
        done = self._writer_done
        if done is not None:
            try:
                await asyncio.wait_for(asyncio.shield(done), max(0.0, deadline - loop.time()))
            except TimeoutError:
                with self._cv:
                    self._abandon = True
                # The batch in hand is finished, counted and handed to the sinks, never
                # abandoned half way; nothing after it is taken.
                await done
        if self._queue:
            left = len(self._queue)
            self._queue.clear()
            self._settled += left
            self._lose(left, "the shutdown timeout passed before they were written")
        for _, _, future in self._tickets:
            if not future.done():
                future.set_result(False)
        self._tickets.clear()
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

    @property
    def backlogged(self) -> bool:
        """True when a request must wait for its record to be stored before it is answered.

        Under ``deny``, past ``queue_size`` records waiting: backpressure instead of a lost
        record (new requests are refused meanwhile: :attr:`accepting` is False).
        """
        return (
            self.config.on_failure is FailurePolicy.DENY
            and len(self._queue) >= self.config.queue_size
        )

    def submit(self, event: AuditEvent) -> asyncio.Future[bool]:
        """Queue one event; never blocks. The future resolves when the record is stored.

        Events submitted before the writer takes its next batch share one future (cheaper than a
        future each); it resolves ``True`` when all of them are stored, ``False`` if any is lost.
        Await it through ``asyncio.shield``: cancelling an awaiter cancels the shared future.
        Under ``allow`` a full queue loses the record (counted); under ``deny`` the queue takes
        it and the caller waits (:attr:`backlogged`).
        """
        self.submitted += 1
        loop = self._loop or asyncio.get_running_loop()
        full = len(self._queue) >= self.config.queue_size
        if self._closing or (full and self.config.on_failure is FailurePolicy.ALLOW):
            self._lose(1, "submitted after close" if self._closing else "the audit queue is full")
            lost: asyncio.Future[bool] = loop.create_future()
            lost.set_result(False)
            return lost
        queue = self._queue
        with self._cv:
            queue.append(event)
            index = self._accepted
            self._accepted = index + 1
            ticket = self._open_ticket
            if ticket is None:
                ticket = self._open_ticket = loop.create_future()
                self._tickets.append([index, index, ticket])
            else:
                self._tickets[-1][1] = index
            # The writer is woken only when it sleeps, or when a full batch ends its linger: not
            # once per record.
            if self._sleeping or (self._lingering and len(queue) >= self.config.batch_size):
                self._cv.notify()
        return ticket

    async def drain(self, *, sinks: bool = False) -> None:
        """Wait until everything submitted is written (and, with *sinks*, delivered everywhere)."""
        # Two threads move these counters: polling is the simple, honest wait.
        while self._accepted > self._settled or (  # noqa: ASYNC110
            sinks and not all(o.idle for o in self.outboxes)
        ):
            await asyncio.sleep(0.005)

    def _lose(self, count: int, why: str) -> None:
        self.lost += count
        now = time.monotonic()
        if now - self._last_loss_log >= 1.0:
            self._last_loss_log = now
            logger.error("audit: %d records LOST (%s); %d lost in total", count, why, self.lost)

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
                write_state(self.config.directory / "chain.tail", position)
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
        stored: bool,
    ) -> None:
        """Back on the event loop: count, resolve the futures, hand the lines to the outboxes."""
        self._settled += count
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
        pending = self._accepted - self._settled
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
