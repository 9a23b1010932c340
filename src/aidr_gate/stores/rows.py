"""Entities as database rows and back: one codec for the SQLite and PostgreSQL stores.

A row read back is ``(id, name, headquarters, parent, denied, denied_reason, aliases, ownership,
agreements, owners, screening_reviews)``, the three lists as JSON arrays of arrays (the stores'
``entity_documents`` views build them), instants as seconds since the epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aidr_gate.registry import (
    ANY,
    Agreement,
    AgreementStatus,
    Entity,
    Owner,
    OwnershipStatus,
    ReviewDecision,
    ScreeningReview,
)

_STATUS = {s.value: s for s in AgreementStatus}
_OWNERSHIP = {s.value: s for s in OwnershipStatus}
_DECISION = {d.value: d for d in ReviewDecision}
_EVERY = frozenset({ANY})
# Scopes repeat across a registry: one frozenset for each, as the file loader shares them.
_SCOPES: dict[tuple[str, ...], frozenset[str]] = {(ANY,): _EVERY}


def _scope(names: Sequence[str]) -> frozenset[str]:
    key = tuple(names)
    found = _SCOPES.get(key)
    if found is None:
        found = frozenset(key)
        if len(_SCOPES) < 4096:
            _SCOPES[key] = found
    return found


def _seconds(value: Any) -> float | None:
    return None if value is None else float(value)


def _agreement(raw: Sequence[Any]) -> Agreement:
    agreement_id, kind, status, start, end, tiers, countries = raw
    return Agreement(
        id=agreement_id,
        type=kind,
        status=_STATUS[status],
        valid_from=_seconds(start),
        valid_until=_seconds(end),
        model_tiers=_scope(tiers),
        countries=_scope(countries),
    )


def entity_from_row(row: Sequence[Any]) -> Entity:
    """The entity a store's ``entity_documents`` row describes."""
    (
        entity_id,
        name,
        hq,
        parent,
        denied,
        reason,
        aliases,
        ownership,
        agreements,
        owners,
        reviews,
    ) = row
    return Entity(
        id=entity_id,
        headquarters=hq,
        parent=parent,
        name=name,
        denied=bool(denied),
        denied_reason=reason,
        agreements=tuple(_agreement(a) for a in agreements or ()),
        aliases=tuple(aliases or ()),
        owners=tuple(
            Owner(share=float(share), entity_id=owner, name=owner_name, country=country)
            for owner, owner_name, country, share in owners or ()
        ),
        ownership=_OWNERSHIP[ownership],
        screening_reviews=tuple(
            ScreeningReview(entry, _DECISION[decision], by, float(at), why, reviewed_name)
            for entry, decision, by, at, why, reviewed_name in reviews or ()
        ),
    )


def entity_row(entity: Entity) -> tuple[Any, ...]:
    """The ``entities`` row of *entity*: id, name, headquarters, parent, denied, denied_reason,
    aliases, ownership."""
    return (
        entity.id,
        entity.name,
        entity.headquarters,
        entity.parent,
        entity.denied,
        entity.denied_reason,
        list(entity.aliases),
        entity.ownership.value,
    )


def agreement_rows(entity: Entity) -> list[tuple[Any, ...]]:
    """The ``agreements`` rows: entity_id, id, position, type, status, valid_from, valid_until
    (seconds), model_tiers, countries (sorted lists)."""
    return [
        (
            entity.id,
            a.id,
            position,
            a.type,
            a.status.value,
            a.valid_from,
            a.valid_until,
            sorted(a.model_tiers),
            sorted(a.countries),
        )
        for position, a in enumerate(entity.agreements)
    ]


def owner_rows(entity: Entity) -> list[tuple[Any, ...]]:
    """The ``owners`` rows: entity_id, position, owner_entity, name, country, share."""
    return [
        (entity.id, position, o.entity_id, o.name, o.country, o.share)
        for position, o in enumerate(entity.owners)
    ]


def review_rows(entity: Entity) -> list[tuple[Any, ...]]:
    """The ``screening_reviews`` rows: entity_id, position, entry, decision, reviewer, at
    (seconds), why, name."""
    return [
        (entity.id, position, r.entry, r.decision.value, r.by, r.at, r.why, r.name)
        for position, r in enumerate(entity.screening_reviews)
    ]
