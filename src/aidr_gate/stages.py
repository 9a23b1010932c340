"""What the stages hand each other across the middleware and the sidecar's proxy.

The sidecar's proxy leaves what the upstream did in the ASGI scope (:data:`UPSTREAM_STATE_KEY`,
an :class:`UpstreamResult`), where the middleware's audit record reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

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
