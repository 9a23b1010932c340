"""The ``network:`` and ``geoip:`` sections: whom to trust for client addresses, where countries
come from. Paths are relative to the configuration file::

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

The databases are opened when the section is read, so a missing, corrupt or wrong-type database
is a problem at its key (``validate`` finds it, as the start would).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any

from aidr_gate.document import Checker, join
from aidr_gate.errors import ConfigError
from aidr_gate.facts import AnonymizerFlag
from aidr_gate.policy.reach import region_code
from aidr_gate.request.client_ip import (
    DEFAULT_HEADERS,
    DEFAULT_TRUSTED_PROXIES,
    ProxyHeader,
    normalize_network,
)
from aidr_gate.request.geo import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_RELOAD_CHECK_INTERVAL,
    MaxMindCountryResolver,
    OverrideEntry,
)
from aidr_gate.settings.schema import KeyDoc, Section, subkeys

MAX_OVERRIDES = 10_000
MAX_CACHE_SIZE = 16_777_216


@dataclass(frozen=True, slots=True)
class NetworkSettings:
    """The ``network:`` section: the proxies whose forwarded headers are believed, and which."""

    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = tuple(
        ip_network(cidr) for cidr in DEFAULT_TRUSTED_PROXIES
    )
    trusted_headers: tuple[ProxyHeader, ...] = DEFAULT_HEADERS


@dataclass(frozen=True, slots=True)
class GeoipSettings:
    """The ``geoip:`` section; no database means the embedded iptocc registration data."""

    country_database: Path | None = None
    anonymous_ip_database: Path | None = None
    cache_size: int = DEFAULT_CACHE_SIZE
    reload_check_interval: float = DEFAULT_RELOAD_CHECK_INTERVAL
    overrides: tuple[OverrideEntry, ...] = ()


NETWORK_KEYS = (
    KeyDoc("trusted_proxies", "CIDRs of the proxies in front of the gate; default loopback"),
    KeyDoc("trusted_headers", "x-forwarded-for, forwarded, or both (the first present wins)"),
)
GEOIP_KEYS = (
    KeyDoc("country_database", "a MaxMind Country or City database"),
    KeyDoc("anonymous_ip_database", "a MaxMind Anonymous IP database: VPN, Tor, proxy, hosting"),
    KeyDoc("cache_size", "answers cached per IP"),
    KeyDoc("reload_check_interval", "seconds between checks for a replaced file; 0: never"),
    KeyDoc(
        "overrides",
        "networks the operator knows better, most specific first",
        (
            KeyDoc("network", "a CIDR"),
            KeyDoc("country", "its country"),
            KeyDoc("region", "its ISO 3166-2 region (UA-43); alone, it names the country too"),
            KeyDoc("anonymizer", "its anonymizer flags ([] clears the database's)"),
            KeyDoc("note", "shown in evidence and audit records"),
        ),
    ),
)


def read_network(check: Checker, raw: Any, base_dir: Path) -> NetworkSettings | None:
    """Read the ``network:`` section (absent: loopback proxies, X-Forwarded-For)."""
    defaults = NetworkSettings()
    if raw is None:
        return defaults
    data = check.mapping(raw, "network", keys=[k.name for k in NETWORK_KEYS])
    if data is None:
        return None
    proxies = defaults.trusted_proxies
    if "trusted_proxies" in data:
        read: list[IPv4Network | IPv6Network] | None = check.each(
            data["trusted_proxies"], "network.trusted_proxies", _cidr(check)
        )
        proxies = tuple(read) if read is not None else proxies
    headers = defaults.trusted_headers
    if "trusted_headers" in data:
        choices = [h.value for h in ProxyHeader]
        path = "network.trusted_headers"
        names = check.each(
            data["trusted_headers"], path, lambda v, p: check.string(v, p, choices=choices)
        )
        if names is not None:
            if len(set(names)) != len(names):
                check.error(path, "a header is listed more than once")
            headers = tuple(ProxyHeader(name) for name in dict.fromkeys(names))
    return NetworkSettings(trusted_proxies=proxies, trusted_headers=headers)


def read_geoip(check: Checker, raw: Any, base_dir: Path) -> GeoipSettings | None:
    """Read the ``geoip:`` section and open its databases (absent: embedded iptocc)."""
    defaults = GeoipSettings()
    if raw is None:
        return defaults
    data = check.mapping(raw, "geoip", keys=[k.name for k in GEOIP_KEYS])
    if data is None:
        return None
    country = _database(check, base_dir, data, "country_database")
    anonymous = _database(check, base_dir, data, "anonymous_ip_database")
    if anonymous is not None and country is None and "country_database" not in data:
        check.error(
            "geoip.anonymous_ip_database",
            "needs geoip.country_database (the embedded registration data cannot be combined)",
        )
    cache_size = defaults.cache_size
    if "cache_size" in data:
        size = check.integer(data["cache_size"], "geoip.cache_size", minimum=1)
        if size is not None and size > MAX_CACHE_SIZE:
            check.error("geoip.cache_size", f"must be at most {MAX_CACHE_SIZE}")
        elif size is not None:
            cache_size = size
    interval = defaults.reload_check_interval
    if "reload_check_interval" in data:
        seconds = check.number(
            data["reload_check_interval"], "geoip.reload_check_interval", minimum=0
        )
        interval = seconds if seconds is not None else interval
    overrides: tuple[OverrideEntry, ...] = ()
    if "overrides" in data:
        overrides = _overrides(check, data["overrides"], "geoip.overrides")
    if country is not None:
        _open_databases(check, country, anonymous)
    return GeoipSettings(
        country_database=country,
        anonymous_ip_database=anonymous,
        cache_size=cache_size,
        reload_check_interval=interval,
        overrides=overrides,
    )


def _open_databases(check: Checker, country: Path, anonymous: Path | None) -> None:
    """Open the databases as the start would: a corrupt file or a wrong type is named here."""
    try:
        MaxMindCountryResolver(country, anonymous, cache_size=1).close()
    except ConfigError as exc:
        for problem in exc.problems:
            is_anonymous = problem.file == str(anonymous)
            key = "anonymous_ip_database" if is_anonymous else "country_database"
            check.error(join("geoip", key), f"{problem.file}: {problem.message}")


def _overrides(check: Checker, raw: Any, path: str) -> tuple[OverrideEntry, ...]:
    items = check.sequence(raw, path) or []
    if len(items) > MAX_OVERRIDES:
        check.error(path, f"at most {MAX_OVERRIDES} entries (use a database for more)")
        return ()
    out: list[OverrideEntry] = []
    seen: dict[IPv4Network | IPv6Network, int] = {}
    for index, item in enumerate(items):
        where = join(path, index)
        entry = _override(check, item, where)
        if entry is None:
            continue
        if entry.network in seen:
            check.error(
                join(where, "network"),
                f"{entry.network} is already listed at {join(path, seen[entry.network])}",
            )
            continue
        seen[entry.network] = index
        out.append(entry)
    return tuple(out)


def _override(check: Checker, item: Any, where: str) -> OverrideEntry | None:
    """One entry of ``geoip.overrides``; None when its network cannot be read."""
    data = check.mapping(item, where, keys=subkeys(GEOIP_KEYS, "overrides"), required=("network",))
    if data is None or data.get("network") is None:
        return None
    network = _cidr(check)(data["network"], join(where, "network"))
    country, region = _override_place(check, data, where)
    anonymizer = _override_anonymizer(check, data, where)
    note = None
    if data.get("note") is not None:
        note = check.string(data["note"], join(where, "note"))
    if network is None:
        return None
    return OverrideEntry(network, country, anonymizer, note, region)


def _override_place(
    check: Checker, data: dict[str, Any], where: str
) -> tuple[str | None, str | None]:
    """An entry's country and region; a region given alone names its country too."""
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
    return country, region


