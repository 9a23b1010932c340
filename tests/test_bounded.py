"""The string pool: one object per distinct string, and never more than its size held."""

from __future__ import annotations

from aidr_gate.bounded import StringPool


def fresh(text: str) -> str:
    """An equal string that is a different object (as each decoded token or address gives)."""
    return "".join(list(text))


def test_equal_strings_give_one_object() -> None:
    pool = StringPool(8)
    first = pool.one(fresh("org-0001"))
    again = fresh("org-0001")
    assert again is not first
    assert pool.one(again) is first
    assert pool.one(fresh("org-0002")) is not first


def test_the_pool_never_holds_more_than_its_size() -> None:
    # Unlike sys.intern (immortal on CPython 3.12.0-3.12.4), whatever callers send.
    pool = StringPool(100)
    for n in range(10_000):
        assert pool.one(f"2001:db8:{n:x}::/48") == f"2001:db8:{n:x}::/48"
        assert len(pool) <= 100
