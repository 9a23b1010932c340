"""Every reason code tied to its registry entry, to what the gate answers with it, and to the README.

The registry (``aidr_gate.reasons``) is the one table of codes: an exception takes its status and
stage from it, a deny its sentence and ``Retry-After``, the sidecar its error answers, and the
README its tables. A code written anywhere in ``src`` or in a bundled pack without an entry fails
here, as does an entry the code or the README no longer agrees with.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import pkgutil
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from msgspec.structs import replace

import aidr_gate
from aidr_gate import errors
from aidr_gate.asgi import responses
from aidr_gate.asgi.responses import error_body, error_headers, error_message, own_answer
from aidr_gate.decision import Decision
from aidr_gate.policy.extends import bundled_pack_dir
from aidr_gate.policy.pack import load_pack
from aidr_gate.reasons import (
    REASONS,
    Kind,
    Reason,
    markdown,
    of_kind,
    other_markdown,
    pack_markdown,
)
from aidr_gate.sidecar import proxy
from support.audit_support import gate
from support.environment import ROOT

SRC = ROOT / "src" / "aidr_gate"
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _subclasses(base: type[errors.AidrGateError]) -> list[type[errors.AidrGateError]]:
    found: list[type[errors.AidrGateError]] = [base]
    for sub in base.__subclasses__():
        found += _subclasses(sub)
    return found


def _package_errors() -> list[type[errors.AidrGateError]]:
    """Every class under the root that a module of aidr_gate defines."""
    for info in pkgutil.walk_packages(aidr_gate.__path__, "aidr_gate."):
        if info.name != "aidr_gate.__main__":  # runs the command line when imported
            importlib.import_module(info.name)
    return sorted(
        {c for c in _subclasses(errors.AidrGateError) if c.__module__.startswith("aidr_gate")},
        key=lambda c: f"{c.__module__}.{c.__qualname__}",
    )


ERRORS = [
    obj
    for obj in vars(errors).values()
    if inspect.isclass(obj) and issubclass(obj, errors.AidrGateError)
]
REFUSALS = of_kind(Kind.REFUSAL)
SIDECAR = of_kind(Kind.SIDECAR)


# --- the exceptions take their codes' entries -------------------------------------------------


@pytest.mark.parametrize("error", _package_errors(), ids=lambda e: e.__qualname__)
def test_every_exception_has_its_codes_status_and_stage(error: type[errors.AidrGateError]) -> None:
    entry = REASONS.get(error.reason)
    assert entry is not None, f"{error.__qualname__}: {error.reason} is not in aidr_gate.reasons"
    assert entry.kind in (Kind.FAMILY, Kind.REFUSAL), entry
    assert (error.status, error.stage) == (entry.status, entry.stage)


def test_errors_py_states_no_status_or_stage_by_hand() -> None:
    tree = ast.parse((SRC / "errors.py").read_text(encoding="utf-8"))
    written = [
        f"{node.name}.{target.id}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        for statement in node.body
        if isinstance(statement, ast.Assign | ast.AnnAssign) and statement.value is not None
        for target in (
            statement.targets if isinstance(statement, ast.Assign) else [statement.target]
        )
        if isinstance(target, ast.Name) and target.id in ("status", "stage")
    ]
    assert written == []


def test_every_code_of_the_tree_has_one_class() -> None:
    by_code: dict[str, list[str]] = defaultdict(list)
    for cls in ERRORS:
        if cls.__dict__.get("reason"):
            by_code[cls.reason].append(cls.__name__)
    assert {code: names for code, names in by_code.items() if len(names) > 1} == {}
    codes = {r.code for r in of_kind(Kind.REFUSAL, Kind.FAMILY)}
    assert set(by_code) == codes


def test_a_class_from_outside_keeps_its_own_status() -> None:
    class Outside(errors.IdentityError):
        reason = "SOMEONE_ELSES_CODE"

    assert (Outside.status, Outside.stage) == (401, "identity")


# --- what the gate answers with each code -----------------------------------------------------


def _refused(code: str) -> Decision:
    (cls,) = [c for c in ERRORS if c.__dict__.get("reason") == code]
    return gate().refuse(cls("detail"))


@pytest.mark.parametrize("entry", REFUSALS, ids=lambda r: r.code)
def test_a_refusal_answers_its_status_sentence_and_headers(entry: Reason) -> None:
    decision = _refused(entry.code)
    assert (decision.status, decision.reasons) == (entry.status, (entry.code,))
    assert decision.rule == f"gate/{entry.stage}"
    assert entry.message is not None
    assert (
        error_message(decision)
        == f"{entry.message} ({entry.code}; decision {decision.decision_id})"
    )
    body = json.loads(error_body(decision))["error"]
    assert (body["code"], body["reasons"]) == (entry.code, [entry.code])
    headers = dict(error_headers(decision, 10))
    assert (b"www-authenticate" in headers) == (entry.status == 401)
    retry = headers.get(b"retry-after")
    assert retry == (None if entry.retry_after is None else str(entry.retry_after).encode())


@pytest.mark.parametrize("entry", SIDECAR, ids=lambda r: r.code)
def test_the_sidecars_answers_come_from_the_registry(entry: Reason) -> None:
    assert getattr(proxy, entry.code) == entry.code
    status, body, headers = own_answer(entry.code, "d-1")
    error = json.loads(body)["error"]
    assert status == entry.status
    assert error["message"] == f"{entry.message} ({entry.code}; decision d-1)"
    assert (error["code"], error["decision_id"], error["reasons"]) == (
        entry.code,
        "d-1",
        [entry.code],
    )
    assert json.loads(own_answer(entry.code)[1])["error"]["message"] == entry.message
    assert dict(headers)[b"content-length"] == str(len(body)).encode()


def test_an_answer_without_a_decision_reads_its_own_sentence() -> None:
    status, body, headers = own_answer("GATE_NOT_READY")
    error = json.loads(body)["error"]
    assert (status, error["message"], error["decision_id"]) == (
        503,
        "the access gate is not ready; try again shortly",
        None,
    )
    assert (b"retry-after", b"1") in headers
    with pytest.raises(ValueError, match="not a code clients are answered with"):
        own_answer("TIER3_CONTROLLED_MODEL")


def test_the_sentences_are_the_registrys_and_only_answered_codes_have_one() -> None:
    assert {r.code: r.message for r in REFUSALS} == responses._MESSAGES
    for entry in REASONS.values():
        assert (entry.message is not None) == entry.answered, entry.code
        assert (entry.status is not None) == (
            entry.kind in (Kind.REFUSAL, Kind.SIDECAR, Kind.FAMILY)
        )


def test_every_503_of_the_gate_says_when_to_try_again() -> None:
    for entry in of_kind(Kind.REFUSAL, Kind.FAMILY):
        assert (entry.retry_after is not None) == (entry.status == 503), entry.code
    assert all(r.retry_after is None for r in SIDECAR)


def test_a_pack_reason_gets_the_policy_sentence() -> None:
    refused = _refused("TOKEN_MISSING")
    for entry in of_kind(Kind.PACK):
        assert entry.message is None and entry.status is None, entry.code
        decision = replace(refused, status=451, reasons=(entry.code,))
        assert f"is denied by policy '{decision.policy.id}' ({entry.code};" in error_message(
            decision
        )


# --- every code in src and in the bundled packs has an entry ----------------------------------

CODE = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+")


def _literals(tree: ast.Module) -> list[str]:
    """The string constants of a module that could be reason codes: not docstrings, not the
    names ``__all__`` exports, not an argparse ``metavar``."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            skip |= {id(n) for n in ast.walk(node.value)}
        elif isinstance(node, ast.keyword) and node.arg == "metavar":
            skip.add(id(node.value))
        elif isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                skip.add(id(first.value))
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
    ]


