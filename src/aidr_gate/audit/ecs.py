"""The primary rendering: Elastic Common Schema field names, with what ECS lacks under ``aidr.*``.

A compact record (schema 2): each fact once. Who, from where, which model, the decision, its
reason, rule and pack, and the request are ECS fields; ``aidr`` holds what ECS has no field for and
carries the facts the request's whole class of decisions shares once per file (``facts.py``).
Members without a value are left out. :meth:`EcsRenderer.fields` states the record;
:meth:`~aidr_gate.audit.template.TemplateRenderer.render` fills a per-class template made from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from aidr_gate.audit.facts import Shared
from aidr_gate.audit.record import (
    DATASET,
    SCHEMA_VERSION,
    AuditEvent,
    Ending,
    Redactor,
    RequestContext,
)
from aidr_gate.audit.template import Places, TemplateRenderer, Values, presence, put
from aidr_gate.bounded import store_bounded
from aidr_gate.decision import Decision, Effect, Mode
from aidr_gate.facts import Identity, Origin

_TYPE_ALLOWED = ["access", "allowed"]
_TYPE_DENIED = ["access", "denied"]
_CATEGORY = ["web", "iam"]
_dumps = orjson.dumps
# HTTP methods as JSON string contents (a method outside these is serialised by orjson).
_METHODS = {m: m.encode() for m in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")}
_REMEMBERED_PATH = 256  # longer paths (ids in them, say) are redacted each time
# ECS ``http`` of a request with a method above, a body size and a status (the dict's bytes).
_USUAL_HTTP = b'{"request":{"method":"%b","body":{"bytes":%d}},"response":{"status_code":%d}}'


class _Slot:
    """The slot numbers of the per-request values (plain ints: an IntEnum member costs a lookup
    through the enum machinery on every use, on the hot path)."""

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
    UPSTREAM = 11
    FACTS = 12
    SIGNALS = 13


_PLACES: Places = (
    (("@timestamp",), _Slot.AT),
    (("event", "id"), _Slot.ID),
    (("event", "duration"), _Slot.DURATION),
    (("user",), _Slot.USER),
    (("client",), _Slot.CLIENT),
    (("http",), _Slot.HTTP),
    (("url",), _Slot.URL),
    (("user_agent",), _Slot.USER_AGENT),
    (("aidr", "facts"), _Slot.FACTS),
    (("aidr", "identity"), _Slot.IDENTITY),
    (("aidr", "origin"), _Slot.ORIGIN),
    (("aidr", "request"), _Slot.REQUEST),
    (("aidr", "upstream"), _Slot.UPSTREAM),
    (("aidr", "signals"), _Slot.SIGNALS),
)


def decision_member(decision: Decision, *, effect: bool = True) -> dict[str, Any]:
    """``aidr.decision``: what no standard field says of the decision (the rest is elsewhere).

    The effect unless the format's own fields say it (*effect* False: OCSF's action and
    disposition); ``mode`` only for a dry run; ``reasons`` only when there are several (the first
    is ``event.reason`` / ``status_code``); ``status`` only for a deny.
    """
    member: dict[str, Any] = {"effect": decision.effect.value} if effect else {}
    if decision.mode is not Mode.ENFORCE:
        member["mode"] = decision.mode.value
    if decision.status is not None:
        member["status"] = decision.status
    if len(decision.reasons) > 1:
        member["reasons"] = list(decision.reasons)
    return member


def identity_member(identity: Identity) -> bytes:
    """``aidr.identity``: the caller's per-token facts (the rest is in the shared facts)."""
    return _dumps({"expires_at": identity.expires_at} if identity.expires_at is not None else {})


def origin_member(origin: Origin) -> bytes:
    """``aidr.origin``: the per-address facts standard fields do not hold.

    The TCP peer only when it is not the client address itself (``null`` when unknown).
    """
    member: dict[str, Any] = {}
    if origin.peer != origin.ip:
        member["peer"] = origin.peer
    if origin.notes:
        member["notes"] = list(origin.notes)
    return _dumps(member)


