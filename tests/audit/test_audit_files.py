"""The journal file and the spool after a failed write: no fragment is left for the next record."""

from __future__ import annotations

from pathlib import Path

import pytest

from aidr_gate.audit import verify_files
from aidr_gate.audit.chain import Chain
from aidr_gate.audit.sinks.file import FileJournal
from aidr_gate.audit.spool import Spool
from aidr_gate.settings.audit import FileSinkConfig, FsyncPolicy
from support.audit_support import file_size_limit


def _lines(chain: Chain, count: int, pad: int = 200) -> list[bytes]:
    return [chain.link(b'{"pad":"%b"}' % (b"p" * pad)) for _ in range(count)]


@pytest.mark.parametrize("fsync", [FsyncPolicy.ALWAYS, FsyncPolicy.NEVER])
def test_a_short_write_leaves_no_fragment_in_the_journal(
    tmp_path: Path, fsync: FsyncPolicy
) -> None:
    path = tmp_path / "audit.jsonl"
    journal = FileJournal(FileSinkConfig(name="file", path=path, rotate_seconds=None, fsync=fsync))
    journal.recover()
    chain = Chain()
    journal.write_data(b"".join(_lines(chain, 3)), 3, 0)
    size = path.stat().st_size
    failed = _lines(chain, 4)
    with file_size_limit(size + 300), pytest.raises(OSError, match="too large"):
        journal.write_data(b"".join(failed), 4, 3)  # part of it fits, then the disk is "full"
    assert path.stat().st_size == size  # cut back to the last whole record
    # The trail spools the failed batch and writes it later, then carries on.
    journal.write_data(b"".join(failed), 4, 3)
    journal.write_data(b"".join(_lines(chain, 2)), 2, 7)
    journal.close()
    result = verify_files([path])
    assert result.ok, result.findings
    assert (result.records, result.last_seq, result.findings) == (9, 8, [])
    assert journal.written == 9


def test_a_short_write_leaves_no_fragment_in_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 1 << 20)
    spool.open()
    chain = Chain()
    first, second, third = _lines(chain, 3)
    spool.append([first], 0)
    with file_size_limit(len(first) + 50), pytest.raises(OSError, match="too large"):
        spool.append([second], 1)
    spool.append([third], 2)
    assert (spool.count, spool.bytes) == (2, len(first) + len(third))
    lines, used = spool.read(10)
    assert lines == [first, third]
    assert used == spool.bytes


@pytest.mark.parametrize("name", ["audit.jsonl", "audit.log", "gate[1].jsonl"])
def test_a_compression_cut_short_is_cleaned_up_whatever_the_file_name(
    tmp_path: Path, name: str
) -> None:
    path = tmp_path / name
    stem = name.removesuffix(".jsonl")
    rotated = tmp_path / f"{stem}-20250101T000000Z-000000000000.jsonl"
    rotated.write_bytes(b"".join(_lines(Chain(), 2)))
    part = tmp_path / f"{rotated.name}.gz.part"  # a crash while gzipping it
    part.write_bytes(b"\x1f\x8b")
    journal = FileJournal(FileSinkConfig(name="file", path=path, rotate_seconds=None))
    recovery = journal.recover()
    journal.close()
    assert not part.exists()
    assert rotated.exists()
    assert recovery.tail is not None
    assert recovery.tail.seq == 1
