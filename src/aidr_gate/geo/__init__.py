"""GeoIP: the country and anonymizer flags of a client address, behind a small resolver interface.

The resolvers and their reload machinery live in :mod:`aidr_gate.geo.maxmind`; this package names
what the rest of the gate imports.
"""

from aidr_gate.geo.maxmind import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_RELOAD_CHECK_INTERVAL,
    RETIRE_GRACE,
    CountryResolver,
    DatabaseInfo,
    GeoResult,
    IptoccCountryResolver,
    MaxMindCountryResolver,
    OverrideCountryResolver,
    OverrideEntry,
    ReloadOutcome,
    ReloadResult,
    special_address,
    watch,
)

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "DEFAULT_RELOAD_CHECK_INTERVAL",
    "RETIRE_GRACE",
    "CountryResolver",
    "DatabaseInfo",
    "GeoResult",
    "IptoccCountryResolver",
    "MaxMindCountryResolver",
    "OverrideCountryResolver",
    "OverrideEntry",
    "ReloadOutcome",
    "ReloadResult",
    "special_address",
    "watch",
]
