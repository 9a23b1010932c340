"""Replay against independent decisions: a real trail under aidr-2025-01, re-decided under others.

The trail holds thousands of real decisions (``replay_support``) written through the real audit
trail, rotated and gzip-compressed. Each test decides the same generated requests again, itself,
with :class:`Gate` under the target pack, and checks the replay's counts and flips against that.
"""

from __future__ import annotations

import inspect
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from aidr_gate.catalog import load_catalog
from aidr_gate.decision import Decision, Effect
from aidr_gate.gate import Gate, GateState, state_for
from aidr_gate.policy.engine import PolicyEngine
from aidr_gate.policy.pack import load_pack
from aidr_gate.registry import load_registry
from aidr_gate.replay import ReplayOptions, build_report, replay_files
from aidr_gate.replay.report import bundled_pack_info, direction
from support.environment import POLICIES
from support.policy_cases import t
from support.replay_support import (
    CLAIMS_ONLY,
    KH_LEAVES,
    MODELS,
    NOBODY,
    Request,
    decide,
    gate_for,
    requests,
    write_trail,
)

COUNT = 3000
RANK = {"allow": 0, "log": 1, "deny": 2}


@dataclass(frozen=True)
class Trail:
    """A generated trail: the requests, their recorded decisions and the files."""

    requests: list[Request]
    decisions: list[Decision]
    files: list[Path]


@pytest.fixture(scope="module")
def trail(tmp_path_factory: pytest.TempPathFactory) -> Trail:
    directory = tmp_path_factory.mktemp("trail")
    reqs = requests(COUNT)
    gate = gate_for("aidr-2025-01")
    decisions = [decide(gate, r) for r in reqs]
    files = write_trail(directory, decisions, max_bytes=1 << 20, compress=True)
    return Trail(reqs, decisions, files)


def is_policy(decision: Decision) -> bool:
    """A decision the replay re-decides (not a refusal by a gate stage, not a listing)."""
    return not decision.rule.startswith("gate/")


def redecide(gate: Gate, request: Request, recorded: Decision, at: float | None = None) -> Decision:
    """The independent decision for *request* under *gate*'s pack.

    A denied listing is recorded as the deny for the catalogue's first model (``decide_listing``),
    so that is what it is re-decided as.
    """
    if request.kind == "listing":
        request = replace(request, kind="policy", model=MODELS[0].id)
    if at is not None:
        request = replace(request, at=at)
    return decide(gate, request)


def expected_flips(
    trail: Trail, gate: Gate, at: float | None = None
) -> tuple[Counter[tuple[str, str]], Counter[tuple[str, ...]], dict[str, Decision]]:
    """Transitions, flips by (kind, entity, country, eff. tier, model, model tier, reason)."""
    transitions: Counter[tuple[str, str]] = Counter()
    flips: Counter[tuple[str, ...]] = Counter()
    flipped: dict[str, Decision] = {}
    for request, recorded in zip(trail.requests, trail.decisions, strict=True):
        if not is_policy(recorded):
            continue
        new = redecide(gate, request, recorded, at)
        old_effect, new_effect = recorded.effect.value, new.effect.value
        transitions[(old_effect, new_effect)] += 1
        if old_effect == new_effect:
            continue
        evidence = new.evidence
        assert evidence.facts is not None
        model = evidence.model.id if evidence.model else evidence.model_requested
        reason = new.reasons[0] if RANK[new_effect] > RANK[old_effect] else recorded.reasons[0]
        flips[
            (
                f"{old_effect}->{new_effect}",
                request.entity or "",
                request.country or "(unknown)",
                evidence.facts.effective_tier or "(none)",
                model or "",
                evidence.facts.model_tier,
                reason,
            )
        ] += 1
        flipped[recorded.decision_id] = new
    return transitions, flips, flipped


def reported_flips(report: dict[str, object]) -> Counter[tuple[str, ...]]:
    groups = report["flips"]["groups"]  # type: ignore[index]
    out: Counter[tuple[str, ...]] = Counter()
    for g in groups:
        reason = g["reason"] if RANK[g["to"]] > RANK[g["from"]] else g["reason_before"]
        key = (
            g["kind"],
            g["entity"],
            g["country"],
            g["effective_tier"],
            g["model"],
            g["model_tier"],
            reason,
        )
        out[key] += g["count"]
    return out


def test_the_trail_is_real_rotated_compressed_and_covers_the_matrix(trail: Trail) -> None:
    assert len(trail.files) >= 4
    assert any(p.name.endswith(".jsonl.gz") for p in trail.files)
    policy = [d for d in trail.decisions if is_policy(d)]
    tiers = Counter(d.evidence.facts.effective_tier for d in policy if d.evidence.facts)
    assert {"tier1", "tier2", "tier3"} <= set(tiers)
    assert {Effect.ALLOW, Effect.DENY, Effect.LOG} <= {d.effect for d in policy}
    times = [r.at for r in trail.requests]
    assert min(times) < KH_LEAVES < max(times)
    assert {r.entity for r in trail.requests} >= {CLAIMS_ONLY, NOBODY, "mekong-kh", "nordlys-se"}
    assert any(d.rule == "gate/list-models" for d in trail.decisions)
    assert any(d.rule.startswith("gate/") and d.status in (401, 413) for d in trail.decisions)


