"""Reviews and ownership through the registry: confirmed, cleared and unreviewed hits; the 50% test
(49 and 51, two listed owners at 30 and 25, chains through holding companies); cycles refused at
load; unknown ownership; the controlling owner chain."""

from __future__ import annotations

from pathlib import Path

import pytest

from aidr_gate.document import parse_document
from aidr_gate.registry import InMemoryRegistry, registry_from_document
from aidr_gate.screening.facts import ScreeningTable, screening_table
from aidr_gate.screening.ownership import controlling_chain, listed_ownership
from aidr_gate.screening.screen import HitState, ScreeningRun, screen_registry
from aidr_gate.screening.store import CSL, ListSnapshot, ListSource, load_snapshot

# A list in the current CSL layout: two listed companies and a listed person.
LIST = """\
_id,source,entity_number,type,programs,name,title,addresses,federal_register_notice,start_date,\
end_date,standard_order,license_requirement,license_policy,call_sign,vessel_type,gross_tonnage,\
gross_registered_tonnage,vessel_flag,vessel_owner,remarks,source_list_url,alt_names,citizenships,\
dates_of_birth,nationalities,places_of_birth,source_information_url,ids
"e1","Entity List (EL) - Bureau of Industry and Security","","","","Volga Photonics Holding JSC",\
"","Moscow, RU","90 FR 1","2025-09-29","","","","","","","","","","","","","ВолгаФотоника",\
"","","","","",""
"e2","Entity List (EL) - Bureau of Industry and Security","","","","Red Harbor Logistics Ltd",\
"","Hong Kong, HK","90 FR 2","2025-09-29","","","","","","","","","","","","","","","","","","",""
"101","Specially Designated Nationals (SDN) - Treasury Department","101","Individual","RUSSIA-EO14024",\
"PETROV, Ivan Sergeevich","","Moscow, RU","","","","","","","","","","","","","","","","RU",\
"1970","RU","","",""
"""


@pytest.fixture
def snapshot(tmp_path: Path) -> ListSnapshot:
    path = tmp_path / "csl.csv"
    path.write_text(LIST)
    return load_snapshot([ListSource(path, CSL, date="2026-11-30")])


def screened(text: str, snapshot: ListSnapshot) -> tuple[ScreeningRun, ScreeningTable]:
    registry, check = registry_from_document(parse_document(text, "entities.yaml"))
    assert check.errors == []
    run = screen_registry(registry, snapshot)
    return run, screening_table(registry, run)


CONFIRM = "{entry: 'el:e1', decision: confirmed, by: c.o, at: 2026-12-01, why: same registry no.}"


def test_reviews_decide_hits(snapshot: ListSnapshot) -> None:
    text = f"""\
entities:
  volga: {{name: Volga Photonics Holding, headquarters: RU, screening_reviews: [{CONFIRM}]}}
  harbor: {{name: Red Harbour Logistics Limited, headquarters: GB}}
  harbor-cleared:
    name: Red Harbor Logistics Ltd
    aliases: [RH Logistics, Red Harbor Logistics Limited]
    headquarters: GB
    screening_reviews:
      - {{entry: 'el:e2', name: Red Harbor Logistics Ltd, decision: false-positive, by: c.o,
          at: 2026-12-01, why: a UK company of the same name}}
"""
    run, table = screened(text, snapshot)
    volga = table.get("volga")
    assert volga.listed and volga.treated_as_listed and volga.entries == ("el:e1",)
    assert (
        not volga.potential_hit
        and volga.list_version == "2026-11-30/" + (snapshot.version.digest[:19])
    )
    # Unreviewed: a potential hit, never silently clear.
    harbor = table.get("harbor")
    assert harbor.potential_hit and not harbor.listed and harbor.potential_entries == ("el:e2",)
    # Cleared for that entry and that name only: the alias spelled alike is still a hit.
    cleared = run.results["harbor-cleared"]
    states = {(h.name_field, h.state) for h in cleared.hits}
    assert ("name", HitState.CLEARED) in states and ("aliases[1]", HitState.POTENTIAL) in states
    assert table.get("harbor-cleared").potential_hit
    # An entity the table never saw is not screened: the pack decides, it is not an allow.
    assert not table.get("newcomer").screened


