"""The entity registry: who an entity is, where it and its ultimate parent are headquartered,
whether it is denied, and which agreements it holds.

The registry is a store behind a small :class:`EntityRegistry` protocol: the file implementation
loads YAML/JSON once and is immutable afterwards; reloading builds a new one and swaps it whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from aidr_gate.document import (
    Checker,
    Document,
    format_instant,
    join,
    load_document,
    parse_instant,
)


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


class InMemoryRegistry:
    """A registry held in a dict; the file loader builds one of these."""

    def __init__(self, entities: Iterable[Entity], source: str = "<memory>") -> None:
        self._entities: dict[str, Entity] = {e.id: e for e in entities}
        self.source = source

    def get(self, entity_id: str) -> Entity | None:
        """The entity with this id, or ``None``."""
        return self._entities.get(entity_id)

    def __len__(self) -> int:
        return len(self._entities)

    def __iter__(self) -> Iterator[Entity]:
        return iter(self._entities.values())


_ENTITY_KEYS = ("name", "headquarters", "ultimate_parent", "denied", "denied_reason", "agreements")
_AGREEMENT_KEYS = (
    "id",
    "type",
    "status",
    "valid_from",
    "valid_until",
    "model_tiers",
    "countries",
    "note",
)


def _read_agreement(check: Checker, raw: Any, path: str, seen: set[str]) -> Agreement | None:
    data = check.mapping(raw, path, keys=_AGREEMENT_KEYS, required=("id", "type", "status"))
    if data is None:
        return None
    agreement_id = check.string(data.get("id"), join(path, "id"))
    if agreement_id is not None:
        if agreement_id in seen:
            check.error(join(path, "id"), f"agreement id {agreement_id!r} is used twice")
        seen.add(agreement_id)
    kind = check.string(data.get("type"), join(path, "type"), choices=AGREEMENT_TYPES)
    status_text = check.string(
        data.get("status"), join(path, "status"), choices=[s.value for s in AgreementStatus]
    )
    valid_from = valid_until = None
    if data.get("valid_from") is not None:
        valid_from = check.instant(data["valid_from"], join(path, "valid_from"))
    if data.get("valid_until") is not None:
        valid_until = check.instant(data["valid_until"], join(path, "valid_until"))
    if valid_from is not None and valid_until is not None and valid_until <= valid_from:
        check.error(join(path, "valid_until"), "must be after valid_from")
    tiers = _read_scope(check, data.get("model_tiers", [ANY]), join(path, "model_tiers"), False)
    countries = _read_scope(check, data.get("countries", [ANY]), join(path, "countries"), True)
    if agreement_id is None or kind is None or status_text is None:
        return None
    if tiers is None or countries is None:
        return None
    return Agreement(
        id=agreement_id,
        type=kind,
        status=AgreementStatus(status_text),
        valid_from=valid_from,
        valid_until=valid_until,
        model_tiers=tiers,
        countries=countries,
    )


def _read_scope(check: Checker, raw: Any, path: str, countries: bool) -> frozenset[str] | None:
    if raw == ANY:
        return frozenset({ANY})
    items = check.sequence(raw, path, allow_empty=False)
    if items is None:
        return None
    out: set[str] = set()
    for index, item in enumerate(items):
        item_path = join(path, index)
        if item == ANY:
            out.add(ANY)
            continue
        got = check.country(item, item_path) if countries else check.ident(item, item_path, "tier")
        if got is not None:
            out.add(got)
    return frozenset(out)


def registry_from_document(document: Document) -> tuple[InMemoryRegistry, Checker]:
    """Build a registry from a parsed document; the checker holds every problem found."""
    check = Checker(document)
    top = check.mapping(document.data, "", keys=("entities", "version", "description"))
    entities: list[Entity] = []
    raw_entities = check.mapping(top.get("entities") if top else None, "entities")
    for entity_id, raw in (raw_entities or {}).items():
        path = join("entities", entity_id)
        if not entity_id.strip() or len(entity_id) > 256:
            check.error(path, "entity id must be 1 to 256 characters")
            continue
        data = check.mapping(raw, path, keys=_ENTITY_KEYS, required=("headquarters",))
        if data is None:
            continue
        hq = check.country(data.get("headquarters"), join(path, "headquarters"))
        parent = None
        if data.get("ultimate_parent") is not None:
            parent = check.country(data["ultimate_parent"], join(path, "ultimate_parent"))
        denied = check.boolean(data.get("denied", False), join(path, "denied"))
        denied_reason = None
        if data.get("denied_reason") is not None:
            denied_reason = check.string(data["denied_reason"], join(path, "denied_reason"))
        if denied and not denied_reason:
            check.warn(join(path, "denied_reason"), "a denied entity should say why")
        seen: set[str] = set()
        agreements: list[Agreement] = []
        raw_agreements = check.sequence(data.get("agreements", []), join(path, "agreements"))
        for index, item in enumerate(raw_agreements or []):
            got = _read_agreement(check, item, join(join(path, "agreements"), index), seen)
            if got is not None:
                agreements.append(got)
        name = data.get("name")
        entities.append(
            Entity(
                id=entity_id,
                headquarters=hq,
                parent=parent,
                name=name if isinstance(name, str) else None,
                denied=bool(denied),
                denied_reason=denied_reason,
                agreements=tuple(agreements),
            )
        )
    return InMemoryRegistry(entities, source=document.file), check


def load_registry(path: str | Path) -> InMemoryRegistry:
    """Load and validate a registry file; raise :class:`ConfigError` listing every problem."""
    registry, check = registry_from_document(load_document(path))
    check.raise_if_errors()
    return registry
