"""The tracker's per-request function, written out for the signals one pack tests.

:meth:`PatternTracker.observe` runs once per decided request. Written as a loop over the subjects
tracked, each counting its windows in a loop and its shares through two calls, it spent about a
sixth of its time on the interpreter's own work: a method call per subject, attribute reads of
the plan, tuple unpacking per window, the share arithmetic behind two calls
(``bench/patterns.py``, the example pack's four signals: ``observe`` 4.2 µs a request, 3.5
written out). So :meth:`~PatternTracker.want` writes the function out instead, as
``namedtuple`` and ``dataclasses`` do: the subjects tracked in turn, each window's bound and
each signal's name as constants, the usual share update (this replica's counts only, time moving
forward) inline, everything else through the same :class:`~aidr_gate.patterns.sketches.Row` and
:class:`~aidr_gate.patterns.sketches.Shares` methods as the rest of the package.

What is written out comes only from parsed signal keys (names matched by
:func:`~aidr_gate.patterns.signals.parse_signal_key`, windows as floats) through ``repr``: no
text from a pack or a request reaches the source. The source is kept on the tracker
(``observe_source``) for a reader who wants to see what runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from math import exp
from typing import Protocol, cast

from aidr_gate.facts import Identity, Origin
from aidr_gate.patterns.plans import SUBJECT_SEPARATOR, Plan
from aidr_gate.patterns.signals import DEGRADED_KEY, Subject
from aidr_gate.patterns.sketches import AT, COUNTS, FIRST_AT, MORE, OLDEST, TOUCHED, Shares


class Observe(Protocol):
    """Count one request, then give the signals wanted (the request itself included)."""

    def __call__(
        self, at: float, identity: Identity | None, origin: Origin, worse: bool
    ) -> Mapping[str, float]: ...


class Observer(Protocol):
    """What the written-out function reads of its tracker (``PatternTracker``, which imports
    this module)."""

    @property
    def shared(self) -> object:  # read per request: a fleet's view may be attached later
        """The fleet's shared view, with its ``dirty`` set and ``degraded``; ``None`` locally."""

    @property
    def prefixes(self) -> dict[str, str | None]:
        """Client addresses to their network, as remembered."""

    def network_of(self, ip: str) -> str | None:
        """The network of a client address (remembered for the next requests)."""

    def blank(self) -> dict[str, float]:
        """The signals of a request without an identity."""


# Per subject: the names of its key and of the item it counts, as the function's locals.
_KEYS = {
    Subject.TOKEN: ("token_key", "country"),
    Subject.ENTITY: ("entity", "country"),
    Subject.ADDRESS: ("ip", "entity"),  # within ``if ip is not None``
    Subject.NETWORK: ("network", "entity"),  # likewise
}


def _indent(lines: list[str], depth: int) -> list[str]:
    return [("    " * depth + line) if line else line for line in lines]


def _windows(plan: Plan, held: str) -> list[str]:
    """Each distinct count of *plan* into ``out``: all held when its window starts before the
    oldest time held, else counted (:meth:`~aidr_gate.patterns.sketches.RecentSet.count`)."""
    lines = [f"oldest = row[{OLDEST}]", f"held = {held}"]
    for name, seconds in plan.counts:
        lines += [
            f"since = at - {seconds!r}",
            f"out[{name!r}] = held if since < oldest else row.count(since)",
        ]
    return lines


def _sets(plan: Plan, item: str) -> list[str]:
    """Note *item* in the row, then write the counts: what ``RecentSet.add`` does, with the two
    usual cases (the first item, or one held, seen again) inline."""
    ones = [f"out[{name!r}] = 1" for name, _ in plan.counts]
    return [
        f"if {item} is not None:",
        "    more = row.more",
        f"    if {item} == row.first:",
        f"        if at > row[{FIRST_AT}]:",
        f"            row[{FIRST_AT}] = at",
        f"        if at > row[{TOUCHED}]:",
        f"            row[{TOUCHED}] = at",
        f"    elif more is not None and (index := more.get({item})) is not None:",
        "        if at > row[index]:",
        "            row[index] = at",
        f"        if at > row[{TOUCHED}]:",
        f"            row[{TOUCHED}] = at",
        "    else:",
        f"        row.add({item}, at, {plan.capacity!r}, {plan.horizon!r})",
        "        more = row.more",
        "    if more is None:  # the only item, seen at *at* or later: inside every window",
        *_indent(ones, 2),
        "    else:",
        *_indent(_windows(plan, f"len(row) - {MORE - 1}"), 2),
        "else:",
        *_indent(_windows(plan, "row.held()"), 1),
    ]


