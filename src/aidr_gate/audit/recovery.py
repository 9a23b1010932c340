"""What the trail does once at start: re-send the records a sink missed, keep a chain position.

After a crash, records a delivery sink only had in memory are re-sent from the journal (from the
sink's cursor on); those the journal no longer holds, or that exceed the sink's spool, are counted
as lost for it. A trail without a journal keeps its chain's position in ``chain.tail``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from aidr_gate.audit.chain import GENESIS, parse_link
from aidr_gate.audit.compression import READ_ERRORS
from aidr_gate.audit.delivery import Outbox
from aidr_gate.audit.reader import FileLines
from aidr_gate.audit.sinks.file import FileJournal, first_seq_of, rotated_files

logger = logging.getLogger("aidr_gate.audit")


def backfill(journal: FileJournal, outbox: Outbox, tail_seq: int) -> None:
    """On the spool thread: records a sink never received (lost from memory in a crash)."""
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
            lines = FileLines(path).lines()
        except READ_ERRORS as exc:
            unreadable.append(f"{path.name}: {exc}")
            continue
        for line in lines:
            link = parse_link(line, check=False)
            if link is not None and start <= link.seq < end:
                size += len(line) + 1
                if size > budget:
                    over_budget = True
                    break
                wanted.append(line + b"\n")
        if over_budget:
            break
    missed = end - start - len(wanted)
    if missed > 0:  # more than the spool holds, or no longer in the journal (retention, damage)
        outbox.lost += missed
        why = []
        if over_budget:
            why.append(f"more than its spool holds ({budget} bytes); they remain in the journal")
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


def read_state(path: Path) -> tuple[int, str]:
    try:
        seq_text, digest = path.read_text().split()
        if len(digest) == 64:
            return int(seq_text), digest
    except (OSError, ValueError):
        pass
    return -1, GENESIS


def write_state(path: Path, position: tuple[int, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{position[0]} {position[1]}\n")
    os.replace(tmp, path)
