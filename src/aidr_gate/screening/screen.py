"""Screening registry entities against a list snapshot, with the recorded reviews applied.

Screening runs when the registry or a list changes, never per request. Each entity's name and
aliases are screened, and the names of its owners that are not registry entities (a registry
owner is screened as the entity it is, and counts through ``ownership.py``). Every hit carries the
name and field screened, the list entry and name it matched, the score and the reasons.

A compliance officer's review (``screening_reviews`` in the registry) decides a hit:

- ``confirmed``: the entity (or, when the review names an owner's name, that owner) is the listed
  party. It holds while the entry is on the lists, whether or not today's matcher still finds it.
- ``false-positive``: cleared, for that entry and that name only (a review without a name clears
  the entity's own ``name``). A new alias or a new list entry is screened afresh.
- no review: a potential hit, a fact packs test; never silently allowed.

A review naming an entry that is not on the lists (delisted, or a typo) is stale: reported, and
not applied.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aidr_gate.registry import Entity, ReviewDecision, ScreeningReview
from aidr_gate.screening.entries import ListVersion
from aidr_gate.screening.matcher import NameIndex, NameMatch
from aidr_gate.screening.store import ListSnapshot
from aidr_gate.settings.screening import DEFAULT_THRESHOLD

ENTITY = "entity"
OWNER = "owner"


class HitState(StrEnum):
    """What the recorded reviews make of a hit."""

    CONFIRMED = "confirmed"
    CLEARED = "cleared"  # reviewed as a false positive
    POTENTIAL = "potential"  # not reviewed


@dataclass(frozen=True, slots=True)
class Hit:
    """One screened name of an entity that matched a list entry."""

    entity: str
    subject: str  # ENTITY (its name or an alias) or OWNER (a named owner outside the registry)
    name: str  # the name screened
    name_field: str  # "name", "aliases[0]", "owners[1].name"
    match: NameMatch
    state: HitState
    review: ScreeningReview | None = None
    owner_index: int | None = None
    countries_agree: bool | None = None  # the entity's (owner's) country is among the entry's

    @property
    def entry(self) -> str:
        """The list entry's key."""
        return self.match.entry

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form."""
        return {
            "entity": self.entity,
            "subject": self.subject,
            "name": self.name,
            "name_field": self.name_field,
            **self.match.to_dict(),
            "state": self.state.value,
            "review": self.review.to_dict() if self.review is not None else None,
            "countries_agree": self.countries_agree,
        }


@dataclass(frozen=True, slots=True)
class EntityScreen:
    """One entity's screening: its hits, and what its reviews make of them."""

    entity: str
    hits: tuple[Hit, ...]
    confirmed: tuple[str, ...]  # entries the entity itself is confirmed to be
    listed_owners: Mapping[int, tuple[str, ...]]  # named owners confirmed listed: index → entries
    potential_owners: Mapping[int, tuple[str, ...]]  # named owners with unreviewed hits
    stale_reviews: tuple[ScreeningReview, ...]
    names_screened: int

    @property
    def potential(self) -> tuple[Hit, ...]:
        """Unreviewed hits on the entity's own names."""
        return tuple(h for h in self.hits if h.subject == ENTITY and h.state is HitState.POTENTIAL)


@dataclass(frozen=True, slots=True)
class ScreeningRun:
    """Every entity of a registry screened against one list snapshot."""

    version: ListVersion
    threshold: float
    results: Mapping[str, EntityScreen]
    names_screened: int
    seconds: float

    def hits(self) -> Iterable[Hit]:
        """Every hit of every entity."""
        for result in self.results.values():
            yield from result.hits


def _screened_names(entity: Entity) -> list[tuple[str, str, str, int | None]]:
    """(subject, field, name, owner index) for every name of *entity* that is screened."""
    out: list[tuple[str, str, str, int | None]] = []
    if entity.name:
        out.append((ENTITY, "name", entity.name, None))
    out += [(ENTITY, f"aliases[{i}]", a, None) for i, a in enumerate(entity.aliases) if a]
    for index, owner in enumerate(entity.owners):
        if owner.entity_id is None and owner.name:
            out.append((OWNER, f"owners[{index}].name", owner.name, index))
    return out


