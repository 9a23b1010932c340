"""Pack data for who is behind the caller: screening flags, sub-national regions, dated rules.

Kept apart from ``pack`` so its schema stays readable; ``pack`` calls these readers.

- ``screening`` conditions test the flags of the entity's screening result
  (:data:`SCREENING_FLAGS`, computed off the request path by ``aidr_gate.screening.facts``).
- ``region_groups`` name sub-national regions per regime (ISO 3166-2 codes, with dates): the
  regions a regime covers whole, and the ones that merely contain covered areas a GeoIP
  subdivision cannot tell apart (``uncertain``). An origin in a country of the group whose region
  is unknown, or is one of the ``uncertain`` ones, is ``region_uncertain`` for that group.
- ``during`` limits a rule to dated windows (the Affiliates rule's suspension, say): outside them
  the rule is skipped, as if absent. ``last: true`` moves a rule behind every rule without it, so
  a base pack's ``log`` rules never pre-empt the denies of a pack that extends it.
- ``status_history`` dates a pack's legal status (``aidr-2025-01``: in force, then not enforced,
  then contested), so a decision reports the status at its own time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aidr_gate.document import Checker, format_instant, join

# The flags of a screening result, as the ``screening`` condition names them.
SCREENING_FLAGS = (
    "listed",  # a confirmed hit on the entity's own names
    "owned-by-listed",  # 50% or more held in aggregate by parties treated as listed
    "owned-by-sdn",  # the same test counting SDN-listed parties only (OFAC's 50 Percent Rule)
    "potential-hit",  # an unreviewed hit on the entity's own names
    "exact-hit",  # one of those matched a listed name word for word
    "potential-owned-by-listed",  # owned 50%+ if unreviewed owner hits were confirmed
    "ownership-unknown",  # nothing is known of the owners (BIS Red Flag 29)
    "ownership-partial",  # some owners are known, not all
    "not-screened",  # in the registry, but not yet screened against the lists in use
)
SCREENING_KEYS = ("screening",)
REGION_KEYS = ("network_region", "region_group", "region_uncertain")
_REGION = re.compile(r"^([A-Z]{2})-[A-Z0-9]{1,3}$")


def in_window(since: float | None, until: float | None, at: float) -> bool:
    """True when *at* falls in ``[since, until)``, either end open: every dated window, group or
    region membership of a pack is tested here."""
    return (since is None or at >= since) and (until is None or at < until)


def window_fields(since: float | None, until: float | None) -> dict[str, str | None]:
    """The ``from``/``until`` members of a dated item's plain form (digests and diffs)."""
    return {"from": format_instant(since), "until": format_instant(until)}


@dataclass(frozen=True, slots=True)
class Window:
    """A dated window ``[since, until)``; either end may be open. ``note`` says why it exists."""

    since: float | None = None
    until: float | None = None
    note: str | None = None

    def holds_at(self, at: float) -> bool:
        """True when *at* falls inside the window."""
        return in_window(self.since, self.until, at)

    def to_dict(self) -> dict[str, Any]:
        """Plain form for digests and diffs."""
        return {**window_fields(self.since, self.until), "note": self.note}

    @classmethod
    def read(cls, check: Checker, data: Mapping[str, Any], path: str) -> Window | None:
        """``from``/``until`` (dates or date-times) of a mapping; ``None`` when they are invalid."""
        since = check.instant(data["from"], join(path, "from")) if "from" in data else None
        until = check.instant(data["until"], join(path, "until")) if "until" in data else None
        if ("from" in data and since is None) or ("until" in data and until is None):
            return None
        if since is not None and until is not None and until <= since:
            check.error(join(path, "until"), "must be after 'from'")
            return None
        note = data.get("note")
        return cls(since, until, note if isinstance(note, str) else None)


@dataclass(frozen=True, slots=True)
class RegionMember:
    """A region's membership of a region group, optionally limited to ``[since, until)``."""

    region: str
    since: float | None = None
    until: float | None = None

    def holds_at(self, at: float) -> bool:
        """True when the membership is in force at *at*."""
        return in_window(self.since, self.until, at)

    def to_dict(self) -> dict[str, Any]:
        """Plain form for digests and diffs."""
        return {"region": self.region, **window_fields(self.since, self.until)}


@dataclass(frozen=True, slots=True)
class RegionGroup:
    """A regime's sub-national regions: covered whole, or only in part (so uncertain by GeoIP)."""

    id: str
    title: str | None
    citation: str | None
    regions: tuple[RegionMember, ...]
    uncertain: tuple[RegionMember, ...]

    @property
    def countries(self) -> frozenset[str]:
        """The countries with a region in this group: an origin there needs its region known."""
        return frozenset(m.region[:2] for m in (*self.regions, *self.uncertain))

    def to_dict(self) -> dict[str, Any]:
        """Plain form for digests and diffs."""
        return {
            "title": self.title,
            "citation": self.citation,
            "regions": [m.to_dict() for m in self.regions],
            "uncertain": [m.to_dict() for m in self.uncertain],
        }


