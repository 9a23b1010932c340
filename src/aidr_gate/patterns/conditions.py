"""Pattern tests in a pack's ``when``: how they are read (``pack.py``) and compiled (``engine.py``).

A signal is tested against thresholds, all of which must hold; a bare number means ``at_least``::

    when:
      origin_countries_1h: {at_least: 3}
      network_entities_1d: {more_than: 20, at_most: 1000}
      anonymizer_share_1h: 0.5          # at_least 0.5
      patterns_degraded: true           # the fleet's shared view is lost (a boolean)

The engine reduces a request's signals to one boolean per distinct test of its pack before its
cached evaluation, so numbers that change with every request do not defeat the cache.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

from aidr_gate.document import Checker, join
from aidr_gate.patterns.signals import (
    DEGRADED_KEY,
    MAX_DISTINCT,
    Measure,
    is_pattern_key,
    parse_signal_key,
)

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "at_least": operator.ge,
    "more_than": operator.gt,
    "at_most": operator.le,
    "less_than": operator.lt,
}


def pattern_keys_in(raw: Any) -> tuple[str, ...]:
    """The keys of a raw ``when`` mapping that name pattern signals (so the loader accepts them)."""
    if not isinstance(raw, dict):
        return ()
    return tuple(k for k in raw if is_pattern_key(k))


def read_pattern_test(check: Checker, key: str, value: Any, path: str) -> Any:
    """A pattern test's value as the pack keeps it: a bool, or ``{operator: threshold}``."""
    if key == DEGRADED_KEY:
        return check.boolean(value, path)
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = {"at_least": value}
    data = check.mapping(value, path, keys=tuple(OPERATORS))
    if data is None:
        return None
    if not data:
        check.error(path, f"needs a threshold: one of {', '.join(OPERATORS)}")
        return None
    out: dict[str, float] = {}
    for name, threshold in data.items():
        number = check.number(threshold, join(path, name), minimum=0)
        if number is not None and _decidable(check, key, name, number, join(path, name)):
            out[name] = number
    return out if len(out) == len(data) else None


def items_needed(operator: str, threshold: float) -> int:
    """Items a key must hold for ``count <operator> threshold`` to read the same on the saturated
    count as on the true one (a count held at *c* reads *c* for every true count from *c* up)."""
    if operator in ("at_least", "less_than"):  # count >= t: told apart once t items are held
        return math.ceil(threshold)
    return math.floor(threshold) + 1  # more_than, at_most: count > t needs t + 1 held


def _decidable(check: Checker, key: str, operator: str, threshold: float, path: str) -> bool:
    """False (and an error) for a threshold no signal value can decide: a share above 1, or a
    count beyond the most distinct items a key may hold (``reach.py`` raises the bound up to
    that for every threshold below it)."""
    parsed = parse_signal_key(key)
    if parsed is None:
        return True
    if parsed.family.measure in (Measure.ANONYMIZER_SHARE, Measure.WORSE_SHARE):
        if threshold > 1:
            check.error(path, f"a share is between 0 and 1, not {threshold:g}")
            return False
        return True
    if items_needed(operator, threshold) > MAX_DISTINCT:
        check.error(
            path,
            f"counts stop at {MAX_DISTINCT} distinct items per key: {operator} {threshold:g} "
            "could never be decided",
        )
        return False
    return True


def compile_pattern_test(key: str, value: Any) -> Callable[[Mapping[str, float]], bool]:
    """One test over a request's signals (a signal missing reads as 0: nothing was seen)."""
    if key == DEGRADED_KEY:
        want = 1.0 if value else 0.0
        return lambda signals: signals.get(key, 0.0) == want
    checks = [(OPERATORS[name], threshold) for name, threshold in sorted(value.items())]
    if len(checks) == 1:  # the usual case: the comparison itself, without an operator call
        return _single(key, *next(iter(value.items())))
    return lambda signals: all(op(signals.get(key, 0.0), t) for op, t in checks)


def _single(key: str, name: str, threshold: float) -> Callable[[Mapping[str, float]], bool]:
    """One threshold of :data:`OPERATORS` as a comparison (this runs per test and request)."""
    if name == "at_least":
        return lambda signals: signals.get(key, 0.0) >= threshold
    if name == "more_than":
        return lambda signals: signals.get(key, 0.0) > threshold
    if name == "at_most":
        return lambda signals: signals.get(key, 0.0) <= threshold
    return lambda signals: signals.get(key, 0.0) < threshold
