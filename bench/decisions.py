"""Decisions per second: aidr_gate's engine against the same policy in pycasbin and in Cedar.

One seeded request mix (thousands of entities, models and every country) is decided three ways, in
the same run:

* aidr_gate, through the path a middleware uses: ``Gate.decide`` on a state built from the bundled
  pack ``aidr-2025-01`` with an in-memory registry and catalogue (and, separately, the bare
  ``PolicyEngine.evaluate``);
* pycasbin: a model conf with a priority effect (first matching policy line wins), one policy line
  per rule, and custom functions for the facts a matcher cannot compute itself;
* Cedar (cedarpy): an entities document plus one ``forbid``/``permit`` per rule, its outcome carried
  in annotations; the decision is read from the policies that matched.

All three receive the same raw inputs (entity id, network country, anonymizer flags, model id, time)
and the same reference data, each in its own idiom. The run stops with exit status 1 if any two
disagree on the effect, status, reason code or rule of any request; otherwise it prints decisions
per second, the ratios, and the engine's per-call p50/p99.

    .venv/bin/python bench/decisions.py [--requests N] [--seconds S] [--rounds N] [--seed N]

The whole run takes about a minute. Throughput is the best of several round-robin runs, so that a busy
neighbour on a shared machine slows every contender alike.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import casbin
import cedarpy

from aidr_gate.catalog import Model, Weights
from aidr_gate.countries import COUNTRY_CODES
from aidr_gate.decision import Decision
from aidr_gate.facts import NO_FLAGS, AnonymizerFlag, Identity, Origin, declared_origin
from aidr_gate.gate import Gate, GateState, state_for
from aidr_gate.policy.pack import Condition, Pack, compute_digest, load_pack
from aidr_gate.policy.reach import REGION_KEYS, SCREENING_KEYS
from aidr_gate.registry import Agreement, AgreementStatus, Entity

PACK_ID = "aidr-2025-01"
_REACH_KEYS = frozenset((*SCREENING_KEYS, *REGION_KEYS))


def _tests_reach(condition: Condition) -> bool:
    return any(key in _REACH_KEYS for key, _ in condition.tests) or any(
        _tests_reach(branch) for branch in condition.any_of
    )


def bench_pack() -> Pack:
    """``aidr-2025-01`` without its screening and region rules, which the pycasbin and Cedar
    formulations do not model (they need a screening table and a City database; the engine's own
    tests decide them: tests/screening/test_screening_decisions.py, tests/request/test_regions.py)."""
    pack = load_pack(PACK_ID)
    kept = replace(pack, rules=tuple(r for r in pack.rules if not _tests_reach(r.when)))
    return replace(kept, digest=compute_digest(kept))


# The country groups under comprehensive embargo (the baseline's first rule) and the tier names of
# the pack, least restrictive first: both formulations below test these by name.
EMBARGO_GROUPS = ("E1", "E2")
TIER_NAMES = ("tier1", "tier2", "tier3")
# Cedar has no quantifier over a set, so its formulation checks agreement slots a0..a2: the mix
# gives no entity more agreements than this (``generate_mix`` enforces it).
MAX_AGREEMENTS = 3

MAX_CALLS = 3_000_000  # per timed run, whatever the time budget

# Raw facts of one request and the answer every formulation must give for it.
Answer = tuple[str, int | None, str, str]  # effect, HTTP status, reason code, rule id


@dataclass(frozen=True, slots=True)
class Request:
    """The raw inputs of one request, as the resolving stages hand them over."""

    entity_id: str
    country: str | None  # network country; None: unknown
    flags: frozenset[AnonymizerFlag]
    model_id: str
    at: int  # evaluation time, whole seconds since the epoch (UTC)


@dataclass(frozen=True, slots=True)
class Mix:
    """Reference data (registry and catalogue) and the requests decided against it."""

    entities: tuple[Entity, ...]
    models: tuple[Model, ...]
    requests: tuple[Request, ...]


# -- reference data shared by the three formulations ------------------------------------------------


@dataclass(frozen=True, slots=True)
class CountryInfo:
    """One country under the pack: tier rank (1 = tier1) and groups, with at most one dated change."""

    rank: int
    groups: frozenset[str]
    until: int | None = None  # the instant ``rank`` stops holding
    rank_after: int = 0  # the rank from ``until`` on


def country_table(pack: Pack) -> dict[str, CountryInfo]:
    """The pack's country lists as one map, computed once for both foreign formulations.

    Raises ``ValueError`` for a pack the casbin and Cedar formulations cannot express (a country
    entering a tier at a date, more than one change, or a dated embargo membership).
    """
    if pack.tiers is None:
        raise ValueError(f"{pack.id} has no country tiers")
    if tuple(pack.tiers.order) != TIER_NAMES:
        raise ValueError(
            f"{pack.id} tiers are {pack.tiers.order}, the formulations say {TIER_NAMES}"
        )
    rank = {tier: index + 1 for index, tier in enumerate(pack.tiers.order)}
    default = rank[pack.tiers.default]
    listed = {m.country for ms in pack.tiers.members.values() for m in ms}
    listed |= {m.country for g in pack.groups.values() for m in g.members}
    table: dict[str, CountryInfo] = {}
    for country in sorted(COUNTRY_CODES | listed):
        entries = [
            (tier, m) for tier, ms in pack.tiers.members.items() for m in ms if m.country == country
        ]
        groups: set[str] = set()
        for group in pack.groups.values():
            for m in group.members:
                if m.country != country:
                    continue
                if m.since is None and m.until is None:
                    groups.add(group.id)
                elif group.id in EMBARGO_GROUPS:
                    raise ValueError(f"{country} has a dated {group.id} membership")
        if not entries:
            table[country] = CountryInfo(default, frozenset(groups))
            continue
        if len(entries) > 1 or entries[0][1].since is not None:
            raise ValueError(f"{country}: tier membership the formulations cannot express")
        tier, member = entries[0]
        until = None if member.until is None else int(member.until)
        table[country] = CountryInfo(rank[tier], frozenset(groups), until, default)
    return table


def tier_changes(table: dict[str, CountryInfo]) -> list[int]:
    """The instants at which some country changes tier (KH leaving Tier 3, say)."""
    return sorted({info.until for info in table.values() if info.until is not None})


# -- the request mix -----------------------------------------------------------------------------

_START = 1_735_689_600  # 2025-01-01T00:00:00Z
_END = 1_798_761_600  # 2027-01-01T00:00:00Z
_DAY = 86_400
_ACCEPTED = ("uveu", "nveu", "security-agreement")
_NOT_ACCEPTED = ("license", "contract")
# Training compute at and around the thresholds (1e26, the 3.8e25 open-weight frontier).
_BOUNDARY_OPS = (1e26, 3.8e25, 99e24, 381e23, 1001e23, 2e26, 379e23)


def generate_mix(
    seed: int,
    *,
    entities: int = 3000,
    models: int = 1000,
    requests: int = 20_000,
    table: dict[str, CountryInfo],
) -> Mix:
    """A deterministic mix: every tier, parents in other tiers, denied entities, agreements in every
    state, boundary and unknown models, unknown countries, anonymizers, both sides of each date."""
    rng = random.Random(seed)
    codes = sorted(COUNTRY_CODES)
    changes = tier_changes(table)
    changing = sorted(c for c, info in table.items() if info.until is not None)
    embargoed = sorted(c for c, info in table.items() if info.groups & set(EMBARGO_GROUPS))
    pools = {
        r: sorted(c for c in codes if table[c].rank == r and c not in changing) for r in (1, 2, 3)
    }
    pool_choices: list[tuple[list[str], float]] = [
        (pools[1], 0.30),
        (pools[2], 0.30),
        (pools[3], 0.15),
        (embargoed, 0.05),
        (changing or pools[3], 0.12),
        (codes, 0.08),
    ]

    def country() -> str:
        roll = rng.random()
        for pool, weight in pool_choices:
            if roll < weight:
                return rng.choice(pool)
            roll -= weight
        return rng.choice(codes)

    def instant() -> int:
        roll = rng.random()
        if changes and roll < 0.10:
            return rng.choice(changes) + rng.choice((-1, 0, 1))
        if changes and roll < 0.30:
            return rng.choice(changes) + rng.randint(-5 * _DAY, 5 * _DAY)
        return rng.randint(_START, _END)

    registry: list[Entity] = []
    for index in range(entities):
        entity_id = f"ent-{index:05d}"
        hq = country()
        parent = country() if rng.random() < 0.35 else None
        denied = rng.random() < 0.03
        agreements: list[Agreement] = []
        for slot in range(rng.choices(range(MAX_AGREEMENTS + 1), (40, 30, 20, 10))[0]):
            kind = rng.choice(_ACCEPTED) if rng.random() < 0.85 else rng.choice(_NOT_ACCEPTED)
            status = rng.choices(list(AgreementStatus), (70, 10, 10, 10))[0]
            valid_from = instant() if rng.random() < 0.6 else None
            valid_until = None
            if rng.random() < 0.6:
                valid_until = (valid_from or _START) + rng.randint(_DAY, 400 * _DAY)
            tiers = rng.choices((("*",), ("controlled",), ("uncontrolled",)), (40, 40, 20))[0]
            if rng.random() < 0.35:
                covered: frozenset[str] = frozenset({"*"})
            else:
                covered = frozenset({hq, *(country() for _ in range(rng.randint(0, 3)))})
            agreements.append(
                Agreement(
                    id=f"{entity_id}-a{slot}",
                    type=kind,
                    status=status,
                    valid_from=valid_from,
                    valid_until=valid_until,
                    model_tiers=frozenset(tiers),
                    countries=covered,
                )
            )
        registry.append(
            Entity(
                id=entity_id,
                headquarters=hq,
                parent=parent,
                denied=denied,
                denied_reason="bench: denied party" if denied else None,
                agreements=tuple(agreements),
            )
        )

    catalogue: list[Model] = []
    for index in range(models):
        weights = Weights.CLOSED if rng.random() < 0.6 else Weights.OPEN
        ops: float | None
        if rng.random() < 0.15:
            ops = rng.choice(_BOUNDARY_OPS)
        else:  # at most three significant digits: whole units of 1e18, distinct as floats
            ops = float(f"{rng.randint(1, 999)}e{rng.randint(22, 25)}")
        tier = None
        if rng.random() < 0.08:
            tier = rng.choice(("controlled", "uncontrolled", "frontier-x"))
            if rng.random() < 0.5:
                ops = None
        catalogue.append(
            Model(
                id=f"model-{index:04d}",
                training_ops=ops,
                weights=weights,
                tier=tier,
            )
        )

    flags = list(AnonymizerFlag)
    mix: list[Request] = []
    for _ in range(requests):
        entity: Entity | None = rng.choice(registry) if rng.random() < 0.93 else None
        entity_id = entity.id if entity is not None else f"stranger-{rng.randint(0, 999)}"
        roll = rng.random()
        if roll < 0.07:
            network = None
        elif roll < 0.5 and entity is not None:
            network = entity.headquarters
        else:
            network = country()
        anonymizer = NO_FLAGS
        if rng.random() < 0.15:
            anonymizer = frozenset(rng.sample(flags, rng.randint(1, 2)))
        known = rng.random() < 0.92
        model_id = rng.choice(catalogue).id if known else f"unlisted-{rng.randint(0, 499)}"
        mix.append(Request(entity_id, network, anonymizer, model_id, instant()))
    return Mix(tuple(registry), tuple(catalogue), tuple(mix))


# -- 1. aidr_gate -----------------------------------------------------------------------------------


def engine_answer(decision: Decision) -> Answer:
    """Effect, status, first reason and rule id (without the pack prefix) of a gate decision."""
    return (
        decision.effect.value,
        decision.status,
        decision.reasons[0],
        decision.rule.rsplit("/", 1)[-1],
    )


class EngineDecider:
    """aidr_gate through ``Gate.decide``, as a middleware calls it."""

    name = "aidr_gate"

    def __init__(self, pack: Pack, mix: Mix) -> None:
        self.state: GateState = state_for(
            pack, entities=list(mix.entities), models=list(mix.models)
        )
        self.gate = Gate(self.state)

    def decide(self, request: Request) -> Answer:
        """Build the resolved facts from the raw inputs and decide."""
        return engine_answer(
            self.gate.decide(
                identity=Identity(request.entity_id),
                origin=declared_origin(request.country, request.flags),
                model_id=request.model_id,
                at=request.at,
            )
        )


# -- 2. pycasbin ----------------------------------------------------------------------------------

# First matching policy line wins (priority effect); a line's fields are the values a rule needs,
# "*" where the rule does not care. Facts a matcher cannot compute are custom functions. Casbin's
# other ABAC idiom, ``m = eval(p.rule)`` with an expression per line, reads closer to the pack but
# pycasbin parses that expression again for every line it tries: it agreed on every request and ran
# about 15% slower when tried, so this form is the fairer baseline.
CASBIN_MODEL = """
[request_definition]
r = sub, obj, ctx

