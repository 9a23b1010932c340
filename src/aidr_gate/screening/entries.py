"""Restricted-party list entries and list versions: the data every reader produces.

An entry is one listed party as its list publishes it: the list it comes from, its id on that
list, its type, programs, names, aliases, addresses and countries, and dates. Entries are keyed
``"<list>:<entry id>"`` (``sdn:36216``, ``el:1b5979e8…``): the key a compliance officer's review
names in the registry (``screening_reviews[].entry``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, TypeVar

T = TypeVar("T")


class EntryType(StrEnum):
    """What kind of party an entry lists."""

    ENTITY = "entity"
    INDIVIDUAL = "individual"
    VESSEL = "vessel"
    AIRCRAFT = "aircraft"
    UNKNOWN = "unknown"  # the list does not say (BIS lists in the CSL leave the type empty)


class AliasKind(StrEnum):
    """How a list names an alias (OFAC's alt_type; the CSL calls them all alt_names)."""

    AKA = "aka"  # also known as
    FKA = "fka"  # formerly known as
    NKA = "nka"  # now known as
    WEAK = "weak"  # a low-quality a.k.a. (OFAC quotes them in the remarks): matched exactly only


@dataclass(frozen=True, slots=True)
class Alias:
    """Another name of a listed party."""

    name: str
    kind: AliasKind = AliasKind.AKA


@dataclass(frozen=True, slots=True)
class Address:
    """One address of a listed party, as listed; ``country`` is an ISO code when it is known."""

    text: str
    country: str | None = None
    country_name: str | None = None  # the list's own spelling ("Korea, North", "Region: Crimea")


@dataclass(frozen=True, slots=True)
class ListEntry:
    """One listed party."""

    list: str  # short list code: sdn, el, ssi, dpl, uvl, meu, isn, dtc, fse, plc, cap, ...
    id: str  # the entry's id on its list (OFAC's ent_num, the CSL's _id or entity_number)
    type: EntryType
    name: str
    source: str  # the list's full name, as published
    aliases: tuple[Alias, ...] = ()
    programs: tuple[str, ...] = ()
    addresses: tuple[Address, ...] = ()
    countries: frozenset[str] = frozenset()  # ISO codes from addresses, nationality, citizenship
    start_date: str | None = None  # listed on (ISO date), where the list says
    end_date: str | None = None  # listing ends (Denied Persons orders), where the list says
    birth_dates: tuple[str, ...] = ()
    remarks: str | None = None
    file: str = ""
    line: int | None = None  # where the entry starts in its file

    @property
    def key(self) -> str:
        """``"<list>:<id>"``: how reviews and reports name the entry."""
        return f"{self.list}:{self.id}"

    def names(self) -> Iterable[tuple[str, str]]:
        """Every name with the field it comes from: ``("name", ...)``, ``("aka", ...)``, ..."""
        yield "name", self.name
        for alias in self.aliases:
            yield alias.kind.value, alias.name

    def merged(self, other: ListEntry) -> ListEntry:
        """This entry with what *other* (the same key, from another file) adds to it."""
        aliases = _union(self.aliases, other.aliases)
        names = {a.name for a in aliases} | {self.name}
        if other.name not in names:
            aliases += (Alias(other.name),)
        return replace(
            self,
            aliases=aliases,
            programs=_union(self.programs, other.programs),
            addresses=_union(self.addresses, other.addresses),
            countries=self.countries | other.countries,
            start_date=self.start_date or other.start_date,
            end_date=self.end_date or other.end_date,
            birth_dates=_union(self.birth_dates, other.birth_dates),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form for reports and evidence."""
        return {
            "key": self.key,
            "list": self.list,
            "id": self.id,
            "type": self.type.value,
            "name": self.name,
            "source": self.source,
            "aliases": [{"name": a.name, "kind": a.kind.value} for a in self.aliases],
            "programs": list(self.programs),
            "addresses": [
                {"text": a.text, "country": a.country, "country_name": a.country_name}
                for a in self.addresses
            ],
            "countries": sorted(self.countries),
            "start_date": self.start_date,
            "end_date": self.end_date,
            "birth_dates": list(self.birth_dates),
            "remarks": self.remarks,
            "file": self.file,
            "line": self.line,
        }


def _union(first: tuple[T, ...], second: tuple[T, ...]) -> tuple[T, ...]:
    return first + tuple(item for item in second if item not in first)


class DateBasis(StrEnum):
    """Where a list file's date comes from: the operator's word, or the best the file shows."""

    STATED = "stated"  # given with the file (the publication date the operator downloaded)
    NEWEST_ENTRY = (
        "newest-entry"  # the latest listing date in the file: the list is at least this new
    )
    FILE_MODIFIED = "file-modified"  # the file's modification time: all an OFAC CSV carries


@dataclass(frozen=True, slots=True)
class SourceVersion:
    """One list file (or OFAC file set) as loaded: its format, digest, date and size."""

    name: str  # the main file's path as given
    format: str  # "ofac-sdn" or "csl"
    digest: str  # "sha256:<hex>" of the file's bytes (an OFAC set: of every file in it)
    date: str  # ISO date
    date_basis: DateBasis
    entries: int
    files: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form."""
        return {
            "name": self.name,
            "format": self.format,
            "digest": self.digest,
            "date": self.date,
            "date_basis": self.date_basis.value,
            "entries": self.entries,
            "files": list(self.files),
        }


@dataclass(frozen=True, slots=True)
class ListVersion:
    """What a decision records of the lists it used: one digest over every source, and a date.

    ``date`` is the oldest source date: a snapshot is only as current as its stalest list.
    """

    digest: str
    date: str
    sources: tuple[SourceVersion, ...] = field(default=())

    @property
    def label(self) -> str:
        """Short form for logs and audit fields: ``2019-01-15/sha256:3f2a…`` (12 hex digits)."""
        return f"{self.date}/{self.digest[:19]}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form for audit records and reports."""
        return {
            "digest": self.digest,
            "date": self.date,
            "sources": [s.to_dict() for s in self.sources],
        }
