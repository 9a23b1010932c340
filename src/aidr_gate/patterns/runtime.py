"""Building a serving gate's tracker from its settings (local, or shared through Redis)."""

from __future__ import annotations

from aidr_gate.patterns.settings import PatternSettings
from aidr_gate.patterns.tracker import PatternTracker


def pattern_tracker_for(settings: PatternSettings) -> PatternTracker:
    """The tracker the ``patterns:`` section (``config.get(PATTERNS)``) asks for.

    With ``patterns.redis`` it shares state with the fleet once the runtime starts it.
    """
    tracker = PatternTracker(settings)
    if settings.redis is not None:
        from aidr_gate.patterns.shared import SharedState

        SharedState(tracker, settings.redis)
    return tracker
