"""The policy engine: resolved facts in, outcome out. Pure, synchronous, no I/O.

A pack is compiled once: dated country lists become a short list of time segments, each a dict from
country to (tier, groups); rules become predicates. Evaluating a request then costs a few dict
lookups to reduce it to a small tuple of discrete facts, and one bounded-cache lookup on that tuple;
the rules themselves only run for a combination not seen before.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import msgspec

from aidr_gate.catalog import Model, Weights
from aidr_gate.facts import NO_FLAGS, AnonymizerFlag
from aidr_gate.outcome import Outcome, PolicyRef
from aidr_gate.patterns.conditions import compile_pattern_test
from aidr_gate.patterns.signals import is_pattern_key
from aidr_gate.policy.pack import Condition, Membership, Pack
from aidr_gate.policy.reach import RegionMember, Window
from aidr_gate.registry import Agreement, AgreementState, Entity, evaluate_agreements

DEFAULT_CACHE_SIZE = 65_536
# Enum members read once: a member looked up on its class costs more than a global, per request.
_NO_AGREEMENT = AgreementState.NONE
_CLOSED = Weights.CLOSED


class PolicyFacts(msgspec.Struct, frozen=True, gc=False):
    """The discrete facts rules test, derived from one request (and shared by identical ones)."""

    network_country: str | None
    headquarters: str | None
    parent: str | None
    network_tier: str | None
    headquarters_tier: str | None
    parent_tier: str | None
    effective_tier: str | None
    network_groups: frozenset[str]
    headquarters_groups: frozenset[str]
    parent_groups: frozenset[str]
    anonymizer: frozenset[AnonymizerFlag]
    model_tier: str
    model_known: bool
    model_weights: str | None
    agreement: AgreementState
    entity_known: bool
    entity_denied: bool
    origin_worse_than_headquarters: bool
    # Screening flags of the entity (``policy.reach.SCREENING_FLAGS``); empty when not screened.
    screening: frozenset[str] = frozenset()
    network_region: str | None = None  # ISO 3166-2, from a GeoIP City database or an override
    region_groups: frozenset[str] = frozenset()  # region groups covering the region whole
    region_uncertain: frozenset[str] = frozenset()  # groups for which the region cannot be told
    # One boolean per distinct pattern test of the pack (``patterns/conditions.py``), in order.
    patterns: tuple[bool, ...] = ()

    def jurisdiction_dict(self) -> dict[str, Any]:
        """The jurisdiction part of the evidence, JSON-ready."""
        return {
            "network_country": self.network_country,
            "network_tier": self.network_tier,
            "network_groups": sorted(self.network_groups),
            "headquarters": self.headquarters,
            "headquarters_tier": self.headquarters_tier,
            "headquarters_groups": sorted(self.headquarters_groups),
            "parent": self.parent,
            "parent_tier": self.parent_tier,
            "parent_groups": sorted(self.parent_groups),
            "effective_tier": self.effective_tier,
            "origin_worse_than_headquarters": self.origin_worse_than_headquarters,
            "anonymizer": sorted(f.value for f in self.anonymizer),
            "network_region": self.network_region,
            "region_groups": sorted(self.region_groups),
            "region_uncertain": sorted(self.region_uncertain),
        }


class Verdict(msgspec.Struct, frozen=True, gc=False):
    """The engine's answer: the outcome, every reason, and the facts it rested on."""

    outcome: Outcome
    reasons: tuple[str, ...]
    facts: PolicyFacts
    agreement: Agreement | None
    model_tier_source: str
    policy: PolicyRef


Predicate = Callable[[PolicyFacts], bool]

