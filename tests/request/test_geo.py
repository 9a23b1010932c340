"""GeoIP resolvers on .mmdb files written at test time, MaxMind's own test files, and reloads."""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
import threading
from collections.abc import Iterator
from importlib.metadata import version
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import geoip2.database
import iptocc
import maxminddb
import pytest

from aidr_gate.errors import ConfigError
from aidr_gate.facts import AnonymizerFlag, CountrySource
from aidr_gate.request.geo import (
    RETIRE_GRACE,
    CountryResolver,
    GeoResult,
    IptoccCountryResolver,
    MaxMindCountryResolver,
    ReloadOutcome,
    special_address,
    watch,
)
from aidr_gate.request.geo.resolver import _V4_SPECIAL_FIRST_OCTETS, _V6_SPECIAL_IN_GLOBAL
from support.environment import SHARED_TESTDATA, require_testdata
from support.mmdb_files import (
    ANONYMOUS,
    BUILD,
    BUILD_EPOCH,
    COUNTRIES,
    country_record,
    write_anonymous_db,
    write_country_db,
    write_mmdb,
)

MAXMIND = SHARED_TESTDATA / "maxmind"


@pytest.fixture
def maxmind_databases() -> Path:
    """MaxMind's test databases: without them a test skips, naming the folder; under CI it fails."""
    return require_testdata(MAXMIND, "MaxMind test databases")


needs_maxmind = pytest.mark.usefixtures("maxmind_databases")


