"""Finding pack files and layering a pack on the packs it ``extends``.

Merge rules: groups merge by id (the child wins); ``country_tiers``, ``model_tiers``,
``agreements`` and ``default`` are taken whole from the nearest pack that defines them; rules are
the parent's in order (a child rule with the same id replaces it in place, ``remove_rules`` drops
one), then the child's new rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from aidr_gate.document import join, load_document
from aidr_gate.errors import ConfigError, Problem
from aidr_gate.outcome import Outcome
from aidr_gate.policy.reach import (
    RegionGroup,
    read_during,
    read_region_groups,
    read_status_history,
)
from aidr_gate.policy.reader import (
    RawPack,
    RuleContext,
    read_condition,
    read_groups,
    read_id_set,
    read_model_tiers,
    read_outcome,
    read_raw,
    read_tiers,
)
from aidr_gate.policy.schema import (
    MAX_EXTENDS_DEPTH,
    PACK_STATUSES,
    CountryGroup,
    ModelTiers,
    Pack,
    Rule,
    compute_digest,
)
from aidr_gate.registry import AGREEMENT_TYPES


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
    chain: list[RawPack] = []
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
        raw = read_raw(load_document(current))
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


@dataclass(slots=True)
class _Layers:
    """What the chain's files contribute, each from the nearest pack that defines it."""

    groups: dict[str, CountryGroup] = field(default_factory=dict)
    region_groups: dict[str, RegionGroup] = field(default_factory=dict)
    tiers_source: RawPack | None = None
    model_tiers: ModelTiers | None = None
    accepted: frozenset[str] | None = None
    default: Outcome | None = None


def _layer(layers: _Layers, raw: RawPack) -> None:
    """Lay one file (root first) over what the packs it extends defined."""
    data, check = raw.data, raw.check
    layers.groups.update(read_groups(check, data.get("country_groups")))
    layers.region_groups.update(read_region_groups(check, data.get("region_groups")))
    if data.get("country_tiers") is not None:
        layers.tiers_source = raw
    if data.get("model_tiers") is not None:
        layers.model_tiers = read_model_tiers(check, data["model_tiers"]) or layers.model_tiers
    if data.get("agreements") is not None:
        layers.accepted = _accepted_types(raw, layers.accepted)
    if data.get("default") is not None:
        outcome = read_outcome(check, data["default"], "default", f"{raw.id}/default")
        layers.default = outcome or layers.default


def _accepted_types(raw: RawPack, inherited: frozenset[str] | None) -> frozenset[str] | None:
    spec = raw.check.mapping(raw.data["agreements"], "agreements", keys=("accepted_types",))
    if not spec or spec.get("accepted_types") is None:
        return inherited
    return read_id_set(
        raw.check,
        spec["accepted_types"],
        "agreements.accepted_types",
        AGREEMENT_TYPES,
        "agreement type",
    )


def _merge(chain: list[RawPack]) -> Pack | None:
    """Merge a chain (root first) into one pack; problems are recorded on each file's checker."""
    layers = _Layers()
    for raw in chain:
        _layer(layers, raw)
    source = layers.tiers_source
    tiers = (
        read_tiers(source.check, source.data["country_tiers"], layers.groups) if source else None
    )
    child = chain[-1]
    if layers.model_tiers is None:
        child.check.error("model_tiers", "no pack in the chain defines model_tiers")
    if layers.default is None:
        child.check.error("default", "no pack in the chain defines a default outcome")
    ctx = RuleContext(
        tier_ids=tiers.order if tiers else (),
        group_ids=frozenset(layers.groups),
        model_tier_ids=tuple(t.id for t in layers.model_tiers.tiers) if layers.model_tiers else (),
        region_groups=layers.region_groups,
    )
    rules: list[Rule] = []
    for raw in chain:
        _merge_rules(raw, rules, ctx)
    rules.sort(key=lambda rule: rule.last)  # stable: the order within each part is kept
    if layers.model_tiers is None or layers.default is None:
        return None
    since, until = _effective(child)
    meta = child.data
    notes = meta.get("notes")
    pack = Pack(
        id=child.id,
        title=str(meta.get("title", "")),
        status=str(meta.get("status", "")),
        citations=_citations(child),
        effective_from=since,
        effective_until=until,
        extends=tuple(r.id for r in reversed(chain[:-1])),
        groups=layers.groups,
        tiers=tiers,
        model_tiers=layers.model_tiers,
        accepted_agreement_types=layers.accepted,
        rules=tuple(rules),
        default=layers.default,
        files=tuple(r.check.document.file for r in chain),
        notes=notes if isinstance(notes, str) else None,
        region_groups=layers.region_groups,
        status_history=read_status_history(child.check, meta.get("status_history"), PACK_STATUSES),
    )
    return _with_digest(pack)


def _effective(child: RawPack) -> tuple[float | None, float | None]:
    """The child's ``effective.from`` and ``effective.until`` (a pack's dates are its own)."""
    check = child.check
    effective = (
        check.mapping(
            child.data.get("effective", {}),
            "effective",
            keys=("from", "until", "compliance", "published", "note"),
        )
        or {}
    )
    since = check.instant(effective["from"], "effective.from") if effective.get("from") else None
    until = check.instant(effective["until"], "effective.until") if effective.get("until") else None
    return since, until


def _citations(child: RawPack) -> tuple[str, ...]:
    check = child.check
    cites = [
        c
        for i, c in enumerate(check.sequence(child.data.get("citations", []), "citations") or [])
        if check.string(c, f"citations[{i}]")
    ]
    if child.data.get("status") in ("in-force", "not-enforced", "rescinded") and not cites:
        check.error("citations", "a pack that encodes a real rule must cite it")
    return tuple(cites)


def _with_digest(pack: Pack) -> Pack:
    return replace(pack, digest=compute_digest(pack))


def _merge_rules(raw: RawPack, rules: list[Rule], ctx: RuleContext) -> None:
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
        when = read_condition(check, spec.get("when"), join(path, "when"), ctx)
        outcome = read_outcome(check, spec.get("then"), join(path, "then"), f"{raw.id}/{rule_id}")
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
