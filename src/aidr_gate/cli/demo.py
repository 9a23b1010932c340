"""``aidr-gate demo``: a model server, the sidecar in front of it, and a scripted tour of decisions."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import Any

from aidr_gate.demo.tour import quiet_logs, run_demo


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "demo",
        help="see the gate decide: a built-in model server, the sidecar, scripted callers",
        description=(
            "Start, on 127.0.0.1, a small OpenAI-compatible model server and the sidecar in "
            "front of it on the embedded example policy, send requests from entities and "
            "addresses across the tiers, print each decision with its reasons and audit record, "
            "check the audit hash chain, and stop. No network and no licence key needed. Exit "
            "code 0 when every row showed what it is meant to show."
        ),
    )
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="write the configuration, keys and audit records to DIR and keep them",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the tour."""
    if not args.verbose:
        quiet_logs()
    logging.captureWarnings(True)
    return asyncio.run(run_demo(keep=args.keep))
