"""The audit event, and what its renderings share (ECS in ``ecs.py``, OCSF in ``ocsf.py``).

An :class:`AuditEvent` is the immutable input of one record: the gate's :class:`Decision` (which
carries every fact it rested on) and a :class:`RequestContext` the transport fills in (method, path,
the allow-listed headers, how the request ended, timings). Renderers turn it into the bytes of one
JSON object; the chain (``chain.py``) then appends the sequence number and hashes.

Rendering reads the decision objects directly and caches the parts that many requests share (the
entity with its agreements, the model, the pack reference, the jurisdiction facts the engine already
caches), so a record costs a few microseconds rather than the ~16 µs of ``Decision.to_dict()``.
Redaction is applied here, whatever the caller passed: no tokens, no bodies, no query strings, no
header values beyond the configured allow-list, and never the credential headers.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, Protocol, TypeVar

import msgspec
import orjson

from aidr_gate.catalog import Model
from aidr_gate.decision import Decision, Effect, Mode
from aidr_gate.document import format_instant
from aidr_gate.facts import Identity, Origin
from aidr_gate.registry import Entity

SCHEMA_VERSION = 1
ECS_VERSION = "8.11.0"
DATASET = "aidr_gate.audit"

# Header names whose values are credentials: never recorded, even when allow-listed by mistake.
ALWAYS_REDACTED: frozenset[str] = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",
        "x-auth-token",
        "x-amz-security-token",
    }
)
DEFAULT_HEADERS: tuple[str, ...] = ("user-agent", "x-request-id", "traceparent")
REDACTED = "[REDACTED]"
MAX_PATH = 2048
MAX_HEADER_VALUE = 512
# A value that carries a credential even under an innocent header name: a JWT or an auth scheme.
_CREDENTIAL = re.compile(
    r"eyJ[A-Za-z0-9_-]{4,}\.|^\s*(?:bearer|basic|digest|splunk|apikey)\s", re.I
)


class Ending(StrEnum):
    """How the request ended, as the transport saw it."""

    COMPLETED = "completed"
    CLIENT_DISCONNECTED = "client-disconnected"
    ERROR = "error"
    DENIED = "denied"


class RequestContext(msgspec.Struct, frozen=True, gc=False):
    """What the transport knows of one request beside the decision. Never holds a body or token.

    ``headers`` should already be limited to the allow-list (see :meth:`Redactor.select`); the
    renderer applies the allow-list again, so a wider tuple is still safe. Times are microseconds.
    A msgspec Struct, like the decision: one is made per request, 18 times faster than a frozen
    dataclass.
    """

    method: str
    path: str
    scheme: str = "http"
    http_version: str = "1.1"
    headers: tuple[tuple[str, str], ...] = ()
    status: int | None = None  # the status the client was sent
    upstream_status: int | None = None
    upstream_duration_us: int | None = None
    gate_us: int | None = None  # time the gate added to the request
    ending: Ending = Ending.COMPLETED
    body_bytes: int | None = None
    upstream_error: str | None = None  # UPSTREAM_UNAVAILABLE, UPSTREAM_TIMEOUT, ... (sidecar)


class AuditEvent(msgspec.Struct, frozen=True, gc=False):
    """The immutable input of one audit record."""

    decision: Decision
    request: RequestContext | None = None


class Redactor:
    """Which request header values may be recorded: the allow-list less the credential headers."""

    def __init__(self, allowed: Iterable[str] = DEFAULT_HEADERS) -> None:
        self.allowed: frozenset[str] = frozenset(h.lower() for h in allowed) - ALWAYS_REDACTED
        raw = []
        for name in self.allowed:
            try:
                raw.append(name.encode("latin-1"))
            except UnicodeEncodeError:  # it can match no raw header
                continue
        self._allowed_raw = frozenset(raw)

    def select(self, raw: Iterable[tuple[bytes, bytes]]) -> tuple[tuple[str, str], ...]:
        """The allow-listed headers of an ASGI ``scope["headers"]`` list, decoded."""
        allowed = self._allowed_raw
        out = []
        for name, value in raw:
            # ASGI names are lower case: only a non-conforming server's names are lowered here.
            if name not in allowed and (name.islower() or name.lower() not in allowed):
                continue
            out.append((name.lower().decode("latin-1"), value.decode("latin-1")))
        return tuple(out)

    def headers(self, pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
        """The recordable headers as a mapping; repeated names are joined with ``, ``."""
        out: dict[str, str] = {}
        allowed = self.allowed
        for name, value in pairs:
            key = name.lower()
            if key not in allowed:
                continue
            text = value[:MAX_HEADER_VALUE]
            if _CREDENTIAL.search(text):
                text = REDACTED
            out[key] = f"{out[key]}, {text}" if key in out else text
        return out


def clean_path(path: str) -> str:
    """The path without its query string or fragment (which may carry keys), bounded in length."""
    if "?" not in path and "#" not in path and len(path) <= MAX_PATH:
        return path  # the common case, once per record
    cut = len(path)
    for mark in ("?", "#"):
        at = path.find(mark)
        if 0 <= at < cut:
            cut = at
    return path[: min(cut, MAX_PATH)]


K = TypeVar("K")


class ObjectCache(Generic[K]):
    """A bounded cache keyed by object identity, for frozen objects many records share.

    It holds a strong reference to each key object, so an id cannot be reused while cached.
    """

    def __init__(self, build: Callable[[K], Any], limit: int = 4096) -> None:
        self._build = build
        self._limit = limit
        self._items: dict[int, tuple[K, Any]] = {}

    def get(self, obj: K) -> Any:
        """The built value for *obj*."""
        hit = self._items.get(id(obj))
        if hit is not None and hit[0] is obj:
            return hit[1]
        value = self._build(obj)
        if len(self._items) >= self._limit:
            self._items.clear()
        self._items[id(obj)] = (obj, value)
        return value


def _entity_static(entity: Entity) -> dict[str, Any]:
    return {
        "name": entity.name,
        "denied": entity.denied,
        "denied_reason": entity.denied_reason,
        "agreements": [a.to_dict() for a in entity.agreements],
    }


_NO_ENTITY: dict[str, Any] = {
    "name": None,
    "denied": False,
    "denied_reason": None,
    "agreements": [],
}
_NO_MODEL: dict[str, Any] = {
    "id": None,
    "known": False,
    "training_ops": None,
    "weights": None,
    "catalog_tier": None,
}


def _model_static(model: Model | None) -> dict[str, Any]:
    if model is None:
        return _NO_MODEL
    return {
        "id": model.id,
        "known": True,
        "training_ops": model.training_ops,
        "weights": model.weights,
        "catalog_tier": model.tier,
    }


class _Clock:
    """ISO 8601 UTC with milliseconds; the second part is formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""
        self._json_at = (-1, -1)  # the (second, millisecond) self._json is for
        self._json = b""

    def format(self, at: float) -> str:
        second = int(at)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((at - second) * 1000):03d}Z"

    def json(self, at: float) -> bytes:
        """:meth:`format` as a JSON string; records of the same millisecond share it."""
        second = int(at)
        key = (second, int((at - second) * 1000))  # as format() computes it
        # Its own key, not format()'s: format() moves self._second without touching self._json.
        if key != self._json_at:
            self._json = b'"%s"' % self.format(at).encode("ascii")
            self._json_at = key
        return self._json