[policy_definition]
p = priority, rule, groups, denied, tier, anonymizer, net_unknown, hq_unknown, model, agreement, \
 worse, outcome, status, reason, eft

[policy_effect]
e = priority(p.eft) || deny

[matchers]
m = (p.groups == "*" || inGroups(r.sub, r.ctx, p.groups)) \
 && (p.denied == "*" || r.sub.denied) \
 && (p.model == "*" || modelTier(r.obj) == p.model) \
 && (p.tier == "*" || effectiveTier(r.sub, r.ctx) == p.tier) \
 && (p.anonymizer == "*" || anyFlag(r.ctx, p.anonymizer)) \
 && (p.net_unknown == "*" || r.ctx.country == "") \
 && (p.hq_unknown == "*" || r.sub.hq == "") \
 && (p.agreement == "*" || agreementState(r.sub, r.obj, r.ctx) == p.agreement) \
 && (p.worse == "*" || originWorse(r.sub, r.ctx))
"""

_ = "*"  # the rule does not test this field
CASBIN_POLICY: tuple[tuple[str, ...], ...] = (
    # priority, rule, groups, denied, tier, anonymizer, net_unknown, hq_unknown, model, agreement,
    # worse, outcome, status, reason, eft
    ("10", "embargoed-jurisdiction", "E1 E2", _, _, _, _, _, _, _, _,
     "deny", "451", "EMBARGOED_JURISDICTION", "deny"),
    ("20", "entity-denied", _, "yes", _, _, _, _, _, _, _,
     "deny", "403", "ENTITY_DENIED", "deny"),
    ("30", "tier3-controlled", _, _, "tier3", _, _, _, "controlled", _, _,
     "deny", "451", "TIER3_CONTROLLED_MODEL", "deny"),
    ("40", "anonymized-origin-controlled", _, _, _, "vpn tor public_proxy hosting", _, _,
     "controlled", _, _, "deny", "451", "ANONYMIZED_ORIGIN", "deny"),
    ("50", "unknown-country-controlled", _, _, _, _, "yes", _, "controlled", _, _,
     "deny", "451", "NETWORK_COUNTRY_UNKNOWN", "deny"),
    ("60", "unknown-headquarters-controlled", _, _, _, _, _, "yes", "controlled", _, _,
     "deny", "403", "HEADQUARTERS_UNKNOWN", "deny"),
    ("70", "tier2-needs-agreement", _, _, "tier2", _, _, _, "controlled", "invalid", _,
     "deny", "403", "NO_VALID_AGREEMENT", "deny"),
    ("80", "origin-worse-than-headquarters", _, _, _, _, _, _, _, _, "yes",
     "log", "", "ORIGIN_TIER_WORSE_THAN_HEADQUARTERS", "allow"),
    ("90", "default", _, _, _, _, _, _, _, _, _,
     "allow", "", "ALLOWED", "allow"),
)  # fmt: skip

# ECCN 4E091 as the pack states it: closed weights, >= 1e26 operations, above the open frontier.
CASBIN_CONTROLLED_MIN_OPS = 1.0e26
CASBIN_OPEN_WEIGHT_FRONTIER = 3.8e25
CASBIN_ACCEPTED_AGREEMENTS = frozenset({"uveu", "nveu", "security-agreement"})


class CasbinSubject:
    """The caller as casbin's matcher sees it; unknown countries are ``""``."""

    __slots__ = ("agreements", "denied", "hq", "id", "root")

    def __init__(
        self, entity_id: str, hq: str, root: str, denied: bool, agreements: tuple[Agreement, ...]
    ) -> None:
        self.id, self.hq, self.root, self.denied = entity_id, hq, root, denied
        self.agreements = agreements

    def __repr__(self) -> str:  # casbin formats every request into a log line
        return self.id


