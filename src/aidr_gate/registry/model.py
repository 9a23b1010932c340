"""The registry's data: entities, their owners, agreements and screening reviews, and the lookup
protocol every store implements (:class:`EntityRegistry`), with the immutable in-memory one.

Reading a registry file into these is :mod:`aidr_gate.registry.reader`'s job.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from aidr_gate.bounded import StringPool
from aidr_gate.document import format_instant, parse_instant


class AgreementStatus(StrEnum):
    """An agreement's recorded status; only ``active`` inside its window ever counts."""

    ACTIVE = "active"
    SUSPENDED = "suspended"
    REVOKED = "revoked"
    EXPIRED = "expired"


class AgreementState(StrEnum):
    """What an entity's agreements amount to for one request (a fact packs test)."""

    VALID = "valid"  # active, inside its window, covers the model tier and the network country
    NONE = "none"  # the entity holds no agreement of an accepted type
    SUSPENDED = "suspended"
    REVOKED = "revoked"
    EXPIRED = "expired"  # marked expired, or its window has ended
    NOT_YET_VALID = "not-yet-valid"
    OUT_OF_SCOPE = "out-of-scope"  # active and in its window, but not for this tier or country
    UNKNOWN_COUNTRY = (
        "unknown-country"  # coverage cannot be checked: the network country is unknown
    )


# An inactive agreement's state is its status: a table, not an enum call, per request.
_STATE_OF_STATUS: Mapping[AgreementStatus, AgreementState] = {
    status: AgreementState(status.value)
    for status in AgreementStatus
    if status is not AgreementStatus.ACTIVE
}

AGREEMENT_TYPES: tuple[str, ...] = ("uveu", "nveu", "security-agreement", "license", "contract")
ANY = "*"


class OwnershipStatus(StrEnum):
    """How much of an entity's ownership the registry knows (BIS Red Flag 29: unknown ownership)."""

    COMPLETE = "complete"  # the owners listed are every holder that matters
    PARTIAL = "partial"  # some owners are listed; others are not known
    UNKNOWN = "unknown"  # nothing is known of who owns the entity


class ReviewDecision(StrEnum):
    """A compliance officer's decision on one screening hit."""

    CONFIRMED = "confirmed"  # the entity (or an owner) is the listed party: deny
    FALSE_POSITIVE = "false-positive"  # a different party with a similar name


@dataclass(frozen=True, slots=True)
class Owner:
    """One holder of an entity: another registry entity, or a named party outside the registry.

    ``share`` is a percentage of ownership, in (0, 100].
    """

    share: float
    entity_id: str | None = None
    name: str | None = None
    country: str | None = None  # a party outside the registry: where it is established

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form."""
        return {
            "entity": self.entity_id,
            "name": self.name,
            "country": self.country,
            "share": self.share,
        }


@dataclass(frozen=True, slots=True)
class ScreeningReview:
    """A recorded decision on a screening hit: which list entry, decided how, by whom, when, why."""

    entry: str  # "<list>:<entry id>", as the screening report names it (e.g. "sdn:36216")
    decision: ReviewDecision
    by: str
    at: float
    why: str
    name: str | None = None  # the name that was screened (the entity's, an alias, an owner's)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form."""
        return {
            "entry": self.entry,
            "decision": self.decision.value,
            "by": self.by,
            "at": format_instant(self.at),
            "why": self.why,
            "name": self.name,
        }


