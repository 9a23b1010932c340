"""One writer per hash chain: an exclusive lock on the audit directory and on the journal.

Two processes appending to one chained journal interleave their records, and the chain breaks for
good: ``audit verify`` then reports tampering that never happened. It happens easily (uvicorn
``--workers 4``, vLLM ``--api-server-count 4``, two replicas sharing a volume), so the trail takes
an exclusive ``flock`` on a hidden lock file in its directory (which holds the spools, cursors and
chain state) and one beside the journal, and refuses to start when another process holds either.
The kernel drops the lock when its holder exits, SIGKILL included: a restarted process is never
locked out by a dead one. Where ``fcntl`` does not exist (Windows), there is no lock.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from aidr_gate.audit.sinks.file import journal_stem
from aidr_gate.errors import AidrGateError

if sys.platform != "win32":
    import fcntl

DIRECTORY_LOCK = ".aidr-gate.writer-lock"
# With ``audit.per_process``, process slots p0 .. p63 under the audit directory: one chain each.
MAX_SLOTS = 64


class AuditWriterBusy(AidrGateError, OSError):
    """Another process is writing this audit trail: a hash chain has one writer.

    An ``OSError`` too: the trail's start treats it as the audit store being unusable."""


def lock_path_for_journal(journal: Path) -> Path:
    """The lock file beside a journal. Its name never matches ``*.jsonl*``: shippers and scripts
    that glob for audit files (Python's glob included, which matches hidden names) skip it."""
    return journal.with_name(f".{journal_stem(journal)}.writer-lock")


class WriterLock:
    """Exclusive locks on files, held until :meth:`release` or the process ends."""

    def __init__(self) -> None:
        self._fds: list[int] = []

    def acquire(self, path: Path, what: str) -> None:
        """Lock *path* (created if missing) for this process; raise :class:`AuditWriterBusy`
        saying *what* is locked ("the audit directory /var/lib/...") when another process holds it."""
        if sys.platform == "win32":  # pragma: no cover - no flock
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise AuditWriterBusy(
                f"{what} is being written by another process{holder}: a hash chain has one writer. "
                "Set audit.per_process: true for one chain per process (slots p0, p1, ... under "
                "the directory), or give each process its own audit directory"
            ) from None
        except OSError:
            os.close(fd)
            raise
        with contextlib.suppress(OSError):  # who holds it, for the next one's message only
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fds.append(fd)

    @property
    def held(self) -> bool:
        """True while this object holds a lock."""
        return bool(self._fds)

    def release(self) -> None:
        """Let go of every lock this object holds."""
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the descriptor releases its flock
        self._fds.clear()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""