class CasbinObject:
    """The model as casbin's matcher sees it; ``known`` is False for a model not in the catalogue."""

    __slots__ = ("id", "known", "ops", "tier", "weights")

    def __init__(
        self, model_id: str, known: bool, weights: str, ops: float | None, tier: str | None
    ) -> None:
        self.id, self.known, self.weights, self.ops, self.tier = model_id, known, weights, ops, tier

    def __repr__(self) -> str:
        return self.id


class CasbinContext:
    """Network country (``""`` when unknown), anonymizer flags and time."""

    __slots__ = ("at", "country", "flags")

    def __init__(self, country: str, flags: frozenset[str], at: int) -> None:
        self.country, self.flags, self.at = country, flags, at

    def __repr__(self) -> str:
        return f"{self.country or '??'}@{self.at}"


def casbin_functions(table: dict[str, CountryInfo]) -> dict[str, Callable[..., Any]]:
    """The custom functions the casbin matcher calls, closed over the country table."""

    def rank(country: str, at: int) -> int:
        if not country:
            return 0
        info = table.get(country)
        if info is None:
            return 2  # the pack's default tier
        if info.until is not None and at >= info.until:
            return info.rank_after
        return info.rank

    def in_groups(sub: CasbinSubject, ctx: CasbinContext, groups: str) -> bool:
        wanted = groups.split()
        for country in (ctx.country, sub.hq, sub.root):
            info = table.get(country) if country else None
            if info is not None and not info.groups.isdisjoint(wanted):
                return True
        return False

    def effective_tier(sub: CasbinSubject, ctx: CasbinContext) -> str:
        worst = max(rank(ctx.country, ctx.at), rank(sub.hq, ctx.at), rank(sub.root, ctx.at))
        return TIER_NAMES[worst - 1] if worst else ""

    def model_tier(obj: CasbinObject) -> str:
        if not obj.known:
            return "controlled"  # unknown model: the most restricted tier
        if obj.tier is not None:
            return obj.tier if obj.tier in ("controlled", "uncontrolled") else "controlled"
        ops = obj.ops
        if (
            obj.weights == "closed"
            and ops is not None
            and ops >= CASBIN_CONTROLLED_MIN_OPS
            and ops > CASBIN_OPEN_WEIGHT_FRONTIER
        ):
            return "controlled"
        return "uncontrolled"

    def any_flag(ctx: CasbinContext, flags: str) -> bool:
        return not ctx.flags.isdisjoint(flags.split())

    def agreement_state(sub: CasbinSubject, obj: CasbinObject, ctx: CasbinContext) -> str:
        tier = model_tier(obj)
        for a in sub.agreements:
            if (
                a.type in CASBIN_ACCEPTED_AGREEMENTS
                and a.status is AgreementStatus.ACTIVE
                and (a.valid_from is None or ctx.at >= a.valid_from)
                and (a.valid_until is None or ctx.at < a.valid_until)
                and ("*" in a.model_tiers or tier in a.model_tiers)
                and ("*" in a.countries or (ctx.country != "" and ctx.country in a.countries))
            ):
                return "valid"
        return "invalid"

    def origin_worse(sub: CasbinSubject, ctx: CasbinContext) -> bool:
        network, hq = rank(ctx.country, ctx.at), rank(sub.hq, ctx.at)
        return network != 0 and hq != 0 and network > hq

    return {
        "inGroups": in_groups,
        "effectiveTier": effective_tier,
        "modelTier": model_tier,
        "anyFlag": any_flag,
        "agreementState": agreement_state,
        "originWorse": origin_worse,
    }


