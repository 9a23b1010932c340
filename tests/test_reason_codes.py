"""Every reason code of errors.py, tied to what the gate answers with it and to the README's table.

A class's ``status`` is the HTTP status of its refusal; its sentence is the one clients read
(``responses``); the README's table under "What callers see" lists each code on the row of its
status. A class added to errors.py is checked without being named here: give it a sentence and
a place in the table, or say below why the gate never answers with it.
"""

from __future__ import annotations

import inspect
import re

import pytest

from aidr_gate import errors
from aidr_gate.asgi.responses import _MESSAGES, error_message
from aidr_gate.sidecar import proxy
from support.audit_support import gate
from support.environment import ROOT

# Codes of errors.py no client is ever answered with, and why.
NOT_ANSWERED = {
    "GATE_ERROR": "the root of the tree: only its subclasses are raised",
    "CONFIG_INVALID": "raised while loading, never per request",
    "REQUEST_INVALID": "the family of request errors: each raised is a subclass",
    "ORIGIN_UNRESOLVED": "an unresolved origin is an unknown country to the pack, not a refusal",
}


def _classes() -> list[type[errors.AidrGateError]]:
    return [
        obj
        for obj in vars(errors).values()
        if inspect.isclass(obj)
        and issubclass(obj, errors.AidrGateError)
        and obj.__module__ == errors.__name__
    ]


ANSWERED = [cls for cls in _classes() if cls.reason not in NOT_ANSWERED]


TABLE_HEAD = "| status | reason codes (the gate's own; packs add theirs) |"


def _readme_table() -> dict[str, set[int]]:
    """Code -> the statuses of the README rows that list it (the table under TABLE_HEAD)."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = lines.index(TABLE_HEAD) + 2  # past the head and its rule
    table: dict[str, set[int]] = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        status, codes = line.strip("|").split("|", 1)
        statuses = {int(s) for s in re.findall(r"\d{3}", status)}
        assert statuses, f"a row of the reason table without a status: {line}"
        for code in re.findall(r"`([A-Z][A-Z0-9_]+)`", codes):
            table.setdefault(code, set()).update(statuses)
    return table


TABLE = _readme_table()


def test_the_table_is_read() -> None:
    assert "TOKEN_MISSING" in TABLE
    assert TABLE["TOKEN_MISSING"] == {401}
    assert TABLE["UPSTREAM_TIMEOUT"] == {502, 504}


def test_every_reason_code_is_answered_or_says_why_not() -> None:
    codes = {cls.reason for cls in _classes()}
    assert set(NOT_ANSWERED) <= codes, set(NOT_ANSWERED) - codes
    assert ANSWERED


@pytest.mark.parametrize("error", ANSWERED, ids=lambda e: e.reason)
def test_reason_code_status_sentence_and_readme_agree(error: type[errors.AidrGateError]) -> None:
    assert error.reason in TABLE, f"{error.reason} is missing from the README's reason table"
    assert error.status in TABLE[error.reason], (error.reason, error.status, TABLE[error.reason])
    assert error.reason in _MESSAGES, f"{error.reason} has no sentence in responses._MESSAGES"
    decision = gate().refuse(error("detail"))
    assert decision.status == error.status
    assert decision.reasons == (error.reason,)
    assert error_message(decision).startswith(_MESSAGES[error.reason])


def test_the_readme_names_only_codes_the_gate_has() -> None:
    known = {cls.reason for cls in ANSWERED} | set(proxy._MESSAGES)
    assert set(TABLE) - known == set()
    # The sidecar's own codes are in the table too.
    assert set(proxy._MESSAGES) <= set(TABLE), set(proxy._MESSAGES) - set(TABLE)
