"""``aidr-gate screen``: screen a registry against restricted-party lists and report for review."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from aidr_gate.cli.exit import EXIT_DENY, EXIT_OK
from aidr_gate.cli.report_files import emit_reports, unwritable
from aidr_gate.document import parse_instant
from aidr_gate.errors import ConfigError
from aidr_gate.registry import load_registry
from aidr_gate.screening.facts import screening_table
from aidr_gate.screening.matcher import NameIndex
from aidr_gate.screening.page import render_html
from aidr_gate.screening.report import build_report, render_csv, summary
from aidr_gate.screening.screen import screen_registry
from aidr_gate.screening.store import load_snapshot, sources_for
from aidr_gate.settings.screening import DEFAULT_THRESHOLD


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "screen",
        help="screen a registry's entities and owners against restricted-party lists",
        description=(
            "Screen every entity of a registry (its name, aliases and named owners) against "
            "restricted-party lists: OFAC's SDN CSV set (name the sdn.csv; alt, add and "
            "comments files beside it are read with it) and Consolidated Screening List CSV "
            "files, in either layout (a directory stands for its .csv files). Applies the "
            "registry's screening_reviews and the 50%% ownership test, prints a summary, and "
            "writes CSV, JSON and self-contained HTML reports on request. Exit code: 0 done "
            "(1 with --fail-on-hits when any hit awaits review or an entity is treated as "
            "listed), 2 usage or configuration error (a list or registry that cannot be read)."
        ),
    )
    parser.add_argument("registry", type=Path, metavar="REGISTRY")
    parser.add_argument(
        "--lists", nargs="+", required=True, metavar="FILE", help="list files or directories"
    )
    parser.add_argument(
        "--list-date",
        metavar="DATE",
        help="the lists' publication date, when known (default: what the files show)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        metavar="SCORE",
        help=f"match score, 50 to 100, at which a name is a hit (default {DEFAULT_THRESHOLD:g})",
    )
    parser.add_argument("--csv", metavar="FILE", help="write one row per hit here")
    parser.add_argument("--html", metavar="FILE", help="write the review page here")
    parser.add_argument("--json", metavar="FILE", help="write the JSON report here ('-': stdout)")
    parser.add_argument("--top", type=int, default=20, metavar="N", help="hits in the summary")
    parser.add_argument("--quiet", action="store_true", help="print no summary")
    parser.add_argument(
        "--fail-on-hits",
        action="store_true",
        help="exit 1 when a hit awaits review or an entity is treated as listed",
    )
    parser.set_defaults(run=run)


def _check_options(args: argparse.Namespace) -> str | None:
    """Every option problem in one error; the list date as an ISO date."""
    errors: list[ConfigError] = []
    date = None
    if args.list_date is not None:
        at = parse_instant(args.list_date)
        if at is None:
            errors.append(ConfigError.single("<command line>", "--list-date", "is not a date"))
        else:
            date = args.list_date[:10]
    if not 50 <= args.threshold <= 100:
        errors.append(ConfigError.single("<command line>", "--threshold", "must be 50 to 100"))
    if args.top < 0:
        errors.append(ConfigError.single("<command line>", "--top", "must be 0 or more"))
    for flag, target in (("--csv", args.csv), ("--html", args.html), ("--json", args.json)):
        if not target or (flag == "--json" and target == "-"):
            continue
        why = "only --json writes to stdout" if target == "-" else unwritable(target)
        if why is not None:
            errors.append(ConfigError.single("<command line>", flag, f"{target!r}: {why}"))
    if errors:
        raise ConfigError.merge(errors)
    return date


def run(args: argparse.Namespace) -> int:
    """Run ``screen``."""
    date = _check_options(args)
    errors: list[ConfigError] = []
    registry = snapshot = None
    try:
        registry = load_registry(args.registry)
    except ConfigError as exc:
        errors.append(exc)
    try:
        snapshot = load_snapshot(sources_for(args.lists, date))
    except ConfigError as exc:
        errors.append(exc)
    if errors or registry is None or snapshot is None:
        raise ConfigError.merge(errors)
    entities = list(registry)
    screening = screen_registry(entities, snapshot, index=NameIndex(snapshot, args.threshold))
    table = screening_table(entities, screening)
    report = build_report(entities, snapshot, screening, table, registry_source=str(args.registry))
    emit_reports(
        report,
        args.json,
        (
            ("--csv", args.csv, lambda: render_csv(report)),
            ("--html", args.html, lambda: render_html(report)),
        ),
        None if args.quiet else lambda: summary(report, top=args.top),
    )
    totals = report["totals"]
    flagged = totals["potential"] or totals["listed"] or totals["owned_by_listed"]
    return EXIT_DENY if args.fail_on_hits and flagged else EXIT_OK
