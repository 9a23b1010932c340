"""The ``screening:`` section: the restricted-party lists the registry is screened against::

    screening:
      lists: [lists/sdn.csv, lists/csl.csv]   # files or folders of .csv (OFAC's SDN set, the CSL)
      list_date: 2026-11-30        # optional: the publication date of the files (else inferred)
      threshold: 88                # rapidfuzz score (0-100) a name needs to be a hit
      check_interval: 60           # seconds between checks of the list files for a change
      max_staleness: 86400         # seconds the lists may fail to reload before every request
                                   # of a registry entity is denied SCREENING_UNAVAILABLE

Absent: nothing is screened. The lists themselves are loaded, and the registry screened, by
:func:`aidr_gate.screening.settings.load_screening` with the packs and the registry (at start and
on every reload), so a reload applies a changed section.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aidr_gate.document import Checker, join
from aidr_gate.settings.schema import KeyDoc, Section

SECTION = "screening"
DEFAULT_THRESHOLD = 88.0
DEFAULT_CHECK_INTERVAL = 60.0
DEFAULT_MAX_STALENESS = 86_400.0

KEYS = (
    KeyDoc("lists", "list files or folders of .csv (OFAC's SDN set, the CSL)"),
    KeyDoc("list_date", "the publication date of the files (else inferred)"),
    KeyDoc("threshold", "rapidfuzz score (50 to 100) a name needs to be a hit"),
    KeyDoc("check_interval", "seconds between checks of the list files for a change"),
    KeyDoc("max_staleness", "seconds the lists may fail to reload before entities are denied"),
)


@dataclass(frozen=True, slots=True)
class ScreeningSettings:
    """The section, validated: list paths are absolute."""

    lists: tuple[Path, ...]
    list_date: str | None = None
    threshold: float = DEFAULT_THRESHOLD
    check_interval: float = DEFAULT_CHECK_INTERVAL
    max_staleness: float = DEFAULT_MAX_STALENESS


def read_screening(
    check: Checker, raw: Any, base_dir: Path | None = None
) -> ScreeningSettings | None:
    """Read the section (``None`` when absent or invalid); problems go to *check*."""
    if raw is None:
        return None
    data = check.mapping(raw, SECTION, keys=[k.name for k in KEYS], required=("lists",))
    if data is None:
        return None
    base = base_dir or Path.cwd()
    items = data.get("lists")
    paths = [items] if isinstance(items, str) else check.sequence(items, join(SECTION, "lists"))
    lists: list[Path] = []
    for index, item in enumerate(paths or []):
        text = check.string(item, join(join(SECTION, "lists"), index))
        if text is not None:
            path = Path(text).expanduser()
            lists.append(path if path.is_absolute() else base / path)
    if paths is not None and not lists:
        check.error(join(SECTION, "lists"), "names no list file")
    date = None
    if data.get("list_date") is not None:
        # A date YAML read as one, or ISO text: kept as the ISO date the list version carries.
        raw_date = data["list_date"]
        text = raw_date.isoformat() if hasattr(raw_date, "isoformat") else raw_date
        if check.instant(text, join(SECTION, "list_date")) is not None:
            date = str(text)[:10]

    def positive(key: str, default: float, low: float, high: float) -> float:
        if data.get(key) is None:
            return default
        value = check.number(data[key], join(SECTION, key), minimum=low)
        if value is not None and value > high:
            check.error(join(SECTION, key), f"must be at most {high:g}")
            return default
        return default if value is None else value

    settings = ScreeningSettings(
        lists=tuple(lists),
        list_date=date,
        threshold=positive("threshold", DEFAULT_THRESHOLD, 50, 100),
        check_interval=positive("check_interval", DEFAULT_CHECK_INTERVAL, 0.05, 86_400),
        max_staleness=positive("max_staleness", DEFAULT_MAX_STALENESS, 0, 365 * 86_400),
    )
    return settings if lists else None


SCREENING: Section[ScreeningSettings | None] = Section(SECTION, read_screening, KEYS)
