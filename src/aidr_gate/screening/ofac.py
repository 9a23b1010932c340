"""OFAC's SDN list in its legacy CSV set: ``sdn.csv``, ``alt.csv``, ``add.csv``, ``sdn_comments.csv``.

The files have no header row; ``-0-`` (usually followed by a space) is OFAC's empty value. Columns,
from OFAC's "SDN CSV file format":

- sdn: ent_num, SDN_Name, SDN_Type, Program, Title, Call_Sign, Vess_type, Tonnage, GRT, Vess_flag,
  Vess_owner, Remarks
- alt: ent_num, alt_num, alt_type, alt_name, alt_remarks
- add: ent_num, add_num, address, city_state_zip, country, add_remarks
- sdn_comments: ent_num, remarks_extended (the rest of a remark longer than the sdn file's field)

Low-quality a.k.a.s are not in ``alt.csv``: OFAC quotes them in the remarks (``a.k.a. 'BNC'``).
They are kept as weak aliases, shown to the reviewer and not screened, as OFAC's guidance allows.
Rows of alt, add and comments that name no sdn entry are counted, not refused: OFAC publishes the
files separately, and a set downloaded at two moments can disagree at the edges.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from aidr_gate.screening.country_names import country_code
from aidr_gate.screening.csvfile import ProblemList, RawFile, read_list_file, rows
from aidr_gate.screening.entries import Address, Alias, AliasKind, EntryType, ListEntry

SDN_SOURCE = "Specially Designated Nationals (SDN) - Treasury Department"
PART_NAMES = ("sdn", "alt", "add", "sdn_comments")
_COLUMNS = {"sdn": 12, "alt": 5, "add": 6, "sdn_comments": 2}
_TYPES = {"individual": EntryType.INDIVIDUAL, "vessel": EntryType.VESSEL}
_TYPES["aircraft"] = EntryType.AIRCRAFT
_ALIAS_KINDS = {"aka": AliasKind.AKA, "fka": AliasKind.FKA, "nka": AliasKind.NKA}
_WEAK_AKA = re.compile(r"\ba\.k\.a\.,?\s+'([^']+)'")


@dataclass(frozen=True, slots=True)
class OfacFiles:
    """The files of one SDN CSV set; only ``sdn`` is required."""

    sdn: Path
    alt: Path | None = None
    add: Path | None = None
    comments: Path | None = None

    @classmethod
    def beside(cls, sdn: str | Path) -> OfacFiles:
        """The set around an ``sdn.csv``: ``alt.csv``, ``add.csv`` and ``sdn_comments.csv`` in
        the same folder with the same prefix (``ofac-sdn.csv`` → ``ofac-alt.csv``), where present."""
        path = Path(sdn)
        prefix = path.name[: -len("sdn.csv")] if path.name.lower().endswith("sdn.csv") else None

        def sibling(part: str) -> Path | None:
            if prefix is None:
                return None
            candidate = path.with_name(f"{prefix}{part}.csv")
            return candidate if candidate.is_file() else None

        return cls(path, sibling("alt"), sibling("add"), sibling("sdn_comments"))

    def paths(self) -> tuple[Path, ...]:
        """The files present, sdn first."""
        return tuple(p for p in (self.sdn, self.alt, self.add, self.comments) if p is not None)


@dataclass
class OfacRead:
    """What reading a set gave: its entries, the raw files, and counts of orphan rows."""

    entries: list[ListEntry]
    files: list[RawFile]
    orphans: dict[str, int] = field(default_factory=dict)


def _value(cell: str) -> str | None:
    text = cell.strip()
    return None if text in ("", "-0-") else text


def _part_rows(raw: RawFile, part: str, problems: ProblemList) -> Iterator[tuple[int, list[str]]]:
    width = _COLUMNS[part]
    for line, row in rows(raw):
        if len(row) != width:
            problems.add(line, f"{part} row has {len(row)} columns, not {width}")
            continue
        if not row[0].strip().isdigit():
            problems.add(line, f"{part} row: ent_num {row[0]!r} is not a number")
            continue
        yield line, row


def read_ofac(files: OfacFiles) -> OfacRead:
    """Read an SDN CSV set; raise :class:`ConfigError` naming file and line when it is broken."""
    raws = [read_list_file(p) for p in files.paths()]
    by_path = dict(zip(files.paths(), raws, strict=True))
    sdn_raw = raws[0]
    problems = ProblemList(sdn_raw.path)
    entries: dict[str, ListEntry] = {}
    for line, row in _part_rows(sdn_raw, "sdn", problems):
        entry_id = row[0].strip()
        if entry_id in entries:
            problems.add(line, f"ent_num {entry_id} appears twice")
            continue
        entries[entry_id] = _sdn_entry(row, sdn_raw.path, line)
    problems.raise_if_any()
    result = OfacRead([], raws)
    extras: dict[str, tuple[list[Alias], list[Address], list[str]]] = {
        key: ([], [], []) for key in entries
    }
    for part, path in (("alt", files.alt), ("add", files.add), ("sdn_comments", files.comments)):
        raw = by_path.get(path) if path is not None else None
        if raw is None:
            continue
        part_problems = ProblemList(raw.path)
        orphans = 0
        for _, row in _part_rows(raw, part, part_problems):
            extra = extras.get(row[0].strip())
            if extra is None:
                orphans += 1
            elif part == "alt":
                _add_alias(row, extra[0])
            elif part == "add":
                _add_address(row, extra[1])
            else:
                extra[2].append(row[1])
        part_problems.raise_if_any()
        result.orphans[part] = orphans
    result.entries = [_complete(entries[k], *extras[k]) for k in entries]
    return result


def _sdn_entry(row: list[str], file: str, line: int) -> ListEntry:
    kind = _value(row[2])
    programs = tuple(p.strip() for p in (_value(row[3]) or "").split("] [") if p.strip())
    flag = country_code(_value(row[9]))
    return ListEntry(
        list="sdn",
        id=row[0].strip(),
        type=_TYPES.get((kind or "").lower(), EntryType.ENTITY),
        name=(_value(row[1]) or "").strip(),
        source=SDN_SOURCE,
        programs=programs,
        countries=frozenset({flag} if flag else ()),
        remarks=_value(row[11]),
        file=file,
        line=line,
    )


def _add_alias(row: list[str], out: list[Alias]) -> None:
    name = _value(row[3])
    if name:
        out.append(Alias(name, _ALIAS_KINDS.get((_value(row[2]) or "").lower(), AliasKind.AKA)))


def _add_address(row: list[str], out: list[Address]) -> None:
    country_name = _value(row[4])
    text = ", ".join(v for v in (_value(row[2]), _value(row[3]), country_name) if v)
    if text:
        out.append(Address(text, country_code(country_name), country_name))


def _complete(
    entry: ListEntry, aliases: list[Alias], addresses: list[Address], comments: list[str]
) -> ListEntry:
    """The entry with its aliases, addresses, the rest of its remarks, and what they state."""
    remarks = " ".join(filter(None, [entry.remarks, *comments])) or None
    weak = [Alias(m.strip(), AliasKind.WEAK) for m in _WEAK_AKA.findall(remarks or "")]
    countries = set(entry.countries) | {a.country for a in addresses if a.country}
    births: list[str] = []
    for part in (remarks or "").split(";"):
        text = part.strip().rstrip(".")
        lower = text.lower()
        for lead in ("nationality ", "citizen ", "alt. nationality ", "alt. citizen "):
            if lower.startswith(lead) and (code := country_code(text[len(lead) :])):
                countries.add(code)
        for lead in ("dob ", "alt. dob "):
            if lower.startswith(lead):
                births.append(text[len(lead) :].strip())
    return replace(
        entry,
        aliases=tuple(aliases) + tuple(w for w in weak if w.name),
        addresses=tuple(addresses),
        countries=frozenset(countries),
        birth_dates=tuple(births),
        remarks=remarks,
    )
