"""The primary rendering: Elastic Common Schema field names, with what ECS lacks under ``aidr.*``.

:meth:`EcsRenderer.fields` states the record as a dict, and is its definition. Building that dict
and serialising it costs about 12 µs a record, most of it spent on dicts whose content is the same
for every request of the same kind. So :meth:`EcsRenderer.render` compiles, once per class of
decision (the same shared facts, status and mode), the record's bytes with every per-request value
cut out, and fills the gaps with the request's own values, each serialised on its own: about 3 µs.

The template is made from :meth:`fields` itself, by serialising its dict with markers in the
per-request places, so the two cannot drift apart in key order or shared content. The per-request
values themselves are serialised by ``render``: a change to how ``fields`` computes one must be made
there too, and a test that compares both paths' bytes over many generated events says so.
"""

from __future__ import annotations

import logging
from enum import IntEnum
from typing import Any

import orjson

from aidr_gate.audit.record import (
    DATASET,
    ECS_VERSION,
    AuditEvent,
    ObjectCache,
    RecordRenderer,
    Redactor,
    Shared,
    clean_path,
)
from aidr_gate.decision import Effect
from aidr_gate.facts import Identity, Origin

logger = logging.getLogger("aidr_gate.audit")

_TYPE_ALLOWED = ["access", "allowed"]
_TYPE_DENIED = ["access", "denied"]
_CATEGORY = ["web", "iam"]
_ECS = {"version": ECS_VERSION}


class _Slot(IntEnum):
    """A per-request value of a record: what a template leaves out."""

    AT = 0
    ID = 1
    DURATION = 2
    USER = 3
    CLIENT = 4
    HTTP = 5
    URL = 6
    USER_AGENT = 7
    IDENTITY = 8
    ORIGIN = 9
    REQUEST = 10
    GATE = 11
    UPSTREAM = 12


# Where ``fields`` places each per-request value, in the record's order: ``render`` fills the
# template's gaps in this order.
_PLACES: tuple[tuple[tuple[str, ...], _Slot], ...] = (
    (("@timestamp",), _Slot.AT),
    (("event", "id"), _Slot.ID),
    (("event", "duration"), _Slot.DURATION),
    (("user",), _Slot.USER),
    (("client",), _Slot.CLIENT),
    (("http",), _Slot.HTTP),
    (("url",), _Slot.URL),
    (("user_agent",), _Slot.USER_AGENT),
    (("aidr", "decision", "id"), _Slot.ID),
    (("aidr", "decision", "at"), _Slot.AT),
    (("aidr", "identity"), _Slot.IDENTITY),
    (("aidr", "origin"), _Slot.ORIGIN),
    (("aidr", "request"), _Slot.REQUEST),
    (("aidr", "gate"), _Slot.GATE),
    (("aidr", "upstream"), _Slot.UPSTREAM),
)
_ORDER = tuple(slot for _, slot in _PLACES)
# orjson escapes every control character inside strings, so a raw 0x01 byte in its output can only
# come from a marker fragment.
_MARK = 0x01
_NO_USER = orjson.dumps({"id": None, "domain": None})
_NO_CLIENT = orjson.dumps({"ip": None, "geo": {"country_iso_code": None}})
_NULL = b"null"

Template = tuple[bytes, ...]


def _marker(slot: _Slot) -> orjson.Fragment:
    return orjson.Fragment(bytes((_MARK, 0x41 + slot, _MARK)))


def _user_parts(identity: Identity) -> tuple[bytes, bytes]:
    return orjson.dumps({"id": identity.subject, "domain": identity.issuer}), orjson.dumps(
        identity.to_dict()
    )


def _client_parts(origin: Origin) -> tuple[bytes, bytes]:
    return orjson.dumps(
        {"ip": origin.ip, "geo": {"country_iso_code": origin.country}}
    ), orjson.dumps(origin.to_dict())


