"""Reading a published list's CSV file: bounded size, its encoding, rows with their line numbers.

Every list reader (OFAC's SDN set, the Consolidated Screening List) reads its files through here,
so a file that is too large, not text, or not CSV fails the same way: a :class:`ConfigError` naming
the file and line, which makes the store keep its last good lists.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from aidr_gate.errors import ConfigError, Problem

# The full SDN CSV set is about 10 MB and the full CSL CSV about 30 MB; past this it is not a list.
MAX_LIST_BYTES = 128 * 1024 * 1024
MAX_PROBLEMS = 20  # a file broken throughout is reported by its first problems, not all of them
# DOS end-of-file marker: OFAC's CSV files end with one.
_EOF_MARK = "\x1a"


@dataclass(frozen=True, slots=True)
class RawFile:
    """A list file's bytes as read, its digest, and its text."""

    path: str
    digest: str  # "sha256:<hex>" of the bytes
    text: str
    mtime: float


def read_list_file(path: str | Path) -> RawFile:
    """Read a list file; a missing, unreadable or oversized file is a :class:`ConfigError`."""
    name = str(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_LIST_BYTES + 1)
            mtime = Path(path).stat().st_mtime
    except OSError as exc:
        raise ConfigError(Problem(name, "", f"cannot read file: {exc.strerror or exc}")) from None
    if len(raw) > MAX_LIST_BYTES:
        raise ConfigError(Problem(name, "", f"file is larger than {MAX_LIST_BYTES} bytes"))
    if b"\x00" in raw:
        raise ConfigError(Problem(name, "", "not a text file (it holds NUL bytes)"))
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        # OFAC's and trade.gov's older files were written in Windows-1252.
        text = raw.decode("cp1252", errors="replace")
    return RawFile(name, "sha256:" + hashlib.sha256(raw).hexdigest(), text, mtime)


def rows(raw: RawFile) -> Iterator[tuple[int, list[str]]]:
    """The CSV rows of a file with the line each starts on; blank rows and the EOF mark skipped.

    Raises :class:`ConfigError` at the line where the CSV cannot be parsed.
    """
    reader = csv.reader(io.StringIO(raw.text.rstrip(_EOF_MARK + "\r\n") + "\n"), strict=True)
    start = 1
    try:
        for row in reader:
            line, start = start, reader.line_num + 1
            if row and any(cell.strip() for cell in row):
                yield line, row
    except csv.Error as exc:
        raise ConfigError(Problem(raw.path, "", f"not valid CSV: {exc}", reader.line_num)) from None


class ProblemList:
    """The problems of one file, capped at :data:`MAX_PROBLEMS`, raised together."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[Problem] = []
        self.count = 0

    def add(self, line: int | None, message: str) -> None:
        """Record one problem at *line*."""
        self.count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(self.path, "", message, line))

    def raise_if_any(self) -> None:
        """Raise :class:`ConfigError` with the problems found, naming how many were left out."""
        if not self.problems:
            return
        problems = list(self.problems)
        if self.count > len(problems):
            more = self.count - len(problems)
            problems.append(Problem(self.path, "", f"... and {more} more problem(s)"))
        raise ConfigError(problems)
