"""Reading audit files for replay: rotated and compressed, in chain order, checked as read.

Files are ordered by the first sequence number they hold (as ``audit verify`` orders them) and read
in large blocks through the audit package's file reader (``audit.reader.FileLines``), so a million
records cost a few hundred reads, not a million. Every line's hash is
recomputed as it goes by (``chain.parse_link``) and the sequence is followed inside each file; each
file's first and last links are then matched across files. Where the chain does not hold, the files
around the break are handed to the audit package's verifier (``verify_files``), so the warnings
name the break exactly as ``aidr-gate audit verify`` would. The records are replayed all the same:
a warning says the trail may have been edited, not that the decisions in it are unreadable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aidr_gate.audit.chain import GENESIS, parse_link
from aidr_gate.audit.compression import READ_ERRORS
from aidr_gate.audit.reader import BLOCK as BLOCK  # re-exported: replay.run reads with it
from aidr_gate.audit.reader import FileLines, first_seq
from aidr_gate.audit.verify import Finding, chains_of, verify_files


@dataclass(slots=True)
class FileChain:
    """One file's part of the chain as read: its first and last links, and whether it holds."""

    path: Path
    size: int = 0
    lines: int = 0
    chained: int = 0
    first_seq: int | None = None
    first_prev: str | None = None
    last_seq: int | None = None
    last_hash: str | None = None
    broken: bool = False  # a changed or unchained line, a gap inside the file, a torn end
    torn: bool = False
    error: str | None = None  # the file could not be read (to the end)


def order_files(paths: Sequence[Path]) -> list[Path]:
    """Files ordered by the first sequence number they hold (files without one go last)."""
    keyed = []
    for index, path in enumerate(paths):
        seq = first_seq(path)
        keyed.append((seq if seq is not None else 1 << 62, index, path))
    keyed.sort(key=lambda item: (item[0], item[1]))
    return [path for _, _, path in keyed]


def read_file(
    chain: FileChain,
    *,
    block: int = BLOCK,
    on_bytes: Callable[[int], None] | None = None,
) -> Iterator[bytes]:
    """Every complete line of ``chain.path`` (without its newline), checking the chain inside it.

    A torn final line (a write cut short) is not yielded. Read errors end the file and are noted
    in ``chain.error``; *on_bytes* hears how far into the (compressed) file the reading is.
    """
    expected: int | None = None
    prev_hash = ""
    reader = FileLines(chain.path, block=block, on_bytes=on_bytes)
    try:
        for lines in reader.blocks():
            for line in lines:
                link = parse_link(line)
                if link is None:
                    chain.broken = True
                else:
                    if not link.valid:
                        chain.broken = True
                    if expected is None:
                        chain.first_seq, chain.first_prev = link.seq, link.prev
                    elif link.seq != expected or link.prev != prev_hash:
                        chain.broken = True
                    expected = link.seq + 1
                    prev_hash = link.hash
                    chain.chained += 1
                yield line
            chain.lines += len(lines)
        if reader.torn:
            chain.torn = chain.broken = True
    except READ_ERRORS as exc:
        chain.error = f"{type(exc).__name__}: {exc}"
        chain.broken = True
    if expected is not None:
        chain.last_seq, chain.last_hash = expected - 1, prev_hash


def suspects(chains: Sequence[FileChain]) -> list[int]:
    """Indices of the files around every place the chain does not hold (in file order)."""
    out: set[int] = set()
    previous: tuple[int, FileChain] | None = None
    for index, chain in enumerate(chains):
        if chain.broken:
            out.add(index)
        if chain.first_seq is None:
            continue
        if previous is None:
            if chain.first_seq != 0 or chain.first_prev != GENESIS:
                out.add(index)  # earlier records were not given: verify says so ("start")
        else:
            before_index, before = previous
            if before.last_seq is None or (
                chain.first_seq != before.last_seq + 1 or chain.first_prev != before.last_hash
            ):
                out.update((before_index, index))
        previous = (index, chain)
    return sorted(out)


def chain_findings(chains: Sequence[FileChain]) -> list[Finding]:
    """The chain's problems and warnings as the audit verifier names them; empty when it holds."""
    found: list[Finding] = []
    if not chains:
        return found
    first = str(chains[0].path)
    for run in _runs(suspects(chains)):
        result = verify_files([chains[i].path for i in run])
        # "start" is news only for the first file given: later files begin mid-chain.
        named = [f for f in result.findings if f.kind != "start" or f.file == first]
        if not named:
            named.append(
                Finding(
                    "unverified",
                    str(chains[run[-1]].path),
                    0,
                    None,
                    "the chain check while reading flagged this file; run aidr-gate audit verify",
                    "warning",
                )
            )
        found.extend(named)
    return found


def _runs(indices: list[int]) -> list[list[int]]:
    """Contiguous runs of file indices (each is verified on its own, as one stretch of chain)."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and runs[-1][-1] == index - 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs


@dataclass(slots=True)
class AuditReader:
    """Iterates the record lines of audit files in chain order; see the module docstring.

    Iterating yields ``(line, file_index, line_number)``; afterwards :attr:`chains` holds each
    file's chain summary and :meth:`findings` names every break.
    """

    paths: list[Path]
    block: int = BLOCK
    chains: list[FileChain] = field(default_factory=list)
    # Files per chain (per_process slots), in order; open() gives at least one (all the files).
    slots: list[int] = field(default_factory=list)
    bytes_total: int = 0
    bytes_done: int = 0  # bytes of the files finished, plus the position in the current one

    @classmethod
    def open(cls, paths: Sequence[Path], *, block: int = BLOCK) -> AuditReader:
        """A reader over *paths*, ordered by their first sequence numbers (slot by slot, when
        they are the files of several ``per_process`` slots: one chain each)."""
        groups = [order_files(files) for files in chains_of([Path(p) for p in paths]).values()]
        ordered = [path for files in groups for path in files]
        reader = cls(ordered, block, slots=[len(files) for files in groups])
        reader.chains = [FileChain(p, size=_size(p)) for p in ordered]
        reader.bytes_total = sum(c.size for c in reader.chains)
        return reader

    def __iter__(self) -> Iterator[tuple[bytes, int, int]]:
        finished = 0

        def at(position: int) -> None:
            self.bytes_done = finished + position

        for index, chain in enumerate(self.chains):
            for number, line in enumerate(read_file(chain, block=self.block, on_bytes=at), 1):
                yield line, index, number
            finished += chain.size
            self.bytes_done = finished

    def findings(self) -> list[Finding]:
        """Every chain problem and warning (call after iterating), chain by chain."""
        found: list[Finding] = []
        start = 0
        for count in self.slots:
            found += chain_findings(self.chains[start : start + count])
            start += count
        return found


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
