"""``aidr-gate diff``: what differs between two packs, by meaning, with dates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aidr_gate.cli import main
from aidr_gate.document import parse_instant
from aidr_gate.policy.pack import Membership, load_pack
from aidr_gate.replay.diff import (
    CHANGE_PARTS,
    describe,
    diff_packs,
    pack_window,
    render_diff,
    timeline,
    window_text,
)
from support.environment import POLICIES


def day(text: str) -> float:
    value = parse_instant(text)
    assert value is not None
    return value


@pytest.mark.parametrize(
    ("memberships", "default", "text"),
    [
        ([], "tier2", "tier2"),
        ([("tier1", Membership("US"))], "tier2", "tier1"),
        (
            [("tier3", Membership("KH", until=day("2026-02-03")))],
            "tier2",
            "tier3 until 2026-02-03, then tier2",
        ),
        (
            [("tier3", Membership("XX", since=day("2026-01-01")))],
            "tier2",
            "tier2 until 2026-01-01, then tier3",
        ),
        (
            [("tier3", Membership("XX", day("2025-01-01"), day("2025-06-01")))],
            "tier2",
            "tier2 until 2025-01-01, then tier3 until 2025-06-01, then tier2",
        ),
        (
            [
                ("tier3", Membership("XX", until=day("2025-06-01"))),
                ("tier3", Membership("XX", since=day("2025-06-01"))),
            ],
            "tier2",
            "tier3",
        ),
        (
            [("member", Membership("KH", until=day("2026-02-03")))],
            None,
            "member until 2026-02-03, then not listed",
        ),
    ],
)
def test_timelines_in_words(
    memberships: list[tuple[str, Membership]], default: str | None, text: str
) -> None:
    assert describe(timeline(memberships, default)) == text


def test_identical_packs() -> None:
    pack = load_pack("aidr-2025-01")
    diff = diff_packs(pack, load_pack("aidr-2025-01"))
    assert diff["identical"] is True
    assert "identical" in render_diff(diff)


def test_identical_looks_at_every_part_of_a_diff() -> None:
    """A part added to diff_packs's result counts toward ``identical`` (or is named here, and why)."""
    diff = diff_packs(load_pack("aidr-2025-01"), load_pack("aidr-2025-01"))
    parts: set[tuple[str, ...]] = set()
    for key, value in diff.items():
        if key in {"format", "a", "b", "identical"}:  # which packs, not what differs
            continue
        parts |= {(key, sub) for sub in value} if isinstance(value, dict) else {(key,)}
    # Only one pack has a tier table: _differs compares the two flags; the summary shows that table.
    parts -= {("country_tiers", "a_present"), ("country_tiers", "b_present")}
    parts -= {("country_tiers", "summary")}
    assert parts == {(s, p) for s, ps in CHANGE_PARTS.items() for p in ps} | {
        (s,) for s, ps in CHANGE_PARTS.items() if not ps
    }


def test_published_rule_against_rescission() -> None:
    diff = diff_packs(load_pack("aidr-2025-01"), load_pack("aidr-2025-05-rescinded"))
    assert not diff["identical"]
    meta = {m["field"]: (m["a"], m["b"]) for m in diff["meta"]}
    assert meta["status"] == ("contested", "in-force")  # aidr-2025-01 after GAO B-337935
    assert meta["effective.from"] == ("2025-01-13", "2025-05-13")
    assert meta["effective.until"] == ("2025-05-13", None)
    tiers = diff["country_tiers"]
    assert tiers["a_present"] and not tiers["b_present"]
    summary = {row["country"]: row["tier"] for row in tiers["summary"]["countries"]}
    assert summary["KH"] == "tier3 until 2026-02-03, then tier2"
    assert summary["SE"] == "tier1" and summary["HK"] == "tier3"
    removed = {r["id"] for r in diff["rules"]["removed"]}
    assert removed == {
        "tier3-controlled",
        "anonymized-origin-controlled",
        "unknown-country-controlled",
        "tier2-needs-agreement",
        "origin-worse-than-headquarters",
    }
    assert [r["id"] for r in diff["rules"]["added"]] == ["d5-headquarters-controlled"]
    assert diff["rules"]["changed"] == []  # unknown-headquarters-controlled is the same in both
    assert diff["agreements"] == {
        "a": ["nveu", "security-agreement", "uveu"],
        "b": None,
        "added": [],
        "removed": ["nveu", "security-agreement", "uveu"],
    }
    text = render_diff(diff)
    assert "tier3 until 2026-02-03, then tier2: KH" in text
    assert "+ d5-headquarters-controlled: when model_tier in [controlled] and any of (" in text
    assert "-> deny 451 D5_HEADQUARTERED_CONTROLLED_MODEL" in text
    assert "Accepted agreement types: nveu, security-agreement, uveu -> any" in text


