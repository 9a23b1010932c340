"""What differs between two policy packs: tiers (with dates), groups, rules, thresholds, window.

Packs are compared as merged (``extends`` resolved) and by meaning, not by text: a country's tier is
compared as a timeline (``tier3 until 2026-02-03, then tier2``), rules by id on their condition and
outcome, model tiers by id on their thresholds. :func:`diff_packs` returns a JSON-ready dict
(``format: "aidr-gate.diff/1"``); :func:`render_diff` prints it for a terminal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import pairwise
from typing import Any

from aidr_gate.document import format_instant
from aidr_gate.policy.pack import Membership, Pack

FORMAT = "aidr-gate.diff/1"
# A timeline: (since, until, value) stretches covering all time, in order; None ends are open.
Timeline = tuple[tuple[float | None, float | None, str | None], ...]


def timeline(memberships: Iterable[tuple[str, Membership]], default: str | None) -> Timeline:
    """The value held over all time, given dated memberships ``(value, membership)``."""
    items = list(memberships)
    bounds = sorted({t for _, m in items for t in (m.since, m.until) if t is not None})
    edges: list[float | None] = [None, *bounds, None]
    out: list[tuple[float | None, float | None, str | None]] = []
    for since, until in pairwise(edges):
        probe = since if since is not None else (until - 1.0 if until is not None else 0.0)
        value = next((v for v, m in items if m.holds_at(probe)), default)
        if out and out[-1][2] == value:
            out[-1] = (out[-1][0], until, value)
        else:
            out.append((since, until, value))
    return tuple(out)


def describe(line: Timeline, absent: str = "not listed") -> str:
    """``tier3 until 2026-02-03, then tier2``: a timeline in words."""
    if len(line) == 1:
        return line[0][2] if line[0][2] is not None else absent
    parts = []
    for index, (_, until, value) in enumerate(line):
        name = value if value is not None else absent
        if index == 0:
            parts.append(f"{name} until {format_instant(until)}")
        elif until is None:
            parts.append(f"then {name}")
        else:
            parts.append(f"then {name} until {format_instant(until)}")
    return ", ".join(parts)


def _tier_lines(pack: Pack) -> dict[str, Timeline]:
    if pack.tiers is None:
        return {}
    per_country: dict[str, list[tuple[str, Membership]]] = {}
    for tier, members in pack.tiers.members.items():
        for member in members:
            per_country.setdefault(member.country, []).append((tier, member))
    return {country: timeline(items, pack.tiers.default) for country, items in per_country.items()}


def _country_tiers(a: Pack, b: Pack) -> dict[str, Any]:
    out: dict[str, Any] = {
        "a_present": a.tiers is not None,
        "b_present": b.tiers is not None,
        "order": None,
        "default": None,
        "countries": [],
        "summary": None,
    }
    if a.tiers is None or b.tiers is None:
        present = a if a.tiers is not None else b if b.tiers is not None else None
        if present is not None and present.tiers is not None:
            lines = _tier_lines(present)
            out["summary"] = {
                "pack": present.id,
                "default": present.tiers.default,
                "order": list(present.tiers.order),
                "countries": [
                    {"country": c, "tier": describe(line)} for c, line in sorted(lines.items())
                ],
            }
        return out
    if a.tiers.order != b.tiers.order:
        out["order"] = {"a": list(a.tiers.order), "b": list(b.tiers.order)}
    if a.tiers.default != b.tiers.default:
        out["default"] = {"a": a.tiers.default, "b": b.tiers.default}
    lines_a, lines_b = _tier_lines(a), _tier_lines(b)
    for country in sorted(set(lines_a) | set(lines_b)):
        line_a = lines_a.get(country, ((None, None, a.tiers.default),))
        line_b = lines_b.get(country, ((None, None, b.tiers.default),))
        if line_a != line_b:
            out["countries"].append(
                {
                    "country": country,
                    "a": describe(line_a),
                    "b": describe(line_b),
                    "a_listed": country in lines_a,
                    "b_listed": country in lines_b,
                }
            )
    return out


def _group_lines(pack: Pack, group_id: str) -> dict[str, Timeline]:
    group = pack.groups.get(group_id)
    if group is None:
        return {}
    per_country: dict[str, list[tuple[str, Membership]]] = {}
    for member in group.members:
        per_country.setdefault(member.country, []).append(("member", member))
    return {c: timeline(items, None) for c, items in per_country.items()}


def _groups(a: Pack, b: Pack) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for group_id in sorted(set(a.groups) | set(b.groups)):
        lines_a, lines_b = _group_lines(a, group_id), _group_lines(b, group_id)
        if group_id not in b.groups:
            out.append({"group": group_id, "change": "removed", "countries": sorted(lines_a)})
            continue
        if group_id not in a.groups:
            out.append({"group": group_id, "change": "added", "countries": sorted(lines_b)})
            continue
        added = sorted(set(lines_b) - set(lines_a))
        removed = sorted(set(lines_a) - set(lines_b))
        redated = [
            {
                "country": c,
                "a": describe(lines_a[c], "not a member"),
                "b": describe(lines_b[c], "not a member"),
            }
            for c in sorted(set(lines_a) & set(lines_b))
            if lines_a[c] != lines_b[c]
        ]
        group_a, group_b = a.groups[group_id], b.groups[group_id]
        fields = [
            {"field": name, "a": getattr(group_a, name), "b": getattr(group_b, name)}
            for name in ("title", "citation")
            if getattr(group_a, name) != getattr(group_b, name)
        ]
        if added or removed or redated or fields:
            out.append(
                {
                    "group": group_id,
                    "change": "changed",
                    "added": added,
                    "removed": removed,
                    "redated": redated,
                    "fields": fields,
                }
            )
    return out


def _rules(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    rules_a = {r["id"]: r for r in a["rules"]}
    rules_b = {r["id"]: r for r in b["rules"]}
    changed = []
    for rule_id in [r["id"] for r in a["rules"] if r["id"] in rules_b]:
        ra, rb = rules_a[rule_id], rules_b[rule_id]
        names = ("when", "then", "description", "citation", "during", "last")
        fields = [f for f in names if ra.get(f) != rb.get(f)]
        if fields:
            changed.append({"id": rule_id, "fields": fields, "a": ra, "b": rb})
    common_a = [r["id"] for r in a["rules"] if r["id"] in rules_b]
    common_b = [r["id"] for r in b["rules"] if r["id"] in rules_a]
    return {
        "added": [r for r in b["rules"] if r["id"] not in rules_a],
        "removed": [r for r in a["rules"] if r["id"] not in rules_b],
        "changed": changed,
        # Rules are tried in order (first match wins), so an order change can change decisions.
        "order": None
        if common_a == common_b
        else {"a": [r["id"] for r in a["rules"]], "b": [r["id"] for r in b["rules"]]},
    }


def _fields(
    a: Mapping[str, Any], b: Mapping[str, Any], names: Sequence[str]
) -> list[dict[str, Any]]:
    return [{"field": n, "a": a.get(n), "b": b.get(n)} for n in names if a.get(n) != b.get(n)]


def _model_tiers(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    tiers_a = {t["id"]: t for t in a["tiers"]}
    tiers_b = {t["id"]: t for t in b["tiers"]}
    thresholds = ("weights", "min_training_ops", "above_open_weight_frontier")
    return {
        "changes": _fields(a, b, ("unknown_model", "open_weight_frontier_ops")),
        "added": [t for t in b["tiers"] if t["id"] not in tiers_a],
        "removed": [t for t in a["tiers"] if t["id"] not in tiers_b],
        "changed": [
            {"id": tid, "changes": _fields(tiers_a[tid], tiers_b[tid], thresholds)}
            for tid in tiers_a
            if tid in tiers_b and _fields(tiers_a[tid], tiers_b[tid], thresholds)
        ],
        "order": None
        if [t["id"] for t in a["tiers"]] == [t["id"] for t in b["tiers"]]
        else {"a": [t["id"] for t in a["tiers"]], "b": [t["id"] for t in b["tiers"]]},
    }


def pack_window(pack: Pack) -> dict[str, str | None]:
    """A pack's legal window as ``Pack.to_dict()["effective"]`` has it (``None``: an open end)."""
    return {
        "from": format_instant(pack.effective_from),
        "until": format_instant(pack.effective_until),
    }


