"""``aidr-gate packs``: list the bundled policy packs with their status and legal window."""

from __future__ import annotations

import argparse
from typing import Any

from aidr_gate.policy.pack import bundled_pack_dir, load_pack
from aidr_gate.replay.diff import pack_window, window_text


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    parser: argparse.ArgumentParser = sub.add_parser("packs", help="list the bundled policy packs")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print one line per bundled pack."""
    for path in sorted(bundled_pack_dir().glob("*.yaml")):
        pack = load_pack(path)
        window = window_text(pack_window(pack))
        print(f"{pack.id:28} {pack.status:13} {window:25} {pack.title}")
    return 0
