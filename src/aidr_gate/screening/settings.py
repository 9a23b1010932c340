"""The ``screening:`` section, and the lists and table a running gate screens with.

Read with a :class:`~aidr_gate.document.Checker` (``file:line: screening.key: message``), in the
signature of the other section readers (``read_telemetry``)::

    screening:
      lists: [lists/sdn.csv, lists/csl.csv]   # files or folders of .csv (OFAC's SDN set, the CSL)
      list_date: 2026-11-30        # optional: the publication date of the files (else inferred)
      threshold: 88                # rapidfuzz score (0-100) a name needs to be a hit
      check_interval: 60           # seconds between checks of the list files for a change
      max_staleness: 86400         # seconds the lists may fail to reload before every request
                                   # of a registry entity is denied SCREENING_UNAVAILABLE

Absent: nothing is screened, the screening rules of the packs never match, and decisions record
``screening: null``. :func:`load_screening` loads the lists and screens the registry (at start
and on every policy or registry reload, off the request path); the runtime's watcher
(:meth:`ScreeningSource.check`) reloads changed lists, keeps the last good ones when a reload
fails, and past ``max_staleness`` marks the table unavailable, so the gate fails closed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aidr_gate.config import GateConfig
from aidr_gate.document import Checker, Document, join
from aidr_gate.registry import Entity
from aidr_gate.screening.facts import ScreeningTable, screening_table
from aidr_gate.screening.matcher import DEFAULT_THRESHOLD
from aidr_gate.screening.screen import screen_registry
from aidr_gate.screening.store import ListStore, sources_for

SECTION = "screening"
KEYS = ("lists", "list_date", "threshold", "check_interval", "max_staleness")
DEFAULT_CHECK_INTERVAL = 60.0
DEFAULT_MAX_STALENESS = 86_400.0

logger = logging.getLogger("aidr_gate.screening")


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
    data = check.mapping(raw, SECTION, keys=KEYS, required=("lists",))
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


def screening_settings(config: GateConfig) -> ScreeningSettings | None:
    """Read the section of a loaded configuration; raise :class:`ConfigError` listing every problem."""
    document = config.document or Document(
        config.file, {SECTION: dict(config.section(SECTION))}, {}
    )
    check = Checker(document)
    parsed = read_screening(check, config.sections.get(SECTION), config.base_dir)
    check.raise_if_errors()
    return parsed


class ScreeningSource:
    """The list store behind a screening table, and how fresh its lists are.

    ``last_good`` is when the list files were last found loadable (loaded, or unchanged since a
    good load). A reload that fails keeps the last good lists until ``max_staleness`` has passed.
    """

    def __init__(
        self,
        settings: ScreeningSettings,
        store: ListStore,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.store = store
        self._clock = clock
        self.last_good = clock()
        self._lock = threading.Lock()

    def screen(self, entities: Iterable[Entity]) -> ScreeningTable:
        """Screen every entity against the current lists: a new table (seconds for a big registry)."""
        entities = list(entities)
        run = screen_registry(entities, self.store.snapshot, threshold=self.settings.threshold)
        table = screening_table(entities, run)
        table.source = self
        logger.info(
            "screened %d entities against lists %s in %.2f s: %d hits",
            len(entities),
            run.version.label,
            run.seconds,
            sum(len(r.hits) for r in run.results.values()),
        )
        return table

    def check(
        self, table: ScreeningTable, entities: Iterable[Entity]
    ) -> tuple[ScreeningTable | None, bool | None]:
        """Reload changed lists (a thread, never the event loop): a new table when they changed,
        and whether a reload was tried and worked (``None``: no file changed).

        When the lists cannot be reloaded for longer than ``max_staleness``, *table* is marked
        unavailable (requests of registry entities are denied); a good reload clears that.
        """
        with self._lock:
            outcome = self.store.reload_if_changed()
            tried = None if outcome is None else outcome.ok
            now = self._clock()
            if outcome is None and self.store.last_error is None:
                self.last_good = now
            elif outcome is not None and outcome.ok:
                self.last_good = now
                if outcome.changed or table.unavailable is not None:
                    return self.screen(entities), True
            stale = now - self.last_good
            if self.store.last_error is not None and stale > self.settings.max_staleness:
                if table.unavailable is None:
                    logger.error(
                        "screening lists unavailable for %.0f s (max_staleness %.0f): denying",
                        stale,
                        self.settings.max_staleness,
                    )
                table.unavailable = (
                    f"screening lists not reloadable for {stale:.0f} s: {self.store.last_error}"
                )[:300]
            return None, tried


def load_screening(
    config: GateConfig, entities: Iterable[Entity], *, clock: Callable[[], float] = time.monotonic
) -> ScreeningTable | None:
    """Load the lists the configuration names and screen *entities*; ``None`` without a section."""
    settings = screening_settings(config)
    if settings is None:
        return None
    store = ListStore(sources_for(settings.lists, settings.list_date))
    store.load()
    return ScreeningSource(settings, store, clock=clock).screen(entities)
