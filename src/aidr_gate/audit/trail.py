"""The audit trail: the event loop's side of it, and the pieces it joins.

:meth:`AuditTrail.record` (the runtime's path) only appends the record's ``(decision, request)``
to the writer's queue and counts it; no lock, no future, unless the caller must wait for the
record: under ``fsync: always`` (answered means on disk) and, under ``on_failure: deny``, while
the queue is full (backpressure rather than a lost record). Then it returns a future shared by
the records queued before the writer takes its next batch (``tickets.py``). The writer thread
(``writer.py``) takes batches, renders each event, links it into the hash chain and hands the
batch to the stores (``stores.py``: the journal, its spool, the locks, recovery); each batch comes
back here once (:meth:`AuditTrail._stored`): counters, futures, every delivery sink's outbox gets
the same linked lines. A future resolves ``True`` once its records are stored as the journal's
fsync policy promises (``always``: on disk), ``False`` if one could be stored nowhere (counted as
lost and logged). With the ``deny`` failure policy, :attr:`AuditTrail.accepting` turns False while
records cannot be stored or the queue is full, and the middleware refuses new requests with 503
(``AuditUnavailable``): no audit, no access.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

from aidr_gate.audit.chain import Chain, Signer, load_private_key
from aidr_gate.audit.delivery import Outbox, SinkStats
from aidr_gate.audit.ecs import EcsRenderer
from aidr_gate.audit.ocsf import OcsfRenderer
from aidr_gate.audit.record import AuditEvent, Redactor, Renderer, RequestContext
from aidr_gate.audit.recovery import backfill
from aidr_gate.audit.sinks.file import FileJournal
from aidr_gate.audit.stores import TrailStores, build_sink, split_lines
from aidr_gate.audit.tickets import Tickets
from aidr_gate.audit.writer import SPOOL_THREAD, BatchWriter, name_thread
from aidr_gate.decision import Decision
from aidr_gate.errors import ConfigError, Problem
from aidr_gate.settings.audit import AuditConfig, FailurePolicy, RecordFormat

__all__ = ["AuditTrail", "TrailStats", "build_sink", "split_lines"]

logger = logging.getLogger("aidr_gate.audit")


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
        # Startup, and the delivery sinks' spools and cursors: a thread of their own.
        self._io = ThreadPoolExecutor(
            1,
            thread_name_prefix=SPOOL_THREAD,
            initializer=name_thread,
            initargs=(SPOOL_THREAD,),
        )
        self.stores = TrailStores(config, self._io, clock)
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
        self.writer = BatchWriter(config, renderer, self.stores, self.signer, self._stored)
        self._tickets = Tickets()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepted = 0  # index of the next record queued
        self._settled = 0  # records whose batch was stored or lost (counted on the event loop)
        self._started = False
        self._closing = False
        self._closed = False
        self.submitted = 0
        self.written = 0
        self.lost = 0
        self._last_loss_log = 0.0

    # -- the pieces, as callers name them ---------------------------------------------------------

    @property
    def journal(self) -> FileJournal | None:
        """The file sink's journal, if any."""
        return self.stores.journal

    @property
    def outboxes(self) -> list[Outbox]:
        """The delivery sinks' outboxes."""
        return self.stores.outboxes

    @property
    def chain(self) -> Chain:
        """The hash chain (advanced by the writer thread)."""
        return self.writer.chain

    @property
    def recovered_torn(self) -> int:
        """Torn lines the start found at the journal's end."""
        return self.stores.recovered_torn

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover the chain's tail, drain leftover spools into place, start the workers."""
        if self._started:
            return
        loop = asyncio.get_running_loop()
        self._loop = loop
        stores = self.stores
        try:
            if self.config.per_process:
                stores.build(await loop.run_in_executor(self._io, stores.claim_slot))
                self.config = stores.config
            seq, digest = await loop.run_in_executor(self._io, stores.recover)
            logger.info(
                "audit trail: chain continues at seq %d (%s sinks)",
                seq + 1,
                1 + len(stores.outboxes) if stores.journal else len(stores.outboxes),
            )
            for outbox in stores.outboxes:
                await outbox.open(seq)
                if stores.journal is not None:
                    await loop.run_in_executor(self._io, backfill, stores.journal, outbox, seq)
                await outbox.start()
        except BaseException:
            await self._abandon_start()
            raise
        self.writer.start(loop, seq + 1, digest)
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
        self.stores.lock.release()

    async def close(self, timeout: float | None = None) -> None:
        """Write what is queued, deliver what can be delivered, all within *timeout* seconds."""
        if self._closed:
            return
        self._closing = True
        self._closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.config.shutdown_timeout if timeout is None else timeout)
        await self.writer.stop(deadline)
        queue = self.writer.queue
        if queue:
            left = len(queue)
            queue.clear()
            self._settled += left
            self._lose(left, "the shutdown timeout passed before they were written")
        self._tickets.abandon()
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
        self.stores.lock.release()  # after the journal and every spool are closed
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
        if self._closing or not self.stores.storable:
            return False
        if len(self.writer.queue) >= self.config.queue_size:
            return False
        outboxes = self.stores.outboxes  # none by default: no generator on the request path
        return not outboxes or all(o.storable for o in outboxes)

    @property
    def durable_on_await(self) -> bool:
        """True when awaiting :meth:`submit`'s future means the record is on disk (fsync always)."""
        return self.stores.fsync_always

    @property
    def backlogged(self) -> bool:
        """True when a request must wait for its record to be stored before it is answered.

        Under ``deny``, past ``queue_size`` records waiting: backpressure instead of a lost
        record (new requests are refused meanwhile: :attr:`accepting` is False).
        """
        return (
            self.config.on_failure is FailurePolicy.DENY
            and len(self.writer.queue) >= self.config.queue_size
        )

    def record(
        self, decision: Decision, request: RequestContext | None
    ) -> asyncio.Future[bool] | None:
        """Queue one record; never blocks. A future to await when the caller must wait for it
        (``fsync: always``, or a backlog under ``deny``), else None.

        The future is shared by the records queued before the writer takes its next batch
        (``tickets.py``): await it through ``asyncio.shield``, as cancelling an awaiter would
        cancel the others' wait. It resolves ``True`` when they are all stored, ``False`` if
        one is lost. Under ``allow`` a full queue loses the record (counted).
        """
        return self._queue((decision, request), False)

    def submit(self, event: AuditEvent) -> asyncio.Future[bool]:
        """Queue one event and return its future, whatever the durability policy (see
        :meth:`record`; for callers that wait for every record)."""
        future = self._queue(event, True)
        if future is None:  # pragma: no cover - asked for one, _queue always makes it
            raise RuntimeError("the audit trail made no future for a submitted event")
        return future

    def _queue(
        self, item: tuple[Decision, RequestContext | None] | AuditEvent, wait: bool
    ) -> asyncio.Future[bool] | None:
        self.submitted += 1
        writer = self.writer
        queue = writer.queue
        config = self.config
        full = len(queue) >= config.queue_size
        if self._closing or (full and config.on_failure is FailurePolicy.ALLOW):
            self._lose(1, "submitted after close" if self._closing else "the audit queue is full")
            if not wait and not self.stores.fsync_always:
                return None
            lost: asyncio.Future[bool] = (self._loop or asyncio.get_running_loop()).create_future()
            lost.set_result(False)
            return lost
        index = self._accepted
        queue.append(item)
        self._accepted = index + 1
        future = None
        if wait or self.stores.fsync_always or len(queue) >= config.queue_size:
            # The last: a backlog under deny (allow lost the record above): backpressure.
            loop = self._loop or asyncio.get_running_loop()
            future = self._tickets.join(index, writer.taken, loop)
        if writer.wants_wake:
            writer.wake()
        return future

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
            self._tickets.settle(span[0], span[1], stored)
        outboxes = self.outboxes
        if outboxes:
            lines = split_lines(data)
            for outbox in outboxes:
                outbox.offer(lines, first)
            spills = [(o, s) for o in outboxes if (s := o.take_spill()) is not None]
            if spills:
                loop = asyncio.get_running_loop()
                spill_job = loop.run_in_executor(
                    self._io, lambda: [outbox.spill(*spill) for outbox, spill in spills]
                )
                spill_job.add_done_callback(partial(self._spilled, spills))

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
        stores = self.stores
        spool = stores.journal_spool
        if self.journal is not None:
            sinks.append(
                SinkStats(
                    name=self.journal.name,
                    kind="file",
                    state="spooling" if stores.journal_failed else "up",
                    delivered=self.written,
                    pending=pending,
                    spooled=stores.spooled,
                    spool_bytes=max(0, spool.bytes) if spool is not None else 0,
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
            spooled=stores.spooled,
            lost=self.lost,
            last_seq=self.chain.last_seq,
            accepting=self.accepting,
            sinks=tuple(sinks),
        )
