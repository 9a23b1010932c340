"""What a rule says, and which pack said it: the vocabulary the pack, the engine and decisions share.

Below all three (it imports none of them): the pack reads outcomes, the engine returns them and a
:class:`~aidr_gate.decision.Decision` records them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import msgspec


class Effect(StrEnum):
    """What the gate does with the request."""

    ALLOW = "allow"
    DENY = "deny"
    LOG = "log"  # allowed, but flagged in audit and metrics


class Outcome(msgspec.Struct, frozen=True, gc=False):
    """What a rule (or the pack's default) says: effect, HTTP status for a deny, reason, rule id."""

    effect: Effect
    status: int | None
    reason: str
    rule: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form."""
        return {
            "effect": self.effect.value,
            "status": self.status,
            "reason": self.reason,
            "rule": self.rule,
        }


class PolicyRef(msgspec.Struct, frozen=True, gc=False):
    """Which pack decided: id, content digest, legal status and whether its window covered the time."""

    id: str
    digest: str
    status: str
    in_window: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form."""
        return {
            "id": self.id,
            "digest": self.digest,
            "status": self.status,
            "in_window": self.in_window,
        }