def test_published_rule_against_the_strict_hypothetical() -> None:
    diff = diff_packs(load_pack("aidr-2025-01"), load_pack("strict-hypothetical"))
    assert diff["country_tiers"]["countries"] == []  # the same tiers, inherited
    changed = {c["id"]: c for c in diff["rules"]["changed"]}
    assert set(changed) == {
        "tier3-controlled",
        "anonymized-origin-controlled",
        "unknown-country-controlled",
        "unknown-headquarters-controlled",
        "tier2-needs-agreement",
    }
    assert changed["tier3-controlled"]["a"]["when"]["model_tier"] == ["controlled"]
    assert changed["tier3-controlled"]["b"]["when"]["model_tier"] == ["controlled", "restricted"]
    assert "when" in changed["anonymized-origin-controlled"]["fields"]
    assert diff["rules"]["order"] is None
    models = diff["model_tiers"]
    assert [t["id"] for t in models["added"]] == ["restricted"]
    assert models["added"][0]["min_training_ops"] == 1e25
    assert models["order"] == {
        "a": ["controlled", "uncontrolled"],
        "b": ["controlled", "restricted", "uncontrolled"],
    }
    text = render_diff(diff)
    assert "+ restricted: closed weights, >= 1e+25 training ops" in text
    assert "~ tier3-controlled (when, description):" in text


CHANGED_PACK = """
id: what-if-kh
title: What if KH stayed in D:5 and the thresholds moved
status: hypothetical
extends: {base}
country_groups:
  D5:
    countries: [AF, BY, MM, KH, CF, CN, CD, CU, ER, HT, IR, IQ, KP, LB, LY, NI, RU, SO, SS, SD, SY, VE, ZW, AE]
country_tiers:
  order: [tier1, tier2, tier3]
  default: tier2
  members:
    tier1: [US, AU, BE, CA, DK, FI, FR, DE, IE, IT, JP, NL, NZ, NO, KR, ES, SE, TW, GB, SG]
    tier3:
      - {{group: D5}}
      - {{country: MO}}
      - {{country: HK, from: 2026-03-01}}
model_tiers:
  open_weight_frontier_ops: 5.0e25
  unknown_model: controlled
  tiers:
    - {{id: controlled, weights: closed, min_training_ops: 5.0e25, above_open_weight_frontier: true}}
    - {{id: uncontrolled}}
agreements:
  accepted_types: [uveu, nveu, security-agreement, license]
rules:
  - id: tier2-needs-agreement
    when: {{effective_tier: [tier2], model_tier: [controlled], agreement_valid: false}}
    then: {{effect: deny, status: 451, reason: NO_VALID_AGREEMENT}}
  - id: log-everything-from-vpn
    when: {{anonymizer: [vpn]}}
    then: {{effect: log, reason: VPN_ORIGIN}}
remove_rules: [origin-worse-than-headquarters]
default: {{effect: log, reason: ALLOWED_AND_LOGGED}}
"""


