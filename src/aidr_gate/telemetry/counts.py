"""The per-request counting: the recorded metrics' cells and what decisions and events add to them.

:class:`~aidr_gate.telemetry.record.Telemetry` decides whether anything counts (an exporter of
ours, or a host SDK); this module only adds. Keys are the raw values the caller already holds, so
a known series costs one dictionary lookup; label strings are built once per new series, on a miss
(:mod:`aidr_gate.telemetry.store` bounds the series). Like the cells, written from one thread.
"""

from __future__ import annotations

from bisect import bisect_left

from aidr_gate.countries import COUNTRY_CODES
from aidr_gate.decision import Decision, Effect
from aidr_gate.telemetry.settings import TelemetrySettings
from aidr_gate.telemetry.store import OTHER, Cells, Labels
from aidr_gate.telemetry.table import (
    DECISION_BUCKETS,
    METRICS,
    RELOAD_COMPONENTS,
    RELOAD_RESULTS,
    UPSTREAM_BUCKETS,
    Kind,
)

UNKNOWN_COUNTRY = "unknown"


class Counts:
    """Every recorded metric's cells (by name, in :attr:`cells`) and the counting into them."""

    # Slots: the request path reads these once per decision, and a slot reads faster than a dict.
    __slots__ = (
        "_decisions",
        "_duration",
        "_entities",
        "_entities_max",
        "_entity_names",
        "_network",
        "_shadow",
        "_upstream",
        "_upstream_time",
        "cells",
        "entities_on",
    )

    def __init__(self, settings: TelemetrySettings, *, counting: bool) -> None:
        limit = settings.max_series
        self.cells = {
            spec.name: Cells(spec, limit)
            for spec in METRICS
            if spec.kind is not Kind.GAUGE and spec.source.value == "recorded"
        }
        self.entities_on = settings.labels.entities
        self._entities_max = settings.labels.max_entities
        self._entity_names: set[str] = set()
        # Hot-path aliases: one attribute load each instead of a lookup by name.
        self._decisions = self.cells["aidr_gate.decisions"]
        self._network = self.cells["aidr_gate.network.decisions"]
        self._entities = self.cells["aidr_gate.entity.decisions"]
        self._duration = self.cells["aidr_gate.decision.duration"]
        self._shadow = self.cells["aidr_gate.shadow.disagreements"]
        self._upstream = self.cells["aidr_gate.upstream.responses"]
        self._upstream_time = self.cells["aidr_gate.upstream.duration"]
        if counting:
            # Every reload series from the start, at zero: a rate over them needs the first point.
            reloads = self.cells["aidr_gate.reloads"]
            for component in RELOAD_COMPONENTS:
                for result in RELOAD_RESULTS:
                    reloads.cell((component, result), (component, result))

    def decision(self, decision: Decision, seconds: float) -> None:
        """Count one decision: by effect and reason, its time, its network country, a shadow
        pack's disagreement and (when labelled) its entity."""
        # Keys are the values the decision already holds (StrEnum members hash as their text);
        # label strings are built once per new series, on a miss.
        effect = decision.effect
        reasons = decision.reasons
        reason = reasons[0] if reasons else "NONE"
        key = (effect, reason, decision.mode, decision.policy.id)
        cell = self._decisions.series.get(key)
        if cell is None:
            cell = self._decisions.cell(
                key, (effect.value, reason, decision.mode.value, decision.policy.id)
            )
        cell[0] += 1
        timing = self._duration.series.get(effect)
        if timing is None:
            timing = self._duration.cell(effect, (effect.value,))
        timing[0] += seconds
        timing[2 + bisect_left(DECISION_BUCKETS, seconds)] += 1
        origin = decision.evidence.origin
        country = origin.country if origin is not None else None
        where = self._network.series.get((effect, country))
        if where is None:
            label = country if country in COUNTRY_CODES else UNKNOWN_COUNTRY
            where = self._network.cell((effect, country), (effect.value, label))
        where[0] += 1
        shadow = decision.shadow
        if shadow is not None and not shadow.agrees:
            other = shadow.outcome.effect
            _add(self._shadow, (effect.value, other.value, shadow.policy.id))
        if self.entities_on:
            self._entity(effect, decision.evidence.entity_id)

    def _entity(self, effect: Effect, entity_id: str | None) -> None:
        name = entity_id or ""
        if name not in self._entity_names:
            if len(self._entity_names) >= self._entities_max:
                name = OTHER
            else:
                self._entity_names.add(name)
        _add(self._entities, (effect.value, name))

    def upstream(self, status: int | None, seconds: float | None, error: str | None) -> None:
        """Count one sidecar upstream exchange: the upstream's status or the error code, and
        its time when it has one."""
        # Keyed by the raw values (once per request in the sidecar); labels built on a miss only.
        cell = self._upstream.series.get((status, error))
        if cell is None:
            code = str(status) if status is not None and 100 <= status <= 599 else ""
            cell = self._upstream.cell((status, error), (code, error or ""))
        cell[0] += 1
        if seconds is not None:
            timing = self._upstream_time.series.get(())
            if timing is None:
                timing = self._upstream_time.cell((), ())
            timing[0] += seconds
            timing[2 + bisect_left(UPSTREAM_BUCKETS, seconds)] += 1

    def add(self, name: str, labels: Labels) -> None:
        """One more of the event counter *name* (reloads, streams cut, ...) under *labels*."""
        _add(self.cells[name], labels)


def _add(cells: Cells, labels: Labels, amount: float = 1) -> None:
    cell = cells.series.get(labels)
    if cell is None:
        cell = cells.cell(labels, labels)
    cell[0] += amount
