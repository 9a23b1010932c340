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
    load_large_document,
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


class InMemoryRegistry:
    """A registry held in a dict; the file loader builds one of these."""

    def __init__(
        self, entities: Iterable[Entity], source: str = "<memory>", revision: str | None = None
    ) -> None:
        self._entities: dict[str, Entity] = {e.id: e for e in entities}
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


_ENTITY_KEYS = (
    "name",
    "aliases",
    "headquarters",
    "ultimate_parent",
    "denied",
    "denied_reason",
    "agreements",
    "owners",
    "ownership",
    "screening_reviews",
)
_OWNER_KEYS = ("entity", "name", "country", "share", "note")
_REVIEW_KEYS = ("entry", "decision", "by", "at", "why", "name")
_STATUS_VALUES = tuple(s.value for s in AgreementStatus)
_STATUS_OF: Mapping[str, AgreementStatus] = {s.value: s for s in AgreementStatus}
_DECISION_VALUES = tuple(d.value for d in ReviewDecision)
_OWNERSHIP_VALUES = tuple(s.value for s in OwnershipStatus)
# One object for each country code, agreement type and scope a registry repeats: a large registry
# holds each once instead of once per entity.
_CANONICAL: dict[str, str] = {name: name for name in AGREEMENT_TYPES}
_SCOPES: dict[frozenset[str], frozenset[str]] = {}


def _canonical(text: str) -> str:
    return _CANONICAL.setdefault(text, text) if len(text) <= 3 else _CANONICAL.get(text, text)


def _scope(names: frozenset[str]) -> frozenset[str]:
    if len(_SCOPES) > 4096:  # bounded: scopes are few in practice, never unbounded
        return names
    return _SCOPES.setdefault(names, names)


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
    status_text = check.string(data.get("status"), join(path, "status"), choices=_STATUS_VALUES)
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
        type=_CANONICAL.get(kind, kind),
        status=_STATUS_OF[status_text],
        valid_from=valid_from,
        valid_until=valid_until,
        model_tiers=_scope(tiers),
        countries=_scope(countries),
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
            out.add(_canonical(got))
    return frozenset(out)


def _read_owner(check: Checker, raw: Any, path: str) -> Owner | None:
    data = check.mapping(raw, path, keys=_OWNER_KEYS, required=("share",))
    if data is None:
        return None
    owner_id = name = country = None
    if data.get("entity") is not None:
        owner_id = check.string(data["entity"], join(path, "entity"))
    if data.get("name") is not None:
        name = check.string(data["name"], join(path, "name"))
    if data.get("country") is not None:
        country = check.country(data["country"], join(path, "country"))
    if data.get("entity") is None and data.get("name") is None:
        check.error(path, "an owner needs an entity (a registry id) or a name")
        return None
    share = check.number(data.get("share"), join(path, "share"))
    if share is not None and not 0 < share <= 100:
        check.error(join(path, "share"), f"must be a percentage in (0, 100], not {share:g}")
        return None
    if share is None or (data.get("entity") is not None and owner_id is None):
        return None
    return Owner(share=share, entity_id=owner_id, name=name, country=country)


def _read_owners(check: Checker, raw: Any, path: str) -> tuple[Owner, ...]:
    owners = check.each(raw, path, lambda item, where: _read_owner(check, item, where)) or []
    if sum(o.share for o in owners) > 100 + 1e-9:
        check.error(path, "shares add up to more than 100")
    seen: set[str] = set()
    for index, owner in enumerate(owners):
        if owner.entity_id is not None:
            if owner.entity_id in seen:
                check.error(join(join(path, index), "entity"), "this owner is listed twice")
            seen.add(owner.entity_id)
    return tuple(owners)


def _read_review(check: Checker, raw: Any, path: str) -> ScreeningReview | None:
    data = check.mapping(
        raw, path, keys=_REVIEW_KEYS, required=("entry", "decision", "by", "at", "why")
    )
    if data is None:
        return None
    entry = check.string(data.get("entry"), join(path, "entry"))
    decision = check.string(data.get("decision"), join(path, "decision"), choices=_DECISION_VALUES)
    by = check.string(data.get("by"), join(path, "by"))
    at = check.instant(data.get("at"), join(path, "at"))
    why = check.string(data.get("why"), join(path, "why"))
    name = None
    if data.get("name") is not None:
        name = check.string(data["name"], join(path, "name"))
    if entry is None or decision is None or by is None or at is None or why is None:
        return None
    return ScreeningReview(entry, ReviewDecision(decision), by, at, why, name)


def _default_ownership(owners: tuple[Owner, ...]) -> OwnershipStatus:
    if not owners:
        return OwnershipStatus.UNKNOWN
    complete = sum(o.share for o in owners) >= 100 - 1e-9
    return OwnershipStatus.COMPLETE if complete else OwnershipStatus.PARTIAL


