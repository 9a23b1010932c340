"""Tamper tests: verify catches every edit of the audit files and points at file and line."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aidr_gate.audit import AuditTrail, verify_files
from aidr_gate.audit.chain import load_public_key
from aidr_gate.audit.sinks.file import rotated_files
from aidr_gate.settings.audit import SigningConfig
from support.audit_support import audit_files, event, file_config, lines, rehash, signing_key_files

PER_FILE = 10


def write_trail(
    directory: Path, count: int, *, compress: bool = False, **kwargs: object
) -> list[Path]:
    """Write *count* records through a real trail, rotating every ~PER_FILE records."""
    first, later = _lines()

    async def run() -> None:
        config = file_config(
            directory,
            max_bytes=len(first) + len(later) * (PER_FILE - 1) - 1,
            compress=compress,
            batch_size=1,
            **kwargs,  # type: ignore[arg-type]
        )
        trail = AuditTrail(config)
        await trail.start()
        for index in range(count):
            await trail.submit(event(index))
        await trail.close(10)

    asyncio.run(run())
    journal = directory / "audit.jsonl"
    return [*rotated_files(journal), journal]


def _lines() -> tuple[bytes, bytes]:
    """A file's first line (it carries the shared facts) and a later one."""
    from aidr_gate.audit import EcsRenderer
    from aidr_gate.audit.chain import Chain

    renderer = EcsRenderer()
    return Chain().link(renderer.render(event(0))), Chain().link(renderer.render(event(1)))


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    paths = write_trail(tmp_path, 35)
    assert len(paths) == 4  # three rotated files of 10 and the active file
    assert verify_files(paths).ok
    return paths


def change_byte(paths: list[Path]) -> None:
    data = lines(paths[1])
    data[4] = data[4].replace(b'"allow"', b'"alloW"', 1)
    paths[1].write_bytes(b"".join(data))


def change_and_rehash(paths: list[Path]) -> None:
    data = lines(paths[1])
    data[4] = rehash(data[4].replace(b'"SG"', b'"US"', 1))
    paths[1].write_bytes(b"".join(data))


def delete_line(paths: list[Path]) -> None:
    data = lines(paths[1])
    del data[4]
    paths[1].write_bytes(b"".join(data))


def swap_lines(paths: list[Path]) -> None:
    data = lines(paths[0])
    data[2], data[3] = data[3], data[2]
    paths[0].write_bytes(b"".join(data))


def insert_copy(paths: list[Path]) -> None:
    data = lines(paths[0])
    data.insert(6, data[1])
    paths[0].write_bytes(b"".join(data))


def insert_garbage(paths: list[Path]) -> None:
    data = lines(paths[0])
    data.insert(6, b'{"event":{"outcome":"success"},"note":"added later"}\n')
    paths[0].write_bytes(b"".join(data))


def truncate_rotated(paths: list[Path]) -> None:
    data = lines(paths[0])
    paths[0].write_bytes(b"".join(data[:7]))


def truncate_rotated_mid_line(paths: list[Path]) -> None:
    raw = paths[0].read_bytes()
    paths[0].write_bytes(raw[: len(raw) - len(lines(paths[0])[-1]) - 100])


def remove_rotated(paths: list[Path]) -> None:
    paths[1].unlink()


# (tamper, kind of the first error, file index where it is reported, line there)
CASES: list[tuple[Callable[[list[Path]], None], str, int, int]] = [
    (change_byte, "changed", 1, 5),
    (change_and_rehash, "changed", 1, 6),
    (delete_line, "removed", 1, 5),
    (swap_lines, "reordered", 0, 3),
    (insert_copy, "inserted", 0, 7),
    (insert_garbage, "changed", 0, 7),
    (truncate_rotated, "removed", 1, 1),
    (truncate_rotated_mid_line, "removed", 1, 1),
    (remove_rotated, "removed", 2, 1),
]


@pytest.mark.parametrize(
    ("tamper", "kind", "file_index", "line"), CASES, ids=[c[0].__name__ for c in CASES]
)
def test_verify_names_the_first_tampered_place(
    files: list[Path], tamper: Callable[[list[Path]], None], kind: str, file_index: int, line: int
) -> None:
    expected_file = str(files[file_index])
    tamper(files)
    present = [p for p in files if p.exists()]
    result = verify_files(list(reversed(present)))  # any order
    assert not result.ok
    first = result.errors[0]
    assert (first.kind, first.file, first.line) == (kind, expected_file, line), str(first)