class CasbinDecider:
    """The pack as a pycasbin model and policy; the rule that decided is casbin's explanation."""

    name = "pycasbin"

    def __init__(self, table: dict[str, CountryInfo], mix: Mix) -> None:
        model = casbin.Model()
        model.load_model_from_text(CASBIN_MODEL)
        self.enforcer = casbin.Enforcer(model)
        self.enforcer.add_policies([list(line) for line in CASBIN_POLICY])
        for name, function in casbin_functions(table).items():
            self.enforcer.add_function(name, function)
        self.subjects = {
            e.id: CasbinSubject(
                e.id, e.headquarters or "", e.ultimate_parent or "", e.denied, e.agreements
            )
            for e in mix.entities
        }
        self.objects = {
            m.id: CasbinObject(m.id, True, m.weights.value, m.training_ops, m.tier)
            for m in mix.models
        }
        tokens = self.enforcer.model.model["p"]["p"].tokens
        self._fields = {name: tokens.index(f"p_{name}") for name in ("rule", "outcome", "status")}
        self._reason = tokens.index("p_reason")

    def decide(self, request: Request) -> Answer:
        """Look the caller and model up, enforce, and read the outcome off the deciding line."""
        sub = self.subjects.get(request.entity_id)
        if sub is None:
            sub = CasbinSubject(request.entity_id, "", "", False, ())
        obj = self.objects.get(request.model_id)
        if obj is None:
            obj = CasbinObject(request.model_id, False, "", None, None)
        ctx = CasbinContext(
            request.country or "", frozenset(f.value for f in request.flags), request.at
        )
        _, line = self.enforcer.enforce_ex(sub, obj, ctx)
        if not line:  # no line matched: casbin's own default is deny, with no reason to give
            return ("deny", None, "NO_MATCHING_POLICY", "")
        status = line[self._fields["status"]]
        return (
            line[self._fields["outcome"]],
            int(status) if status else None,
            line[self._reason],
            line[self._fields["rule"]],
        )


