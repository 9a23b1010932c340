"""The alternative rendering: OCSF class 6003 API Activity with the ``security_control`` profile.

For Amazon Security Lake and other OCSF pipelines. The gate's decision maps onto ``action_id``,
``disposition_id``, ``policy``, ``authorizations`` and ``firewall_rule``; the full evidence tree
(the same ``aidr`` tree as the ECS record) travels in ``unmapped.aidr``.
"""

from __future__ import annotations

from typing import Any

import orjson

from aidr_gate import __version__
from aidr_gate.audit.record import AuditEvent, EvidenceRenderer, Redactor, clean_path
from aidr_gate.decision import Decision, Effect, Mode

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


class OcsfRenderer:
    """OCSF 6003 API Activity records."""

    name = "ocsf"

    def __init__(self, redactor: Redactor | None = None) -> None:
        self.evidence = EvidenceRenderer(redactor or Redactor())

    def document(self, event: AuditEvent) -> dict[str, Any]:
        """The record as a dict."""
        decision = event.decision
        evidence = decision.evidence
        identity = evidence.identity
        origin = evidence.origin
        request = event.request
        shared = self.evidence.shared(decision)
        at = self.evidence.clock.format(decision.at)
        aidr = self.evidence.aidr(event, shared, at)
        method = request.method.upper() if request else ""
        activity_id, activity = _ACTIVITY.get(method, (99, "Other"))
        action_id, action, disposition_id, disposition, severity_id = _disposition(decision)
        policy = decision.policy
        headers = aidr["request"]["headers"] if request else {}
        failed = decision.effect is Effect.DENY
        policy_obj = {
            "uid": policy.id,
            "name": policy.id,
            "version": policy.digest,
            "desc": f"status {policy.status}; legal window covers the request: {policy.in_window}",
            "is_applied": True,
        }
        doc: dict[str, Any] = {
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
            "policy": policy_obj,
            "authorizations": [
                {"decision": decision.effect.value, "policy": policy_obj},
            ],
            "firewall_rule": {"uid": decision.rule, "name": decision.rule},
            "metadata": {
                "version": OCSF_VERSION,
                "uid": decision.decision_id,
                "profiles": ["security_control"],
                "log_name": "aidr_gate.audit",
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
                "authorizations": [{"decision": decision.effect.value, "policy": policy_obj}],
            },
            "api": {
                "operation": f"{method} {clean_path(request.path)}" if request else None,
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
                "url": {"path": clean_path(request.path), "scheme": request.scheme},
                "user_agent": headers.get("user-agent"),
            },
            "http_response": None if request is None else {"code": request.status},
            "unmapped": {"aidr": aidr},
        }
        return doc

    def render(self, event: AuditEvent) -> bytes:
        """The record's JSON object."""
        return orjson.dumps(self.document(event))