def window_text(window: Mapping[str, str | None], joiner: str = " .. ") -> str:
    """``2025-01-13 .. 2025-05-13``: a :func:`pack_window` for people, ``-`` for an open end."""
    return f"{window['from'] or '-'}{joiner}{window['until'] or '-'}"


def pack_ref(pack: Pack) -> dict[str, Any]:
    """Id, title, status, digest, legal window and ancestry of a pack (reports name packs so)."""
    return {
        "id": pack.id,
        "title": pack.title,
        "status": pack.status,
        "digest": pack.digest,
        "effective": pack_window(pack),
        "extends": list(pack.extends),
    }


def diff_packs(a: Pack, b: Pack) -> dict[str, Any]:
    """Everything that differs between pack *a* and pack *b*, JSON-ready."""
    da, db = a.to_dict(), b.to_dict()
    accepted_a = da["agreements"]["accepted_types"]
    accepted_b = db["agreements"]["accepted_types"]
    agreements = None
    if accepted_a != accepted_b:
        agreements = {
            "a": accepted_a,
            "b": accepted_b,
            "added": sorted(set(accepted_b or ()) - set(accepted_a or ())),
            "removed": sorted(set(accepted_a or ()) - set(accepted_b or ())),
        }
    meta = _fields(da, db, ("id", "title", "status", "extends"))
    for edge in ("from", "until"):
        if da["effective"][edge] != db["effective"][edge]:
            meta.append(
                {
                    "field": f"effective.{edge}",
                    "a": da["effective"][edge],
                    "b": db["effective"][edge],
                }
            )
    cites_a, cites_b = set(da["citations"]), set(db["citations"])
    out: dict[str, Any] = {
        "format": FORMAT,
        "a": pack_ref(a),
        "b": pack_ref(b),
        "identical": False,
        "meta": meta,
        "citations": {"added": sorted(cites_b - cites_a), "removed": sorted(cites_a - cites_b)},
        "country_tiers": _country_tiers(a, b),
        "groups": _groups(a, b),
        "rules": _rules(da, db),
        "model_tiers": _model_tiers(da["model_tiers"], db["model_tiers"]),
        "default": None
        if da["default"] == db["default"]
        else {"a": da["default"], "b": db["default"]},
        "agreements": agreements,
        "region_groups": _region_groups(da.get("region_groups", {}), db.get("region_groups", {})),
        "status_history": None
        if da.get("status_history") == db.get("status_history")
        else {"a": da.get("status_history", []), "b": db.get("status_history", [])},
    }
    # Identical when nothing above differs. Not by digest: the digest also covers how the packs
    # are written (the order of a country list or of the citations, the file a rule comes from),
    # and a diff that says "they differ" must show how.
    out["identical"] = not _differs(out)
    return out


