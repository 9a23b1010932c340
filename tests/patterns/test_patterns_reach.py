"""Count thresholds beyond ``patterns.max_distinct``: raised so the rule can fire, and said.

A pack and a configuration written to files, the real ``aidr-gate`` console script run on them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from aidr_gate.catalog import Model, Weights
from aidr_gate.decision import Effect
from aidr_gate.facts import CountrySource, Identity, Origin
from aidr_gate.gate import Gate, state_for
from aidr_gate.patterns.conditions import items_needed
from aidr_gate.patterns.settings import PatternSettings
from aidr_gate.patterns.signals import MAX_DISTINCT
from aidr_gate.patterns.tracker import PatternTracker
from aidr_gate.policy.pack import load_pack
from aidr_gate.registry import Entity
from support.environment import EXAMPLES

T0 = 1_767_225_600.0  # 2026-01-01
SMALL = Model("small", training_ops=1e22, weights=Weights.CLOSED)
RULE = """id: wide-reseller
title: A reseller fronting a hundred entities
status: hypothetical
extends: aidr-2025-01
rules:
  - id: reseller-network
    description: One network prefix fronting a hundred entities within an hour (logged).
    when:
      network_entities_1h: %s
    then: {effect: log, reason: INTERMEDIARY_SUSPECTED}
"""
WHEN_LINE = 9  # the line of ``network_entities_1h`` in RULE


def _files(tmp_path: Path, threshold: str, section: str = "") -> tuple[Path, Path]:
    pack = tmp_path / "wide.yaml"
    pack.write_text(RULE % threshold)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # made for the test
    (tmp_path / "issuer.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        f"policy: {pack}\nregistry: {EXAMPLES / 'entities.yaml'}\n"
        f"catalog: {EXAMPLES / 'models.yaml'}\n"
        "identity: {issuer: x, audience: y, algorithms: [RS256], key_file: issuer.pem}\n"
        f"{section}"
    )
    return pack, config


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("aidr-gate")
    env = {k: v for k, v in os.environ.items() if k != "AIDR_GATE_CONFIG"}
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, check=False, env=env, timeout=60
    )


@pytest.mark.parametrize(
    ("operator", "threshold", "needed"),
    [("at_least", 100, 100), ("more_than", 100, 101), ("at_most", 2.5, 3), ("less_than", 2.5, 3)],
)
def test_items_needed_tell_the_threshold_apart(
    operator: str, threshold: float, needed: int
) -> None:
    assert items_needed(operator, threshold) == needed


def test_validate_names_the_rule_and_the_bound_it_raised(tmp_path: Path) -> None:
    pack, config = _files(tmp_path, "{at_least: 100}")
    result = _cli("validate", "--config", str(config))
    assert result.returncode == 0, result.stderr
    warning = next(line for line in result.stderr.splitlines() if "max_distinct" in line)
    assert warning.startswith(f"warning: {pack}:{WHEN_LINE}: rules[0].when.network_entities_1h:")
    assert "at_least 100 needs 100 distinct items per key" in warning
    assert "more than patterns.max_distinct (64)" in warning
    assert "each network key holds up to 100" in warning and "KiB per key" in warning
    report = json.loads(_cli("validate", "--config", str(config), "--json").stdout)
    (found,) = [w for w in report["warnings"] if "max_distinct" in w["message"]]
    assert (found["file"], found["line"]) == (str(pack), WHEN_LINE)


def test_check_says_it_too(tmp_path: Path) -> None:
    _, config = _files(tmp_path, "{at_least: 100}")
    args = ("check", "--config", str(config), "--entity", "lab-us", "--country", "US")
    result = _cli(*args, "--model", "embed-small")
    assert result.returncode == 0, result.stderr
    assert "needs 100 distinct items per key" in result.stderr
    assert json.loads(result.stdout)["effect"] == "allow"


def test_a_configured_bound_that_covers_the_rule_is_quiet(tmp_path: Path) -> None:
    _, config = _files(tmp_path, "{at_least: 100}", "patterns:\n  max_distinct: 128\n")
    result = _cli("validate", "--config", str(config))
    assert result.returncode == 0 and "max_distinct" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("threshold", "message"),
    [
        (str(MAX_DISTINCT + 1), f"counts stop at {MAX_DISTINCT} distinct items per key"),
        (f"{{more_than: {MAX_DISTINCT}}}", f"more_than {MAX_DISTINCT} could never be decided"),
    ],
)
def test_a_threshold_no_bound_reaches_is_an_error(
    tmp_path: Path, threshold: str, message: str
) -> None:
    pack, config = _files(tmp_path, threshold)
    result = _cli("validate", "--config", str(config))
    assert result.returncode == 2
    assert f"{pack}:{WHEN_LINE}" in result.stderr and message in result.stderr


def test_a_share_above_one_is_an_error(tmp_path: Path) -> None:
    pack, config = _files(tmp_path, "1")
    pack.write_text(RULE.replace("network_entities_1h: %s", "anonymizer_share_1h: 50"))
    result = _cli("validate", "--config", str(config))
    assert result.returncode == 2
    assert "a share is between 0 and 1, not 50" in result.stderr


def test_the_rule_fires_on_the_hundredth_entity(tmp_path: Path) -> None:
    pack, _ = _files(tmp_path, "{at_least: 100}")
    entities = [Entity(f"org{i}", "US") for i in range(101)]
    gate = Gate(state_for(load_pack(pack), entities=entities, models=[SMALL]))
    assert gate.patterns.capacity == 64 and gate.patterns.capacity_of("network") == 100
    effects = []
    for i, entity in enumerate(entities):
        decision = gate.decide(
            identity=Identity(entity.id, subject="svc"),
            origin=Origin(
                ip=f"203.0.113.{i + 1}", country="US", country_source=CountrySource.GEOIP
            ),
            model_id="small",
            at=T0 + i,
        )
        effects.append(decision.effect)
    assert effects[98] is Effect.ALLOW and effects[99] is Effect.LOG  # the hundredth entity
    assert decision.evidence.signals == {"network_entities_1h": 100}  # held at 100, not 101
    # Bounded still: the other subjects keep the configured bound.
    assert gate.patterns.capacity_of("token") == 64


def test_a_tracker_without_those_rules_keeps_the_configured_bound() -> None:
    tracker = PatternTracker(PatternSettings(max_distinct=8), wanted=["network_entities_1h"])
    for i in range(20):
        got = tracker.observe(
            T0 + i, Identity(f"org{i}", subject="s"), Origin(ip="203.0.113.9", country="US"), False
        )
    assert got == {"network_entities_1h": 8}  # saturated at the bound
