"""Malformed packs, registries, catalogues and configurations: each error names file, key path and problem."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aidr_gate.catalog import load_catalog
from aidr_gate.cli import main
from aidr_gate.errors import ConfigError
from aidr_gate.policy.pack import load_pack
from aidr_gate.registry import load_registry
from aidr_gate.settings.loader import load_config
from support.environment import ROOT
from support.jwks_server import rsa_key

GOOD_PACK = """\
id: test-pack
title: A test pack
status: hypothetical
country_groups:
  G1:
    countries: [IR]
country_tiers:
  order: [low, high]
  default: low
  members:
    high: [CN]
model_tiers:
  tiers:
    - {id: big, weights: closed, min_training_ops: 1.0e26}
    - {id: rest}
rules:
  - id: high-big
    when: {effective_tier: [high], model_tier: [big]}
    then: {effect: deny, status: 451, reason: HIGH_BIG}
default: {effect: allow, reason: ALLOWED}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    """Write a file and return its path."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_good_pack_loads(tmp_path: Path) -> None:
    pack = load_pack(write(tmp_path, "good.yaml", GOOD_PACK))
    assert pack.id == "test-pack"
    assert [r.id for r in pack.rules] == ["high-big"]


# (name, replace-this, with-that, key path expected, message fragment expected)
PACK_CASES: list[tuple[str, str, str, str, str]] = [
    ("yaml-syntax", "title: A test pack", "title: [unclosed", "", "not valid YAML"),
    ("missing-id", "id: test-pack\n", "", "id", "is required"),
    ("bad-id", "id: test-pack", "id: Test Pack!", "id", "not a valid pack id"),
    ("bad-status", "status: hypothetical", "status: draft", "status", "'draft' is not one of"),
    ("typo-top-level-key", "rules:", "rulez:", "rulez", "unknown key"),
    (
        "unknown-condition",
        "effective_tier: [high]",
        "effective_tear: [high]",
        "rules[0].when.effective_tear",
        "unknown key",
    ),
    (
        "deny-without-status",
        "status: 451, reason",
        "reason",
        "rules[0].then.status",
        "a deny needs status",
    ),
    ("deny-status-500", "status: 451", "status: 500", "rules[0].then.status", "not 500"),
    (
        "allow-with-status",
        "{effect: allow, reason",
        "{effect: allow, status: 200, reason",
        "default.status",
        "only a deny",
    ),
    (
        "bad-effect",
        "effect: deny",
        "effect: block",
        "rules[0].then.effect",
        "'block' is not one of",
    ),
    (
        "lower-case-reason",
        "reason: HIGH_BIG",
        "reason: high_big",
        "rules[0].then.reason",
        "not a valid reason code",
    ),
    (
        "unknown-country",
        "high: [CN]",
        "high: [XX]",
        "country_tiers.members.high[0]",
        "'XX' is not an ISO 3166-1",
    ),
    (
        "lower-case-country",
        "high: [CN]",
        "high: [cn]",
        "country_tiers.members.high[0]",
        "use upper case",
    ),
    (
        "unknown-group-in-tier",
        "high: [CN]",
        "high: [{group: D9}]",
        "country_tiers.members.high[0].group",
        "unknown country group",
    ),
    (
        "unknown-tier-in-rule",
        "effective_tier: [high]",
        "effective_tier: [tier9]",
        "rules[0].when.effective_tier[0]",
        "unknown country tier",
    ),
    (
        "unknown-model-tier-in-rule",
        "model_tier: [big]",
        "model_tier: [huge]",
        "rules[0].when.model_tier[0]",
        "unknown model tier",
    ),
    (
        "unknown-anonymizer-flag",
        "model_tier: [big]}",
        "model_tier: [big], anonymizer: [vnp]}",
        "rules[0].when.anonymizer[0]",
        "unknown flag",
    ),
    (
        "tier-not-in-order",
        "    high: [CN]",
        "    middle: [CN]",
        "country_tiers.members.middle",
        "unknown key",
    ),
    (
        "default-tier-not-in-order",
        "default: low",
        "default: medium",
        "country_tiers.default",
        "'medium' is not one of",
    ),
    (
        "last-model-tier-has-threshold",
        "- {id: rest}",
        "- {id: rest, min_training_ops: 1}",
        "model_tiers.tiers",
        "must have no thresholds",
    ),
    (
        "ops-not-a-number",
        "min_training_ops: 1.0e26",
        "min_training_ops: lots",
        "model_tiers.tiers[0].min_training_ops",
        "must be a number",
    ),
    (
        "until-before-from",
        "high: [CN]",
        "high: [{country: CN, from: 2026-01-01, until: 2025-01-01}]",
        "country_tiers.members.high[0].until",
        "must be after",
    ),
    (
        "bad-date",
        "high: [CN]",
        "high: [{country: CN, until: next-tuesday}]",
        "country_tiers.members.high[0].until",
        "must be a date",
    ),
    (
        "duplicate-key",
        "default: low\n",
        "default: low\n  default: high\n",
        "country_tiers.default",
        "more than once",
    ),
    (
        "duplicate-rule-id",
        "default: {effect",
        "  - id: high-big\n    then: {effect: allow, reason: X_Y}\ndefault: {effect",
        "rules[1].id",
        "used twice",
    ),
    (
        "remove-unknown-rule",
        "default: {effect",
        "remove_rules: [nope]\ndefault: {effect",
        "remove_rules[0]",
        "no inherited rule",
    ),
    (
        "extends-missing",
        "status: hypothetical",
        "status: hypothetical\nextends: no-such-pack",
        "extends",
        "no pack 'no-such-pack'",
    ),
    (
        "in-force-without-citation",
        "status: hypothetical",
        "status: in-force",
        "citations",
        "must cite",
    ),
    ("rules-not-a-list", "rules:\n", "rules: {}\nx_rules:\n", "rules", "must be a list"),
    (
        "any-empty",
        "model_tier: [big]}",
        "model_tier: [big], any: []}",
        "rules[0].when.any",
        "must not be empty",
    ),
    (
        "no-default",
        "default: {effect: allow, reason: ALLOWED}\n",
        "",
        "default",
        "no pack in the chain defines a default",
    ),
    (
        "group-condition-unknown",
        "model_tier: [big]}",
        "model_tier: [big], network_group: [E9]}",
        "rules[0].when.network_group[0]",
        "unknown country group",
    ),
    (
        "boolean-condition-not-bool",
        "model_tier: [big]}",
        "model_tier: [big], entity_denied: 'yes'}",
        "rules[0].when.entity_denied",
        "must be true or false",
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "path", "fragment"),
    [c[1:] for c in PACK_CASES],
    ids=[c[0] for c in PACK_CASES],
)
def test_malformed_pack(tmp_path: Path, old: str, new: str, path: str, fragment: str) -> None:
    assert old in GOOD_PACK
    file = write(tmp_path, "pack.yaml", GOOD_PACK.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_pack(file)
    problems = info.value.problems
    assert any(p.path == path and fragment in p.message for p in problems), [
        str(p) for p in problems
    ]
    assert all(p.file == str(file) for p in problems)
    text = str(info.value)
    assert str(file) in text and fragment in text


def test_pack_errors_carry_line_numbers(tmp_path: Path) -> None:
    file = write(tmp_path, "pack.yaml", GOOD_PACK.replace("high: [CN]", "high: [XX]"))
    with pytest.raises(ConfigError) as info:
        load_pack(file)
    (problem,) = info.value.problems
    assert problem.line == GOOD_PACK.splitlines().index("    high: [CN]") + 1
    assert str(problem).startswith(f"{file}:{problem.line}: country_tiers.members.high[0]:")


def test_extends_cycle(tmp_path: Path) -> None:
    body = GOOD_PACK.replace("status: hypothetical", "status: hypothetical\nextends: b.yaml")
    write(tmp_path, "a.yaml", body)
    write(
        tmp_path,
        "b.yaml",
        body.replace("extends: b.yaml", "extends: a.yaml").replace("id: test-pack", "id: b"),
    )
    with pytest.raises(ConfigError, match="cycle"):
        load_pack(tmp_path / "a.yaml")


def test_every_error_is_reported_not_just_the_first(tmp_path: Path) -> None:
    broken = GOOD_PACK.replace("status: hypothetical", "status: nope").replace(
        "high: [CN]", "high: [ZZ]"
    )
    with pytest.raises(ConfigError) as info:
        load_pack(write(tmp_path, "pack.yaml", broken))
    paths = {p.path for p in info.value.problems}
    assert {"status", "country_tiers.members.high[0]"} <= paths


def test_norway_is_a_country_not_false(tmp_path: Path) -> None:
    pack = load_pack(
        write(tmp_path, "pack.yaml", GOOD_PACK.replace("high: [CN]", "high: [CN, NO]"))
    )
    assert pack.tiers is not None
    assert {m.country for m in pack.tiers.members["high"]} == {"CN", "NO"}


GOOD_REGISTRY = """\
entities:
  acme:
    headquarters: SG
    ultimate_parent: US
    agreements:
      - id: SA-1
        type: security-agreement
        status: active
        valid_from: 2025-01-01
        valid_until: 2026-01-01
        model_tiers: [controlled]
        countries: [SG]
