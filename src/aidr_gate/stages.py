"""The small interfaces the middleware and the sidecar need from each stage.

Each is a :class:`Protocol` so tests and embedders can supply their own; the production
implementations live in ``identity``, ``origin`` and ``audit``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from aidr_gate.audit.record import AuditEvent
from aidr_gate.facts import Identity, Origin


class IdentityStage(Protocol):
    """Turns an ``Authorization`` header into a verified :class:`Identity` or raises IdentityError."""

    async def authenticate(
        self, authorization: bytes | str | None, *, now: float | None = None
    ) -> Identity:
        """The caller's identity; raises an :class:`~aidr_gate.errors.IdentityError` subclass."""
        ...


class OriginStage(Protocol):
    """Turns the peer address and headers into an :class:`Origin`; never raises."""

    def resolve(self, peer: str | None, headers: Sequence[tuple[bytes, bytes]]) -> Origin:
        """Where the request comes from."""
        ...


class AuditStage(Protocol):
    """Where decisions go to be recorded; ``submit`` never blocks on a slow sink."""

    @property
    def accepting(self) -> bool:
        """False when records can be written nowhere and the policy is "no audit, no access"."""
        ...

    @property
    def durable_on_await(self) -> bool:
        """True when awaiting ``submit``'s future means the record is on disk (fsync always)."""
        ...

    def submit(self, event: AuditEvent) -> asyncio.Future[bool]:
        """Queue one record without blocking; the future resolves when it is stored."""
        ...

    async def start(self) -> None:
        """Start delivery."""
        ...

    async def close(self, timeout: float | None = None) -> None:
        """Flush within *timeout* seconds and stop."""
        ...


# Where the sidecar's proxy leaves what the upstream did, for the middleware's audit record.
UPSTREAM_STATE_KEY = "aidr_upstream"
# The upstream error code meaning "the client left, so the upstream request was cancelled".
CLIENT_DISCONNECTED = "CLIENT_DISCONNECTED"


@dataclass(slots=True)
class UpstreamResult:
    """What the upstream model server did with one request (mutable: filled in as it happens)."""

    status: int | None = None
    seconds: float | None = None
    error: str | None = None
