"""Building the decision table's cases: a date as a timestamp, an agreement in one call."""

from __future__ import annotations

from aidr_gate.document import parse_instant
from aidr_gate.registry import Agreement, AgreementStatus


def t(text: str) -> float:
    """Seconds since the epoch for an ISO date or date-time."""
    value = parse_instant(text)
    assert value is not None
    return value


def sa(
    agreement_id: str,
    *,
    status: AgreementStatus = AgreementStatus.ACTIVE,
    kind: str = "security-agreement",
    since: str = "2025-01-01",
    until: str = "2027-01-01",
    tiers: tuple[str, ...] = ("controlled",),
    countries: tuple[str, ...] = ("*",),
) -> Agreement:
    """An agreement with sensible defaults: active, 2025-2027, controlled tier, every country."""
    return Agreement(
        id=agreement_id,
        type=kind,
        status=status,
        valid_from=t(since),
        valid_until=t(until),
        model_tiers=frozenset(tiers),
        countries=frozenset(countries),
    )
