"""``aidr-gate diff PACK_A PACK_B``: what differs between two policy packs."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from aidr_gate.errors import ConfigError
from aidr_gate.policy.pack import Pack, load_pack
from aidr_gate.replay.diff import diff_packs, render_diff


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "diff",
        help="show what differs between two policy packs",
        description=(
            "Compare two packs (ids or files, extends resolved): country tiers with their dates, "
            "country groups, rules added, removed or changed, model tier thresholds, the default "
            "outcome, accepted agreement types, the legal window, status, id and title. Exit code: "
            "0 the packs are identical (nothing above differs: the order of a country list or of "
            "the citations does not count), 1 they differ, 2 usage or configuration error."
        ),
    )
    parser.add_argument("pack_a", metavar="PACK_A", help="pack id or file")
    parser.add_argument("pack_b", metavar="PACK_B", help="pack id or file")
    parser.add_argument("--json", action="store_true", help="print the differences as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``diff``."""
    packs: list[Pack] = []
    errors: list[ConfigError] = []
    for ref in (args.pack_a, args.pack_b):
        try:
            packs.append(load_pack(ref))
        except ConfigError as exc:
            errors.append(exc)
    if errors:
        raise ConfigError.merge(errors)
    diff = diff_packs(packs[0], packs[1])
    if args.json:
        json.dump(diff, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(render_diff(diff))
    return 0 if diff["identical"] else 1
