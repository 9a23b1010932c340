"""GeoIP: the country and anonymizer flags of a client address, behind a small resolver interface.

Two implementations of :class:`CountryResolver`:

- :class:`MaxMindCountryResolver`: a GeoIP2/GeoLite2 Country or City database, plus optionally a GeoIP2
  Anonymous IP database, read with ``maxminddb`` directly. ``geoip2``'s ``country()`` builds model
  objects for every lookup (several times the cost of the raw read, see ``bench/origin.py``); here the
  raw record is read and only ``country.iso_code`` is taken. When a record has no ``country`` but has a
  ``registered_country`` (some anycast and satellite ranges), that is used and labelled
  :attr:`CountrySource.REGISTRATION`, never passed off as geolocation.
- :class:`IptoccCountryResolver`: the embedded default, so a fresh install runs with no licence key and
  no network. ``iptocc`` carries the RIRs' delegation data in its wheel: the country a block is
  *registered* to, not where its users are, so every answer is :attr:`CountrySource.REGISTRATION`, and it
  has no anonymizer signal. GeoLite2 data is never bundled (its licence requires deleting stale copies).

Either can sit behind :class:`OverrideCountryResolver`: a small table of networks the operator knows
better than any database (its own egress ranges, a partner's VPN concentrator, internal ranges),
checked first. An override sets the country (:attr:`CountrySource.DECLARED`: nobody looked it up),
the anonymizer flags, or both; what it leaves out comes from the database behind it.

Both resolve private, reserved, loopback, link-local, multicast and not-found addresses to an unknown
country (``None``) with a note, normalise IPv4-mapped IPv6 first (databases written with mmdb-writer do
not alias ``::ffff:a.b.c.d``), and cache answers per IP in a bounded dict.

Reloading (MaxMind): :meth:`MaxMindCountryResolver.refresh_if_changed` stats the files at most once per
``reload_check_interval`` and reloads a file whose identity (device, inode, size, mtime) changed;
:meth:`~MaxMindCountryResolver.reload` reloads unconditionally. Run either from a background task
(:func:`watch`), never per request. A replacement is opened and validated (metadata, the database type
fits its role, probe lookups, the first records decoded) before it is swapped in; a file that fails is
refused, the loaded database kept, and a warning logged. Keep files current with ``geoipupdate``, which
writes a new file and renames it over the old one: an in-place rewrite could be read half-written.

The loaded databases and their cache form one immutable generation, replaced by a single attribute
assignment, so a lookup sees the old databases or the new ones, never a mix, and a swap empties the
cache by replacing it. A lookup takes the generation once, then reads it; a replaced reader is kept
open (referenced from a retired list) for a grace period far longer than any lookup takes, and closed
at the first refresh after that, or at :meth:`~MaxMindCountryResolver.close`. The ``maxminddb`` C
extension holds the GIL for the whole lookup and refuses reads on a closed reader with ``ValueError``,
so even a lookup outliving the grace period fails closed (unknown country, with a note), never crashes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from importlib.metadata import version
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any, Protocol

import iptocc
import maxminddb

from aidr_gate.client_ip import normalize_ip, normalize_network
from aidr_gate.countries import is_country_code
from aidr_gate.errors import ConfigError
from aidr_gate.facts import NO_FLAGS, AnonymizerFlag, CountrySource, RegionSource

__all__ = [
    "DEFAULT_CACHE_SIZE",
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

logger = logging.getLogger("aidr_gate.geo")

DEFAULT_CACHE_SIZE = 65536
DEFAULT_RELOAD_CHECK_INTERVAL = 1.0
# A replaced reader stays open this long (and until the next refresh) for lookups still holding it.
RETIRE_GRACE = 2.0

# GeoIP2 Anonymous IP attributes and the flag each one sets; ``is_anonymous`` is their union.
ANONYMIZER_ATTRIBUTES: tuple[tuple[str, AnonymizerFlag], ...] = (
    ("is_anonymous_vpn", AnonymizerFlag.VPN),
    ("is_tor_exit_node", AnonymizerFlag.TOR),
    ("is_public_proxy", AnonymizerFlag.PUBLIC_PROXY),
    ("is_hosting_provider", AnonymizerFlag.HOSTING),
    ("is_residential_proxy", AnonymizerFlag.RESIDENTIAL_PROXY),
)

# Addresses looked up when validating a database, besides its first records.
_PROBES = ("1.1.1.1", "8.8.8.8", "81.2.69.160", "2001:4860:4860::8888", "2a02:ff0::1")
_FIRST_RECORDS = 16


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


@dataclass(frozen=True, slots=True)
class DatabaseInfo:
    """Metadata of a loaded database, as evidence gives it."""

    path: str
    database_type: str
    build_epoch: int
    ip_version: int
    node_count: int

    @property
    def build(self) -> str:
        """The build time, ISO 8601 UTC (``2026-02-04T22:49:29Z``)."""
        return datetime.fromtimestamp(self.build_epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
# part of a miss). tests/test_geo.py checks this against the running Python's ipaddress tables.
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


def _classify(ip: str) -> str | GeoResult:
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


def _store(cache: dict[str, GeoResult], size: int, key: str, result: GeoResult) -> None:
    # Clearing when full costs one burst of misses; an LRU costs on every hit (bench/origin.py).
    if len(cache) >= size:
        cache.clear()
    cache[key] = result


def _known_country(code: str, notes: list[str]) -> str | None:
    """A database's country code if ISO 3166-1 assigns it; else None, and a note why."""
    if is_country_code(code):
        return code
    notes.append(f"unrecognised country code {code!r:.12}; country unknown")
    return None