def check_ownership_graph(check: Checker, entities: Iterable[Entity]) -> None:
    """Owners that name no registry entity, and ownership cycles, are errors at their lines."""
    by_id = {e.id: e for e in entities}
    for entity in by_id.values():
        for index, owner in enumerate(entity.owners):
            if owner.entity_id is not None and owner.entity_id not in by_id:
                where = join(join(join("entities", entity.id), "owners"), index)
                check.error(join(where, "entity"), f"no entity {owner.entity_id!r} in the registry")
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in by_id:
        if state.get(start):
            continue
        # Iterative depth-first walk: an ownership chain can be longer than Python's recursion.
        stack: list[tuple[str, Iterator[Owner]]] = [(start, iter(by_id[start].owners))]
        state[start] = 1
        while stack:
            current, owners = stack[-1]
            step = next(owners, None)
            if step is None:
                state[current] = 2
                stack.pop()
                continue
            nxt = step.entity_id
            if nxt is None or nxt not in by_id or state.get(nxt) == 2:
                continue
            if state.get(nxt) == 1:
                cycle = [name for name, _ in stack[[n for n, _ in stack].index(nxt) :]]
                where = join(join("entities", current), "owners")
                check.error(where, "ownership cycle: " + " -> ".join([*cycle, nxt]))
                continue
            state[nxt] = 1
            stack.append((nxt, iter(by_id[nxt].owners)))


def _read_entity(check: Checker, entity_id: str, raw: Any) -> Entity | None:
    path = join("entities", entity_id)
    if not entity_id.strip() or len(entity_id) > 256:
        check.error(path, "entity id must be 1 to 256 characters")
        return None
    data = check.mapping(raw, path, keys=_ENTITY_KEYS, required=("headquarters",))
    if data is None:
        return None
    get = data.get
    hq = check.country(get("headquarters"), join(path, "headquarters"))
    parent = None
    if get("ultimate_parent") is not None:
        parent = check.country(data["ultimate_parent"], join(path, "ultimate_parent"))
    denied = False
    if "denied" in data:
        denied = bool(check.boolean(data["denied"], join(path, "denied")))
    denied_reason = None
    if get("denied_reason") is not None:
        denied_reason = check.string(data["denied_reason"], join(path, "denied_reason"))
    if denied and not denied_reason:
        check.warn(join(path, "denied_reason"), "a denied entity should say why")
    # Optional lists are read only when present: most entities of a large registry have none.
    agreements: list[Agreement] = []
    if "agreements" in data:
        seen: set[str] = set()
        where = join(path, "agreements")
        for index, item in enumerate(check.sequence(data["agreements"], where) or []):
            got = _read_agreement(check, item, join(where, index), seen)
            if got is not None:
                agreements.append(got)
    aliases: list[str] | None = None
    if "aliases" in data:
        aliases = check.each(
            data["aliases"], join(path, "aliases"), lambda item, at: check.string(item, at)
        )
    owners = _read_owners(check, data["owners"], join(path, "owners")) if "owners" in data else ()
    ownership = _default_ownership(owners)
    if get("ownership") is not None:
        stated = check.string(data["ownership"], join(path, "ownership"), choices=_OWNERSHIP_VALUES)
        ownership = OwnershipStatus(stated) if stated else ownership
    reviews: list[ScreeningReview] | None = None
    if "screening_reviews" in data:
        reviews = check.each(
            data["screening_reviews"],
            join(path, "screening_reviews"),
            lambda item, at: _read_review(check, item, at),
        )
    name = get("name")
    return Entity(
        id=entity_id,
        headquarters=None if hq is None else _canonical(hq),
        parent=None if parent is None else _canonical(parent),
        name=name if isinstance(name, str) else None,
        denied=denied,
        denied_reason=denied_reason,
        agreements=tuple(agreements),
        aliases=tuple(aliases or ()),
        owners=owners,
        ownership=ownership,
        screening_reviews=tuple(reviews or ()),
    )


def registry_from_document(
    document: Document, *, consume: bool = False
) -> tuple[InMemoryRegistry, Checker]:
    """Build a registry from a parsed document; the checker holds every problem found.

    With *consume*, each entity's data is dropped from the document once read, so a large
    registry's parsed text and its entities are not both held whole at once.
    """
    check = Checker(document)
    top = check.mapping(document.data, "", keys=("entities", "version", "description"))
    raw_entities = check.mapping(top.get("entities") if top else None, "entities")
    source = document.data.get("entities") if consume and top else None
    entities: list[Entity] = []
    items = raw_entities or {}
    for entity_id in list(items):
        raw = items.pop(entity_id) if consume else items[entity_id]
        if isinstance(source, dict):
            source.pop(entity_id, None)
        entity = _read_entity(check, entity_id, raw)
        if entity is not None:
            entities.append(entity)
    check_ownership_graph(check, entities)
    return InMemoryRegistry(entities, source=document.file), check


def load_registry(path: str | Path) -> InMemoryRegistry:
    """Load and validate a registry file; raise :class:`ConfigError` listing every problem."""
    registry, check = registry_from_document(load_large_document(path), consume=True)
    check.raise_if_errors()
    return registry