def test_a_confirmation_holds_without_a_hit_and_a_delisted_entry_is_stale(
    snapshot: ListSnapshot,
) -> None:
    text = """\
entities:
  renamed:
    name: Totally Different Name
    headquarters: RU
    screening_reviews:
      - {entry: 'el:e1', decision: confirmed, by: c.o, at: 2026-12-01, why: renamed itself}
      - {entry: 'el:gone', decision: confirmed, by: c.o, at: 2026-12-01, why: delisted since}
"""
    run, table = screened(text, snapshot)
    assert table.get("renamed").listed and table.get("renamed").entries == ("el:e1",)
    assert [r.entry for r in run.results["renamed"].stale_reviews] == ["el:gone"]


def owners_registry(shares: str, extra: str = "") -> str:
    return f"""\
entities:
  listed-co: {{name: Volga Photonics Holding, headquarters: RU, screening_reviews: [{CONFIRM}]}}
  target: {{name: Target Systems, headquarters: DE, owners: {shares}}}
{extra}"""


@pytest.mark.parametrize(
    ("shares", "owned", "share"),
    [
        ("[{entity: listed-co, share: 49}]", False, 49.0),
        ("[{entity: listed-co, share: 51}]", True, 51.0),
        ("[{entity: listed-co, share: 50}]", True, 50.0),
        # Two listed owners at 30% and 25%: 55% in aggregate.
        (
            "[{entity: listed-co, share: 30}, {name: Ivan Sergeevich Petrov, country: RU,"
            " share: 25}]",
            None,
            None,
        ),
    ],
)
def test_the_fifty_percent_test(
    snapshot: ListSnapshot, shares: str, owned: bool | None, share: float | None
) -> None:
    _, table = screened(owners_registry(shares), snapshot)
    facts = table.get("target")
    if owned is None:
        # The named owner is only a potential hit until reviewed: 30% now, 55% if confirmed.
        assert facts.listed_share == 30.0 and not facts.owned_by_listed
        assert facts.potential_owned_by_listed and facts.potential_entries == ("sdn:101",)
        reviewed = owners_registry(shares).replace(
            "owners:",
            "screening_reviews: [{entry: 'sdn:101', name: Ivan Sergeevich Petrov, decision:"
            " confirmed, by: c.o, at: 2026-12-01, why: passport}], owners:",
        )
        _, table = screened(reviewed, snapshot)
        facts = table.get("target")
        assert facts.owned_by_listed and facts.listed_share == 55.0
        assert set(facts.entries) == {"el:e1", "sdn:101"} and not facts.listed
        return
    assert facts.owned_by_listed is owned and facts.listed_share == share
    assert facts.treated_as_listed is owned and not facts.listed
    if owned:
        assert facts.ownership_path == ("target", f"listed-co ({share:g}%, listed: el:e1)")


def test_chains_through_holding_companies(snapshot: ListSnapshot) -> None:
    text = owners_registry(
        "[{entity: holdco-a, share: 100}]",
        """\
  holdco-a: {name: Alpha Holdings, headquarters: CY, owners: [{entity: listed-co, share: 60}]}
  target-b: {name: Beta Systems, headquarters: DE, owners: [{entity: holdco-b, share: 100}]}
  holdco-b: {name: Beta Holdings, headquarters: CY, owners: [{entity: listed-co, share: 40}]}
  target-c:
    name: Gamma Systems
    headquarters: DE
    owners: [{entity: listed-co, share: 20}, {entity: holdco-a, share: 30}]
""",
    )
    _, table = screened(text, snapshot)
    # listed-co holds 60% of holdco-a, which holds 100% of target: both are treated as listed.
    assert table.get("holdco-a").owned_by_listed
    target = table.get("target")
    assert target.owned_by_listed and target.listed_share == 100.0
    assert target.ownership_path == (
        "target",
        "holdco-a (100%, owned by listed)",
        "listed-co (60%, listed: el:e1)",
    )
    # 40% of an unlisted holding company counts for nothing further down.
    assert not table.get("holdco-b").owned_by_listed and table.get("holdco-b").listed_share == 40
    assert not table.get("target-b").owned_by_listed and table.get("target-b").listed_share == 0
    # Direct 20% plus 30% through a company that is itself treated as listed: 50%.
    assert table.get("target-c").owned_by_listed and table.get("target-c").listed_share == 50


