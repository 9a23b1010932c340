"""``aidr-gate patterns``: access-pattern signals over time from audit trails, ranked per entity."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from aidr_gate.cli.exit import EXIT_OK, EXIT_USAGE
from aidr_gate.cli.replay import audit_paths
from aidr_gate.cli.report_files import emit_reports, unwritable
from aidr_gate.errors import ConfigError
from aidr_gate.patterns.page import render_html
from aidr_gate.patterns.report import ReportOptions, run_report, summary
from aidr_gate.patterns.settings import PatternSettings
from aidr_gate.patterns.signals import window_seconds

_LINE = "<command line>"


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "patterns",
        help="signals over time per entity and network from audit trails (velocity, intermediaries)",
        description=(
            "Read audit trails (files or directories; rotated, gzip and zstd files, several "
            "per-process slots merged by time), recompute the access-pattern signals the gate "
            "computes (distinct countries per entity and per token, anonymizer share, entities "
            "per network) over a sliding window in time order, and rank entities by how far they "
            "depart from their own history and their headquarters' tier. Prints a summary; "
            "writes a JSON and a self-contained HTML report on request. Exit code: 0 done, "
            "2 usage error or an audit file that could not be read."
        ),
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="TRAIL")
    parser.add_argument(
        "--window", default="1h", help="the sliding window of the signals (default 1h)"
    )
    parser.add_argument(
        "--bucket", default="1h", help="the time step of the series over time (default 1h)"
    )
    parser.add_argument(
        "--top", type=int, default=20, metavar="N", help="entities and networks listed"
    )
    parser.add_argument("--json", metavar="FILE", help="write the JSON report here ('-': stdout)")
    parser.add_argument("--html", metavar="FILE", help="write the HTML report to this file")
    parser.add_argument("--quiet", action="store_true", help="print no summary")
    parser.set_defaults(run=run)


def options_from(args: argparse.Namespace) -> ReportOptions:
    """The report's options; every problem in one error."""
    problems: list[ConfigError] = []
    if window_seconds(args.window) is None:
        problems.append(
            ConfigError.single(_LINE, "--window", f"{args.window!r} is not a window such as 1h")
        )
    bucket = window_seconds(args.bucket)
    if bucket is None:
        problems.append(
            ConfigError.single(_LINE, "--bucket", f"{args.bucket!r} is not a span such as 1h")
        )
    if args.top < 1:
        problems.append(ConfigError.single(_LINE, "--top", "must be at least 1"))
    for flag, target in (("--json", args.json), ("--html", args.html)):
        if not target or (flag == "--json" and target == "-"):
            continue
        why = "only --json writes to stdout" if target == "-" else unwritable(target)
        if why is not None:
            problems.append(ConfigError.single(_LINE, flag, f"{target!r}: {why}"))
    if problems or bucket is None:
        raise ConfigError.merge(problems)
    return ReportOptions(
        window=args.window, bucket=bucket, top=args.top, settings=PatternSettings()
    )


def run(args: argparse.Namespace) -> int:
    """Run ``patterns``."""
    options = options_from(args)
    report = run_report(audit_paths(args.files), options)
    emit_reports(
        report,
        args.json,
        (("--html", args.html, lambda: render_html(report)),),
        None if args.quiet else lambda: summary(report, top=min(args.top, 10)),
    )
    broken = [f for f in report["files"] if f["error"]]
    for entry in broken:
        print(
            f"aidr-gate: {entry['path']}: {entry['error']} (after {entry['lines']:,} line(s)); "
            "the records after the damage were not read",
            file=sys.stderr,
        )
    return EXIT_USAGE if broken else EXIT_OK
