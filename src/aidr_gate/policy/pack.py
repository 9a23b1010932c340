"""Policy packs: versioned data that says who may use which model tier from where.

A pack file names its legal source and dates, defines country groups (with dated membership), the
country tiers built from them, the model tiers built from training compute and weights, and ordered
rules. ``extends`` layers a pack on another (the US embargo baseline, say). Loading validates
everything and reports each problem as ``file:line: key.path: what is wrong``.

Merge rules for ``extends``: groups merge by id (the child wins); ``country_tiers``, ``model_tiers``,
``agreements`` and ``default`` are taken whole from the nearest pack that defines them; rules are the
parent's in order (a child rule with the same id replaces it in place, ``remove_rules`` drops one),
then the child's new rules.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aidr_gate.catalog import Weights
from aidr_gate.document import Checker, Document, format_instant, join, load_document
from aidr_gate.errors import ConfigError, Problem
from aidr_gate.facts import AnonymizerFlag
from aidr_gate.outcome import Effect, Outcome
from aidr_gate.patterns.conditions import pattern_keys_in, read_pattern_test
from aidr_gate.patterns.signals import is_pattern_key
from aidr_gate.policy.reach import (
    REGION_KEYS,
    SCREENING_KEYS,
    RegionGroup,
    StatusChange,
    Window,
    read_during,
    read_reach_test,
    read_region_groups,
    read_status_history,
    status_at,
)
from aidr_gate.registry import AGREEMENT_TYPES, AgreementState

# "contested": in the regulation's text, not enforced, its non-enforcement itself challenged
# (aidr-2025-01 after GAO B-337935).
PACK_STATUSES = (
    "in-force",
    "not-enforced",
    "contested",
    "rescinded",
    "proposed",
    "hypothetical",
)
DENY_STATUSES = (401, 403, 451)
MAX_EXTENDS_DEPTH = 8
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


@dataclass(frozen=True, slots=True)
class Membership:
    """A country's membership of a group or tier, optionally limited to ``[since, until)``."""

    country: str
    since: float | None = None
    until: float | None = None

    def holds_at(self, at: float) -> bool:
        """True when the membership is in force at *at*."""
        return (self.since is None or at >= self.since) and (self.until is None or at < self.until)

    def to_dict(self) -> dict[str, Any]:
        """Plain form for digests and diffs."""
        return {
            "country": self.country,
            "from": format_instant(self.since),
            "until": format_instant(self.until),
        }


@dataclass(frozen=True, slots=True)
class CountryGroup:
    """A named set of countries (a Country Group of the EAR, say), with dated membership."""

    id: str
    title: str | None
    citation: str | None
    members: tuple[Membership, ...]


@dataclass(frozen=True, slots=True)
class TierTable:
    """Country tiers, least to most restrictive; countries listed nowhere are in ``default``."""

    order: tuple[str, ...]
    default: str
    members: Mapping[str, tuple[Membership, ...]]


@dataclass(frozen=True, slots=True)
class ModelTier:
    """A model capability tier; a model is in the first tier (most restricted first) it satisfies."""

    id: str
    description: str | None = None
    weights: Weights | None = None
    min_training_ops: float | None = None
    above_open_weight_frontier: bool = False


@dataclass(frozen=True, slots=True)
class ModelTiers:
    """The pack's model tiers and the parameters they are computed with."""

    tiers: tuple[ModelTier, ...]
    unknown_model: str  # the tier an unknown model is treated as (fail closed: the most restricted)
    open_weight_frontier_ops: float | None  # training ops of the most capable open-weight model


