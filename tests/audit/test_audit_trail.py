"""The trail: restart and rotation keep the chain, torn lines, durability, failure policies, close."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from aidr_gate.audit import (
    AuditConfig,
    AuditTrail,
    FailurePolicy,
    FileSinkConfig,
    FsyncPolicy,
    RecordFormat,
    SigningConfig,
    verify_files,
)
from aidr_gate.audit.chain import load_public_key
from aidr_gate.audit.sinks.file import rotated_files
from aidr_gate.audit.sinks.stdout import StdoutSink
from aidr_gate.errors import ConfigError
from aidr_gate.settings.audit import RETENTION_FLOOR_DAYS, StdoutSinkConfig
from support.audit_support import (
    audit_files,
    encrypted_key_file,
    event,
    file_config,
    records,
    signing_key_files,
)


async def write(directory: Path, count: int, start: int = 0, **kwargs: object) -> AuditTrail:
    kwargs.setdefault("batch_size", 4)
    trail = AuditTrail(file_config(directory, **kwargs))  # type: ignore[arg-type]
    await trail.start()
    results = await asyncio.gather(*(trail.submit(event(start + i)) for i in range(count)))
    assert all(results)
    await trail.close(10)
    return trail


def test_chain_continues_across_restarts_and_rotation(tmp_path: Path) -> None:
    async def run() -> None:
        await write(tmp_path, 30, max_bytes=8_000)
        await write(tmp_path, 30, start=30, max_bytes=8_000, compress=True)
        await write(tmp_path, 5, start=60, max_bytes=8_000)

    asyncio.run(run())
    files = audit_files(tmp_path)
    assert len(files) > 4
    assert any(p.name.endswith(".gz") for p in files)
    result = verify_files(files)
    assert result.ok, result.findings
    assert (result.records, result.first_seq, result.last_seq) == (65, 0, 64)
    assert result.findings == []
    subjects = [r["user"]["id"] for r in records(sorted(files, key=_first_seq))]
    assert subjects == [f"svc-{i}" for i in range(65)]


def _first_seq(path: Path) -> int:
    return int(records([path])[0]["chain"]["seq"])


def test_a_torn_final_line_is_reported_and_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    asyncio.run(write(tmp_path, 5))
    journal = tmp_path / "audit.jsonl"
    with open(journal, "ab") as handle:  # a crash in the middle of a write
        handle.write(b'{"@timestamp":"2025-01-01T00:00:00.000Z","event":{"ki')
    with caplog.at_level(logging.WARNING, logger="aidr_gate.audit"):
        trail = asyncio.run(write(tmp_path, 5, start=5))
    assert trail.recovered_torn == len(b'{"@timestamp":"2025-01-01T00:00:00.000Z","event":{"ki')
    assert any("torn record" in r.message for r in caplog.records)
    rotated = rotated_files(journal)
    assert len(rotated) == 1  # the torn file was closed as it was, torn bytes and all
    result = verify_files([journal, *rotated])
    assert result.ok
    assert (result.records, result.last_seq) == (10, 9)
    assert [f.kind for f in result.warnings] == ["torn"]
    assert result.warnings[0].file == str(rotated[0])


def test_fsync_always_resolves_after_the_write(tmp_path: Path) -> None:
    async def run() -> None:
        trail = AuditTrail(file_config(tmp_path, fsync=FsyncPolicy.ALWAYS))
        await trail.start()
        assert trail.durable_on_await
        ev = event(1)
        assert await trail.submit(ev) is True
        # Resolved means written: another reader sees the record now, before close.
        assert records([tmp_path / "audit.jsonl"])[-1]["event"]["id"] == ev.decision.decision_id
        stats = trail.stats()
        assert (stats.written, stats.pending, stats.lost) == (1, 0, 0)
        await trail.close(5)

    asyncio.run(run())


def test_interval_fsync_and_never(tmp_path: Path) -> None:
    for policy in (FsyncPolicy.INTERVAL, FsyncPolicy.NEVER):
        directory = tmp_path / policy.value
        asyncio.run(write(directory, 20, fsync=policy))
        assert verify_files(audit_files(directory)).records == 20


def _unwritable_journal(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    # A real device error: every write to /dev/full fails with ENOSPC.
    os.symlink("/dev/full", directory / "audit.jsonl")


def test_no_audit_no_access(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Journal and spool both unwritable: records are lost loudly and new requests are refused."""
    _unwritable_journal(tmp_path)

    async def run() -> None:
        config = file_config(tmp_path, spool_max_bytes=1)
        trail = AuditTrail(config)
        await trail.start()
        assert trail.accepting
        with caplog.at_level(logging.ERROR, logger="aidr_gate.audit"):
            assert await trail.submit(event(1)) is False
        assert not trail.stats().accepting
        stats = trail.stats()
        assert stats.lost == 1
        assert stats.sinks[0].lost == 1
        assert any("LOST" in r.message for r in caplog.records)
        await trail.close(2)

    asyncio.run(run())


