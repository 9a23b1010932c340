"""Ownership: who is treated as listed because listed parties own it, and whose jurisdiction counts.

The test is the one of BIS's Affiliates rule (2025-09-29) and OFAC's 50 Percent Rule: an entity
owned 50% or more, in aggregate, directly or indirectly, by listed parties is treated as listed.
Indirect holdings count through entities that are themselves treated as listed: a listed party's
100% subsidiary holding 30% of an entity counts as a listed 30%; a 40% holding through an
unlisted company counts for nothing. The result is a fixpoint over the owner graph, computed by a
worklist (each entity is re-examined when one of its owners becomes treated as listed), so it
takes time in proportion to the ownership links. The registry refuses ownership cycles at load.

Pure functions over the registry's entities and the screening results: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aidr_gate.registry import Entity

THRESHOLD = 50.0
_EPSILON = 1e-9
MAX_PATH = 64  # an ownership path is evidence, not a walk without end


@dataclass(frozen=True, slots=True)
class OwnershipLink:
    """One holder whose share counts as listed, and why."""

    owner: str  # a registry entity id, or a named owner's name
    share: float
    basis: str  # "listed" (the holder is a listed party) or "owned by listed"
    entries: tuple[str, ...]  # the list entries of a listed holder
    in_registry: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form."""
        return {
            "owner": self.owner,
            "share": self.share,
            "basis": self.basis,
            "entries": list(self.entries),
            "in_registry": self.in_registry,
        }


@dataclass(frozen=True, slots=True)
class OwnershipFinding:
    """What listed parties hold of one entity."""

    entity: str
    listed_share: float  # the aggregate percentage held by holders that count as listed
    links: tuple[OwnershipLink, ...]
    path: tuple[str, ...]  # from the entity up the largest listed holding to a listed party

    @property
    def owned_by_listed(self) -> bool:
        """50% or more held, in aggregate, by holders that count as listed."""
        return self.listed_share >= THRESHOLD - _EPSILON

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (evidence)."""
        return {
            "entity": self.entity,
            "listed_share": self.listed_share,
            "owned_by_listed": self.owned_by_listed,
            "links": [link.to_dict() for link in self.links],
            "path": list(self.path),
        }


def _links(
    entity: Entity,
    treated: Mapping[str, tuple[str, tuple[str, ...]]],
    listed_owners: Mapping[int, tuple[str, ...]],
) -> list[OwnershipLink]:
    links = []
    for index, owner in enumerate(entity.owners):
        if owner.entity_id is not None and owner.entity_id in treated:
            basis, entries = treated[owner.entity_id]
            links.append(OwnershipLink(owner.entity_id, owner.share, basis, entries, True))
        elif owner.entity_id is None and index in listed_owners:
            label = owner.name or f"owners[{index}]"
            links.append(OwnershipLink(label, owner.share, "listed", listed_owners[index], False))
    return links


def listed_ownership(
    entities: Mapping[str, Entity],
    listed: Mapping[str, tuple[str, ...]],
    listed_owners: Mapping[str, Mapping[int, tuple[str, ...]]],
) -> dict[str, OwnershipFinding]:
    """What listed parties hold of every entity in which they hold anything.

    *listed* maps the entities that are listed parties themselves to their entries;
    *listed_owners* maps an entity to its named (non-registry) owners that are listed parties.
    """
    treated: dict[str, tuple[str, tuple[str, ...]]] = {
        entity_id: ("listed", entries) for entity_id, entries in listed.items()
    }
    holdings: dict[str, list[str]] = {}  # owner id → the entities it holds shares of
    for entity in entities.values():
        for owner in entity.owners:
            if owner.entity_id is not None:
                holdings.setdefault(owner.entity_id, []).append(entity.id)
    queue = [held for owner in treated for held in holdings.get(owner, ())]
    queue += [e for e in listed_owners if e in entities]
    while queue:
        entity_id = queue.pop()
        if entity_id in treated:
            continue
        links = _links(entities[entity_id], treated, listed_owners.get(entity_id, {}))
        if sum(link.share for link in links) >= THRESHOLD - _EPSILON:
            roots = tuple(dict.fromkeys(e for link in links for e in link.entries))
            treated[entity_id] = ("owned by listed", roots)
            queue += holdings.get(entity_id, ())
    findings: dict[str, OwnershipFinding] = {}
    for entity in entities.values():
        links = _links(entity, treated, listed_owners.get(entity.id, {}))
        if links:
            share = round(sum(link.share for link in links), 6)
            findings[entity.id] = OwnershipFinding(
                entity.id, share, tuple(links), _path(entity.id, entities, treated, listed_owners)
            )
    return findings


def _path(
    start: str,
    entities: Mapping[str, Entity],
    treated: Mapping[str, tuple[str, tuple[str, ...]]],
    listed_owners: Mapping[str, Mapping[int, tuple[str, ...]]],
) -> tuple[str, ...]:
    """``entity ← holder (share%) ← ... ← listed party (share%, entries)``, by the largest link."""
    path = [start]
    current, seen = start, {start}
    while len(path) < MAX_PATH:
        links = _links(entities[current], treated, listed_owners.get(current, {}))
        if not links:
            break
        link = max(links, key=lambda item: item.share)
        if link.basis == "listed":
            path.append(f"{link.owner} ({link.share:g}%, listed: {', '.join(link.entries)})")
            break
        path.append(f"{link.owner} ({link.share:g}%, owned by listed)")
        if link.owner in seen:
            break
        seen.add(link.owner)
        current = link.owner
    return tuple(path)


@dataclass(frozen=True, slots=True)
class ControlChain:
    """Whose headquarters decide an entity's jurisdiction, and how that was found."""

    country: str | None
    chain: tuple[str, ...]  # entity ids (and a named owner last) from the entity up
    basis: str  # "stated parent", "controlling owner", or "own headquarters"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (evidence)."""
        return {"country": self.country, "chain": list(self.chain), "basis": self.basis}


def controlling_chain(entities: Mapping[str, Entity], entity_id: str) -> ControlChain:
    """The jurisdiction of *entity_id* when no ultimate parent is stated: up the owners > 50%.

    A stated ``ultimate_parent`` (on the entity, or on an entity up the chain) wins; a named
    owner > 50% outside the registry ends the chain at its country (``None`` when the registry
    does not give it); an entity with no controlling
    owner is its own ultimate parent. An id the registry does not hold has no country.
    """
    entity = entities.get(entity_id)
    if entity is None:
        return ControlChain(None, (entity_id,), "own headquarters")
    chain = [entity.id]
    while len(chain) < MAX_PATH:
        if entity.parent is not None:
            basis = "stated parent" if len(chain) == 1 else "controlling owner"
            return ControlChain(entity.parent, tuple(chain), basis)
        controller = next((o for o in entity.owners if o.share > THRESHOLD + _EPSILON), None)
        if controller is None:
            break
        if controller.entity_id is None:
            chain.append(controller.name or "(unnamed owner)")
            # A controlling holder whose country is not known leaves the jurisdiction unknown
            # (None), which the gate treats as it treats any unknown country: fail closed.
            return ControlChain(controller.country, tuple(chain), "controlling owner")
        parent = entities.get(controller.entity_id)
        if parent is None or parent.id in chain:
            break
        chain.append(parent.id)
        entity = parent
    basis = "own headquarters" if len(chain) == 1 else "controlling owner"
    return ControlChain(entity.headquarters, tuple(chain), basis)
