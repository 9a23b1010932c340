"""The screening facts of each entity, and the table the request path reads them from.

Built when the registry or the lists change (``screening_table``); read per request with one dict
lookup (:meth:`ScreeningTable.get`). An entity the table does not hold (added to the registry
after the last screening) gets facts that say it was not screened, so a pack can refuse it: a
missing answer is never an allow.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import msgspec

from aidr_gate.registry import Entity, OwnershipStatus
from aidr_gate.screening.entries import ListVersion
from aidr_gate.screening.ownership import OwnershipFinding, controlling_chain, listed_ownership
from aidr_gate.screening.screen import EntityScreen, ScreeningRun


class ScreeningFacts(msgspec.Struct, frozen=True, gc=False):
    """What screening found about one entity: the facts packs test."""

    screened: bool = True
    listed: bool = False  # a confirmed hit: the entity is a listed party (RESTRICTED_PARTY)
    owned_by_listed: bool = False  # 50% or more held, in aggregate, by listed parties
    potential_hit: bool = False  # an unreviewed hit on the entity's own names
    exact_hit: bool = False  # one of those matched a listed name word for word
    potential_owned_by_listed: bool = False  # owned 50%+ if unreviewed owner hits were confirmed
    ownership_unknown: bool = False  # nothing is known of the owners (BIS Red Flag 29)
    ownership_partial: bool = False  # some owners are known, not all
    listed_share: float = 0.0  # aggregate % held by holders that count as listed
    entries: tuple[str, ...] = ()  # confirmed entries: the entity's own, then its listed owners'
    potential_entries: tuple[str, ...] = ()  # entries of unreviewed hits (own names and owners)
    ownership_path: tuple[str, ...] = ()  # entity ← holder (share) ← ... ← listed party
    list_version: str = ""  # ListVersion.label of the lists screened against
    list_digest: str = ""  # ListVersion.digest: what an auditor matches a list file set against
    list_date: str = ""  # ListVersion.date: the oldest source date of those lists
    owned_by_sdn: bool = False  # 50% or more held by SDN-listed parties (OFAC's 50 Percent Rule)
    # The facts above as the flags a pack's ``screening`` condition names (policy.reach), built
    # once here so a request hands the engine one ready frozenset.
    flags: frozenset[str] = frozenset()
    # No ultimate parent stated: the country at the top of the controlling owner chain (owners
    # over 50%), which the gate takes as the parent's; None when there is no such owner.
    controlling_country: str | None = None
    controlling_chain: tuple[str, ...] = ()

    @property
    def treated_as_listed(self) -> bool:
        """Listed, or owned 50% or more by listed parties: the gate denies ``RESTRICTED_PARTY``."""
        return self.listed or self.owned_by_listed

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form for evidence and audit."""
        return {
            "screened": self.screened,
            "listed": self.listed,
            "owned_by_listed": self.owned_by_listed,
            "potential_hit": self.potential_hit,
            "exact_hit": self.exact_hit,
            "potential_owned_by_listed": self.potential_owned_by_listed,
            "ownership_unknown": self.ownership_unknown,
            "ownership_partial": self.ownership_partial,
            "listed_share": self.listed_share,
            "entries": list(self.entries),
            "potential_entries": list(self.potential_entries),
            "ownership_path": list(self.ownership_path),
            "list_version": self.list_version,
            "list_digest": self.list_digest,
            "list_date": self.list_date,
            "owned_by_sdn": self.owned_by_sdn,
            "flags": sorted(self.flags),
            "controlling_country": self.controlling_country,
            "controlling_chain": list(self.controlling_chain),
        }


def with_flags(facts: ScreeningFacts) -> ScreeningFacts:
    """*facts* with :attr:`ScreeningFacts.flags` set from its other fields."""
    named = {
        "listed": facts.listed,
        "owned-by-listed": facts.owned_by_listed,
        "owned-by-sdn": facts.owned_by_sdn,
        "potential-hit": facts.potential_hit,
        "exact-hit": facts.exact_hit,
        "potential-owned-by-listed": facts.potential_owned_by_listed,
        "ownership-unknown": facts.ownership_unknown,
        "ownership-partial": facts.ownership_partial,
        "not-screened": not facts.screened,
    }
    flags = frozenset(k for k, v in named.items() if v)
    # One object per distinct set (at most 2**9): the engine's cache compares keys by identity
    # first, so a shared set is found without comparing members.
    return msgspec.structs.replace(facts, flags=_FLAG_SETS.setdefault(flags, flags))


_FLAG_SETS: dict[frozenset[str], frozenset[str]] = {}


