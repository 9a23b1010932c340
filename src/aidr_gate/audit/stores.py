"""Where a trail's records are kept: the journal and its spool, the delivery outboxes, the locks.

:class:`TrailStores` owns everything on disk a trail writes: it claims a process slot and locks
the directory and the journal (``lock.py``: a hash chain has one writer), recovers the chain's
tail at the start (a torn last line, records left in the journal's spool), and stores each batch
the writer thread hands it: into the journal, or, while the journal cannot be written, into its
spool, drained back into place when the journal is writable again. Nothing here runs on the
event loop: recovery on the trail's spool thread, storing on the writer thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from aidr_gate.audit.chain import GENESIS, parse_link
from aidr_gate.audit.delivery import Outbox
from aidr_gate.audit.lock import (
    DIRECTORY_LOCK,
    MAX_SLOTS,
    AuditWriterBusy,
    WriterLock,
    lock_path_for_journal,
)
from aidr_gate.audit.reader import read_tail
from aidr_gate.audit.recovery import read_state, write_state
from aidr_gate.audit.sinks import DeliverySink
from aidr_gate.audit.sinks.file import FileJournal
from aidr_gate.audit.spool import Spool
from aidr_gate.settings.audit import (
    AuditConfig,
    FileSinkConfig,
    FsyncPolicy,
    HttpSinkConfig,
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


class TrailStores:
    """The journal, its spool, the outboxes and the writer lock of one trail (module docstring)."""

    def __init__(
        self,
        config: AuditConfig,
        io: ThreadPoolExecutor,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._io = io
        self._clock = clock
        self.lock = WriterLock()
        self.journal_failed = False  # the journal failed its last write: records go to its spool
        self.storable = True  # False when the last batch could be stored nowhere
        self.spooled = 0  # records the journal had to spool
        self.recovered_torn = 0
        self.build(config)

    def build(self, config: AuditConfig) -> None:
        """The journal, its spool and the delivery outboxes for *config* (nothing opened yet)."""
        self.config = config
        journal_config = config.journal
        self.journal = FileJournal(journal_config, clock=self._clock) if journal_config else None
        self.journal_spool = (
            Spool(config.spool_directory / journal_config.name, journal_config.spool_max_bytes)
            if journal_config
            else None
        )
        self.fsync_always = (
            journal_config is not None and journal_config.fsync is FsyncPolicy.ALWAYS
        )
        self.outboxes: list[Outbox] = []
        for sink_config in config.sinks:
            if isinstance(sink_config, FileSinkConfig):
                continue
            spool = Spool(
                config.spool_directory / sink_config.name, sink_config.delivery.spool_max_bytes
            )
            self.outboxes.append(
                Outbox(build_sink(sink_config), sink_config.delivery, spool, self._io)
            )

    # -- the start: a slot, the locks, the chain's tail ---------------------------------------------

    def claim_slot(self) -> AuditConfig:
        """On the spool thread: the first process slot (``p0``, ``p1``, ...) no other process
        holds, locked (the caller rebuilds the stores for it, on the event loop).

        A restarted process takes the lowest free slot, so each slot's chain goes on across
        restarts, always written by one process at a time.
        """
        for slot in range(MAX_SLOTS):
            config = self.config.in_slot(slot)
            try:
                self.lock_stores(config)
            except AuditWriterBusy:
                continue
            logger.info("audit trail: this process writes slot p%d (%s)", slot, config.directory)
            return config
        raise AuditWriterBusy(
            f"all {MAX_SLOTS} process slots of the audit directory {self.config.directory} are "
            "held by other processes"
        )

    def lock_stores(self, config: AuditConfig) -> None:
        """Lock *config*'s directory and journal for this process; raise AuditWriterBusy."""
        try:
            directory = config.directory
            self.lock.acquire(directory / DIRECTORY_LOCK, f"the audit directory {directory}")
            journal = config.journal
            if journal is not None:
                path = journal.path
                self.lock.acquire(lock_path_for_journal(path), f"the audit journal {path}")
        except BaseException:
            self.lock.release()
            raise

    def recover(self) -> tuple[int, str]:
        """On the spool thread: the last (seq, hash) of the chain, from the journal or the state
        file.

        Locks the directory and the journal first (see ``lock.py``): nothing is read or written
        while another process may be writing.
        """
        self.config.directory.mkdir(parents=True, exist_ok=True)
        if not self.lock.held:  # a claimed process slot is locked already
            self.lock_stores(self.config)
        if self.journal is None:
            return read_state(self.config.directory / "chain.tail")
        recovery = self.journal.recover()
        self.recovered_torn = recovery.torn
        spool = self.journal_spool
        if spool is not None:
            spool.open()
            if not spool.empty:  # records the journal could not take before: put them in place
                self.drain_journal_spool()
        tail = recovery.tail
        if spool is not None and not spool.empty:
            raise OSError(f"audit journal {self.journal.path} cannot take its spooled records")
        if self.journal.written:  # the spool was drained into it: the tail moved
            tail = read_tail(self.journal.path) or tail
        if tail is None:
            return -1, GENESIS
        return tail.seq, tail.hash

    def drain_journal_spool(self) -> None:
        """Move what the journal's spool holds into the journal, in order."""
        spool = self.journal_spool
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

    # -- storing, on the writer thread ------------------------------------------------------------

    def store(self, data: bytes, lines: int, first: int, position: tuple[int, str] | None) -> bool:
        """Write one batch to the journal (or its spool); True when stored. Without a journal,
        save the chain's *position* instead."""
        stored = True
        journal = self.journal
        if journal is not None:
            try:
                if self.journal_failed:
                    self.drain_journal_spool()
                    self.journal_failed = False
                    logger.warning("audit journal %s is writable again", journal.path)
                journal.write_data(data, lines, first)
            except OSError as exc:
                if not self.journal_failed:
                    logger.error("audit journal %s failed (%s); spooling", journal.path, exc)
                self.journal_failed = True
                stored = self.spool_journal(split_lines(data), first)
        elif position is not None:
            try:
                write_state(self.config.directory / "chain.tail", position)
            except OSError as exc:
                logger.error("audit: cannot save the chain position: %s", exc)
        self.storable = stored
        return stored

    def spool_journal(self, lines: list[bytes], first: int) -> bool:
        """Keep a batch the journal refused in its spool; True when kept."""
        spool = self.journal_spool
        if spool is None:
            return False
        try:
            spool.append(lines, first)
            if self.fsync_always:
                spool.sync()
        except OSError as exc:
            logger.error("audit journal spool %s failed too: %s", spool.directory, exc)
            return False
        self.spooled += len(lines)
        return True
