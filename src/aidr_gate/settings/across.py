"""Checks that read two sections at once: a value one section allows that another makes unreachable.

Each section reader checks its own keys; a few limits only make sense together. These run after
every section is read, and report at the key to change, in the same ``file:line: key: message``
form. They warn rather than refuse: a small budget is a choice an operator may make on purpose
(a host that takes no uploads), but one ``validate`` must say out loud.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from aidr_gate.document import Checker
from aidr_gate.limits import LIMITS, Limits
from aidr_gate.settings.middleware import MIDDLEWARE, MiddlewareSettings


def _mib(size: int) -> str:
    return f"{size / (1 << 20):g} MiB" if size >= 1 << 20 else f"{size} bytes"


def _budget_holds_the_largest_body(check: Checker, values: Mapping[str, Any]) -> None:
    """A body the middleware accepts but the process budget can never hold is always refused."""
    limits, middleware = values.get(LIMITS.name), values.get(MIDDLEWARE.name)
    if not isinstance(limits, Limits) or not isinstance(middleware, MiddlewareSettings):
        return
    models = middleware.models
    # One warning, naming the larger limit: raising the budget to it clears both.
    allowed, key = max(
        (models.max_form_bytes, "max_form_bytes"), (models.max_body_bytes, "max_body_bytes")
    )
    if limits.max_buffered_bytes < allowed:
        check.warn(
            f"{LIMITS.name}.max_buffered_bytes",
            f"{_mib(limits.max_buffered_bytes)} is less than {MIDDLEWARE.name}.{key} "
            f"({_mib(allowed)}): a body between the two is accepted by the middleware but can "
            "never be buffered, so it is always refused 503 BUFFER_BUDGET_EXHAUSTED; raise "
            f"max_buffered_bytes to at least {allowed} or lower {key}",
        )


ACROSS: tuple[Callable[[Checker, Mapping[str, Any]], None], ...] = (_budget_holds_the_largest_body,)


def check_across(check: Checker, values: Mapping[str, Any]) -> None:
    """Run every cross-section check over the sections' read *values* (None where one failed)."""
    for rule in ACROSS:
        rule(check, values)
