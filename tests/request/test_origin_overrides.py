"""The static override table (``geoip.overrides``): checked before the database, most specific first."""

from __future__ import annotations

from ipaddress import ip_network
from pathlib import Path

import pytest

from aidr_gate.errors import ConfigError
from aidr_gate.facts import AnonymizerFlag, CountrySource
from aidr_gate.request.geo import (
    IptoccCountryResolver,
    MaxMindCountryResolver,
    OverrideCountryResolver,
    OverrideEntry,
)
from aidr_gate.request.origin import describe_geo, origin_resolver_for
from aidr_gate.settings.loader import GateConfig, config_from_text
from aidr_gate.settings.origin import GEOIP
from support.environment import ROOT
from support.mmdb_files import ANONYMOUS, COUNTRIES, write_anonymous_db, write_country_db

EXAMPLES = ROOT / "policies" / "examples"
BASE = (
    f"policy: aidr-2025-01\nregistry: {EXAMPLES}/entities.yaml\ncatalog: {EXAMPLES}/models.yaml\n"
)
VPN = frozenset({AnonymizerFlag.VPN})
TOR_HOSTING = frozenset({AnonymizerFlag.TOR, AnonymizerFlag.HOSTING})


def gate_config(tmp_path: Path, sections: str) -> GateConfig:
    """A configuration file in *tmp_path* with the given sections."""
    path = tmp_path / "config.yaml"
    path.write_text(BASE + sections)
    return config_from_text(BASE + sections, str(path))


@pytest.fixture
def maxmind(tmp_path: Path) -> MaxMindCountryResolver:
    """Country and Anonymous IP databases written at test time."""
    return MaxMindCountryResolver(
        write_country_db(tmp_path / "country.mmdb", COUNTRIES),
        write_anonymous_db(tmp_path / "anonymous.mmdb", ANONYMOUS),
    )


def entry(
    network: str,
    country: str | None = None,
    flags: frozenset[AnonymizerFlag] | None = None,
    note: str | None = None,
) -> OverrideEntry:
    """One row of the table."""
    return OverrideEntry(ip_network(network), country, flags, note)


@pytest.mark.parametrize(
    ("ip", "country", "source", "flags", "database"),
    [
        # Whole override: country and flags from the table.
        ("203.0.113.7", "SE", CountrySource.DECLARED, VPN, "static-overrides"),
        # The more specific network wins over the /16 around it.
        ("198.51.100.9", "NO", CountrySource.DECLARED, frozenset(), "static-overrides"),
        ("198.51.7.7", "DK", CountrySource.DECLARED, frozenset(), "static-overrides"),
        # Flags only: the database's country stays, its flags are replaced.
        ("81.2.69.200", "GB", CountrySource.GEOIP, frozenset(), "GeoIP2-Country"),
        # Country only: the database's flags stay.
        (
            "89.160.20.200",
            "FI",
            CountrySource.DECLARED,
            TOR_HOSTING,
            "static-overrides",
        ),
        # A private range can be given a country (internal callers).
        ("10.20.30.40", "US", CountrySource.DECLARED, frozenset(), "static-overrides"),
        # IPv6, and the IPv4-mapped form of an overridden IPv4 address.
        ("2001:db8::1", "DE", CountrySource.DECLARED, VPN, "static-overrides"),
        ("::ffff:203.0.113.7", "SE", CountrySource.DECLARED, VPN, "static-overrides"),
        # Outside the table: the database answers alone.
        ("216.160.83.1", "US", CountrySource.GEOIP, frozenset(), "GeoIP2-Country"),
    ],
    ids=[
        "whole",
        "specific",
        "wide",
        "flags-only",
        "country-only",
        "private",
        "v6",
        "mapped",
        "outside",
    ],
)
def test_lookup(
    maxmind: MaxMindCountryResolver,
    ip: str,
    country: str,
    source: CountrySource,
    flags: frozenset[AnonymizerFlag],
    database: str,
) -> None:
    table = OverrideCountryResolver(
        [
            entry("203.0.113.0/24", "SE", VPN, "our VPN exit"),
            entry("198.51.0.0/16", "DK", frozenset()),
            entry("198.51.100.0/24", "NO", frozenset()),
            entry("81.2.69.128/25", flags=frozenset()),
            entry("89.160.20.0/24", "FI"),
            entry("10.0.0.0/8", "US"),
            entry("2001:db8::/32", "DE", VPN),
        ],
        maxmind,
    )
    result = table.lookup(ip)
    assert (result.country, result.source, result.anonymizer, result.database) == (
        country,
        source,
        flags,
        database,
    )
    if database == "static-overrides" or ip == "81.2.69.200":
        assert result.notes[-1].startswith("static override ")
    assert table.lookup(ip) is result  # answers are shared, so origins can be cached


def test_a_database_reload_rebuilds_overridden_answers(tmp_path: Path) -> None:
    maxmind = MaxMindCountryResolver(write_country_db(tmp_path / "c.mmdb", COUNTRIES))
    table = OverrideCountryResolver([entry("81.2.69.0/24", flags=VPN)], maxmind)
    before = table.lookup("81.2.69.1")
    assert (before.country, before.anonymizer) == ("GB", VPN)
    write_country_db(tmp_path / "c.mmdb", {**COUNTRIES, "81.2.69.0/24": "IE"}, build_epoch=2)
    maxmind.reload()
    after = table.lookup("81.2.69.1")
    assert (after.country, after.anonymizer) == ("IE", VPN)


