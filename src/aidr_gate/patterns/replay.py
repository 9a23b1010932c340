"""Pattern signals recomputed by ``replay``: a tracker fed the trail's requests in record order.

A pack that tests pattern signals cannot be replayed from one record alone: the signal of a
request depends on the requests before it. :class:`SignalReplay` counts each replayed record
with the same tracker the gate uses and gives the signals the new pack sees; where the record
carries signals of the same name (the enforced pack tested them), it counts those that differ
(a record written by one replica of a fleet saw the fleet's view, which one trail does not hold).
``patterns_degraded`` is taken from the record: whether the fleet's view was lost is a fact of
the moment, not of the trail.
"""

from __future__ import annotations

from typing import Any

from aidr_gate.facts import AnonymizerFlag, Identity, Origin
from aidr_gate.patterns.reach import distinct_needs
from aidr_gate.patterns.signals import DEGRADED_KEY
from aidr_gate.patterns.tracker import PatternTracker
from aidr_gate.policy.engine import PolicyEngine

TOLERANCE = 0.01  # shares are floats; a count differs by at least 1


class SignalReplay:
    """Recomputes the pattern signals of replayed records, in the order they are fed."""

    def __init__(self, engine: PolicyEngine) -> None:
        self.engine = engine
        # The bounds the gate keeps under this pack (its count thresholds may raise them).
        self.tracker = PatternTracker(
            wanted=engine.pattern_keys, needs=distinct_needs([engine.pack])
        )
        self.recomputed = 0
        self.compared = 0
        self.differ = 0

    def signals(
        self,
        tree: dict[str, Any],
        *,
        at: float,
        when: float,
        network_country: str | None,
        headquarters: str | None,
        anonymizer: frozenset[AnonymizerFlag],
    ) -> dict[str, float]:
        """Count the record's request and give its signals under the replayed pack."""
        identity_tree = tree.get("identity")
        origin_tree = tree.get("origin")
        identity = None
        if isinstance(identity_tree, dict) and isinstance(identity_tree.get("entity_id"), str):
            subject = identity_tree.get("subject")
            identity = Identity(
                identity_tree["entity_id"],
                subject=subject if isinstance(subject, str) else None,
                method="declared",
            )
        ip = origin_tree.get("ip") if isinstance(origin_tree, dict) else None
        origin = Origin(
            ip=ip if isinstance(ip, str) else None,
            country=network_country,
            anonymizer=anonymizer,
        )
        tracker = self.tracker
        worse = tracker.needs_worse and self.engine.origin_worse(
            network_country, headquarters, when
        )
        signals = dict(tracker.observe(at, identity, origin, worse))
        self.recomputed += 1
        recorded = tree.get("signals")
        if isinstance(recorded, dict):
            degraded = recorded.get(DEGRADED_KEY)
            if isinstance(degraded, int | float):
                signals[DEGRADED_KEY] = float(degraded)
            common = [k for k in signals if k in recorded and k != DEGRADED_KEY]
            if common:
                self.compared += 1
                if any(
                    not isinstance(recorded[k], int | float)
                    or abs(recorded[k] - signals[k]) > TOLERANCE
                    for k in common
                ):
                    self.differ += 1
        return signals

    def summary(self) -> dict[str, Any]:
        """What the report says of it."""
        return {
            "tested": list(self.engine.pattern_keys),
            "recomputed": self.recomputed,
            "compared_with_recorded": self.compared,
            "differ_from_recorded": self.differ,
        }