def test_a_cycle_is_refused_at_load() -> None:
    text = """\
entities:
  a: {headquarters: RU, owners: [{entity: b, share: 60}]}
  b: {headquarters: CY, owners: [{entity: a, share: 60}]}
"""
    _, check = registry_from_document(parse_document(text, "entities.yaml"))
    assert [p.message for p in check.errors] == ["ownership cycle: a -> b -> a"]
    assert check.errors[0].line == 3


def test_unknown_and_partial_ownership_are_facts(snapshot: ListSnapshot) -> None:
    text = """\
entities:
  nobody-knows: {name: Obscure Ventures, headquarters: AE}
  half-known: {name: Half Known, headquarters: AE, owners: [{name: Some Person, share: 40}]}
  all-known: {name: All Known, headquarters: AE, owners: [{name: Founder, share: 100}]}
"""
    _, table = screened(text, snapshot)
    assert table.get("nobody-knows").ownership_unknown
    assert table.get("half-known").ownership_partial
    assert not table.get("half-known").ownership_unknown
    known = table.get("all-known")
    assert not known.ownership_unknown and not known.ownership_partial


def test_the_fixpoint_is_bounded_by_the_links() -> None:
    # A long chain under one listed root: every link treated as listed, each examined once.
    lines = ["entities:", "  root: {headquarters: RU}"]
    lines += [
        f"  c{i}: {{headquarters: CY, owners: [{{entity: {'root' if i == 0 else f'c{i - 1}'},"
        " share: 100}]}"
        for i in range(2000)
    ]
    registry, check = registry_from_document(parse_document("\n".join(lines), "e.yaml"))
    assert check.errors == []
    by_id = {e.id: e for e in registry}
    findings = listed_ownership(by_id, {"root": ("el:e1",)}, {})
    assert len(findings) == 2000 and all(f.owned_by_listed for f in findings.values())
    assert len(findings["c1999"].path) == 64  # evidence is bounded, not the whole chain


def test_the_controlling_owner_chain_gives_the_jurisdiction() -> None:
    text = """\
entities:
  sub-se: {headquarters: SE, owners: [{entity: mid-nl, share: 80}]}
  mid-nl: {headquarters: NL, owners: [{name: Mainland Group, country: CN, share: 51}]}
  stated: {headquarters: SE, ultimate_parent: US, owners: [{entity: mid-nl, share: 90}]}
  split: {headquarters: DE, owners: [{entity: mid-nl, share: 50}, {name: X, share: 50}]}
  anon: {headquarters: GB, owners: [{name: Nominee Ltd, share: 75}]}
"""
    registry, check = registry_from_document(parse_document(text, "entities.yaml"))
    assert check.errors == []
    by_id = {e.id: e for e in InMemoryRegistry(registry)}
    chain = controlling_chain(by_id, "sub-se")
    assert (chain.country, chain.chain, chain.basis) == (
        "CN",
        ("sub-se", "mid-nl", "Mainland Group"),
        "controlling owner",
    )
    assert controlling_chain(by_id, "stated").to_dict() == {
        "country": "US",
        "chain": ["stated"],
        "basis": "stated parent",
    }
    # 50% is not control: the entity is its own ultimate parent.
    assert controlling_chain(by_id, "split").country == "DE"
    # A controlling owner whose country is unknown leaves the jurisdiction unknown.
    assert controlling_chain(by_id, "anon").country is None
    assert controlling_chain(by_id, "missing").country is None