def address_member(origin: Origin, place: str, country: str) -> bytes:
    """The client address and its country, as a format names them (``{"ip":..,place:{country:..}}``)."""
    member: dict[str, Any] = {}
    if origin.ip is not None:
        member["ip"] = origin.ip
    if origin.country is not None:
        member[place] = {country: origin.country}
    return _dumps(member)


# ``aidr.request`` of a request that says nothing but how it ended (most), by ending.
_ENDED = {ending: _dumps({"ending": ending.value}) for ending in Ending}


def request_values(
    event: AuditEvent, redactor_headers: Mapping[str, str]
) -> tuple[bytes | None, bytes | None]:
    """``aidr.request`` and ``aidr.upstream`` (``None`` when it says nothing).

    The usual values are written without a dict: an upstream's status and time as two ints, a
    request with only its ending from a table (the bytes ``orjson`` gives for the same dict).
    """
    request = event.request
    if request is None:
        return None, None
    if request.cut_of is None and (
        not redactor_headers or (len(redactor_headers) == 1 and "user-agent" in redactor_headers)
    ):
        ended = _ENDED[request.ending]
    else:
        member: dict[str, Any] = {"ending": request.ending.value}
        if request.cut_of is not None:
            member["cut_of"] = request.cut_of  # the admitted request whose stream this ends
        others = {k: v for k, v in redactor_headers.items() if k != "user-agent"}
        if others:
            member["headers"] = others
        ended = _dumps(member)
    status, duration = request.upstream_status, request.upstream_duration_us
    if request.upstream_error is None and type(status) is int and type(duration) is int:
        return ended, b'{"status":%d,"duration_us":%d}' % (status, duration)
    upstream: dict[str, Any] = {}
    if status is not None:
        upstream["status"] = status
    if duration is not None:
        upstream["duration_us"] = duration
    if request.upstream_error is not None:
        upstream["error"] = request.upstream_error
    return ended, (_dumps(upstream) if upstream else None)