def _failed(exc: BaseException) -> GeoResult:
    return GeoResult(None, CountrySource.NONE, notes=(f"GeoIP lookup failed: {exc!r:.120}",))


# --- the embedded default: iptocc ------------------------------------------------------------------


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
            text = _classify(ip)
            result = text if isinstance(text, GeoResult) else self._find(text)
        except Exception as exc:  # never raise per request; fail closed
            return _failed(exc)
        _store(cache, self.cache_size, ip, result)
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
                country = _known_country(code, notes)
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


# --- MaxMind GeoIP2 / GeoLite2 ---------------------------------------------------------------------

_Signature = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns


class _Refused(Exception):
    """A database file failed validation."""


@dataclass(frozen=True, slots=True)
class _Opened:
    reader: maxminddb.Reader
    info: DatabaseInfo
    signature: _Signature


@dataclass(frozen=True, slots=True)
class _Generation:
    country: _Opened
    anonymous: _Opened | None
    cache: dict[str, GeoResult] = field(default_factory=dict)
    # One shared answer object per distinct (country, source, flags, notes): a full cache stays small.
    results: dict[tuple[Any, ...], GeoResult] = field(default_factory=dict)


_ROLES = {"country": ("country", "city", "enterprise"), "anonymous_ip": ("anonymous",)}


def _signature(path: Path) -> _Signature:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _open(path: Path, role: str) -> _Opened:
    """Open and validate a database for *role*; raise :class:`_Refused` saying why."""
    try:
        signature = _signature(path)
        reader = maxminddb.open_database(str(path), maxminddb.MODE_AUTO)
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        raise _Refused(f"cannot open: {exc}") from None
    try:
        info = _validate(reader, path, role)
    except Exception as exc:  # any failure to read the file is a refusal, never a crash
        reader.close()
        if isinstance(exc, _Refused):
            raise
        raise _Refused(f"not a readable MaxMind database: {exc}") from None
    return _Opened(reader, info, signature)


def _validate(reader: maxminddb.Reader, path: Path, role: str) -> DatabaseInfo:
    meta = reader.metadata()
    if meta.binary_format_major_version != 2:
        raise _Refused(f"binary format {meta.binary_format_major_version}, expected 2")
    kind = str(meta.database_type)
    if not any(word in kind.lower() for word in _ROLES[role]):
        wanted = "a Country or City" if role == "country" else "an Anonymous IP"
        raise _Refused(f"database type {kind!r} is not {wanted} database")
    # Probe lookups and the first records: a corrupt data section fails here, not on a request.
    for probe in _PROBES:
        if meta.ip_version == 4 and ":" in probe:
            continue
        record = reader.get(probe)
        if record is not None and not isinstance(record, dict):
            raise _Refused(f"record for {probe} is not a map")
    for _network, record in itertools.islice(iter(reader), _FIRST_RECORDS):
        if not isinstance(record, dict):
            raise _Refused("a record is not a map")
    return DatabaseInfo(
        path=str(path),
        database_type=kind,
        build_epoch=int(meta.build_epoch),
        ip_version=int(meta.ip_version),
        node_count=int(meta.node_count),
    )


def _region(
    record: Mapping[str, Any], country: str | None, city: bool
) -> tuple[str | None, RegionSource]:
    # The first subdivision is the largest (an oblast, a state): the level ISO 3166-2 and the
    # sanctions regimes name. A Country database has none, and the evidence says which it is.
    if country is None:
        return None, RegionSource.NONE
    if not city:
        return None, RegionSource.NO_CITY_DATABASE
    subdivisions = record.get("subdivisions")
    first = subdivisions[0] if isinstance(subdivisions, list) and subdivisions else None
    code = first.get("iso_code") if isinstance(first, dict) else None
    if isinstance(code, str) and 0 < len(code) <= 3 and code.isalnum():
        return f"{country}-{code.upper()}", RegionSource.GEOIP
    return None, RegionSource.NOT_IN_RECORD