class Clock:
    """A monotonic clock the test moves by hand, so rate limits are checked without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def is_closed(reader: maxminddb.Reader) -> bool:
    """Read ``closed`` through a call, so the checker does not narrow it between two asserts."""
    return bool(reader.closed)


@pytest.fixture
def country_db(tmp_path: Path) -> Path:
    """A GeoIP2-Country database with IPv4 and IPv6 networks."""
    return write_country_db(tmp_path / "GeoIP2-Country.mmdb", COUNTRIES)


@pytest.fixture
def anonymous_db(tmp_path: Path) -> Path:
    """A GeoIP2-Anonymous-IP database."""
    return write_anonymous_db(tmp_path / "GeoIP2-Anonymous-IP.mmdb", ANONYMOUS)


@pytest.fixture
def clock() -> Clock:
    """A hand-moved clock."""
    return Clock()


@pytest.fixture
def resolver(
    country_db: Path, anonymous_db: Path, clock: Clock
) -> Iterator[MaxMindCountryResolver]:
    """Country and Anonymous IP databases, checked for changes at most once a second."""
    geo = MaxMindCountryResolver(country_db, anonymous_db, reload_check_interval=1.0, clock=clock)
    yield geo
    geo.close()


# --- country and flags -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "country", "flags"),
    [
        ("81.2.69.1", "GB", set()),
        ("81.2.69.200", "GB", {AnonymizerFlag.VPN}),
        ("89.160.20.5", "SE", set()),
        ("89.160.20.130", "SE", {AnonymizerFlag.TOR, AnonymizerFlag.HOSTING}),
        ("216.160.83.200", "US", {AnonymizerFlag.PUBLIC_PROXY}),
        ("175.16.199.129", "CN", {AnonymizerFlag.RESIDENTIAL_PROXY}),
        ("2001:218::1", "JP", set()),
        ("2001:218:1::5", "JP", {AnonymizerFlag.VPN, AnonymizerFlag.HOSTING}),
        ("2a02:cf40::77", "SE", set()),
        ("2001:480::1", "US", set()),
        # IPv4-mapped IPv6: mmdb-writer databases do not alias it, the resolver normalises it.
        ("::ffff:81.2.69.200", "GB", {AnonymizerFlag.VPN}),
        ("::FFFF:59A0:1482", "SE", {AnonymizerFlag.TOR, AnonymizerFlag.HOSTING}),
        ("2001:0218:0000::0001", "JP", set()),
    ],
)
def test_country_and_flags(
    resolver: MaxMindCountryResolver, ip: str, country: str, flags: set[AnonymizerFlag]
) -> None:
    """Known networks give their country (geolocation) and anonymizer flags."""
    result = resolver.lookup(ip)
    assert result.country == country
    assert result.source is CountrySource.GEOIP
    assert result.anonymizer == flags
    assert result.notes == ()


def test_evidence_names_database_and_build(resolver: MaxMindCountryResolver) -> None:
    """Database type and build time of both databases are in every answer."""
    result = resolver.lookup("81.2.69.1")
    assert (result.database, result.database_build) == ("GeoIP2-Country", BUILD)
    assert (result.anonymizer_database, result.anonymizer_database_build) == (
        "GeoIP2-Anonymous-IP",
        BUILD,
    )
    info = resolver.country_info
    assert (info.database_type, info.build_epoch, info.build) == (
        "GeoIP2-Country",
        BUILD_EPOCH,
        BUILD,
    )
    anonymous = resolver.anonymous_ip_info
    assert anonymous is not None
    assert anonymous.database_type == "GeoIP2-Anonymous-IP"


@pytest.mark.parametrize(
    ("ip", "reason"),
    [
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("172.16.5.4", "private"),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "private or special-purpose"),
        ("100.64.0.1", "not globally routable"),
        ("192.0.2.1", "private or special-purpose"),
        ("2001:db8::1", "private or special-purpose"),
        ("fd00::1", "private or special-purpose"),
        ("::ffff:10.0.0.1", "private"),
    ],
)
def test_special_addresses_are_unknown(
    resolver: MaxMindCountryResolver, ip: str, reason: str
) -> None:
    """Non-global addresses never reach the database: unknown country, and why."""
    result = resolver.lookup(ip)
    assert result.country is None
    assert result.source is CountrySource.NONE
    assert result.anonymizer == frozenset()
    assert reason in result.notes[0]


@pytest.mark.parametrize("ip", ["8.8.8.8", "2606:4700::1111", "::ffff:8.8.4.4"])
def test_not_found_is_unknown(resolver: MaxMindCountryResolver, ip: str) -> None:
    """A global address the database does not cover is unknown, with a note naming the database."""
    result = resolver.lookup(ip)
    assert (result.country, result.anonymizer) == (None, frozenset())
    assert result.notes == ("not found in GeoIP2-Country; country unknown",)
    assert result.database == "GeoIP2-Country"


@pytest.mark.parametrize("ip", ["", "garbage", "1.2.3.4.5", "81.2.69.1/24", "x" * 500, "é"])
def test_garbage_is_unknown_not_an_error(resolver: MaxMindCountryResolver, ip: str) -> None:
    """Anything that is not an address answers unknown, never raises."""
    result = resolver.lookup(ip)
    assert result.country is None
    assert "not an IP address" in result.notes[0]
    assert len(result.notes[0]) < 80


def test_registered_country_is_labelled_registration(tmp_path: Path) -> None:
    """A record without a location but with a registered country says it is registration data."""
    path = write_country_db(
        tmp_path / "c.mmdb",
        {"81.2.69.0/24": "GB"},
        extra={
            "2.125.160.216/29": country_record(None, registered="FR"),
            "67.43.156.0/24": {"continent": {"code": "AS"}},
            "50.114.0.0/22": country_record("EU"),
        },
    )
    geo = MaxMindCountryResolver(path)
    try:
        registered = geo.lookup("2.125.160.217")
        assert (registered.country, registered.source) == ("FR", CountrySource.REGISTRATION)
        assert "registered country used" in registered.notes[0]
        no_country = geo.lookup("67.43.156.1")
        assert no_country.country is None
        assert "no country" in no_country.notes[0]
        not_iso = geo.lookup("50.114.0.1")  # "EU" is not an ISO 3166-1 country
        assert not_iso.country is None
        assert "unrecognised country code 'EU'" in not_iso.notes[0]
    finally:
        geo.close()


def test_ipv4_only_database(tmp_path: Path) -> None:
    """An IPv4-only database answers IPv4 and says IPv6 is not covered."""
    path = write_country_db(tmp_path / "v4.mmdb", {"81.2.69.0/24": "GB"}, ip_version=4)
    anon = write_mmdb(
        tmp_path / "a4.mmdb",
        {"81.2.69.0/25": {"is_anonymous": True, "is_anonymous_vpn": True}},
        database_type="GeoIP2-Anonymous-IP",
        ip_version=4,
    )
    geo = MaxMindCountryResolver(path, anon)
    try:
        assert geo.lookup("::ffff:81.2.69.7").country == "GB"
        assert geo.lookup("81.2.69.7").anonymizer == {AnonymizerFlag.VPN}
        v6 = geo.lookup("2001:218::1")
        assert v6.country is None
        assert v6.notes == (
            "GeoIP2-Country is IPv4-only; country unknown",
            "GeoIP2-Anonymous-IP is IPv4-only; no anonymizer data",
        )
    finally:
        geo.close()


def test_city_database_is_accepted(tmp_path: Path) -> None:
    """A City database carries country too."""
    path = write_country_db(tmp_path / "city.mmdb", COUNTRIES, database_type="GeoLite2-City")
    geo = MaxMindCountryResolver(path)
    try:
        assert geo.lookup("89.160.20.1").country == "SE"
        assert geo.lookup("89.160.20.1").database == "GeoLite2-City"
        assert geo.lookup("89.160.20.200").anonymizer == frozenset()  # no Anonymous IP database
    finally:
        geo.close()


# --- the cache -------------------------------------------------------------------------------------


def test_cache_returns_the_same_answer_object(resolver: MaxMindCountryResolver) -> None:
    """A repeat lookup is a dict hit: the very same object comes back."""
    first = resolver.lookup("81.2.69.1")
    assert resolver.lookup("81.2.69.1") is first
    # Answers are shared between addresses with the same answer, which keeps a full cache small.
    assert resolver.lookup("81.2.69.2") is first


def test_cache_is_bounded_and_stays_correct(country_db: Path) -> None:
    """A tiny cache is cleared over and over and keeps answering right."""
    geo = MaxMindCountryResolver(country_db, cache_size=3)
    try:
        for n in range(1, 60):
            assert geo.lookup(f"81.2.69.{n}").country == "GB"
            assert geo.lookup(f"2001:218::{n:x}").country == "JP"
    finally:
        geo.close()
    with pytest.raises(ValueError, match="cache_size"):
        MaxMindCountryResolver(country_db, cache_size=0)


# --- opening and validation ------------------------------------------------------------------------


def test_start_with_a_corrupt_file_names_it(tmp_path: Path) -> None:
    """A database that cannot be opened is a configuration error naming the file."""
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(b"not a database at all" * 10)
    with pytest.raises(ConfigError) as caught:
        MaxMindCountryResolver(bad)
    assert caught.value.problems[0].file == str(bad)
    assert "country database: cannot open" in str(caught.value)


def test_start_with_a_missing_file(tmp_path: Path) -> None:
    """A missing file is a configuration error too."""
    with pytest.raises(ConfigError, match="cannot open"):
        MaxMindCountryResolver(tmp_path / "absent.mmdb")


def test_wrong_database_type_for_role(country_db: Path, anonymous_db: Path) -> None:
    """An Anonymous IP file given as the country database (and the reverse) is refused."""
    with pytest.raises(ConfigError, match="is not a Country or City database"):
        MaxMindCountryResolver(anonymous_db)
    with pytest.raises(ConfigError, match="is not an Anonymous IP database"):
        MaxMindCountryResolver(country_db, country_db)


# --- reloading -------------------------------------------------------------------------------------


def test_refresh_is_rate_limited_and_swaps_on_rename(
    resolver: MaxMindCountryResolver, country_db: Path, clock: Clock
) -> None:
    """Checks run at most once per interval; a renamed-in file is validated and swapped in."""
    assert resolver.lookup("81.2.69.1").country == "GB"
    write_country_db(country_db, {"81.2.69.0/24": "SE"}, build_epoch=BUILD_EPOCH + 86400)
    assert resolver.refresh_if_changed() == ()  # not due: no stat at all
    assert resolver.lookup("81.2.69.1").country == "GB"
    clock.now += 1.0
    results = resolver.refresh_if_changed()
    assert [(r.role, r.outcome) for r in results] == [
        ("country", ReloadOutcome.RELOADED),
        ("anonymous_ip", ReloadOutcome.UNCHANGED),
    ]
    assert results[0].database_build == "2025-03-05T05:06:07Z"
    after = resolver.lookup("81.2.69.1")
    assert (after.country, after.database_build) == ("SE", "2025-03-05T05:06:07Z")
    assert after.anonymizer == frozenset()  # the anonymous database is unchanged
    assert resolver.lookup("2001:218::1").country is None  # the new file has no IPv6 network
    clock.now += 1.0
    assert [r.outcome for r in resolver.refresh_if_changed()] == [ReloadOutcome.UNCHANGED] * 2


def test_old_reader_closed_after_grace(
    resolver: MaxMindCountryResolver, country_db: Path, clock: Clock
) -> None:
    """The replaced reader stays open for lookups in flight, then is closed."""
    old = resolver._gen.country.reader  # the reader a lookup in flight would hold
    write_country_db(country_db, {"81.2.69.0/24": "SE"})
    assert resolver.reload()[0].outcome is ReloadOutcome.RELOADED
    assert old.get("81.2.69.1") is not None  # still readable right after the swap
    clock.now += RETIRE_GRACE / 2
    resolver.reload()  # too early: kept
    assert not is_closed(old)
    clock.now += RETIRE_GRACE
    resolver.refresh_if_changed()
    assert is_closed(old)
    with pytest.raises(ValueError, match="closed"):
        old.get("81.2.69.1")


def test_anonymous_database_reload_invalidates_cache(
    resolver: MaxMindCountryResolver, anonymous_db: Path, clock: Clock
) -> None:
    """A swap of either database empties the answer cache."""
    assert resolver.lookup("81.2.69.200").anonymizer == {AnonymizerFlag.VPN}
    write_anonymous_db(anonymous_db, {"81.2.69.128/25": ("is_tor_exit_node",)})
    clock.now += 5
    outcomes = [r.outcome for r in resolver.refresh_if_changed()]
    assert outcomes == [ReloadOutcome.UNCHANGED, ReloadOutcome.RELOADED]
    assert resolver.lookup("81.2.69.200").anonymizer == {AnonymizerFlag.TOR}


def assert_picks_up(
    resolver: MaxMindCountryResolver, country_db: Path, clock: Clock, code: str
) -> None:
    """A good file written over the database is reloaded at the next due check."""
    write_country_db(country_db, {"81.2.69.0/24": code})
    clock.now += 1
    assert resolver.refresh_if_changed()[0].outcome is ReloadOutcome.RELOADED
    assert resolver.lookup("81.2.69.1").country == code


def test_corrupt_replacement_is_refused_and_logged_once(
    resolver: MaxMindCountryResolver,
    country_db: Path,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A corrupt file renamed over the database is refused, the old one kept, a warning logged."""
    caplog.set_level(logging.WARNING, logger="aidr_gate.geo")
    before = resolver.lookup("81.2.69.1")
    bad = country_db.with_name("new.mmdb")
    bad.write_bytes(country_db.read_bytes()[:200])  # truncated: not a database
    bad.replace(country_db)
    clock.now += 1
    result = resolver.refresh_if_changed()[0]
    assert result.outcome is ReloadOutcome.REFUSED
    assert "keeping GeoIP2-Country built 2025-03-04T05:06:07Z" in result.detail
    assert result.database_build == BUILD
    assert resolver.lookup("81.2.69.1") is before  # same generation, same cache
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "refused" in warnings[0].getMessage()
    clock.now += 1
    assert resolver.refresh_if_changed()[0].outcome is ReloadOutcome.REFUSED
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1  # not re-logged
    assert_picks_up(resolver, country_db, clock, "JP")  # a good file afterwards is taken