class ScreeningTable:
    """Every entity's screening facts, for the request path: one lookup, no work."""

    __slots__ = ("facts", "findings", "source", "unavailable", "unscreened", "version")

    def __init__(
        self,
        facts: Mapping[str, ScreeningFacts],
        version: ListVersion,
        findings: Mapping[str, OwnershipFinding] | None = None,
    ) -> None:
        self.facts = dict(facts)  # read directly by the gate (one lookup, no method call)
        self.version = version
        self.findings: Mapping[str, OwnershipFinding] = findings or {}
        self.unscreened = with_flags(
            ScreeningFacts(
                screened=False,
                list_version=version.label,
                list_digest=version.digest,
                list_date=version.date,
            )
        )
        # Set (by the runtime) when the lists behind this table are older than the bound the
        # configuration allows: the gate then denies SCREENING_UNAVAILABLE (fail closed).
        self.unavailable: str | None = None
        # The lists and settings the table was screened with (screening.settings), when a
        # running gate keeps them current; None for a table built by hand.
        self.source: Any = None

    def get(self, entity_id: str) -> ScreeningFacts:
        """The entity's facts; facts saying ``screened=False`` for an entity never screened."""
        return self.facts.get(entity_id, self.unscreened)

    def __len__(self) -> int:
        return len(self.facts)


def screening_table(entities: Iterable[Entity], run: ScreeningRun) -> ScreeningTable:
    """The facts of every entity from a screening run, ownership included (a pure function)."""
    by_id = {e.id: e for e in entities}
    results = run.results
    listed = {eid: r.confirmed for eid, r in results.items() if r.confirmed}
    listed_owners = {eid: r.listed_owners for eid, r in results.items() if r.listed_owners}
    confirmed = listed_ownership(by_id, listed, listed_owners)
    # The same test with every unreviewed hit taken as confirmed: what the reviews could change.
    maybe_listed = dict(listed)
    maybe_owners: dict[str, dict[int, tuple[str, ...]]] = {
        k: dict(v) for k, v in listed_owners.items()
    }
    for eid, result in results.items():
        potential = tuple(dict.fromkeys(h.entry for h in result.potential))
        if potential:
            maybe_listed[eid] = maybe_listed.get(eid, ()) + potential
        for index, entries in result.potential_owners.items():
            maybe_owners.setdefault(eid, {})[index] = entries
    possible = listed_ownership(by_id, maybe_listed, maybe_owners)
    # OFAC's 50 Percent Rule counts SDN-listed holders only, and is never suspended: the same
    # test again over the SDN entries, so a pack can tell it from the Affiliates rule's.
    sdn_listed = {k: sdn for k, v in listed.items() if (sdn := _sdn(v))}
    sdn_owners = {
        k: held
        for k, v in listed_owners.items()
        if (held := {i: e for i, es in v.items() if (e := _sdn(es))})
    }
    by_sdn = listed_ownership(by_id, sdn_listed, sdn_owners)
    facts = {
        eid: _facts_for(
            entity,
            results[eid],
            confirmed.get(eid),
            possible.get(eid),
            run.version,
            by_sdn.get(eid),
            by_id,
        )
        for eid, entity in by_id.items()
        if eid in results
    }
    return ScreeningTable(facts, run.version, confirmed)


def _facts_for(
    entity: Entity,
    result: EntityScreen,
    finding: OwnershipFinding | None,
    possible: OwnershipFinding | None,
    version: ListVersion,
    by_sdn: OwnershipFinding | None,
    by_id: Mapping[str, Entity],
) -> ScreeningFacts:
    owned = _owned(finding)
    own_potential = result.potential
    owner_potential = [e for entries in result.potential_owners.values() for e in entries]
    controlling_country, chain = _controller(entity, by_id)
    facts = ScreeningFacts(
        controlling_country=controlling_country,
        controlling_chain=chain,
        listed=bool(result.confirmed),
        owned_by_listed=owned,
        potential_hit=bool(own_potential),
        exact_hit=any(h.match.score >= 100.0 for h in own_potential),
        potential_owned_by_listed=not owned and _owned(possible),
        ownership_unknown=entity.ownership is OwnershipStatus.UNKNOWN,
        ownership_partial=entity.ownership is OwnershipStatus.PARTIAL,
        listed_share=finding.listed_share if finding is not None else 0.0,
        entries=_unique([*result.confirmed, *_owner_entries(finding)]),
        potential_entries=_unique([*(h.entry for h in own_potential), *owner_potential]),
        ownership_path=finding.path if finding is not None and owned else (),
        list_version=version.label,
        list_digest=version.digest,
        list_date=version.date,
        owned_by_sdn=_owned(by_sdn),
    )
    return with_flags(facts)


def _owned(finding: OwnershipFinding | None) -> bool:
    return finding is not None and finding.owned_by_listed


def _owner_entries(finding: OwnershipFinding | None) -> Iterator[str]:
    """The confirmed entries of an entity's listed holders, in the finding's order."""
    if finding is not None:
        for link in finding.links:
            yield from link.entries


def _controller(entity: Entity, by_id: Mapping[str, Entity]) -> tuple[str | None, tuple[str, ...]]:
    """The country and chain of a controlling owner (> 50%), when no ultimate parent is stated."""
    if entity.parent is not None:
        return None, ()
    control = controlling_chain(by_id, entity.id)
    if control.basis != "controlling owner" or not control.country:
        return None, ()
    return control.country, control.chain


def _sdn(entries: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(e for e in entries if e.startswith("sdn:"))


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))