_BOOL_GETTERS: dict[str, Callable[[PolicyFacts], bool]] = {
    "network_country_unknown": lambda f: f.network_country is None,
    "headquarters_unknown": lambda f: f.headquarters is None,
    "model_known": lambda f: f.model_known,
    "entity_known": lambda f: f.entity_known,
    "entity_denied": lambda f: f.entity_denied,
    "agreement_valid": lambda f: f.agreement is AgreementState.VALID,
    "origin_worse_than_headquarters": lambda f: f.origin_worse_than_headquarters,
}
_VALUE_GETTERS: dict[str, Callable[[PolicyFacts], object]] = {
    "effective_tier": lambda f: f.effective_tier,
    "network_tier": lambda f: f.network_tier,
    "headquarters_tier": lambda f: f.headquarters_tier,
    "parent_tier": lambda f: f.parent_tier,
    "network_country": lambda f: f.network_country,
    "headquarters_country": lambda f: f.headquarters,
    "parent_country": lambda f: f.parent,
    "model_tier": lambda f: f.model_tier,
    "agreement": lambda f: f.agreement.value,
    "network_region": lambda f: f.network_region,
}
_GROUP_GETTERS: dict[str, Callable[[PolicyFacts], frozenset[str]]] = {
    "network_group": lambda f: f.network_groups,
    "headquarters_group": lambda f: f.headquarters_groups,
    "parent_group": lambda f: f.parent_groups,
    "any_group": lambda f: f.network_groups | f.headquarters_groups | f.parent_groups,
}
# Sets where a condition's empty value (``false``) means "none at all", as for ``anonymizer``.
_FLAG_GETTERS: dict[str, Callable[[PolicyFacts], frozenset[str]]] = {
    "screening": lambda f: f.screening,
    "region_group": lambda f: f.region_groups,
    "region_uncertain": lambda f: f.region_uncertain,
}


def _compile_test(key: str, value: Any, patterns: Mapping[str, int]) -> Predicate:
    if is_pattern_key(key):
        index = patterns[_pattern_id(key, value)]
        return lambda f: f.patterns[index]
    if key in _BOOL_GETTERS:
        getter = _BOOL_GETTERS[key]
        return lambda f: getter(f) is value
    if key in _VALUE_GETTERS:
        get_value = _VALUE_GETTERS[key]
        return lambda f: get_value(f) in value
    if key in _GROUP_GETTERS:
        get_groups = _GROUP_GETTERS[key]
        return lambda f: not get_groups(f).isdisjoint(value)
    if key in _FLAG_GETTERS:
        get_flags = _FLAG_GETTERS[key]
        if not value:
            return lambda f: not get_flags(f)
        return lambda f: not get_flags(f).isdisjoint(value)
    if key == "anonymizer":
        if not value:
            return lambda f: not f.anonymizer
        return lambda f: not f.anonymizer.isdisjoint(value)
    if key == "model_weights":
        return lambda f: f.model_weights == value
    raise ValueError(f"no compiler for condition {key!r}")  # unreachable: the loader validates keys


def compile_condition(condition: Condition, patterns: Mapping[str, int] | None = None) -> Predicate:
    """Turn a rule's condition into one predicate over :class:`PolicyFacts`.

    *patterns* numbers the pack's distinct pattern tests (:func:`pattern_tests`).
    """
    numbered = patterns if patterns is not None else pattern_tests([condition])
    tests = [_compile_test(key, value, numbered) for key, value in condition.tests]
    branches = [compile_condition(branch, numbered) for branch in condition.any_of]

    def predicate(facts: PolicyFacts) -> bool:
        return all(test(facts) for test in tests) and (
            not branches or any(branch(facts) for branch in branches)
        )

    return predicate


def _pattern_id(key: str, value: Any) -> str:
    return key + json.dumps(value, sort_keys=True)


def pattern_tests(conditions: Iterable[Condition]) -> dict[str, int]:
    """Each distinct pattern test (signal and thresholds) of *conditions*, numbered in order."""
    out: dict[str, int] = {}

    def walk(condition: Condition) -> None:
        for key, value in condition.tests:
            if is_pattern_key(key):
                out.setdefault(_pattern_id(key, value), len(out))
        for branch in condition.any_of:
            walk(branch)

    for condition in conditions:
        walk(condition)
    return out


def _tests_key(condition: Condition, key: str) -> bool:
    return any(k == key for k, _ in condition.tests) or any(
        _tests_key(branch, key) for branch in condition.any_of
    )


_CompiledRule = tuple[Predicate, Outcome, tuple[str, ...]]
_EMPTY: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class _Segment:
    """Country tiers, groups, regions and rules for a stretch of time in which no date falls."""

    tiers: dict[str, str]
    groups: dict[str, frozenset[str]]
    rules: tuple[_CompiledRule, ...] = ()  # the rules whose ``during`` windows hold here
    regions: dict[str, frozenset[str]] = field(default_factory=dict)  # region -> groups, whole
    uncertain: dict[str, frozenset[str]] = field(default_factory=dict)  # region -> groups, part
    region_countries: dict[str, frozenset[str]] = field(default_factory=dict)  # country -> groups
    # The pack reference decisions in this stretch carry, outside and inside the legal window:
    # the status is the one in force then (``status_history``).
    refs: tuple[PolicyRef, PolicyRef] = (PolicyRef("", "", "", False), PolicyRef("", "", "", True))


