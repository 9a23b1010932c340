"""A sink's on-disk spool: record lines waiting for a sink that is down, in order, bounded.

Segments are files named by the sequence number of their first record, so a directory listing is
the delivery order; the delivery cursor (the last sequence number the sink acknowledged) is kept
beside them, so records read back after a restart are never delivered twice. Every method runs on
the trail's single I/O thread.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from aidr_gate.audit.chain import parse_link
from aidr_gate.audit.sinks.file import truncate, write_all
from aidr_gate.errors import AidrGateError

logger = logging.getLogger("aidr_gate.audit")

SEGMENT_BYTES = 16 * 1024 * 1024
_SUFFIX = ".spool"


class SpoolFull(AidrGateError, OSError):
    """The spool has reached its configured size (an ``OSError``, like the disk filling up)."""


class Spool:
    """Append at the tail, read and consume from the head."""

    def __init__(self, directory: Path, max_bytes: int, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._append_path: Path | None = None
        self._append_fd = -1
        self._append_size = 0
        self._head: Path | None = None
        self._offset = 0
        self.bytes = 0
        self.count = 0  # lines waiting

    def open(self) -> None:
        """Create the directory and count what is already spooled."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.bytes = 0
        self.count = 0
        for segment in self._segments():
            with open(segment, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    self.bytes += len(chunk)
                    self.count += chunk.count(b"\n")

    def _segments(self) -> list[Path]:
        return sorted(self.directory.glob("*" + _SUFFIX))

    @property
    def empty(self) -> bool:
        """True when nothing is left to read."""
        return self.bytes <= 0

    # -- cursor ----------------------------------------------------------------------------------

    def load_cursor(self) -> int | None:
        """The last sequence number the sink acknowledged, or ``None`` for a new sink."""
        try:
            return int((self.directory / "cursor").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def save_cursor(self, seq: int) -> None:
        """Record the last acknowledged sequence number (write and rename: never half written)."""
        tmp = self.directory / "cursor.tmp"
        tmp.write_text(f"{seq}\n")
        os.replace(tmp, self.directory / "cursor")

    # -- writing ---------------------------------------------------------------------------------

    def append(self, lines: Sequence[bytes], first_seq: int) -> None:
        """Append lines at the tail; raises :class:`SpoolFull` or ``OSError``."""
        data = b"".join(lines)
        if self.bytes + len(data) > self.max_bytes:
            raise SpoolFull(f"spool {self.directory} is full ({self.max_bytes} bytes)")
        if self._append_fd < 0 or self._append_size >= self.segment_bytes:
            self._close_append()
            self._append_path = self.directory / f"{first_seq:020d}{_SUFFIX}"
            self._append_fd = os.open(
                self._append_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640
            )
            self._append_size = os.fstat(self._append_fd).st_size
        try:
            write_all(self._append_fd, data)
        except OSError:  # a short write, then ENOSPC: leave no fragment to glue the next line to
            truncate(self._append_fd, self._append_size, self._append_path or self.directory)
            raise
        self._append_size += len(data)
        self.bytes += len(data)
        self.count += len(lines)

    def prepend(self, lines: Sequence[bytes], first_seq: int) -> None:
        """Write lines older than everything spooled as their own head segment (at shutdown)."""
        if not lines:
            return
        data = b"".join(lines)
        path = self.directory / f"{first_seq:020d}{_SUFFIX}"
        with open(path, "ab") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        self.bytes += len(data)
        self.count += len(lines)

    def sync(self) -> None:
        """Force the tail segment to disk."""
        if self._append_fd >= 0:
            os.fdatasync(self._append_fd)

    def _close_append(self) -> None:
        if self._append_fd >= 0:
            os.close(self._append_fd)
            self._append_fd = -1

    def first_seq(self) -> int | None:
        """The sequence number the oldest segment starts at, or ``None`` when empty."""
        segments = self._segments()
        if not segments:
            return None
        return int(segments[0].name[: -len(_SUFFIX)])

    # -- reading ---------------------------------------------------------------------------------

    def read(self, max_lines: int, max_bytes: int = 4 * 1024 * 1024) -> tuple[list[bytes], int]:
        """Up to *max_lines* complete lines from the head and the bytes they span (not consumed)."""
        while True:
            if self._head is None:
                segments = self._segments()
                if not segments:
                    self.bytes = self.count = 0
                    return [], 0
                self._head, self._offset = segments[0], 0
            try:
                with open(self._head, "rb") as handle:
                    handle.seek(self._offset)
                    chunk = handle.read(max_bytes)
            except FileNotFoundError:
                self._head = None
                continue
            end = chunk.rfind(b"\n") + 1
            if end == 0 and chunk and len(chunk) < max_bytes:
                if self._head == self._append_path:
                    return [], 0
                # A torn line at the end of an older segment (a crash mid-write): skip it.
                logger.warning("spool %s: skipping a torn line of %d bytes", self._head, len(chunk))
                self._offset += len(chunk)
                self.bytes -= len(chunk)
                continue
            if end == 0 and chunk:  # one line longer than max_bytes: read it whole
                with open(self._head, "rb") as handle:
                    handle.seek(self._offset)
                    chunk = handle.readline()
                end = len(chunk)
            if end == 0:
                if self._head == self._append_path:
                    self._close_append()
                    self._append_path = None
                self._head.unlink(missing_ok=True)
                self._head = None
                continue
            lines = chunk[:end].splitlines(keepends=True)[:max_lines]
            return lines, sum(len(line) for line in lines)

    def consume(self, size: int, lines: int) -> None:
        """Drop *size* bytes, *lines* whole lines returned by :meth:`read`, from the head."""
        self._offset += size
        self.bytes -= size
        self.count = max(0, self.count - lines)


def line_seq(line: bytes) -> int:
    """The sequence number of a record line (``-1`` for a line that has none)."""
    link = parse_link(line, check=False)
    return link.seq if link is not None else -1