def test_lookups_never_raise(maxmind: MaxMindCountryResolver) -> None:
    table = OverrideCountryResolver([entry("10.0.0.0/8", "US")], maxmind)
    for bad in ("not an ip", "", "999.1.1.1", ["unhashable"]):
        result = table.lookup(bad)  # type: ignore[arg-type]
        assert result.country is None


def test_duplicate_networks_are_refused() -> None:
    with pytest.raises(ValueError, match="more than once"):
        OverrideCountryResolver(
            [entry("10.0.0.0/8", "US"), entry("10.0.0.0/8", "SE")], IptoccCountryResolver()
        )


def test_configuration_builds_the_table(tmp_path: Path) -> None:
    config = gate_config(
        tmp_path,
        "geoip:\n"
        "  overrides:\n"
        "    - {network: 203.0.113.0/24, country: SE, anonymizer: [vpn], note: our exit}\n"
        "    - {network: '2001:db8::/32', anonymizer: []}\n",
    )
    assert config.get(GEOIP).overrides == (
        entry("203.0.113.0/24", "SE", VPN, "our exit"),
        entry("2001:db8::/32", flags=frozenset()),
    )
    origins = origin_resolver_for(config)
    origin = origins.resolve("127.0.0.1", [(b"x-forwarded-for", b"203.0.113.50")])
    assert (origin.country, origin.anonymizer, origin.country_source) == (
        "SE",
        VPN,
        CountrySource.DECLARED,
    )
    assert "static override 203.0.113.0/24 (our exit)" in origin.notes
    assert origins.describe().endswith("; 2 static overrides")
    assert origins.describe().startswith("GeoIP embedded iptocc")


def test_configuration_errors_are_all_listed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        gate_config(
            tmp_path,
            "geoip:\n"
            "  overrides:\n"
            "    - {network: 203.0.113.0/33, country: SE}\n"
            "    - {network: 198.51.100.0/24, country: se}\n"
            "    - {network: 198.51.100.0/24, anonymizer: [vpn, cloud]}\n"
            "    - {network: 192.0.2.0/24}\n"
            "    - {network: 192.0.2.0/24, country: US}\n"
            "    - {country: US}\n"
            "    - {network: 100.64.0.0/10, country: US, colour: red}\n"
            "    - {network: 100.65.0.0/16, anonymizer: null}\n",
        )
    text = str(info.value)
    for expected in (
        "geoip.overrides[0].network: '203.0.113.0/33' is not a CIDR network",
        "geoip.overrides[1].country: 'se' is not an ISO 3166-1 alpha-2 country code (use upper",
        "geoip.overrides[2].anonymizer[1]: 'cloud' is not one of",
        "geoip.overrides[3]: give a country, a region, an anonymizer list, or several",
        "geoip.overrides[4].network: 192.0.2.0/24 is already listed at geoip.overrides[3]",
        "geoip.overrides[5].network: is required",
        "geoip.overrides[6].colour: unknown key",
        "geoip.overrides[7].anonymizer: must be a list",
    ):
        assert expected in text, expected
    assert str(tmp_path / "config.yaml") in text


def test_describe_names_database_and_date(maxmind: MaxMindCountryResolver) -> None:
    text = describe_geo(maxmind)
    assert text.startswith("GeoIP GeoIP2-Country built 2025-03-04 (")
    assert text.endswith("+ GeoIP2-Anonymous-IP built 2025-03-04")
    table = OverrideCountryResolver([entry("10.0.0.0/8", "US")], maxmind)
    assert describe_geo(table) == text + "; 1 static override"


def test_an_ipv4_mapped_network_matches_its_ipv4_addresses(tmp_path: Path) -> None:
    """Lookups normalise ::ffff:a.b.c.d to IPv4, so a network written mapped must be read as IPv4."""
    config = gate_config(
        tmp_path,
        "geoip:\n  overrides:\n    - {network: '::ffff:203.0.113.0/120', country: SE}\n",
    )
    assert config.get(GEOIP).overrides == (entry("203.0.113.0/24", "SE"),)
    origins = origin_resolver_for(config)
    for ip in ("203.0.113.9", "::ffff:203.0.113.9"):
        origin = origins.resolve_ip(ip)
        assert (origin.country, origin.country_source) == ("SE", CountrySource.DECLARED), ip
    # Built by hand, not from configuration: the same reading.
    table = OverrideCountryResolver(
        [entry("::ffff:198.51.100.0/120", "NO")], IptoccCountryResolver()
    )
    assert table.entries == (entry("198.51.100.0/24", "NO"),)
    assert table.lookup("198.51.100.1").country == "NO"


def test_a_network_written_both_ways_is_a_duplicate(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"overrides\[1\].network: 203.0.113.0/24 is already listed"
    ):
        gate_config(
            tmp_path,
            "geoip:\n"
            "  overrides:\n"
            "    - {network: 203.0.113.0/24, country: SE}\n"
            "    - {network: '::ffff:203.0.113.0/120', country: NO}\n",
        )
    with pytest.raises(ValueError, match="more than once"):
        OverrideCountryResolver(
            [entry("10.0.0.0/8", "US"), entry("::ffff:10.0.0.0/104", "SE")],
            IptoccCountryResolver(),
        )