# -- 3. Cedar -------------------------------------------------------------------------------------


def _rank(x: str) -> str:
    return (
        f"(if {x} has rank_until && context.at >= {x}.rank_until then {x}.rank_after else {x}.rank)"
    )


def _tier_is(rank: int) -> str:
    return (
        f"((context has network && {_rank('context.network')} == {rank}) || "
        f"(principal has hq && {_rank('principal.hq')} == {rank}) || "
        f"(principal has root && {_rank('principal.root')} == {rank}))"
    )


def _valid(a: str) -> str:
    return (
        f'(principal has {a} && ["uveu", "nveu", "security-agreement"].contains(principal.{a}.type)'
        f' && principal.{a}.status == "active"'
        f" && (!(principal.{a} has valid_from) || context.at >= principal.{a}.valid_from)"
        f" && (!(principal.{a} has valid_until) || context.at < principal.{a}.valid_until)"
        f' && (principal.{a}.tiers.contains("*") || principal.{a}.tiers.contains("controlled"))'
        f" && (principal.{a}.all_countries"
        f" || (context has network && principal.{a}.countries.contains(context.network))))"
    )


_TIER3 = _tier_is(3)
_TIER2 = f"(!{_TIER3} && {_tier_is(2)})"
# Unknown model (no such entity): the most restricted tier. An explicit tier the pack does not know
# counts as controlled too. Otherwise ECCN 4E091: closed, >= 1e26 ops, above 3.8e25 (units of 1e18).
_CONTROLLED = (
    '(!(resource has weights) || (resource has tier && resource.tier != "uncontrolled")'
    ' || (!(resource has tier) && resource.weights == "closed" && resource has ops'
    " && resource.ops >= 100000000 && resource.ops > 38000000))"
)
_AGREEMENT_VALID = "(" + " || ".join(_valid(f"a{i}") for i in range(MAX_AGREEMENTS)) + ")"


def _embargoed(groups: Sequence[str]) -> str:
    listed = ", ".join(f'"{g}"' for g in groups)
    return (
        f"(context has network && context.network.groups.containsAny([{listed}])) || "
        f"(principal has hq && principal.hq.groups.containsAny([{listed}])) || "
        f"(principal has root && principal.root.groups.containsAny([{listed}]))"
    )


def _policy(
    rule: str, priority: int, effect: str, status: int | None, reason: str, when: str | None
) -> str:
    kind = "forbid" if effect == "deny" else "permit"
    notes = f'@id("{rule}") @priority("{priority}") @effect("{effect}") @reason("{reason}")'
    if status is not None:
        notes += f' @status("{status}")'
    body = f'{notes}\n{kind} (principal, action == Action::"infer", resource)'
    return body + (f"\nwhen {{ {when} }};" if when else ";")


CEDAR_POLICIES = "\n\n".join(
    (
        _policy(
            "embargoed-jurisdiction", 10, "deny", 451, "EMBARGOED_JURISDICTION",
            _embargoed(EMBARGO_GROUPS),
        ),
        _policy(
            "entity-denied", 20, "deny", 403, "ENTITY_DENIED",
            "principal has denied && principal.denied",
        ),
        _policy(
            "tier3-controlled", 30, "deny", 451, "TIER3_CONTROLLED_MODEL",
            f"{_TIER3} && {_CONTROLLED}",
        ),
        _policy(
            "anonymized-origin-controlled", 40, "deny", 451, "ANONYMIZED_ORIGIN",
            'context.flags.containsAny(["vpn", "tor", "public_proxy", "hosting"])'
            f" && {_CONTROLLED}",
        ),
        _policy(
            "unknown-country-controlled", 50, "deny", 451, "NETWORK_COUNTRY_UNKNOWN",
            f"!(context has network) && {_CONTROLLED}",
        ),
        _policy(
            "unknown-headquarters-controlled", 60, "deny", 403, "HEADQUARTERS_UNKNOWN",
            f"!(principal has hq) && {_CONTROLLED}",
        ),
        _policy(
            "tier2-needs-agreement", 70, "deny", 403, "NO_VALID_AGREEMENT",
            f"{_TIER2} && {_CONTROLLED} && !{_AGREEMENT_VALID}",
        ),
        _policy(
            "origin-worse-than-headquarters", 80, "log", None,
            "ORIGIN_TIER_WORSE_THAN_HEADQUARTERS",
            f"context has network && principal has hq"
            f" && {_rank('context.network')} > {_rank('principal.hq')}",
        ),
        _policy("default", 90, "allow", None, "ALLOWED", None),
    )
)  # fmt: skip


