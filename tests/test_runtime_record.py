"""Runtime.record under ``fsync: always``: each request waits for its own record, and only that."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from aidr_gate.runtime import Runtime
from support.audit_support import event
from support.gate_env import make_gate_env


def test_a_cancelled_request_does_not_cancel_the_others_wait(tmp_path: Path) -> None:
    """Records submitted together share one future: one request cancelled (its client gone)
    must leave the others waiting for, and getting, their records on disk."""
    env = make_gate_env(tmp_path)  # its audit file sink is on fsync: always

    async def run() -> list[object]:
        runtime = Runtime.from_config(str(env.config))
        await runtime.start()
        try:
            events = [event(i) for i in range(5)]
            tasks = [
                asyncio.create_task(runtime.record(e.decision, e.request))  # type: ignore[arg-type]
                for e in events
            ]
            await asyncio.sleep(0)  # every task has submitted and waits on the shared future
            tasks[0].cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            return [r if r is True else type(r).__name__ for r in results]
        finally:
            await runtime.close()

    # The others are told their records are stored (True: their responses may complete).
    assert asyncio.run(run()) == ["CancelledError", True, True, True, True]


def test_a_cancelled_close_still_closes_the_audit_trail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A shutdown cancelled while it stops the background work (its watches, the shared state,
    the registry) still writes out and closes the audit trail: no record is lost to the cancel."""
    env = make_gate_env(tmp_path)

    async def run() -> bool:
        runtime = Runtime.from_config(str(env.config))
        await runtime.start()
        events = [event(i) for i in range(5)]
        for e in events:
            assert await runtime.record(e.decision, e.request)  # type: ignore[arg-type]
        closing = asyncio.create_task(runtime.close())
        await asyncio.sleep(0)  # the close is in its first step: stopping the watches
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        return runtime.audit_accepting

    with caplog.at_level(logging.INFO, logger="aidr_gate.audit"):
        accepting = asyncio.run(run())
    assert not accepting
    assert "audit trail closed: 5 written, 0 lost" in caplog.text
