"""Shared facts: what a class of decisions shares, written once per journal file, not per request.

Most of a decision's evidence is the same for every request of its kind: the pack (id, digest,
legal status), the entity with its headquarters, parent, denied flag and agreements, the model's
training compute, weights and tiers, the jurisdiction the engine worked out, the agreement state,
the verifying key and algorithm, how the client address was chosen and which GeoIP build placed it.
Written into every record it made a record 3 KB. Here it is written once per file, inline, in
the first record of its class there (``aidr.facts`` is then the facts object, with its ``id``),
and the later records of the class name it (``aidr.facts`` is then the id)::

    "aidr":{"schema":2,"facts":{"id":"<16 hex>","policy":{...},"shadow":...,"identity":{...},
            "origin":{...},"entity":{...},"model":{...},"jurisdiction":{...},"agreement":{...}},...}
    "aidr":{"schema":2,"facts":"<16 hex>",...}

The id is the first 16 hex of SHA-256 of the facts' own JSON, so the same facts get the same id in
every process and file. A file read on its own holds the facts of all its records (each new file,
and each start, writes them again). The subtrees have the shape of ``Decision.to_dict()``'s
evidence (:func:`full_tree` gives the whole tree a record reads back to).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from aidr_gate.audit.record import (
    SCHEMA_VERSION,
    AuditEvent,
    ObjectCache,
    RequestContext,
    _Clock,
    compact,
)
from aidr_gate.bounded import store_bounded
from aidr_gate.decision import Decision, Effect, Mode
from aidr_gate.facts import Identity, Origin

FACTS_ID_HEX = 16
# The identity's and the origin's members that many requests share (the rest is per request).
IDENTITY_FACTS = (
    "issuer",
    "key_id",
    "algorithm",
    "method",
    "claimed_headquarters",
    "claimed_parent",
)
ORIGIN_FACTS = (
    "resolved_by",
    "country_source",
    "anonymizer",
    "database",
    "database_build",
    "anonymizer_database",
    "anonymizer_database_build",
    "region",
    "region_source",
)


@dataclass(frozen=True, slots=True)
class Shared:
    """The facts of one class of decisions: their id, and ``aidr.facts`` both ways (JSON)."""

    refs: tuple[object, ...]
    facts_id: str
    facts: bytes  # the facts object, inline: the first record of the class in a file
    ref: bytes  # the id, as a JSON string: every later record


def _identity_part(identity: Identity) -> dict[str, Any]:
    full = identity.to_dict()
    return {key: full[key] for key in IDENTITY_FACTS}


def _origin_part(origin: Origin) -> dict[str, Any]:
    full = origin.to_dict()
    return {key: full[key] for key in ORIGIN_FACTS}


def _frozen(part: dict[str, Any]) -> tuple[Any, ...]:
    """A hashable form of an identity's or origin's shared part (lists become tuples)."""
    return tuple(tuple(v) if isinstance(v, list) else v for v in part.values())


class FactsBook:
    """Builds each class's :class:`Shared` facts once, and says when a facts record is due.

    Keyed by the identity of the objects the facts rest on (the engine's cached facts, the
    registry's entity, the catalogue's model, the pack reference), plus the identity's and
    origin's shared parts by value. Bounded: past *limit* classes the cache starts afresh.
    """

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._shared: dict[tuple[Any, ...], Shared] = {}
        self._identities: ObjectCache[Identity] = ObjectCache(
            lambda i: _frozen(_identity_part(i)), limit
        )
        self._origins: ObjectCache[Origin] = ObjectCache(lambda o: _frozen(_origin_part(o)), limit)
        self._written: set[str] = set()  # facts ids written to the current file

    def shared(self, decision: Decision) -> Shared:
        """The facts of *decision*'s class."""
        evidence = decision.evidence
        identity = evidence.identity
        origin = evidence.origin
        refs = (
            evidence.facts,
            evidence.entity,
            evidence.model,
            evidence.agreement,
            decision.policy,
            decision.shadow,
            evidence.screening,  # one object per entity and list version (the screening table)
        )
        key = (
            *map(id, refs),
            decision.registry,
            evidence.entity_id,
            evidence.entity_source,
            evidence.claims_disagree,
            evidence.model_requested,
            evidence.model_tier_source,
            None if identity is None else self._identities.get(identity),
            None if origin is None else self._origins.get(origin),
        )
        hit = self._shared.get(key)
        # Tuple equality checks identity first; equal objects give the same facts anyway.
        if hit is not None and hit.refs == refs:
            return hit
        built = _build(decision, refs)
        store_bounded(self._shared, self._limit, key, built)
        return built

    def due(self, shared: Shared) -> bool:
        """True (once per file) when the next record of *shared*'s class must carry its facts."""
        written = self._written
        if shared.facts_id in written:
            return False
        if len(written) >= self._limit:
            written.clear()  # facts records written again: harmless, and bounded
        written.add(shared.facts_id)
        return True

    def undue(self, shared: Shared) -> None:
        """*shared*'s facts were not written after all (its record was rendered again)."""
        self._written.discard(shared.facts_id)

    def forget(self) -> None:
        """A new file begins: every facts record is due again before its first use there."""
        self._written.clear()