def _ref(kind: str, uid: str) -> dict[str, Any]:
    return {"__entity": {"type": kind, "id": uid}}


def _ops_units(ops: float | None) -> int | None:
    """Training operations in whole units of 1e18: Cedar has no floats and its Long stops at 9e18."""
    if ops is None:
        return None
    units = round(ops / 1e18)
    if abs(units * 1e18 - ops) > ops * 1e-12:
        raise ValueError(f"{ops} is not a whole number of 1e18 operations")
    return units


def cedar_entities(table: dict[str, CountryInfo], mix: Mix) -> list[dict[str, Any]]:
    """Countries, entities (agreements as record slots) and models as a Cedar entities document."""
    out: list[dict[str, Any]] = []
    for code, info in table.items():
        attrs: dict[str, Any] = {"rank": info.rank, "groups": sorted(info.groups)}
        if info.until is not None:
            attrs |= {"rank_until": info.until, "rank_after": info.rank_after}
        out.append({"uid": {"type": "Country", "id": code}, "attrs": attrs, "parents": []})
    for entity in mix.entities:
        if len(entity.agreements) > MAX_AGREEMENTS:
            raise ValueError(f"{entity.id}: more than {MAX_AGREEMENTS} agreements")
        attrs = {"denied": entity.denied}
        if entity.headquarters is not None:
            attrs["hq"] = _ref("Country", entity.headquarters)
        if entity.ultimate_parent is not None:
            attrs["root"] = _ref("Country", entity.ultimate_parent)
        for slot, a in enumerate(entity.agreements):
            record: dict[str, Any] = {
                "type": a.type,
                "status": a.status.value,
                "tiers": sorted(a.model_tiers),
                "all_countries": "*" in a.countries,
                "countries": [_ref("Country", c) for c in sorted(a.countries) if c != "*"],
            }
            if a.valid_from is not None:
                record["valid_from"] = int(a.valid_from)
            if a.valid_until is not None:
                record["valid_until"] = int(a.valid_until)
            attrs[f"a{slot}"] = record
        out.append({"uid": {"type": "Entity", "id": entity.id}, "attrs": attrs, "parents": []})
    for model in mix.models:
        attrs = {"weights": model.weights.value}
        units = _ops_units(model.training_ops)
        if units is not None:
            attrs["ops"] = units
        if model.tier is not None:
            attrs["tier"] = model.tier
        out.append({"uid": {"type": "Model", "id": model.id}, "attrs": attrs, "parents": []})
    return out


@dataclass(frozen=True, slots=True)
class CedarRule:
    """What one Cedar policy's annotations say: its rule id, order and outcome."""

    rule: str
    priority: int
    effect: str
    status: int | None
    reason: str


def cedar_rules(text: str) -> dict[str, CedarRule]:
    """Cedar's policy ids (``policy0``...) to the outcome their annotations carry."""
    parsed = json.loads(cedarpy.policies_to_json_str(text))["staticPolicies"]
    rules: dict[str, CedarRule] = {}
    for policy_id, policy in parsed.items():
        notes = policy["annotations"]
        rules[policy_id] = CedarRule(
            notes["id"],
            int(notes["priority"]),
            notes["effect"],
            int(notes["status"]) if "status" in notes else None,
            notes["reason"],
        )
    return rules


class CedarDecider:
    """The pack as Cedar policies over an entities document parsed once."""

    name = "cedarpy"

    def __init__(self, table: dict[str, CountryInfo], mix: Mix) -> None:
        self.policies = cedarpy.PolicySet.from_str(CEDAR_POLICIES)
        self.rules = cedar_rules(CEDAR_POLICIES)
        self.entities = cedarpy.Entities.from_json_str(json.dumps(cedar_entities(table, mix)))
        self._action = {"type": "Action", "id": "infer"}

    def request(self, request: Request) -> dict[str, Any]:
        """The Cedar request for one raw request (an unknown country is an absent attribute)."""
        context: dict[str, Any] = {"at": request.at, "flags": [f.value for f in request.flags]}
        if request.country is not None:
            context["network"] = {"__entity": {"type": "Country", "id": request.country}}
        return {
            "principal": {"type": "Entity", "id": request.entity_id},
            "action": self._action,
            "resource": {"type": "Model", "id": request.model_id},
            "context": context,
        }

    def answer(self, result: cedarpy.AuthzResult) -> Answer:
        """The first matching forbid of a deny (in rule order), or log/allow from the permits."""
        diagnostics = result.diagnostics
        if diagnostics.errors:  # a policy that errs is skipped by Cedar: never let that pass
            raise RuntimeError(f"Cedar evaluation errors: {diagnostics.errors}")
        matched = [self.rules[p] for p in diagnostics.reasons]
        if result.decision is cedarpy.Decision.Deny:
            forbids = [r for r in matched if r.effect == "deny"]
            if not forbids:
                return ("deny", None, "NO_MATCHING_POLICY", "")
            first = min(forbids, key=lambda r: r.priority)
            return ("deny", first.status, first.reason, first.rule)
        first = min(matched, key=lambda r: r.priority)
        return (first.effect, first.status, first.reason, first.rule)

    def decide(self, request: Request) -> Answer:
        """One request, one ``is_authorized`` call."""
        return self.answer(
            cedarpy.is_authorized(self.request(request), self.policies, self.entities)
        )

    def decide_batch(self, requests: Sequence[Request]) -> list[Answer]:
        """Many requests in one ``is_authorized_batch`` call (Cedar's best case)."""
        results = cedarpy.is_authorized_batch(
            [self.request(r) for r in requests], self.policies, self.entities
        )
        return [self.answer(r) for r in results]


