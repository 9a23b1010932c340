"""The resolver interface, what a lookup answers, the steps every resolver shares, and the default.

Every resolver resolves private, reserved, loopback, link-local, multicast and not-found addresses to
an unknown country (``None``) with a note, normalises IPv4-mapped IPv6 first (databases written with
mmdb-writer do not alias ``::ffff:a.b.c.d``), and caches answers per IP in a bounded dict
(:func:`~aidr_gate.bounded.store_bounded`): :func:`classify` here is the first step.

:class:`IptoccCountryResolver` is the embedded default, so a fresh install runs with no licence key
and no network. ``iptocc`` carries the RIRs' delegation data in its wheel: the country a block is
*registered* to, not where its users are, so every answer is :attr:`CountrySource.REGISTRATION`, and
it has no anonymizer signal. GeoLite2 data is never bundled (its licence requires deleting stale
copies).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from importlib.metadata import version
from ipaddress import IPv4Address, IPv6Address
from typing import Protocol

import iptocc

from aidr_gate.bounded import store_bounded
from aidr_gate.countries import is_country_code
from aidr_gate.facts import NO_FLAGS, AnonymizerFlag, CountrySource, RegionSource
from aidr_gate.request.client_ip import normalize_ip

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "CountryResolver",
    "GeoResult",
    "IptoccCountryResolver",
    "ReloadOutcome",
    "ReloadResult",
    "classify",
    "failed_lookup",
    "known_country",
    "special_address",
]

DEFAULT_CACHE_SIZE = 65536


@dataclass(frozen=True, slots=True)
class GeoResult:
    """What a resolver says of one address: country, its source, anonymizer flags, and which data."""

    country: str | None
    source: CountrySource
    anonymizer: frozenset[AnonymizerFlag] = NO_FLAGS
    database: str | None = None
    database_build: str | None = None
    anonymizer_database: str | None = None
    anonymizer_database_build: str | None = None
    notes: tuple[str, ...] = ()
    region: str | None = None  # ISO 3166-2 ("UA-43"): the first subdivision of a City record
    region_source: RegionSource = RegionSource.NONE


class ReloadOutcome(StrEnum):
    """What a reload check did to one database."""

    RELOADED = "reloaded"  # a new file was validated and swapped in
    UNCHANGED = "unchanged"  # the file is the one loaded (or nothing to reload)
    REFUSED = "refused"  # the new file failed validation; the loaded database is kept
    MISSING = "missing"  # the file cannot be read; the loaded database is kept


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """The outcome of a reload check for one database, and the database now in use."""

    role: str  # "country", "anonymous_ip" or "embedded"
    path: str | None
    outcome: ReloadOutcome
    detail: str
    database: str | None
    database_build: str | None


class CountryResolver(Protocol):
    """Country (and anonymizer flags) of an IP address; lookups never raise."""

    def lookup(self, ip: str) -> GeoResult:
        """Resolve one address (any textual form); cached, no I/O when warm."""
        ...

    def refresh_if_changed(self) -> tuple[ReloadResult, ...]:
        """Reload databases whose files changed; rate-limited, blocking: run off the event loop."""
        ...

    def reload(self) -> tuple[ReloadResult, ...]:
        """Reload every database now (validated; a bad file is refused and the old one kept)."""
        ...

    def close(self) -> None:
        """Release the databases."""
        ...


# Every IANA special-purpose, multicast and reserved IPv4 range lies in these first octets; outside
# them an address is global unicast, decided without scanning ipaddress's network lists (the slow
# part of a miss). tests/request/test_geo.py checks this against the running Python's ipaddress tables.
_V4_SPECIAL_FIRST_OCTETS = frozenset({0, 10, 100, 127, 169, 172, 192, 198, 203, *range(224, 256)})
# Likewise for IPv6: global unicast is 2000::/3, whose special ranges sit in 2001::/16, 2002::/16
# (6to4) and 3fff::/16 (documentation, RFC 9637).
_V6_SPECIAL_IN_GLOBAL = frozenset({0x2001, 0x2002, 0x3FFF})


def special_address(address: IPv4Address | IPv6Address) -> str | None:
    """Why an address has no country (loopback, private...), or None for a global unicast address."""
    value = int(address)
    if address.version == 4:
        if value >> 24 not in _V4_SPECIAL_FIRST_OCTETS:
            return None
    else:
        top = value >> 112
        if 0x2000 <= top <= 0x3FFF and top not in _V6_SPECIAL_IN_GLOBAL:
            return None
    if address.is_global and not address.is_multicast:
        return None
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private or special-purpose"
    if address.is_reserved:
        return "reserved"
    return "not globally routable"  # global unicast returned None above


def classify(ip: str) -> str | GeoResult:
    """The canonical text of a global address, or the unknown result for anything else."""
    address = normalize_ip(ip) if isinstance(ip, str) else None
    if address is None:
        shown = repr(ip) if len(str(ip)) <= 48 else f"{str(ip)[:48]!r}..."
        return GeoResult(None, CountrySource.NONE, notes=(f"{shown} is not an IP address",))
    reason = special_address(address)
    if reason is not None:
        note = f"{address} is a {reason} address; country unknown"
        return GeoResult(None, CountrySource.NONE, notes=(note,))
    # ipaddress accepts only the canonical dotted-quad form of IPv4 (no leading zeros, no spaces),
    # so IPv4 text that parsed as IPv4 is already canonical; IPv6 text may not be.
    if address.version == 4 and ":" not in ip:
        return ip
    return str(address)


def known_country(code: str, notes: list[str]) -> str | None:
    """A database's country code if ISO 3166-1 assigns it; else None, and a note why."""
    if is_country_code(code):
        return code
    notes.append(f"unrecognised country code {code!r:.12}; country unknown")
    return None