def region_code(check: Checker, value: Any, path: str) -> str | None:
    """An ISO 3166-2 subdivision code (``UA-43``) whose country part is an assigned country."""
    match = _REGION.match(value) if isinstance(value, str) else None
    if match is None:
        check.error(path, f"must be an ISO 3166-2 region code such as 'UA-43', not {value!r}")
        return None
    return value if check.country(match.group(1), path) else None


def _read_members(check: Checker, raw: Any, path: str) -> tuple[RegionMember, ...]:
    out: list[RegionMember] = []
    for index, item in enumerate(check.sequence(raw, path) or []):
        item_path = join(path, index)
        if isinstance(item, str):
            if code := region_code(check, item, item_path):
                out.append(RegionMember(code))
            continue
        data = check.mapping(item, item_path, keys=("region", "from", "until", "note"))
        if data is None:
            continue
        window = Window.read(check, data, item_path)
        code = region_code(check, data.get("region"), join(item_path, "region"))
        if code and window is not None:
            out.append(RegionMember(code, window.since, window.until))
    return tuple(out)


def read_region_groups(check: Checker, raw: Any) -> dict[str, RegionGroup]:
    """The ``region_groups`` of one pack file."""
    groups: dict[str, RegionGroup] = {}
    data = check.mapping(raw, "region_groups") if raw is not None else {}
    for group_id, body in (data or {}).items():
        path = join("region_groups", group_id)
        if check.ident(group_id, path, "region group id") is None:
            continue
        keys = ("title", "citation", "regions", "uncertain", "note")
        spec = check.mapping(body, path, keys=keys, required=("regions",))
        if spec is None:
            continue
        title, citation = spec.get("title"), spec.get("citation")
        groups[group_id] = RegionGroup(
            group_id,
            title if isinstance(title, str) else None,
            citation if isinstance(citation, str) else None,
            _read_members(check, spec.get("regions"), join(path, "regions")),
            _read_members(check, spec.get("uncertain", []), join(path, "uncertain")),
        )
    return groups


def _flag_set(
    check: Checker, value: Any, path: str, known: Sequence[str], what: str
) -> frozenset[str] | None:
    # ``true``: any of *known*; ``false``: none at all (the empty set); a list: any of those.
    if isinstance(value, bool):
        return frozenset(known) if value else frozenset()
    items = [value] if isinstance(value, str) else check.sequence(value, path, allow_empty=False)
    out: set[str] = set()
    for index, item in enumerate(items or []):
        if not isinstance(item, str) or item not in known:
            check.error(
                path if isinstance(value, str) else join(path, index),
                f"unknown {what} {item!r} (known: {', '.join(sorted(known)) or 'none defined'})",
            )
            continue
        out.add(item)
    return frozenset(out) if items else None


def read_reach_test(
    check: Checker, key: str, value: Any, path: str, region_groups: Mapping[str, RegionGroup]
) -> frozenset[str] | None:
    """The value of one screening or region condition, validated."""
    if key == "screening":
        return _flag_set(check, value, path, SCREENING_FLAGS, "screening flag")
    if key == "network_region":
        items = [value] if isinstance(value, str) else check.sequence(value, path) or []
        return frozenset(
            c for i, v in enumerate(items) if (c := region_code(check, v, join(path, i)))
        )
    return _flag_set(check, value, path, tuple(region_groups), "region group")


@dataclass(frozen=True, slots=True)
class StatusChange:
    """From ``since`` on, the pack's legal status is ``status`` (until the next change)."""

    status: str
    since: float
    citation: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain form for digests and diffs."""
        return {
            "status": self.status,
            "from": format_instant(self.since),
            "citation": self.citation,
        }


def read_status_history(
    check: Checker, raw: Any, statuses: Sequence[str]
) -> tuple[StatusChange, ...]:
    """A pack's ``status_history``: dated statuses, oldest first."""
    if raw is None:
        return ()
    out: list[StatusChange] = []
    for index, item in enumerate(check.sequence(raw, "status_history", allow_empty=False) or []):
        path = join("status_history", index)
        keys = ("status", "from", "citation", "note")
        data = check.mapping(item, path, keys=keys, required=("status", "from"))
        if data is None:
            continue
        status = check.string(data.get("status"), join(path, "status"), choices=statuses)
        since = check.instant(data.get("from"), join(path, "from"))
        citation = data.get("citation")
        if status is None or since is None:
            continue
        if out and since <= out[-1].since:
            check.error(join(path, "from"), "must be after the previous change's 'from'")
            continue
        out.append(StatusChange(status, since, citation if isinstance(citation, str) else None))
    return tuple(out)


def status_at(history: Sequence[StatusChange], default: str, at: float) -> str:
    """The status in force at *at*: the latest change before it, else *default*."""
    current = default
    for change in history:
        if change.since > at:
            break
        current = change.status
    return current


def read_during(check: Checker, raw: Any, path: str) -> tuple[Window, ...]:
    """A rule's ``during``: the dated windows in which it applies (absent: always)."""
    if raw is None:
        return ()
    out: list[Window] = []
    for index, item in enumerate(check.sequence(raw, path, allow_empty=False) or []):
        item_path = join(path, index)
        data = check.mapping(item, item_path, keys=("from", "until", "note"))
        window = Window.read(check, data, item_path) if data is not None else None
        if window is not None:
            out.append(window)
    return tuple(out)
