"""Deny answers shaped like OpenAI errors, so SDKs surface them: reason code and decision id, no internals."""

from __future__ import annotations

import json

from aidr_gate.decision import Decision

# The ``type`` field, by HTTP status (the openai SDK maps the status to its exception class).
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_denied_error",
    413: "invalid_request_error",
    451: "unavailable_for_legal_reasons",
    502: "upstream_error",
    503: "service_unavailable",
    504: "upstream_timeout",
}

# Plain-language messages for the gate's own reason codes; pack reasons get a generic sentence.
_MESSAGES = {
    "IDENTITY_INVALID": "The bearer token could not be verified.",
    "TOKEN_MISSING": "A bearer token is required.",
    "TOKEN_MALFORMED": "The bearer token is malformed.",
    "TOKEN_EXPIRED": "The bearer token has expired.",
    "TOKEN_NOT_YET_VALID": "The bearer token is not valid yet.",
    "TOKEN_SIGNATURE_INVALID": "The bearer token's signature does not verify.",
    "TOKEN_ISSUER_INVALID": "The bearer token was issued by an issuer this gate does not trust.",
    "TOKEN_AUDIENCE_INVALID": "The bearer token is not meant for this service.",
    "TOKEN_CLAIM_MISSING": "The bearer token lacks a required claim.",
    "TOKEN_CLAIM_INVALID": "A claim in the bearer token has an invalid value.",
    "TOKEN_ALGORITHM_NOT_ALLOWED": "The bearer token uses an algorithm this gate does not accept.",
    "TOKEN_KEY_UNKNOWN": "The bearer token was signed with a key this gate does not know.",
    "TOKEN_KEYS_UNAVAILABLE": "The gate cannot verify tokens right now.",
    "BODY_TOO_LARGE": "The request body is too large.",
    "BODY_NOT_JSON": "The request body must be a JSON object.",
    "BODY_INCOMPLETE": "The request body was not received in full.",
    "BODY_NOT_FORM": "The request body must be a multipart form with one model field.",
    "MODEL_MISSING": "The request must name a model.",
    "HEADER_REPEATED": "The request repeats a header that must come once.",
    "MODEL_CONFLICT": "The request names different models in different places.",
    "FORM_AMBIGUOUS": "The form has a part that parsers could read differently.",
    "HEADERS_TOO_LARGE": "The request's headers are too large or too many.",
    "BODY_TIMEOUT": "The request body did not arrive in time.",
    "BODY_TOO_COMPLEX": "The request body holds too many JSON objects and arrays.",
    "BUFFER_BUDGET_EXHAUSTED": "The service is holding too many uploads; try again shortly.",
    "AUDIT_UNAVAILABLE": "The service cannot record requests right now and refuses them.",
    "POLICY_EVALUATION_FAILED": "The request could not be evaluated and is refused.",
    "GATE_NOT_READY": "The gate is not ready.",
    "REGISTRY_UNAVAILABLE": "The registry of customers cannot be reached; the request is refused.",
    "SCREENING_UNAVAILABLE": "Restricted-party screening is out of date; the request is refused.",
    "ACCESS_REVOKED": "Access ended while the response was streaming.",
}


def error_message(decision: Decision) -> str:
    """The human sentence of a deny: what happened, under which policy, with which reason code."""
    reason = decision.reasons[0] if decision.reasons else "DENIED"
    known = _MESSAGES.get(reason)
    if known is not None:
        return f"{known} ({reason}; decision {decision.decision_id})"
    model = decision.evidence.model_requested
    subject = f"Access to model '{model}'" if model else "This request"
    return (
        f"{subject} is denied by policy '{decision.policy.id}' ({reason}; "
        f"decision {decision.decision_id})."
    )


def json_error(
    status: int, code: str, message: str, decision_id: str | None, reasons: tuple[str, ...]
) -> bytes:
    """``{"error": {"message", "type", "param", "code", "decision_id", "reasons"}}``: the shape of
    every answer the gate gives instead of the app's (denials, and the sidecar's 502/504)."""
    return json.dumps(
        {
            "error": {
                "message": message,
                "type": _TYPES.get(status, "access_denied"),
                "param": None,
                "code": code,
                "decision_id": decision_id,
                "reasons": list(reasons),
            }
        },
        separators=(",", ":"),
    ).encode()


def error_body(decision: Decision) -> bytes:
    """The JSON body of a deny (see :func:`json_error`)."""
    return json_error(
        decision.status or 403,
        decision.reasons[0] if decision.reasons else "DENIED",
        error_message(decision),
        decision.decision_id,
        decision.reasons,
    )


def json_headers(length: int) -> list[tuple[bytes, bytes]]:
    """Headers of a JSON error answer: its type and length, and never cached."""
    return [
        (b"content-type", b"application/json"),
        (b"content-length", str(length).encode()),
        (b"cache-control", b"no-store"),
    ]


def www_authenticate(reason: str) -> bytes:
    """RFC 6750 challenge: no error code when the token is missing, ``invalid_token`` otherwise."""
    if reason == "TOKEN_MISSING":
        return b'Bearer realm="aidr-gate"'
    return f'Bearer realm="aidr-gate", error="invalid_token", error_description="{reason}"'.encode()


def error_headers(decision: Decision, length: int) -> list[tuple[bytes, bytes]]:
    """Headers of a deny answer (JSON, not cacheable, a bearer challenge for 401)."""
    headers = json_headers(length)
    if decision.status == 401:
        headers.append((b"www-authenticate", www_authenticate(decision.reasons[0])))
    elif decision.status == 503:  # the budget, the audit trail, the registry: try again shortly
        headers.append((b"retry-after", b"1"))
    return headers