def test_replaying_under_the_recorded_pack_changes_nothing(trail: Trail) -> None:
    result = replay_files(trail.files, ReplayOptions(load_pack("aidr-2025-01")))
    tally = result.tally
    assert tally.lines == COUNT
    assert tally.flip_count == 0
    assert not tally.cannot_decide
    assert tally.replayed == sum(1 for d in trail.decisions if is_policy(d))
    # Same effect and the same reason, record by record.
    assert not tally.reason_changes
    assert result.findings == []


@pytest.mark.parametrize("target", ["aidr-2025-05-rescinded", "strict-hypothetical"])
def test_flips_match_independent_decisions(trail: Trail, target: str) -> None:
    gate = gate_for(target)
    transitions, flips, flipped = expected_flips(trail, gate)
    result = replay_files(trail.files, ReplayOptions(load_pack(target)))
    report = build_report(result)

    assert result.tally.transitions == transitions
    assert sum(flips.values()) > 100  # the packs do differ on this traffic
    assert reported_flips(report) == flips
    # Every sample decision id is a real flipped record; first/last bound the flips' times.
    by_id = {d.decision_id: d for d in trail.decisions}
    for group in report["flips"]["groups"]:
        assert group["sample_decision_id"] in flipped
        assert group["first"] <= group["last"]
        recorded = by_id[group["sample_decision_id"]]
        assert (
            group["kind"]
            == f"{recorded.effect.value}->{flipped[recorded.decision_id].effect.value}"
        )

    effects = report["effects"]
    assert effects["before"] == {
        e: sum(n for (o, _), n in transitions.items() if o == e) for e in RANK
    }
    assert effects["after"] == {
        e: sum(n for (_, a), n in transitions.items() if a == e) for e in RANK
    }
    totals = report["totals"]
    assert totals["flips"] == sum(flips.values())
    assert totals["cannot_decide"] == 0
    assert totals["lines"] == COUNT

    refusals = Counter(
        d.reasons[0]
        for d in trail.decisions
        if d.rule.startswith("gate/") and d.rule != "gate/list-models"
    )
    assert {r["reason"]: r["count"] for r in report["gate_refusals"]["by_reason"]} == refusals
    assert report["listings"] == sum(1 for d in trail.decisions if d.rule == "gate/list-models")

    # Dimensions add up to the flips, and the top entity is the one with the most.
    for name in (
        "by_entity",
        "by_country",
        "by_effective_tier",
        "by_model",
        "by_model_tier",
        "by_reason",
    ):
        assert sum(row["total"] for row in report["flips"][name]) == totals["flips"]
    per_entity: Counter[str] = Counter()
    for key, count in flips.items():
        per_entity[key[1]] += count
    top = report["top_entities"][0]
    assert top["flips"] == max(per_entity.values())
    assert top["flips"] == per_entity[top["entity"]]
    assert top["cut_off"] + top["let_in"] + top["log_change"] == top["flips"]

    first = min(r.at for r in trail.requests)
    assert report["range"]["first"].startswith(replay_time(first)[:19]), (
        "the earliest decision time is reported"
    )
    assert report["pack"]["id"] == target
    assert report["recorded_packs"][0]["id"] == "aidr-2025-01"
    assert report["recorded_packs"][0]["effective"] == {"from": "2025-01-13", "until": "2025-05-13"}
    assert report["chain"] == {"ok": True, "errors": 0, "warnings": 0, "findings": []}


def replay_time(seconds: float) -> str:
    from aidr_gate.document import format_timestamp

    return format_timestamp(seconds)


def test_rescission_lets_tier3_locations_in_and_keeps_d5_headquarters_out(trail: Trail) -> None:
    report = build_report(
        replay_files(trail.files, ReplayOptions(load_pack("aidr-2025-05-rescinded")))
    )
    reasons = {row["value"]: row["by_kind"] for row in report["flips"]["by_reason"]}
    # Tier 3 network locations lost their rule: those denies become allows.
    assert reasons["TIER3_CONTROLLED_MODEL"].get("deny->allow", 0) > 0
    # Entities headquartered in D:5 (or whose parent is) stay denied controlled models.
    for group in report["flips"]["groups"]:
        if group["entity"] in ("nordlys-se", "harbour-hk", "macau-mo") and group["to"] == "allow":
            assert group["model_tier"] == "uncontrolled", group


