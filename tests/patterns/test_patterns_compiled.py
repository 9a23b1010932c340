"""The tracker's written-out ``observe`` against the signals computed from first principles.

:mod:`aidr_gate.patterns.compiled` writes the counting of a request out per pack; these tests
drive random traffic (ties in time, requests without a country, an address or a token subject,
tokens hopping, anonymizer and worse-tier origins) through trackers of several signal sets and
check every answer against a brute-force reading of the whole history: distinct items seen
after the window's start, and shares weighted by ``exp(-age / window)``.
"""

from __future__ import annotations

import ipaddress
import math
import random
from dataclasses import dataclass

import pytest

from aidr_gate.facts import AnonymizerFlag, CountrySource, Identity, Origin
from aidr_gate.patterns.signals import FAMILIES, Measure, Subject, parse_signal_key
from aidr_gate.patterns.tracker import PatternTracker

T0 = 1_767_225_600.0
VPN = frozenset({AnonymizerFlag.VPN})


@dataclass(frozen=True)
class Seen:
    at: float
    entity: str
    subject: str | None
    country: str | None
    ip: str | None
    anonymous: bool
    worse: bool

    def key(self, subject: str) -> str | None:
        if subject == Subject.TOKEN:
            return None if self.subject is None else f"{self.entity}\x1f{self.subject}"
        if subject == Subject.ENTITY:
            return self.entity
        if self.ip is None:
            return None
        if subject == Subject.ADDRESS:
            return self.ip
        return str(ipaddress.ip_network(f"{self.ip}/24", strict=False))

    def item(self, subject: str) -> str | None:
        return self.country if subject in (Subject.TOKEN, Subject.ENTITY) else self.entity


def expected(name: str, history: list[Seen]) -> float:
    """The signal *name* of the last request of *history*, from the whole history."""
    signal = parse_signal_key(name)
    assert signal is not None
    now = history[-1]
    subject, measure = signal.family.subject, signal.family.measure
    key = now.key(subject)
    if key is None:
        return 0
    mine = [seen for seen in history if seen.key(subject) == key]
    if measure in (Measure.COUNTRIES, Measure.ENTITIES):
        since = now.at - signal.seconds
        return len({s.item(subject) for s in mine if s.at > since and s.item(subject) is not None})
    weights = [math.exp(-(now.at - s.at) / signal.seconds) for s in mine]
    flags = [s.anonymous if measure == Measure.ANONYMIZER_SHARE else s.worse for s in mine]
    return sum(w for w, flag in zip(weights, flags, strict=True) if flag) / sum(weights)


def traffic(rng: random.Random, count: int) -> list[Seen]:
    out: list[Seen] = []
    at = T0
    for _ in range(count):
        at += rng.choice((0.0, 0.0, 0.5, 3.0, 20.0, 90.0))  # ties, seconds, past a short window
        entity = f"org-{rng.randrange(6)}"
        out.append(
            Seen(
                at=at,
                entity=entity,
                subject=None if rng.random() < 0.1 else f"user-{rng.randrange(4)}",
                country=None if rng.random() < 0.1 else rng.choice(("US", "US", "DE", "JP", "BR")),
                ip=None if rng.random() < 0.1 else f"198.51.{rng.randrange(3)}.{rng.randrange(4)}",
                anonymous=rng.random() < 0.2,
                worse=rng.random() < 0.3,
            )
        )
    return out


EVERY_FAMILY = [f"{family.name}_{window}" for family in FAMILIES for window in ("30s", "10m")]
EXAMPLE_PACK_SIGNALS = [  # policies/examples/patterns.yaml
    "origin_countries_1m",
    "origin_countries_1h",
    "network_entities_1h",
    "entity_anonymizer_share_1h",
]
SIGNAL_SETS = [
    EVERY_FAMILY,
    EXAMPLE_PACK_SIGNALS,
    ["network_entities_10m"],
    ["address_entities_30s", "patterns_degraded"],
    ["anonymizer_share_10m", "worse_origin_share_30s"],
    ["entity_countries_10m", "entity_worse_origin_share_1h"],
]


@pytest.mark.parametrize("wanted", SIGNAL_SETS, ids=lambda w: f"{len(w)}-signals-{w[0]}")
def test_written_out_observe_matches_the_history(wanted: list[str]) -> None:
    rng = random.Random(len(wanted) * 7919 + len(wanted[0]))
    tracker = PatternTracker(wanted=wanted)
    names = [n for n in wanted if parse_signal_key(n) is not None]
    history: list[Seen] = []
    for seen in traffic(rng, 600):
        history.append(seen)
        identity = Identity(seen.entity, subject=seen.subject)
        origin = Origin(
            ip=seen.ip,
            country=seen.country,
            country_source=CountrySource.GEOIP,
            anonymizer=VPN if seen.anonymous else frozenset(),
        )
        got = dict(tracker.observe(seen.at, identity, origin, seen.worse))
        assert list(got) == list(tracker.names)
        for name in names:
            assert got[name] == pytest.approx(expected(name, history), rel=1e-9, abs=1e-12), name
        if "patterns_degraded" in wanted:
            assert got["patterns_degraded"] == 0.0
        # Reading without counting (the plans' own path) agrees with what was just counted.
        assert dict(tracker.signals(seen.at, identity, origin)) == pytest.approx(got)


def test_the_source_holds_only_what_the_pack_tests() -> None:
    tracker = PatternTracker(wanted=["network_entities_1h"])
    source = tracker.observe_source
    assert "rows_network" in source and "'network_entities_1h'" in source
    assert "rows_token" not in source and "Shares" not in source
    tracker.want(["origin_countries_1m"])  # a reload writes it anew
    assert "rows_token" in tracker.observe_source and "rows_network" not in tracker.observe_source
