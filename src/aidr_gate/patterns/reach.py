"""How many distinct items a pack's count tests need each key to hold, and who asked for more.

Distinct counts (``origin_countries``, ``network_entities``...) are exact up to the number of items
a key holds and saturate there. A threshold beyond it can never be decided right: with 64 held,
``at_least: 100`` never holds and ``at_most: 100`` always does. A rule that silently never fires
is the worst outcome for the compliance officer who wrote it, so the tracker holds, per subject,
as many items as the largest threshold its packs test (:func:`capacities`; at most
:data:`~aidr_gate.patterns.signals.MAX_DISTINCT`, which the pack reader refuses thresholds
beyond), and ``validate``/``check`` name each rule that raised ``patterns.max_distinct``, at its
``file:line`` (:func:`capacity_warnings`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aidr_gate.document import load_document
from aidr_gate.errors import ConfigError, Problem
from aidr_gate.patterns.conditions import items_needed
from aidr_gate.patterns.signals import MAX_DISTINCT, Measure, parse_signal_key

if TYPE_CHECKING:
    from aidr_gate.policy.schema import Condition, Pack, Rule

_COUNTS = (Measure.COUNTRIES, Measure.ENTITIES)
# Memory per distinct item a key holds, about: its entry in the key's dict (the item's string is
# the request's own), its slot in that dict's table and its time in the row's buffer
# (``bench/patterns.py`` measures the rows; README "Bounded state").
BYTES_PER_ITEM = 48


@dataclass(frozen=True, slots=True)
class Need:
    """One count test of a pack and the items it needs each key of its subject to hold."""

    signal: str  # origin_countries_1h
    subject: str  # a Subject
    items: int
    test: str  # "at_least 100"
    rule: str  # the rule's id
    pack: str  # the pack that defined the rule


def distinct_needs(packs: Iterable[Pack]) -> list[Need]:
    """Every count test of *packs*' rules (``any`` branches included) with what it needs."""
    out: list[Need] = []
    for pack in packs:
        for rule in pack.rules:
            out.extend(_needs(rule, rule.when))
    return out


def _needs(rule: Rule, condition: Condition) -> Iterator[Need]:
    for key, value in condition.tests:
        parsed = parse_signal_key(key)
        if parsed is None or parsed.family.measure not in _COUNTS or not isinstance(value, dict):
            continue
        for operator, threshold in value.items():
            yield Need(
                key,
                parsed.family.subject,
                items_needed(operator, threshold),
                f"{operator} {threshold:g}",
                rule.id,
                rule.pack,
            )
    for branch in condition.any_of:
        yield from _needs(rule, branch)


def capacities(needs: Iterable[Need], max_distinct: int) -> dict[str, int]:
    """Items held per key for each subject some need raises above *max_distinct*."""
    out: dict[str, int] = {}
    for need in needs:
        if need.items > max(max_distinct, out.get(need.subject, 0)):
            out[need.subject] = min(need.items, MAX_DISTINCT)
    return out


def capacity_warnings(packs: Iterable[Pack], max_distinct: int) -> list[Problem]:
    """One warning per count test that needs more than ``patterns.max_distinct`` items, at the
    rule's ``file:line``: what was raised, to how much, and the memory bound that follows."""
    packs = list(packs)
    needs = distinct_needs(packs)
    raised = capacities(needs, max_distinct)
    out: list[Problem] = []
    for need in needs:
        if need.items <= max_distinct:
            continue
        held = raised[need.subject]
        file, path, line = _locate(packs, need)
        out.append(
            Problem(
                file,
                path,
                f"{need.signal} {need.test} needs {need.items} distinct items per key, more "
                f"than patterns.max_distinct ({max_distinct}): each {need.subject} key holds up "
                f"to {held} (about {held * BYTES_PER_ITEM // 1024 or 1} KiB per key at most, "
                f"times patterns.max_keys keys); patterns.max_distinct: {held} (every "
                "subject) says so in the configuration and silences this",
                line,
                severity="warning",
            )
        )
    return out


def _locate(packs: list[Pack], need: Need) -> tuple[str, str, int | None]:
    """The file, key path and line of *need*'s rule (its ``when`` key when it is at the top)."""
    for pack in packs:
        # ``extends`` is nearest first, ``files`` root first: the same chain both ways.
        ids = (*reversed(pack.extends), pack.id)
        files: Mapping[str, str] = dict(zip(ids, pack.files, strict=False))
        file = files.get(need.pack)
        if file is None:
            continue
        try:
            document = load_document(file)
        except ConfigError:
            return file, f"rules.{need.rule}", None
        rules: Any = document.data.get("rules") if isinstance(document.data, dict) else None
        for index, raw in enumerate(rules if isinstance(rules, list) else []):
            if isinstance(raw, dict) and raw.get("id") == need.rule:
                for path in (f"rules[{index}].when.{need.signal}", f"rules[{index}].when"):
                    if path in document.lines:
                        return file, path, document.lines[path]
                return file, f"rules[{index}]", document.lines.get(f"rules[{index}]")
        return file, f"rules.{need.rule}", None
    return need.pack, f"rules.{need.rule}", None
