"""The alternative rendering: OCSF class 6003 API Activity with the ``security_control`` profile.

For Amazon Security Lake and other OCSF pipelines. The gate's decision maps onto ``action_id``,
``disposition_id``, ``policy``, ``authorizations`` and ``firewall_rule``; the full evidence tree
(the same ``aidr`` tree as the ECS record) travels in ``unmapped.aidr``.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

import orjson

from aidr_gate import __version__
from aidr_gate.audit.record import (
    DATASET,
    AuditEvent,
    RequestContext,
    Shared,
    clean_path,
)
from aidr_gate.audit.template import Places, Template, TemplateRenderer
from aidr_gate.decision import Decision, Effect, Mode
from aidr_gate.facts import Identity, Origin

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


class _Slot(IntEnum):
    """A per-request value of a record: what a template leaves out."""

    TIME = 0
    AT = 1
    ID = 2
    ACTOR = 3
    OPERATION = 4
    CODE = 5
    ENDPOINT = 6
    HTTP_REQUEST = 7
    HTTP_RESPONSE = 8
    IDENTITY = 9
    ORIGIN = 10
    REQUEST = 11
    GATE = 12
    UPSTREAM = 13


# Where ``fields`` places each per-request value, in the record's order: ``fill`` fills the
# template's gaps in this order.
_PLACES: Places = (
    (("time",), _Slot.TIME),
    (("time_dt",), _Slot.AT),
    (("metadata", "uid"), _Slot.ID),
    (("actor", "user", "uid"), _Slot.ACTOR),
    (("api", "operation"), _Slot.OPERATION),
    (("api", "request", "uid"), _Slot.ID),
    (("api", "response", "code"), _Slot.CODE),
    (("src_endpoint",), _Slot.ENDPOINT),
    (("http_request",), _Slot.HTTP_REQUEST),
    (("http_response",), _Slot.HTTP_RESPONSE),
    (("unmapped", "aidr", "decision", "id"), _Slot.ID),
    (("unmapped", "aidr", "decision", "at"), _Slot.AT),
    (("unmapped", "aidr", "identity"), _Slot.IDENTITY),
    (("unmapped", "aidr", "origin"), _Slot.ORIGIN),
    (("unmapped", "aidr", "request"), _Slot.REQUEST),
    (("unmapped", "aidr", "gate"), _Slot.GATE),
    (("unmapped", "aidr", "upstream"), _Slot.UPSTREAM),
)
_NO_ENDPOINT = orjson.dumps({"ip": None, "location": {"country": None}})
_NULL = b"null"


def _activity(request: RequestContext | None) -> tuple[str, int, str]:
    """The request's method (upper case), activity_id and activity name."""
    method = request.method.upper() if request else ""
    activity_id, activity = _ACTIVITY.get(method, (99, "Other"))
    return method, activity_id, activity