def _shares(plan: Plan, subject: str) -> list[str]:
    """Count the request in each share window and write the shares: inline when the counts are
    this replica's alone and time moves forward (their decay then cancels out of each share),
    else through :meth:`~aidr_gate.patterns.sketches.Shares.note`."""
    lines = [
        "shares = row.shares",
        "if shares is None:",
        f"    shares = row.shares = Shares({len(plan.taus)})",
        f"if at > row[{TOUCHED}]:",
        f"    row[{TOUCHED}] = at",
        f"if shares.others is None and at > shares[{AT}]:",
        f"    elapsed = at - shares[{AT}]",
        f"    shares[{AT}] = at",
    ]
    for index, tau in enumerate(plan.taus):
        base = COUNTS + 3 * index
        lines += [
            f"    keep = exp(-elapsed / {tau!r})",
            f"    shares[{base}] = shares[{base}] * keep + 1.0",
            f"    shares[{base + 1}] = shares[{base + 1}] * keep + one_anonymous",
            f"    shares[{base + 2}] = shares[{base + 2}] * keep + one_worse",
        ]
    for name, base, part, _ in plan.shares:
        lines += [
            f"    total = shares[{base}]",
            f"    out[{name!r}] = shares[{part}] / total if total > 1e-9 else 0.0",
        ]
    lines += [
        "else:",
        f"    shares.note(at, anonymous, worse, taus_{subject}, signals_{subject}, out)",
    ]
    return lines


def _subject(plan: Plan) -> list[str]:
    """One subject's block: find or make the key's row, count, and note the key as changed."""
    subject = plan.subject
    key, item = _KEYS[subject]
    body = [f"row = rows_{subject}.get({key})", "if row is None:"]
    if plan.taus:
        body.append(f"    row = add_{subject}({key}, at)")
    else:  # nothing to count and nothing held: the signals stay 0
        body += [
            f"    if {item} is not None:",
            f"        row = add_{subject}({key}, at)",
        ]
    inner = _sets(plan, item) if plan.sets else []
    if plan.taus:  # a row was made
        body += inner + _shares(plan, subject)
    else:
        body += ["if row is not None:", *_indent(inner or ["pass"], 1)]
    body += ["if dirty is not None:", f"    dirty.add(({subject!r}, {key}))"]
    if subject == Subject.TOKEN:
        made = [f"token_key = entity + {SUBJECT_SEPARATOR!r} + subject"]  # as token_key() makes it
        return ["if subject is not None:", *_indent(made + body, 1)]
    if subject == Subject.NETWORK:
        return [
            'network = prefixes.get(ip, "")  # "": not remembered yet',
            'if network == "":',
            "    network = network_of(ip)",
            "if network is not None:",
            *_indent(body, 1),
        ]
    return body


def source_for(plans: Mapping[str, Plan], degraded_tested: bool) -> str:
    """The source of ``observe`` for *plans* (the subjects tracked, in the tracker's order);
    *degraded_tested*: the pack tests ``patterns_degraded``, so a local tracker answers it too."""
    lines = [
        "def observe(at, identity, origin, worse):",
        "    if identity is None:",
        "        return blank()",
        "    out = zeros.copy()",
        "    entity = identity.entity_id",
        "    country = origin.country",
        "    shared = tracker.shared",
        "    dirty = shared.dirty if shared is not None else None",
    ]
    if any(plan.taus for plan in plans.values()):
        lines += [
            "    anonymous = bool(origin.anonymizer)",
            "    one_anonymous = 1.0 if anonymous else 0.0",
            "    one_worse = 1.0 if worse else 0.0",
        ]
    if Subject.TOKEN in plans:
        lines.append("    subject = identity.subject")
    by_address = [s for s in (Subject.ADDRESS, Subject.NETWORK) if s in plans]
    for subject in (Subject.TOKEN, Subject.ENTITY):
        if subject in plans:
            lines += _indent(_subject(plans[subject]), 1)
    if by_address:
        lines.append("    ip = origin.ip")
        lines.append("    if ip is not None:")
        for subject in by_address:
            lines += _indent(_subject(plans[subject]), 2)
    degraded = f"out[{DEGRADED_KEY!r}] = 1.0 if shared is not None and shared.degraded else 0.0"
    if degraded_tested:  # answered by a local tracker too
        lines.append(f"    {degraded}")
    else:  # a fleet's records say which it was
        lines += ["    if shared is not None:", f"        {degraded}"]
    lines.append("    return out")
    return "\n".join(lines) + "\n"


def build_observe(
    tracker: Observer,
    plans: Mapping[str, Plan],
    zeros: dict[str, float],
    degraded_tested: bool,
) -> tuple[Observe, str]:
    """``observe`` for *plans* of *tracker*, and its source."""
    source = source_for(plans, degraded_tested)
    names: dict[str, object] = {
        "tracker": tracker,
        "blank": tracker.blank,
        "zeros": zeros,
        "exp": exp,
        "Shares": Shares,
        "prefixes": tracker.prefixes,
        "network_of": tracker.network_of,
    }
    for subject, plan in plans.items():
        names[f"rows_{subject}"] = plan.table.rows
        names[f"add_{subject}"] = plan.table.add
        names[f"taus_{subject}"] = plan.taus
        names[f"signals_{subject}"] = plan.shares
    code = compile(source, f"<aidr_gate observe: {', '.join(plans) or 'no subject'}>", "exec")
    exec(code, names)  # noqa: S102 - source written above from parsed signal keys only
    return cast("Observe", names["observe"]), source