def test_allow_policy_keeps_serving_and_counts(tmp_path: Path) -> None:
    _unwritable_journal(tmp_path)

    async def run() -> None:
        config = file_config(tmp_path, on_failure=FailurePolicy.ALLOW, spool_max_bytes=1)
        trail = AuditTrail(config)
        await trail.start()
        results = [await trail.submit(event(i)) for i in range(3)]
        assert results == [False, False, False]
        assert trail.accepting
        assert trail.stats().lost == 3
        await trail.close(2)

    asyncio.run(run())


def test_journal_failure_spools_then_recovers_in_order(tmp_path: Path) -> None:
    """The journal cannot be written for a while: records go to its spool, then back in order."""
    journal = tmp_path / "audit.jsonl"

    async def run() -> None:
        trail = AuditTrail(file_config(tmp_path))
        await trail.start()
        assert trail.journal is not None
        assert all(await asyncio.gather(*(trail.submit(event(i)) for i in range(5))))
        real_fd = trail.journal._fd
        trail.journal._fd = os.open("/dev/full", os.O_WRONLY)
        assert all(await asyncio.gather(*(trail.submit(event(i)) for i in range(5, 10))))
        assert trail.stats().spooled == 5
        assert trail.accepting  # spooled is stored: no loss
        os.close(trail.journal._fd)
        trail.journal._fd = real_fd
        assert all(await asyncio.gather(*(trail.submit(event(i)) for i in range(10, 15))))
        await trail.close(5)

    asyncio.run(run())
    result = verify_files([journal])
    assert result.ok, result.findings
    assert [r["user"]["id"] for r in records([journal])] == [f"svc-{i}" for i in range(15)]


def _backlogged(trail: AuditTrail) -> bool:
    return trail.backlogged  # read afresh each time (the type checker would pin the first answer)


def test_queue_full_is_counted_never_blocking(tmp_path: Path) -> None:
    async def run() -> None:
        trail = AuditTrail(file_config(tmp_path, queue_size=4, on_failure=FailurePolicy.ALLOW))
        await trail.start()
        futures = [trail.submit(event(i)) for i in range(10)]  # no await between: the queue fills
        results = await asyncio.gather(*futures)
        assert results.count(False) == 6
        assert trail.stats().lost == 6
        await trail.close(5)

        strict = AuditTrail(file_config(tmp_path / "deny", queue_size=4))
        await strict.start()
        futures = [strict.submit(event(i)) for i in range(4)]
        assert not strict.stats().accepting  # full: the middleware refuses new requests
        assert _backlogged(strict)  # and a request whose record is queued now waits for it
        futures += [strict.submit(event(i)) for i in range(4, 10)]  # admitted earlier
        results = await asyncio.gather(*futures)
        assert results == [True] * 10  # deny never loses a record to a full queue
        assert strict.stats().lost == 0
        assert strict.accepting
        assert not _backlogged(strict)
        await strict.close(5)

    asyncio.run(run())


def test_close_is_bounded_and_later_submits_are_counted(tmp_path: Path) -> None:
    async def run() -> None:
        trail = AuditTrail(file_config(tmp_path))
        await trail.start()
        pending = [trail.submit(event(i)) for i in range(50)]
        loop = asyncio.get_running_loop()
        started = loop.time()
        await trail.close(2)
        assert loop.time() - started < 2.5
        assert all(f.done() for f in pending)
        late = trail.submit(event(99))
        assert await late is False
        assert trail.stats().lost == 1
        await trail.close(1)  # idempotent

    asyncio.run(run())
    assert verify_files([tmp_path / "audit.jsonl"]).records == 50


