"""MaxMind GeoIP2/GeoLite2: country and region from a Country or City database, flags from an
Anonymous IP database, reloaded when their files change.

:class:`MaxMindCountryResolver` reads the databases with ``maxminddb`` directly. ``geoip2``'s
``country()`` builds model objects for every lookup (several times the cost of the raw read, see
``bench/origin.py``); here the raw record is read and only ``country.iso_code`` is taken. When a
record has no ``country`` but has a ``registered_country`` (some anycast and satellite ranges), that
is used and labelled :attr:`CountrySource.REGISTRATION`, never passed off as geolocation.

Reloading: :meth:`MaxMindCountryResolver.refresh_if_changed` stats the files at most once per
``reload_check_interval`` and reloads a file whose identity (device, inode, size, mtime) changed;
:meth:`~MaxMindCountryResolver.reload` reloads unconditionally. Run either from a background task
(:func:`aidr_gate.request.geo.watch`), never per request. A replacement is opened and validated (metadata,
the database type fits its role, probe lookups, the first records decoded) before it is swapped in;
a file that fails is refused, the loaded database kept, and a warning logged. Keep files current
with ``geoipupdate``, which writes a new file and renames it over the old one: an in-place rewrite
could be read half-written.

The loaded databases and their cache form one immutable generation, replaced by a single attribute
assignment, so a lookup sees the old databases or the new ones, never a mix, and a swap empties the
cache by replacing it. A lookup takes the generation once, then reads it; a replaced reader is kept
open (referenced from a retired list) for a grace period far longer than any lookup takes, and closed
at the first refresh after that, or at :meth:`~MaxMindCountryResolver.close`. The ``maxminddb`` C
extension holds the GIL for the whole lookup and refuses reads on a closed reader with ``ValueError``,
so even a lookup outliving the grace period fails closed (unknown country, with a note), never crashes.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import maxminddb

from aidr_gate.bounded import store_bounded
from aidr_gate.errors import ConfigError
from aidr_gate.facts import NO_FLAGS, AnonymizerFlag, CountrySource, RegionSource
from aidr_gate.request.geo.resolver import (
    DEFAULT_CACHE_SIZE,
    GeoResult,
    ReloadOutcome,
    ReloadResult,
    classify,
    failed_lookup,
    known_country,
)

__all__ = [
    "ANONYMIZER_ATTRIBUTES",
    "DEFAULT_RELOAD_CHECK_INTERVAL",
    "RETIRE_GRACE",
    "DatabaseInfo",
    "MaxMindCountryResolver",
]

# The logger the module had before geo/ became a package: logging configurations name it.
logger = logging.getLogger("aidr_gate.geo")

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
            text = classify(ip)
            result = text if isinstance(text, GeoResult) else self._find(gen, text)
        except Exception as exc:  # never raise per request; fail closed, not cached
            return failed_lookup(exc)
        store_bounded(gen.cache, self.cache_size, ip, result)
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
            country = known_country(country, notes)
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


def _describe(info: DatabaseInfo) -> str:
    return f"{info.database_type} built {info.build}"