"""

REGISTRY_CASES: list[tuple[str, str, str, str, str]] = [
    ("yaml-syntax", "entities:", "entities: [", "", "not valid YAML"),
    (
        "entities-a-list",
        "entities:\n  acme:",
        "entities: []\nx:\n  acme:",
        "entities",
        "must be a mapping",
    ),
    (
        "missing-headquarters",
        "    headquarters: SG\n",
        "",
        "entities.acme.headquarters",
        "is required",
    ),
    (
        "bad-country",
        "headquarters: SG",
        "headquarters: Singapore",
        "entities.acme.headquarters",
        "not an ISO 3166-1",
    ),
    (
        "bad-parent",
        "ultimate_parent: US",
        "ultimate_parent: usa",
        "entities.acme.ultimate_parent",
        "not an ISO 3166-1",
    ),
    (
        "denied-not-bool",
        "    headquarters: SG\n",
        "    headquarters: SG\n    denied: 'yes'\n",
        "entities.acme.denied",
        "must be true or false",
    ),
    (
        "unknown-entity-key",
        "    headquarters: SG\n",
        "    headquarters: SG\n    hq: SG\n",
        "entities.acme.hq",
        "unknown key",
    ),
    (
        "agreement-missing-id",
        "      - id: SA-1\n",
        "      -\n",
        "entities.acme.agreements[0].id",
        "is required",
    ),
    (
        "agreement-bad-status",
        "status: active",
        "status: pending",
        "entities.acme.agreements[0].status",
        "'pending' is not one of",
    ),
    (
        "agreement-bad-type",
        "type: security-agreement",
        "type: handshake",
        "entities.acme.agreements[0].type",
        "'handshake' is not one of",
    ),
    (
        "agreement-bad-date",
        "valid_from: 2025-01-01",
        "valid_from: soon",
        "entities.acme.agreements[0].valid_from",
        "must be a date",
    ),
    (
        "agreement-window-backwards",
        "valid_until: 2026-01-01",
        "valid_until: 2024-01-01",
        "entities.acme.agreements[0].valid_until",
        "must be after",
    ),
    (
        "agreement-countries-not-list",
        "countries: [SG]",
        "countries: SG",
        "entities.acme.agreements[0].countries",
        "must be a list",
    ),
    (
        "agreement-countries-empty",
        "countries: [SG]",
        "countries: []",
        "entities.acme.agreements[0].countries",
        "must not be empty",
    ),
    (
        "agreement-bad-tier",
        "model_tiers: [controlled]",
        "model_tiers: [Controlled Tier]",
        "entities.acme.agreements[0].model_tiers[0]",
        "not a valid tier",
    ),
    (
        "agreement-unknown-key",
        "        status: active\n",
        "        status: active\n        state: active\n",
        "entities.acme.agreements[0].state",
        "unknown key",
    ),
    (
        "agreement-duplicate-id",
        "        countries: [SG]\n",
        "        countries: [SG]\n      - {id: SA-1, type: uveu, status: active}\n",
        "entities.acme.agreements[1].id",
        "used twice",
    ),
    (
        "agreements-not-list",
        "    agreements:\n",
        "    agreements: none\n    x:\n",
        "entities.acme.agreements",
        "must be a list",
    ),
    ("top-level-unknown", "entities:", "entitys:", "entitys", "unknown key"),
]


@pytest.mark.parametrize(
    ("old", "new", "path", "fragment"),
    [c[1:] for c in REGISTRY_CASES],
    ids=[c[0] for c in REGISTRY_CASES],
)
def test_malformed_registry(tmp_path: Path, old: str, new: str, path: str, fragment: str) -> None:
    assert old in GOOD_REGISTRY
    file = write(tmp_path, "entities.yaml", GOOD_REGISTRY.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_registry(file)
    problems = info.value.problems
    assert any(p.path == path and fragment in p.message for p in problems), [
        str(p) for p in problems
    ]
    assert str(file) in str(info.value)


def test_good_registry_loads(tmp_path: Path) -> None:
    registry = load_registry(write(tmp_path, "entities.yaml", GOOD_REGISTRY))
    entity = registry.get("acme")
    assert entity is not None and entity.ultimate_parent == "US"
    assert entity.agreements[0].countries == frozenset({"SG"})


GOOD_CATALOG = """\
models:
  big-model:
    weights: closed
    training_ops: 2.0e26
    aliases: [big]
  small-model:
    weights: open
    training_ops: 1e24
