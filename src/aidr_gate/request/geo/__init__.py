"""GeoIP: the country and anonymizer flags of a client address, behind a small resolver interface.

Three implementations of :class:`CountryResolver`, one module each:

- :mod:`aidr_gate.request.geo.resolver`: the interface, what a lookup answers, the steps every resolver
  shares, and :class:`IptoccCountryResolver`, the embedded default (registration country from the
  RIR delegation data in the ``iptocc`` wheel; no licence key, no network, no anonymizer signal);
- :mod:`aidr_gate.request.geo.maxmind`: :class:`MaxMindCountryResolver`, a GeoIP2/GeoLite2 Country or City
  database plus optionally an Anonymous IP database, validated and reloaded when the files change;
- :mod:`aidr_gate.request.geo.overrides`: :class:`OverrideCountryResolver`, the operator's table of networks,
  checked before either database.

Here: the names the rest of the gate imports, and :func:`watch`, the background task that keeps
whichever resolver is configured current.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aidr_gate.request.geo.maxmind import (
    DEFAULT_RELOAD_CHECK_INTERVAL,
    RETIRE_GRACE,
    DatabaseInfo,
    MaxMindCountryResolver,
)
from aidr_gate.request.geo.overrides import OverrideCountryResolver, OverrideEntry
from aidr_gate.request.geo.resolver import (
    DEFAULT_CACHE_SIZE,
    CountryResolver,
    GeoResult,
    IptoccCountryResolver,
    ReloadOutcome,
    ReloadResult,
    special_address,
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

logger = logging.getLogger(__name__)


async def watch(
    resolver: CountryResolver,
    interval: float,
    report: Callable[[tuple[ReloadResult, ...]], None] | None = None,
) -> None:
    """Check for changed database files every *interval* seconds until cancelled; never raises.
    *report*, when given, is told what each check did.

    The stat, open and validation run in a worker thread, so the event loop never blocks on them.
    """
    if isinstance(resolver, OverrideCountryResolver):
        resolver = resolver.inner
    if interval <= 0 or isinstance(resolver, IptoccCountryResolver):
        return  # nothing to watch: embedded data changes only with the installed package
    while True:
        await asyncio.sleep(interval)
        try:
            results = await asyncio.to_thread(resolver.refresh_if_changed)
            if report is not None and results:
                report(results)
        except Exception:  # a failed check must not end the watch; the old databases stay
            logger.exception("GeoIP database check failed")
