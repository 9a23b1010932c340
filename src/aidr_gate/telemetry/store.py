"""Cheap in-process cells for the recorded metrics, read by the exporters at collection time.

A cell is a small list mutated in place: ``[count, labels]`` for a counter, ``[sum, labels,
bucket0, ..., overflow]`` for a histogram. The request path finds its cell with one dictionary
lookup on a tuple of the values it already holds and adds to it: a fraction of a microsecond,
where the OpenTelemetry SDK's ``Counter.add`` costs several (bench/metrics.py measures both).

Cells are written by the event loop's thread only; readers (a scrape on the same loop, the OTLP
exporter's thread) take ``dict.copy()`` and list slices, which CPython makes atomic, so a reader
never sees a series half added. Every metric holds at most ``limit`` series: past it, new label
sets are counted together under the label value ``_other``, so a flood of new values cannot grow
memory or the exposition (``limit`` series and one ``_other`` at most).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from aidr_gate.telemetry.table import Kind, MetricSpec

OTHER = "_other"
# Hot-path keys kept per exported series at most (several raw values may render one label set).
_KEYS_PER_SERIES = 4

Labels = tuple[str, ...]
# One counter or gauge series: label values and the value.
Point = tuple[Labels, float]
# One histogram series: label values, per-bucket counts (the last is above every bound), sum.
HistogramPoint = tuple[Labels, list[int], float]


class Cells:
    """The bounded series of one recorded metric."""

    __slots__ = ("labelled", "limit", "series", "spec")

    def __init__(self, spec: MetricSpec, limit: int) -> None:
        self.spec = spec
        self.limit = limit
        # Hot-path key (whatever the recorder holds) -> cell; read by the recorder directly. Keys
        # that render the same labels (two unknown countries) share one cell.
        self.series: dict[Hashable, list[Any]] = {}
        # Label values -> cell: one entry per exported series.
        self.labelled: dict[Labels, list[Any]] = {}

    def cell(self, key: Hashable, labels: Labels) -> list[Any]:
        """The cell for *key*, made on first use (the ``_other`` cell once the metric is full)."""
        found = self.series.get(key)
        if found is not None:
            return found
        labelled = self.labelled
        if labels not in labelled and len(labelled) >= self.limit:
            labels = (OTHER,) * len(self.spec.labels)
        cell = labelled.get(labels)
        if cell is None:
            if self.spec.kind is Kind.HISTOGRAM:
                cell = [0.0, labels, *([0] * (len(self.spec.buckets) + 1))]
            else:
                cell = [0, labels]
            labelled[labels] = cell
        if len(self.series) < _KEYS_PER_SERIES * self.limit:
            self.series[key] = cell  # past this, a key keeps taking this slow path: still bounded
        return cell

    def points(self) -> list[Point]:
        """Counter series now."""
        return [(cell[1], cell[0]) for cell in self.labelled.copy().values()]

    def histogram_points(self) -> list[HistogramPoint]:
        """Histogram series now (per-bucket counts, not cumulative)."""
        out: list[HistogramPoint] = []
        for cell in self.labelled.copy().values():
            counts = cell[2:]  # one slice: counts and the sum below may differ by one observation
            out.append((cell[1], counts, cell[0]))
        return out
