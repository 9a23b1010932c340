"""The ``aidr-gate`` command line: one module per subcommand, each with ``add_parser``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from aidr_gate.cli import (
    audit,
    check,
    demo,
    diff,
    packs,
    patterns,
    registry,
    replay,
    screen,
    serve,
    validate,
)
from aidr_gate.cli.exit import EXIT_BROKEN_PIPE
from aidr_gate.cli.exit import EXIT_DENY as EXIT_DENY  # re-exported: shared by every subcommand
from aidr_gate.cli.exit import EXIT_LOG as EXIT_LOG
from aidr_gate.cli.exit import EXIT_OK as EXIT_OK
from aidr_gate.cli.exit import EXIT_USAGE as EXIT_USAGE
from aidr_gate.errors import ConfigError

COMMANDS: tuple[ModuleType, ...] = (
    demo,
    check,
    validate,
    packs,
    serve,
    audit,
    replay,
    patterns,
    diff,
    registry,
    screen,
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
        sys.stdout.flush()  # a reader that left early shows up here, not at interpreter exit
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except ConfigError as exc:
        print("aidr-gate: configuration problems:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return result


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail a second time."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a non-file (tests capture it)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