def _review_for(
    reviews: tuple[ScreeningReview, ...], entry: str, name: str, field: str
) -> ScreeningReview | None:
    """The latest review deciding this entry for this name."""
    best: ScreeningReview | None = None
    for review in reviews:
        if review.entry != entry:
            continue
        if review.name is not None and review.name != name:
            continue
        clears = review.decision is ReviewDecision.FALSE_POSITIVE
        if review.name is None and clears and field != "name":
            continue  # a clearance without a name is for the entity's own name only
        if best is None or review.at >= best.at:
            best = review
    return best


def screen_entity(
    entity: Entity,
    index: NameIndex,
    snapshot: ListSnapshot,
    cache: dict[str, list[NameMatch]] | None = None,
) -> EntityScreen:
    """Screen one entity's names and its named owners' names, and apply its reviews."""
    cache = {} if cache is None else cache
    hits: list[Hit] = []
    used: set[int] = set()
    names = _screened_names(entity)
    reviews = entity.screening_reviews
    for subject, field, name, owner_index in names:
        matches = cache.get(name)
        if matches is None:
            matches = cache[name] = index.match(name)
        country = entity.headquarters
        if owner_index is not None:
            country = entity.owners[owner_index].country
        for found in matches:
            review = _review_for(reviews, found.entry, name, field)
            if review is not None:
                used.add(id(review))
            state = HitState.POTENTIAL
            if review is not None:
                confirmed = review.decision is ReviewDecision.CONFIRMED
                state = HitState.CONFIRMED if confirmed else HitState.CLEARED
            listed = snapshot.get(found.entry)
            agree = None if country is None or listed is None else country in listed.countries
            hits.append(
                Hit(entity.id, subject, name, field, found, state, review, owner_index, agree)
            )
    return _decided(entity, hits, reviews, used, snapshot, len(names))


def _decided(
    entity: Entity,
    hits: list[Hit],
    reviews: tuple[ScreeningReview, ...],
    used: set[int],
    snapshot: ListSnapshot,
    names_screened: int,
) -> EntityScreen:
    confirmed: dict[str, None] = {}
    listed_owners: dict[int, dict[str, None]] = {}
    potential_owners: dict[int, dict[str, None]] = {}
    for hit in hits:
        if hit.state is HitState.CONFIRMED and hit.owner_index is None:
            confirmed[hit.entry] = None
        elif hit.state is HitState.CONFIRMED and hit.owner_index is not None:
            listed_owners.setdefault(hit.owner_index, {})[hit.entry] = None
        elif hit.state is HitState.POTENTIAL and hit.owner_index is not None:
            potential_owners.setdefault(hit.owner_index, {})[hit.entry] = None
    stale: list[ScreeningReview] = []
    owner_names = {o.name: i for i, o in enumerate(entity.owners) if o.entity_id is None and o.name}
    for review in reviews:
        if id(review) in used:
            continue
        if snapshot.get(review.entry) is None or review.decision is ReviewDecision.FALSE_POSITIVE:
            stale.append(review)  # delisted or mistyped; a clearance of a hit no longer found
        elif review.name is not None and review.name in owner_names:
            listed_owners.setdefault(owner_names[review.name], {})[review.entry] = None
        else:
            confirmed[review.entry] = None  # confirmed, though today's matcher misses it
    for index in listed_owners:
        potential_owners.pop(index, None)
    return EntityScreen(
        entity=entity.id,
        hits=tuple(sorted(hits, key=lambda h: (-h.match.score, h.name_field, h.entry))),
        confirmed=tuple(confirmed),
        listed_owners={i: tuple(e) for i, e in listed_owners.items()},
        potential_owners={i: tuple(e) for i, e in potential_owners.items()},
        stale_reviews=tuple(stale),
        names_screened=names_screened,
    )


def screen_registry(
    entities: Iterable[Entity],
    snapshot: ListSnapshot,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    index: NameIndex | None = None,
) -> ScreeningRun:
    """Screen every entity against the snapshot (pass *index* to reuse one built for it)."""
    started = time.perf_counter()
    if index is None:
        index = NameIndex(snapshot, threshold)
    cache: dict[str, list[NameMatch]] = {}
    results = {e.id: screen_entity(e, index, snapshot, cache) for e in entities}
    return ScreeningRun(
        version=snapshot.version,
        threshold=index.threshold,
        results=results,
        names_screened=sum(r.names_screened for r in results.values()),
        seconds=time.perf_counter() - started,
    )
