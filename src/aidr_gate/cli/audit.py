"""``aidr-gate audit verify FILES...``: check the hash chain (and signatures) of audit files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from aidr_gate.audit.chain import load_public_key
from aidr_gate.audit.verify import VerifyResult, chains_of, verify_files
from aidr_gate.errors import ConfigError, Problem


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "audit", help="work with audit files (verify the chain)"
    )
    actions = parser.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = actions.add_parser(
        "verify",
        help="check the hash chain of audit files and name the first place it breaks",
        description=(
            "Check audit files (any order; rotated and compressed files too). Exit code: 0 the chain "
            "is intact, 1 it is broken (the first problem names file and line), 2 usage error."
        ),
    )
    verify.add_argument("files", nargs="+", type=Path, metavar="FILE")
    verify.add_argument(
        "--public-key",
        action="append",
        default=[],
        type=Path,
        metavar="PEM",
        help="Ed25519 public key (PEM) the checkpoints must be signed with (repeatable)",
    )
    verify.add_argument(
        "--strict",
        action="store_true",
        help="fail on warnings too (a torn final line, an unsigned tail)",
    )
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(run=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    """Run ``audit verify``: one chain, or one per process slot (``audit.per_process``)."""
    keys = []
    for path in args.public_key:
        try:
            keys.append(load_public_key(path))
        except (OSError, ValueError) as exc:
            raise ConfigError(Problem(str(path), "--public-key", str(exc))) from None
    missing = [str(p) for p in args.files if not p.is_file()]
    if missing:
        raise ConfigError([Problem(p, "FILE", "no such file") for p in missing])
    chains = chains_of(args.files)
    if len(chains) == 1:
        return _report(verify_files(args.files, keys), args, bool(keys), "")
    # Process slots (p0, p1, ... under one directory) are separate chains: verify each on its own.
    results = {slot: verify_files(files, keys) for slot, files in chains.items()}
    if args.json:
        failed = any(_failed(r, args.strict) for r in results.values())
        json.dump({slot: r.to_dict() for slot, r in results.items()}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 1 if failed else 0
    codes = [_report(result, args, bool(keys), f"{slot}: ") for slot, result in results.items()]
    return max(codes)


def _failed(result: VerifyResult, strict: bool) -> bool:
    return not result.ok or (strict and bool(result.warnings))


def _report(result: VerifyResult, args: argparse.Namespace, keyed: bool, label: str) -> int:
    failed = _failed(result, args.strict)
    if args.json:
        json.dump(result.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 1 if failed else 0
    for finding in result.findings:
        print(f"{label}{finding.severity}: {finding}", file=sys.stderr if failed else sys.stdout)
    span = (
        f"seq {result.first_seq}..{result.last_seq}"
        if result.last_seq is not None
        else "no records"
    )
    signed = ""
    if keyed:
        signed = (
            f", signed up to seq {result.signed_upto}"
            if result.signed_upto is not None
            else ", no valid signature"
        )
    verdict = "FAILED" if failed else "ok"
    first = f": first problem at {result.errors[0]}" if result.errors else ""
    print(
        f"{label}{verdict}: {result.files} files, {result.records} records, {span}, "
        f"{result.checkpoints} checkpoints{signed}{first}"
    )
    return 1 if failed else 0