@dataclass(frozen=True, slots=True)
class Agreement:
    """A security agreement or authorization held by an entity."""

    id: str
    type: str
    status: AgreementStatus
    valid_from: float | None = None
    valid_until: float | None = None  # exclusive
    model_tiers: frozenset[str] = frozenset({ANY})
    countries: frozenset[str] = frozenset({ANY})

    def covers(self, model_tier: str, country: str | None) -> bool:
        """True when the agreement's scope includes this model tier and network country."""
        tiers_ok = ANY in self.model_tiers or model_tier in self.model_tiers
        if ANY in self.countries:
            return tiers_ok
        return tiers_ok and country is not None and country in self.countries

    def state_at(self, at: float) -> AgreementState:
        """The agreement's state at *at*, ignoring scope."""
        if self.status is not AgreementStatus.ACTIVE:
            return _STATE_OF_STATUS[self.status]
        if self.valid_from is not None and at < self.valid_from:
            return AgreementState.NOT_YET_VALID
        if self.valid_until is not None and at >= self.valid_until:
            return AgreementState.EXPIRED
        return AgreementState.VALID

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form for evidence and audit."""
        return {
            "id": self.id,
            "type": self.type,
            "status": self.status.value,
            "valid_from": format_instant(self.valid_from),
            "valid_until": format_instant(self.valid_until),
            "model_tiers": sorted(self.model_tiers),
            "countries": sorted(self.countries),
        }

    @classmethod
    def from_dict(cls, raw: object, where: str = "agreement") -> Agreement:
        """The agreement :meth:`to_dict` wrote (audit records carry it as evidence).

        Raises :class:`ValueError` naming the field (under *where*) that is missing or garbled;
        nothing else, whatever *raw* holds.
        """
        if not isinstance(raw, dict):
            raise ValueError(f"{where} is not an agreement")

        def required(key: str) -> Any:
            if key not in raw:
                raise ValueError(f"missing {where}.{key}")
            return raw[key]

        agreement_id, kind, status = required("id"), required("type"), required("status")
        if not isinstance(agreement_id, str) or not isinstance(kind, str):
            raise ValueError(f"{where}.id or .type is not text")
        try:
            status_value = AgreementStatus(status)
        except ValueError:
            raise ValueError(f"{where}.status is unknown: {status!r}") from None
        return cls(
            id=agreement_id,
            type=kind,
            status=status_value,
            valid_from=_instant(required("valid_from"), f"{where}.valid_from"),
            valid_until=_instant(required("valid_until"), f"{where}.valid_until"),
            model_tiers=_names(required("model_tiers"), f"{where}.model_tiers"),
            countries=_names(required("countries"), f"{where}.countries"),
        )


def _instant(value: object, where: str) -> float | None:
    if value is None:
        return None
    parsed = parse_instant(value)
    if parsed is None:
        raise ValueError(f"{where} is not a date or time: {value!r}")
    return parsed


def _names(value: object, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where} is not a list of names")
    return frozenset(value)


@dataclass(frozen=True, slots=True)
class Entity:
    """A customer organisation as the registry knows it."""

    id: str
    headquarters: str | None
    parent: str | None = None  # the ultimate parent's headquarters; None: the entity is its own
    name: str | None = None
    denied: bool = False
    denied_reason: str | None = None
    agreements: tuple[Agreement, ...] = ()
    # Other names the entity is known by (trade names, transliterations): screened with ``name``.
    aliases: tuple[str, ...] = ()
    owners: tuple[Owner, ...] = ()
    ownership: OwnershipStatus = OwnershipStatus.UNKNOWN
    screening_reviews: tuple[ScreeningReview, ...] = ()

    @property
    def ultimate_parent(self) -> str | None:
        """The ultimate parent's headquarters country (the entity's own when it has no parent)."""
        return self.parent if self.parent is not None else self.headquarters


# Order in which agreement states explain a refusal: the most telling first.
_STATE_RANK: Mapping[AgreementState, int] = {
    AgreementState.VALID: 0,
    AgreementState.OUT_OF_SCOPE: 1,
    AgreementState.UNKNOWN_COUNTRY: 2,
    AgreementState.EXPIRED: 3,
    AgreementState.NOT_YET_VALID: 4,
    AgreementState.SUSPENDED: 5,
    AgreementState.REVOKED: 6,
    AgreementState.NONE: 7,
}


def evaluate_agreements(
    agreements: Iterable[Agreement],
    *,
    model_tier: str,
    country: str | None,
    at: float,
    accepted_types: frozenset[str] | None = None,
) -> tuple[AgreementState, Agreement | None]:
    """The best state any agreement gives this request, and the agreement that gives it."""
    best_state = AgreementState.NONE
    best: Agreement | None = None
    for agreement in agreements:
        if accepted_types is not None and agreement.type not in accepted_types:
            continue
        state = agreement.state_at(at)
        if state is AgreementState.VALID and not agreement.covers(model_tier, country):
            state = (
                AgreementState.UNKNOWN_COUNTRY
                if country is None and ANY not in agreement.countries
                else AgreementState.OUT_OF_SCOPE
            )
        if _STATE_RANK[state] < _STATE_RANK[best_state]:
            best_state, best = state, agreement
            if state is AgreementState.VALID:
                break
    return best_state, best


class EntityRegistry(Protocol):
    """Where entities are looked up; implementations are immutable once built."""

    source: str

    def get(self, entity_id: str) -> Entity | None:
        """The entity with this id, or ``None``."""
        ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Entity]: ...


# One object per entity id, shared by the claims reader (a token's entity) and the registries'
# keys: a table keyed by entity then finds its key by identity (StringPool says why).
ENTITY_IDS = StringPool(65_536)


class InMemoryRegistry:
    """A registry held in a dict; the file loader builds one of these."""

    def __init__(
        self, entities: Iterable[Entity], source: str = "<memory>", revision: str | None = None
    ) -> None:
        self._entities: dict[str, Entity] = {ENTITY_IDS.one(e.id): e for e in entities}
        self.source = source
        self.revision = revision  # the file's SHA-256 once loaded by the gate (audit records)

    def get(self, entity_id: str) -> Entity | None:
        """The entity with this id, or ``None``."""
        return self._entities.get(entity_id)

    def lookup(self, entity_id: str) -> Entity | None:
        """As :meth:`get`: a registry in memory never misses (the gate's EntitySource)."""
        return self._entities.get(entity_id)

    async def fetch(self, entity_id: str) -> Entity | None:
        """As :meth:`get`."""
        return self._entities.get(entity_id)

    def __len__(self) -> int:
        return len(self._entities)

    def __iter__(self) -> Iterator[Entity]:
        return iter(self._entities.values())
