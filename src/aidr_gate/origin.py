"""Where a request comes from: the client IP behind trusted proxies, then its country and flags.

:class:`OriginResolver` joins :class:`~aidr_gate.client_ip.TrustedProxies` and a
:class:`~aidr_gate.geo.CountryResolver` into one :class:`~aidr_gate.facts.Origin` per request, and never
raises: anything that goes wrong leaves the country unknown (which packs deny or flag explicitly) and
says why in ``Origin.notes``.

Configuration, two sections of the gate's file (paths relative to it)::

    network:
      trusted_proxies: [10.0.0.0/8, "fd00::/8"]   # default: 127.0.0.0/8 and ::1 (loopback only)
      trusted_headers: [x-forwarded-for]           # or [forwarded], or both: the first listed that
                                                   # a request carries is used
    geoip:                                         # absent: embedded iptocc (registration country)
      country_database: /var/lib/GeoIP/GeoIP2-Country.mmdb    # or GeoLite2-Country, or a City db
      anonymous_ip_database: /var/lib/GeoIP/GeoIP2-Anonymous-IP.mmdb   # optional
      cache_size: 65536                            # answers cached per IP
      reload_check_interval: 1.0                   # seconds between file checks; 0: never
      overrides:                                   # checked before the database, most specific
        - network: 198.51.100.0/24                 #   network first
          country: SE                              # optional: the country (source "declared")
          anonymizer: [vpn]                        # optional: the flags ([] clears the database's)
          note: our Stockholm VPN concentrator     # optional: shown in evidence and audit

Overrides are for what the operator knows better than any database: its own egress ranges, a
partner's VPN concentrator, internal ranges that should count as a country. Each needs a country, an
anonymizer list, or both; the database fills in what an override leaves out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any

from aidr_gate.client_ip import (
    DEFAULT_HEADERS,
    DEFAULT_TRUSTED_PROXIES,
    ClientIP,
    ProxyHeader,
    TrustedProxies,
    normalize_ip,
    normalize_network,
)
from aidr_gate.config import GateConfig
from aidr_gate.document import Checker, Document, join
from aidr_gate.errors import ConfigError, Problem
from aidr_gate.facts import AnonymizerFlag, Origin
from aidr_gate.geo import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_RELOAD_CHECK_INTERVAL,
    CountryResolver,
    GeoResult,
    IptoccCountryResolver,
    MaxMindCountryResolver,
    OverrideCountryResolver,
    OverrideEntry,
    ReloadResult,
    watch,
)
from aidr_gate.policy.reach import region_code

__all__ = [
    "OriginConfig",
    "OriginResolver",
    "build_origin_resolver",
    "describe_geo",
    "origin_resolver_for",
    "parse_header_lines",
    "parse_origin_config",
]

NETWORK_KEYS = ("trusted_proxies", "trusted_headers")
GEOIP_KEYS = (
    "country_database",
    "anonymous_ip_database",
    "cache_size",
    "reload_check_interval",
    "overrides",
)
OVERRIDE_KEYS = ("network", "country", "region", "anonymizer", "note")
MAX_OVERRIDES = 10_000
MAX_CACHE_SIZE = 16_777_216
_COMMAND_LINE = "<command line>"


@dataclass(frozen=True, slots=True)
class OriginConfig:
    """The ``network`` and ``geoip`` sections, validated; no database path means embedded iptocc."""

    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = tuple(
        ip_network(cidr) for cidr in DEFAULT_TRUSTED_PROXIES
    )
    trusted_headers: tuple[ProxyHeader, ...] = DEFAULT_HEADERS
    country_database: Path | None = None
    anonymous_ip_database: Path | None = None
    cache_size: int = DEFAULT_CACHE_SIZE
    reload_check_interval: float = DEFAULT_RELOAD_CHECK_INTERVAL
    overrides: tuple[OverrideEntry, ...] = ()
    # Where the values came from, so errors found when opening databases name file, key and line.
    document: Document | None = None


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

    def resolve(self, peer: str | None, headers: Iterable[tuple[bytes, bytes]]) -> Origin:
        """The origin of one request from the ASGI peer host and raw ASGI headers; never raises."""
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
        origins = self._origins
        if len(origins) >= self.cache_size:
            origins.clear()
        origins[key] = (geo, origin)
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


# --- configuration ---------------------------------------------------------------------------------


def parse_origin_config(config: GateConfig) -> OriginConfig:
    """Validate the ``network`` and ``geoip`` sections; raise one :class:`ConfigError` for all."""
    document = config.document or Document(config.file, None, {})
    check = Checker(document)
    network = check.mapping(dict(config.section("network")), "network", keys=NETWORK_KEYS) or {}
    geoip = check.mapping(dict(config.section("geoip")), "geoip", keys=GEOIP_KEYS) or {}
    defaults = OriginConfig()

    proxies = defaults.trusted_proxies
    if "trusted_proxies" in network:
        read: list[IPv4Network | IPv6Network] | None = check.each(
            network["trusted_proxies"], "network.trusted_proxies", _cidr(check)
        )
        proxies = tuple(read) if read is not None else proxies

    headers = defaults.trusted_headers
    if "trusted_headers" in network:
        choices = [h.value for h in ProxyHeader]
        path = "network.trusted_headers"
        names = check.each(
            network["trusted_headers"], path, lambda v, p: check.string(v, p, choices=choices)
        )
        if names is not None:
            if len(set(names)) != len(names):
                check.error(path, "a header is listed more than once")
            headers = tuple(ProxyHeader(name) for name in dict.fromkeys(names))

    country = _database(check, config, geoip, "country_database")
    anonymous = _database(check, config, geoip, "anonymous_ip_database")
    if anonymous is not None and country is None and "country_database" not in geoip:
        check.error(
            "geoip.anonymous_ip_database",
            "needs geoip.country_database (the embedded registration data cannot be combined)",
        )
    cache_size = defaults.cache_size
    if "cache_size" in geoip:
        size = check.integer(geoip["cache_size"], "geoip.cache_size", minimum=1)
        if size is not None and size > MAX_CACHE_SIZE:
            check.error("geoip.cache_size", f"must be at most {MAX_CACHE_SIZE}")
        elif size is not None:
            cache_size = size
    interval = defaults.reload_check_interval
    if "reload_check_interval" in geoip:
        seconds = check.number(
            geoip["reload_check_interval"], "geoip.reload_check_interval", minimum=0
        )
        interval = seconds if seconds is not None else interval
    overrides: tuple[OverrideEntry, ...] = ()
    if "overrides" in geoip:
        overrides = _overrides(check, geoip["overrides"], "geoip.overrides")
    check.raise_if_errors()
    return OriginConfig(
        trusted_proxies=proxies,
        trusted_headers=headers,
        country_database=country,
        anonymous_ip_database=anonymous,
        cache_size=cache_size,
        reload_check_interval=interval,
        overrides=overrides,
        document=document,
    )


def _overrides(check: Checker, raw: Any, path: str) -> tuple[OverrideEntry, ...]:
    items = check.sequence(raw, path) or []
    if len(items) > MAX_OVERRIDES:
        check.error(path, f"at most {MAX_OVERRIDES} entries (use a database for more)")
        return ()
    flags = [flag.value for flag in AnonymizerFlag]
    out: list[OverrideEntry] = []
    seen: dict[IPv4Network | IPv6Network, int] = {}
    for index, item in enumerate(items):
        where = join(path, index)
        data = check.mapping(item, where, keys=OVERRIDE_KEYS, required=("network",))
        if data is None or data.get("network") is None:
            continue
        network = _cidr(check)(data["network"], join(where, "network"))
        country = None
        if data.get("country") is not None:
            country = check.country(data["country"], join(where, "country"))
        region = None
        if data.get("region") is not None:
            # A region names its country ("UA-43" is in UA): given alone, it sets both.
            region = region_code(check, data["region"], join(where, "region"))
            if region is not None and country is None and data.get("country") is None:
                country = region[:2]
            elif region is not None and country is not None and region[:2] != country:
                check.error(join(where, "region"), f"{region} is not in {country}")
        anonymizer = None
        if "anonymizer" in data:
            names = check.each(
                data["anonymizer"],
                join(where, "anonymizer"),
                lambda v, p: check.string(v, p, choices=flags),
            )
            anonymizer = frozenset(AnonymizerFlag(n) for n in names or ())
        elif data.get("country") is None and data.get("region") is None:
            check.error(where, "give a country, a region, an anonymizer list, or several")
        note = None
        if data.get("note") is not None:
            note = check.string(data["note"], join(where, "note"))
        if network is None:
            continue
        if network in seen:
            check.error(
                join(where, "network"),
                f"{network} is already listed at {join(path, seen[network])}",
            )
            continue
        seen[network] = index
        out.append(OverrideEntry(network, country, anonymizer, note, region))
    return tuple(out)


def _cidr(check: Checker) -> Callable[[Any, str], IPv4Network | IPv6Network | None]:
    def read(value: Any, path: str) -> IPv4Network | IPv6Network | None:
        text = check.string(value, path, what="CIDR")
        if text is None:
            return None
        try:
            # Written IPv4-mapped, a network means its IPv4 range: lookups normalise addresses.
            return normalize_network(ip_network(text.strip()))
        except ValueError as exc:
            check.error(path, f"{text!r} is not a CIDR network ({exc})")
            return None

    return read


def _database(check: Checker, config: GateConfig, geoip: dict[str, Any], key: str) -> Path | None:
    if key not in geoip:
        return None
    path = join("geoip", key)
    text = check.string(geoip[key], path, what="file path")
    if text is None:
        return None
    resolved = config.resolve(text)
    if not resolved.is_file():
        check.error(path, f"no such file: {resolved}")
        return None
    return resolved


def build_origin_resolver(config: OriginConfig) -> OriginResolver:
    """Open the configured databases (or the embedded data); errors name the config key and line."""
    proxies = TrustedProxies(config.trusted_proxies, headers=config.trusted_headers)
    geo: CountryResolver
    if config.country_database is None:
        geo = IptoccCountryResolver(cache_size=config.cache_size)
    else:
        try:
            geo = MaxMindCountryResolver(
                config.country_database,
                config.anonymous_ip_database,
                cache_size=config.cache_size,
                reload_check_interval=config.reload_check_interval,
            )
        except ConfigError as exc:
            if config.document is None:
                raise
            check = Checker(config.document)
            for problem in exc.problems:
                anonymous = problem.file == str(config.anonymous_ip_database)
                key = "anonymous_ip_database" if anonymous else "country_database"
                check.error(join("geoip", key), f"{problem.file}: {problem.message}")
            check.raise_if_errors()
            raise  # pragma: no cover - raise_if_errors always raises here
    if config.overrides:
        geo = OverrideCountryResolver(config.overrides, geo, cache_size=config.cache_size)
    return OriginResolver(
        proxies,
        geo,
        reload_check_interval=config.reload_check_interval,
        cache_size=config.cache_size,
    )


def origin_resolver_for(config: GateConfig) -> OriginResolver:
    """Parse the configuration's ``network`` and ``geoip`` sections and build the resolver."""
    return build_origin_resolver(parse_origin_config(config))
