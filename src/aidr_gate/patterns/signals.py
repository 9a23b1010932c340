"""The signal names a pack rule may test: a family and a window, ``origin_countries_1h``.

A signal is a number about the traffic behind one request over a sliding window: how many network
countries one token was used from, what share of an entity's requests came through anonymizers,
how many entities one client address or network fronts. Each family says what it counts and
over whose requests; the window is part of the name (``30s``, ``10m``, ``1h``, ``7d``), so a pack
can test two windows of one family, and the gate tracks exactly the windows its pack names and
its ``patterns:`` section records.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class Subject:
    """Whose requests a family counts over (one bounded table of state each).

    Plain strings, not an enum: these are hashed on the request path, and an enum member's hash
    is a Python-level call.
    """

    TOKEN = "token"  # noqa: S105 - a subject kind, not a secret; one token subject of one entity (``sub`` within the entity)
    ENTITY = "entity"  # every token of one entity
    ADDRESS = "address"  # one client address
    NETWORK = "network"  # one network prefix (``ipv4_prefix`` / ``ipv6_prefix``)


class Measure:
    """What a family counts (plain strings, like :class:`Subject`)."""

    COUNTRIES = "countries"  # distinct network countries
    ENTITIES = "entities"  # distinct entities
    ANONYMIZER_SHARE = "anonymizer_share"  # share of requests from anonymizer origins, 0 to 1
    WORSE_SHARE = "worse_origin_share"  # share from origins whose tier is worse than the HQ's


@dataclass(frozen=True, slots=True)
class Family:
    """One kind of signal: its name prefix, whose requests, what it counts, and what it means."""

    name: str
    subject: str  # a Subject
    measure: str  # a Measure
    doc: str


FAMILIES: tuple[Family, ...] = (
    Family(
        "origin_countries",
        Subject.TOKEN,
        Measure.COUNTRIES,
        "distinct network countries one token subject was used from",
    ),
    Family(
        "anonymizer_share",
        Subject.TOKEN,
        Measure.ANONYMIZER_SHARE,
        "share of one token subject's requests from VPN, Tor, proxy or hosting origins",
    ),
    Family(
        "worse_origin_share",
        Subject.TOKEN,
        Measure.WORSE_SHARE,
        "share of one token subject's requests from a country tier worse than its headquarters'",
    ),
    Family(
        "entity_countries",
        Subject.ENTITY,
        Measure.COUNTRIES,
        "distinct network countries across all of one entity's tokens",
    ),
    Family(
        "entity_anonymizer_share",
        Subject.ENTITY,
        Measure.ANONYMIZER_SHARE,
        "share of one entity's requests from anonymizer origins",
    ),
    Family(
        "entity_worse_origin_share",
        Subject.ENTITY,
        Measure.WORSE_SHARE,
        "share of one entity's requests from a country tier worse than its headquarters'",
    ),
    Family(
        "address_entities",
        Subject.ADDRESS,
        Measure.ENTITIES,
        "distinct entities whose requests came from one client address",
    ),
    Family(
        "network_entities",
        Subject.NETWORK,
        Measure.ENTITIES,
        "distinct entities whose requests came from one network prefix",
    ),
)
BY_NAME: dict[str, Family] = {f.name: f for f in FAMILIES}

# A condition key that says the fleet's shared view is lost and signals count this replica only.
DEGRADED_KEY = "patterns_degraded"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
MAX_WINDOW = 30 * 86_400.0
# Distinct items one key may hold at most (``patterns.max_distinct``, and what a pack's count
# thresholds may raise it to: ``reach.py``).
MAX_DISTINCT = 4096
_KEY = re.compile(r"^([a-z_]+?)_([1-9][0-9]{0,5})([smhd])$")
_WINDOW = re.compile(r"^([1-9][0-9]{0,5})([smhd])$")


@dataclass(frozen=True, slots=True)
class SignalKey:
    """A parsed signal name: its family and its window (in seconds, and as written)."""

    name: str
    family: Family
    window: str
    seconds: float


def window_seconds(text: str) -> float | None:
    """``"10m"`` as 600.0; ``None`` for anything that is not a window up to 30 days."""
    match = _WINDOW.match(text)
    if match is None:
        return None
    seconds = float(int(match.group(1)) * _UNITS[match.group(2)])
    return seconds if seconds <= MAX_WINDOW else None


def parse_signal_key(name: str) -> SignalKey | None:
    """``origin_countries_1h`` as its family and window; ``None`` when it names no signal."""
    match = _KEY.match(name)
    if match is None:
        return None
    family = BY_NAME.get(match.group(1))
    window = f"{match.group(2)}{match.group(3)}"
    seconds = window_seconds(window)
    if family is None or seconds is None:
        return None
    return SignalKey(name, family, window, seconds)


def is_pattern_key(name: object) -> bool:
    """True for a signal name or :data:`DEGRADED_KEY` (what a pack's condition may test)."""
    return isinstance(name, str) and (name == DEGRADED_KEY or parse_signal_key(name) is not None)