def _iso_code(record: Mapping[str, Any], key: str) -> str | None:
    part = record.get(key)
    code = part.get("iso_code") if isinstance(part, dict) else None
    return code if isinstance(code, str) else None


class MaxMindCountryResolver:
    """Country from a GeoIP2/GeoLite2 Country or City database, flags from an Anonymous IP database."""

    def __init__(
        self,
        country_database: str | Path,
        anonymous_ip_database: str | Path | None = None,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        reload_check_interval: float = DEFAULT_RELOAD_CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Open and validate the databases; raise :class:`ConfigError` naming the file if one fails."""
        if cache_size < 1:
            raise ValueError("cache_size must be positive")
        self.cache_size = cache_size
        self.reload_check_interval = reload_check_interval
        self.country_path = Path(country_database)
        self.anonymous_ip_path = Path(anonymous_ip_database) if anonymous_ip_database else None
        self._clock = clock
        self._lock = threading.Lock()  # one reload at a time (watch task and explicit reload)
        self._retired: list[tuple[float, maxminddb.Reader]] = []
        self._refused: dict[str, tuple[_Signature, str]] = {}
        self._missing: set[str] = set()
        self._closed = False
        country = self._open_at_start(self.country_path, "country")
        anonymous = None
        if self.anonymous_ip_path is not None:
            try:
                anonymous = self._open_at_start(self.anonymous_ip_path, "anonymous_ip")
            except ConfigError:
                country.reader.close()
                raise
        self._gen = _Generation(country, anonymous)
        self._next_check = clock() + reload_check_interval

    @staticmethod
    def _open_at_start(path: Path, role: str) -> _Opened:
        try:
            return _open(path, role)
        except _Refused as exc:
            raise ConfigError.single(str(path), "", f"{role} database: {exc}") from None

    # -- lookups -----------------------------------------------------------------------------------

    @property
    def country_info(self) -> DatabaseInfo:
        """The country database in use."""
        return self._gen.country.info

    @property
    def anonymous_ip_info(self) -> DatabaseInfo | None:
        """The Anonymous IP database in use, if any."""
        anonymous = self._gen.anonymous
        return None if anonymous is None else anonymous.info

    def lookup(self, ip: str) -> GeoResult:
        """Resolve one address; never raises."""
        gen = self._gen  # read once: the whole lookup uses one generation
        try:
            hit = gen.cache.get(ip)
            if hit is not None:
                return hit
            text = _classify(ip)
            result = text if isinstance(text, GeoResult) else self._find(gen, text)
        except Exception as exc:  # never raise per request; fail closed, not cached
            return _failed(exc)
        _store(gen.cache, self.cache_size, ip, result)
        return result

    def _find(self, gen: _Generation, text: str) -> GeoResult:
        country_db = gen.country
        notes: list[str] = []
        country: str | None = None
        source = CountrySource.GEOIP
        kind = country_db.info.database_type
        region: str | None = None
        region_source = RegionSource.NONE
        record: Any = None
        if ":" in text and country_db.info.ip_version == 4:
            notes.append(f"{kind} is IPv4-only; country unknown")
        else:
            record = country_db.reader.get(text)
            if record is None:
                notes.append(f"not found in {kind}; country unknown")
            elif isinstance(record, dict):
                country = _iso_code(record, "country")
                if country is None:
                    country = _iso_code(record, "registered_country")
                    if country is not None:
                        source = CountrySource.REGISTRATION
                        notes.append(f"{kind} has no location; registered country used")
                    else:
                        notes.append(f"{kind} record has no country; country unknown")
            else:
                notes.append(f"{kind} record is not a map; country unknown")
        if country is not None:
            country = _known_country(country, notes)
        if country is not None and isinstance(record, dict) and source is CountrySource.GEOIP:
            region, region_source = _region(record, country, "City" in kind or "Enterprise" in kind)
        elif country is not None:
            region_source = RegionSource.NO_CITY_DATABASE
        flags = NO_FLAGS
        anon = gen.anonymous
        if anon is not None:
            flags = self._flags(anon, text, notes)
        key = (country, source, flags, tuple(notes), region, region_source)
        result = gen.results.get(key)
        if result is None:
            result = GeoResult(
                country,
                source,
                flags,
                kind,
                country_db.info.build,
                anon.info.database_type if anon is not None else None,
                anon.info.build if anon is not None else None,
                key[3],
                region,
                region_source,
            )
            gen.results[key] = result
        return result

    @staticmethod
    def _flags(anon: _Opened, text: str, notes: list[str]) -> frozenset[AnonymizerFlag]:
        if ":" in text and anon.info.ip_version == 4:
            notes.append(f"{anon.info.database_type} is IPv4-only; no anonymizer data")
            return NO_FLAGS
        record = anon.reader.get(text)
        if not isinstance(record, dict) or not record:
            return NO_FLAGS
        return frozenset(flag for key, flag in ANONYMIZER_ATTRIBUTES if record.get(key) is True)

    # -- reloading ---------------------------------------------------------------------------------

    def refresh_if_changed(self) -> tuple[ReloadResult, ...]:
        """Stat the files (at most once per interval) and reload any that changed; blocking."""
        now = self._clock()
        if now < self._next_check:
            return ()
        return self._refresh(force=False)

    def reload(self) -> tuple[ReloadResult, ...]:
        """Reopen and revalidate every database now; a bad file is refused and the old one kept."""
        return self._refresh(force=True)

    def _refresh(self, *, force: bool) -> tuple[ReloadResult, ...]:
        with self._lock:
            if self._closed:  # a closed resolver stays closed
                return ()
            now = self._clock()
            self._next_check = now + self.reload_check_interval
            self._close_retired(now)
            gen = self._gen
            country, first = self._check("country", self.country_path, gen.country, force)
            results = [first]
            anonymous = gen.anonymous
            if self.anonymous_ip_path is not None and anonymous is not None:
                anonymous, second = self._check(
                    "anonymous_ip", self.anonymous_ip_path, anonymous, force
                )
                results.append(second)
            if country is not gen.country or anonymous is not gen.anonymous:
                # One assignment swaps databases and cache together; lookups in flight keep theirs.
                self._gen = _Generation(country, anonymous)
                for old in (gen.country, gen.anonymous):
                    if old is not None and old is not country and old is not anonymous:
                        self._retired.append((now, old.reader))
            return tuple(results)

    def _check(
        self, role: str, path: Path, current: _Opened, force: bool
    ) -> tuple[_Opened, ReloadResult]:
        info = current.info

        def result(outcome: ReloadOutcome, detail: str, now_info: DatabaseInfo) -> ReloadResult:
            return ReloadResult(
                role, str(path), outcome, detail, now_info.database_type, now_info.build
            )

        try:
            signature = _signature(path)
        except OSError as exc:
            detail = f"cannot read {path}: {exc.strerror or exc}; keeping {_describe(info)}"
            if role not in self._missing:  # log the change, not every check
                logger.warning("GeoIP %s database %s", role, detail)
                self._missing.add(role)
            return current, result(ReloadOutcome.MISSING, detail, info)
        self._missing.discard(role)
        if not force:
            if signature == current.signature:
                return current, result(ReloadOutcome.UNCHANGED, "file unchanged", info)
            refused = self._refused.get(role)
            if refused is not None and refused[0] == signature:
                return current, result(ReloadOutcome.REFUSED, refused[1], info)
        try:
            opened = _open(path, role)
        except _Refused as exc:
            detail = f"replacement {path} refused ({exc}); keeping {_describe(info)}"
            self._refused[role] = (signature, detail)
            logger.warning("GeoIP %s database %s", role, detail)
            return current, result(ReloadOutcome.REFUSED, detail, info)
        self._refused.pop(role, None)
        detail = f"loaded {_describe(opened.info)} (was {_describe(info)})"
        logger.info("GeoIP %s database %s", role, detail)
        return opened, result(ReloadOutcome.RELOADED, detail, opened.info)

    def _close_retired(self, now: float) -> None:
        keep: list[tuple[float, maxminddb.Reader]] = []
        for retired_at, reader in self._retired:
            if now - retired_at >= RETIRE_GRACE:
                reader.close()
            else:
                keep.append((retired_at, reader))
        self._retired = keep

    def close(self) -> None:
        """Close every reader, current and retired; lookups afterwards answer unknown."""
        with self._lock:
            self._closed = True
            for _at, reader in self._retired:
                reader.close()
            self._retired = []
            gen = self._gen
            gen.country.reader.close()
            if gen.anonymous is not None:
                gen.anonymous.reader.close()
            self._gen = _Generation(gen.country, gen.anonymous)  # drop cached answers


# --- static overrides ------------------------------------------------------------------------------

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
                return _failed(exc)
            if len(self._match) >= self.cache_size:
                self._match.clear()
            self._match[ip] = match
        except Exception as exc:  # unhashable input
            return _failed(exc)
        base = self.inner.lookup(ip)
        if match is None:
            return base
        cached = self._answers.get(ip)
        if cached is not None and cached[0] is base:
            return cached[1]
        result = _overridden(match, base)
        if len(self._answers) >= self.cache_size:
            self._answers.clear()
        self._answers[ip] = (base, result)
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


def _describe(info: DatabaseInfo) -> str:
    return f"{info.database_type} built {info.build}"


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
