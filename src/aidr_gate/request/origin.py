"""Where a request comes from: the client IP behind trusted proxies, then its country and flags.

:class:`OriginResolver` joins :class:`~aidr_gate.request.client_ip.TrustedProxies` and a
:class:`~aidr_gate.request.geo.CountryResolver` into one :class:`~aidr_gate.facts.Origin` per request, and never
raises: anything that goes wrong leaves the country unknown (which packs deny or flag explicitly) and
says why in ``Origin.notes``.

Configuration: the ``network:`` and ``geoip:`` sections (:mod:`aidr_gate.settings.origin`).
Overrides are for what the operator knows better than any database: its own egress ranges, a
partner's VPN concentrator, internal ranges that should count as a country. Each needs a country, an
anonymizer list, or both; the database fills in what an override leaves out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from aidr_gate.bounded import store_bounded
from aidr_gate.errors import ConfigError, Problem
from aidr_gate.facts import Origin
from aidr_gate.request.client_ip import ClientIP, TrustedProxies, normalize_ip
from aidr_gate.request.geo import (
    DEFAULT_RELOAD_CHECK_INTERVAL,
    CountryResolver,
    GeoResult,
    IptoccCountryResolver,
    MaxMindCountryResolver,
    OverrideCountryResolver,
    ReloadResult,
    watch,
)
from aidr_gate.settings.origin import GEOIP, NETWORK, GeoipSettings, NetworkSettings

if TYPE_CHECKING:
    from aidr_gate.settings.loader import GateConfig

__all__ = [
    "OriginResolver",
    "build_origin_resolver",
    "describe_geo",
    "origin_resolver_for",
    "parse_header_lines",
]

_COMMAND_LINE = "<command line>"


_OriginKey = tuple[str, str, str | None, tuple[str, ...]]


class OriginResolver:
    """Client IP and GeoIP in one call: ``resolve(peer, headers) -> Origin``, never raising."""

    def __init__(
        self,
        proxies: TrustedProxies | None = None,
        geo: CountryResolver | None = None,
        *,
        reload_check_interval: float = DEFAULT_RELOAD_CHECK_INTERVAL,
        cache_size: int = 4096,
    ) -> None:
        """Defaults: loopback-only trusted proxies, embedded iptocc registration country."""
        self.proxies = proxies if proxies is not None else TrustedProxies()
        self.geo: CountryResolver = geo if geo is not None else IptoccCountryResolver()
        self.reload_check_interval = reload_check_interval
        self.cache_size = cache_size
        # Built Origins by (ip, resolved_by, peer, notes); an entry is used only while GeoIP still
        # returns the very same answer object, so a database swap invalidates it without bookkeeping.
        self._origins: dict[_OriginKey, tuple[GeoResult, Origin]] = {}

    @property
    def forwarding_headers(self) -> frozenset[bytes]:
        """The lower-case header names :meth:`resolve` reads (the trusted forwarding headers)."""
        return self.proxies.header_names

    def resolve(self, peer: str | None, headers: Iterable[tuple[bytes, bytes]]) -> Origin:
        """The origin of one request from the ASGI peer host and raw ASGI headers; never raises.

        *headers* may be only the lines named by :attr:`forwarding_headers`, in request order, when
        the caller has read the headers once already (see :meth:`TrustedProxies.resolve`).
        """
        try:
            return self._origin(self.proxies.resolve(peer, headers))
        except Exception as exc:  # fail closed: no IP, no country, and why
            return Origin(
                ip=None, resolved_by="error", notes=(f"origin not resolved: {exc!r:.120}",)
            )

    def resolve_ip(self, ip: str, *, resolved_by: str = "declared") -> Origin:
        """The origin of an address given by hand (``check --ip``, replay); never raises."""
        try:
            address = normalize_ip(ip)
            if address is None:
                note = f"{ip!r:.60} is not an IP address"
                return Origin(ip=None, resolved_by=resolved_by, notes=(note,))
            return self._origin(ClientIP(str(address), resolved_by, None))
        except Exception as exc:
            return Origin(
                ip=None, resolved_by="error", notes=(f"origin not resolved: {exc!r:.120}",)
            )

    def _origin(self, client: ClientIP) -> Origin:
        ip = client.ip
        if ip is None:
            return Origin(
                ip=None, resolved_by=client.resolved_by, peer=client.peer, notes=client.notes
            )
        geo = self.geo.lookup(ip)
        # Notes are part of the key. Most are fixed texts (a trusted peer that forwards nothing,
        # an all-trusted chain...), so those requests share one Origin; a note that quotes what
        # a caller sent only makes one more entry in this bounded cache.
        key = (ip, client.resolved_by, client.peer, client.notes)
        cached = self._origins.get(key)
        if cached is not None and cached[0] is geo:
            return cached[1]
        origin = _build(client, geo)
        store_bounded(self._origins, self.cache_size, key, (geo, origin))
        return origin

    def resolve_for_check(
        self,
        *,
        ip: str | None = None,
        peer: str | None = None,
        header_lines: Sequence[str] = (),
    ) -> Origin:
        """What ``aidr-gate check --ip | --peer [--header ...]`` resolves; usage errors raise.

        ``--ip`` is a client address given directly (``resolved_by="declared"``); ``--peer`` with
        ``--header "X-Forwarded-For: ..."`` lines runs the same trust walk as a real request.
        """
        if ip is not None:
            if peer is not None or header_lines:
                raise ConfigError(
                    Problem(_COMMAND_LINE, "--ip", "give --ip alone, or --peer with --header")
                )
            if normalize_ip(ip) is None:
                raise ConfigError(Problem(_COMMAND_LINE, "--ip", f"{ip!r} is not an IP address"))
            return self.resolve_ip(ip)
        if peer is None:
            raise ConfigError(Problem(_COMMAND_LINE, "--peer", "--header needs --peer"))
        return self.resolve(peer, parse_header_lines(header_lines))

    def reload(self) -> tuple[ReloadResult, ...]:
        """Reload the GeoIP databases now; a bad file is refused and the old one kept."""
        return self.geo.reload()

    def describe(self) -> str:
        """What answers GeoIP questions, for the start summary: database, build date, overrides."""
        return describe_geo(self.geo)

    async def watch(self, report: Callable[[tuple[ReloadResult, ...]], None] | None = None) -> None:
        """Check the GeoIP files every ``reload_check_interval`` until cancelled (start at startup);
        *report* is told what each check did (for the reload counters)."""
        await watch(self.geo, self.reload_check_interval, report)

    def close(self) -> None:
        """Release the GeoIP databases."""
        self.geo.close()


def describe_geo(geo: CountryResolver) -> str:
    """``GeoIP GeoLite2-Country built 2026-11-20 + GeoIP2-Anonymous-IP built ...; 2 overrides``."""
    overrides = ""
    if isinstance(geo, OverrideCountryResolver):
        count = len(geo.entries)
        overrides = f"; {count} static override{'s' if count != 1 else ''}"
        geo = geo.inner
    if isinstance(geo, MaxMindCountryResolver):
        info = geo.country_info
        text = f"GeoIP {info.database_type} built {info.build[:10]} ({info.path})"
        anonymous = geo.anonymous_ip_info
        if anonymous is not None:
            text += f" + {anonymous.database_type} built {anonymous.build[:10]}"
        else:
            text += ", no anonymizer database"
        return text + overrides
    if isinstance(geo, IptoccCountryResolver):
        return (
            f"GeoIP embedded iptocc {geo.database_build} (RIR registration country, "
            f"no anonymizer data){overrides}"
        )
    return f"GeoIP {type(geo).__name__}{overrides}"


def _build(client: ClientIP, geo: GeoResult) -> Origin:
    return Origin(
        ip=client.ip,
        resolved_by=client.resolved_by,
        peer=client.peer,
        country=geo.country,
        country_source=geo.source,
        anonymizer=geo.anonymizer,
        database=geo.database,
        database_build=geo.database_build,
        anonymizer_database=geo.anonymizer_database,
        anonymizer_database_build=geo.anonymizer_database_build,
        notes=client.notes + geo.notes if geo.notes else client.notes,
        region=geo.region,
        region_source=geo.region_source,
    )


def parse_header_lines(lines: Iterable[str]) -> list[tuple[bytes, bytes]]:
    """``"Name: value"`` strings as ASGI headers (lower-case names); a line without ``:`` raises."""
    headers: list[tuple[bytes, bytes]] = []
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise ConfigError(Problem(_COMMAND_LINE, "--header", f"{line!r} is not 'Name: value'"))
        headers.append((name.strip().lower().encode(), value.strip().encode()))
    return headers


def build_origin_resolver(network: NetworkSettings, geoip: GeoipSettings) -> OriginResolver:
    """Open the configured databases (or the embedded data) behind the trusted-proxy walk."""
    proxies = TrustedProxies(network.trusted_proxies, headers=network.trusted_headers)
    geo: CountryResolver
    if geoip.country_database is None:
        geo = IptoccCountryResolver(cache_size=geoip.cache_size)
    else:
        geo = MaxMindCountryResolver(
            geoip.country_database,
            geoip.anonymous_ip_database,
            cache_size=geoip.cache_size,
            reload_check_interval=geoip.reload_check_interval,
        )
    if geoip.overrides:
        geo = OverrideCountryResolver(geoip.overrides, geo, cache_size=geoip.cache_size)
    return OriginResolver(
        proxies,
        geo,
        reload_check_interval=geoip.reload_check_interval,
        cache_size=geoip.cache_size,
    )


def origin_resolver_for(config: GateConfig) -> OriginResolver:
    """The resolver a loaded configuration's ``network`` and ``geoip`` sections describe."""
    return build_origin_resolver(config.get(NETWORK), config.get(GEOIP))