# Where a :func:`diff_packs` result holds a change: these parts of a section, or () for the section.
CHANGE_PARTS: Mapping[str, tuple[str, ...]] = {
    "meta": (),
    "citations": ("added", "removed"),
    "country_tiers": ("order", "default", "countries"),
    "groups": (),
    "rules": ("added", "removed", "changed", "order"),
    "model_tiers": ("changes", "added", "removed", "changed", "order"),
    "default": (),
    "agreements": (),
    "region_groups": (),
    "status_history": (),
}


def _differs(diff: Mapping[str, Any]) -> bool:
    """True when any section of a :func:`diff_packs` result holds a change."""
    tiers = diff["country_tiers"]
    if tiers["a_present"] != tiers["b_present"]:  # one pack has a tier table, the other none
        return True
    return any(
        any(diff[section][part] for part in parts) if parts else diff[section]
        for section, parts in CHANGE_PARTS.items()
    )


# -- terminal ------------------------------------------------------------------------------------


def _condition(when: Mapping[str, Any]) -> str:
    if not when:
        return "always"
    parts = []
    for key, value in when.items():
        if key == "any":
            parts.append("any of (" + " | ".join(_condition(c) for c in value) + ")")
        elif isinstance(value, list):
            parts.append(f"{key} in [{', '.join(map(str, value))}]")
        else:
            parts.append(f"{key} = {str(value).lower() if isinstance(value, bool) else value}")
    return " and ".join(parts)


def _outcome(then: Mapping[str, Any]) -> str:
    status = f" {then['status']}" if then.get("status") is not None else ""
    return f"{then['effect']}{status} {then['reason']}"


def _rule_line(rule: Mapping[str, Any]) -> str:
    during = rule.get("during")
    dated = ""
    if during:
        spans = [f"{w['from'] or '-'} .. {w['until'] or '-'}" for w in during]
        dated = f" during {', '.join(spans)}"
    last = " (last)" if rule.get("last") else ""
    return f"when {_condition(rule['when'])} -> {_outcome(rule['then'])}{dated}{last}"