class EcsRenderer(RecordRenderer):
    """Elastic Common Schema field names, with what ECS lacks under ``aidr.*``."""

    name = "ecs"

    def __init__(self, redactor: Redactor | None = None, limit: int = 4096) -> None:
        super().__init__(redactor)
        self._limit = limit
        # (id(shared), status, mode) -> (shared, template); the strong reference keeps ids unique.
        self._templates: dict[tuple[int, int | None, object], tuple[Shared, Template]] = {}
        # The token cache and the origin resolver hand out one object per caller and per address.
        self._users: ObjectCache[Identity] = ObjectCache(_user_parts, limit)
        self._clients: ObjectCache[Origin] = ObjectCache(_client_parts, limit)
        self.compiled = True  # False once a template could not be made: every record uses fields

    def fields(
        self, event: AuditEvent, shared: Shared, at: str, aidr: dict[str, Any]
    ) -> dict[str, Any]:
        """The ECS record."""
        decision = event.decision
        evidence = decision.evidence
        identity = evidence.identity
        origin = evidence.origin
        request = event.request
        denied = decision.effect is Effect.DENY
        user_agent = aidr["request"]["headers"].get("user-agent") if request else None
        return {
            "@timestamp": at,
            "ecs": _ECS,
            "event": {
                "kind": "event",
                "category": _CATEGORY,
                "type": _TYPE_DENIED if denied else _TYPE_ALLOWED,
                "action": "model-access",
                "outcome": "failure" if denied else "success",
                "id": decision.decision_id,
                "dataset": DATASET,
                "provider": "aidr-gate",
                "reason": decision.reasons[0] if decision.reasons else None,
                "duration": request.gate_us * 1000
                if request is not None and request.gate_us is not None
                else None,
            },
            "rule": shared.rule,
            "user": {
                "id": identity.subject if identity else None,
                "domain": identity.issuer if identity else None,
            },
            "organization": shared.organization,
            "client": {
                "ip": origin.ip if origin else None,
                "geo": {"country_iso_code": origin.country if origin else None},
            },
            "http": None
            if request is None
            else {
                "version": request.http_version,
                "request": {"method": request.method, "body": {"bytes": request.body_bytes}},
                "response": {"status_code": request.status},
            },
            "url": None
            if request is None
            else {"path": clean_path(request.path), "scheme": request.scheme},
            "user_agent": None if user_agent is None else {"original": user_agent},
            "gen_ai": shared.gen_ai,
            "aidr": aidr,
        }

    # -- the fast path ---------------------------------------------------------------------------

    def compile(self, event: AuditEvent) -> Template:
        """The bytes of *event*'s record between its per-request values (see the module docstring).

        Raises ``RuntimeError`` if :meth:`fields` no longer places the values in ``_ORDER``.
        """
        doc = self.document(event)
        for path, slot in _PLACES:
            parent = doc
            for key in path[:-1]:
                parent = parent[key]
            parent[path[-1]] = _marker(slot)
        parts = orjson.dumps(doc).split(bytes((_MARK,)))
        slots = tuple(_Slot(part[0] - 0x41) for part in parts[1::2])
        if slots != _ORDER:
            raise RuntimeError(f"the ECS record's per-request fields moved: {slots}")
        return tuple(parts[0::2])

    def _template(self, event: AuditEvent, shared: Shared) -> Template | None:
        decision = event.decision
        key = (id(shared), decision.status, decision.mode)
        hit = self._templates.get(key)
        if hit is not None and hit[0] is shared:
            return hit[1]
        try:
            template = self.compile(event)
        except RuntimeError:
            logger.exception("audit: no ECS template; records are rendered the slow way")
            self.compiled = False
            return None
        if len(self._templates) >= self._limit:
            self._templates.clear()
        self._templates[key] = (shared, template)
        return template

    def render(self, event: AuditEvent) -> bytes:
        """The record's JSON object: the same bytes as ``orjson.dumps(self.document(event))``."""
        request = event.request
        if request is None or not self.compiled:
            return super().render(event)
        decision = event.decision
        evidence = self.evidence
        shared = evidence.shared(decision)
        c = self._template(event, shared)
        if c is None:
            return super().render(event)
        identity = decision.evidence.identity
        origin = decision.evidence.origin
        user, identity_json = _NO_USER, _NULL
        if identity is not None:
            user, identity_json = self._users.get(identity)
        client, origin_json = _NO_CLIENT, _NULL
        if origin is not None:
            client, origin_json = self._clients.get(origin)
        dumps = orjson.dumps
        at = evidence.clock.json(decision.at)
        decision_id = dumps(decision.decision_id)
        gate_us = request.gate_us
        headers = evidence.redactor.headers(request.headers)
        user_agent = headers.get("user-agent")
        return b"".join(
            (
                c[0],
                at,
                c[1],
                decision_id,
                c[2],
                _NULL if gate_us is None else dumps(gate_us * 1000),
                c[3],
                user,
                c[4],
                client,
                c[5],
                dumps(
                    {
                        "version": request.http_version,
                        "request": {
                            "method": request.method,
                            "body": {"bytes": request.body_bytes},
                        },
                        "response": {"status_code": request.status},
                    }
                ),
                c[6],
                dumps({"path": clean_path(request.path), "scheme": request.scheme}),
                c[7],
                _NULL if user_agent is None else dumps({"original": user_agent}),
                c[8],
                decision_id,
                c[9],
                at,
                c[10],
                identity_json,
                c[11],
                origin_json,
                c[12],
                dumps(
                    {
                        "ending": request.ending,
                        "headers": headers,
                        "body_bytes": request.body_bytes,
                    }
                ),
                c[13],
                dumps({"added_us": gate_us}),
                c[14],
                dumps(
                    {
                        "status": request.upstream_status,
                        "duration_us": request.upstream_duration_us,
                        "error": request.upstream_error,
                    }
                ),
                c[15],
            )
        )
