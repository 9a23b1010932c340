"""One timer for the deadlines of every request body being read (``limits.body_timeout``).

``asyncio.timeout`` arms and cancels a timer of the event loop for each read: about 4 µs a request
under uvloop, for a deadline that almost never fires. Here a read enters its task and deadline in a
dict, and one timer, armed for the earliest deadline, cancels the tasks that are past theirs when it
fires; the read that was cancelled turns the cancellation into its timeout, exactly as
``asyncio.timeout`` does (the task's cancel count says whether anyone else cancelled it too).
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType


class Deadlines:
    """The deadlines of the reads in flight on one event loop, served by one timer."""

    __slots__ = ("_armed_for", "_due", "_expired", "_loop", "_timer")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = math.inf

    def within(self, seconds: float) -> _Within | asyncio.Timeout:
        """An async context that ends its block with :class:`TimeoutError` after *seconds*."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._due or self._expired:  # another loop's reads are in flight: keep them apart
                return asyncio.timeout(seconds)
            self._cancel_timer()
            self._loop = loop
        task = asyncio.current_task(loop)
        if task is None:  # pragma: no cover - ASGI servers run requests in tasks
            return asyncio.timeout(seconds)
        return _Within(self, task, loop.time() + seconds)

    def _enter(self, task: asyncio.Task[object], deadline: float) -> None:
        self._due[task] = deadline
        if deadline < self._armed_for:
            self._arm(deadline)

    def _leave(self, task: asyncio.Task[object]) -> bool:
        """Forget *task*'s deadline; True when the timer cancelled it."""
        self._due.pop(task, None)
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    def _arm(self, deadline: float) -> None:
        self._cancel_timer()
        loop = self._loop
        if loop is not None:
            self._timer = loop.call_at(deadline, self._fire)
            self._armed_for = deadline

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._armed_for = math.inf

    def _fire(self) -> None:
        self._timer = None
        self._armed_for = math.inf
        loop = self._loop
        if loop is None:  # pragma: no cover - armed only with a loop
            return
        now = loop.time()
        earliest = math.inf
        for task, deadline in list(self._due.items()):
            if deadline <= now:
                del self._due[task]
                self._expired.add(task)
                task.cancel()
            elif deadline < earliest:
                earliest = deadline
        if earliest < math.inf:
            self._arm(earliest)


class _Within:
    """One read's deadline (see :meth:`Deadlines.within`)."""

    __slots__ = ("_book", "_cancelling", "_deadline", "_task")

    def __init__(self, book: Deadlines, task: asyncio.Task[object], deadline: float) -> None:
        self._book = book
        self._task = task
        self._deadline = deadline
        self._cancelling = 0

    async def __aenter__(self) -> None:
        self._cancelling = self._task.cancelling()
        self._book._enter(self._task, self._deadline)

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self._book._leave(self._task):
            return
        # Cancelled by the timer: undo that cancel; a timeout unless someone else cancelled too.
        if self._task.uncancel() <= self._cancelling and kind is asyncio.CancelledError:
            raise TimeoutError from error