def test_wrong_type_replacement_is_refused(
    resolver: MaxMindCountryResolver, country_db: Path, anonymous_db: Path
) -> None:
    """An Anonymous IP file renamed over the country database is refused."""
    shutil.copy(anonymous_db, country_db.with_name("x.mmdb"))
    country_db.with_name("x.mmdb").replace(country_db)
    result = resolver.reload()[0]
    assert result.outcome is ReloadOutcome.REFUSED
    assert "is not a Country or City database" in result.detail
    assert resolver.lookup("81.2.69.1").country == "GB"


def test_deleted_file_keeps_the_loaded_database(
    resolver: MaxMindCountryResolver,
    country_db: Path,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A deleted file leaves the loaded database in use, logged once; its return is picked up."""
    caplog.set_level(logging.WARNING, logger="aidr_gate.geo")
    country_db.unlink()
    clock.now += 1
    result = resolver.refresh_if_changed()[0]
    assert result.outcome is ReloadOutcome.MISSING
    assert "keeping GeoIP2-Country" in result.detail
    assert resolver.lookup("81.2.69.1").country == "GB"
    clock.now += 1
    assert resolver.reload()[0].outcome is ReloadOutcome.MISSING
    assert len(caplog.records) == 1
    assert_picks_up(resolver, country_db, clock, "SE")


def test_lookups_during_reloads_from_threads(
    country_db: Path, anonymous_db: Path, tmp_path: Path
) -> None:
    """Lookups on several threads while the database is swapped repeatedly: no error, no mix."""
    geo = MaxMindCountryResolver(country_db, anonymous_db)
    versions = [
        write_country_db(tmp_path / f"v{n}.mmdb", {"81.2.69.0/24": code})
        for n, code in enumerate(["SE", "GB"])
    ]
    seen: set[str | None] = set()
    failures: list[GeoResult] = []
    stop = threading.Event()

    def look() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            result = geo.lookup(f"81.2.69.{n % 250 + 1}")
            seen.add(result.country)
            if result.country is None:
                failures.append(result)

    threads = [threading.Thread(target=look) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for n in range(30):
            shutil.copy(versions[n % 2], country_db.with_name("next.mmdb"))
            country_db.with_name("next.mmdb").replace(country_db)
            assert geo.reload()[0].outcome is ReloadOutcome.RELOADED
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        geo.close()
    assert not failures
    assert seen <= {"SE", "GB"}


def test_closed_resolver_answers_unknown(country_db: Path) -> None:
    """After close, lookups fail closed (unknown, with a note) instead of raising."""
    geo = MaxMindCountryResolver(country_db)
    geo.close()
    result = geo.lookup("81.2.69.1")
    assert result.country is None
    assert "lookup failed" in result.notes[0]
    assert geo.reload() == ()  # a closed resolver stays closed
    unhashable: Any = ["81.2.69.1"]
    assert "lookup failed" in geo.lookup(unhashable).notes[0]
    assert "lookup failed" in IptoccCountryResolver().lookup(unhashable).notes[0]


def test_watch_picks_up_a_new_file(country_db: Path) -> None:
    """The background task stats the file off the event loop and swaps in a new one."""
    geo = MaxMindCountryResolver(country_db, reload_check_interval=0.02)

    async def scenario() -> str | None:
        task = asyncio.create_task(watch(geo, 0.02))
        try:
            write_country_db(country_db, {"81.2.69.0/24": "SE"})
            for _ in range(250):  # at most 5 s
                if geo.lookup("81.2.69.1").country == "SE":
                    break
                await asyncio.sleep(0.02)
            return geo.lookup("81.2.69.1").country
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    try:
        assert geo.lookup("81.2.69.1").country == "GB"
        assert asyncio.run(scenario()) == "SE"
    finally:
        geo.close()


def test_watch_with_no_interval_returns() -> None:
    """An interval of 0 disables watching, and embedded data has nothing to watch."""
    asyncio.run(asyncio.wait_for(watch(IptoccCountryResolver(), 0), timeout=5))
    asyncio.run(asyncio.wait_for(watch(IptoccCountryResolver(), 1.0), timeout=5))


# --- MaxMind's own test databases ------------------------------------------------------------------


@needs_maxmind
@pytest.mark.parametrize(
    "name", ["GeoIP2-Country-Test.mmdb", "GeoLite2-Country-Test.mmdb", "GeoIP2-City-Test.mmdb"]
)
def test_maxmind_country_files_agree_with_geoip2(name: str) -> None:
    """Every network in MaxMind's test files resolves as geoip2 itself reads it."""
    path = MAXMIND / name
    geo = MaxMindCountryResolver(path)
    reference = geoip2.database.Reader(str(path))
    raw = maxminddb.open_database(str(path))
    checked = 0
    try:
        model = reference.city if "City" in name else reference.country
        for network, _record in raw:
            address = str(network.network_address)
            result = geo.lookup(address)
            if result.source is CountrySource.NONE:
                assert result.country is None  # reserved ranges MaxMind test data also covers
                continue
            expected = model(address)
            if expected.country.iso_code is not None:
                assert (result.country, result.source) == (
                    expected.country.iso_code,
                    CountrySource.GEOIP,
                )
            elif expected.registered_country.iso_code is not None:
                assert (result.country, result.source) == (
                    expected.registered_country.iso_code,
                    CountrySource.REGISTRATION,
                )
            else:
                assert result.country is None
            assert result.database == raw.metadata().database_type
            checked += 1
    finally:
        geo.close()
        reference.close()
        raw.close()
    assert checked > 20


@needs_maxmind
def test_maxmind_anonymous_file_agrees_with_geoip2() -> None:
    """Anonymizer flags from MaxMind's Anonymous IP test file match geoip2's model."""
    path = MAXMIND / "GeoIP2-Anonymous-IP-Test.mmdb"
    geo = MaxMindCountryResolver(MAXMIND / "GeoIP2-Country-Test.mmdb", path)
    reference = geoip2.database.Reader(str(path))
    raw = maxminddb.open_database(str(path))
    flagged = 0
    try:
        for network, _record in raw:
            address = str(network.network_address)
            result = geo.lookup(address)
            if result.source is CountrySource.NONE:
                continue
            model = reference.anonymous_ip(address)
            expected = {
                flag
                for flag, on in [
                    (AnonymizerFlag.VPN, model.is_anonymous_vpn),
                    (AnonymizerFlag.TOR, model.is_tor_exit_node),
                    (AnonymizerFlag.PUBLIC_PROXY, model.is_public_proxy),
                    (AnonymizerFlag.HOSTING, model.is_hosting_provider),
                    (AnonymizerFlag.RESIDENTIAL_PROXY, model.is_residential_proxy),
                ]
                if on
            }
            assert result.anonymizer == expected, address
            flagged += bool(expected)
            assert result.anonymizer_database == "GeoIP2-Anonymous-IP"
    finally:
        geo.close()
        reference.close()
        raw.close()
    assert flagged > 3


@needs_maxmind
@pytest.mark.parametrize(
    "broken",
    ["GeoIP2-City-Test-Broken-Double-Format.mmdb", "GeoIP2-City-Test-Invalid-Node-Count.mmdb"],
)
def test_maxmind_broken_files_offered_as_reload(
    tmp_path: Path, broken: str, caplog: pytest.LogCaptureFixture
) -> None:
    """MaxMind's deliberately corrupt files are refused on reload; the good database stays."""
    caplog.set_level(logging.WARNING, logger="aidr_gate.geo")
    live = tmp_path / "GeoIP2-City.mmdb"
    shutil.copy(MAXMIND / "GeoIP2-City-Test.mmdb", live)
    geo = MaxMindCountryResolver(live)
    try:
        before = geo.lookup("81.2.69.160")
        assert before.country == "GB"
        shutil.copy(MAXMIND / broken, tmp_path / "incoming.mmdb")
        (tmp_path / "incoming.mmdb").replace(live)
        result = geo.reload()[0]
        assert result.outcome is ReloadOutcome.REFUSED
        assert geo.lookup("81.2.69.160") is before
        assert geo.country_info.database_type == "GeoIP2-City"
        assert any("refused" in r.getMessage() for r in caplog.records)
    finally:
        geo.close()
    with pytest.raises(ConfigError):
        MaxMindCountryResolver(MAXMIND / broken)


# --- the embedded default: iptocc ------------------------------------------------------------------


@pytest.mark.parametrize("ip", ["8.8.8.8", "81.2.69.160", "2001:4860:4860::8888", "1.0.16.1"])
def test_iptocc_is_registration_country(ip: str) -> None:
    """iptocc answers what its data says, labelled registration, with its version as the build."""
    geo = IptoccCountryResolver()
    result = geo.lookup(ip)
    assert result.country == iptocc.country_code(ip)
    assert result.country is not None
    assert result.source is CountrySource.REGISTRATION
    assert (result.database, result.database_build) == ("iptocc", version("iptocc"))
    assert result.anonymizer == frozenset()
    assert result.anonymizer_database is None
    assert geo.lookup(f"::ffff:{ip}" if "." in ip else ip) == result


def test_iptocc_special_and_garbage() -> None:
    """Private and garbage addresses are unknown with a note, as with MaxMind."""
    geo = IptoccCountryResolver(cache_size=2)
    assert "private" in geo.lookup("10.0.0.1").notes[0]
    assert "not an IP address" in geo.lookup("nope").notes[0]
    unassigned = geo.lookup("2c0f:ffff:ffff::1")
    if unassigned.country is None:  # depends on the RIR data shipped; only its labelling is fixed
        assert unassigned.notes == ("not in the RIR delegation data; country unknown",)
    assert geo.lookup("8.8.8.8") is geo.lookup("8.8.8.8")
    assert geo.reload()[0].outcome is ReloadOutcome.UNCHANGED
    assert geo.refresh_if_changed() == ()
    geo.close()


def test_both_implement_the_protocol(country_db: Path) -> None:
    """Both resolvers satisfy CountryResolver (checked by mypy through this assignment)."""
    resolvers: list[CountryResolver] = [IptoccCountryResolver(), MaxMindCountryResolver(country_db)]
    for geo in resolvers:
        assert geo.lookup("10.0.0.1").country is None
        geo.close()


# --- the fast path for global addresses ------------------------------------------------------------


def _ipaddress_says(address: IPv4Address | IPv6Address) -> bool:
    """What ipaddress alone says: a global unicast address."""
    return address.is_global and not address.is_multicast


def test_fast_path_agrees_with_ipaddress_on_samples() -> None:
    """special_address skips ipaddress's scans only where ipaddress would say global anyway."""
    rng = random.Random(3)
    samples: list[IPv4Address | IPv6Address] = []
    for octet in range(256):
        base = octet << 24
        samples += [IPv4Address(base + rng.randrange(1 << 24)) for _ in range(40)]
        samples += [IPv4Address(base), IPv4Address(base + (1 << 24) - 1)]
    for top in range(0x10000):
        if top % 64 == 0 or top in (0x2001, 0x2002, 0x3FFF) or 0x1FF0 <= top <= 0x2010:
            base = top << 112
            samples += [IPv6Address(base + rng.randrange(1 << 112)) for _ in range(8)]
            samples += [IPv6Address(base), IPv6Address(base + (1 << 112) - 1)]
    for address in samples:
        assert (special_address(address) is None) == _ipaddress_says(address), address


def test_fast_path_covers_every_ipaddress_special_range() -> None:
    """Every network ipaddress treats as non-global lies where the fast path still asks it."""
    v4 = getattr(IPv4Address, "_constants", None)
    v6 = getattr(IPv6Address, "_constants", None)
    if v4 is None or v6 is None:  # pragma: no cover - a Python without these internals
        pytest.skip("this Python's ipaddress has no _constants tables")
    v4_networks = [*v4._private_networks, v4._public_network, v4._multicast_network]
    v6_networks = [*v6._private_networks, v6._multicast_network, *v6._reserved_networks]
    for network in v4_networks:
        first = int(network.network_address) >> 24
        last = int(network.broadcast_address) >> 24
        assert set(range(first, last + 1)) <= _V4_SPECIAL_FIRST_OCTETS, network
    for network in v6_networks:
        first = int(network.network_address) >> 112
        last = int(network.broadcast_address) >> 112
        inside_global = {t for t in range(first, last + 1) if 0x2000 <= t <= 0x3FFF}
        assert inside_global <= _V6_SPECIAL_IN_GLOBAL, network
