"""Reading a registry file (YAML or JSON) into entities, with every problem at its ``file:line``.

One reader for the format: :func:`load_registry` for a file, :func:`registry_from_document` for a
parsed document (the checker keeps every problem, so a file is reported whole, not first error only).
Country codes, agreement types and scopes a large registry repeats are held once each.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from aidr_gate.document import Checker, Document, join, load_large_document
from aidr_gate.registry.model import (
    AGREEMENT_TYPES,
    ANY,
    Agreement,
    AgreementStatus,
    Entity,
    InMemoryRegistry,
    Owner,
    OwnershipStatus,
    ReviewDecision,
    ScreeningReview,
)

__all__ = ["check_ownership_graph", "load_registry", "registry_from_document"]


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
    hq = check.country(data.get("headquarters"), join(path, "headquarters"))
    parent = None
    if data.get("ultimate_parent") is not None:
        parent = check.country(data["ultimate_parent"], join(path, "ultimate_parent"))
    denied, denied_reason = _read_denial(check, data, path)
    # Read in this order (the one before the split), so problems are listed as they were.
    agreements = _read_agreements(check, data, path)
    aliases = _read_aliases(check, data, path)
    owners = _read_owners(check, data["owners"], join(path, "owners")) if "owners" in data else ()
    ownership = _read_ownership(check, data, path, owners)
    name = data.get("name")
    return Entity(
        id=entity_id,
        headquarters=None if hq is None else _canonical(hq),
        parent=None if parent is None else _canonical(parent),
        name=name if isinstance(name, str) else None,
        denied=denied,
        denied_reason=denied_reason,
        agreements=agreements,
        aliases=aliases,
        owners=owners,
        ownership=ownership,
        screening_reviews=_read_reviews(check, data, path),
    )


# The optional parts of an entity, each read only when present: most entities of a large registry
# have none of them. Each reads *data*, the entity's mapping, at *path*, the entity's place.


def _read_denial(check: Checker, data: Mapping[str, Any], path: str) -> tuple[bool, str | None]:
    denied = False
    if "denied" in data:
        denied = bool(check.boolean(data["denied"], join(path, "denied")))
    reason = None
    if data.get("denied_reason") is not None:
        reason = check.string(data["denied_reason"], join(path, "denied_reason"))
    if denied and not reason:
        check.warn(join(path, "denied_reason"), "a denied entity should say why")
    return denied, reason


def _read_agreements(check: Checker, data: Mapping[str, Any], path: str) -> tuple[Agreement, ...]:
    if "agreements" not in data:
        return ()
    agreements: list[Agreement] = []
    seen: set[str] = set()
    where = join(path, "agreements")
    for index, item in enumerate(check.sequence(data["agreements"], where) or []):
        got = _read_agreement(check, item, join(where, index), seen)
        if got is not None:
            agreements.append(got)
    return tuple(agreements)


def _read_aliases(check: Checker, data: Mapping[str, Any], path: str) -> tuple[str, ...]:
    if "aliases" not in data:
        return ()
    aliases = check.each(
        data["aliases"], join(path, "aliases"), lambda item, at: check.string(item, at)
    )
    return tuple(aliases or ())


def _read_ownership(
    check: Checker, data: Mapping[str, Any], path: str, owners: tuple[Owner, ...]
) -> OwnershipStatus:
    ownership = _default_ownership(owners)
    if data.get("ownership") is not None:
        stated = check.string(data["ownership"], join(path, "ownership"), choices=_OWNERSHIP_VALUES)
        ownership = OwnershipStatus(stated) if stated else ownership
    return ownership


def _read_reviews(
    check: Checker, data: Mapping[str, Any], path: str
) -> tuple[ScreeningReview, ...]:
    if "screening_reviews" not in data:
        return ()
    reviews = check.each(
        data["screening_reviews"],
        join(path, "screening_reviews"),
        lambda item, at: _read_review(check, item, at),
    )
    return tuple(reviews or ())


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
