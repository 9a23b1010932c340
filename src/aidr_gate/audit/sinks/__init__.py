"""Where records go: the file journal, and delivery sinks (stdout, syslog, HTTP) fed by outboxes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from aidr_gate.errors import AidrGateError


class SinkError(AidrGateError):
    """A delivery failed in a way worth retrying (connection refused, timeout, 5xx, 429).

    ``delivered`` counts the leading lines of the batch that did arrive before the failure.
    """

    def __init__(self, message: str, delivered: int = 0) -> None:
        super().__init__(message)
        self.delivered = delivered


class SinkRejected(AidrGateError):
    """The receiver refused some records for good (a 4xx on the records themselves)."""

    def __init__(self, message: str, rejected: int) -> None:
        super().__init__(message)
        self.rejected = rejected


class DeliverySink(Protocol):
    """A destination records are delivered to in batches, in order."""

    name: str
    kind: str

    async def open(self) -> None:
        """Prepare (a connection is opened lazily, on the first send)."""
        ...

    async def send(self, lines: Sequence[bytes]) -> None:
        """Deliver record lines (each ending in a newline); raise :class:`SinkError` to retry."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
