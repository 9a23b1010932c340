"""Pack mechanics: extends, rule replacement and removal, dated membership, digests, the bundled packs."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from aidr_gate.catalog import Model, Weights
from aidr_gate.document import parse_instant
from aidr_gate.errors import ConfigError
from aidr_gate.policy.engine import PolicyEngine
from aidr_gate.policy.pack import bundled_pack_dir, load_pack
from aidr_gate.registry import AgreementState

BASE = """\
id: base
title: Base
status: hypothetical
country_groups:
  G:
    countries: [IR, {country: KH, until: 2026-02-03}]
model_tiers:
  tiers: [{id: big, weights: closed, min_training_ops: 1.0e26}, {id: rest}]
rules:
  - id: group
    when: {any_group: [G]}
    then: {effect: deny, status: 451, reason: IN_GROUP}
  - id: denied
    when: {entity_denied: true}
    then: {effect: deny, status: 403, reason: DENIED}
default: {effect: allow, reason: ALLOWED}
"""

CHILD = """\
id: child
title: Child
status: hypothetical
extends: base.yaml
country_tiers:
  order: [t1, t2, t3]
  default: t2
  members:
    t1: [US]
    t3: [{group: G, from: 2025-06-01}, CN]
rules:
  - id: denied
    when: {entity_denied: true}
    then: {effect: deny, status: 451, reason: DENIED_HARDER}
  - id: t3-big
    when: {effective_tier: [t3], model_tier: [big]}
    then: {effect: deny, status: 451, reason: T3_BIG}
"""


def t(text: str) -> float:
    """Epoch seconds of an ISO date."""
    value = parse_instant(text)
    assert value is not None
    return value


@pytest.fixture
def packs(tmp_path: Path) -> Path:
    """A base pack and a child that extends it."""
    (tmp_path / "base.yaml").write_text(BASE)
    (tmp_path / "child.yaml").write_text(CHILD)
    return tmp_path


def test_child_inherits_and_replaces_in_place(packs: Path) -> None:
    pack = load_pack(packs / "child.yaml")
    assert pack.extends == ("base",)
    assert [(r.id, r.pack) for r in pack.rules] == [
        ("group", "base"),
        ("denied", "child"),
        ("t3-big", "child"),
    ]
    assert pack.rules[1].outcome.reason == "DENIED_HARDER"
    assert pack.default.reason == "ALLOWED"
    assert pack.files == (str(packs / "base.yaml"), str(packs / "child.yaml"))


def test_remove_rules(packs: Path) -> None:
    (packs / "grandchild.yaml").write_text(
        "id: grandchild\ntitle: G\nstatus: proposed\nextends: child.yaml\nremove_rules: [group]\n"
    )
    pack = load_pack(packs / "grandchild.yaml")
    assert [r.id for r in pack.rules] == ["denied", "t3-big"]
    assert pack.extends == ("child", "base")


def test_group_reference_intersects_windows(packs: Path) -> None:
    engine = PolicyEngine(load_pack(packs / "child.yaml"))
    big = Model("m", 2e26, Weights.CLOSED)

    def tier(country: str, when: str) -> str | None:
        verdict = engine.evaluate(
            entity=None,
            headquarters="US",
            parent=None,
            model=big,
            network_country=country,
            at=t(when),
        )
        return verdict.facts.network_tier

    # KH is in G until 2026-02-03 and G counts as t3 only from 2025-06-01.
    assert tier("KH", "2025-05-31") == "t2"
    assert tier("KH", "2025-06-01") == "t3"
    assert tier("KH", "2026-02-02") == "t3"
    assert tier("KH", "2026-02-03") == "t2"
    assert tier("CN", "2020-01-01") == "t3"
    assert tier("US", "2030-01-01") == "t1"
    assert tier("BR", "2030-01-01") == "t2"
    assert engine.countries_changing() == (t("2025-06-01"), t("2026-02-03"))


def test_digest_is_stable_and_content_sensitive(packs: Path) -> None:
    first = load_pack(packs / "child.yaml").digest
    assert load_pack(packs / "child.yaml").digest == first
    (packs / "child.yaml").write_text(CHILD + "# a comment changes nothing\n")
    assert load_pack(packs / "child.yaml").digest == first
    (packs / "child.yaml").write_text(CHILD.replace("t1: [US]", "t1: [US, GB]"))
    assert load_pack(packs / "child.yaml").digest != first
    (packs / "base.yaml").write_text(BASE.replace("IR,", "IR, CU,"))
    assert load_pack(packs / "child.yaml").digest not in (first,)


def test_overlapping_tiers_are_refused(tmp_path: Path) -> None:
    text = CHILD.replace("t1: [US]", "t1: [US, CN]")
    (tmp_path / "base.yaml").write_text(BASE)
    (tmp_path / "child.yaml").write_text(text)
    with pytest.raises(ConfigError, match="CN is also in tier 't1'"):
        load_pack(tmp_path / "child.yaml")


def test_adjacent_windows_in_two_tiers_are_fine(tmp_path: Path) -> None:
    text = CHILD.replace("t1: [US]", "t1: [US, {country: BR, from: 2027-01-01}]").replace(
        "CN]", "CN, {country: BR, until: 2027-01-01}]"
    )
    (tmp_path / "base.yaml").write_text(BASE)
    (tmp_path / "child.yaml").write_text(text)
    engine = PolicyEngine(load_pack(tmp_path / "child.yaml"))
    tiers = [
        engine.evaluate(
            entity=None, headquarters="BR", parent=None, model=None, network_country="BR", at=t(day)
        ).facts.headquarters_tier
        for day in ("2026-12-31", "2027-01-01")
    ]
    assert tiers == ["t3", "t1"]


def test_bundled_packs_all_load_and_cite() -> None:
    files = sorted(bundled_pack_dir().glob("*.yaml"))
    assert {f.stem for f in files} >= {
        "us-embargo-baseline",
        "aidr-2025-01",
        "aidr-2025-05-rescinded",
        "strict-hypothetical",
    }
    for file in files:
        pack = load_pack(file)
        assert pack.id == file.stem
        if pack.status != "hypothetical":
            assert pack.citations, pack.id
    strict = load_pack("strict-hypothetical")
    assert strict.status == "hypothetical" and "HYPOTHETICAL" in strict.title


def test_aidr_2025_01_tier_lists_match_the_rule() -> None:
    pack = load_pack("aidr-2025-01")
    assert pack.tiers is not None
    tier1 = {m.country for m in pack.tiers.members["tier1"]}
    expected = "US AU BE CA DK FI FR DE IE IT JP NL NZ NO KR ES SE TW GB"
    assert tier1 == set(expected.split())
    tier3 = {m.country for m in pack.tiers.members["tier3"]}
    assert {"CN", "HK", "MO", "RU", "KH", "IR"} <= tier3
    assert len(tier3) == 25  # D:5 (23) + Macau + Hong Kong
    assert "CY" not in tier3
    assert pack.effective_from == t("2025-01-13") and pack.effective_until == t("2025-05-13")


def test_agreement_state_helpers() -> None:
    assert AgreementState("out-of-scope") is AgreementState.OUT_OF_SCOPE


def test_document_line_numbers_for_nested_keys(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(BASE).replace("reason: DENIED", "reason: denied"))
    with pytest.raises(ConfigError) as info:
        load_pack(path)
    assert ":15: rules[1].then.reason:" in str(info.value)