"""

CATALOG_CASES: list[tuple[str, str, str, str, str]] = [
    ("yaml-syntax", "models:", "models: {", "", "not valid YAML"),
    (
        "models-a-list",
        "models:\n  big-model:",
        "models: []\nx:\n  big-model:",
        "models",
        "must be a mapping",
    ),
    ("missing-weights", "    weights: closed\n", "", "models.big-model.weights", "is required"),
    (
        "bad-weights",
        "weights: closed",
        "weights: secret",
        "models.big-model.weights",
        "'secret' is not one of",
    ),
    (
        "negative-ops",
        "training_ops: 2.0e26",
        "training_ops: -5",
        "models.big-model.training_ops",
        "at least 0",
    ),
    (
        "text-ops",
        "training_ops: 2.0e26",
        "training_ops: many",
        "models.big-model.training_ops",
        "must be a number",
    ),
    (
        "nan-ops",
        "training_ops: 2.0e26",
        "training_ops: .nan",
        "models.big-model.training_ops",
        "must be a number",
    ),
    (
        "infinite-ops",
        "training_ops: 2.0e26",
        "training_ops: .inf",
        "models.big-model.training_ops",
        "must be a number",
    ),
    (
        "no-ops-no-tier",
        "    training_ops: 2.0e26\n",
        "",
        "models.big-model.training_ops",
        "is required unless",
    ),
    (
        "alias-clash",
        "training_ops: 1e24",
        "training_ops: 1e24\n    aliases: [BIG]",
        "models.small-model",
        "already used",
    ),
    (
        "alias-not-text",
        "aliases: [big]",
        "aliases: [42]",
        "models.big-model.aliases[0]",
        "non-empty string",
    ),
    (
        "aliases-not-list",
        "aliases: [big]",
        "aliases: big",
        "models.big-model.aliases",
        "must be a list",
    ),
    (
        "unknown-key",
        "weights: closed",
        "weights: closed\n    params: 7",
        "models.big-model.params",
        "unknown key",
    ),
    (
        "bad-tier",
        "weights: closed",
        "weights: closed\n    tier: Top Tier",
        "models.big-model.tier",
        "not a valid tier",
    ),
    ("duplicate-model", "  small-model:", "  big-model:", "models.big-model", "more than once"),
    (
        "name-too-long",
        "  small-model:",
        "  " + "m" * 300 + ":",
        "models." + "m" * 300,
        "at most 256",
    ),
    ("top-level-unknown", "models:", "modles:", "modles", "unknown key"),
]


@pytest.mark.parametrize(
    ("old", "new", "path", "fragment"),
    [c[1:] for c in CATALOG_CASES],
    ids=[c[0] for c in CATALOG_CASES],
)
def test_malformed_catalog(tmp_path: Path, old: str, new: str, path: str, fragment: str) -> None:
    assert old in GOOD_CATALOG
    file = write(tmp_path, "models.yaml", GOOD_CATALOG.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_catalog(file)
    problems = info.value.problems
    assert any(p.path == path and fragment in p.message for p in problems), [
        str(p) for p in problems
    ]
    assert str(file) in str(info.value)


@pytest.mark.parametrize("loader", [load_pack, load_registry, load_catalog, load_config])
def test_unreadable_files(tmp_path: Path, loader: object) -> None:
    assert callable(loader)
    missing = tmp_path / "missing.yaml"
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    for path, fragment in ((missing, ""), (binary, "not UTF-8"), (empty, "")):
        with pytest.raises(ConfigError) as info:
            loader(path)
        assert fragment in str(info.value)
        assert str(path) in str(info.value) or loader is load_pack


def test_config_errors_name_the_config(tmp_path: Path) -> None:
    file = write(
        tmp_path,
        "config.yaml",
        """\
        policy: {pack: aidr-2025-01, shadw: x}
        mode: enforcing
        registry: entities.yaml
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(file)
    paths = {p.path for p in info.value.problems}
    assert {"policy.shadw", "mode", "catalog"} <= paths


