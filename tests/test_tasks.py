"""Stopping background tasks: a lost cancellation, a task that will not stop, a failing cleanup."""

from __future__ import annotations

import asyncio
import logging
import sys
import time

import pytest

from aidr_gate.tasks import stop_task


async def _answers_with_the_cancel(
    loop: asyncio.AbstractEventLoop,
) -> tuple[asyncio.Task[None], list[asyncio.Future[None]]]:
    """A loop that waits through ``asyncio.wait_for`` (as redis-py's writes do), parked on its
    first wait; the futures it waits on, for the test to answer."""
    waits: list[asyncio.Future[None]] = []

    async def worker() -> None:
        while True:
            answer = loop.create_future()
            waits.append(answer)
            await asyncio.wait_for(answer, 30)

    task = loop.create_task(worker(), name="answers-with-the-cancel")
    await asyncio.sleep(0)
    return task, waits


async def _stubborn(release: asyncio.Event) -> None:
    """Ignores every cancel until *release* is set."""
    while not release.is_set():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            continue


def test_a_cancellation_that_wait_for_swallows_is_sent_again() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        task, waits = await _answers_with_the_cancel(loop)
        # The answer and the cancel in the same step: Python 3.11's wait_for returns the answer and
        # the cancel is gone (cpython gh-86296); 3.12 and later raise it.
        waits[-1].set_result(None)
        task.cancel()
        await asyncio.wait((task,), timeout=0.2)
        assert task.done() is (sys.version_info >= (3, 12))
        # What a close sees either way: the task ends.
        assert await stop_task(task)
        assert task.done()

    asyncio.run(scenario())


def test_a_task_that_never_stops_is_left_after_the_grace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        release = asyncio.Event()
        task = asyncio.create_task(_stubborn(release), name="stubborn")
        await asyncio.sleep(0)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="aidr_gate"):
            assert not await stop_task(task, grace=0.4)
        assert 0.4 <= time.monotonic() - started < 2.0
        assert "stubborn did not stop within 0.4 s" in caplog.text
        assert not task.done()
        release.set()
        task.cancel()
        await asyncio.wait((task,), timeout=2)
        assert task.done()

    asyncio.run(scenario())


def test_cleanup_after_the_cancel_is_not_cut_short() -> None:
    async def scenario() -> None:
        cleaned: list[str] = []

        async def tidy() -> None:
            try:
                await asyncio.sleep(10)
            finally:
                await asyncio.sleep(0.3)  # closes its connection, say
                cleaned.append("closed")

        task = asyncio.create_task(tidy())
        await asyncio.sleep(0)
        assert await stop_task(task)
        assert cleaned == ["closed"]
        assert task.cancelled()

    asyncio.run(scenario())


def test_a_failure_while_stopping_is_logged_without_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        async def fails_on_the_way_out() -> None:
            try:
                await asyncio.sleep(10)
            finally:
                raise RuntimeError("flush failed")

        task = asyncio.create_task(fails_on_the_way_out(), name="flusher")
        await asyncio.sleep(0)
        with caplog.at_level(logging.ERROR, logger="aidr_gate"):
            assert await stop_task(task)
        assert "flusher failed as it was stopped: RuntimeError: flush failed" in caplog.text
        assert all(record.exc_info is None for record in caplog.records)

    asyncio.run(scenario())


def test_a_task_that_had_ended_is_left_as_it_was() -> None:
    async def scenario() -> None:
        async def failed() -> None:
            raise ValueError("earlier")

        task = asyncio.create_task(failed())
        await asyncio.wait((task,))
        assert await stop_task(task)
        assert await stop_task(None)
        assert isinstance(task.exception(), ValueError)

    asyncio.run(scenario())


def test_the_callers_own_cancellation_is_not_swallowed() -> None:
    async def scenario() -> None:
        release = asyncio.Event()
        stopped = asyncio.create_task(_stubborn(release))
        await asyncio.sleep(0)
        stopper = asyncio.create_task(stop_task(stopped, grace=30))
        await asyncio.sleep(0.05)
        stopper.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopper
        assert not stopped.done()
        release.set()
        stopped.cancel()
        await asyncio.wait((stopped,), timeout=2)
        assert stopped.done()

    asyncio.run(scenario())