def _source_codes() -> dict[str, set[str]]:
    """Code-like literals of src -> the files that write them. An argparse metavar is a name
    (``AUDIT_FILE``) wherever it is written; environment variables are ``AIDR_*``."""
    found: dict[str, set[str]] = defaultdict(set)
    metavars: set[str] = set()
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        metavars |= {
            n.value.value
            for n in ast.walk(tree)
            if isinstance(n, ast.keyword)
            and n.arg == "metavar"
            and isinstance(n.value, ast.Constant)
            and isinstance(n.value.value, str)
        }
        for text in _literals(tree):
            if CODE.fullmatch(text) and not text.startswith("AIDR_"):
                found[text].add(str(path.relative_to(SRC)))
    return {code: files for code, files in found.items() if code not in metavars}


def test_the_source_scan_sees_the_codes_outside_the_registry() -> None:
    found = _source_codes()
    for code, where in [
        ("MODEL_UNKNOWN", "policy/engine.py"),
        ("MODELS_LISTED", "gate.py"),
        ("UPSTREAM_TIMEOUT", "sidecar/proxy.py"),
        ("CLIENT_DISCONNECTED", "stages.py"),
        ("AUDIT_NOT_STORED", "asgi/http.py"),
    ]:
        assert where in found[code], (code, found.get(code))
    assert "AUDIT_FILE" not in found  # a metavar, also written as a Problem's path
    assert "AIDR_GATE_CONFIG" not in found


