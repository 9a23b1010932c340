"""A decision is data: a frozen record of what was decided, by which rule of which pack, and why.

Nothing here can turn a gate into allow-all: a missing answer is a deny (see ``gate``).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import msgspec

from aidr_gate.document import format_timestamp

# What a rule says, and which pack said it: defined below the policy modules, which use them too.
from aidr_gate.outcome import Effect as Effect
from aidr_gate.outcome import Outcome as Outcome
from aidr_gate.outcome import PolicyRef as PolicyRef

if TYPE_CHECKING:
    from aidr_gate.catalog import Model
    from aidr_gate.facts import Identity, Origin
    from aidr_gate.policy.engine import PolicyFacts
    from aidr_gate.registry import Agreement, Entity
    from aidr_gate.screening.facts import ScreeningFacts


class Mode(StrEnum):
    """How a decision is enforced; the record is the same in every mode."""

    ENFORCE = "enforce"
    DRY_RUN = "dry-run"  # decide and record, never block


# Members read once: a member looked up on its enum class costs more than a global, per request.
_DENY = Effect.DENY
_ENFORCE = Mode.ENFORCE


class Evidence(msgspec.Struct, frozen=True, gc=False):
    """Every fact a decision used; identity and origin are ``None`` when a stage failed first."""

    identity: Identity | None
    origin: Origin | None
    entity_id: str | None
    entity: Entity | None
    entity_source: str  # "registry", "claims" or "none"
    claims_disagree: tuple[str, ...]  # which claims the registry overrode ("headquarters", ...)
    model_requested: str | None
    model: Model | None
    model_tier_source: str  # "catalog", "thresholds", "unknown-model" or "not-evaluated"
    facts: PolicyFacts | None
    agreement: Agreement | None
    # The entity's screening result, with the list version it came from; None when the gate
    # screens nothing (no ``screening:`` section) or the entity is not in the registry.
    screening: ScreeningFacts | None = None
    # The access-pattern signals of the request (``patterns/``): name (with its window) to value.
    signals: Mapping[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form, the shape ``check`` prints and audit records carry."""
        facts = self.facts
        identity = self.identity
        origin = self.origin
        screening = self.screening
        signals = self.signals
        return {
            "identity": identity.to_dict() if identity else None,
            "origin": origin.to_dict() if origin else None,
            "entity": _entity_part(self, facts),
            "model": _model_part(self, facts),
            "jurisdiction": facts.jurisdiction_dict() if facts else None,
            "agreement": _agreement_part(self.agreement, facts),
            "screening": screening.to_dict() if screening is not None else None,
            "signals": dict(signals) if signals else None,
        }


# The parts of ``Evidence.to_dict`` one subject each: module functions, so that the class stays one
# short method (each part is called once per record; a method lookup would cost more).


def _entity_part(evidence: Evidence, facts: PolicyFacts | None) -> dict[str, Any]:
    entity = evidence.entity
    return {
        "id": evidence.entity_id,
        "known": entity is not None,
        "source": evidence.entity_source,
        "name": entity.name if entity else None,
        "headquarters": facts.headquarters if facts else None,
        "parent": facts.parent if facts else None,
        "denied": entity.denied if entity else False,
        "denied_reason": entity.denied_reason if entity else None,
        "claims_disagree": list(evidence.claims_disagree),
        "agreements": [a.to_dict() for a in entity.agreements] if entity else [],
    }


def _model_part(evidence: Evidence, facts: PolicyFacts | None) -> dict[str, Any]:
    model = evidence.model
    return {
        "requested": evidence.model_requested,
        "id": model.id if model else None,
        "known": model is not None,
        "training_ops": model.training_ops if model else None,
        "weights": model.weights.value if model else None,
        "catalog_tier": model.tier if model else None,
        "tier": facts.model_tier if facts else None,
        "tier_source": evidence.model_tier_source,
    }


def _agreement_part(agreement: Agreement | None, facts: PolicyFacts | None) -> dict[str, Any]:
    return {
        "state": facts.agreement.value if facts else None,
        "id": agreement.id if agreement else None,
        "type": agreement.type if agreement else None,
        "status": agreement.status.value if agreement else None,
    }


class ShadowResult(msgspec.Struct, frozen=True, gc=False):
    """What the shadow pack would have decided, beside the enforced one."""

    outcome: Outcome
    policy: PolicyRef
    agrees: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form."""
        return {
            **self.outcome.to_dict(),
            "policy": self.policy.to_dict(),
            "agrees": self.agrees,
        }


class Decision(msgspec.Struct, frozen=True, gc=False):
    """One request's decision. ``status`` is the HTTP status to answer a deny with."""

    decision_id: str
    at: float
    effect: Effect
    status: int | None
    reasons: tuple[str, ...]
    rule: str
    policy: PolicyRef
    evidence: Evidence
    mode: Mode = Mode.ENFORCE
    shadow: ShadowResult | None = None
    # The entity registry's revision the decision saw (a file's SHA-256, a database's change
    # sequence): audit records name it, so replay and an auditor know which data was used.
    registry: str | None = None

    @property
    def allowed(self) -> bool:
        """True for ``allow`` and ``log``: the request may reach the model."""
        return self.effect is not _DENY

    @property
    def blocks(self) -> bool:
        """True when the request must not reach the model (a deny, outside dry-run)."""
        return self.effect is _DENY and self.mode is _ENFORCE

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form: what ``aidr-gate check`` prints."""
        return {
            "decision_id": self.decision_id,
            "at": format_timestamp(self.at),
            "effect": self.effect.value,
            "status": self.status,
            "reasons": list(self.reasons),
            "rule": self.rule,
            "mode": self.mode.value,
            "policy": self.policy.to_dict(),
            "shadow": self.shadow.to_dict() if self.shadow else None,
            "registry": {"revision": self.registry},
            "evidence": self.evidence.to_dict(),
        }


class DecisionIds:
    """Time-ordered, process-unique decision ids: 12 hex of milliseconds, 8 random, 8 of counter.

    Cheaper than ``uuid4`` (one ``os.urandom`` per process, not per request) and sortable by time.
    """

    def __init__(self) -> None:
        self._prefix = os.urandom(4).hex()
        self._counter = itertools.count()

    def next(self) -> str:
        """A fresh decision id."""
        return "%012x%s%08x" % (  # noqa: UP031 - %-formatting is the fastest here
            time.time_ns() // 1_000_000,
            self._prefix,
            next(self._counter) & 0xFFFFFFFF,
        )
