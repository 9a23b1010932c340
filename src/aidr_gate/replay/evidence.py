"""Rebuilding the engine's inputs from one audit record's ``aidr`` evidence tree.

An audit record (``audit/record.py``: ECS, or OCSF with the same tree under ``unmapped.aidr``)
carries every fact its decision used: the entity with its headquarters, ultimate parent, denied
flag and agreements; the model's training compute, weights and catalogue tier; the network
country and anonymizer flags; the evaluation time. This module turns those back into the
:class:`Entity`, :class:`Model` and plain facts that ``PolicyEngine.evaluate`` takes, or into a
:class:`MissingEvidence` naming the field that is absent: a record is never guessed at.

With a registry or catalogue given (``replay --registry/--catalog``), the entity and the model are
looked up there by the recorded ids instead, the way the gate itself resolves them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from aidr_gate.audit.chain import CHECKPOINT_ACTION
from aidr_gate.audit.reader import aidr_tree as aidr_tree  # re-exported: bench/replay.py
from aidr_gate.bounded import store_bounded
from aidr_gate.catalog import Model, ModelCatalog
from aidr_gate.document import parse_instant
from aidr_gate.errors import AidrGateError
from aidr_gate.facts import AnonymizerFlag, Identity
from aidr_gate.gate import jurisdiction_of
from aidr_gate.policy.reach import SCREENING_FLAGS
from aidr_gate.registry import Agreement, Entity, EntityRegistry

READABLE_SCHEMAS = (1, 2)  # 1: whole trees; 2: compact records and facts records
_KEY_MEMO_LIMIT = 65_536
_MINUTE_MEMO_LIMIT = 65_536


class MissingEvidence(AidrGateError):
    """A record lacks (or garbles) a fact the engine needs; ``why`` names the field."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


_CHECKPOINT = b'"action":"%b"' % CHECKPOINT_ACTION.encode()


def is_checkpoint(line: bytes) -> bool:
    """True for a signed checkpoint line of the chain (not a request)."""
    return _CHECKPOINT in line and b'"checkpoint":{' in line


class Clock:
    """Parses the renderer's ``YYYY-MM-DDTHH:MM:SS.mmmZ`` quickly (the minute part is memoised)."""

    def __init__(self) -> None:
        self._minutes: dict[str, int] = {}

    def parse(self, text: object) -> float | None:
        """Seconds since the epoch, or ``None`` when *text* is not a time."""
        if type(text) is not str:
            return None
        minute = self._minutes.get(text[:17])
        if minute is not None and len(text) == 24 and text[19] == "." and text[23] == "Z":
            seconds, millis = text[17:19], text[20:23]
            # Seconds 60 to 99 are no time: left to parse_instant, which refuses them (the last
            # minute of the year 9999 plus 60 seconds would be past what a report can print).
            if seconds.isdigit() and seconds < "60" and millis.isdigit():
                return minute + int(seconds) + int(millis) / 1000
        at = parse_instant(text)
        # Only the renderer's UTC layout seeds the memo: ``...T05:00:30.0+05`` is as long, but its
        # minute prefix is not a UTC minute.
        utc = len(text) == 24 and text[16] == ":" and text[19] == "." and text[23] == "Z"
        if at is not None and utc:
            store_bounded(self._minutes, _MINUTE_MEMO_LIMIT, text[:17], int(at) - int(at) % 60)
        return at


@dataclass(frozen=True, slots=True)
class Inputs:
    """What the engine needs for one distinct kind of request, with the labels reports group by.

    Many records share one ``Inputs`` (same entity, model, country and flags); only the time
    differs. ``bounds`` are the instants at which anything time-dependent for these inputs can
    change (agreement windows), so a verdict holds for every time between two of them.
    """

    entity: Entity | None
    headquarters: str | None
    parent: str | None
    model: Model | None
    network_country: str | None
    anonymizer: frozenset[AnonymizerFlag]
    entity_label: str
    model_label: str
    old_model_tier: str
    bounds: tuple[float, ...]
    # The entity's screening flags as recorded (none when the gate screened nothing), the
    # network region, and the list version the decision saw ("date/sha256:..."), or None.
    screening: frozenset[str] = frozenset()
    region: str | None = None
    list_version: str | None = None
    # Verdicts already computed for these inputs, by position among ``bounds`` (see ``run``).
    verdicts: dict[int, Any] = field(default_factory=dict, compare=False, repr=False)


def _require(tree: dict[str, Any], key: str, where: str) -> Any:
    if not isinstance(tree, dict) or key not in tree:
        raise MissingEvidence(f"missing {where}.{key}")
    return tree[key]