def _region_groups(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Region groups added, removed or changed (regions covered whole, and uncertain ones)."""
    out = []
    for group_id in sorted(set(a) | set(b)):
        ga, gb = a.get(group_id), b.get(group_id)
        if ga != gb:
            change = "added" if ga is None else "removed" if gb is None else "changed"
            out.append({"group": group_id, "change": change, "a": ga, "b": gb})
    return out


def _regions_text(group: Mapping[str, Any] | None) -> str:
    if group is None:
        return "absent"

    def names(members: list[dict[str, Any]]) -> str:
        return (
            ", ".join(
                m["region"]
                + (f" from {m['from']}" if m["from"] else "")
                + (f" until {m['until']}" if m["until"] else "")
                for m in members
            )
            or "none"
        )

    return f"regions {names(group['regions'])}; uncertain {names(group['uncertain'])}"


def _history_text(history: list[dict[str, Any]]) -> str:
    return ", ".join(f"{c['status']} from {c['from']}" for c in history) or "none"


def _render_heading(diff: dict[str, Any]) -> list[str]:
    a, b = diff["a"], diff["b"]
    return [
        f"--- A {a['id']} ({a['status']}, {window_text(a['effective'])}) {a['digest']}",
        f"+++ B {b['id']} ({b['status']}, {window_text(b['effective'])}) {b['digest']}",
    ]


def _render_meta(diff: dict[str, Any]) -> list[str]:
    out = []
    if diff["meta"]:
        out += ["", "Pack"]
        out += [
            f"  {item['field']}: {_value(item['a'])} -> {_value(item['b'])}"
            for item in diff["meta"]
        ]
    cites = diff["citations"]
    out += [f"  - citation: {item}" for item in cites["removed"]]
    out += [f"  + citation: {item}" for item in cites["added"]]
    return out


def _render_one_sided_tiers(tiers: dict[str, Any]) -> list[str]:
    """Country tiers that only one pack has: that pack's tiers, country by country."""
    summary = tiers["summary"]
    if summary is None:
        return []
    side = "A" if tiers["a_present"] else "B"
    other = "B" if side == "A" else "A"
    out = [
        f"  only {side} ({summary['pack']}) has country tiers "
        f"(order {' < '.join(summary['order'])}, default {summary['default']}); "
        f"{other} has none:"
    ]
    by_tier: dict[str, list[str]] = {}
    for row in summary["countries"]:
        by_tier.setdefault(row["tier"], []).append(row["country"])
    order = summary["order"]
    for tier in sorted(by_tier, key=lambda t: (order.index(t) if t in order else len(order), t)):
        out.append(f"    {tier}: {', '.join(by_tier[tier])}")
    return out


def _render_tier_changes(tiers: dict[str, Any]) -> list[str]:
    """Country tiers both packs have: what changed in the order, the default and per country."""
    out = []
    if tiers["order"]:
        out.append(f"  order: {_value(tiers['order']['a'])} -> {_value(tiers['order']['b'])}")
    if tiers["default"]:
        out.append(f"  default: {tiers['default']['a']} -> {tiers['default']['b']}")
    out += [f"  {row['country']}: A {row['a']}; B {row['b']}" for row in tiers["countries"]]
    return out


def _render_country_tiers(diff: dict[str, Any]) -> list[str]:
    tiers = diff["country_tiers"]
    both = tiers["a_present"] and tiers["b_present"]
    section = _render_tier_changes(tiers) if both else _render_one_sided_tiers(tiers)
    return ["", "Country tiers", *section] if section else []


def _render_groups(diff: dict[str, Any]) -> list[str]:
    if not diff["groups"]:
        return []
    out = ["", "Country groups"]
    for group in diff["groups"]:
        if group["change"] in ("added", "removed"):
            sign = "+" if group["change"] == "added" else "-"
            out.append(f"  {sign} {group['group']}: {', '.join(group['countries'])}")
            continue
        out.append(f"  {group['group']}:")
        out += [
            f"    {item['field']}: {_value(item['a'])} -> {_value(item['b'])}"
            for item in group["fields"]
        ]
        out += [f"    - {country}" for country in group["removed"]]
        out += [f"    + {country}" for country in group["added"]]
        out += [f"    ~ {row['country']}: A {row['a']}; B {row['b']}" for row in group["redated"]]
    return out


def _render_rules(diff: dict[str, Any]) -> list[str]:
    rules = diff["rules"]
    if not (rules["added"] or rules["removed"] or rules["changed"] or rules["order"]):
        return []
    out = ["", "Rules", *_signed_lines(rules["removed"], rules["added"], _rule_line)]
    for change in rules["changed"]:
        out.append(f"  ~ {change['id']} ({', '.join(change['fields'])}):")
        out.append(f"      A {_rule_line(change['a'])}")
        out.append(f"      B {_rule_line(change['b'])}")
    if rules["order"]:
        out.append(f"  order A: {', '.join(rules['order']['a'])}")
        out.append(f"  order B: {', '.join(rules['order']['b'])}")
    return out


def _render_model_tiers(diff: dict[str, Any]) -> list[str]:
    models = diff["model_tiers"]
    if not any(models[part] for part in ("changes", "added", "removed", "changed", "order")):
        return []
    out = ["", "Model tiers"]
    out += [
        f"  {item['field']}: {_value(item['a'])} -> {_value(item['b'])}"
        for item in models["changes"]
    ]
    out += _signed_lines(models["removed"], models["added"], _thresholds)
    for tier in models["changed"]:
        text = "; ".join(
            f"{c['field']} {_value(c['a'])} -> {_value(c['b'])}" for c in tier["changes"]
        )
        out.append(f"  ~ {tier['id']}: {text}")
    if models["order"]:
        out.append(f"  order: {_value(models['order']['a'])} -> {_value(models['order']['b'])}")
    return out


def _render_default(diff: dict[str, Any]) -> list[str]:
    default = diff["default"]
    if not default:
        return []
    return ["", f"Default outcome: {_outcome(default['a'])} -> {_outcome(default['b'])}"]


def _render_region_groups(diff: dict[str, Any]) -> list[str]:
    if not diff["region_groups"]:
        return []
    out = ["", "Region groups"]
    for group in diff["region_groups"]:
        if group["change"] == "changed":
            out.append(f"  ~ {group['group']}:")
            out.append(f"      A {_regions_text(group['a'])}")
            out.append(f"      B {_regions_text(group['b'])}")
        else:
            sign = "+" if group["change"] == "added" else "-"
            body = group["b"] if group["change"] == "added" else group["a"]
            out.append(f"  {sign} {group['group']}: {_regions_text(body)}")
    return out


def _render_status_history(diff: dict[str, Any]) -> list[str]:
    history = diff["status_history"]
    if not history:
        return []
    return ["", f"Status history: {_history_text(history['a'])} -> {_history_text(history['b'])}"]


def _render_agreements(diff: dict[str, Any]) -> list[str]:
    ag = diff["agreements"]
    if not ag:
        return []
    return [
        "",
        "Accepted agreement types: "
        f"{', '.join(ag['a']) if ag['a'] is not None else 'any'} -> "
        f"{', '.join(ag['b']) if ag['b'] is not None else 'any'}",
    ]


# The sections of a diff in the order printed; each gives its lines (none when nothing changed
# of its kind), a section with a heading leading with a blank line.
_SECTIONS: tuple[Callable[[dict[str, Any]], list[str]], ...] = (
    _render_meta,
    _render_country_tiers,
    _render_groups,
    _render_rules,
    _render_model_tiers,
    _render_default,
    _render_region_groups,
    _render_status_history,
    _render_agreements,
)


def render_diff(diff: dict[str, Any]) -> str:
    """The diff as text for a terminal, one section per kind of change."""
    out = _render_heading(diff)
    if diff["identical"]:
        same = (
            "same digest" if diff["a"]["digest"] == diff["b"]["digest"] else "written differently"
        )
        out.append(f"The packs are identical ({same}): they decide every request alike.")
    else:
        out += [line for section in _SECTIONS for line in section(diff)]
    return "\n".join(out)


def _signed_lines(
    removed: Iterable[Mapping[str, Any]],
    added: Iterable[Mapping[str, Any]],
    text: Callable[[Mapping[str, Any]], str],
) -> list[str]:
    return [f"  - {item['id']}: {text(item)}" for item in removed] + [
        f"  + {item['id']}: {text(item)}" for item in added
    ]


def _thresholds(tier: Mapping[str, Any]) -> str:
    parts = []
    if tier.get("weights"):
        parts.append(f"{tier['weights']} weights")
    if tier.get("min_training_ops") is not None:
        parts.append(f">= {tier['min_training_ops']:g} training ops")
    if tier.get("above_open_weight_frontier"):
        parts.append("above the open-weight frontier")
    return ", ".join(parts) or "every other model"


def _value(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, list):
        return ", ".join(map(str, value)) if value else "(none)"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
