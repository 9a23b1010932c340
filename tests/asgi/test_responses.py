"""Deny answers: every refusal the gate makes itself gets a plain sentence, never the policy one."""

from __future__ import annotations

import pytest

from aidr_gate import errors
from aidr_gate.asgi.responses import _MESSAGES, error_message
from support.audit_support import gate


def _subclasses(base: type[errors.AidrGateError]) -> list[type[errors.AidrGateError]]:
    found = []
    for sub in base.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


REFUSALS = [
    *_subclasses(errors.RequestError),
    *_subclasses(errors.IdentityError),
    errors.AuditUnavailable,
    errors.BufferBudgetExhausted,
    errors.PolicyEvaluationError,
    errors.GateNotReady,
]


@pytest.mark.parametrize("error", REFUSALS, ids=lambda e: e.reason)
def test_every_refusal_of_the_gate_has_its_own_message(error: type[errors.AidrGateError]) -> None:
    assert error.reason in _MESSAGES
    decision = gate().refuse(error("detail"))
    message = error_message(decision)
    assert message.startswith(_MESSAGES[error.reason])
    assert "denied by policy" not in message
