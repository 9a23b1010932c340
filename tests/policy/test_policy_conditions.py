"""The pack reader's condition keys and the engine's: one list, read by both.

The reader (``policy/pack.py``) accepts the keys of ``CONDITION_KEYS`` in a rule's ``when``; the
engine (``policy/engine.py``) compiles each through its getter tables (``_*_GETTERS``) or a case of
its own. A key added to one and not the other fails here: a key the reader accepts but the engine
cannot compile, or an engine getter no pack can reach.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from aidr_gate.policy import engine, pack
from aidr_gate.policy.engine import PolicyEngine, compile_condition
from aidr_gate.policy.pack import CONDITION_KEYS, Condition, load_pack
from support.environment import POLICIES

STRUCTURE = {"any"}  # a key that nests conditions rather than testing a fact
FACT_KEYS = [key for key in CONDITION_KEYS if key not in STRUCTURE]


def _getter_tables() -> dict[str, dict[str, Any]]:
    """The engine's tables of fact getters, by name (``_BOOL_GETTERS``, ``_VALUE_GETTERS``...)."""
    return {
        name: table
        for name, table in vars(engine).items()
        if re.fullmatch(r"_[A-Z]+_GETTERS", name) and isinstance(table, dict)
    }


def _facts() -> engine.PolicyFacts:
    """Real facts from the bundled pack: a request whose every fact is known."""
    policy = PolicyEngine(load_pack(POLICIES / "aidr-2025-01.yaml"))
    verdict = policy.evaluate(
        entity=None,
        headquarters="SE",
        parent="US",
        model=None,
        network_country="SE",
        at=1_767_225_600.0,  # 2026-01-01
    )
    return verdict.facts


def test_the_engine_has_getter_tables() -> None:
    tables = _getter_tables()
    assert {"_BOOL_GETTERS", "_VALUE_GETTERS", "_GROUP_GETTERS"} <= set(tables)


@pytest.mark.parametrize("key", FACT_KEYS)
def test_every_key_the_reader_accepts_compiles_and_evaluates(key: str) -> None:
    predicate = compile_condition(Condition(((key, frozenset()),)))
    assert isinstance(predicate(_facts()), bool)


def test_every_engine_getter_is_a_key_the_reader_accepts() -> None:
    unreachable = {
        key for table in _getter_tables().values() for key in table if key not in CONDITION_KEYS
    }
    assert unreachable == set()


def test_fact_kinds_agree() -> None:
    # A key the reader reads as a boolean is compared by identity; one it reads as country groups
    # meets the engine's group sets.
    tables = _getter_tables()
    assert set(pack._BOOL_FACTS) == set(tables["_BOOL_GETTERS"])
    assert set(pack._GROUP_FACTS) == set(tables["_GROUP_GETTERS"])
    assert set(pack._TIER_FACTS) | set(pack._COUNTRY_FACTS) <= set(tables["_VALUE_GETTERS"])


def test_an_unknown_key_is_refused_by_both() -> None:
    assert "no_such_fact" not in CONDITION_KEYS
    with pytest.raises(ValueError, match="no compiler for condition 'no_such_fact'"):
        compile_condition(Condition((("no_such_fact", frozenset()),)))
