"""One pass over a request's headers finds what each stage would have found scanning them alone."""

from __future__ import annotations

import pytest

from aidr_gate.errors import BodyNotForm, HeaderRepeated, TokenMalformed
from aidr_gate.request.headers import (
    AUTHORIZATION,
    CONTENT_TYPE,
    MODEL,
    HeaderPlan,
    single_header_value,
)

Lines = list[tuple[bytes, bytes]]
CASES: list[tuple[str, Lines]] = [
    ("none", [(b"host", b"gate")]),
    ("plain", [(b"authorization", b"Bearer a"), (b"x-model", b"m"), (b"content-type", b"x/y")]),
    ("repeated token", [(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")]),
    ("repeated model", [(b"x-model", b"a"), (b"x-model", b"a")]),
    ("repeated type", [(b"content-type", b"a"), (b"content-type", b"b")]),
    ("stray spelling", [(b"Authorization", b"Bearer a"), (b"X-Model", b"m")]),
    ("stray repeat", [(b"authorization", b"Bearer a"), (b"AUTHORIZATION", b"Bearer b")]),
    ("empty values", [(b"authorization", b""), (b"x-model", b"")]),
    ("lookalikes", [(b"authorizatio", b"a"), (b"x-models", b"b"), (b"content-typ", b"c")]),
    ("forwarding", [(b"x-forwarded-for", b"1.2.3.4"), (b"Forwarded", b"for=5.6.7.8")]),
]
SLOTS = [
    (AUTHORIZATION, b"authorization", TokenMalformed),
    (MODEL, b"x-model", HeaderRepeated),
    (CONTENT_TYPE, b"content-type", BodyNotForm),
]


@pytest.mark.parametrize(("lines"), [pytest.param(c[1], id=c[0]) for c in CASES])
def test_each_header_is_read_as_single_header_value_reads_it(lines: Lines) -> None:
    plan = HeaderPlan(b"x-model", (b"forwarded", b"x-forwarded-for"))
    seen = plan.scan(lines)
    assert seen.size == sum(len(name) + len(value) for name, value in lines)
    for slot, name, error in SLOTS:
        try:
            expected: object = single_header_value(lines, name, error)
        except error as exc:
            expected = (type(exc), str(exc))
        try:
            got: object = seen.single(slot, plan, error)
        except error as exc:
            got = (type(exc), str(exc))
        assert got == expected
    forwarding = [(n, v) for n, v in lines if n.lower() in (b"forwarded", b"x-forwarded-for")]
    assert seen.forwarded == forwarding  # every line, in request order


def test_without_a_model_header_none_is_collected_and_a_shared_name_serves_both() -> None:
    lines = [(b"x-model", b"m"), (b"content-type", b"t")]
    assert HeaderPlan(None, ()).scan(lines).values == [None, None, b"t"]
    # A model header named like a forwarding header (odd, but configurable): both get it.
    seen = HeaderPlan(b"x-forwarded-for", (b"x-forwarded-for",)).scan([(b"x-forwarded-for", b"a")])
    assert (seen.values[MODEL], seen.forwarded) == (b"a", [(b"x-forwarded-for", b"a")])
