"""Screening results as per-request facts: the bundled packs' restricted-party, ownership and
Affiliates-rule rules decided through the gate, with the list version in every decision."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_screening_ownership import CONFIRM, LIST

from aidr_gate.catalog import load_catalog
from aidr_gate.decision import Decision, Effect
from aidr_gate.document import parse_document, parse_instant
from aidr_gate.facts import Identity, declared_origin
from aidr_gate.gate import Gate, state_for
from aidr_gate.policy.pack import load_pack
from aidr_gate.registry import Entity, registry_from_document
from aidr_gate.screening.facts import ScreeningTable, screening_table
from aidr_gate.screening.screen import screen_registry
from aidr_gate.screening.store import CSL, ListSnapshot, ListSource, load_snapshot
from support.environment import EXAMPLES

CONFIRM_PETROV = (
    "{entry: 'sdn:101', name: Ivan Sergeevich Petrov, decision: confirmed, by: c.o,"
    " at: 2026-12-01, why: passport}"
)
REGISTRY = f"""\
entities:
  listed-co: {{name: Volga Photonics Holding, headquarters: RU, screening_reviews: [{CONFIRM}]}}
  owned-51: {{name: Target Systems, headquarters: DE, owners: [{{entity: listed-co, share: 51}}]}}
  owned-49:
    name: Forty Nine Systems
    headquarters: DE
    owners: [{{entity: listed-co, share: 49}}, {{name: Founder Person, share: 51}}]
  owned-30-25:
    name: Two Owners Systems
    headquarters: DE
    screening_reviews: [{CONFIRM_PETROV}]
    owners:
      - {{entity: listed-co, share: 30}}
      - {{name: Ivan Sergeevich Petrov, country: RU, share: 25}}
      - {{name: Founder Person, share: 45}}
  sdn-owned:
    name: Petrov Trading
    headquarters: DE
    screening_reviews: [{CONFIRM_PETROV}]
    owners: [{{name: Ivan Sergeevich Petrov, country: RU, share: 60}}, {{name: Founder Person, share: 40}}]
  holdco: {{name: Alpha Holdings, headquarters: CY, owners: [{{entity: listed-co, share: 60}}]}}
  via-holdco: {{name: Gamma Systems, headquarters: DE, owners: [{{entity: holdco, share: 100}}]}}
  holdco-40:
    name: Beta Holdings
    headquarters: CY
    owners: [{{entity: listed-co, share: 40}}, {{name: Founder Person, share: 60}}]
  via-holdco-40: {{name: Beta Systems, headquarters: DE, owners: [{{entity: holdco-40, share: 100}}]}}
  exact: {{name: Red Harbor Logistics Ltd, headquarters: GB, ownership: complete}}
  potential: {{name: Red Harbor Logistic Company, headquarters: GB, ownership: complete}}
  potential-cn: {{name: Red Harbour Logistix, headquarters: CN, ownership: complete}}
  clean: {{name: Plain Widgets, headquarters: DE, owners: [{{name: Founder Person, share: 100}}]}}
  nobody-knows: {{name: Obscure Ventures, headquarters: DE}}
  parent-cn: {{name: Dragon Holdings, headquarters: CN, ownership: complete}}
  sub-se:
    name: Nordic Dragon AB
    headquarters: SE
    owners: [{{entity: parent-cn, share: 60}}, {{name: Founder Person, share: 40}}]
