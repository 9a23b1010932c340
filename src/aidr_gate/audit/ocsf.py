"""The alternative rendering: OCSF class 6003 API Activity with the ``security_control`` profile.

For Amazon Security Lake and other OCSF pipelines. A compact record (schema 2), each fact once: the
decision maps onto ``action_id``, ``disposition_id``, ``status_code``, ``policy`` and
``firewall_rule``, the caller onto ``actor``, the address onto ``src_endpoint``, the request onto
``http_request``/``http_response``; caption attributes (``class_name``, ``action``...) that only
restate an id are left out. ``unmapped.aidr`` holds the same compact tree as the ECS record (with
the gate's added time, which OCSF has no microsecond field for) and the shared facts.
"""

from __future__ import annotations

from typing import Any

import orjson

from aidr_gate.audit.ecs import (
    address_member,
    compact_tree,
    identity_member,
    origin_member,
    request_values,
)
from aidr_gate.audit.facts import Shared
from aidr_gate.audit.record import AuditEvent, RequestContext
from aidr_gate.audit.template import Places, TemplateRenderer, Values, presence, put
from aidr_gate.decision import Decision, Effect, Mode
from aidr_gate.facts import Identity, Origin
from aidr_gate.version import __version__

OCSF_VERSION = "1.3.0"
CLASS_UID = 6003
CATEGORY_UID = 6

# API Activity activity ids: 1 Create, 2 Read, 3 Update, 4 Delete, 99 Other.
_ACTIVITY: dict[str, tuple[int, str]] = {
    "POST": (1, "Create"),
    "GET": (2, "Read"),
    "HEAD": (2, "Read"),
    "PUT": (3, "Update"),
    "PATCH": (3, "Update"),
    "DELETE": (4, "Delete"),
}
ACTION_ALLOWED = 1
ACTION_DENIED = 2
DISPOSITION_ALLOWED = 1
DISPOSITION_BLOCKED = 2
DISPOSITION_DETECTED = 15  # dry-run: a deny that was not enforced
DISPOSITION_LOGGED = 17
SEVERITY_INFORMATIONAL = 1
SEVERITY_LOW = 2
SEVERITY_MEDIUM = 3


def _disposition(decision: Decision) -> tuple[int, str, int, str, int]:
    """action_id, action, disposition_id, disposition, severity_id."""
    if decision.effect is Effect.DENY:
        if decision.mode is Mode.DRY_RUN:
            return ACTION_ALLOWED, "Allowed", DISPOSITION_DETECTED, "Detected", SEVERITY_LOW
        return ACTION_DENIED, "Denied", DISPOSITION_BLOCKED, "Blocked", SEVERITY_MEDIUM
    if decision.effect is Effect.LOG:
        return ACTION_ALLOWED, "Allowed", DISPOSITION_LOGGED, "Logged", SEVERITY_LOW
    return ACTION_ALLOWED, "Allowed", DISPOSITION_ALLOWED, "Allowed", SEVERITY_INFORMATIONAL


class _Slot:
    """The slot numbers of the per-request values (plain ints: an IntEnum member costs a lookup
    through the enum machinery on every use, on the hot path)."""

    TIME = 0
    ID = 1
    ACTOR = 2
    ENDPOINT = 3
    HTTP_REQUEST = 4
    HTTP_RESPONSE = 5
    IDENTITY = 6
    ORIGIN = 7
    REQUEST = 8
    GATE = 9
    UPSTREAM = 10
    FACTS = 11
    SIGNALS = 12


_PLACES: Places = (
    (("time",), _Slot.TIME),
    (("metadata", "uid"), _Slot.ID),
    (("actor",), _Slot.ACTOR),
    (("src_endpoint",), _Slot.ENDPOINT),
    (("http_request",), _Slot.HTTP_REQUEST),
    (("http_response",), _Slot.HTTP_RESPONSE),
    (("unmapped", "aidr", "facts"), _Slot.FACTS),
    (("unmapped", "aidr", "identity"), _Slot.IDENTITY),
    (("unmapped", "aidr", "origin"), _Slot.ORIGIN),
    (("unmapped", "aidr", "request"), _Slot.REQUEST),
    (("unmapped", "aidr", "gate_us"), _Slot.GATE),
    (("unmapped", "aidr", "upstream"), _Slot.UPSTREAM),
    (("unmapped", "aidr", "signals"), _Slot.SIGNALS),
)
_dumps = orjson.dumps


def _activity(request: RequestContext | None) -> tuple[str, int, str]:
    """The request's method (upper case), activity_id and activity name."""
    method = request.method.upper() if request else ""
    activity_id, activity = _ACTIVITY.get(method, (99, "Other"))
    return method, activity_id, activity


def epoch_ms(at: float) -> int:
    """The decision time in whole milliseconds, as the ISO time string of the record rounds it."""
    second = int(at)
    return second * 1000 + int((at - second) * 1000)