@dataclass(frozen=True, slots=True)
class Condition:
    """A rule's ``when``: every test must hold, and at least one branch of each ``any``."""

    tests: tuple[tuple[str, Any], ...] = ()
    any_of: tuple[Condition, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain form for digests and diffs."""
        out: dict[str, Any] = {}
        for key, value in self.tests:
            out[key] = sorted(value) if isinstance(value, frozenset) else value
        if self.any_of:
            out["any"] = [c.to_dict() for c in self.any_of]
        return out


@dataclass(frozen=True, slots=True)
class Rule:
    """One ordered rule: a condition and the outcome when it holds."""

    id: str
    pack: str  # the pack that defined it (rules are inherited through ``extends``)
    when: Condition
    outcome: Outcome
    description: str | None = None
    citation: str | None = None
    during: tuple[Window, ...] = ()  # dated windows the rule applies in; empty: always
    last: bool = False  # evaluated after every rule without it (a base pack's log rules)

    def to_dict(self) -> dict[str, Any]:
        """Plain form for digests and diffs."""
        out: dict[str, Any] = {
            "id": self.id,
            "pack": self.pack,
            "description": self.description,
            "citation": self.citation,
            "when": self.when.to_dict(),
            "then": {
                "effect": self.outcome.effect.value,
                "status": self.outcome.status,
                "reason": self.outcome.reason,
            },
        }
        if self.during:  # only when present: packs without windows keep their digests
            out["during"] = [w.to_dict() for w in self.during]
        if self.last:
            out["last"] = True
        return out


@dataclass(frozen=True, slots=True)
class Pack:
    """A fully merged, validated policy pack."""

    id: str
    title: str
    status: str
    citations: tuple[str, ...]
    effective_from: float | None
    effective_until: float | None
    extends: tuple[str, ...]  # the chain of packs this one extends, nearest first
    groups: Mapping[str, CountryGroup]
    tiers: TierTable | None
    model_tiers: ModelTiers
    accepted_agreement_types: frozenset[str] | None
    rules: tuple[Rule, ...]
    default: Outcome
    files: tuple[str, ...]
    notes: str | None = None
    region_groups: Mapping[str, RegionGroup] = field(default_factory=dict)
    status_history: tuple[StatusChange, ...] = ()
    digest: str = field(default="")

    def status_at(self, at: float) -> str:
        """The pack's legal status at *at* (its ``status_history``, else ``status``)."""
        return status_at(self.status_history, self.status, at)

    def in_window(self, at: float) -> bool:
        """True when *at* falls inside the pack's legal window ``[effective.from, effective.until)``."""
        if self.effective_from is not None and at < self.effective_from:
            return False
        return self.effective_until is None or at < self.effective_until

    def to_dict(self) -> dict[str, Any]:
        """Canonical plain form: what the digest is computed over, and what ``diff`` compares."""
        tiers = None
        if self.tiers is not None:
            tiers = {
                "order": list(self.tiers.order),
                "default": self.tiers.default,
                "members": {
                    t: [m.to_dict() for m in ms] for t, ms in sorted(self.tiers.members.items())
                },
            }
        out: dict[str, Any] = {
            "id": self.id,
            "title": self.title,
            "status": self.status,
            "citations": list(self.citations),
            "effective": {
                "from": format_instant(self.effective_from),
                "until": format_instant(self.effective_until),
            },
            "extends": list(self.extends),
            "country_groups": {
                g.id: {
                    "title": g.title,
                    "citation": g.citation,
                    "members": [m.to_dict() for m in g.members],
                }
                for g in sorted(self.groups.values(), key=lambda g: g.id)
            },
            "country_tiers": tiers,
            "model_tiers": {
                "unknown_model": self.model_tiers.unknown_model,
                "open_weight_frontier_ops": self.model_tiers.open_weight_frontier_ops,
                "tiers": [
                    {
                        "id": t.id,
                        "weights": t.weights.value if t.weights else None,
                        "min_training_ops": t.min_training_ops,
                        "above_open_weight_frontier": t.above_open_weight_frontier,
                    }
                    for t in self.model_tiers.tiers
                ],
            },
            "agreements": {
                "accepted_types": sorted(self.accepted_agreement_types)
                if self.accepted_agreement_types is not None
                else None
            },
            "rules": [r.to_dict() for r in self.rules],
            "default": {
                "effect": self.default.effect.value,
                "status": self.default.status,
                "reason": self.default.reason,
            },
        }
        if self.status_history:
            out["status_history"] = [c.to_dict() for c in self.status_history]
        if self.region_groups:  # only when present: packs without regions keep their digests
            out["region_groups"] = {
                g.id: g.to_dict() for g in sorted(self.region_groups.values(), key=lambda g: g.id)
            }
        return out


def compute_digest(pack: Pack) -> str:
    """``sha256:`` of the canonical JSON of the merged pack: same decisions, same digest."""
    canonical = json.dumps(pack.to_dict(), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


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
class _Context:
    """What a rule may refer to once the pack chain is merged."""

    tier_ids: tuple[str, ...]
    group_ids: frozenset[str]
    model_tier_ids: tuple[str, ...]
    region_groups: Mapping[str, RegionGroup] = field(default_factory=dict)


def _id_set(
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


def _read_condition(
    check: Checker, raw: Any, path: str, ctx: _Context, depth: int = 0
) -> Condition:
    # Pattern signals (``origin_countries_1h``...) are named with their window: ``patterns/``.
    keys = (*CONDITION_KEYS, *pattern_keys_in(raw))
    data = check.mapping(raw, path, keys=keys) if raw is not None else {}
    tests: list[tuple[str, Any]] = []
    any_of: list[Condition] = []
    for key, value in (data or {}).items():
        key_path = join(path, key)
        got: Any = None
        if key in _TIER_FACTS:
            got = _id_set(check, value, key_path, ctx.tier_ids, "country tier")
            if not ctx.tier_ids:
                check.error(key_path, "the pack defines no country_tiers to test")
        elif key in _COUNTRY_FACTS:
            items = [value] if isinstance(value, str) else check.sequence(value, key_path)
            codes = {
                c for i, v in enumerate(items or []) if (c := check.country(v, join(key_path, i)))
            }
            got = frozenset(codes)
        elif key in _GROUP_FACTS:
            got = _id_set(check, value, key_path, ctx.group_ids, "country group")
        elif key in _BOOL_FACTS:
            got = check.boolean(value, key_path)
        elif key == "anonymizer":
            # ``true``: any flag; ``false``: no flag at all (the empty set); a list: any of those.
            if isinstance(value, bool):
                got = frozenset(f.value for f in AnonymizerFlag) if value else frozenset()
            else:
                got = _id_set(check, value, key_path, [f.value for f in AnonymizerFlag], "flag")
        elif key == "model_tier":
            got = _id_set(check, value, key_path, ctx.model_tier_ids, "model tier")
        elif key == "model_weights":
            got = check.string(value, key_path, choices=[w.value for w in Weights])
        elif key == "agreement":
            got = _id_set(
                check, value, key_path, [s.value for s in AgreementState], "agreement state"
            )
        elif is_pattern_key(key):
            got = read_pattern_test(check, key, value, key_path)
        elif key in SCREENING_KEYS or key in REGION_KEYS:
            got = read_reach_test(check, key, value, key_path, ctx.region_groups)
        elif key == "any":
            if depth >= 3:
                check.error(key_path, "'any' may nest at most three deep")
                continue
            branches = check.sequence(value, key_path, allow_empty=False) or []
            for index, branch in enumerate(branches):
                any_of.append(_read_condition(check, branch, join(key_path, index), ctx, depth + 1))
            continue
        if got is not None:
            tests.append((key, got))
    return Condition(tuple(sorted(tests, key=lambda kv: kv[0])), tuple(any_of))


def _read_outcome(check: Checker, raw: Any, path: str, rule_id: str) -> Outcome | None:
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
class _RawPack:
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
        keys = ("country", "group", "from", "until", "note")
        data = check.mapping(item, item_path, keys=keys)
        if data is None:
            continue
        since = check.instant(data["from"], join(item_path, "from")) if "from" in data else None
        until = check.instant(data["until"], join(item_path, "until")) if "until" in data else None
        if since is not None and until is not None and until <= since:
            check.error(join(item_path, "until"), "must be after 'from'")
        if ("country" in data) == ("group" in data):
            check.error(item_path, "give exactly one of 'country' or 'group'")
            continue
        if "country" in data:
            code = check.country(data["country"], join(item_path, "country"))
            if code:
                out.append(Membership(code, since, until))
            continue
        group_id = data["group"]
        if groups is None:
            check.error(
                join(item_path, "group"), "groups can be referenced only from country_tiers"
            )
            continue
        group = groups.get(group_id) if isinstance(group_id, str) else None
        if group is None:
            check.error(
                join(item_path, "group"),
                f"unknown country group {group_id!r} (known: {', '.join(sorted(groups)) or 'none'})",
            )
            continue
        for member in group.members:
            lo = _later(member.since, since)
            hi = _earlier(member.until, until)
            if lo is None or hi is None or lo < hi:
                out.append(Membership(member.country, lo, hi))
    return tuple(out)


def _later(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _earlier(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _read_groups(check: Checker, raw: Any) -> dict[str, CountryGroup]:
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


def _read_tiers(check: Checker, raw: Any, groups: Mapping[str, CountryGroup]) -> TierTable | None:
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


def _read_model_tiers(check: Checker, raw: Any) -> ModelTiers | None:
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
    keys = ("id", "description", "weights", "min_training_ops", "above_open_weight_frontier")
    for index, item in enumerate(
        check.sequence(data.get("tiers"), "model_tiers.tiers", allow_empty=False) or []
    ):
        path = f"model_tiers.tiers[{index}]"
        spec = check.mapping(item, path, keys=keys, required=("id",))
        if spec is None:
            continue
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
        description = spec.get("description")
        if tier_id:
            if any(t.id == tier_id for t in tiers):
                check.error(join(path, "id"), f"tier {tier_id!r} is defined twice")
            tiers.append(
                ModelTier(
                    tier_id,
                    description if isinstance(description, str) else None,
                    weights,
                    ops,
                    bool(above),
                )
            )
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


def _read_raw(document: Document) -> _RawPack:
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
    return _RawPack(check, pack_id, extends, data)


# --- finding and merging ----------------------------------------------------------------------------


def bundled_pack_dir() -> Path:
    """The directory of packs shipped with aidr_gate (installed wheel or source checkout)."""
    here = Path(__file__).resolve().parent.parent
    installed = here / "_bundled" / "policies"
    if installed.is_dir():
        return installed
    return here.parent.parent / "policies"


def find_pack_file(
    ref: str, search: Sequence[Path] = (), relative_to: Path | None = None
) -> Path | None:
    """The file a pack reference names: a path, or an id looked up as ``<id>.yaml`` in *search*."""
    as_path = Path(ref)
    if relative_to is not None and not as_path.is_absolute():
        candidate = relative_to / as_path
        if candidate.is_file():
            return candidate
    if as_path.suffix in (".yaml", ".yml", ".json") or "/" in ref:
        return as_path if as_path.is_file() else None
    for folder in (*search, bundled_pack_dir()):
        for suffix in (".yaml", ".yml", ".json"):
            candidate = folder / f"{ref}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def load_pack(
    ref: str | Path, search: Sequence[Path] = (), *, warnings: list[Problem] | None = None
) -> Pack:
    """Load a pack by id or path, with everything it extends; raise :class:`ConfigError` if invalid."""
    path = Path(ref) if isinstance(ref, Path) else find_pack_file(ref, search)
    if path is None or not path.is_file():
        raise ConfigError(
            Problem(
                str(ref),
                "",
                "no such policy pack (not a file, not a bundled or configured pack id)",
            )
        )
    chain: list[_RawPack] = []
    seen_files: set[Path] = set()
    current: Path | None = path
    while current is not None:
        resolved = current.resolve()
        if resolved in seen_files:
            raise ConfigError(
                Problem(str(current), "extends", "packs extend each other in a cycle")
            )
        if len(chain) >= MAX_EXTENDS_DEPTH:
            raise ConfigError(
                Problem(str(current), "extends", f"more than {MAX_EXTENDS_DEPTH} packs deep")
            )
        seen_files.add(resolved)
        raw = _read_raw(load_document(current))
        chain.append(raw)
        if raw.extends is None:
            current = None
            continue
        parent = find_pack_file(raw.extends, search, relative_to=current.parent)
        if parent is None:
            raw.check.error(
                "extends", f"no pack {raw.extends!r} to extend (not a file, not a known pack id)"
            )
            break
        current = parent
    pack = _merge(list(reversed(chain)))
    problems = [p for raw in chain for p in raw.check.problems]
    errors = [p for p in problems if p.severity == "error"]
    if errors or pack is None:
        raise ConfigError(errors or [Problem(str(path), "", "pack could not be built")])
    if warnings is not None:
        warnings.extend(p for p in problems if p.severity == "warning")
    return pack


def _merge(chain: list[_RawPack]) -> Pack | None:
    """Merge a chain (root first) into one pack; problems are recorded on each file's checker."""
    groups: dict[str, CountryGroup] = {}
    region_groups: dict[str, RegionGroup] = {}
    tiers_source: _RawPack | None = None
    model_tiers: ModelTiers | None = None
    accepted: frozenset[str] | None = None
    default: Outcome | None = None
    for raw in chain:
        groups.update(_read_groups(raw.check, raw.data.get("country_groups")))
        region_groups.update(read_region_groups(raw.check, raw.data.get("region_groups")))
        if raw.data.get("country_tiers") is not None:
            tiers_source = raw
        if raw.data.get("model_tiers") is not None:
            model_tiers = _read_model_tiers(raw.check, raw.data["model_tiers"]) or model_tiers
        if raw.data.get("agreements") is not None:
            spec = raw.check.mapping(raw.data["agreements"], "agreements", keys=("accepted_types",))
            if spec and spec.get("accepted_types") is not None:
                accepted = _id_set(
                    raw.check,
                    spec["accepted_types"],
                    "agreements.accepted_types",
                    AGREEMENT_TYPES,
                    "agreement type",
                )
        if raw.data.get("default") is not None:
            default = (
                _read_outcome(raw.check, raw.data["default"], "default", f"{raw.id}/default")
                or default
            )
    tiers = (
        _read_tiers(tiers_source.check, tiers_source.data["country_tiers"], groups)
        if tiers_source
        else None
    )
    child = chain[-1]
    if model_tiers is None:
        child.check.error("model_tiers", "no pack in the chain defines model_tiers")
    if default is None:
        child.check.error("default", "no pack in the chain defines a default outcome")
    ctx = _Context(
        tier_ids=tiers.order if tiers else (),
        group_ids=frozenset(groups),
        model_tier_ids=tuple(t.id for t in model_tiers.tiers) if model_tiers else (),
        region_groups=region_groups,
    )
    rules: list[Rule] = []
    for raw in chain:
        _merge_rules(raw, rules, ctx)
    rules.sort(key=lambda rule: rule.last)  # stable: the order within each part is kept
    if model_tiers is None or default is None:
        return None
    meta = child.data
    effective = (
        child.check.mapping(
            meta.get("effective", {}),
            "effective",
            keys=("from", "until", "compliance", "published", "note"),
        )
        or {}
    )
    since = (
        child.check.instant(effective["from"], "effective.from") if effective.get("from") else None
    )
    until = (
        child.check.instant(effective["until"], "effective.until")
        if effective.get("until")
        else None
    )
    citations = meta.get("citations", [])
    cites = [
        c
        for i, c in enumerate(child.check.sequence(citations, "citations") or [])
        if child.check.string(c, f"citations[{i}]")
    ]
    if child.data.get("status") in ("in-force", "not-enforced", "rescinded") and not cites:
        child.check.error("citations", "a pack that encodes a real rule must cite it")
    notes = meta.get("notes")
    pack = Pack(
        id=child.id,
        title=str(meta.get("title", "")),
        status=str(meta.get("status", "")),
        citations=tuple(cites),
        effective_from=since,
        effective_until=until,
        extends=tuple(r.id for r in reversed(chain[:-1])),
        groups=groups,
        tiers=tiers,
        model_tiers=model_tiers,
        accepted_agreement_types=accepted,
        rules=tuple(rules),
        default=default,
        files=tuple(r.check.document.file for r in chain),
        notes=notes if isinstance(notes, str) else None,
        region_groups=region_groups,
        status_history=read_status_history(child.check, meta.get("status_history"), PACK_STATUSES),
    )
    return _with_digest(pack)


def _with_digest(pack: Pack) -> Pack:
    return replace(pack, digest=compute_digest(pack))


def _merge_rules(raw: _RawPack, rules: list[Rule], ctx: _Context) -> None:
    check = raw.check
    removals = raw.data.get("remove_rules")
    if removals is not None:
        for index, rule_id in enumerate(check.sequence(removals, "remove_rules") or []):
            position = next((i for i, r in enumerate(rules) if r.id == rule_id), None)
            if position is None:
                check.error(f"remove_rules[{index}]", f"no inherited rule {rule_id!r} to remove")
            else:
                del rules[position]
    own_ids: set[str] = set()
    for index, item in enumerate(check.sequence(raw.data.get("rules", []), "rules") or []):
        path = f"rules[{index}]"
        spec = check.mapping(
            item,
            path,
            keys=("id", "description", "citation", "when", "then", "during", "last"),
            required=("id", "then"),
        )
        if spec is None:
            continue
        rule_id = check.ident(spec.get("id"), join(path, "id"), "rule id")
        if rule_id is None:
            continue
        if rule_id in own_ids:
            check.error(join(path, "id"), f"rule id {rule_id!r} is used twice in this pack")
            continue
        own_ids.add(rule_id)
        when = _read_condition(check, spec.get("when"), join(path, "when"), ctx)
        outcome = _read_outcome(check, spec.get("then"), join(path, "then"), f"{raw.id}/{rule_id}")
        if outcome is None:
            continue
        description, citation = spec.get("description"), spec.get("citation")
        rule = Rule(
            rule_id,
            raw.id,
            when,
            outcome,
            description if isinstance(description, str) else None,
            citation if isinstance(citation, str) else None,
            read_during(check, spec.get("during"), join(path, "during")),
            bool(check.boolean(spec.get("last", False), join(path, "last"))),
        )
        position = next((i for i, r in enumerate(rules) if r.id == rule_id), None)
        if position is None:
            rules.append(rule)
        else:
            rules[position] = rule
