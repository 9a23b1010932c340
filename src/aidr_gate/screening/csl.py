"""The Consolidated Screening List (trade.gov) in its CSV layouts.

Both layouts have a header row and the same columns (source, entity_number, type, programs, name,
title, addresses, ..., alt_names, citizenships, dates_of_birth, nationalities, ...); the current
one adds a first column ``_id``. Multi-valued cells are separated by ``"; "``. Addresses end with
the country's ISO code.

An entry's key is ``<list code>:<id>``: the list code is the abbreviation the source names in
parentheses ("Entity List (EL) - Bureau of Industry and Security" is ``el``), the id is ``_id``,
else the Treasury ``entity_number`` (so ``sdn:20264`` is the same party in the CSL and in OFAC's
files), else, for legacy rows of lists that publish no id, a digest of the row's identifying cells:
stable while the list leaves the entry unchanged.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from aidr_gate.screening.country_names import country_code
from aidr_gate.screening.csvfile import ProblemList, RawFile, read_list_file, rows
from aidr_gate.screening.entries import Address, Alias, EntryType, ListEntry

REQUIRED_COLUMNS = ("source", "name", "alt_names", "addresses")
_TYPES = {
    "entity": EntryType.ENTITY,
    "individual": EntryType.INDIVIDUAL,
    "vessel": EntryType.VESSEL,
    "aircraft": EntryType.AIRCRAFT,
}
_LIST_CODE = re.compile(r"\(([A-Za-z][A-Za-z0-9-]*)(?: List)?\)")
# The Entity List appends this to names it lists with their subsidiaries.
_SUCCESSOR = re.compile(r";?\s*and any successor.*$", re.IGNORECASE)
_TRAILING_CODE = re.compile(r",\s*([A-Z]{2})\s*$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def is_csl_header(row: Sequence[str]) -> bool:
    """True when *row* is the header row of either CSL layout."""
    cells = [c.strip().lower() for c in row]
    return bool(cells) and cells[0] in ("_id", "source") and "name" in cells


def list_code(source: str) -> str:
    """The short list code of a CSL source name (``sdn``, ``el``, ``dpl``, ...)."""
    found = _LIST_CODE.search(source)
    if found:
        return found.group(1).lower()
    return re.sub(r"[^a-z0-9]+", "-", source.lower()).strip("-")[:40] or "csl"


def read_csl(path: str) -> tuple[list[ListEntry], RawFile]:
    """Read a CSL CSV file in either layout; raise :class:`ConfigError` naming file and line."""
    raw = read_list_file(path)
    problems = ProblemList(raw.path)
    entries: list[ListEntry] = []
    header: list[str] | None = None
    for line, row in rows(raw):
        if header is None:
            header = [c.strip().lower() for c in row]
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if not is_csl_header(row) or missing:
                problems.add(
                    line,
                    "not a Consolidated Screening List header row (missing: "
                    + ", ".join(missing or ["_id or source first"])
                    + ")",
                )
                break
            continue
        if len(row) != len(header):
            problems.add(line, f"row has {len(row)} columns, the header {len(header)}")
            continue
        cells = dict(zip(header, (c.strip() for c in row), strict=True))
        if not cells["name"] or not cells["source"]:
            problems.add(line, "row has no name or no source")
            continue
        entries.append(_entry(cells, raw.path, line))
    if header is None:
        problems.add(None, "the file is empty")
    problems.raise_if_any()
    return entries, raw


def _split(cell: str | None) -> list[str]:
    return [part.strip() for part in (cell or "").split(";") if part.strip()]


def _clean_name(text: str) -> str:
    text = _SUCCESSOR.sub("", text.strip())
    return text[4:].strip() if text.lower().startswith("and ") else text


def _entry_id(cells: dict[str, str]) -> str:
    for column in ("_id", "entity_number"):
        if cells.get(column):
            return cells[column]
    basis = "\x1f".join(
        cells.get(c, "")
        for c in ("source", "name", "addresses", "start_date", "federal_register_notice")
    )
    return hashlib.sha256(basis.encode()).hexdigest()[:16]


def _addresses(cells: dict[str, str]) -> list[Address]:
    """The entry's addresses, each with the country its trailing code names; a vessel's flag
    stands in when there are none."""
    addresses = []
    for part in _split(cells.get("addresses")):
        text = part[4:] if part.lower().startswith("and ") else part
        found = _TRAILING_CODE.search(text)
        code = country_code(found.group(1)) if found else None
        addresses.append(Address(text, code, found.group(1) if found else None))
    if not addresses and cells.get("vessel_flag"):
        flag = cells["vessel_flag"]
        addresses.append(Address(f"flag: {flag}", country_code(flag), flag))
    return addresses


def _countries(cells: dict[str, str], addresses: list[Address]) -> frozenset[str]:
    countries = {a.country for a in addresses if a.country}
    for column in ("nationalities", "citizenships"):
        countries |= {c for c in map(country_code, _split(cells.get(column))) if c}
    return frozenset(countries)


def _entry(cells: dict[str, str], file: str, line: int) -> ListEntry:
    addresses = _addresses(cells)
    name = _clean_name(cells["name"])
    aliases = tuple(
        Alias(alias)
        for alias in dict.fromkeys(map(_clean_name, _split(cells.get("alt_names"))))
        if alias and alias != name
    )
    start, end = cells.get("start_date") or None, cells.get("end_date") or None
    return ListEntry(
        list=list_code(cells["source"]),
        id=_entry_id(cells),
        type=_TYPES.get(cells.get("type", "").lower(), EntryType.UNKNOWN),
        name=name,
        source=cells["source"],
        aliases=aliases,
        programs=tuple(_split(cells.get("programs"))),
        addresses=tuple(addresses),
        countries=_countries(cells, addresses),
        start_date=start if start and _DATE.match(start) else None,
        end_date=end if end and _DATE.match(end) else None,
        birth_dates=tuple(_split(cells.get("dates_of_birth"))),
        remarks=cells.get("remarks") or None,
        file=file,
        line=line,
    )