class OcsfRenderer(TemplateRenderer):
    """OCSF 6003 API Activity records."""

    name = "ocsf"
    places = _PLACES

    no_user = _NULL
    no_client = _NO_ENDPOINT

    def user_member(self, identity: Identity) -> bytes:
        """OCSF ``actor.user.uid``."""
        return orjson.dumps(identity.subject)

    def client_member(self, origin: Origin) -> bytes:
        """OCSF ``src_endpoint``."""
        return orjson.dumps({"ip": origin.ip, "location": {"country": origin.country}})

    def template_key(self, event: AuditEvent, shared: Shared) -> tuple[Any, ...]:
        """The activity (from the method) too: it names the record's type."""
        decision = event.decision
        return (id(shared), decision.status, decision.mode, _activity(event.request)[1])

    def fields(
        self, event: AuditEvent, shared: Shared, at: str, aidr: dict[str, Any]
    ) -> dict[str, Any]:
        """The OCSF record."""
        decision = event.decision
        evidence = decision.evidence
        identity = evidence.identity
        origin = evidence.origin
        request = event.request
        method, activity_id, activity = _activity(request)
        action_id, action, disposition_id, disposition, severity_id = _disposition(decision)
        headers = aidr["request"]["headers"] if request else {}
        path = clean_path(request.path) if request else None
        failed = decision.effect is Effect.DENY
        return {
            "class_uid": CLASS_UID,
            "class_name": "API Activity",
            "category_uid": CATEGORY_UID,
            "category_name": "Application Activity",
            "activity_id": activity_id,
            "activity_name": activity,
            "type_uid": CLASS_UID * 100 + activity_id,
            "type_name": f"API Activity: {activity}",
            "time": int(decision.at * 1000),
            "time_dt": at,
            "severity_id": severity_id,
            "status_id": 2 if failed else 1,
            "status": "Failure" if failed else "Success",
            "status_code": decision.reasons[0] if decision.reasons else None,
            "status_detail": ", ".join(decision.reasons),
            "action_id": action_id,
            "action": action,
            "disposition_id": disposition_id,
            "disposition": disposition,
            "policy": shared.ocsf_policy,
            "authorizations": shared.ocsf_authorizations,
            "firewall_rule": {"uid": decision.rule, "name": decision.rule},
            "metadata": {
                "version": OCSF_VERSION,
                "uid": decision.decision_id,
                "profiles": ["security_control"],
                "log_name": DATASET,
                "product": {
                    "name": "aidr_gate",
                    "vendor_name": "aidr_gate",
                    "version": __version__,
                },
            },
            "actor": {
                "user": {
                    "uid": identity.subject if identity else None,
                    "org": {
                        "uid": evidence.entity_id,
                        "name": evidence.entity.name if evidence.entity else None,
                    },
                },
                "authorizations": shared.ocsf_authorizations,
            },
            "api": {
                "operation": f"{method} {path}" if request else None,
                "service": {"name": "aidr-gate"},
                "request": {"uid": decision.decision_id},
                "response": {"code": request.status if request else decision.status},
            },
            "src_endpoint": {
                "ip": origin.ip if origin else None,
                "location": {"country": origin.country if origin else None},
            },
            "http_request": None
            if request is None
            else {
                "http_method": method,
                "version": request.http_version,
                "url": {"path": path, "scheme": request.scheme},
                "user_agent": headers.get("user-agent"),
            },
            "http_response": None if request is None else {"code": request.status},
            "unmapped": {"aidr": aidr},
        }

    # -- the fast path ---------------------------------------------------------------------------

    def fill(
        self, event: AuditEvent, request: RequestContext, shared: Shared, template: Template
    ) -> bytes:
        """The record from *template*, with this request's values in its gaps."""
        c = template
        decision = event.decision
        actor, identity_json, endpoint, origin_json = self.parties(event)
        dumps = orjson.dumps
        method = _activity(request)[0]
        path = clean_path(request.path)
        at, decision_id, headers, request_json, gate_json, upstream_json = self.request_values(
            event, request
        )
        status = dumps(request.status)
        return b"".join(
            (
                c[0],
                b"%d" % int(decision.at * 1000),
                c[1],
                at,
                c[2],
                decision_id,
                c[3],
                actor,
                c[4],
                dumps(f"{method} {path}"),
                c[5],
                decision_id,
                c[6],
                status,
                c[7],
                endpoint,
                c[8],
                dumps(
                    {
                        "http_method": method,
                        "version": request.http_version,
                        "url": {"path": path, "scheme": request.scheme},
                        "user_agent": headers.get("user-agent"),
                    }
                ),
                c[9],
                b'{"code":%b}' % status,
                c[10],
                decision_id,
                c[11],
                at,
                c[12],
                identity_json,
                c[13],
                origin_json,
                c[14],
                request_json,
                c[15],
                gate_json,
                c[16],
                upstream_json,
                c[17],
            )
        )
