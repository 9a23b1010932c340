"""The lists and table a running gate screens with; the section itself is
:mod:`aidr_gate.settings.screening`.

:func:`load_screening` loads the lists and screens the registry (at start and on every policy or
registry reload, off the request path); the runtime's watcher (:meth:`ScreeningSource.check`)
reloads changed lists, keeps the last good ones when a reload fails, and past ``max_staleness``
marks the table unavailable, so the gate fails closed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from aidr_gate.registry import Entity
from aidr_gate.screening.facts import ScreeningTable, screening_table
from aidr_gate.screening.screen import screen_registry
from aidr_gate.screening.store import ListStore, sources_for
from aidr_gate.settings.loader import GateConfig
from aidr_gate.settings.screening import SCREENING, ScreeningSettings, read_screening

__all__ = ["ScreeningSettings", "ScreeningSource", "load_screening", "read_screening"]

logger = logging.getLogger("aidr_gate.screening")


def screening_settings(config: GateConfig) -> ScreeningSettings | None:
    """The ``screening:`` settings of a loaded configuration (``None``: nothing screened)."""
    settings: ScreeningSettings | None = config.get(SCREENING)
    return settings


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