def failed_lookup(exc: BaseException) -> GeoResult:
    """The unknown answer for a lookup that raised: resolvers never raise per request."""
    return GeoResult(None, CountrySource.NONE, notes=(f"GeoIP lookup failed: {exc!r:.120}",))


class IptoccCountryResolver:
    """Registration country from the RIR delegation data embedded in ``iptocc``; no anonymizer flags."""

    database = "iptocc"

    def __init__(self, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        """An in-process resolver; nothing to open, nothing to reload."""
        if cache_size < 1:
            raise ValueError("cache_size must be positive")
        self.cache_size = cache_size
        self.database_build = version("iptocc")
        self._cache: dict[str, GeoResult] = {}
        self._results: dict[str | None, GeoResult] = {}

    def lookup(self, ip: str) -> GeoResult:
        """Resolve one address; never raises."""
        cache = self._cache
        try:
            hit = cache.get(ip)
            if hit is not None:
                return hit
            text = classify(ip)
            result = text if isinstance(text, GeoResult) else self._find(text)
        except Exception as exc:  # never raise per request; fail closed
            return failed_lookup(exc)
        store_bounded(cache, self.cache_size, ip, result)
        return result

    def _find(self, text: str) -> GeoResult:
        code = iptocc.country_code(text)
        result = self._results.get(code)  # one shared answer per country
        if result is None:
            notes: list[str] = []
            country = None
            if code is None:
                notes.append("not in the RIR delegation data; country unknown")
            else:
                country = known_country(code, notes)
            result = GeoResult(
                country,
                CountrySource.REGISTRATION,
                database=self.database,
                database_build=self.database_build,
                notes=tuple(notes),
                region_source=RegionSource.NO_CITY_DATABASE if country else RegionSource.NONE,
            )
            self._results[code] = result
        return result

    def refresh_if_changed(self) -> tuple[ReloadResult, ...]:
        """Nothing to watch: the data is in the installed wheel."""
        return ()

    def reload(self) -> tuple[ReloadResult, ...]:
        """Nothing to reload; upgrade the ``iptocc`` package to refresh its data."""
        return (
            ReloadResult(
                "embedded",
                None,
                ReloadOutcome.UNCHANGED,
                "embedded data; upgrade the iptocc package to refresh it",
                self.database,
                self.database_build,
            ),
        )

    def close(self) -> None:
        """Nothing to release."""