class EcsRenderer(TemplateRenderer):
    """Elastic Common Schema field names, with what ECS lacks under ``aidr.*``."""

    name = "ecs"
    places = _PLACES

    def __init__(self, redactor: Redactor | None = None, limit: int = 4096) -> None:
        super().__init__(redactor, limit)
        self._urls: dict[tuple[str, str], bytes] = {}
        self._agents: dict[str, bytes] = {}

    def identity_members(self, identity: Identity) -> tuple[bytes | None, ...]:
        """ECS ``user`` and ``aidr.identity``."""
        user = (
            None
            if identity.subject is None
            else _dumps({"id": self.redactor.cut(identity.subject)})
        )
        return user, identity_member(identity)

    def origin_members(self, origin: Origin) -> tuple[bytes | None, ...]:
        """ECS ``client`` and ``aidr.origin``."""
        return address_member(origin, "geo", "country_iso_code"), origin_member(origin)

    def _http(self, request: RequestContext) -> bytes:
        """ECS ``http``: the method, the body's size, the status sent."""
        method, size, status = request.method, request.body_bytes, request.status
        if type(size) is int and type(status) is int and method in _METHODS:
            return _USUAL_HTTP % (_METHODS[method], size, status)
        http: dict[str, Any] = {"request": {"method": method}}
        if size is not None:
            http["request"]["body"] = {"bytes": size}
        if status is not None:
            http["response"] = {"status_code": status}
        return _dumps(http)

    def _url(self, path: str, scheme: str) -> bytes:
        """ECS ``url``: the redacted path and the scheme; remembered per short path (a few
        paths make most traffic), never for one the redactor changes (a query, a credential, a
        cut: none is held longer than its request, and each cut is counted)."""
        key = (path, scheme)
        known = self._urls.get(key)
        if known is None:
            recorded = self.redactor.path(path)
            known = _dumps({"path": recorded, "scheme": scheme})
            if recorded == path and len(path) <= _REMEMBERED_PATH:
                store_bounded(self._urls, self._limit, key, known)
        return known

    def _agent(self, agent: str) -> bytes:
        """ECS ``user_agent`` (the redactor's value), remembered per value."""
        known = self._agents.get(agent)
        if known is None:
            known = _dumps({"original": agent})
            store_bounded(self._agents, self._limit, agent, known)
        return known

    def slot_values(
        self, event: AuditEvent, shared: Shared, *, facts_inline: bool = False
    ) -> tuple[Values, tuple[type, ...]]:
        """Every per-request value of the ECS record, by slot."""
        decision = event.decision
        evidence = decision.evidence
        request = event.request
        values: Values = [None] * 14
        values[_Slot.FACTS] = shared.facts if facts_inline else shared.ref
        values[_Slot.AT] = self.clock.json(decision.at)
        values[_Slot.ID] = _dumps(decision.decision_id)
        parties = self.identity_of(evidence.identity)
        if parties is not None:
            values[_Slot.USER], values[_Slot.IDENTITY] = parties
        if evidence.signals:
            values[_Slot.SIGNALS] = _dumps(evidence.signals)
        place = self.origin_of(evidence.origin)
        if place is not None:
            values[_Slot.CLIENT], values[_Slot.ORIGIN] = place
        if request is not None:
            if request.gate_us is not None:
                values[_Slot.DURATION] = b"%d" % (request.gate_us * 1000)
            values[_Slot.HTTP] = self._http(request)
            values[_Slot.URL] = self._url(request.path, request.scheme)
            headers = self.redactor.headers(request.headers)
            agent = headers.get("user-agent")
            if agent is not None:
                values[_Slot.USER_AGENT] = self._agent(agent)
            values[_Slot.REQUEST], values[_Slot.UPSTREAM] = request_values(event, headers)
        return values, presence(values)

    def fields(self, event: AuditEvent, shared: Shared, values: Values) -> dict[str, Any]:
        """The ECS record."""
        decision = event.decision
        evidence = decision.evidence
        denied = decision.effect is Effect.DENY
        event_member: dict[str, Any] = {
            "kind": "event",
            "category": _CATEGORY,
            "type": _TYPE_DENIED if denied else _TYPE_ALLOWED,
            "action": "model-access",
            "outcome": "failure" if denied else "success",
            "dataset": DATASET,
        }
        put(event_member, "id", values[_Slot.ID])
        if decision.reasons:
            event_member["reason"] = decision.reasons[0]
        put(event_member, "duration", values[_Slot.DURATION])
        doc: dict[str, Any] = {}
        put(doc, "@timestamp", values[_Slot.AT])
        doc["event"] = event_member
        doc["rule"] = {"id": decision.rule, "ruleset": decision.policy.id}
        put(doc, "user", values[_Slot.USER])
        if evidence.entity_id is not None:
            doc["organization"] = {"id": evidence.entity_id}
        put(doc, "client", values[_Slot.CLIENT])
        put(doc, "http", values[_Slot.HTTP])
        put(doc, "url", values[_Slot.URL])
        put(doc, "user_agent", values[_Slot.USER_AGENT])
        if evidence.model_requested is not None:
            doc["gen_ai"] = {"request": {"model": evidence.model_requested}}
        doc["aidr"] = compact_tree(decision, shared, values, _Slot)
        return doc


def compact_tree(
    decision: Decision, shared: Shared, values: Values, slots: Any, *, effect: bool = True
) -> dict[str, Any]:
    """The ``aidr`` member of a compact record (ECS; OCSF puts it under ``unmapped``)."""
    aidr: dict[str, Any] = {"schema": SCHEMA_VERSION}
    put(aidr, "facts", values[slots.FACTS])
    aidr["decision"] = decision_member(decision, effect=effect)
    put(aidr, "identity", values[slots.IDENTITY])
    put(aidr, "origin", values[slots.ORIGIN])
    put(aidr, "request", values[slots.REQUEST])
    gate = getattr(slots, "GATE", None)
    if gate is not None:
        put(aidr, "gate_us", values[gate])
    put(aidr, "upstream", values[slots.UPSTREAM])
    put(aidr, "signals", values[slots.SIGNALS])
    return aidr
