"""The packs for 2026: loadable, citing, UNCONFIRMED where RULE-FACTS says so; aidr-2025-01's
dated status; the EU 19th package; and what ``diff`` and ``replay`` say each would change."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aidr_gate.catalog import load_catalog
from aidr_gate.cli import main
from aidr_gate.decision import Decision
from aidr_gate.document import parse_instant
from aidr_gate.errors import PACK_REASONS, TokenExpired
from aidr_gate.facts import Identity, Origin, RegionSource, declared_origin
from aidr_gate.gate import Gate, state_for
from aidr_gate.policy.pack import bundled_pack_dir, load_pack
from aidr_gate.registry import Agreement, AgreementStatus, Entity
from aidr_gate.replay.diff import diff_packs, render_diff
from aidr_gate.replay.report import build_report
from aidr_gate.replay.run import ReplayOptions, replay_files
from support.environment import EXAMPLES, ROOT
from support.replay_support import write_trail

BUNDLED = sorted(p.stem for p in bundled_pack_dir().glob("*.yaml"))
MODELS = list(load_catalog(EXAMPLES / "models.yaml"))
ENTITIES = [
    Entity(id="volga-ru", headquarters="RU", name="Volga Cloud OOO"),
    Entity(id="acme-de", headquarters="DE", name="Acme Analytics GmbH"),
    Entity(id="sub-de", headquarters="DE", parent="RU", name="Volga Deutschland GmbH"),
    Entity(
        id="falcon-ae",
        headquarters="AE",
        name="Falcon Compute LLC",
        agreements=(
            Agreement(
                id="BIS-L-2026-1",
                type="license",
                status=AgreementStatus.ACTIVE,
                valid_from=parse_instant("2026-07-01"),
                valid_until=parse_instant("2027-07-01"),
                model_tiers=frozenset({"*"}),
                countries=frozenset({"AE"}),
            ),
        ),
    ),
]


def at(text: str) -> float:
    instant = parse_instant(text)
    assert instant is not None
    return instant


def decide(
    pack: str, entity: str, origin: Origin, model: str = "aurora-mini", when: str = "2026-12-02"
) -> Decision:
    gate = Gate(state_for(load_pack(pack), entities=ENTITIES, models=MODELS))
    return gate.decide(
        identity=Identity(entity_id=entity, method="declared"),
        origin=origin,
        model_id=model,
        at=at(when),
    )


def region(code: str) -> Origin:
    return Origin(ip=None, country=code[:2], region=code, region_source=RegionSource.GEOIP)


def outcome(decision: Decision) -> tuple[str, int | None, str]:
    return decision.effect.value, decision.status, decision.reasons[0]


@pytest.mark.parametrize("pack_id", BUNDLED)
def test_every_bundled_pack_loads_cites_and_names_its_reasons(pack_id: str) -> None:
    pack = load_pack(pack_id)
    if pack.status in ("in-force", "not-enforced", "contested", "rescinded", "proposed"):
        assert pack.citations, pack_id
    readme = (ROOT / "README.md").read_text()
    for rule in (*pack.rules, None):
        reason = pack.default.reason if rule is None else rule.outcome.reason
        assert reason in PACK_REASONS, f"{pack_id}: {reason} is not in errors.PACK_REASONS"
        assert f"`{reason}`" in readme, f"{pack_id}: {reason} is not in the README"
        # An in-force pack never denies on an UNCONFIRMED reading (RULE-FACTS): it logs it.
        if rule is not None and pack.status == "in-force" and rule.outcome.effect.value == "deny":
            text = f"{rule.description} {rule.citation}"
            assert "UNCONFIRMED" not in text, f"{pack_id}/{rule.id}"


def test_unconfirmed_items_are_marked() -> None:
    uae = load_pack("aidr-2026-07-uae-unconfirmed")
    assert uae.status == "proposed" and "UNCONFIRMED" in uae.title
    assert any(c.startswith("UNCONFIRMED") for c in uae.citations)
    eu = load_pack("eu-russia-19")
    assert any(c.startswith("UNCONFIRMED") for c in eu.citations)
    # The Affiliates rule's return after its suspension is dated data, marked in the pack file.
    baseline = load_pack("us-embargo-baseline")
    windows = next(r for r in baseline.rules if r.id == "affiliates-rule").during
    assert (windows[1].note or "").startswith("UNCONFIRMED")
    text = (bundled_pack_dir() / "us-embargo-baseline.yaml").read_text()
    assert re.search(r"# UNCONFIRMED: the rule applies again from 2026-11-10", text)


@pytest.mark.parametrize(
    ("when", "status", "in_window"),
    [
        ("2025-03-01", "in-force", True),
        ("2025-08-01", "not-enforced", False),
        ("2026-06-01", "contested", False),  # GAO B-337935, 2026-05-12
    ],
)
def test_aidr_2025_01_reports_the_status_at_the_decision_time(
    when: str, status: str, in_window: bool
) -> None:
    decision = decide("aidr-2025-01", "acme-de", declared_origin("DE"), when=when)
    assert (decision.policy.status, decision.policy.in_window) == (status, in_window)
    gate = Gate(state_for(load_pack("aidr-2025-01"), entities=ENTITIES, models=MODELS))
    assert gate.refuse(TokenExpired(), at=at(when)).policy.status == status


@pytest.mark.parametrize(
    ("entity", "origin", "expected"),
    [
        ("volga-ru", declared_origin("DE"), ("deny", 451, "EU_RUSSIA_AI_SERVICES")),
        ("volga-ru", declared_origin("RU"), ("deny", 451, "EU_RUSSIA_AI_SERVICES")),
        ("acme-de", declared_origin("RU"), ("log", None, "EU_RUSSIA_NETWORK_ORIGIN")),
        ("sub-de", declared_origin("DE"), ("log", None, "EU_RUSSIA_CONTROLLED")),
        ("acme-de", region("UA-43"), ("log", None, "EU_SANCTIONED_REGION")),
        ("acme-de", region("UA-23"), ("log", None, "REGION_UNCERTAIN")),  # Zaporizhzhia
        ("acme-de", region("UA-30"), ("allow", None, "ALLOWED")),  # Kyiv
        ("acme-de", declared_origin("DE"), ("allow", None, "ALLOWED")),
    ],
)
def test_the_eu_19th_package(
    entity: str, origin: Origin, expected: tuple[str, int | None, str]
) -> None:
    assert outcome(decide("eu-russia-19", entity, origin, model="llama-3.1-405b")) == expected


def test_regimes_differ_on_zaporizhzhia() -> None:
    """The EU targets part of Zaporizhzhia oblast, OFAC does not: the two packs disagree."""
    origin = region("UA-23")
    assert outcome(decide("us-embargo-baseline", "acme-de", origin))[0] == "allow"
    assert outcome(decide("eu-russia-19", "acme-de", origin))[2] == "REGION_UNCERTAIN"


def test_the_uae_proposal_accepts_a_named_recipients_licence() -> None:
    origin = declared_origin("AE")
    assert outcome(decide("aidr-2025-01", "falcon-ae", origin, "aurora-frontier")) == (
        "deny",
        403,
        "NO_VALID_AGREEMENT",
    )
    assert outcome(
        decide("aidr-2026-07-uae-unconfirmed", "falcon-ae", origin, "aurora-frontier")
    ) == (
        "log",
        None,
        "UAE_NAMED_RECIPIENT",
    )


def test_diff_shows_what_each_new_pack_changes(capsys: pytest.CaptureFixture[str]) -> None:
    uae = diff_packs(load_pack("aidr-2025-01"), load_pack("aidr-2026-07-uae-unconfirmed"))
    assert uae["agreements"]["added"] == ["license"]
    assert [g["group"] for g in uae["groups"]] == ["A5"]
    assert [r["id"] for r in uae["rules"]["added"]] == ["uae-named-recipient"]
    assert uae["status_history"]["b"] == []  # the proposal has no dated status of its own
    eu = diff_packs(load_pack("us-embargo-baseline"), load_pack("eu-russia-19"))
    changes = {g["group"]: g["change"] for g in eu["region_groups"]}
    assert changes == {"eu-ua-non-government-controlled": "added", "ofac-ua-covered": "removed"}
    text = render_diff(eu)
    assert "+ eu-ua-non-government-controlled: regions UA-43, UA-40; uncertain UA-14" in text
    assert "affiliates-rule: when screening in [owned-by-listed] -> deny 403" in text
    assert "during 2025-09-29 .. 2025-11-10, 2026-11-10 .. -" in text
    assert main(["diff", "aidr-2025-01", "aidr-2026-07-uae-unconfirmed"]) == 1
    out = capsys.readouterr().out
    assert "Accepted agreement types: nveu, security-agreement, uveu -> license, nveu" in out
    assert "Status history: in-force from 2025-01-13, not-enforced from 2025-05-13" in out


def test_replay_shows_what_each_new_pack_would_change(tmp_path: Path) -> None:
    """Records decided under the in-force US pack, replayed under the EU and the UAE packs; each
    flip agrees with deciding the same request under the new pack directly."""
    requests = [
        ("volga-ru", declared_origin("DE"), "aurora-mini"),
        ("sub-de", declared_origin("DE"), "aurora-mini"),
        ("acme-de", region("UA-23"), "aurora-mini"),
        ("acme-de", region("UA-43"), "aurora-mini"),
        ("falcon-ae", declared_origin("AE"), "aurora-frontier"),
    ]
    recorded = [decide("aidr-2025-05-rescinded", e, o, m) for e, o, m in requests]
    files = write_trail(tmp_path, recorded)
    for pack_id in ("eu-russia-19", "aidr-2026-07-uae-unconfirmed"):
        report = build_report(replay_files(files, ReplayOptions(pack=load_pack(pack_id))))
        assert report["totals"]["replayed"] == len(requests)
        direct = [outcome(decide(pack_id, e, o, m)) for e, o, m in requests]
        flips = sum(
            1 for old, new in zip(recorded, direct, strict=True) if old.effect.value != new[0]
        )
        assert report["totals"]["flips"] == flips
        if pack_id == "eu-russia-19":
            # Volga (RU) is now denied; its German subsidiary and Zaporizhzhia are logged; Crimea
            # goes from deny to log (the EU's regional bans are not read as covering AI access).
            assert flips == 4
            by_reason = {row["value"] for row in report["flips"]["by_reason"]}
            assert {"EU_RUSSIA_AI_SERVICES", "EMBARGOED_REGION"} <= by_reason