class PolicyEngine:
    """A compiled pack. Immutable; build a new one to change the pack."""

    def __init__(self, pack: Pack, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.pack = pack
        self._default_tier = pack.tiers.default if pack.tiers else None
        self._rank = {tier: i for i, tier in enumerate(pack.tiers.order)} if pack.tiers else {}
        self._rules: list[_CompiledRule] = []
        # Pattern signals change with every request: each test is reduced to a boolean first
        # (``_pattern_checks``), and only those booleans enter the cached evaluation.
        numbered = pattern_tests(rule.when for rule in pack.rules)
        checks: list[Callable[[Mapping[str, float]], bool]] = [lambda _: False] * len(numbered)
        names: dict[str, None] = {}
        for rule in pack.rules:
            _pattern_checks(rule.when, numbered, checks, names)
        self._pattern_checks = tuple(checks)
        self.pattern_keys: tuple[str, ...] = tuple(names)
        for rule in pack.rules:
            notes: list[str] = []
            if _tests_key(rule.when, "agreement") or _tests_key(rule.when, "agreement_valid"):
                notes.append("agreement")
            if _tests_key(rule.when, "model_tier") or _tests_key(rule.when, "model_weights"):
                notes.append("model")
            self._rules.append((compile_condition(rule.when, numbered), rule.outcome, tuple(notes)))
        self._bounds, self._segments = self._build_segments(pack, self._rules)
        self._model_tiers = pack.model_tiers
        self._known_tiers = frozenset(t.id for t in pack.model_tiers.tiers)
        self._accepted = pack.accepted_agreement_types
        self._window_from = pack.effective_from if pack.effective_from is not None else -math.inf
        self._window_until = pack.effective_until if pack.effective_until is not None else math.inf
        self._evaluate = lru_cache(maxsize=cache_size)(self._evaluate_uncached)

    def policy_ref(self, at: float) -> PolicyRef:
        """The pack reference of a decision made at *at*: the status in force then, inside or
        outside the legal window; one shared object per segment and side (the audit trail's
        facts cache is keyed by its identity)."""
        segment = bisect.bisect_right(self._bounds, at)
        return self._segments[segment].refs[self._window_from <= at < self._window_until]

    # -- compile ----------------------------------------------------------------------------------

    @staticmethod
    def _build_segments(
        pack: Pack, compiled: list[_CompiledRule]
    ) -> tuple[list[float], list[_Segment]]:
        bounds = _segment_bounds(pack)
        segments: list[_Segment] = []
        for index in range(len(bounds) + 1):
            # A moment inside segment ``index``: ``[bounds[index-1], bounds[index])``.
            probe = bounds[index - 1] if index > 0 else (bounds[0] - 1.0 if bounds else 0.0)
            segments.append(
                _Segment(
                    _country_tiers(pack, probe),
                    _country_groups(pack, probe),
                    _rules_in_force(pack, compiled, probe),
                    *_region_tables(pack, probe),
                    refs=_policy_refs(pack, probe),
                )
            )
        return bounds, segments

    # -- evaluate ---------------------------------------------------------------------------------

    def model_tier(self, model: Model | None) -> tuple[str, str]:
        """The model's tier under this pack and where it came from."""
        spec = self._model_tiers
        if model is None:
            return spec.unknown_model, "unknown-model"
        if model.tier is not None:
            if model.tier in self._known_tiers:
                return model.tier, "catalog"
            # An explicit tier this pack does not define: fail closed.
            return spec.unknown_model, "unknown-model"
        ops = model.training_ops
        for tier in spec.tiers:
            if tier.weights is not None and model.weights is not tier.weights:
                continue
            if tier.min_training_ops is not None and (ops is None or ops < tier.min_training_ops):
                continue
            if tier.above_open_weight_frontier and (
                ops is None
                or spec.open_weight_frontier_ops is None
                or ops <= spec.open_weight_frontier_ops
            ):
                continue
            return tier.id, "thresholds"
        return spec.tiers[-1].id, "thresholds"

    def evaluate(
        self,
        *,
        entity: Entity | None,
        headquarters: str | None,
        parent: str | None,
        model: Model | None,
        network_country: str | None,
        anonymizer: frozenset[AnonymizerFlag] = NO_FLAGS,
        at: float,
        screening: frozenset[str] = _EMPTY,
        region: str | None = None,
        signals: Mapping[str, float] | None = None,
    ) -> Verdict:
        """Decide one request from resolved facts. Never raises for any combination of inputs.

        *signals* are the request's pattern signals (``patterns/``); one missing reads as 0.
        """
        tier, tier_source = self.model_tier(model)
        agreement: Agreement | None = None
        state = _NO_AGREEMENT
        if entity is not None and entity.agreements:
            state, agreement = evaluate_agreements(
                entity.agreements,
                model_tier=tier,
                country=network_country,
                at=at,
                accepted_types=self._accepted,
            )
        segment = bisect.bisect_right(self._bounds, at)
        facts, outcome, reasons = self._evaluate(
            segment,
            network_country,
            headquarters,
            parent,
            anonymizer,
            tier,
            model is not None,
            # A StrEnum, equal to its value. An unknown model counts as closed weights: a rule on
            # closed models must not let in a model nobody has vouched for (fail closed).
            model.weights if model is not None else _CLOSED,
            state,
            entity is not None,
            entity is not None and entity.denied,
            screening,
            region,
            tuple([check(signals or _NO_SIGNALS) for check in self._pattern_checks])
            if self._pattern_checks
            else (),
        )
        in_window = self._window_from <= at < self._window_until
        return Verdict(
            outcome,
            reasons,
            facts,
            agreement,
            tier_source,
            self._segments[segment].refs[in_window],
        )

    def _evaluate_uncached(
        self,
        segment: int,
        network_country: str | None,
        headquarters: str | None,
        parent: str | None,
        anonymizer: frozenset[AnonymizerFlag],
        model_tier: str,
        model_known: bool,
        model_weights: str | None,
        agreement: AgreementState,
        entity_known: bool,
        entity_denied: bool,
        screening: frozenset[str],
        region: str | None,
        patterns: tuple[bool, ...] = (),
    ) -> tuple[PolicyFacts, Outcome, tuple[str, ...]]:
        seg = self._segments[segment]
        parent = parent if parent is not None else headquarters
        network_tier = self._tier(seg, network_country)
        hq_tier = self._tier(seg, headquarters)
        parent_tier = self._tier(seg, parent)
        known = [t for t in (network_tier, hq_tier, parent_tier) if t is not None]
        effective = max(known, key=self._rank.__getitem__) if known else None
        worse = (
            network_tier is not None
            and hq_tier is not None
            and self._rank[network_tier] > self._rank[hq_tier]
        )
        empty = _EMPTY
        region_groups = uncertain = empty
        region_countries = (
            seg.region_countries.get(network_country, empty) if network_country else empty
        )
        if region_countries:
            if region is None:
                uncertain = region_countries
            else:
                region_groups = seg.regions.get(region, empty)
                uncertain = seg.uncertain.get(region, empty)
        facts = PolicyFacts(
            network_country=network_country,
            headquarters=headquarters,
            parent=parent,
            network_tier=network_tier,
            headquarters_tier=hq_tier,
            parent_tier=parent_tier,
            effective_tier=effective,
            network_groups=seg.groups.get(network_country, empty) if network_country else empty,
            headquarters_groups=seg.groups.get(headquarters, empty) if headquarters else empty,
            parent_groups=seg.groups.get(parent, empty) if parent else empty,
            anonymizer=anonymizer,
            model_tier=model_tier,
            model_known=model_known,
            model_weights=model_weights,
            agreement=agreement,
            entity_known=entity_known,
            entity_denied=entity_denied,
            origin_worse_than_headquarters=worse,
            screening=screening,
            network_region=region,
            region_groups=region_groups,
            region_uncertain=uncertain,
            patterns=patterns,
        )
        for predicate, outcome, notes in seg.rules:
            if predicate(facts):
                return facts, outcome, _reasons(outcome, notes, facts)
        return facts, self.pack.default, (self.pack.default.reason,)

    def origin_worse(
        self, network_country: str | None, headquarters: str | None, at: float
    ) -> bool:
        """True when the network country's tier is worse than the headquarters' at *at*."""
        if network_country is None or headquarters is None or self._default_tier is None:
            return False
        seg = self._segments[bisect.bisect_right(self._bounds, at)]
        rank = self._rank
        return (
            rank[self._tier(seg, network_country) or ""] > rank[self._tier(seg, headquarters) or ""]
        )

    def _tier(self, segment: _Segment, country: str | None) -> str | None:
        if country is None or self._default_tier is None:
            return None
        return segment.tiers.get(country, self._default_tier)

    def cache_info(self) -> Any:
        """Hits and misses of the evaluation cache (for metrics and benchmarks)."""
        return self._evaluate.cache_info()

    def countries_changing(self) -> Iterable[float]:
        """The instants at which some country changes tier or group."""
        return tuple(self._bounds)


def _segment_bounds(pack: Pack) -> list[float]:
    """Every instant at which a dated list entry, a rule's window or the pack's status changes."""
    tier_members = pack.tiers.members if pack.tiers else {}
    dated: list[Membership | RegionMember | Window] = [
        m for g in pack.groups.values() for m in g.members
    ]
    dated += [m for ms in tier_members.values() for m in ms]
    dated += [m for g in pack.region_groups.values() for m in (*g.regions, *g.uncertain)]
    dated += [w for rule in pack.rules for w in rule.during]
    bounds = {t for m in dated for t in (m.since, m.until) if t is not None}
    return sorted({*bounds, *(c.since for c in pack.status_history)})


def _country_tiers(pack: Pack, probe: float) -> dict[str, str]:
    tiers: dict[str, str] = {}
    for tier, members in (pack.tiers.members if pack.tiers else {}).items():
        for member in members:
            if member.holds_at(probe):
                tiers[member.country] = tier
    return tiers


def _country_groups(pack: Pack, probe: float) -> dict[str, frozenset[str]]:
    groups: dict[str, set[str]] = {}
    for group in pack.groups.values():
        for member in group.members:
            if member.holds_at(probe):
                groups.setdefault(member.country, set()).add(group.id)
    return {c: frozenset(g) for c, g in groups.items()}


def _rules_in_force(
    pack: Pack, compiled: list[_CompiledRule], probe: float
) -> tuple[_CompiledRule, ...]:
    return tuple(
        c
        for rule, c in zip(pack.rules, compiled, strict=True)
        if not rule.during or any(w.holds_at(probe) for w in rule.during)
    )


def _policy_refs(pack: Pack, probe: float) -> tuple[PolicyRef, PolicyRef]:
    """The pack reference outside and inside the legal window, with the status in force then."""
    status = pack.status_at(probe)
    return (
        PolicyRef(pack.id, pack.digest, status, False),
        PolicyRef(pack.id, pack.digest, status, True),
    )


def _region_tables(
    pack: Pack, probe: float
) -> tuple[dict[str, frozenset[str]], dict[str, frozenset[str]], dict[str, frozenset[str]]]:
    whole: dict[str, set[str]] = {}
    part: dict[str, set[str]] = {}
    countries: dict[str, set[str]] = {}
    for group in pack.region_groups.values():
        for table, members in ((whole, group.regions), (part, group.uncertain)):
            for member in members:
                if member.holds_at(probe):
                    table.setdefault(member.region, set()).add(group.id)
                    countries.setdefault(member.region[:2], set()).add(group.id)

    def frozen(table: dict[str, set[str]]) -> dict[str, frozenset[str]]:
        return {k: frozenset(v) for k, v in table.items()}

    return frozen(whole), frozen(part), frozen(countries)


_NO_SIGNALS: Mapping[str, float] = {}


def _pattern_checks(
    condition: Condition,
    numbered: Mapping[str, int],
    checks: list[Callable[[Mapping[str, float]], bool]],
    names: dict[str, None],
) -> None:
    for key, value in condition.tests:
        if is_pattern_key(key):
            checks[numbered[_pattern_id(key, value)]] = compile_pattern_test(key, value)
            names[key] = None
    for branch in condition.any_of:
        _pattern_checks(branch, numbered, checks, names)


def _reasons(outcome: Outcome, notes: tuple[str, ...], facts: PolicyFacts) -> tuple[str, ...]:
    reasons = [outcome.reason]
    if "agreement" in notes and facts.agreement is not AgreementState.VALID:
        reasons.append("AGREEMENT_" + facts.agreement.value.upper().replace("-", "_"))
    if "model" in notes and not facts.model_known:
        reasons.append("MODEL_UNKNOWN")
    return tuple(reasons)
