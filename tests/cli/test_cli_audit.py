"""``aidr-gate audit verify``: exit codes and what it prints."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from aidr_gate.audit import AuditTrail, SigningConfig
from aidr_gate.cli import main
from support.audit_support import (
    audit_files,
    encrypted_key_file,
    event,
    file_config,
    signing_key_files,
)


def trail_files(
    directory: Path, count: int = 12, signing: SigningConfig | None = None
) -> list[Path]:
    async def run() -> None:
        trail = AuditTrail(file_config(directory, max_bytes=12_000, batch_size=2, signing=signing))
        await trail.start()
        for index in range(count):
            await trail.submit(event(index))
        await trail.close(5)

    asyncio.run(run())
    return audit_files(directory)


def test_verify_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = trail_files(tmp_path)
    assert len(files) > 1
    assert main(["audit", "verify", *map(str, reversed(files))]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ok: {len(files)} files, 12 records, seq 0..11")


def test_verify_names_the_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = trail_files(tmp_path)
    data = files[0].read_bytes().splitlines(keepends=True)
    del data[1]
    files[0].write_bytes(b"".join(data))
    assert main(["audit", "verify", *map(str, files)]) == 1
    captured = capsys.readouterr()
    assert f"FAILED: {len(files)} files, 11 records" in captured.out
    assert f"{files[0]}:2: removed: record(s) seq 1 are missing before seq 2" in captured.err


def test_verify_json_and_strict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = trail_files(tmp_path)
    with open(files[-1], "ab") as handle:
        handle.write(b'{"torn":')
    assert main(["audit", "verify", "--json", *map(str, files)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert report["findings"][0]["kind"] == "torn"
    assert main(["audit", "verify", "--strict", *map(str, files)]) == 1


def test_verify_with_public_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    private, public = signing_key_files(tmp_path)
    files = trail_files(tmp_path / "t", signing=SigningConfig(private, every_records=4))
    assert main(["audit", "verify", "--public-key", str(public), *map(str, files)]) == 0
    assert "signed up to seq" in capsys.readouterr().out
    _, other = signing_key_files(tmp_path, "other")
    assert main(["audit", "verify", "--public-key", str(other), *map(str, files)]) == 1


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", str(tmp_path / "nope.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad_key = tmp_path / "bad.pem"
    bad_key.write_text("junk")
    files = trail_files(tmp_path / "t", count=2)
    assert main(["audit", "verify", "--public-key", str(bad_key), *map(str, files)]) == 2


def test_an_encrypted_key_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = trail_files(tmp_path / "t", count=2)
    encrypted = encrypted_key_file(tmp_path / "encrypted.pem")
    assert main(["audit", "verify", "--public-key", str(encrypted), *map(str, files)]) == 2
    assert "encrypted" in capsys.readouterr().err


def test_process_slots_are_verified_one_chain_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The files of per_process slots (p0, p1 under one directory) are separate chains: verify
    checks each, instead of reporting the second as tampering with the first."""
    p0, p1 = trail_files(tmp_path / "p0", count=5), trail_files(tmp_path / "p1", count=7)
    assert main(["audit", "verify", *map(str, p1 + p0)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{tmp_path / 'p0'}: ok: {len(p0)} files, 5 records, seq 0..4")
    assert out[1].startswith(f"{tmp_path / 'p1'}: ok: {len(p1)} files, 7 records, seq 0..6")
    assert main(["audit", "verify", "--json", *map(str, p0 + p1)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [report[str(tmp_path / s)]["records"] for s in ("p0", "p1")] == [5, 7]
    lines = p1[-1].read_bytes().splitlines(keepends=True)
    p1[-1].write_bytes(b"".join(lines[:-2] + lines[-1:]))  # a record removed from p1
    assert main(["audit", "verify", *map(str, p0 + p1)]) == 1
    captured = capsys.readouterr()
    assert f"{tmp_path / 'p0'}: ok" in captured.out
    assert f"{tmp_path / 'p1'}: FAILED" in captured.out
    # Files of one chain spread over other directories are still one chain.
    (tmp_path / "archive").mkdir()
    moved = tmp_path / "archive" / p0[0].name
    p0[0].rename(moved)
    assert main(["audit", "verify", str(moved), *map(str, p0[1:])]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {len(p0)} files, 5 records")
