"""``aidr-gate validate``: load a configuration and everything it names; report every problem."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from aidr_gate.config import load_config
from aidr_gate.document import format_instant, parse_instant
from aidr_gate.errors import ConfigError, Problem
from aidr_gate.gate import load_state
from aidr_gate.replay.diff import pack_window, window_text
from aidr_gate.stores.settings import open_registry, registry_summary


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "validate",
        help="load a configuration and everything it names, and report every problem",
    )
    parser.add_argument(
        "--config",
        help="configuration file (default: $AIDR_GATE_CONFIG, then the embedded example)",
    )
    parser.add_argument(
        "--at", help="evaluation date to check the packs' legal windows against (default: now)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``validate``: exit 0 when there are no errors (warnings allowed), 2 otherwise."""
    at = time.time()
    if args.at:
        parsed = parse_instant(args.at)
        if parsed is None:
            raise ConfigError(Problem("<command line>", "--at", f"{args.at!r} is not a date"))
        at = parsed
    config = load_config(args.config)
    warnings: list[Problem] = []
    registry = open_registry(config)  # a database store is named, not connected to
    state = load_state(config, warnings=warnings, registry=registry)
    for engine in (state.engine, state.shadow):
        if engine is None:
            continue
        pack = engine.pack
        if not pack.in_window(at):
            window = f"[{window_text(pack_window(pack), ', ')})"
            warnings.append(
                Problem(
                    pack.files[-1],
                    "effective",
                    f"pack {pack.id!r} ({pack.status}) has legal window {window}, "
                    f"which does not cover {format_instant(at)}",
                    severity="warning",
                )
            )
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"ok: {config.file}: pack {state.pack.id} ({state.pack.status}, {state.pack.digest[:19]}), "
        f"{registry_summary(state.registry, registry)}, {len(state.catalog)} models"
        + (f", shadow {state.shadow.pack.id}" if state.shadow else "")
        + (
            f", {len(state.screening)} entities screened against lists "
            f"{state.screening.version.label}"
            if state.screening is not None
            else ""
        )
    )
    return 0