def test_cli_reports_problems_without_traceback(tmp_path: Path) -> None:
    pack = write(tmp_path, "pack.yaml", GOOD_PACK.replace("status: hypothetical", "status: bogus"))
    config = write(
        tmp_path,
        "config.yaml",
        f"policy: {{pack: {pack}}}\nregistry: entities.yaml\ncatalog: models.yaml\n",
    )
    write(tmp_path, "entities.yaml", GOOD_REGISTRY.replace("headquarters: SG", "headquarters: ZZ"))
    write(tmp_path, "models.yaml", GOOD_CATALOG)
    result = subprocess.run(
        [sys.executable, "-m", "aidr_gate", "validate", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{pack}:3: status: 'bogus' is not one of" in result.stderr
    assert "entities.acme.headquarters: 'ZZ' is not an ISO 3166-1" in result.stderr


def test_validate_warns_about_legal_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "issuer.pem").write_bytes(rsa_key().public_pem())
    examples = ROOT / "policies" / "examples"
    config = write(
        tmp_path,
        "config.yaml",
        f"""\
        policy: aidr-2025-01
        registry: {examples / "entities.yaml"}
        catalog: {examples / "models.yaml"}
        identity: {{issuer: x, audience: y, algorithms: [RS256], key_file: issuer.pem}}
        audit: {{directory: {tmp_path / "audit"}}}
        """,
    )
    assert main(["validate", "--config", str(config), "--at", "2026-06-01"]) == 0
    captured = capsys.readouterr()
    assert "warning:" in captured.err and "does not cover 2026-06-01" in captured.err
    assert main(["validate", "--config", str(config), "--at", "2025-03-01"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_validate_refuses_what_serving_refuses(capsys: pytest.CaptureFixture[str]) -> None:
    """The embedded example has no identity: section; serve and the middleware refuse it."""
    assert main(["validate"]) == 2
    assert "identity: is required to verify tokens" in capsys.readouterr().err
