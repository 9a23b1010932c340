"""The ``aidr-gate`` command line: one module per subcommand, each with ``add_parser``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from aidr_gate.cli import audit, check, demo, diff, packs, replay, serve, validate
from aidr_gate.errors import ConfigError

# Exit codes shared by every subcommand.
EXIT_OK = 0
EXIT_DENY = 1
EXIT_USAGE = 2
EXIT_LOG = 3

COMMANDS: tuple[ModuleType, ...] = (
    demo,
    check,
    validate,
    packs,
    serve,
    audit,
    replay,
    diff,
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="aidr-gate",
        description="Access-policy gate for AI model serving.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aidr-gate`` script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result: int = args.run(args)
    except ConfigError as exc:
        print("aidr-gate: configuration problems:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
