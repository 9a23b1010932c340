"""The policy pack as data: groups, tiers, rules and the merged pack, with its digest.

Reading a pack file is :mod:`aidr_gate.policy.reader`; layering packs with ``extends`` is
:mod:`aidr_gate.policy.extends`; :mod:`aidr_gate.policy.pack` is the face the rest imports.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aidr_gate.catalog import Weights
from aidr_gate.document import format_instant
from aidr_gate.outcome import Outcome
from aidr_gate.policy.reach import (
    RegionGroup,
    StatusChange,
    Window,
    in_window,
    status_at,
    window_fields,
)

# "contested": in the regulation's text, not enforced, its non-enforcement itself challenged
# (aidr-2025-01 after GAO B-337935).
PACK_STATUSES = (
    "in-force",
    "not-enforced",
    "contested",
    "rescinded",
    "proposed",
    "hypothetical",
)
DENY_STATUSES = (401, 403, 451)
MAX_EXTENDS_DEPTH = 8


@dataclass(frozen=True, slots=True)
class Membership:
    """A country's membership of a group or tier, optionally limited to ``[since, until)``."""

    country: str
    since: float | None = None
    until: float | None = None

    def holds_at(self, at: float) -> bool:
        """True when the membership is in force at *at*."""
        return in_window(self.since, self.until, at)

    def to_dict(self) -> dict[str, Any]:
        """Plain form for digests and diffs."""
        return {"country": self.country, **window_fields(self.since, self.until)}


@dataclass(frozen=True, slots=True)
class CountryGroup:
    """A named set of countries (a Country Group of the EAR, say), with dated membership."""

    id: str
    title: str | None
    citation: str | None
    members: tuple[Membership, ...]


@dataclass(frozen=True, slots=True)
class TierTable:
    """Country tiers, least to most restrictive; countries listed nowhere are in ``default``."""

    order: tuple[str, ...]
    default: str
    members: Mapping[str, tuple[Membership, ...]]


@dataclass(frozen=True, slots=True)
class ModelTier:
    """A model capability tier; a model is in the first tier (most restricted first) it satisfies."""

    id: str
    description: str | None = None
    weights: Weights | None = None
    min_training_ops: float | None = None
    above_open_weight_frontier: bool = False


@dataclass(frozen=True, slots=True)
class ModelTiers:
    """The pack's model tiers and the parameters they are computed with."""

    tiers: tuple[ModelTier, ...]
    unknown_model: str  # the tier an unknown model is treated as (fail closed: the most restricted)
    open_weight_frontier_ops: float | None  # training ops of the most capable open-weight model


@dataclass(frozen=True, slots=True)
class Condition:
    """A rule's ``when``: every test must hold, and at least one branch of each ``any``."""

    tests: tuple[tuple[str, Any], ...] = ()
    any_of: tuple[Condition, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain form for digests and diffs."""
        out: dict[str, Any] = {}
        for key, value in self.tests:
            out[key] = sorted(value) if isinstance(value, frozenset) else value
        if self.any_of:
            out["any"] = [c.to_dict() for c in self.any_of]
        return out


@dataclass(frozen=True, slots=True)
class Rule:
    """One ordered rule: a condition and the outcome when it holds."""

    id: str
    pack: str  # the pack that defined it (rules are inherited through ``extends``)
    when: Condition
    outcome: Outcome
    description: str | None = None
    citation: str | None = None
    during: tuple[Window, ...] = ()  # dated windows the rule applies in; empty: always
    last: bool = False  # evaluated after every rule without it (a base pack's log rules)

    def to_dict(self) -> dict[str, Any]:
        """Plain form for digests and diffs."""
        out: dict[str, Any] = {
            "id": self.id,
            "pack": self.pack,
            "description": self.description,
            "citation": self.citation,
            "when": self.when.to_dict(),
            "then": {
                "effect": self.outcome.effect.value,
                "status": self.outcome.status,
                "reason": self.outcome.reason,
            },
        }
        if self.during:  # only when present: packs without windows keep their digests
            out["during"] = [w.to_dict() for w in self.during]
        if self.last:
            out["last"] = True
        return out


@dataclass(frozen=True, slots=True)
class Pack:
    """A fully merged, validated policy pack."""

    id: str
    title: str
    status: str
    citations: tuple[str, ...]
    effective_from: float | None
    effective_until: float | None
    extends: tuple[str, ...]  # the chain of packs this one extends, nearest first
    groups: Mapping[str, CountryGroup]
    tiers: TierTable | None
    model_tiers: ModelTiers
    accepted_agreement_types: frozenset[str] | None
    rules: tuple[Rule, ...]
    default: Outcome
    files: tuple[str, ...]
    notes: str | None = None
    region_groups: Mapping[str, RegionGroup] = field(default_factory=dict)
    status_history: tuple[StatusChange, ...] = ()
    digest: str = field(default="")

    def status_at(self, at: float) -> str:
        """The pack's legal status at *at* (its ``status_history``, else ``status``)."""
        return status_at(self.status_history, self.status, at)

    def in_window(self, at: float) -> bool:
        """True when *at* falls inside the pack's legal window ``[effective.from, effective.until)``."""
        if self.effective_from is not None and at < self.effective_from:
            return False
        return self.effective_until is None or at < self.effective_until

    def to_dict(self) -> dict[str, Any]:
        """Canonical plain form: what the digest is computed over, and what ``diff`` compares."""
        tiers = None
        if self.tiers is not None:
            tiers = {
                "order": list(self.tiers.order),
                "default": self.tiers.default,
                "members": {
                    t: [m.to_dict() for m in ms] for t, ms in sorted(self.tiers.members.items())
                },
            }
        out: dict[str, Any] = {
            "id": self.id,
            "title": self.title,
            "status": self.status,
            "citations": list(self.citations),
            "effective": {
                "from": format_instant(self.effective_from),
                "until": format_instant(self.effective_until),
            },
            "extends": list(self.extends),
            "country_groups": {
                g.id: {
                    "title": g.title,
                    "citation": g.citation,
                    "members": [m.to_dict() for m in g.members],
                }
                for g in sorted(self.groups.values(), key=lambda g: g.id)
            },
            "country_tiers": tiers,
            "model_tiers": {
                "unknown_model": self.model_tiers.unknown_model,
                "open_weight_frontier_ops": self.model_tiers.open_weight_frontier_ops,
                "tiers": [
                    {
                        "id": t.id,
                        "weights": t.weights.value if t.weights else None,
                        "min_training_ops": t.min_training_ops,
                        "above_open_weight_frontier": t.above_open_weight_frontier,
                    }
                    for t in self.model_tiers.tiers
                ],
            },
            "agreements": {
                "accepted_types": sorted(self.accepted_agreement_types)
                if self.accepted_agreement_types is not None
                else None
            },
            "rules": [r.to_dict() for r in self.rules],
            "default": {
                "effect": self.default.effect.value,
                "status": self.default.status,
                "reason": self.default.reason,
            },
        }
        if self.status_history:
            out["status_history"] = [c.to_dict() for c in self.status_history]
        if self.region_groups:  # only when present: packs without regions keep their digests
            out["region_groups"] = {
                g.id: g.to_dict() for g in sorted(self.region_groups.values(), key=lambda g: g.id)
            }
        return out


def compute_digest(pack: Pack) -> str:
    """``sha256:`` of the canonical JSON of the merged pack: same decisions, same digest."""
    canonical = json.dumps(pack.to_dict(), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
