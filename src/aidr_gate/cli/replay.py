"""``aidr-gate replay``: re-decide recorded requests under another pack and report what changes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from aidr_gate.catalog import load_catalog
from aidr_gate.cli.exit import EXIT_DENY, EXIT_OK, EXIT_USAGE
from aidr_gate.cli.report_files import emit_reports, unwritable
from aidr_gate.document import parse_instant
from aidr_gate.errors import ConfigError, Problem
from aidr_gate.policy.pack import load_pack
from aidr_gate.replay.page import render_html
from aidr_gate.replay.report import ProgressBar, build_report, summary
from aidr_gate.replay.run import ReplayOptions, replay_files
from aidr_gate.stores import load_whole

# Files a directory argument stands for: active and rotated journal files, plain or gzipped.
AUDIT_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".log", ".log.gz", ".log.zst")


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "replay",
        help="re-decide recorded requests under another pack and report what would change",
        description=(
            "Re-decide every policy decision in audit files (any order; rotated and compressed files, "
            "or directories of them) under another pack, from the evidence the records carry, "
            "without touching the network. Prints a summary; writes a JSON and a self-contained "
            "HTML report on request. The hash chain is checked as the files are read; breaks are "
            "reported as warnings and the records are replayed all the same. A file that cannot "
            "be read to the end (a damaged .gz or .zst) is an error, named on stderr even with --quiet: "
            "its records after the damage are not replayed. Exit code: 0 done (1 with "
            "--fail-on-flips when any decision changes), 2 usage or configuration error, or an "
            "audit file that could not be read."
        ),
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="AUDIT_FILE")
    parser.add_argument("--pack", required=True, help="the pack to replay under (id or file)")
    parser.add_argument(
        "--at",
        metavar="DATE",
        help="re-decide every record as if at this date or ISO 8601 time (default: its own time)",
    )
    parser.add_argument(
        "--registry",
        metavar="STORE",
        help="look entities up in this registry (a file, sqlite:PATH, a postgresql:// URL or "
        "env:NAME) instead of using the recorded entity evidence",
    )
    parser.add_argument(
        "--catalog",
        type=Path,
        metavar="FILE",
        help="look models up in this catalogue instead of using the recorded model evidence",
    )
    parser.add_argument("--json", metavar="FILE", help="write the JSON report here ('-': stdout)")
    parser.add_argument("--html", metavar="FILE", help="write the HTML report to this file")
    parser.add_argument(
        "--top", type=int, default=10, metavar="N", help="entities and values listed (default 10)"
    )
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument(
        "--progress",
        action="store_true",
        default=None,
        help="draw the progress bar on stderr even when it is not a terminal",
    )
    progress.add_argument(
        "--no-progress", dest="progress", action="store_false", help="never draw it"
    )
    parser.add_argument("--quiet", action="store_true", help="print no summary")
    parser.add_argument(
        "--fail-on-flips", action="store_true", help="exit 1 when any decision would change"
    )
    parser.set_defaults(run=run)


def audit_paths(arguments: list[Path]) -> list[Path]:
    """The files the arguments name: files as given, directories by their audit files.

    A file named twice (``DIR DIR/audit.jsonl``, or by two spellings of one path) is read once,
    where it first appears: read twice, its records would count twice and break the chain.
    """
    problems = []
    out: list[Path] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            out.append(path)

    for path in arguments:
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and p.name.endswith(AUDIT_SUFFIXES)
            )
            if not found:
                problems.append(
                    Problem(str(path), "AUDIT_FILE", "the directory holds no audit files")
                )
            for item in found:
                add(item)
        elif path.is_file():
            add(path)
        else:
            problems.append(Problem(str(path), "AUDIT_FILE", "no such file or directory"))
    if problems:
        raise ConfigError(problems)
    return out


def options_from(args: argparse.Namespace) -> ReplayOptions:
    """Load what the options name; every problem in one error."""
    errors: list[ConfigError] = []
    pack = registry = catalog = None
    revision = None
    at = None
    try:
        pack = load_pack(args.pack)
    except ConfigError as exc:
        errors.append(exc)
    if args.registry is not None:
        try:
            registry, revision = load_whole(args.registry)
        except ConfigError as exc:
            errors.append(exc)
    if args.catalog is not None:
        try:
            catalog = load_catalog(args.catalog)
        except ConfigError as exc:
            errors.append(exc)
    if args.at is not None:
        at = parse_instant(args.at)
        if at is None:
            errors.append(
                ConfigError.single(
                    "<command line>", "--at", f"{args.at!r} is not a date or ISO 8601 time"
                )
            )
    if args.top < 1:
        errors.append(ConfigError.single("<command line>", "--top", "must be at least 1"))
    for flag, target in (("--json", args.json), ("--html", args.html)):
        if not target or (flag == "--json" and target == "-"):
            continue
        why = (
            "only --json writes to stdout; name a file (./- for one called '-')"
            if target == "-"
            else unwritable(target)
        )
        if why is not None:
            errors.append(ConfigError.single("<command line>", flag, f"{target!r}: {why}"))
    if errors or pack is None:
        raise ConfigError.merge(errors)
    return ReplayOptions(
        pack=pack,
        registry=registry,
        catalog=catalog,
        at=at,
        registry_source=str(args.registry) if args.registry is not None else None,
        registry_revision=revision,
        catalog_source=str(args.catalog) if args.catalog is not None else None,
    )


def run(args: argparse.Namespace) -> int:
    """Run ``replay``."""
    options = options_from(args)
    paths = audit_paths(args.files)
    bar = ProgressBar(sys.stderr, enabled=args.progress)
    try:
        result = replay_files(paths, options, progress=bar)
    finally:
        bar.close()
    report = build_report(result, top=args.top)
    emit_reports(
        report,
        args.json,
        (("--html", args.html, lambda: render_html(report)),),
        None if args.quiet else lambda: summary(report, top=args.top),
    )
    if _report_unreadable(report, quiet=args.quiet):
        return EXIT_USAGE
    return EXIT_DENY if args.fail_on_flips and report["totals"]["flips"] else EXIT_OK


def _report_unreadable(report: dict[str, Any], *, quiet: bool) -> bool:
    """Name on stderr the files that could not be read to the end; ``True`` when there are any.

    Their records after the damage were neither replayed nor counted, so the replay is incomplete
    whatever else it found: this is said even with --quiet, which hides the summary's chain part.
    """
    broken = [f for f in report["files"] if f["error"]]
    if not broken:
        return False
    print(
        f"aidr-gate: {len(broken)} audit file(s) could not be read to the end; "
        "the records after the damage were not replayed:",
        file=sys.stderr,
    )
    for entry in broken:
        print(
            f"  {entry['path']}: {entry['error']} (after {entry['lines']:,} line(s))",
            file=sys.stderr,
        )
    if quiet:
        for finding in report["chain"]["findings"]:
            if finding["severity"] == "error":
                print(
                    f"  chain {finding['severity']}: {finding['file']}:{finding['line']}: "
                    f"{finding['kind']}: {finding['message']}",
                    file=sys.stderr,
                )
    return True