def _country(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != 2 or not value.isalpha():
        raise MissingEvidence(f"{where} is not a country code: {value!r}")
    return value


def _agreement(raw: Any, where: str) -> Agreement:
    try:
        return Agreement.from_dict(raw, where)
    except ValueError as exc:
        raise MissingEvidence(str(exc)) from None


def recorded_entity(raw: Any) -> tuple[Entity | None, str | None, str | None]:
    """The entity, headquarters and parent as the record has them (``aidr.entity``)."""
    where = "aidr.entity"
    if not isinstance(raw, dict):
        raise MissingEvidence(f"missing {where}")
    known = _require(raw, "known", where)
    headquarters = _country(_require(raw, "headquarters", where), f"{where}.headquarters")
    parent = _country(_require(raw, "parent", where), f"{where}.parent")
    if not known:
        return None, headquarters, parent
    entity_id = _require(raw, "id", where)
    if not isinstance(entity_id, str):
        raise MissingEvidence(f"{where}.id is not text")
    denied = _require(raw, "denied", where)
    if not isinstance(denied, bool):
        raise MissingEvidence(f"{where}.denied is not true or false")
    agreements = _require(raw, "agreements", where)
    if not isinstance(agreements, list):
        raise MissingEvidence(f"{where}.agreements is not a list")
    name = raw.get("name")
    reason = raw.get("denied_reason")
    entity = Entity(
        id=entity_id,
        headquarters=headquarters,
        # The record holds the effective parent (the headquarters when the entity has none);
        # the engine treats both the same way.
        parent=parent,
        name=name if isinstance(name, str) else None,
        denied=denied,
        denied_reason=reason if isinstance(reason, str) else None,
        agreements=tuple(
            _agreement(a, f"{where}.agreements[{i}]") for i, a in enumerate(agreements)
        ),
    )
    return entity, headquarters, parent


def recorded_model(raw: Any) -> Model | None:
    """The model as the record has it (``aidr.model``); ``None`` for an unknown model."""
    try:
        return Model.from_evidence(raw, "aidr.model")
    except ValueError as exc:
        raise MissingEvidence(str(exc)) from None


def _anonymizer(raw: Any) -> frozenset[AnonymizerFlag]:
    if not isinstance(raw, list):
        raise MissingEvidence("aidr.origin.anonymizer is not a list")
    try:
        return frozenset(AnonymizerFlag(flag) for flag in raw)
    except ValueError:
        raise MissingEvidence(f"aidr.origin.anonymizer has an unknown flag: {raw!r}") from None


def recorded_screening(raw: Any) -> tuple[frozenset[str], str | None]:
    """The screening flags and list version a record holds (``aidr.screening``, or ``null``)."""
    if raw is None:
        return frozenset(), None
    if not isinstance(raw, dict):
        raise MissingEvidence("aidr.screening is not an object")
    flags = raw.get("flags")
    if not isinstance(flags, list) or not all(f in SCREENING_FLAGS for f in flags):
        raise MissingEvidence(f"aidr.screening.flags is not a list of flags: {flags!r:.80}")
    version = raw.get("list_version")
    return frozenset(flags), version if isinstance(version, str) else None


def _region(origin: dict[str, Any]) -> str | None:
    region = origin.get("region")
    if region is not None and not (isinstance(region, str) and region[:2] == origin.get("country")):
        raise MissingEvidence(f"aidr.origin.region is not a region of its country: {region!r:.20}")
    return region


class EvidenceReader:
    """Turns ``aidr`` trees into :class:`Inputs`, memoised per distinct evidence.

    Records of one gate share their entity, model and jurisdiction evidence byte for byte, so the
    objects are built once per distinct combination (a bounded memo), not once per record.
    """

    def __init__(
        self,
        *,
        registry: EntityRegistry | None = None,
        catalog: ModelCatalog | None = None,
        pack_bounds: tuple[float, ...] = (),
    ) -> None:
        self.registry = registry
        self.catalog = catalog
        self._pack_bounds = pack_bounds
        self._memo: dict[bytes, Inputs] = {}

    def inputs(self, tree: dict[str, Any]) -> Inputs:
        """The engine's inputs for one policy decision's tree; raises :class:`MissingEvidence`."""
        origin = tree.get("origin")
        if type(origin) is not dict:
            raise MissingEvidence("missing aidr.origin")
        entity_raw = tree.get("entity")
        model_raw = tree.get("model")
        identity = tree.get("identity")
        claims = None
        if self.registry is not None and type(identity) is dict:
            claims = (
                identity.get("entity_id"),
                identity.get("claimed_headquarters"),
                identity.get("claimed_parent"),
            )
        try:
            # Token claims only matter when the entity is looked up again (``--registry``); the
            # recorded entity already holds the headquarters they gave.
            key = orjson.dumps(
                (
                    entity_raw,
                    model_raw,
                    origin.get("country", 0),
                    origin.get("anonymizer", 0),
                    claims,
                    origin.get("region"),
                    tree.get("screening"),
                )
            )
        except TypeError:
            raise MissingEvidence("the evidence holds values that are not JSON") from None
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        built = self._build(entity_raw, model_raw, origin, identity, tree.get("screening"))
        store_bounded(self._memo, _KEY_MEMO_LIMIT, key, built)
        return built

    def _build(
        self,
        entity_raw: Any,
        model_raw: Any,
        origin: dict[str, Any],
        identity: Any,
        screening_raw: Any = None,
    ) -> Inputs:
        country = _country(_require(origin, "country", "aidr.origin"), "aidr.origin.country")
        anonymizer = _anonymizer(_require(origin, "anonymizer", "aidr.origin"))
        screening, list_version = recorded_screening(screening_raw)
        if self.registry is None:
            entity, headquarters, parent = recorded_entity(entity_raw)
            entity_label = _entity_label(entity_raw)
        else:
            entity, headquarters, parent, entity_label = _registry_entity(
                self.registry, entity_raw, identity
            )
        model = (
            recorded_model(model_raw)
            if self.catalog is None
            else _catalog_model(self.catalog, model_raw)
        )
        model_label = model.id if model is not None else _requested(model_raw)
        old_tier = model_raw.get("tier") if isinstance(model_raw, dict) else None
        bounds = set(self._pack_bounds)
        if entity is not None:
            for agreement in entity.agreements:
                bounds.update(
                    t for t in (agreement.valid_from, agreement.valid_until) if t is not None
                )
        return Inputs(
            entity=entity,
            headquarters=headquarters,
            parent=parent,
            model=model,
            network_country=country,
            anonymizer=anonymizer,
            entity_label=entity_label,
            model_label=model_label,
            old_model_tier=old_tier if isinstance(old_tier, str) else "(none)",
            bounds=tuple(sorted(bounds)),
            screening=screening,
            region=_region(origin),
            list_version=list_version,
        )


def _registry_entity(
    registry: EntityRegistry, entity_raw: Any, identity: Any
) -> tuple[Entity | None, str | None, str | None, str]:
    entity_id = entity_raw.get("id") if isinstance(entity_raw, dict) else None
    if entity_id is None and isinstance(identity, dict):
        entity_id = identity.get("entity_id")
    if entity_id is not None and not isinstance(entity_id, str):
        raise MissingEvidence("aidr.entity.id is not text")
    claimed: Identity | None = None
    if isinstance(identity, dict) and entity_id is not None:
        claimed = Identity(
            entity_id=entity_id,
            claimed_headquarters=_country(
                identity.get("claimed_headquarters"), "aidr.identity.claimed_headquarters"
            ),
            claimed_parent=_country(identity.get("claimed_parent"), "aidr.identity.claimed_parent"),
            method="declared",
        )
    entity = registry.get(entity_id) if entity_id else None
    # The gate's own rule: the registry wins over token claims.
    headquarters, parent, _, _ = jurisdiction_of(entity, claimed)
    return entity, headquarters, parent, entity_id or "(no entity)"


def _catalog_model(catalog: ModelCatalog, model_raw: Any) -> Model | None:
    if not isinstance(model_raw, dict):
        raise MissingEvidence("missing aidr.model")
    name = model_raw.get("requested") or model_raw.get("id")
    if name is None:
        if "requested" not in model_raw:
            raise MissingEvidence("missing aidr.model.requested")
        return None
    if not isinstance(name, str):
        raise MissingEvidence("aidr.model.requested is not text")
    return catalog.get(name)


def _entity_label(raw: Any) -> str:
    entity_id = raw.get("id") if isinstance(raw, dict) else None
    return entity_id if isinstance(entity_id, str) else "(no entity)"


def _requested(raw: Any) -> str:
    name = raw.get("requested") if isinstance(raw, dict) else None
    return name if isinstance(name, str) else "(no model)"


def check_schema(tree: dict[str, Any]) -> None:
    """Raise :class:`MissingEvidence` for a tree this replay cannot read."""
    if "render_error" in tree:
        raise MissingEvidence(
            f"the gate could not render this record ({tree.get('render_error')}): no evidence"
        )
    schema = tree.get("schema")
    if schema not in READABLE_SCHEMAS:
        raise MissingEvidence(f"aidr.schema is {schema!r}, this replay reads 1 and 2")
    missing = tree.get("facts_missing")
    if missing is not None:
        raise MissingEvidence(
            f"the facts record {missing!r} the record names was not among the files read"
        )