def test_tiers_with_dates_groups_rules_thresholds_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "what-if-kh.yaml"
    path.write_text(CHANGED_PACK.format(base=POLICIES / "aidr-2025-01.yaml"))
    diff = diff_packs(load_pack("aidr-2025-01"), load_pack(path))
    countries = {c["country"]: c for c in diff["country_tiers"]["countries"]}
    assert countries["KH"]["a"] == "tier3 until 2026-02-03, then tier2"
    assert countries["KH"]["b"] == "tier3"
    assert countries["SG"]["a"] == "tier2" and not countries["SG"]["a_listed"]
    assert countries["SG"]["b"] == "tier1"
    assert countries["HK"]["b"] == "tier2 until 2026-03-01, then tier3"
    assert countries["AE"] == {
        "country": "AE",
        "a": "tier2",
        "b": "tier3",
        "a_listed": False,
        "b_listed": True,
    }
    groups = {g["group"]: g for g in diff["groups"]}
    assert groups["D5"]["added"] == ["AE"]
    assert groups["D5"]["redated"] == [
        {"country": "KH", "a": "member until 2026-02-03, then not a member", "b": "member"}
    ]
    rules = diff["rules"]
    assert [r["id"] for r in rules["removed"]] == ["origin-worse-than-headquarters"]
    assert [r["id"] for r in rules["added"]] == ["log-everything-from-vpn"]
    changed = {c["id"]: c for c in rules["changed"]}
    assert changed["tier2-needs-agreement"]["a"]["then"]["status"] == 403
    assert changed["tier2-needs-agreement"]["b"]["then"]["status"] == 451
    models = diff["model_tiers"]
    assert {c["field"]: (c["a"], c["b"]) for c in models["changes"]} == {
        "open_weight_frontier_ops": (3.8e25, 5e25)
    }
    assert models["changed"] == [
        {"id": "controlled", "changes": [{"field": "min_training_ops", "a": 1e26, "b": 5e25}]}
    ]
    assert diff["default"]["b"] == {"effect": "log", "status": None, "reason": "ALLOWED_AND_LOGGED"}
    assert diff["agreements"]["added"] == ["license"]
    text = render_diff(diff)
    for expected in (
        "KH: A tier3 until 2026-02-03, then tier2; B tier3",
        "HK: A tier3; B tier2 until 2026-03-01, then tier3",
        "    + AE",
        "    ~ KH: A member until 2026-02-03, then not a member; B member",
        "~ controlled: min_training_ops 1e+26 -> 5e+25",
        "Default outcome: allow ALLOWED -> log ALLOWED_AND_LOGGED",
        "- origin-worse-than-headquarters: when origin_worse_than_headquarters = true",
    ):
        assert expected in text, expected


def test_rule_order_changes_are_shown(tmp_path: Path) -> None:
    path = tmp_path / "reordered.yaml"
    path.write_text(
        f"""
id: reordered
title: Same rules, the log rule first
status: hypothetical
extends: {POLICIES / "aidr-2025-01.yaml"}
remove_rules: [tier3-controlled]
rules:
  - id: tier3-controlled
    when: {{effective_tier: [tier3], model_tier: [controlled]}}
    then: {{effect: deny, status: 451, reason: TIER3_CONTROLLED_MODEL}}
"""
    )
    diff = diff_packs(load_pack("aidr-2025-01"), load_pack(path))
    assert diff["rules"]["added"] == diff["rules"]["removed"] == []
    # Behind every rule that is not `last` (the baseline's log rules stay behind it).
    order = diff["rules"]["order"]["b"]
    assert order[order.index("tier3-controlled") - 1] == "origin-worse-than-headquarters"
    assert order.index("tier3-controlled") < order.index("restricted-party-potential")
    assert "order B:" in render_diff(diff)


