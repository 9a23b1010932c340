"""Static overrides: a small table of networks the operator knows better than any database.

:class:`OverrideCountryResolver` sits in front of any :class:`~aidr_gate.request.geo.resolver.CountryResolver`
and checks its table first: its own egress ranges, a partner's VPN concentrator, internal ranges. An
override sets the country (:attr:`CountrySource.DECLARED`: nobody looked it up), the anonymizer
flags, or both; what it leaves out comes from the database behind it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Network, IPv6Network

from aidr_gate.bounded import store_bounded
from aidr_gate.facts import AnonymizerFlag, CountrySource, RegionSource
from aidr_gate.request.client_ip import normalize_ip, normalize_network
from aidr_gate.request.geo.resolver import (
    DEFAULT_CACHE_SIZE,
    CountryResolver,
    GeoResult,
    ReloadResult,
    failed_lookup,
)

__all__ = ["OVERRIDE_DATABASE", "OverrideCountryResolver", "OverrideEntry"]

OVERRIDE_DATABASE = "static-overrides"


@dataclass(frozen=True, slots=True)
class OverrideEntry:
    """One row of the override table: a network and what is known of it.

    ``country`` None keeps the database's country; ``anonymizer`` None keeps the database's flags,
    an empty set clears them (an operator's own egress that a database lists as hosting).
    """

    network: IPv4Network | IPv6Network
    country: str | None = None
    anonymizer: frozenset[AnonymizerFlag] | None = None
    note: str | None = None
    region: str | None = None  # ISO 3166-2; its country is the entry's country

    def describe(self) -> str:
        """The entry as evidence shows it: ``static override 203.0.113.0/24 (demo VPN exit)``."""
        return f"static override {self.network}" + (f" ({self.note})" if self.note else "")


class OverrideCountryResolver:
    """A fixed table of networks checked before the database behind it; lookups never raise.

    The most specific network wins. Addresses outside the table cost one dictionary lookup more than
    the database alone; answers for addresses inside it are shared objects, rebuilt only when the
    database behind them answers differently (after a reload).
    """

    def __init__(
        self,
        entries: Sequence[OverrideEntry],
        inner: CountryResolver,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        """Most specific networks first; two entries for one network are refused.

        A network written IPv4-mapped (``::ffff:203.0.113.0/120``) is read as its IPv4 range, since
        lookups normalise addresses to IPv4.
        """
        entries = [replace(entry, network=normalize_network(entry.network)) for entry in entries]
        networks = [entry.network for entry in entries]
        if len(set(networks)) != len(networks):
            raise ValueError("a network is listed more than once")
        if cache_size < 1:
            raise ValueError("cache_size must be positive")
        self.entries = tuple(sorted(entries, key=lambda e: -e.network.prefixlen))
        self.inner = inner
        self.cache_size = cache_size
        # ip -> the matching entry, or None: the table is fixed, so this never goes stale.
        self._match: dict[str, OverrideEntry | None] = {}
        # ip -> (the database's answer it was built on, the answer given)
        self._answers: dict[str, tuple[GeoResult, GeoResult]] = {}

    def lookup(self, ip: str) -> GeoResult:
        """Resolve one address: the table first, then the database; never raises."""
        try:
            match = self._match[ip]
        except KeyError:
            try:
                match = self._find(ip)
            except Exception as exc:  # never raise per request; fail closed
                return failed_lookup(exc)
            store_bounded(self._match, self.cache_size, ip, match)
        except Exception as exc:  # unhashable input
            return failed_lookup(exc)
        base = self.inner.lookup(ip)
        if match is None:
            return base
        cached = self._answers.get(ip)
        if cached is not None and cached[0] is base:
            return cached[1]
        result = _overridden(match, base)
        store_bounded(self._answers, self.cache_size, ip, (base, result))
        return result

    def _find(self, ip: str) -> OverrideEntry | None:
        address = normalize_ip(ip) if isinstance(ip, str) else None
        if address is None:
            return None
        for entry in self.entries:
            if address.version == entry.network.version and address in entry.network:
                return entry
        return None

    def refresh_if_changed(self) -> tuple[ReloadResult, ...]:
        """Reload the database behind the table if its files changed."""
        return self.inner.refresh_if_changed()

    def reload(self) -> tuple[ReloadResult, ...]:
        """Reload the database behind the table (the table itself is configuration)."""
        return self.inner.reload()

    def close(self) -> None:
        """Release the database behind the table."""
        self.inner.close()


def _overridden(entry: OverrideEntry, base: GeoResult) -> GeoResult:
    note = entry.describe()
    country, source = base.country, base.source
    database, build = base.database, base.database_build
    notes = base.notes
    region, region_source = base.region, base.region_source
    if entry.country is not None:
        if entry.country != country:  # another country: the database's region is not its own
            region, region_source = None, RegionSource.NONE
        country, source = entry.country, CountrySource.DECLARED
        database, build = OVERRIDE_DATABASE, None
        notes = ()  # the database's doubts about this address no longer apply
    if entry.region is not None:
        region, region_source = entry.region, RegionSource.DECLARED
    anonymizer = base.anonymizer
    anon_db, anon_build = base.anonymizer_database, base.anonymizer_database_build
    if entry.anonymizer is not None:
        anonymizer = entry.anonymizer
        anon_db, anon_build = OVERRIDE_DATABASE, None
    return GeoResult(
        country,
        source,
        anonymizer,
        database,
        build,
        anon_db,
        anon_build,
        (*notes, note),
        region,
        region_source,
    )