class OcsfRenderer(TemplateRenderer):
    """OCSF 6003 API Activity records."""

    name = "ocsf"
    places = _PLACES

    def identity_members(self, identity: Identity) -> tuple[bytes | None, ...]:
        """The caller's ``actor.user.uid`` (a JSON string, or None) and ``aidr.identity``."""
        subject = None if identity.subject is None else _dumps(self.redactor.cut(identity.subject))
        return subject, identity_member(identity)

    def origin_members(self, origin: Origin) -> tuple[bytes | None, ...]:
        """OCSF ``src_endpoint`` and ``aidr.origin``."""
        return address_member(origin, "location", "country"), origin_member(origin)

    def template_key(
        self, event: AuditEvent, shared: Shared, mask: tuple[type, ...]
    ) -> tuple[Any, ...]:
        """The activity (from the method) too: it names the record's type."""
        decision = event.decision
        return (id(shared), decision.status, decision.mode, mask, _activity(event.request)[1])

    def slot_values(
        self, event: AuditEvent, shared: Shared, *, facts_inline: bool = False
    ) -> tuple[Values, tuple[type, ...]]:
        """Every per-request value of the OCSF record, by slot."""
        decision = event.decision
        evidence = decision.evidence
        request = event.request
        values: Values = [None] * 13
        values[_Slot.FACTS] = shared.facts if facts_inline else shared.ref
        values[_Slot.TIME] = b"%d" % epoch_ms(decision.at)
        values[_Slot.ID] = _dumps(decision.decision_id)
        if evidence.signals:
            values[_Slot.SIGNALS] = _dumps(evidence.signals)
        user: dict[str, Any] = {}
        parties = self.identity_of(evidence.identity)
        if parties is not None:
            subject, values[_Slot.IDENTITY] = parties
            if subject is not None:
                user["uid"] = orjson.Fragment(subject)
        if evidence.entity_id is not None:
            user["org"] = {"uid": evidence.entity_id}
        values[_Slot.ACTOR] = _dumps({"user": user})
        place = self.origin_of(evidence.origin)
        if place is not None:
            values[_Slot.ENDPOINT], values[_Slot.ORIGIN] = place
        if request is not None:
            method = _activity(request)[0]
            http: dict[str, Any] = {
                "http_method": method,
                "url": {"path": self.redactor.path(request.path), "scheme": request.scheme},
            }
            headers = self.redactor.headers(request.headers)
            agent = headers.get("user-agent")
            if agent is not None:
                http["user_agent"] = agent
            if request.body_bytes is not None:
                http["length"] = request.body_bytes
            values[_Slot.HTTP_REQUEST] = _dumps(http)
            if request.status is not None:
                values[_Slot.HTTP_RESPONSE] = b'{"code":%d}' % request.status
            if request.gate_us is not None:
                values[_Slot.GATE] = b"%d" % request.gate_us
            values[_Slot.REQUEST], values[_Slot.UPSTREAM] = request_values(event, headers)
        return values, presence(values)

    def fields(self, event: AuditEvent, shared: Shared, values: Values) -> dict[str, Any]:
        """The OCSF record."""
        decision = event.decision
        _, activity_id, _ = _activity(event.request)
        action_id, _, disposition_id, _, severity_id = _disposition(decision)
        failed = decision.effect is Effect.DENY
        doc: dict[str, Any] = {
            "class_uid": CLASS_UID,
            "category_uid": CATEGORY_UID,
            "activity_id": activity_id,
            "type_uid": CLASS_UID * 100 + activity_id,
        }
        put(doc, "time", values[_Slot.TIME])
        doc["severity_id"] = severity_id
        doc["status_id"] = 2 if failed else 1
        if decision.reasons:
            doc["status_code"] = decision.reasons[0]
        doc["action_id"] = action_id
        doc["disposition_id"] = disposition_id
        metadata: dict[str, Any] = {"version": OCSF_VERSION}
        put(metadata, "uid", values[_Slot.ID])
        metadata["product"] = {
            "name": "aidr_gate",
            "vendor_name": "aidr_gate",
            "version": __version__,
        }
        doc["metadata"] = metadata
        doc["policy"] = {"uid": decision.policy.id}
        doc["firewall_rule"] = {"uid": decision.rule}
        put(doc, "actor", values[_Slot.ACTOR])
        doc["api"] = {"operation": "model-access"}
        put(doc, "src_endpoint", values[_Slot.ENDPOINT])
        put(doc, "http_request", values[_Slot.HTTP_REQUEST])
        put(doc, "http_response", values[_Slot.HTTP_RESPONSE])
        # The effect is the action and the disposition: not written again.
        aidr = compact_tree(decision, shared, values, _Slot, effect=False)
        if decision.evidence.model_requested is not None:
            # OCSF has no attribute for a model: the one the request named travels here.
            aidr = {**aidr, "model": decision.evidence.model_requested}
        doc["unmapped"] = {"aidr": aidr}
        return doc