def test_at_redecides_every_record_at_one_date(trail: Trail) -> None:
    at = t("2026-06-01")
    gate = gate_for("aidr-2025-01")
    transitions, flips, _ = expected_flips(trail, gate, at=at)
    result = replay_files(trail.files, ReplayOptions(load_pack("aidr-2025-01"), at=at))
    report = build_report(result)
    assert result.tally.transitions == transitions
    assert reported_flips(report) == flips
    assert report["at"] == "2026-06-01T00:00:00.000Z"
    # Cambodia left D:5 on 2026-02-03: Tier 3 denies of earlier KH requests become Tier 2
    # denies (no valid agreement): same effect, another reason.
    changes = {(r["reason_before"], r["reason"]): r["count"] for r in report["reason_changes"]}
    assert changes[("TIER3_CONTROLLED_MODEL", "NO_VALID_AGREEMENT")] > 0
    # lumen-in's agreement ended on 2025-08-01: what it allowed before is denied in June 2026.
    lumen = [
        g
        for g in report["flips"]["groups"]
        if g["entity"] == "lumen-in" and g["to"] == "deny" and g["reason"] == "NO_VALID_AGREEMENT"
    ]
    assert lumen
    assert all(g["last"] < "2025-08-01" for g in lumen)


REGISTRY = """
entities:
  andes-br:
    headquarters: BR
    agreements:
      - id: SA-BR-1
        type: security-agreement
        status: active
        valid_from: 2025-01-01
        valid_until: 2027-01-01
        model_tiers: [controlled]
        countries: ["*"]
  mekong-kh:
    headquarters: KH
    denied: true
    denied_reason: "added to the host's own list"
  nordlys-se:
    headquarters: SE
  sakura-jp:
    headquarters: JP
    ultimate_parent: CN
"""

CATALOG = """
models:
  aurora-frontier:
    weights: closed
    training_ops: 4.0e26
    aliases: [aurora-frontier-2026-01]
  aurora-mini:
    weights: closed
    tier: controlled
  llama-3.1-405b:
    weights: open
    training_ops: 3.8e25
  mystery-model:
    weights: open
    training_ops: 1.0e24
"""


def test_registry_and_catalog_overrides_match_a_gate_with_them(
    trail: Trail, tmp_path: Path
) -> None:
    (tmp_path / "entities.yaml").write_text(REGISTRY)
    (tmp_path / "models.yaml").write_text(CATALOG)
    registry = load_registry(tmp_path / "entities.yaml")
    catalog = load_catalog(tmp_path / "models.yaml")
    pack = load_pack("aidr-2025-01")
    gate = Gate(GateState(engine=PolicyEngine(pack), registry=registry, catalog=catalog))
    transitions, flips, _ = expected_flips(trail, gate)
    result = replay_files(
        trail.files, ReplayOptions(pack, registry=registry, catalog=catalog, registry_source="x")
    )
    assert result.tally.transitions == transitions
    report = build_report(result)
    assert reported_flips(report) == flips
    assert report["registry"] == "x"
    entities = {row["value"] for row in report["flips"]["by_entity"]}
    # The changed entities flip: BR gains an agreement, KH is now denied, JP's parent is Chinese.
    assert {"andes-br", "mekong-kh", "sakura-jp"} <= entities
    reasons = {row["value"] for row in report["flips"]["by_reason"]}
    assert "ENTITY_DENIED" in reasons


def test_registry_override_only(trail: Trail, tmp_path: Path) -> None:
    (tmp_path / "entities.yaml").write_text(REGISTRY)
    registry = load_registry(tmp_path / "entities.yaml")
    pack = load_pack("strict-hypothetical")
    gate = Gate(
        GateState(
            engine=PolicyEngine(pack),
            registry=registry,
            catalog=state_for(pack, models=list(MODELS)).catalog,
        )
    )
    transitions, flips, _ = expected_flips(trail, gate)
    result = replay_files(trail.files, ReplayOptions(pack, registry=registry))
    assert result.tally.transitions == transitions
    assert reported_flips(build_report(result)) == flips


def test_direction_names() -> None:
    assert [direction(k) for k in ("allow->deny", "log->deny", "deny->allow", "deny->log")] == [
        "cut_off",
        "cut_off",
        "let_in",
        "let_in",
    ]
    assert direction("allow->log") == direction("log->allow") == "log_change"


def test_recorded_pack_titles_come_only_from_bundled_packs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundled = load_pack("aidr-2025-01")
    assert bundled_pack_info("aidr-2025-01", bundled.digest)["title"] == bundled.title
    assert bundled_pack_info("aidr-2025-01", "sha256:other") == {"title": None, "effective": None}
    # A recorded id that is a valid pack id and a file name in the current directory.
    text = (POLICIES / "aidr-2025-01.yaml").read_text()
    (tmp_path / "mine.yaml").write_text(text.replace("id: aidr-2025-01", "id: mine.yaml", 1))
    monkeypatch.chdir(tmp_path)
    mine = load_pack("mine.yaml")
    assert mine.id == "mine.yaml"
    assert bundled_pack_info("mine.yaml", mine.digest) == {"title": None, "effective": None}
    assert bundled_pack_info("AIDR-2025-01", bundled.digest)["title"] is None


def test_build_report_takes_only_the_result_and_top() -> None:
    """The report's generated_at is always the time it is built: the parameter that could set it
    was never passed and is gone."""
    parameters = inspect.signature(build_report).parameters
    assert list(parameters) == ["result", "top"]
