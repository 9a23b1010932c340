"""Reading one pack file: its top keys, groups, tiers, conditions and outcomes.

Each problem is recorded on the file's :class:`~aidr_gate.document.Checker` as
``file:line: key.path: what is wrong``; merging the files of an ``extends`` chain is
:mod:`aidr_gate.policy.extends`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aidr_gate.catalog import Weights
from aidr_gate.document import Checker, Document, join
from aidr_gate.facts import AnonymizerFlag
from aidr_gate.outcome import Effect, Outcome
from aidr_gate.patterns.conditions import pattern_keys_in, read_pattern_test
from aidr_gate.patterns.signals import is_pattern_key
from aidr_gate.policy.reach import (
    REGION_KEYS,
    SCREENING_KEYS,
    RegionGroup,
    read_reach_test,
)
from aidr_gate.policy.schema import (
    DENY_STATUSES,
    PACK_STATUSES,
    Condition,
    CountryGroup,
    Membership,
    ModelTier,
    ModelTiers,
    TierTable,
)
from aidr_gate.registry import AgreementState

# Group ids follow the EAR's names where they exist ("E1", "D5"), hence upper case and colons.
_GROUP_ID = re.compile(r"^[A-Za-z][A-Za-z0-9:_-]{0,31}$")

_TOP_KEYS = (
    "id",
    "title",
    "status",
    "status_history",
    "citations",
    "effective",
    "extends",
    "notes",
    "country_groups",
    "region_groups",
    "country_tiers",
    "model_tiers",
    "agreements",
    "rules",
    "remove_rules",
    "default",
)


# --- conditions --------------------------------------------------------------------------------

_TIER_FACTS = ("effective_tier", "network_tier", "headquarters_tier", "parent_tier")
_COUNTRY_FACTS = ("network_country", "headquarters_country", "parent_country")
_GROUP_FACTS = ("network_group", "headquarters_group", "parent_group", "any_group")
_BOOL_FACTS = (
    "network_country_unknown",
    "headquarters_unknown",
    "model_known",
    "entity_known",
    "entity_denied",
    "agreement_valid",
    "origin_worse_than_headquarters",
)
CONDITION_KEYS: tuple[str, ...] = (
    *_TIER_FACTS,
    *_COUNTRY_FACTS,
    *_GROUP_FACTS,
    *_BOOL_FACTS,
    "anonymizer",
    "model_tier",
    "model_weights",
    "agreement",
    *SCREENING_KEYS,
    *REGION_KEYS,
    "any",
)


@dataclass(slots=True)
class RuleContext:
    """What a rule may refer to once the pack chain is merged."""

    tier_ids: tuple[str, ...]
    group_ids: frozenset[str]
    model_tier_ids: tuple[str, ...]
    region_groups: Mapping[str, RegionGroup] = field(default_factory=dict)


def read_id_set(
    check: Checker, raw: Any, path: str, known: Sequence[str] | frozenset[str], what: str
) -> frozenset[str] | None:
    items = [raw] if isinstance(raw, str) else check.sequence(raw, path, allow_empty=False)
    if items is None:
        return None
    out: set[str] = set()
    for index, item in enumerate(items):
        item_path = path if isinstance(raw, str) else join(path, index)
        if not isinstance(item, str) or item not in known:
            options = ", ".join(sorted(known)) or "none defined"
            check.error(item_path, f"unknown {what} {item!r} (known: {options})")
            continue
        out.add(item)
    return frozenset(out)


def read_condition(
    check: Checker, raw: Any, path: str, ctx: RuleContext, depth: int = 0
) -> Condition:
    # Pattern signals (``origin_countries_1h``...) are named with their window: ``patterns/``.
    keys = (*CONDITION_KEYS, *pattern_keys_in(raw))
    data = check.mapping(raw, path, keys=keys) if raw is not None else {}
    tests: list[tuple[str, Any]] = []
    any_of: list[Condition] = []
    for key, value in (data or {}).items():
        key_path = join(path, key)
        if key == "any":
            any_of.extend(_read_any(check, value, key_path, ctx, depth))
            continue
        got = _test_reader(key)(check, key, value, key_path, ctx)
        if got is not None:
            tests.append((key, got))
    return Condition(tuple(sorted(tests, key=lambda kv: kv[0])), tuple(any_of))


def _read_any(
    check: Checker, value: Any, key_path: str, ctx: RuleContext, depth: int
) -> list[Condition]:
    if depth >= 3:
        check.error(key_path, "'any' may nest at most three deep")
        return []
    branches = check.sequence(value, key_path, allow_empty=False) or []
    return [
        read_condition(check, branch, join(key_path, index), ctx, depth + 1)
        for index, branch in enumerate(branches)
    ]


# Each reader takes (check, key, value, key path, context) and gives the test's value (None: none).
_TestReader = Callable[[Checker, str, Any, str, RuleContext], Any]


def _tier_test(check: Checker, key: str, value: Any, key_path: str, ctx: RuleContext) -> Any:
    got = read_id_set(check, value, key_path, ctx.tier_ids, "country tier")
    if not ctx.tier_ids:
        check.error(key_path, "the pack defines no country_tiers to test")
    return got


def _country_test(check: Checker, key: str, value: Any, key_path: str, ctx: RuleContext) -> Any:
    items = [value] if isinstance(value, str) else check.sequence(value, key_path)
    return frozenset(
        c for i, v in enumerate(items or []) if (c := check.country(v, join(key_path, i)))
    )


def _group_test(check: Checker, key: str, value: Any, key_path: str, ctx: RuleContext) -> Any:
    return read_id_set(check, value, key_path, ctx.group_ids, "country group")


def _bool_test(check: Checker, key: str, value: Any, key_path: str, ctx: RuleContext) -> Any:
    return check.boolean(value, key_path)


def _anonymizer_test(check: Checker, key: str, value: Any, key_path: str, ctx: RuleContext) -> Any:
    # ``true``: any flag; ``false``: no flag at all (the empty set); a list: any of those.
    if isinstance(value, bool):
        return frozenset(f.value for f in AnonymizerFlag) if value else frozenset()
    return read_id_set(check, value, key_path, [f.value for f in AnonymizerFlag], "flag")


def _model_tier_test(check: Checker, key: str, value: Any, key_path: str, ctx: RuleContext) -> Any:
    return read_id_set(check, value, key_path, ctx.model_tier_ids, "model tier")


def _weights_test(check: Checker, key: str, value: Any, key_path: str, ctx: RuleContext) -> Any:
    return check.string(value, key_path, choices=[w.value for w in Weights])


def _agreement_test(check: Checker, key: str, value: Any, key_path: str, ctx: RuleContext) -> Any:
    return read_id_set(check, value, key_path, [s.value for s in AgreementState], "agreement state")


def _pattern_test(check: Checker, key: str, value: Any, key_path: str, ctx: RuleContext) -> Any:
    return read_pattern_test(check, key, value, key_path)


def _reach_test(check: Checker, key: str, value: Any, key_path: str, ctx: RuleContext) -> Any:
    return read_reach_test(check, key, value, key_path, ctx.region_groups)


def _no_test(check: Checker, key: str, value: Any, key_path: str, ctx: RuleContext) -> Any:
    return None


_TEST_READERS: dict[str, _TestReader] = {
    **dict.fromkeys(_TIER_FACTS, _tier_test),
    **dict.fromkeys(_COUNTRY_FACTS, _country_test),
    **dict.fromkeys(_GROUP_FACTS, _group_test),
    **dict.fromkeys(_BOOL_FACTS, _bool_test),
    "anonymizer": _anonymizer_test,
    "model_tier": _model_tier_test,
    "model_weights": _weights_test,
    "agreement": _agreement_test,
    **dict.fromkeys(SCREENING_KEYS, _reach_test),
    **dict.fromkeys(REGION_KEYS, _reach_test),
}


def _test_reader(key: str) -> _TestReader:
    """The reader of a condition key: a fixed key's, or a pattern signal's (named by window)."""
    if key in _TEST_READERS:
        return _TEST_READERS[key]
    return _pattern_test if is_pattern_key(key) else _no_test


def read_outcome(check: Checker, raw: Any, path: str, rule_id: str) -> Outcome | None:
    data = check.mapping(
        raw, path, keys=("effect", "status", "reason"), required=("effect", "reason")
    )
    if data is None:
        return None
    effect = check.string(
        data.get("effect"), join(path, "effect"), choices=[e.value for e in Effect]
    )
    reason = check.reason(data.get("reason"), join(path, "reason"))
    status: int | None = None
    if effect == Effect.DENY.value:
        raw_status = data.get("status")
        if raw_status not in DENY_STATUSES:
            check.error(
                join(path, "status"),
                f"a deny needs status 401, 403 or 451, not {raw_status!r}",
            )
            return None
        status = int(raw_status)
    elif data.get("status") is not None:
        check.error(join(path, "status"), f"only a deny carries a status (this is {effect!r})")
        return None
    if effect is None or reason is None:
        return None
    return Outcome(Effect(effect), status, reason, rule_id)


# --- one file, before merging ----------------------------------------------------------------------


@dataclass(slots=True)
class RawPack:
    """One pack file read for its structure; rule conditions wait until the chain is merged."""

    check: Checker
    id: str
    extends: str | None
    data: dict[str, Any]


def _read_memberships(
    check: Checker, raw: Any, path: str, groups: Mapping[str, CountryGroup] | None
) -> tuple[Membership, ...]:
    out: list[Membership] = []
    for index, item in enumerate(check.sequence(raw, path) or []):
        item_path = join(path, index)
        if isinstance(item, str):
            code = check.country(item, item_path)
            if code:
                out.append(Membership(code))
            continue
        out.extend(_read_dated_membership(check, item, item_path, groups))
    return tuple(out)


_MEMBERSHIP_KEYS = ("country", "group", "from", "until", "note")


def _read_dated_membership(
    check: Checker, item: Any, item_path: str, groups: Mapping[str, CountryGroup] | None
) -> list[Membership]:
    """A ``{country | group, from, until}`` entry: a group gives its members within both windows."""
    data = check.mapping(item, item_path, keys=_MEMBERSHIP_KEYS)
    if data is None:
        return []
    since = check.instant(data["from"], join(item_path, "from")) if "from" in data else None
    until = check.instant(data["until"], join(item_path, "until")) if "until" in data else None
    if since is not None and until is not None and until <= since:
        check.error(join(item_path, "until"), "must be after 'from'")
    if ("country" in data) == ("group" in data):
        check.error(item_path, "give exactly one of 'country' or 'group'")
        return []
    if "country" in data:
        code = check.country(data["country"], join(item_path, "country"))
        return [Membership(code, since, until)] if code else []
    group_id = data["group"]
    if groups is None:
        check.error(join(item_path, "group"), "groups can be referenced only from country_tiers")
        return []
    group = groups.get(group_id) if isinstance(group_id, str) else None
    if group is None:
        check.error(
            join(item_path, "group"),
            f"unknown country group {group_id!r} (known: {', '.join(sorted(groups)) or 'none'})",
        )
        return []
    out: list[Membership] = []
    for member in group.members:
        lo = _later(member.since, since)
        hi = _earlier(member.until, until)
        if lo is None or hi is None or lo < hi:
            out.append(Membership(member.country, lo, hi))
    return out


def _later(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _earlier(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def read_groups(check: Checker, raw: Any) -> dict[str, CountryGroup]:
    groups: dict[str, CountryGroup] = {}
    data = check.mapping(raw, "country_groups") if raw is not None else {}
    for group_id, body in (data or {}).items():
        path = join("country_groups", group_id)
        if check.string(group_id, path, pattern=_GROUP_ID, what="group id") is None:
            continue
        spec = check.mapping(
            body, path, keys=("title", "citation", "countries", "note"), required=("countries",)
        )
        if spec is None:
            continue
        members = _read_memberships(check, spec.get("countries"), join(path, "countries"), None)
        title, citation = spec.get("title"), spec.get("citation")
        groups[group_id] = CountryGroup(
            id=group_id,
            title=title if isinstance(title, str) else None,
            citation=citation if isinstance(citation, str) else None,
            members=members,
        )
    return groups


def read_tiers(check: Checker, raw: Any, groups: Mapping[str, CountryGroup]) -> TierTable | None:
    data = check.mapping(
        raw, "country_tiers", keys=("order", "default", "members"), required=("order", "default")
    )
    if data is None:
        return None
    order = [
        t
        for i, t in enumerate(
            check.sequence(data.get("order"), "country_tiers.order", allow_empty=False) or []
        )
        if check.ident(t, f"country_tiers.order[{i}]", "tier id")
    ]
    if len(set(order)) != len(order):
        check.error("country_tiers.order", "lists a tier twice")
    default = check.string(data.get("default"), "country_tiers.default", choices=order)
    members: dict[str, tuple[Membership, ...]] = {}
    raw_members = check.mapping(data.get("members", {}), "country_tiers.members", keys=order)
    for tier_id, body in (raw_members or {}).items():
        path = join("country_tiers.members", tier_id)
        members[tier_id] = _read_memberships(check, body, path, groups)
    _check_tier_overlaps(check, members)
    if default is None or not order:
        return None
    return TierTable(tuple(order), default, members)


def _check_tier_overlaps(check: Checker, members: Mapping[str, tuple[Membership, ...]]) -> None:
    # A country may sit in two tiers only in windows that do not overlap (KH: tier3 until a date).
    spans: dict[str, list[tuple[str, Membership]]] = {}
    for tier_id, ms in members.items():
        for m in ms:
            spans.setdefault(m.country, []).append((tier_id, m))
    for country, entries in spans.items():
        for i, (tier_a, a) in enumerate(entries):
            for tier_b, b in entries[i + 1 :]:
                lo = _later(a.since, b.since)
                hi = _earlier(a.until, b.until)
                if (lo is None or hi is None or lo < hi) and tier_a != tier_b:
                    check.error(
                        join("country_tiers.members", tier_b),
                        f"{country} is also in tier {tier_a!r} at the same time",
                    )


def read_model_tiers(check: Checker, raw: Any) -> ModelTiers | None:
    data = check.mapping(
        raw,
        "model_tiers",
        keys=("tiers", "unknown_model", "open_weight_frontier_ops"),
        required=("tiers",),
    )
    if data is None:
        return None
    tiers: list[ModelTier] = []
    frontier = None
    if data.get("open_weight_frontier_ops") is not None:
        frontier = check.number(
            data["open_weight_frontier_ops"], "model_tiers.open_weight_frontier_ops", minimum=0
        )
    for index, item in enumerate(
        check.sequence(data.get("tiers"), "model_tiers.tiers", allow_empty=False) or []
    ):
        path = f"model_tiers.tiers[{index}]"
        tier = _read_model_tier(check, item, path, frontier)
        if tier is None:
            continue
        if any(t.id == tier.id for t in tiers):
            check.error(join(path, "id"), f"tier {tier.id!r} is defined twice")
        tiers.append(tier)
    if tiers and (
        tiers[-1].weights or tiers[-1].min_training_ops or tiers[-1].above_open_weight_frontier
    ):
        check.error(
            "model_tiers.tiers",
            f"the last tier ({tiers[-1].id!r}) must have no thresholds, so every model falls in a tier",
        )
    ids = [t.id for t in tiers]
    unknown = data.get("unknown_model", ids[0] if ids else None)
    unknown_model = check.string(unknown, "model_tiers.unknown_model", choices=ids)
    if not tiers or unknown_model is None:
        return None
    return ModelTiers(tuple(tiers), unknown_model, frontier)


_MODEL_TIER_KEYS = (
    "id",
    "description",
    "weights",
    "min_training_ops",
    "above_open_weight_frontier",
)


def _read_model_tier(
    check: Checker, item: Any, path: str, frontier: float | None
) -> ModelTier | None:
    """One entry of ``model_tiers.tiers`` (None: not usable, the problem is recorded)."""
    spec = check.mapping(item, path, keys=_MODEL_TIER_KEYS, required=("id",))
    if spec is None:
        return None
    tier_id = check.ident(spec.get("id"), join(path, "id"), "tier id")
    weights = None
    if spec.get("weights") is not None:
        text = check.string(
            spec["weights"], join(path, "weights"), choices=[w.value for w in Weights]
        )
        weights = Weights(text) if text else None
    ops = None
    if spec.get("min_training_ops") is not None:
        ops = check.number(spec["min_training_ops"], join(path, "min_training_ops"), minimum=0)
    above = check.boolean(
        spec.get("above_open_weight_frontier", False), join(path, "above_open_weight_frontier")
    )
    if above and frontier is None:
        check.error(
            join(path, "above_open_weight_frontier"),
            "needs model_tiers.open_weight_frontier_ops to be set",
        )
    if not tier_id:
        return None
    description = spec.get("description")
    return ModelTier(
        tier_id,
        description if isinstance(description, str) else None,
        weights,
        ops,
        bool(above),
    )


def read_raw(document: Document) -> RawPack:
    check = Checker(document)
    data = (
        check.mapping(document.data, "", keys=_TOP_KEYS, required=("id", "title", "status")) or {}
    )
    pack_id = check.ident(data.get("id"), "id", "pack id") or "<invalid>"
    check.string(data.get("title"), "title")
    check.string(data.get("status"), "status", choices=PACK_STATUSES)
    extends = data.get("extends")
    if extends is not None and check.string(extends, "extends") is None:
        extends = None
    return RawPack(check, pack_id, extends, data)


# --- finding and merging ----------------------------------------------------------------------------
