"""The futures of records someone waits for, resolved in order as the writer stores batches.

Most records are waited for by nobody (``fsync: interval`` or ``never``): they are queued and
counted, no future is made. A request waits for its record under ``fsync: always`` (answered
means on disk) and under ``on_failure: deny`` while the queue is full (backpressure). Records are
numbered as they are queued (their index); the records waited for between two batches the
writer takes share one future, a *ticket* ``[first index, last index, future]``, so a burst of
requests costs one future, not one each. Batches are stored in order, so a ticket resolves once
a batch past its last index is stored: ``True``, or ``False`` if any batch holding one of its
records could be stored nowhere. Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any


class Tickets:
    """The open tickets of one trail (see the module docstring)."""

    def __init__(self) -> None:
        self._waiting: deque[list[Any]] = deque()  # [first, last, future], oldest first
        self._failed: list[tuple[int, int]] = []  # index ranges of batches stored nowhere

    def join(self, index: int, taken: int, loop: asyncio.AbstractEventLoop) -> asyncio.Future[bool]:
        """The future of record *index*; *taken* is how many records the writer has taken.

        The newest ticket is joined while the writer has taken none of its records (it then
        resolves with the batch that takes them all); otherwise a new one is opened, so a
        waiter never waits for records queued after its batch was taken. *taken* is read
        without a lock: a stale value only makes a ticket span two batches.
        """
        waiting = self._waiting
        if waiting:
            ticket = waiting[-1]
            if ticket[0] >= taken and not ticket[2].done():
                ticket[1] = index
                future: asyncio.Future[bool] = ticket[2]
                return future
        future = loop.create_future()
        waiting.append([index, index, future])
        return future

    def settle(self, first: int, end: int, stored: bool) -> None:
        """The batch of records ``first .. end - 1`` was stored (or not): resolve every ticket
        whose records are all settled now."""
        if not stored:
            self._failed.append((first, end))
        waiting = self._waiting
        failed = self._failed
        while waiting and waiting[0][1] < end:
            low, high, future = waiting.popleft()
            ok = not any(a <= high and low < b for a, b in failed)
            if not future.done():
                future.set_result(ok)
        if failed:
            horizon = waiting[0][0] if waiting else end
            self._failed = [(a, b) for a, b in failed if b > horizon]

    def abandon(self) -> None:
        """The trail closed with records unwritten: every open ticket resolves ``False``."""
        for _, _, future in self._waiting:
            if not future.done():
                future.set_result(False)
        self._waiting.clear()
        self._failed.clear()