def test_every_code_written_in_src_is_in_the_registry() -> None:
    missing = {
        code: sorted(files) for code, files in _source_codes().items() if code not in REASONS
    }
    assert missing == {}, "add these to aidr_gate.reasons (or say why they are not codes)"


def _pack_files() -> list[Path]:
    return sorted(bundled_pack_dir().glob("*.yaml")) + sorted(
        (ROOT / "policies" / "examples").glob("*.yaml")
    )


def _reasons_in(data: Any) -> set[str]:
    if isinstance(data, dict):
        found = {v for k, v in data.items() if k == "reason" and isinstance(v, str)}
        return found.union(*(_reasons_in(v) for v in data.values()))
    if isinstance(data, list):
        return set().union(*(_reasons_in(v) for v in data))
    return set()


def test_every_code_a_bundled_pack_writes_is_a_pack_entry() -> None:
    written = set().union(*(_reasons_in(yaml.safe_load(p.read_text())) for p in _pack_files()))
    assert {"ALLOWED", "TIER3_CONTROLLED_MODEL", "ORIGIN_VELOCITY"} <= written
    assert {c: REASONS[c].kind if c in REASONS else None for c in written} == dict.fromkeys(
        written, Kind.PACK
    )


def test_the_bundled_packs_give_each_code_as_its_entry_says() -> None:
    given: dict[str, set[str]] = defaultdict(set)
    for path in _pack_files():
        if "rules" not in (yaml.safe_load(path.read_text()) or {}):
            continue  # the example configuration, registry and catalogue
        pack = load_pack(str(path))
        for outcome in (pack.default, *(rule.outcome for rule in pack.rules)):
            effect = outcome.effect.value
            given[outcome.reason].add(str(outcome.status) if effect == "deny" else effect)
    entries = {r.code: set(r.effects) for r in of_kind(Kind.PACK)}
    assert dict(given) == {code: effects for code, effects in entries.items() if effects}
    assert {r.code: r.when for r in of_kind(Kind.PACK)} == errors.PACK_REASONS


# --- the README -------------------------------------------------------------------------------


def _generated(name: str) -> str:
    start, end = f"<!-- {name}: generated -->\n", f"<!-- /{name} -->"
    assert start in README and end in README, name
    return README.split(start, 1)[1].split(end, 1)[0]


@pytest.mark.parametrize(
    ("name", "render"),
    [
        ("reason-codes", markdown),
        ("pack-reasons", pack_markdown),
        ("other-reasons", other_markdown),
    ],
)
def test_the_readme_tables_are_generated_from_the_registry(name: str, render: Any) -> None:
    assert _generated(name) == render(), f"regenerate with aidr_gate.reasons.{render.__name__}()"


def _rows(name: str) -> dict[str, list[str]]:
    """Code -> the cells of its row in one of the README's tables."""
    rows: dict[str, list[str]] = {}
    for line in _generated(name).splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        (code,) = [c.strip("`") for c in cells if re.fullmatch(r"`[A-Z][A-Z0-9_]+`", c)]
        assert code not in rows, f"{code} has two rows"
        rows[code] = cells
    return rows


def test_every_code_has_one_readme_row_that_agrees_with_its_entry() -> None:
    answered = _rows("reason-codes")
    packs = _rows("pack-reasons")
    others = _rows("other-reasons")
    assert answered.keys() | packs.keys() | others.keys() == set(REASONS)
    assert len(answered) + len(packs) + len(others) == len(REASONS)
    for code, (status, _, stage, sentence, _) in answered.items():
        entry = REASONS[code]
        assert entry.answered
        assert (int(status), stage, sentence) == (entry.status, entry.stage, entry.message)
    assert answered["TOKEN_MISSING"][0] == "401"
    for code, (_, given, stage, _) in packs.items():
        assert REASONS[code].kind is Kind.PACK
        assert (given, stage) == (", ".join(REASONS[code].effects) or "none", REASONS[code].stage)