@dataclass(frozen=True, slots=True)
class Shared:
    """The parts of a record that depend only on objects many decisions share, pre-serialised."""

    refs: tuple[object, ...]
    policy: orjson.Fragment
    shadow: orjson.Fragment | None
    entity: orjson.Fragment
    model: orjson.Fragment
    jurisdiction: orjson.Fragment | None
    agreement: orjson.Fragment
    rule: orjson.Fragment  # ECS ``rule``
    organization: orjson.Fragment  # ECS ``organization``
    gen_ai: orjson.Fragment  # ECS ``gen_ai``
    ocsf_policy: orjson.Fragment  # OCSF ``policy``
    ocsf_authorizations: orjson.Fragment  # OCSF ``authorizations`` (also under ``actor``)


def _fragment(value: Any) -> orjson.Fragment:
    return orjson.Fragment(orjson.dumps(value))


class EvidenceRenderer:
    """Builds the ``aidr`` tree: the decision, every fact it used, and the request's transport data.

    The shape equals ``Decision.to_dict()``'s evidence (a test keeps them equal) plus the request,
    gate and upstream parts; enough for ``replay`` to re-decide the request under another pack.
    What depends only on shared objects (the engine's cached facts, the registry's entity, the
    catalogue's model, the pack reference) is serialised once and reused.
    """

    def __init__(self, redactor: Redactor, limit: int = 4096) -> None:
        self.redactor = redactor
        self.clock = _Clock()
        self._limit = limit
        self._shared: dict[tuple[Any, ...], Shared] = {}
        # The token cache and the origin resolver hand out one object per caller and per client
        # address: each is serialised once, for every renderer's paths.
        self._identities: ObjectCache[Identity] = ObjectCache(lambda i: orjson.dumps(i.to_dict()))
        self._origins: ObjectCache[Origin] = ObjectCache(lambda o: orjson.dumps(o.to_dict()))

    def identity_json(self, identity: Identity | None) -> bytes:
        """The ``aidr.identity`` member's JSON."""
        return b"null" if identity is None else self._identities.get(identity)

    def origin_json(self, origin: Origin | None) -> bytes:
        """The ``aidr.origin`` member's JSON."""
        return b"null" if origin is None else self._origins.get(origin)

    def shared(self, decision: Decision) -> Shared:
        """The shared parts of *decision*'s record (cached by the identity of what they rest on)."""
        evidence = decision.evidence
        refs = (
            evidence.facts,
            evidence.entity,
            evidence.model,
            evidence.agreement,
            decision.policy,
            decision.shadow,
            decision.reasons,
        )
        key = (
            *map(id, refs),
            decision.rule,
            decision.effect,
            evidence.entity_id,
            evidence.entity_source,
            evidence.claims_disagree,
            evidence.model_requested,
            evidence.model_tier_source,
        )
        hit = self._shared.get(key)
        # Tuple equality checks identity first; equal objects render the same anyway.
        if hit is not None and hit.refs == refs:
            return hit
        built = self._build_shared(decision, refs)
        if len(self._shared) >= self._limit:
            self._shared.clear()
        self._shared[key] = built
        return built

    @staticmethod
    def _build_shared(decision: Decision, refs: tuple[object, ...]) -> Shared:
        evidence = decision.evidence
        facts = evidence.facts
        entity = evidence.entity
        agreement = evidence.agreement
        shadow = decision.shadow
        policy = decision.policy
        ocsf_policy = {
            "uid": policy.id,
            "name": policy.id,
            "version": policy.digest,
            "desc": f"status {policy.status}; legal window covers the request: {policy.in_window}",
            "is_applied": True,
        }
        return Shared(
            refs=refs,
            policy=_fragment(policy.to_dict()),
            shadow=None if shadow is None else _fragment(shadow.to_dict()),
            entity=_fragment(
                {
                    "id": evidence.entity_id,
                    "known": entity is not None,
                    "source": evidence.entity_source,
                    "headquarters": facts.headquarters if facts else None,
                    "parent": facts.parent if facts else None,
                    "claims_disagree": list(evidence.claims_disagree),
                    **(_entity_static(entity) if entity is not None else _NO_ENTITY),
                }
            ),
            model=_fragment(
                {
                    "requested": evidence.model_requested,
                    **_model_static(evidence.model),
                    "tier": facts.model_tier if facts else None,
                    "tier_source": evidence.model_tier_source,
                }
            ),
            jurisdiction=_fragment(facts.jurisdiction_dict()) if facts is not None else None,
            agreement=_fragment(
                {
                    "state": facts.agreement if facts else None,
                    "id": agreement.id if agreement else None,
                    "type": agreement.type if agreement else None,
                    "status": agreement.status if agreement else None,
                }
            ),
            rule=_fragment(
                {
                    "id": decision.rule,
                    "name": decision.rule,
                    "ruleset": policy.id,
                    "version": policy.digest,
                }
            ),
            organization=_fragment(
                {"id": evidence.entity_id, "name": entity.name if entity else None}
            ),
            gen_ai=_fragment({"request": {"model": evidence.model_requested}}),
            ocsf_policy=_fragment(ocsf_policy),
            ocsf_authorizations=_fragment(
                [{"decision": decision.effect.value, "policy": ocsf_policy}]
            ),
        )

    def aidr(self, event: AuditEvent, shared: Shared, at: str) -> dict[str, Any]:
        """The ``aidr`` namespace of one record."""
        decision = event.decision
        evidence = decision.evidence
        request = event.request
        identity = evidence.identity
        origin = evidence.origin
        return {
            "schema": SCHEMA_VERSION,
            "decision": {
                "id": decision.decision_id,
                "at": at,
                "effect": decision.effect,
                "status": decision.status,
                "reasons": decision.reasons,
                "rule": decision.rule,
                "mode": decision.mode,
                "blocked": decision.effect is Effect.DENY and decision.mode is Mode.ENFORCE,
            },
            "policy": shared.policy,
            "shadow": shared.shadow,
            "identity": orjson.Fragment(self.identity_json(identity)),
            "origin": orjson.Fragment(self.origin_json(origin)),
            "entity": shared.entity,
            "model": shared.model,
            "jurisdiction": shared.jurisdiction,
            "agreement": shared.agreement,
            "request": None
            if request is None
            else {
                "ending": request.ending,
                "headers": self.redactor.headers(request.headers),
                "body_bytes": request.body_bytes,
            },
            "gate": {"added_us": request.gate_us if request else None},
            "upstream": {
                "status": request.upstream_status if request else None,
                "duration_us": request.upstream_duration_us if request else None,
                "error": request.upstream_error if request else None,
            },
        }


