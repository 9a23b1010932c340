"""Owners, aliases, ownership status and screening reviews in the registry file, validated at load."""

from __future__ import annotations

from pathlib import Path

import pytest

from aidr_gate.document import parse_document
from aidr_gate.errors import ConfigError
from aidr_gate.registry import (
    OwnershipStatus,
    ReviewDecision,
    load_registry,
    registry_from_document,
)

VALID = """\
entities:
  holdco-ae:
    name: Gulf Holding Co. LLC
    headquarters: AE
  acme-cy:
    name: Acme Trading Ltd
    aliases: ["Acme Trading Limited", "ООО Акме"]
    headquarters: CY
    owners:
      - {entity: holdco-ae, share: 30}
      - {name: Ivan Petrov, country: RU, share: 25}
    screening_reviews:
      - entry: "sdn:36216"
        decision: false-positive
        by: j.doe
        at: 2026-10-02
        why: a different company (registry number differs)
        name: Acme Trading Ltd
  solo-de:
    headquarters: DE
    ownership: complete
"""


def _problems(text: str) -> list[str]:
    _, check = registry_from_document(parse_document(text, "entities.yaml"))
    return [f"{p.line}: {p.path}: {p.message}" for p in check.errors]


def test_owners_aliases_and_reviews_are_read() -> None:
    registry, check = registry_from_document(parse_document(VALID, "entities.yaml"))
    assert check.errors == []
    acme = registry.get("acme-cy")
    assert acme is not None
    assert acme.aliases == ("Acme Trading Limited", "ООО Акме")
    assert [(o.entity_id, o.name, o.country, o.share) for o in acme.owners] == [
        ("holdco-ae", None, None, 30.0),
        (None, "Ivan Petrov", "RU", 25.0),
    ]
    # Owners listed for 55% only: the rest is not known.
    assert acme.ownership is OwnershipStatus.PARTIAL
    (review,) = acme.screening_reviews
    assert review.entry == "sdn:36216"
    assert review.decision is ReviewDecision.FALSE_POSITIVE
    assert review.to_dict()["at"] == "2026-10-02"
    holdco = registry.get("holdco-ae")
    solo = registry.get("solo-de")
    assert holdco is not None and holdco.ownership is OwnershipStatus.UNKNOWN
    assert solo is not None and solo.ownership is OwnershipStatus.COMPLETE


@pytest.mark.parametrize(
    ("owners", "expected"),
    [
        ("[{entity: ghost, share: 10}]", "4: entities.a.owners[0].entity: no entity 'ghost'"),
        ("[{entity: b, share: 0}]", "must be a percentage in (0, 100], not 0"),
        ("[{entity: b, share: 101}]", "must be a percentage in (0, 100], not 101"),
        ("[{entity: b, share: 60}, {name: X, share: 50}]", "shares add up to more than 100"),
        ("[{entity: b, share: 10}, {entity: b, share: 10}]", "this owner is listed twice"),
        ("[{share: 10}]", "an owner needs an entity (a registry id) or a name"),
        ("[{entity: b, share: 10, percent: 3}]", "owners[0].percent: unknown key"),
    ],
)
def test_bad_owners_are_errors_at_their_line(owners: str, expected: str) -> None:
    text = (
        f"entities:\n  a:\n    headquarters: US\n    owners: {owners}\n  b:\n    headquarters: US\n"
    )
    assert any(expected in problem for problem in _problems(text)), _problems(text)


def test_an_ownership_cycle_is_refused_naming_the_chain() -> None:
    text = """\
entities:
  a: {headquarters: US, owners: [{entity: b, share: 60}]}
  b: {headquarters: US, owners: [{entity: c, share: 60}]}
  c: {headquarters: US, owners: [{entity: a, share: 60}]}
  d: {headquarters: US, owners: [{entity: a, share: 10}]}
"""
    problems = _problems(text)
    assert len(problems) == 1, problems
    assert "ownership cycle: a -> b -> c -> a" in problems[0]
    assert problems[0].startswith("4: entities.c.owners")


def test_a_long_ownership_chain_loads(tmp_path: Path) -> None:
    # Deeper than Python's recursion limit: the cycle check walks iteratively.
    lines = ["entities:"]
    for index in range(3000):
        owner = f", owners: [{{entity: e{index + 1}, share: 100}}]" if index < 2999 else ""
        lines.append(f"  e{index}: {{headquarters: US{owner}}}")
    path = tmp_path / "chain.yaml"
    path.write_text("\n".join(lines) + "\n")
    registry = load_registry(path)
    assert len(registry) == 3000


@pytest.mark.parametrize(
    ("review", "expected"),
    [
        ("{entry: 'sdn:1', decision: maybe, by: x, at: 2026-01-01, why: y}", "is not one of"),
        (
            "{entry: 'sdn:1', decision: confirmed, by: x, why: y}",
            "screening_reviews[0].at: is required",
        ),
        ("{entry: 'sdn:1', decision: confirmed, by: x, at: soon, why: y}", "must be a date"),
    ],
)
def test_bad_reviews_are_errors(review: str, expected: str) -> None:
    text = f"entities:\n  a:\n    headquarters: US\n    screening_reviews: [{review}]\n"
    assert any(expected in problem for problem in _problems(text)), _problems(text)


def test_a_bad_ownership_status_fails_the_load(tmp_path: Path) -> None:
    path = tmp_path / "e.yaml"
    path.write_text("entities:\n  a: {headquarters: US, ownership: mostly}\n")
    with pytest.raises(ConfigError, match="ownership"):
        load_registry(path)