# -- agreement ------------------------------------------------------------------------------------

Decider = EngineDecider | CasbinDecider | CedarDecider


def build_deciders(pack: Pack, mix: Mix) -> tuple[EngineDecider, CasbinDecider, CedarDecider]:
    """The three formulations over the same reference data."""
    table = country_table(pack)
    return EngineDecider(pack, mix), CasbinDecider(table, mix), CedarDecider(table, mix)


def disagreements(
    requests: Iterable[Request], deciders: Sequence[Decider], *, limit: int = 20
) -> tuple[list[str], Counter[Answer]]:
    """Every request decided by each decider: up to *limit* disagreements, and the answers' tally."""
    problems: list[str] = []
    tally: Counter[Answer] = Counter()
    for request in requests:
        answers = [d.decide(request) for d in deciders]
        tally[answers[0]] += 1
        if any(a != answers[0] for a in answers[1:]) and len(problems) < limit:
            told = "; ".join(f"{d.name}={a}" for d, a in zip(deciders, answers, strict=True))
            problems.append(f"{request}: {told}")
    return problems, tally


# -- timing ---------------------------------------------------------------------------------------


def rate(call: Callable[[Any], object], inputs: Sequence[Any], seconds: float) -> float:
    """Calls per second over one run bounded by *seconds* and by a call count."""
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while done < MAX_CALLS:
        offset = done % len(inputs)
        chunk = inputs[offset : offset + 500]
        for item in chunk:
            call(item)
        done += len(chunk)
        if time.perf_counter() >= deadline:
            break
    return done / (time.perf_counter() - start)


def latencies(call: Callable[[Any], object], inputs: Sequence[Any], samples: int) -> list[int]:
    """Per-call nanoseconds over a bounded sample, timed one call at a time."""
    clock = time.perf_counter_ns
    out: list[int] = []
    for item in inputs[:samples]:
        t0 = clock()
        call(item)
        out.append(clock() - t0)
    return out