class Renderer(Protocol):
    """Turns an event into the bytes of one JSON object (no newline)."""

    name: str

    def render(self, event: AuditEvent) -> bytes:
        """The record's JSON object."""
        ...


class RecordRenderer:
    """What the ECS and OCSF renderers share: the evidence tree, and one JSON object per event.

    A subclass maps a record's fields in :meth:`fields`, given the parts every format starts from.
    """

    name: str

    def __init__(self, redactor: Redactor | None = None) -> None:
        self.evidence = EvidenceRenderer(redactor or Redactor())

    def document(self, event: AuditEvent) -> dict[str, Any]:
        """The record as a dict (``render`` serialises it); shared parts are ``orjson.Fragment``."""
        evidence = self.evidence
        shared = evidence.shared(event.decision)
        at = evidence.clock.format(event.decision.at)
        return self.fields(event, shared, at, evidence.aidr(event, shared, at))

    def fields(
        self, event: AuditEvent, shared: Shared, at: str, aidr: dict[str, Any]
    ) -> dict[str, Any]:
        """The record of *event*: its *shared* parts, its timestamp *at* and its *aidr* tree."""
        raise NotImplementedError

    def render(self, event: AuditEvent) -> bytes:
        """The record's JSON object."""
        return orjson.dumps(self.document(event))


def fallback_record(event: object, error: BaseException) -> bytes:
    """A minimal record for an event the renderer failed on: the record is never lost."""
    decision = getattr(event, "decision", None)
    return orjson.dumps(
        {
            "@timestamp": format_instant(time.time()),
            "event": {
                "kind": "pipeline_error",
                "id": getattr(decision, "decision_id", None),
                "dataset": DATASET,
                "outcome": "unknown",
            },
            "aidr": {
                "schema": SCHEMA_VERSION,
                "render_error": type(error).__name__,
                "decision": {
                    "id": getattr(decision, "decision_id", None),
                    "effect": getattr(getattr(decision, "effect", None), "value", None),
                    "mode": getattr(getattr(decision, "mode", None), "value", Mode.ENFORCE.value),
                },
            },
        }
    )
