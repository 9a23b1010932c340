"""Building a serving gate's tracker from its configuration (local, or shared through Redis)."""

from __future__ import annotations

from aidr_gate.config import GateConfig
from aidr_gate.patterns.settings import pattern_settings
from aidr_gate.patterns.tracker import PatternTracker


def pattern_tracker_for(config: GateConfig) -> PatternTracker:
    """The tracker the ``patterns:`` section asks for; raise ``ConfigError`` listing its problems.

    With ``patterns.redis`` it shares state with the fleet once the runtime starts it.
    """
    settings = pattern_settings(config)
    tracker = PatternTracker(settings)
    if settings.redis is not None:
        from aidr_gate.patterns.shared import SharedState

        SharedState(tracker, settings.redis)
    return tracker