"""


def instant(text: str) -> float:
    at = parse_instant(text)
    assert at is not None
    return at


TODAY = instant("2026-12-02")
SUSPENDED = instant("2026-01-15")  # inside the Affiliates rule's suspension
FIRST_WINDOW = instant("2025-10-15")  # after publication, before the suspension


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> ListSnapshot:
    path = tmp_path_factory.mktemp("lists") / "csl.csv"
    path.write_text(LIST)
    return load_snapshot([ListSource(path, CSL, date="2026-11-30")])


@pytest.fixture(scope="module")
def screened(snapshot: ListSnapshot) -> tuple[list[Entity], ScreeningTable]:
    registry, check = registry_from_document(parse_document(REGISTRY, "entities.yaml"))
    assert check.errors == []
    entities = list(registry)
    return entities, screening_table(entities, screen_registry(entities, snapshot))


MODELS = list(load_catalog(EXAMPLES / "models.yaml"))


def gate_for(
    pack: str, screened: tuple[list[Entity], ScreeningTable], extra: tuple[Entity, ...] = ()
) -> Gate:
    entities, table = screened
    return Gate(
        state_for(load_pack(pack), entities=[*entities, *extra], models=MODELS, screening=table)
    )


def decide(gate: Gate, entity: str, *, model: str = "aurora-mini", at: float = TODAY) -> Decision:
    identity = Identity(entity_id=entity, method="declared")
    return gate.decide(identity=identity, origin=declared_origin("DE"), model_id=model, at=at)


def outcome(decision: Decision) -> tuple[str, int | None, str]:
    return decision.effect.value, decision.status, decision.reasons[0]


DENY_PARTY = ("deny", 403, "RESTRICTED_PARTY")
AFFILIATE = ("deny", 403, "RESTRICTED_PARTY_AFFILIATE")
AFFILIATE_LOGGED = ("log", None, "RESTRICTED_PARTY_AFFILIATE")
ALLOW = ("allow", None, "ALLOWED")


@pytest.mark.parametrize(
    ("entity", "at", "expected"),
    [
        ("listed-co", TODAY, DENY_PARTY),
        ("listed-co", SUSPENDED, DENY_PARTY),  # a listed party itself: nothing suspends that
        # The Affiliates rule: 51% denies in its windows and is logged while it is suspended.
        ("owned-51", FIRST_WINDOW, AFFILIATE),
        ("owned-51", SUSPENDED, AFFILIATE_LOGGED),
        ("owned-51", TODAY, AFFILIATE),  # applies again from 2026-11-10 (UNCONFIRMED)
        ("owned-49", TODAY, ALLOW),
        ("owned-30-25", TODAY, AFFILIATE),  # 30% Entity List + 25% SDN: 55% in aggregate
        ("owned-30-25", SUSPENDED, AFFILIATE_LOGGED),  # 25% SDN alone is not 50%
        # OFAC's 50 Percent Rule (SDN holders) is not suspended.
        ("sdn-owned", SUSPENDED, ("deny", 403, "RESTRICTED_PARTY_OWNED")),
        ("via-holdco", TODAY, AFFILIATE),  # 100% of a company 60% held by a listed party
        ("via-holdco-40", TODAY, ALLOW),  # 40% of an unlisted holding company counts for nothing
        ("exact", TODAY, ("deny", 403, "RESTRICTED_PARTY_PENDING_REVIEW")),
        ("potential", TODAY, ("log", None, "RESTRICTED_PARTY_POTENTIAL")),
        ("clean", TODAY, ALLOW),
        ("nobody-knows", TODAY, ALLOW),  # the baseline has no controlled tier to flag it for
    ],
)
def test_us_baseline(
    screened: tuple[list[Entity], ScreeningTable],
    entity: str,
    at: float,
    expected: tuple[str, int | None, str],
) -> None:
    assert outcome(decide(gate_for("us-embargo-baseline", screened), entity, at=at)) == expected


def test_a_logged_fact_never_lets_in_what_another_rule_denies(
    screened: tuple[list[Entity], ScreeningTable],
) -> None:
    """The baseline's log rules are ``last``: a Tier 3 entity's potential hit is still denied."""
    gate = gate_for("aidr-2025-01", screened)
    at = instant("2025-03-01")
    decision = decide(gate, "potential-cn", model="aurora-frontier", at=at)
    assert outcome(decision) == ("deny", 451, "TIER3_CONTROLLED_MODEL")
    assert "potential-hit" in decision.evidence.to_dict()["screening"]["flags"]
    assert outcome(decide(gate, "potential-cn", model="llama-3.1-405b", at=at)) == (
        "log",
        None,
        "RESTRICTED_PARTY_POTENTIAL",
    )


def test_red_flag_29_per_tier(screened: tuple[list[Entity], ScreeningTable]) -> None:
    gate = gate_for("aidr-2025-05-rescinded", screened)
    assert outcome(decide(gate, "nobody-knows", model="aurora-frontier")) == (
        "log",
        None,
        "OWNERSHIP_UNKNOWN",
    )
    assert outcome(decide(gate, "nobody-knows", model="aurora-mini")) == ALLOW
    assert outcome(decide(gate, "clean", model="aurora-frontier")) == ALLOW


def test_the_list_version_is_in_the_decision(
    screened: tuple[list[Entity], ScreeningTable], snapshot: ListSnapshot
) -> None:
    decision = decide(gate_for("us-embargo-baseline", screened), "owned-51")
    evidence = decision.evidence.to_dict()["screening"]
    assert evidence["list_digest"] == snapshot.version.digest
    assert evidence["list_date"] == "2026-11-30"
    assert evidence["list_version"] == snapshot.version.label
    assert evidence["ownership_path"] == ["owned-51", "listed-co (51%, listed: el:e1)"]
    # 51% known of 100%: ownership is partial too (BIS Red Flag 29)
    assert evidence["listed_share"] == 51.0
    assert evidence["flags"] == ["owned-by-listed", "ownership-partial"]
    # An entity the registry does not know has no screening result to test.
    unknown = decide(gate_for("us-embargo-baseline", screened), "nobody-registered")
    assert unknown.evidence.screening is None


def test_an_entity_added_after_screening_is_refused(
    screened: tuple[list[Entity], ScreeningTable], snapshot: ListSnapshot
) -> None:
    newcomer = Entity(id="newcomer", headquarters="DE", name="Brand New GmbH")
    gate = gate_for("us-embargo-baseline", screened, (newcomer,))
    assert outcome(decide(gate, "newcomer")) == ("deny", 403, "SCREENING_PENDING")


def test_stale_lists_fail_closed(screened: tuple[list[Entity], ScreeningTable]) -> None:
    entities, table = screened
    stale = screening_table(entities, screen_registry(entities, table_snapshot(table)))
    stale.unavailable = "screening lists not reloadable for 90000 s: lists/csl.csv: truncated"
    decision = decide(gate_for("us-embargo-baseline", (entities, stale)), "clean")
    assert decision.effect is Effect.DENY and decision.status == 503
    assert decision.reasons == ("SCREENING_UNAVAILABLE",) and decision.rule == "gate/screening"


def table_snapshot(table: ScreeningTable) -> ListSnapshot:
    """The snapshot a table was screened from (rebuilt here from the same fixture text)."""
    path = Path(table.version.sources[0].name)
    return load_snapshot([ListSource(path, CSL, date="2026-11-30")])


def test_the_controlling_owner_chain_gives_the_jurisdiction(
    screened: tuple[list[Entity], ScreeningTable],
) -> None:
    """No ultimate parent stated: a Swedish company 60% held by a Chinese one is Chinese."""
    gate = gate_for("aidr-2025-05-rescinded", screened)
    decision = decide(gate, "sub-se", model="aurora-frontier")
    assert outcome(decision) == ("deny", 451, "D5_HEADQUARTERED_CONTROLLED_MODEL")
    evidence = decision.evidence.to_dict()
    assert evidence["entity"]["parent"] == "CN"
    assert evidence["screening"]["controlling_chain"] == ["sub-se", "parent-cn"]
    assert outcome(decide(gate, "clean", model="aurora-frontier")) == ALLOW