def test_cli_exit_codes_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", "aidr-2025-01", "aidr-2025-01"]) == 0
    assert "identical" in capsys.readouterr().out
    assert main(["diff", "aidr-2025-01", "aidr-2025-05-rescinded", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["format"] == "aidr-gate.diff/1"
    assert data["a"]["id"] == "aidr-2025-01" and data["b"]["id"] == "aidr-2025-05-rescinded"
    assert main(["diff", "aidr-2025-01", "strict-hypothetical"]) == 1
    assert "Rules" in capsys.readouterr().out


def test_cli_reports_both_bad_packs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", "nope-a", "nope-b"]) == 2
    err = capsys.readouterr().err
    assert "nope-a" in err and "nope-b" in err


@pytest.mark.parametrize(
    "pack_id",
    ["us-embargo-baseline", "aidr-2025-01", "aidr-2025-05-rescinded", "strict-hypothetical"],
)
def test_one_window_for_every_report(pack_id: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``packs``, ``diff`` and replay reports write a pack's window as the digest's canonical form."""
    pack = load_pack(pack_id)
    window = pack.to_dict()["effective"]
    assert pack_window(pack) == window
    assert diff_packs(pack, pack)["a"]["effective"] == window
    text = window_text(window)
    assert text == f"{window['from'] or '-'} .. {window['until'] or '-'}"
    assert main(["packs"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(f"{pack_id} "))
    assert text in line


def rewritten(tmp_path: Path, name: str, *edits: tuple[str, str]) -> Path:
    """A copy of a bundled pack file with each ``(old, new)`` text replaced once."""
    text = (POLICIES / name).read_text()
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return path


CITATION_1 = '  - "90 FR 4544-4584 (2025-01-15), FR Doc 2025-00636, RIN 0694-AJ90"\n'
CITATION_2 = '  - "15 CFR part 740, Supplement No. 5 (country tiers); ECCN 4E091 (model weights)"\n'


def test_reordered_country_lists_and_citations_are_identical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = rewritten(
        tmp_path,
        "aidr-2025-01.yaml",
        ("tier1: [US, AU, BE,", "tier1: [BE, AU, US,"),
        (CITATION_1 + CITATION_2, CITATION_2 + CITATION_1),
    )
    pack, bundled = load_pack(path), load_pack("aidr-2025-01")
    assert pack.digest != bundled.digest  # the digest covers how the pack is written
    diff = diff_packs(bundled, pack)
    assert diff["identical"] is True
    assert "identical (written differently)" in render_diff(diff)
    assert main(["diff", "aidr-2025-01", str(path)]) == 0
    assert "identical" in capsys.readouterr().out


def test_a_changed_pack_id_or_group_title_or_citation_is_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    renamed = rewritten(tmp_path, "aidr-2025-01.yaml", ("id: aidr-2025-01", "id: aidr-copy"))
    diff = diff_packs(load_pack("aidr-2025-01"), load_pack(renamed))
    assert not diff["identical"]
    assert diff["meta"] == [{"field": "id", "a": "aidr-2025-01", "b": "aidr-copy"}]
    assert "  id: aidr-2025-01 -> aidr-copy" in render_diff(diff)

    retitled = rewritten(
        tmp_path,
        "us-embargo-baseline.yaml",
        ('title: "Country Group E:2 (unilateral embargo)"', 'title: "E:2"'),
        (
            'citation: "15 CFR part 740, Supplement No. 1; 22 CFR 126.1"',
            'citation: "22 CFR 126.1"',
        ),
    )
    assert main(["diff", "us-embargo-baseline", str(retitled)]) == 1
    out = capsys.readouterr().out
    for expected in (
        "Country groups",
        "  D5:\n    citation: 15 CFR part 740, Supplement No. 1; 22 CFR 126.1 -> 22 CFR 126.1",
        "  E2:\n    title: Country Group E:2 (unilateral embargo) -> E:2",
    ):
        assert expected in out, expected
    diff = diff_packs(load_pack("us-embargo-baseline"), load_pack(retitled))
    groups = {g["group"]: g for g in diff["groups"]}
    assert groups["E2"]["fields"] == [
        {"field": "title", "a": "Country Group E:2 (unilateral embargo)", "b": "E:2"}
    ]
    assert groups["E2"]["added"] == groups["E2"]["removed"] == groups["E2"]["redated"] == []
