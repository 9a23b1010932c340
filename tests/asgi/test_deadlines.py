"""One timer for every body read's deadline: a read past its deadline times out, as it would under
``asyncio.timeout``; a read that ends in time, or a cancel from elsewhere, is left alone."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from aidr_gate.asgi.deadlines import Deadlines
from aidr_gate.asgi.types import Message
from aidr_gate.errors import BodyTimeout
from aidr_gate.limits import BufferBudget, Limits
from aidr_gate.request.model_id import read_body_within


async def _read(book: Deadlines, seconds: float, wait: float) -> str:
    try:
        async with book.within(seconds):
            await asyncio.sleep(wait)
    except TimeoutError:
        return "timeout"
    return "done"


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_a_read_past_its_deadline_times_out_and_the_task_is_not_left_cancelled(run: object) -> None:
    async def scenario() -> tuple[str, int, str]:
        book = Deadlines()
        late = await _read(book, 0.05, 5)
        task = asyncio.current_task()
        assert task is not None
        # The task goes on: nothing of the timer's cancel is left on it.
        await asyncio.sleep(0)
        return late, task.cancelling(), await _read(book, 1, 0)

    assert run(scenario()) == ("timeout", 0, "done")  # type: ignore[operator]


def test_many_reads_in_time_then_one_late_one_still_times_out() -> None:
    async def scenario() -> list[str]:
        book = Deadlines()
        done = [await _read(book, 30, 0) for _ in range(1000)]
        assert set(done) == {"done"}
        # Reads with different deadlines at once: the timer is rearmed for each in turn.
        return list(
            await asyncio.gather(_read(book, 0.2, 5), _read(book, 0.05, 5), _read(book, 5, 0.1))
        )

    assert asyncio.run(scenario()) == ["timeout", "timeout", "done"]


def test_a_cancel_from_elsewhere_is_a_cancel_not_a_timeout() -> None:
    async def scenario() -> None:
        book = Deadlines()
        reader = asyncio.create_task(_read(book, 30, 5))
        await asyncio.sleep(0.01)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader

    asyncio.run(scenario())


def test_a_read_the_timer_and_someone_else_both_cancel_stays_cancelled() -> None:
    """As ``asyncio.timeout``: a cancel of the task's own beside the timer's is not swallowed."""

    async def scenario() -> None:
        book = Deadlines()

        async def read() -> None:
            async with book.within(0.05):
                try:
                    await asyncio.sleep(5)
                finally:
                    reader.cancel()  # a second cancel arrives while the timer's unwinds
                    await asyncio.sleep(0)

        reader = asyncio.create_task(read())
        with pytest.raises(asyncio.CancelledError):
            await reader

    asyncio.run(scenario())


def test_a_body_that_stops_arriving_is_408_body_timeout_and_gives_its_bytes_back() -> None:
    async def scenario() -> int:
        sent = 0

        async def receive() -> Message:
            nonlocal sent
            sent += 1
            if sent == 1:
                return {"type": "http.request", "body": b'{"model": "a"', "more_body": True}
            await asyncio.sleep(5)
            raise AssertionError("not reached")

        budget = BufferBudget(1 << 20)
        limits = Limits(body_timeout=0.05)
        with pytest.raises(BodyTimeout):
            await read_body_within(receive, 1 << 20, budget, limits, Deadlines())
        return budget.held

    assert asyncio.run(scenario()) == 0