def test_stdout_sink_writes_the_same_chained_lines(tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()

    async def run() -> None:
        config = file_config(tmp_path, sinks=(StdoutSinkConfig(name="stdout"),))
        trail = AuditTrail(config)
        out = trail.outboxes[0].sink
        assert isinstance(out, StdoutSink)
        out._fd = write_fd
        await trail.start()
        await asyncio.gather(*(trail.submit(event(i)) for i in range(7)))
        await trail.drain(sinks=True)
        await trail.close(5)

    asyncio.run(run())
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        piped = pipe.read()
    assert piped == (tmp_path / "audit.jsonl").read_bytes()
    assert (tmp_path / "spool" / "stdout" / "cursor").read_text().strip() == "6"


def test_time_rotation_and_retention(tmp_path: Path) -> None:
    now = [1_750_000_000.0]

    async def run() -> None:
        config = file_config(tmp_path, batch_size=1)
        journal = FileSinkConfig(
            name="file",
            path=tmp_path / "audit.jsonl",
            rotate_seconds=3600,
            compress=False,
            retention_days=RETENTION_FLOOR_DAYS,
        )
        trail = AuditTrail(replace(config, sinks=(journal,)), clock=lambda: now[0])
        await trail.start()
        for index in range(6):
            assert await trail.submit(event(index))
            now[0] += 1800  # two records an hour: a new file every hour
        await trail.close(5)

    old = tmp_path / "audit-20200101T000000Z-000000000000.jsonl"
    tmp_path.mkdir(exist_ok=True)
    old.write_bytes(b"")
    os.utime(old, (1_500_000_000, 1_500_000_000))  # older than five years at the fake clock
    asyncio.run(run())
    assert not old.exists()  # retention removed it at the first rotation
    rotated = rotated_files(tmp_path / "audit.jsonl")
    assert len(rotated) == 2
    result = verify_files([*rotated, tmp_path / "audit.jsonl"])
    assert (result.records, result.last_seq) == (6, 5)
    assert result.ok


def test_ocsf_records_chain_and_verify(tmp_path: Path) -> None:
    async def run() -> None:
        trail = AuditTrail(file_config(tmp_path, format=RecordFormat.OCSF))
        await trail.start()
        await asyncio.gather(*(trail.submit(event(i)) for i in range(5)))
        await trail.close(5)

    asyncio.run(run())
    docs = records([tmp_path / "audit.jsonl"])
    assert [d["class_uid"] for d in docs] == [6003] * 5
    assert verify_files([tmp_path / "audit.jsonl"]).records == 5


def test_without_a_file_sink_the_chain_position_is_kept(tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()

    async def run(start: int) -> None:
        config = AuditConfig(directory=tmp_path, sinks=(StdoutSinkConfig(name="stdout"),))
        trail = AuditTrail(config)
        out = trail.outboxes[0].sink
        assert isinstance(out, StdoutSink)
        out._fd = write_fd
        await trail.start()
        await asyncio.gather(*(trail.submit(event(start + i)) for i in range(3)))
        await trail.drain(sinks=True)
        await trail.close(5)

    asyncio.run(run(0))
    asyncio.run(run(3))
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        piped = pipe.read()
    target = tmp_path / "piped.jsonl"
    target.write_bytes(piped)
    result = verify_files([target])
    assert result.ok, result.findings
    assert (result.records, result.first_seq, result.last_seq) == (6, 0, 5)


def test_an_idle_trail_still_signs_its_tail(tmp_path: Path) -> None:
    key_file, public = signing_key_files(tmp_path)

    async def run() -> None:
        signing = SigningConfig(key_file=key_file, every_records=1000, every_seconds=0.3)
        trail = AuditTrail(file_config(tmp_path / "audit", signing=signing))
        await trail.start()
        await asyncio.gather(*(trail.submit(event(i)) for i in range(3)))
        for _ in range(40):  # the timer writes a checkpoint once every_seconds has passed
            if b"audit-checkpoint" in (tmp_path / "audit" / "audit.jsonl").read_bytes():
                break
            await asyncio.sleep(0.1)
        lines = (tmp_path / "audit" / "audit.jsonl").read_bytes().splitlines()
        assert len(lines) == 4
        assert b"audit-checkpoint" in lines[-1]
        await trail.close(5)

    asyncio.run(run())
    result = verify_files([tmp_path / "audit" / "audit.jsonl"], [load_public_key(public)])
    assert result.ok, result.findings
    assert (result.checkpoints, result.signed_upto) == (1, 2)


def test_describe_names_sinks_and_chain(tmp_path: Path) -> None:
    async def run() -> str:
        config = file_config(tmp_path, sinks=(StdoutSinkConfig(name="stdout"),))
        trail = AuditTrail(config)
        await trail.start()
        text = trail.describe()
        await trail.close(1)
        return text

    text = asyncio.run(run())
    assert text == (
        f"ecs records to file {tmp_path / 'audit.jsonl'} (fsync never), stdout stdout; "
        "chain at seq 0; on failure: deny"
    )


def test_an_encrypted_signing_key_is_a_configuration_error(tmp_path: Path) -> None:
    key_file = encrypted_key_file(tmp_path / "encrypted.pem")
    config = file_config(tmp_path / "audit", signing=SigningConfig(key_file=key_file))
    with pytest.raises(ConfigError, match="encrypted"):
        AuditTrail(config)


def test_a_corrupt_rotated_gzip_is_reported_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    asyncio.run(write(tmp_path, 12, max_bytes=4_000, compress=True))
    journal = tmp_path / "audit.jsonl"
    rotated = rotated_files(journal)
    assert len(rotated) >= 2
    assert rotated[-1].name.endswith(".gz")
    damaged = bytearray(rotated[-1].read_bytes())
    stream = damaged.index(b"\0", 10) + 1  # after the header and the file name it carries
    damaged[stream : stream + 4] = b"\xff" * 4  # a broken deflate stream: zlib.error
    rotated[-1].write_bytes(bytes(damaged))
    journal.unlink()  # the newest records are in the damaged file only
    before = records([rotated[-2]])[-1]["chain"]["seq"]

    async def run() -> int:
        trail = AuditTrail(file_config(tmp_path))
        await trail.start()  # does not crash: the chain continues from the newest readable file
        seq = trail.chain.next_seq
        assert await trail.submit(event(99))
        await trail.close(5)
        return seq

    with caplog.at_level(logging.ERROR, logger="aidr_gate.audit"):
        assert asyncio.run(run()) == before + 1
    assert any(str(rotated[-1]) in r.getMessage() for r in caplog.records)


def test_a_cursor_that_cannot_be_saved_does_not_stop_delivery(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    read_fd, write_fd = os.pipe()

    async def run() -> AuditTrail:
        config = file_config(tmp_path, sinks=(StdoutSinkConfig(name="stdout"),))
        trail = AuditTrail(config)
        outbox = trail.outboxes[0]
        assert isinstance(outbox.sink, StdoutSink)
        outbox.sink._fd = write_fd
        await trail.start()
        # The cursor is saved by writing cursor.tmp and renaming it: a directory there makes
        # every save fail (IsADirectoryError), as a full or read-only disk would.
        (outbox.spool.directory / "cursor.tmp").mkdir()
        for start in (0, 3):
            await asyncio.gather(*(trail.submit(event(start + i)) for i in range(3)))
            await asyncio.wait_for(trail.drain(sinks=True), 5)
        assert outbox.cursor == 5  # kept in memory
        assert outbox.stats().delivered == 6
        await trail.close(5)  # does not raise; the journal is closed and the I/O thread stopped
        return trail

    with caplog.at_level(logging.ERROR, logger="aidr_gate.audit"):
        trail = asyncio.run(run())
    assert trail.journal is not None
    assert trail.journal._fd == -1
    assert trail._io._shutdown
    assert any("cursor" in r.getMessage() for r in caplog.records)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        assert pipe.read() == (tmp_path / "audit.jsonl").read_bytes()


def test_records_a_sink_missed_and_the_journal_lost_are_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A sink behind the journal gets what the journal still holds; the rest counts as lost."""
    asyncio.run(write(tmp_path, 15, max_bytes=2_500))
    journal = tmp_path / "audit.jsonl"
    rotated = rotated_files(journal)
    assert len(rotated) >= 3
    gone = len(records(rotated[:2]))
    rotated[0].unlink()  # removed by retention
    rotated[1].write_bytes(b"\x1f\x8b" + b"not gzip at all")  # unreadable
    spool = tmp_path / "spool" / "stdout"
    spool.mkdir(parents=True)
    (spool / "cursor").write_text("-1\n")  # the sink acknowledged nothing before a crash
    out = tmp_path / "stdout.jsonl"

    async def run() -> tuple[int, int]:
        trail = AuditTrail(file_config(tmp_path, sinks=(StdoutSinkConfig(name="stdout"),)))
        sink = trail.outboxes[0].sink
        assert isinstance(sink, StdoutSink)
        sink._fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        await trail.start()
        await trail.drain(sinks=True)
        stats = trail.outboxes[0].stats()
        await trail.close(5)
        os.close(sink._fd)
        return stats.delivered, stats.lost

    with caplog.at_level(logging.ERROR, logger="aidr_gate.audit"):
        delivered, lost = asyncio.run(run())
    assert (delivered, lost) == (15 - gone, gone)
    assert any("LOST" in r.getMessage() for r in caplog.records)
    assert [r["chain"]["seq"] for r in records([out])] == list(range(gone, 15))


def wrap_store(trail: AuditTrail, before: Callable[[], None]) -> None:
    """Run *before* ahead of each batch the trail's writer thread stores."""
    store = trail.stores.store

    def wrapped(data: bytes, lines: int, first: int, position: tuple[int, str] | None) -> bool:
        before()
        return store(data, lines, first, position)

    trail.stores.store = wrapped  # type: ignore[method-assign]


class CountingTrail(AuditTrail):
    """A trail that counts the batches its writer thread stores."""

    batches = 0

    def __init__(self, config: AuditConfig) -> None:
        super().__init__(config)
        wrap_store(self, self._count)

    def _count(self) -> None:
        self.batches += 1


def test_records_trickling_in_are_written_in_batches_at_most_once_per_linger(
    tmp_path: Path,
) -> None:
    """Each batch costs a round trip to the I/O thread: a trickle must not make one per record."""

    async def run() -> tuple[int, float, list[bool]]:
        trail = CountingTrail(file_config(tmp_path, batch_linger=0.05))
        await trail.start()
        began = time.monotonic()
        futures = []
        for i in range(60):
            futures.append(trail.submit(event(i)))
            await asyncio.sleep(0.002)  # a request every 2 ms
        stored = list(await asyncio.gather(*futures))
        elapsed = time.monotonic() - began
        await trail.close(5)
        return trail.batches, elapsed, stored

    batches, elapsed, stored = asyncio.run(run())
    assert stored == [True] * 60
    assert 1 <= batches <= elapsed / 0.05 + 2
    found = records(audit_files(tmp_path))
    assert [r["chain"]["seq"] for r in found] == list(range(60))
    assert verify_files(audit_files(tmp_path)).ok


def test_a_start_that_fails_at_a_sink_leaves_no_lock_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sink that cannot open fails the start after the journal is locked and opened: the lock
    must go with it, or every retry (a fresh trail) would find the directory busy until restart."""

    async def broken(self: StdoutSink) -> None:
        raise OSError("cannot open the sink")

    config = file_config(tmp_path, sinks=(StdoutSinkConfig(name="stdout"),))

    async def run() -> None:
        with monkeypatch.context() as patch:
            patch.setattr(StdoutSink, "open", broken)
            with pytest.raises(OSError, match="cannot open the sink"):
                await AuditTrail(config).start()
        retry = AuditTrail(config)
        await retry.start()  # the directory is free again
        assert await retry.submit(event(0))
        await retry.close(5)

    asyncio.run(run())
    assert len(records(audit_files(tmp_path))) == 1


def test_a_full_batch_ends_the_linger(tmp_path: Path) -> None:
    """Lingering is for batches that are not full: a burst must not wait, or fill the queue."""

    async def run() -> float:
        trail = AuditTrail(file_config(tmp_path, batch_linger=1.0, batch_size=8))
        await trail.start()
        assert await trail.submit(event(0))  # the first batch: taken at once
        trail.submit(event(1))
        await asyncio.sleep(0.05)  # the writer lingers over a batch of one
        began = time.monotonic()
        burst = [trail.submit(event(i)) for i in range(2, 9)]  # with event 1: a full batch
        assert all(await asyncio.gather(*burst))
        waited = time.monotonic() - began
        await trail.close(5)
        return waited

    assert asyncio.run(run()) < 0.5
    assert len(records(audit_files(tmp_path))) == 9


def test_no_linger_under_fsync_always_nor_on_close(tmp_path: Path) -> None:
    """fsync always: a response waits for its record, so the writer takes it at once; and close()
    writes what is queued without waiting out the linger."""

    async def run() -> tuple[float, float]:
        always = AuditTrail(
            file_config(tmp_path / "always", fsync=FsyncPolicy.ALWAYS, batch_linger=1.0)
        )
        await always.start()
        began = time.monotonic()
        assert await always.submit(event(0))
        waited = time.monotonic() - began
        await always.close(5)
        lazy = AuditTrail(file_config(tmp_path / "lazy", batch_linger=1.0))
        await lazy.start()
        assert await lazy.submit(event(1))  # the first batch: nothing to wait for yet
        future = lazy.submit(event(2))
        await asyncio.sleep(0.05)  # the writer lets the second batch gather
        began = time.monotonic()
        await lazy.close(5)
        closing = time.monotonic() - began
        assert future.result() is True
        return waited, closing

    waited, closing = asyncio.run(run())
    assert waited < 0.5
    assert closing < 0.5
    assert len(records(audit_files(tmp_path / "lazy"))) == 2


class SlowStoreTrail(AuditTrail):
    """A trail whose writer thread takes a while over each batch (a slow disk)."""

    def __init__(self, config: AuditConfig) -> None:
        super().__init__(config)
        wrap_store(self, lambda: time.sleep(0.5))


def test_a_close_timeout_does_not_cancel_a_batch_being_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """close() gives up on the writer, not on the I/O: what reaches the disk is counted and sent."""

    async def run() -> tuple[AuditTrail, list[bool]]:
        config = file_config(tmp_path, sinks=(StdoutSinkConfig(name="stdout"),))
        trail = SlowStoreTrail(config)
        sink = trail.outboxes[0].sink
        assert isinstance(sink, StdoutSink)
        sink._fd = os.open(tmp_path / "stdout.jsonl", os.O_WRONLY | os.O_CREAT, 0o600)
        await trail.start()
        futures = [trail.submit(event(i)) for i in range(4)]
        await asyncio.sleep(0.1)  # the writer hands the batch to the I/O thread and waits
        await trail.close(0.1)  # times out while the batch is being written
        os.close(sink._fd)
        return trail, [f.result() for f in futures]

    with caplog.at_level(logging.ERROR):
        trail, results = asyncio.run(run())
    assert results == [True] * 4
    assert (trail.written, trail.lost) == (4, 0)
    assert verify_files([tmp_path / "audit.jsonl"]).records == 4
    assert not [r for r in caplog.records if "CancelledError" in (r.exc_text or r.getMessage())]
    # The sink got the lines: delivered, or kept in its spool for the next start.
    outbox = trail.outboxes[0]
    assert outbox.delivered + outbox.spool.count == 4


def test_rotated_files_are_zstd_by_default_and_read_back(tmp_path: Path) -> None:
    """The default codec: rotated files are zstd, and verify, recovery and replay read them."""
    from aidr_gate.audit.compression import ZSTD_MAGIC
    from aidr_gate.policy.pack import load_pack
    from aidr_gate.replay import ReplayOptions, replay_files

    asyncio.run(write(tmp_path, 20, max_bytes=3_000, compress=True, compression="zstd"))
    asyncio.run(write(tmp_path, 5, start=20))  # the chain's tail is recovered after them
    files = audit_files(tmp_path)
    packed = [p for p in files if p.name.endswith(".jsonl.zst")]
    assert packed and all(p.read_bytes()[:4] == ZSTD_MAGIC for p in packed)
    result = verify_files(files)
    assert result.ok, result.findings
    assert (result.records, result.last_seq) == (25, 24)
    replayed = replay_files(files, ReplayOptions(load_pack("strict-hypothetical")))
    assert replayed.tally.records == 25
    assert not replayed.tally.cannot_decide


def test_an_overload_under_deny_loses_no_record(tmp_path: Path) -> None:
    """Records arrive far faster than a slow disk takes them: new requests are refused while the
    queue is full (accepting False), and every request already admitted waits for its record
    (as Runtime.record does) instead of the record being dropped. Nothing is lost."""
    from aidr_gate.runtime import Runtime

    class SlowDisk(AuditTrail):
        def __init__(self, config: AuditConfig) -> None:
            super().__init__(config)
            wrap_store(self, lambda: time.sleep(0.02))

    async def run() -> tuple[int, int, AuditTrail]:
        trail = SlowDisk(file_config(tmp_path, queue_size=8, batch_size=4))
        runtime = Runtime.__new__(Runtime)  # only its record() path is used here
        runtime.audit = trail
        await trail.start()
        refused = 0

        async def request(index: int) -> None:
            nonlocal refused
            if not trail.accepting:
                refused += 1  # the middleware answers 503 AUDIT_UNAVAILABLE, and records that
            ev = event(index)
            assert ev.request is not None
            await runtime.record(ev.decision, ev.request)

        await asyncio.gather(*(request(i) for i in range(300)))
        await trail.close(30)
        return refused, trail.stats().lost, trail

    refused, lost, trail = asyncio.run(run())
    assert lost == 0
    assert refused > 0  # the queue filled up: backpressure was exercised
    assert trail.written == 300
    result = verify_files(audit_files(tmp_path))
    assert result.ok and result.records == 300
