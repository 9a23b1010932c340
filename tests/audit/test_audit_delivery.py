"""An outbox's close ends even when its sink loses a cancellation.

Python 3.11's ``asyncio.wait_for`` loses a cancellation when what it waits for ends in the same
step: the caller sees the awaited result (here a failed attempt) as if never cancelled. A delivery
worker that retries a sink which is down would then carry on for ever, and the trail's close with
it (seen once in CI: a TLS syslog sink refusing a certificate, the test killed after 120 s). The
project's own sinks use ``asyncio.timeout`` (ruff bans ``wait_for`` in ``src``); the outbox must
not depend on a sink getting this right.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aidr_gate.audit.chain import Chain
from aidr_gate.audit.delivery import Outbox
from aidr_gate.audit.sinks import SinkError
from aidr_gate.audit.spool import Spool
from aidr_gate.settings.audit import DeliveryConfig


class WaitForSink:
    """A sink written as many are, each attempt bounded by ``asyncio.wait_for``; the test decides
    when an attempt ends, and how."""

    name = "wait-for"
    kind = "test"

    def __init__(self) -> None:
        self.attempts: list[asyncio.Future[None]] = []
        self.refusing = False  # every later attempt fails at once (a receiver refusing us)

    async def open(self) -> None:
        """Nothing to open."""

    async def send(self, lines: Sequence[bytes]) -> None:
        attempt = asyncio.get_running_loop().create_future()
        self.attempts.append(attempt)
        if self.refusing:
            attempt.set_exception(OSError("certificate refused"))
        try:
            await asyncio.wait_for(attempt, 30)
        except OSError as exc:
            raise SinkError(f"wait-for: {exc}") from None

    async def close(self) -> None:
        """Nothing to close."""

    def pending(self) -> asyncio.Future[None] | None:
        """The attempt in flight, if any."""
        last = self.attempts[-1] if self.attempts else None
        return last if last is not None and not last.done() else None


def linked_lines(count: int) -> list[bytes]:
    """*count* record lines as the trail links them (seq 0 onwards)."""
    pieces: list[bytes | memoryview] = []
    Chain().extend(pieces, [b'{"n":%d}' % n for n in range(count)])
    return b"".join(pieces).splitlines(keepends=True)


def test_close_ends_when_the_sink_loses_the_cancellation(tmp_path: Path) -> None:
    lines = linked_lines(5)
    sink = WaitForSink()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(1) as io:
            config = DeliveryConfig(retries=1, backoff_base=0.01, backoff_max=0.02)
            outbox = Outbox(sink, config, Spool(tmp_path / "spool", 1 << 20), io)
            await outbox.open(-1)
            await outbox.start()
            outbox.offer(lines, 0)
            for _ in range(500):  # the first attempt fails: the sink is down, retried
                attempt = sink.pending()
                if attempt is not None:
                    if outbox.down:
                        break
                    attempt.set_exception(OSError("connection reset"))
                await asyncio.sleep(0.01)
            attempt = sink.pending()
            assert outbox.down
            assert attempt is not None
            # The attempt fails in the very step close cancels the worker: wait_for loses the
            # cancellation, and the worker sees one more failure to retry.
            attempt.set_exception(OSError("connection reset"))
            sink.refusing = True  # and any retry would fail at once, for ever
            started = loop.time()
            async with asyncio.timeout(10):  # the unmended outbox's close never ended
                await outbox.close(loop.time())
            # A sink that is down gets no grace: the close takes milliseconds (it took for ever).
            assert loop.time() - started < 5
            attempts = len(sink.attempts)
            await asyncio.sleep(0.2)
            assert len(sink.attempts) == attempts  # the worker stopped: no more retries
            assert outbox.stats().lost == 0

    asyncio.run(run())
    # The worker stopped (no attempt after the close) and the records wait in the spool.
    assert all(a.done() for a in sink.attempts)
    spooled = b"".join(p.read_bytes() for p in sorted((tmp_path / "spool").glob("*.spool")))
    assert spooled == b"".join(lines)
