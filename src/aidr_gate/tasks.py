"""Stopping a background task for good: one way, written once, for every close.

Python 3.11 can lose a cancellation. ``asyncio.wait_for`` returns the result of what it waited
for when that result arrived in the same step as the cancel, and the cancel is gone (cpython
gh-86296, fixed in 3.12). redis-py writes through ``wait_for`` and psycopg_pool waits with it, so
a background loop that talks to Redis or PostgreSQL can swallow the one ``cancel()`` a close sends
and go on for ever, while the close awaits it for ever: seen as a hung ``SharedState.close`` in
``bench/patterns.py``. :func:`stop_task` cancels again until the task ends, and gives up after a
bounded time instead of hanging the close.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["STOP_GRACE", "stop_task"]

logger = logging.getLogger("aidr_gate")

STOP_GRACE = 5.0  # seconds a task may take to end once cancelled
# A task may await its own cleanup once cancelled (close a connection, flush): it has this long
# before a second cancel, which would cut that cleanup short, and then this long between cancels.
_FIRST_WAIT = 1.0
_AGAIN = 0.25


async def stop_task(task: asyncio.Task[Any] | None, grace: float = STOP_GRACE) -> bool:
    """Cancel *task* and wait until it ends, cancelling again should it swallow a cancellation;
    True when it ended within *grace* seconds (else it is left running, and logged).

    What the task ended with is not raised here: it is being stopped, and the close that stops it
    has more to do (an error is logged, without its traceback). The caller's own cancellation is
    never swallowed.
    """
    if task is None:
        return True
    was_running = not task.done()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    wait = _FIRST_WAIT
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            logger.warning(
                "task %s did not stop within %.1f s; left running", task.get_name(), grace
            )
            return False
        task.cancel()
        await asyncio.wait((task,), timeout=min(wait, remaining))
        wait = _AGAIN
    # Read what it raised either way, so asyncio does not log it with its traceback when the task
    # is collected; a task that had ended before was its awaiters' to report, so only a failure
    # on the way out is logged here.
    error = None if task.cancelled() else task.exception()
    if error is not None and was_running:
        logger.error(
            "task %s failed as it was stopped: %s: %s",
            task.get_name(),
            type(error).__name__,
            error,
        )
    return True