def test_change_and_rehash_names_the_forged_record(files: list[Path]) -> None:
    change_and_rehash(files)
    first = verify_files(files).errors[0]
    assert f"{files[1]}:5" in first.message


def test_truncating_the_newest_file_mid_line_is_reported(files: list[Path]) -> None:
    raw = files[-1].read_bytes()
    files[-1].write_bytes(raw[:-40])
    result = verify_files(files)
    assert result.ok  # the chain up to the cut is intact ...
    torn = result.warnings[-1]
    assert torn.kind == "torn"  # ... and the cut is reported, with its place
    assert (torn.file, torn.line) == (str(files[-1]), 5)
    assert result.last_seq == 33


def test_files_in_any_order_and_compressed(tmp_path: Path) -> None:
    paths = write_trail(tmp_path, 25, compress=True)
    rotated = [p for p in audit_files(tmp_path) if p.name.endswith(".gz")]
    assert len(rotated) == 2
    result = verify_files([tmp_path / "audit.jsonl", *reversed(rotated)])
    assert result.ok, result.findings
    assert (result.records, result.first_seq, result.last_seq) == (25, 0, 24)
    assert result.findings == []
    # A change inside a compressed file is found just the same.
    data = gzip.decompress(rotated[1].read_bytes()).replace(b'"SG"', b'"US"', 1)
    rotated[1].write_bytes(gzip.compress(data))
    broken = verify_files([*rotated, tmp_path / "audit.jsonl"])
    assert broken.errors[0].kind == "changed"
    assert broken.errors[0].file == str(rotated[1])
    del paths


def test_a_truncated_gzip_file_is_an_error(tmp_path: Path) -> None:
    write_trail(tmp_path, 15, compress=True)
    rotated = [p for p in audit_files(tmp_path) if p.name.endswith(".gz")]
    rotated[0].write_bytes(rotated[0].read_bytes()[:200])
    result = verify_files(audit_files(tmp_path))
    assert not result.ok
    assert result.errors[0].kind == "unreadable"


def test_removing_the_oldest_file_is_reported_as_a_late_start(files: list[Path]) -> None:
    files[0].unlink()
    result = verify_files(files[1:])
    assert result.ok
    assert result.findings[0].kind == "start"
    assert result.first_seq == 10


@pytest.fixture
def signing_key(tmp_path: Path) -> tuple[Path, Path]:
    return signing_key_files(tmp_path)


def test_signed_checkpoints_prove_the_writer(
    tmp_path: Path, signing_key: tuple[Path, Path]
) -> None:
    private, public = signing_key
    directory = tmp_path / "trail"
    paths = write_trail(
        directory, 23, signing=SigningConfig(key_file=private, every_records=5, every_seconds=3600)
    )
    key = load_public_key(public)
    result = verify_files(paths, [key])
    assert result.ok, result.findings
    assert result.checkpoints == 5  # after 5, 10, 15, 20 records, and a final one at close
    assert result.last_seq is not None
    assert result.signed_upto == result.last_seq - 1
    other = Ed25519PrivateKey.generate().public_key()
    wrong = verify_files(paths, [other])
    assert wrong.errors[0].kind == "signature"
    # Without a key the chain still verifies; the checkpoints are counted.
    assert verify_files(paths).checkpoints == 5


def test_a_rewritten_chain_fails_the_signature(
    tmp_path: Path, signing_key: tuple[Path, Path]
) -> None:
    """A forger who rewrites every hash after an edit still cannot forge the checkpoint."""
    private, public = signing_key
    paths = write_trail(
        tmp_path / "t", 12, signing=SigningConfig(key_file=private, every_records=50)
    )
    data = b"".join(p.read_bytes() for p in paths)
    all_lines = data.splitlines(keepends=True)
    from aidr_gate.audit.chain import Chain

    chain = Chain()
    forged = []
    for raw in all_lines:
        body = raw[: raw.rindex(b',"chain":')] + b"}"
        # Every record edited and relinked; the checkpoint kept as signed (it cannot be re-signed).
        forged.append(chain.link(body.replace(b'"SG"', b'"US"')))
    target = tmp_path / "forged.jsonl"
    target.write_bytes(b"".join(forged))
    result = verify_files([target], [load_public_key(public)])
    assert not result.ok
    assert result.errors[0].kind == "changed"
    assert "checkpoint" in result.errors[0].message