def facts_tree(decision: Decision) -> dict[str, Any]:
    """The facts of *decision*'s class, without their id: subtrees of ``Decision.to_dict()``."""
    evidence = decision.evidence
    tree = evidence.to_dict()
    identity = evidence.identity
    origin = evidence.origin
    return {
        "policy": decision.policy.to_dict(),
        "shadow": decision.shadow.to_dict() if decision.shadow else None,
        "identity": None if identity is None else _identity_part(identity),
        "origin": None if origin is None else _origin_part(origin),
        "entity": tree["entity"],
        "model": tree["model"],
        "jurisdiction": tree["jurisdiction"],
        "agreement": tree["agreement"],
        "registry": {"revision": decision.registry},
        "screening": tree["screening"],
    }


def facts_id(tree: dict[str, Any]) -> str:
    """The id of a facts tree (without its ``id`` member): a prefix of its JSON's SHA-256."""
    digest = hashlib.sha256(orjson.dumps(tree, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return digest[:FACTS_ID_HEX]


def _build(decision: Decision, refs: tuple[object, ...]) -> Shared:
    tree = facts_tree(decision)
    ident = facts_id(tree)
    return Shared(
        refs=refs,
        facts_id=ident,
        facts=compact(orjson.dumps({"id": ident, **tree})),
        ref=compact(orjson.dumps(ident)),
    )


def request_tree(request: RequestContext | None) -> dict[str, Any]:
    """The request, gate and upstream members of the full tree."""
    return {
        "request": None
        if request is None
        else {
            "ending": request.ending.value,
            "headers": None,  # filled by the caller: the redactor decides
            "body_bytes": request.body_bytes,
            "cut_of": request.cut_of,
        },
        "gate": {"added_us": request.gate_us if request else None},
        "upstream": {
            "status": request.upstream_status if request else None,
            "duration_us": request.upstream_duration_us if request else None,
            "error": request.upstream_error if request else None,
        },
    }


def full_tree(
    event: AuditEvent, headers: Callable[[RequestContext], Mapping[str, str]]
) -> dict[str, Any]:
    """The whole evidence tree of *event*, as schema 1 records carried it under ``aidr``.

    What a compact record and its facts read back to (``reader.py``), less the token
    cache's ``identity.cached`` flag, which no record keeps: the reference the tests hold both to.
    *headers* gives the recorded headers of a request (the redactor's).
    """
    decision = event.decision
    tree = decision.to_dict()
    evidence = tree["evidence"]
    identity = evidence["identity"]
    if identity is not None:
        identity.pop("cached")
    out: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "decision": {
            "id": decision.decision_id,
            "at": _Clock().format(decision.at),
            "effect": decision.effect.value,
            "status": decision.status,
            "reasons": list(decision.reasons),
            "rule": decision.rule,
            "mode": decision.mode.value,
            "blocked": decision.effect is Effect.DENY and decision.mode is Mode.ENFORCE,
        },
        "policy": tree["policy"],
        "shadow": tree["shadow"],
        "registry": tree["registry"],
        **evidence,
        **request_tree(event.request),
    }
    if event.request is not None:
        out["request"]["headers"] = dict(headers(event.request))
    return out
