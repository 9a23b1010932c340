"""Synthetic registries for tests and bench/registry.py, in the format of policies/examples/entities.yaml.

Entities are generated from their index alone, so a test can name entity 12345 and know what it holds:
a third hold an agreement (of every status), some have a foreign ultimate parent, a few are denied.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from aidr_gate.registry import Agreement, AgreementStatus, Entity

_COUNTRIES = ("US", "JP", "SG", "BR", "IN", "AE", "MY", "SE", "DE", "FR", "CN", "GB", "KR", "MX")
_STATUSES = tuple(AgreementStatus)
_TYPES = ("security-agreement", "nveu", "uveu", "license", "contract")
_DAY = 86_400.0
_START = 1_735_689_600.0  # 2025-01-01


def entity_id(index: int) -> str:
    """The id of synthetic entity *index*."""
    return f"org-{index:07d}"


def synthetic_entity(index: int) -> Entity:
    """Synthetic entity *index*: every third holds one agreement."""
    hq = _COUNTRIES[index % len(_COUNTRIES)]
    parent = "CN" if index % 17 == 0 else None
    agreements: tuple[Agreement, ...] = ()
    if index % 3 == 0:
        start = _START + (index % 365) * _DAY
        agreements = (
            Agreement(
                id=f"AG-{index:07d}",
                type=_TYPES[index % len(_TYPES)],
                status=_STATUSES[(index // 3) % len(_STATUSES)],
                valid_from=start,
                valid_until=start + 730 * _DAY,
                model_tiers=frozenset({"controlled"}),
                countries=frozenset({hq}),
            ),
        )
    denied = index % 101 == 0
    return Entity(
        id=entity_id(index),
        headquarters=hq,
        parent=parent,
        name=f"Organisation {index} Ltd",
        denied=denied,
        denied_reason="listed party" if denied else None,
        agreements=agreements,
    )


def synthetic_entities(count: int) -> Iterator[Entity]:
    """Entities 0 to *count* - 1."""
    return (synthetic_entity(index) for index in range(count))


def _date(seconds: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).date().isoformat()


def write_yaml_registry(path: Path, count: int) -> Path:
    """Write *count* synthetic entities as a YAML registry, laid out as the example is."""
    with path.open("w", encoding="utf-8") as out:
        out.write("version: 1\nentities:\n")
        for entity in synthetic_entities(count):
            out.write(f"  {entity.id}:\n    name: {entity.name}\n")
            out.write(f"    headquarters: {entity.headquarters}\n")
            if entity.parent is not None:
                out.write(f"    ultimate_parent: {entity.parent}\n")
            if entity.denied:
                out.write(f"    denied: true\n    denied_reason: {entity.denied_reason}\n")
            for agreement in entity.agreements:
                assert agreement.valid_from is not None and agreement.valid_until is not None
                out.write("    agreements:\n")
                out.write(f"      - id: {agreement.id}\n        type: {agreement.type}\n")
                out.write(f"        status: {agreement.status.value}\n")
                out.write(f"        valid_from: {_date(agreement.valid_from)}\n")
                out.write(f"        valid_until: {_date(agreement.valid_until)}\n")
                out.write(f"        model_tiers: [{', '.join(sorted(agreement.model_tiers))}]\n")
                out.write(f"        countries: [{', '.join(sorted(agreement.countries))}]\n")
    return path


async def until(predicate: Callable[[], object], timeout: float) -> bool:
    """Poll *predicate* until it is true or *timeout* passes; its last answer, as a bool."""
    deadline = time.monotonic() + timeout
    # An effect of another process (a database, a file): there is no event to wait on.
    while not predicate() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    return bool(predicate())
