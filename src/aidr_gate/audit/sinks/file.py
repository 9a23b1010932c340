"""The rotating JSONL file sink: the trail's journal, written from one I/O thread.

Rotation by size and by age renames the active file to ``<stem>-<UTC stamp>-<first seq>.jsonl`` and
optionally compresses it (zstd or gzip) in the background. On start the chain's tail is recovered from the newest file;
an active file that ends in a torn record (a crash mid-write) is reported and rotated aside, so the
torn bytes stay where they are, as evidence, at the end of a closed file.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aidr_gate.audit.compression import SUFFIXES, compress_file
from aidr_gate.audit.reader import Tail, first_seq, read_tail
from aidr_gate.settings.audit import FileSinkConfig, FsyncPolicy

logger = logging.getLogger("aidr_gate.audit")

_ROTATED = re.compile(r"-(\d{8}T\d{6}Z)-(\d+)\.jsonl(\.gz|\.zst)?$")


@dataclass(frozen=True, slots=True)
class Recovery:
    """What was found on start: the chain's tail and any torn bytes."""

    tail: Tail | None
    torn: int


def write_all(fd: int, data: bytes) -> None:
    """Write all of *data* (``os.write`` may write less); raises ``OSError``."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def truncate(fd: int, size: int, path: Path) -> None:
    """Cut a file back to *size* bytes after a failed write (logged, not raised, if that fails)."""
    try:
        if os.fstat(fd).st_size > size:
            os.ftruncate(fd, size)
    except OSError as exc:
        logger.error("audit file %s: cannot cut a failed write back (%s)", path, exc)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def journal_stem(path: Path) -> str:
    """The active file's name less ``.jsonl``: what its rotated files' names start with."""
    name = path.name
    return name[: -len(".jsonl")] if name.endswith(".jsonl") else name


def first_seq_of(path: Path) -> int:
    """The first sequence number in a rotated file, from its name."""
    match = _ROTATED.search(path.name)
    return int(match.group(2)) if match else 0


def rotated_files(path: Path) -> list[Path]:
    """The rotated files of an active file path, oldest first (by first sequence number)."""
    stem = journal_stem(path)
    found: list[tuple[int, str, Path]] = []
    if not path.parent.is_dir():
        return []
    for entry in path.parent.iterdir():
        if not entry.name.startswith(stem + "-"):
            continue
        match = _ROTATED.search(entry.name)
        if match and entry.name[: match.start()] == stem:
            found.append((int(match.group(2)), match.group(1), entry))
    found.sort()
    return [p for _, _, p in found]


class FileJournal:
    """Appends record lines to the active file; rotates, fsyncs and compresses per configuration.

    Not thread-safe: the trail calls it from its single I/O thread only.
    """

    kind = "file"

    def __init__(self, config: FileSinkConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.name = config.name
        self.path = config.path
        self._clock = clock
        self._fd = -1
        self._size = 0
        self._opened = 0.0
        self._first_seq: int | None = None
        self._last_sync = 0.0
        self._dirty = False
        self._compressors: list[threading.Thread] = []
        self.written = 0

    # -- start -----------------------------------------------------------------------------------

    def recover(self) -> Recovery:
        """Open the journal and find where the chain ends (before the first write)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for part in self.path.parent.glob(glob.escape(journal_stem(self.path)) + "-*.part"):
            original = part.with_name(part.name.rsplit(".", 2)[0])
            if original.exists():  # a compression cut short: the original is intact
                part.unlink(missing_ok=True)
        torn = 0
        tail: Tail | None = None
        source: Path | None = None
        if self.path.exists() and self.path.stat().st_size > 0:
            tail = read_tail(self.path)
            source = self.path
            torn = tail.torn if tail is not None else self.path.stat().st_size
            if torn:
                logger.warning(
                    "audit file %s ends with a torn record (%d bytes) after seq %s; it is kept "
                    "and the file rotated",
                    self.path,
                    torn,
                    tail.seq if tail else "none",
                )
                self._first_seq = first_seq(self.path)
                self._rotate_closed(self._clock())
        if tail is None:
            for candidate in reversed(rotated_files(self.path)):
                tail = read_tail(candidate)
                if tail is not None:
                    source = candidate
                    break
        if tail is not None and not tail.valid:
            logger.error(
                "audit file %s: the last record (seq %d) does not match its hash; the chain "
                "continues from it, and 'aidr-gate audit verify' will report it",
                source,
                tail.seq,
            )
        self._open()
        if self._size > 0:
            self._first_seq = first_seq(self.path)
        return Recovery(tail, torn)

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._size = os.fstat(self._fd).st_size
        self._opened = self._clock()
        self._last_sync = self._opened
        _fsync_dir(self.path.parent)

    # -- writing ---------------------------------------------------------------------------------

    def write_data(self, data: bytes, count: int, first_seq: int) -> None:
        """Append *count* joined lines whose first sequence number is *first_seq*; rotate first
        when due. Raises ``OSError`` (and leaves nothing of *data* behind)."""
        if self._fd < 0:
            self._open()
        now = self._clock()
        config = self.config
        if self.rotation_due():
            self.rotate()
        if self._size == 0:
            self._first_seq = first_seq
        sync = config.fsync is FsyncPolicy.ALWAYS or (
            config.fsync is FsyncPolicy.INTERVAL and now - self._last_sync >= config.fsync_interval
        )
        try:
            write_all(self._fd, data)
            if sync:
                os.fdatasync(self._fd)
        except OSError:
            # A short write (then ENOSPC) leaves part of a record; the caller spools the whole
            # batch and writes it again later. Cut the file back so nothing is glued to that part.
            truncate(self._fd, self._size, self.path)
            raise
        self._size += len(data)
        self.written += count
        self._dirty = not sync
        if sync:
            self._last_sync = now

    def rotation_due(self) -> bool:
        """True when the active file has reached its size or age: the next write rotates."""
        config = self.config
        return self._size > 0 and (
            self._size >= config.max_bytes
            or (
                config.rotate_seconds is not None
                and self._clock() - self._opened >= config.rotate_seconds
            )
        )

    def sync(self) -> None:
        """Force written records to disk."""
        if self._fd >= 0 and self._dirty:
            os.fdatasync(self._fd)
            self._dirty = False
        self._last_sync = self._clock()

    def sync_due(self) -> None:
        """The interval policy's timer: sync when the interval has passed."""
        if (
            self.config.fsync is FsyncPolicy.INTERVAL
            and self._clock() - self._last_sync >= self.config.fsync_interval
        ):
            self.sync()

    # -- rotation --------------------------------------------------------------------------------

    def rotate(self) -> Path | None:
        """Close the active file under its rotated name and start a new one."""
        if self._fd < 0 or self._size == 0:
            return None
        os.fdatasync(self._fd)
        os.close(self._fd)
        self._fd = -1
        target = self._rotate_closed(self._clock())
        self._open()
        return target

    def _rotate_closed(self, now: float) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        first = self._first_seq if self._first_seq is not None else 0
        target = self.path.with_name(f"{journal_stem(self.path)}-{stamp}-{first:012d}.jsonl")
        os.replace(self.path, target)
        _fsync_dir(self.path.parent)
        self._size = 0
        self._first_seq = None
        self._dirty = False
        if self.config.compress:
            worker = threading.Thread(
                target=_compress,
                args=(target, self.config.compression, self.config.compress_level),
                name="aidr-audit-compress",
                daemon=True,
            )
            worker.start()
            self._compressors = [t for t in self._compressors if t.is_alive()] + [worker]
        self._expire(now)
        return target

    def _expire(self, now: float) -> None:
        days = self.config.retention_days
        if days is None:
            return
        horizon = now - days * 86_400
        for old in rotated_files(self.path):
            try:
                if old.stat().st_mtime < horizon:
                    old.unlink()
                    logger.info("audit file %s is older than %d days: removed", old, days)
            except OSError:
                continue

    def close(self, timeout: float = 10.0) -> None:
        """Sync and close; wait (bounded) for background compression."""
        if self._fd >= 0:
            try:
                os.fdatasync(self._fd)
            except OSError as exc:
                logger.error("audit file %s: final sync failed: %s", self.path, exc)
            finally:
                os.close(self._fd)
                self._fd = -1
        deadline = time.monotonic() + timeout
        for worker in self._compressors:
            worker.join(max(0.0, deadline - time.monotonic()))


def _compress(path: Path, codec: str = "zstd", level: int = 1) -> None:
    """Compress a rotated file beside it, on a thread of its own (zstd and zlib release the GIL
    while they compress a block, so the serving threads are not held up)."""
    try:
        compress_file(path, codec, level)
        path.unlink()
        _fsync_dir(path.parent)
    except OSError as exc:
        logger.error("could not compress audit file %s: %s (left uncompressed)", path, exc)
        for suffix in SUFFIXES.values():
            path.with_name(path.name + suffix + ".part").unlink(missing_ok=True)
