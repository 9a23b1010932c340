"""Frozen value objects: what the stages resolve about one request, and what a decision rests on.

Stages (identity, client IP, GeoIP) produce :class:`Identity` and :class:`Origin`; the gate looks up
the entity and the model and hands all of it to the pure policy engine. Everything here is immutable
and cheap to build, because one of each is built per request: frozen ``msgspec.Struct``s, which
build about ten times faster than frozen dataclasses (bench/decisions.py) and hold no reference
cycles (``gc=False``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import msgspec


class AnonymizerFlag(StrEnum):
    """Why a network origin hides who is behind it (GeoIP2 Anonymous IP database attributes)."""

    VPN = "vpn"
    TOR = "tor"
    PUBLIC_PROXY = "public_proxy"
    HOSTING = "hosting"
    RESIDENTIAL_PROXY = "residential_proxy"


NO_FLAGS: frozenset[AnonymizerFlag] = frozenset()


class CountrySource(StrEnum):
    """Where a network country came from; registration data is not geolocation, and says so."""

    GEOIP = "geoip"  # a GeoIP2/GeoLite2 Country or City database: geolocation
    REGISTRATION = "registration"  # RIR delegation data (iptocc): where the block is registered
    DECLARED = "declared"  # given by hand (``aidr-gate check --country``) or read back from audit
    NONE = "none"  # no lookup possible (no IP, private or reserved address)


class RegionSource(StrEnum):
    """Where a sub-national region (ISO 3166-2) came from, or why there is none."""

    GEOIP = "geoip"  # the first subdivision of a GeoIP2/GeoLite2 City record
    DECLARED = "declared"  # a static override, or given by hand
    NOT_IN_RECORD = "not-in-record"  # a City database whose record names no subdivision
    NO_CITY_DATABASE = "no-city-database"  # a Country database or RIR data: no subdivisions
    NONE = "none"  # no country, so no region either


class Identity(msgspec.Struct, frozen=True, gc=False):
    """The verified caller: who the token says it is, and how the token was verified.

    Never holds the token itself.
    """

    entity_id: str
    subject: str | None = None
    issuer: str | None = None
    key_id: str | None = None
    algorithm: str | None = None
    expires_at: float | None = None
    claimed_headquarters: str | None = None
    claimed_parent: str | None = None
    # "jwt" for a verified token, "declared" when given by hand to ``check`` or read from audit.
    method: str = "jwt"
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form for evidence and audit."""
        return {
            "entity_id": self.entity_id,
            "subject": self.subject,
            "issuer": self.issuer,
            "key_id": self.key_id,
            "algorithm": self.algorithm,
            "expires_at": self.expires_at,
            "claimed_headquarters": self.claimed_headquarters,
            "claimed_parent": self.claimed_parent,
            "method": self.method,
            "cached": self.cached,
        }


class Origin(msgspec.Struct, frozen=True, gc=False):
    """Where the request came from: the true client IP and what GeoIP says of it."""

    ip: str | None
    # How the IP was chosen: "peer", "x-forwarded-for[-2]" (the hop counted from the right),
    # "forwarded[-1]", or "declared".
    resolved_by: str = "peer"
    peer: str | None = None
    country: str | None = None
    country_source: CountrySource = CountrySource.NONE
    anonymizer: frozenset[AnonymizerFlag] = NO_FLAGS
    # The database behind ``country`` and ``anonymizer``: type (e.g. "GeoIP2-Country") and build date.
    database: str | None = None
    database_build: str | None = None
    anonymizer_database: str | None = None
    anonymizer_database_build: str | None = None
    # Anything odd met on the way (a garbage hop, a private address), recorded, never raised.
    notes: tuple[str, ...] = ()
    region: str | None = None  # ISO 3166-2 subdivision ("UA-43"), when a City database knows it
    region_source: RegionSource = RegionSource.NONE

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form for evidence and audit."""
        return {
            "ip": self.ip,
            "resolved_by": self.resolved_by,
            "peer": self.peer,
            "country": self.country,
            "country_source": self.country_source.value,
            "anonymizer": sorted(f.value for f in self.anonymizer),
            "database": self.database,
            "database_build": self.database_build,
            "anonymizer_database": self.anonymizer_database,
            "anonymizer_database_build": self.anonymizer_database_build,
            "notes": list(self.notes),
            "region": self.region,
            "region_source": self.region_source.value,
        }


def declared_origin(
    country: str | None, anonymizer: frozenset[AnonymizerFlag] = NO_FLAGS
) -> Origin:
    """An origin given by hand (``check --country``) rather than resolved from an IP."""
    return Origin(
        ip=None,
        resolved_by="declared",
        country=country,
        country_source=CountrySource.DECLARED if country else CountrySource.NONE,
        anonymizer=anonymizer,
    )
