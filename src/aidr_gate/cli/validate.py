"""``aidr-gate validate``: load a configuration and everything it names; report every problem.

It loads through the same code as ``serve`` and the middleware (:meth:`Runtime.from_config`), so it
passes exactly when they would start. ``--json`` prints one object for pipelines.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sized
from typing import Any

from aidr_gate.cli.exit import EXIT_OK, EXIT_USAGE
from aidr_gate.document import format_instant, parse_instant
from aidr_gate.errors import ConfigError, Problem
from aidr_gate.replay.diff import pack_window, window_text
from aidr_gate.runtime import Runtime
from aidr_gate.settings.loader import find_config_path
from aidr_gate.stores.settings import registry_summary


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "validate",
        help="load a configuration and everything it names, and report every problem",
        description=(
            "Load a configuration as serve and the middleware do: every section and every file, "
            "key, database and address it names. Exit 0 when they would start, 2 otherwise."
        ),
    )
    parser.add_argument(
        "--config",
        help="configuration file (default: $AIDR_GATE_CONFIG, then the embedded example)",
    )
    parser.add_argument(
        "--at", help="evaluation date to check the packs' legal windows against (default: now)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object: ok, errors, warnings, loaded"
    )
    parser.set_defaults(run=run)


def _problem(problem: Problem) -> dict[str, Any]:
    return {
        "file": problem.file,
        "line": problem.line,
        "path": problem.path,
        "message": problem.message,
        "text": str(problem),
    }


def run(args: argparse.Namespace) -> int:
    """Run ``validate``: exit 0 when there are no errors (warnings allowed), 2 otherwise."""
    at = time.time()
    if args.at:
        parsed = parse_instant(args.at)
        if parsed is None:
            raise ConfigError(Problem("<command line>", "--at", f"{args.at!r} is not a date"))
        at = parsed
    warnings: list[Problem] = []
    try:
        runtime = Runtime.from_config(args.config, warnings=warnings)
    except ConfigError as exc:
        if not args.json:
            raise
        report = {
            "ok": False,
            "file": str(find_config_path(args.config)),
            "errors": [_problem(p) for p in exc.problems],
            "warnings": [_problem(p) for p in warnings],
        }
        print(json.dumps(report, indent=2))
        return EXIT_USAGE
    try:
        loaded = _loaded(runtime, at, warnings)
    finally:
        runtime.origin.close()
    if args.json:
        report = {
            "ok": True,
            "file": loaded["file"],
            "errors": [],
            "warnings": [_problem(p) for p in warnings],
            "loaded": loaded,
        }
        print(json.dumps(report, indent=2))
        return EXIT_OK
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"ok: {loaded['file']}: pack {loaded['pack']} ({loaded['status']}, "
        f"{loaded['digest'][:19]}), {loaded['registry']}, {loaded['models']} models"
        + (f", shadow {loaded['shadow']}" if loaded["shadow"] else "")
        + (
            f", {loaded['screening']['entities']} entities screened against lists "
            f"{loaded['screening']['lists']}"
            if loaded["screening"] is not None
            else ""
        )
    )
    return EXIT_OK


def _loaded(runtime: Runtime, at: float, warnings: list[Problem]) -> dict[str, Any]:
    state = runtime.gate.state
    config = runtime.config
    assert config is not None  # from_config always keeps its configuration
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
    screening = state.screening
    return {
        "file": config.file,
        "pack": state.pack.id,
        "status": state.pack.status,
        "digest": state.pack.digest,
        "shadow": state.shadow.pack.id if state.shadow is not None else None,
        "mode": state.mode.value,
        # A database store is named, not connected to: validate reads no entity from it.
        "registry": registry_summary(state.registry, runtime.registry),
        "entities": len(state.registry) if isinstance(state.registry, Sized) else None,
        "models": len(state.catalog),
        "geoip": runtime.origin.describe(),
        "screening": (
            {"entities": len(screening), "lists": screening.version.label}
            if screening is not None
            else None
        ),
    }
