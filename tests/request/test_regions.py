"""Sub-national regions: GeoIP City subdivisions, region overrides, ``region_uncertain``, and the
US baseline's OFAC covered regions of Ukraine deciding a Crimea and a Kyiv address apart."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import ip_network
from pathlib import Path

import pytest

from aidr_gate.catalog import load_catalog
from aidr_gate.decision import Decision
from aidr_gate.document import parse_instant
from aidr_gate.errors import ConfigError
from aidr_gate.facts import Identity, Origin, RegionSource
from aidr_gate.gate import Gate, state_for
from aidr_gate.policy.pack import load_pack
from aidr_gate.registry import Entity
from aidr_gate.request.geo import MaxMindCountryResolver, OverrideCountryResolver, OverrideEntry
from aidr_gate.request.origin import OriginResolver, origin_resolver_for
from support.environment import EXAMPLES, IN_CI, SHARED_TESTDATA
from support.mmdb_files import write_city_db, write_country_db

CITY_TEST = SHARED_TESTDATA / "maxmind" / "GeoIP2-City-Test.mmdb"
# In MaxMind's City test database: a London address (subdivision ENG) and a Ukrainian block
# whose records name no subdivision at all.
LONDON = "81.2.69.142"
UA_NO_REGION = "2a02:d300::1"
# A City database written at test time (MaxMind's has no Ukrainian subdivisions); public
# addresses, since documentation ranges are special-purpose (no country at all).
CRIMEA, KYIV, DONETSK, UA_BARE = "37.0.0.10", "37.0.1.10", "37.0.2.10", "37.0.3.9"
CITY_NETWORKS = {
    "37.0.0.0/24": ("UA", "43"),  # Autonomous Republic of Crimea (Simferopol)
    "37.0.1.0/24": ("UA", "30"),  # Kyiv city
    "37.0.2.0/24": ("UA", "14"),  # Donetsk oblast
    "37.0.3.0/24": ("UA", None),  # Ukraine, no subdivision in the record
    "37.0.4.0/24": ("DE", "BE"),
}
TODAY = parse_instant("2026-12-02") or 0.0
MODELS = list(load_catalog(EXAMPLES / "models.yaml"))
ACME = Entity(id="acme-de", headquarters="DE", name="Acme Analytics GmbH")


def require_city_test() -> Path:
    if not CITY_TEST.is_file():
        if IN_CI:
            pytest.fail(f"MaxMind's City test database is absent: {CITY_TEST}")
        pytest.skip("MaxMind test databases absent (../shared/testdata/maxmind)")
    return CITY_TEST


@pytest.fixture
def built_city(tmp_path: Path) -> Iterator[OriginResolver]:
    geo = MaxMindCountryResolver(write_city_db(tmp_path / "city.mmdb", CITY_NETWORKS))
    yield OriginResolver(geo=geo)
    geo.close()


@pytest.fixture
def real_city() -> Iterator[OriginResolver]:
    geo = MaxMindCountryResolver(require_city_test())
    yield OriginResolver(geo=geo)
    geo.close()


def decide(pack: str, origin: Origin, model: str = "aurora-mini") -> Decision:
    gate = Gate(state_for(load_pack(pack), entities=[ACME], models=MODELS))
    identity = Identity(entity_id=ACME.id, method="declared")
    return gate.decide(identity=identity, origin=origin, model_id=model, at=TODAY)


def outcome(decision: Decision) -> tuple[str, int | None, str]:
    return decision.effect.value, decision.status, decision.reasons[0]


def test_the_real_city_database_gives_subdivisions(real_city: OriginResolver) -> None:
    london = real_city.resolve_ip(LONDON)
    assert (london.country, london.region, london.region_source) == (
        "GB",
        "GB-ENG",
        RegionSource.GEOIP,
    )
    ukraine = real_city.resolve_ip(UA_NO_REGION)
    assert ukraine.country == "UA" and ukraine.region is None
    assert ukraine.region_source is RegionSource.NOT_IN_RECORD
    assert ukraine.to_dict()["region_source"] == "not-in-record"


def test_crimea_and_kyiv_are_decided_apart_under_the_us_baseline(
    built_city: OriginResolver,
) -> None:
    crimea, kyiv = built_city.resolve_ip(CRIMEA), built_city.resolve_ip(KYIV)
    assert (crimea.region, kyiv.region) == ("UA-43", "UA-30")
    denied = decide("us-embargo-baseline", crimea)
    assert outcome(denied) == ("deny", 451, "EMBARGOED_REGION")
    assert denied.rule == "us-embargo-baseline/embargoed-region"
    assert denied.evidence.to_dict()["jurisdiction"]["region_groups"] == ["ofac-ua-covered"]
    assert outcome(decide("us-embargo-baseline", kyiv)) == ("allow", None, "ALLOWED")
    # Every pack that extends the baseline inherits the rule, whatever the model.
    assert outcome(decide("aidr-2025-05-rescinded", crimea, "llama-3.1-405b"))[2] == (
        "EMBARGOED_REGION"
    )


@pytest.mark.parametrize("where", ["donetsk", "bare", "real"])
def test_an_uncertain_region_in_ukraine_is_handled_as_the_pack_says(
    where: str, built_city: OriginResolver
) -> None:
    if where == "real":
        geo = MaxMindCountryResolver(require_city_test())
        origin = OriginResolver(geo=geo).resolve_ip(UA_NO_REGION)
        geo.close()
    else:
        origin = built_city.resolve_ip(DONETSK if where == "donetsk" else UA_BARE)
    # The baseline logs it; a pack with a controlled tier denies controlled models on it.
    logged = decide("us-embargo-baseline", origin)
    assert outcome(logged) == ("log", None, "REGION_UNCERTAIN")
    assert logged.evidence.to_dict()["jurisdiction"]["region_uncertain"] == ["ofac-ua-covered"]
    assert outcome(decide("aidr-2025-05-rescinded", origin, "aurora-frontier")) == (
        "deny",
        451,
        "REGION_UNCERTAIN",
    )
    assert outcome(decide("aidr-2025-05-rescinded", origin, "aurora-mini"))[0] == "log"


def test_without_a_city_database_a_ukrainian_region_is_uncertain(tmp_path: Path) -> None:
    geo = MaxMindCountryResolver(write_country_db(tmp_path / "country.mmdb", {"37.0.3.0/24": "UA"}))
    origin = OriginResolver(geo=geo).resolve_ip(UA_BARE)
    geo.close()
    assert origin.region is None and origin.region_source is RegionSource.NO_CITY_DATABASE
    assert outcome(decide("us-embargo-baseline", origin)) == ("log", None, "REGION_UNCERTAIN")
    # Elsewhere no region is needed: a German address without one is just allowed.
    assert outcome(decide("us-embargo-baseline", Origin(ip=None, country="DE")))[0] == "allow"


def test_an_override_maps_a_network_to_a_region(real_city: OriginResolver) -> None:
    entry = OverrideEntry(ip_network("2a02:d300::/32"), "UA", None, "Crimean ISP", "UA-43")
    geo = OverrideCountryResolver([entry], MaxMindCountryResolver(require_city_test()))
    origin = OriginResolver(geo=geo).resolve_ip(UA_NO_REGION)
    geo.close()
    assert (origin.region, origin.region_source) == ("UA-43", RegionSource.DECLARED)
    assert outcome(decide("us-embargo-baseline", origin)) == ("deny", 451, "EMBARGOED_REGION")


def test_region_overrides_in_configuration(tmp_path: Path) -> None:
    from aidr_gate.settings.loader import config_from_text

    require_city_test()
    base = f"policy: us-embargo-baseline\nregistry: {EXAMPLES / 'entities.yaml'}\n"
    base += f"catalog: {EXAMPLES / 'models.yaml'}\ngeoip:\n  country_database: {CITY_TEST}\n"
    good = base + "  overrides:\n    - {network: '2a02:d300::/32', region: UA-43, note: ISP}\n"
    resolver = origin_resolver_for(config_from_text(good, str(tmp_path / "config.yaml")))
    origin = resolver.resolve_ip(UA_NO_REGION)
    resolver.close()
    assert (origin.country, origin.region) == ("UA", "UA-43")
    bad = base + (
        "  overrides:\n"
        "    - {network: '37.0.0.0/24', country: RU, region: UA-43}\n"
        "    - {network: '37.0.1.0/24', region: Crimea}\n"
    )
    with pytest.raises(ConfigError) as caught:
        origin_resolver_for(config_from_text(bad, str(tmp_path / "config.yaml")))
    text = str(caught.value)
    assert "geoip.overrides[0].region: UA-43 is not in RU" in text
    assert "geoip.overrides[1].region: must be an ISO 3166-2 region code" in text


def test_check_takes_a_region_by_hand(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from aidr_gate.cli import main

    base = [
        "check",
        "--pack",
        "us-embargo-baseline",
        "--entity",
        "lab-us",
        "--model",
        "aurora-mini",
    ]
    assert main([*base, "--region", "UA-43", "--compact"]) == 1  # a deny
    decision = json.loads(capsys.readouterr().out)
    assert decision["reasons"] == ["EMBARGOED_REGION"]
    origin = decision["evidence"]["origin"]
    assert (origin["country"], origin["region"], origin["region_source"]) == (
        "UA",
        "UA-43",
        "declared",
    )
    assert main([*base, "--country", "UA", "--region", "UA-30"]) == 0
    capsys.readouterr()
    assert main([*base, "--country", "RU", "--region", "UA-30"]) == 2
    assert "--region: UA-30 is not in RU" in capsys.readouterr().err