def percentile(values: list[int], q: float) -> float:
    """The *q*-th percentile (0..100) of *values*, in microseconds."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))] / 1000


def main(argv: Sequence[str] | None = None) -> int:
    """Check agreement, then time the three formulations; exit 1 on any disagreement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--entities", type=int, default=3000)
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=20250113)
    parser.add_argument("--seconds", type=float, default=1.0, help="time budget per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    pack = bench_pack()
    table = country_table(pack)
    mix = generate_mix(
        args.seed,
        entities=args.entities,
        models=args.models,
        requests=args.requests,
        table=table,
    )
    requests = mix.requests
    print(
        f"python {platform.python_version()}, casbin {casbin_version()}, cedarpy "
        f"{cedarpy_version()}, pack {pack.id} {pack.digest[:19]}"
    )
    print(
        f"mix: {len(requests)} requests, {len({r.entity_id for r in requests})} entities, "
        f"{len({r.model_id for r in requests})} models, "
        f"{len({r.country for r in requests})} network countries (incl. unknown), seed {args.seed}"
    )

    # A fresh gate decides the mix first: its cache is cold for this pass only.
    cold = EngineDecider(pack, mix)
    t0 = time.perf_counter()
    for request in requests:
        cold.decide(request)
    cold_rate = len(requests) / (time.perf_counter() - t0)
    cold_cache = cold.state.engine.cache_info()

    engine, casbin_decider, cedar = build_deciders(pack, mix)
    problems, tally = disagreements(requests, (engine, casbin_decider, cedar))
    # Cedar's batch call must give the same answers as its one-by-one call.
    batches = [requests[i : i + 1000] for i in range(0, len(requests) - 999, 1000)]
    batched = [a for chunk in batches for a in cedar.decide_batch(chunk)]
    problems += [
        f"{r}: cedarpy batch={b}, cedarpy={cedar.decide(r)}"
        for r, b in zip(requests, batched, strict=False)
        if b != cedar.decide(r)
    ][:20]
    if problems:
        print(f"DISAGREEMENT on {len(problems)}+ requests:", file=sys.stderr)
        for line in problems:
            print("  " + line, file=sys.stderr)
        return 1
    print(
        f"agreement: all three agree on all {len(requests)} decisions (effect, status, reason, rule)"
    )
    for (effect, status, reason, rule), count in sorted(tally.items(), key=lambda kv: -kv[1]):
        print(f"  {count:6d}  {effect:5s} {status or '':3}  {reason:36s} {rule}")

    # Inputs each engine decides from, built outside the timed loops where a middleware would have
    # them already (resolved Identity/Origin) and inside them where they are the engine's own work.
    gate = engine.gate
    prebuilt = [
        (Identity(r.entity_id), declared_origin(r.country, r.flags), r.model_id, r.at)
        for r in requests
    ]
    registry, catalog, evaluator = engine.state.registry, engine.state.catalog, engine.state.engine
    bare: list[dict[str, Any]] = []
    for r in requests:
        found = registry.lookup(r.entity_id)  # the state's registry: in memory, never a miss
        entity = found if isinstance(found, Entity) else None
        bare.append(
            {
                "entity": entity,
                "headquarters": entity.headquarters if entity else None,
                "parent": entity.parent if entity else None,
                "model": catalog.get(r.model_id),
                "network_country": r.country,
                "anonymizer": r.flags,
                "at": r.at,
            }
        )

    def gate_prebuilt(item: tuple[Identity, Origin, str, int]) -> Decision:
        return gate.decide(identity=item[0], origin=item[1], model_id=item[2], at=item[3])

    def evaluate(kwargs: dict[str, Any]) -> object:
        return evaluate_bound(**kwargs)

    evaluate_bound = evaluator.evaluate
    seconds, rounds = args.seconds, args.rounds
    # (call, inputs, decisions per call); measured round-robin so that a noisy neighbour on a shared
    # machine hits every contender alike, and the best round of each is kept.
    contenders: dict[str, tuple[Callable[[Any], object], Sequence[Any], int]] = {
        "aidr_gate Gate.decide, raw inputs": (engine.decide, requests, 1),
        "aidr_gate Gate.decide, resolved facts": (gate_prebuilt, prebuilt, 1),
        "aidr_gate PolicyEngine.evaluate": (evaluate, bare, 1),
        "pycasbin": (casbin_decider.decide, requests, 1),
        "cedarpy is_authorized": (cedar.decide, requests, 1),
        "cedarpy is_authorized_batch (1000)": (cedar.decide_batch, batches, 1000),
    }
    rates = dict.fromkeys(contenders, 0.0)
    for _ in range(rounds):
        for name, (call, inputs, per_call) in contenders.items():
            rates[name] = max(rates[name], rate(call, inputs, seconds) * per_call)
    print(f"\ndecisions per second (best of {rounds} round-robin runs of <= {seconds:g} s each)")
    print(f"  {'aidr_gate Gate.decide, cold cache, first pass':46s} {cold_rate:12,.0f}")
    print(
        f"      (evaluation cache on that pass: {cold_cache.hits} hits, {cold_cache.misses} misses)"
    )
    for name, value in rates.items():
        print(f"  {name:46s} {value:12,.0f}")

    ours = rates["aidr_gate Gate.decide, raw inputs"]
    casbin_rate, cedar_rate = rates["pycasbin"], rates["cedarpy is_authorized"]
    cedar_batch = rates["cedarpy is_authorized_batch (1000)"]
    print("\nratios (aidr_gate Gate.decide from raw inputs, warm cache)")
    print(f"  vs pycasbin                 {ours / casbin_rate:8.1f}x   (target >= 20x)")
    print(f"  vs cedarpy is_authorized    {ours / cedar_rate:8.1f}x   (target > 1x)")
    print(f"  vs cedarpy batch            {ours / cedar_batch:8.1f}x")
    print(
        f"  cold first pass vs pycasbin {cold_rate / casbin_rate:8.1f}x, vs cedarpy {cold_rate / cedar_rate:.1f}x"
    )

    samples = min(len(requests), 20_000)
    clock_cost = statistics.median(latencies(lambda _: None, prebuilt, samples))
    print(
        f"\nper call, microseconds ({samples} calls timed one by one with perf_counter_ns, best of 3"
        f" runs; an empty call takes {clock_cost / 1000:.3f})"
    )
    p50s: dict[str, float] = {}
    for name, call, inputs in (
        ("Gate.decide, resolved facts", gate_prebuilt, prebuilt),
        ("Gate.decide, raw inputs", engine.decide, requests),
        ("PolicyEngine.evaluate", evaluate, bare),
    ):
        # The round with the lowest median, for the same reason as above.
        ns = min(
            (latencies(call, inputs, samples) for _ in range(3)), key=lambda v: percentile(v, 50)
        )
        p50s[name] = percentile(ns, 50)
        print(f"  {name:30s} p50 {p50s[name]:7.2f}   p99 {percentile(ns, 99):7.2f}")

    print("\ntargets")
    for claim, met in (
        (f"aidr_gate >= 20x pycasbin ({ours / casbin_rate:.1f}x)", ours >= 20 * casbin_rate),
        (f"aidr_gate faster than cedarpy ({ours / cedar_rate:.1f}x)", ours > cedar_rate),
        (
            f"Gate.decide p50 < 5 us ({p50s['Gate.decide, resolved facts']:.2f} us)",
            p50s["Gate.decide, resolved facts"] < 5,
        ),
    ):
        print(f"  {'met   ' if met else 'MISSED'}  {claim}")
    print(f"whole run {time.perf_counter() - started:.1f} s")
    return 0


def casbin_version() -> str:
    """The installed pycasbin version."""
    from importlib.metadata import version

    return version("casbin")


def cedarpy_version() -> str:
    """The installed cedarpy version."""
    from importlib.metadata import version

    return version("cedarpy")


if __name__ == "__main__":
    sys.exit(main())
