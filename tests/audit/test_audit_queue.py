"""The event loop's side of the trail: what one record costs it, and who gets a future.

``AuditTrail.record`` is the request path: a deque append and a count, with no future unless the
caller must wait (``fsync: always``, or a backlog under ``on_failure: deny``). Waiters queued
before the writer takes a batch share one future (``tickets.py``)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from aidr_gate.audit import AuditTrail, FsyncPolicy, verify_files
from aidr_gate.audit.tickets import Tickets
from support.audit_support import audit_files, event, file_config, records


def test_records_nobody_waits_for_get_no_future_and_are_all_written(tmp_path: Path) -> None:
    """Under fsync interval (the default) a record is queued as it is: no future is made, and
    every record is still written, in order, chained."""

    ids: list[str] = []

    async def run() -> list[object]:
        trail = AuditTrail(file_config(tmp_path, fsync=FsyncPolicy.INTERVAL))
        await trail.start()
        made = []
        for i in range(200):
            e = event(i)
            ids.append(e.decision.decision_id)
            made.append(trail.record(e.decision, e.request))
        queued = len(trail.writer.queue)
        await trail.drain()
        stats = trail.stats()
        await trail.close(5)
        return [made.count(None), queued > 0, stats.written, stats.pending, stats.lost]

    assert asyncio.run(run()) == [200, True, 200, 0, 0]
    found = records(audit_files(tmp_path))
    assert [r["chain"]["seq"] for r in found] == list(range(200))
    assert [r["event"]["id"] for r in found] == ids
    assert verify_files(audit_files(tmp_path)).ok


def test_under_fsync_always_a_burst_shares_one_future_resolved_once_on_disk(
    tmp_path: Path,
) -> None:
    """Every waiter gets a future; those queued before the writer takes its batch share it, and
    it resolves only once their records are in the file."""

    async def run() -> tuple[int, list[bool], int]:
        trail = AuditTrail(file_config(tmp_path, fsync=FsyncPolicy.ALWAYS))
        await trail.start()
        burst = [event(i) for i in range(50)]
        futures = [trail.record(e.decision, e.request) for e in burst]  # no await in between
        distinct = len({id(f) for f in futures})
        results = [bool(await asyncio.shield(f)) for f in futures if f is not None]
        on_disk = len(records(audit_files(tmp_path)))  # resolved means written and fsynced
        await trail.close(5)
        return distinct, results, on_disk

    distinct, results, on_disk = asyncio.run(run())
    assert results == [True] * 50
    assert distinct <= 2  # one, or two if the writer took a batch during the burst
    assert on_disk == 50


def test_a_ticket_is_not_joined_once_the_writer_took_its_records() -> None:
    """A waiter never waits for records queued after its own were taken; a lost batch fails
    exactly the tickets that hold one of its records."""

    async def run() -> list[object]:
        loop = asyncio.get_running_loop()
        tickets = Tickets()
        first = tickets.join(0, 0, loop)
        same = tickets.join(1, 0, loop)  # the writer took nothing yet: the same ticket
        later = tickets.join(2, 1, loop)  # record 0 was taken: a new ticket
        tickets.settle(0, 2, True)  # records 0 and 1 stored: the first ticket only
        done = [first.done(), later.done()]
        tickets.settle(2, 3, False)  # record 2's batch could be stored nowhere
        return [first is same, first is later, *done, first.result(), later.result()]

    assert asyncio.run(run()) == [True, False, True, False, True, False]


def test_a_trickle_wakes_the_writer_at_most_once_per_record_and_linger(tmp_path: Path) -> None:
    """The first record after a quiet spell wakes the writer; the rest wait for the linger: the
    writer's batches stay bounded by the linger, not by the request rate."""

    async def run() -> tuple[int, float]:
        trail = AuditTrail(file_config(tmp_path, batch_linger=0.05))
        await trail.start()
        batches = 0
        store = trail.stores.store

        def counting(data: bytes, lines: int, first: int, position: tuple[int, str] | None) -> bool:
            nonlocal batches
            batches += 1
            return store(data, lines, first, position)

        trail.stores.store = counting  # type: ignore[method-assign]
        began = time.monotonic()
        for i in range(100):
            e = event(i)
            trail.record(e.decision, e.request)
            await asyncio.sleep(0.001)
        await trail.drain()
        elapsed = time.monotonic() - began
        await trail.close(5)
        return batches, elapsed

    batches, elapsed = asyncio.run(run())
    assert 1 <= batches <= elapsed / 0.05 + 2
    assert len(records(audit_files(tmp_path))) == 100