_FLAG_NAMES = [flag.value for flag in AnonymizerFlag]


def _override_anonymizer(
    check: Checker, data: dict[str, Any], where: str
) -> frozenset[AnonymizerFlag] | None:
    """An entry's anonymizer flags (None: the database's stand); an entry must set something."""
    if "anonymizer" not in data:
        if data.get("country") is None and data.get("region") is None:
            check.error(where, "give a country, a region, an anonymizer list, or several")
        return None
    names = check.each(
        data["anonymizer"],
        join(where, "anonymizer"),
        lambda v, p: check.string(v, p, choices=_FLAG_NAMES),
    )
    return frozenset(AnonymizerFlag(n) for n in names or ())


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


def _database(check: Checker, base_dir: Path, data: dict[str, Any], key: str) -> Path | None:
    if key not in data:
        return None
    path = join("geoip", key)
    text = check.string(data[key], path, what="file path")
    if text is None:
        return None
    resolved = Path(text).expanduser()
    resolved = resolved if resolved.is_absolute() else base_dir / resolved
    if not resolved.is_file():
        check.error(path, f"no such file: {resolved}")
        return None
    return resolved


NETWORK: Section[NetworkSettings] = Section("network", read_network, NETWORK_KEYS)
GEOIP: Section[GeoipSettings] = Section("geoip", read_geoip, GEOIP_KEYS)
