"""Deny answers shaped like OpenAI errors, so SDKs surface them: reason code and decision id, no internals."""

from __future__ import annotations

import json

from aidr_gate.decision import Decision
from aidr_gate.reasons import REASONS, Kind

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

# The sentences of the gate's refusals, from the registry, as one dict read per deny; pack
# reasons get the policy sentence (the sidecar's own codes are never a decision's).
_MESSAGES: dict[str, str] = {
    code: r.message for code, r in REASONS.items() if r.kind is Kind.REFUSAL and r.message
}
# ``Retry-After`` of the codes whose answer carries one (every 503 of the gate).
_RETRY_AFTER: dict[str, tuple[bytes, bytes]] = {
    code: (b"retry-after", str(r.retry_after).encode())
    for code, r in REASONS.items()
    if r.retry_after is not None
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
    elif decision.reasons:  # the budget, the audit trail, the registry: try again shortly
        retry = _RETRY_AFTER.get(decision.reasons[0])
        if retry is not None:
            headers.append(retry)
    return headers


def own_answer(
    code: str, decision_id: str | None = None
) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """Status, body and headers of an answer with one code of the gate's or the sidecar's own
    where no deny decision is answered (the sidecar's failures, a gate that could not start): all
    from the code's registry entry."""
    reason = REASONS[code]
    if reason.status is None or reason.message is None:
        raise ValueError(f"{code} is not a code clients are answered with")
    if not decision_id:
        message = reason.undecided or reason.message
    else:
        message = f"{reason.message} ({code}; decision {decision_id})"
    body = json_error(reason.status, code, message, decision_id, (code,))
    headers = json_headers(len(body))
    if reason.retry_after is not None:
        headers.append((b"retry-after", str(reason.retry_after).encode()))
    return reason.status, body, headers
