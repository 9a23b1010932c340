"""Where the report commands (``replay``, ``screen``, ``patterns``) write their reports.

Each command builds one report (a JSON-ready dict) and writes it as JSON (``-`` for stdout), HTML
and, for ``screen``, CSV, then prints its summary: to stdout, or to stderr when the JSON is on
stdout so that the JSON stays parseable. Targets are checked before the work starts
(:func:`unwritable`), and a write that fails anyway is a clear usage error, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aidr_gate.errors import ConfigError

# A rendered form of a report: a flag's name, its target (None or "" when not asked for), and
# how to render it (called only when asked for).
Rendering = tuple[str, str | None, Callable[[], str]]


def unwritable(target: str) -> str | None:
    """Why a report cannot be written to *target*, checked before the work runs; else ``None``."""
    path = Path(target)
    if path.is_dir():
        return "is a directory"
    parent = path.parent
    if not parent.exists():
        return f"the directory {str(parent)!r} does not exist"
    if not parent.is_dir():
        return f"{str(parent)!r} is not a directory"
    if path.exists():
        if not os.access(path, os.W_OK):
            return "the file is not writable"
    elif not os.access(parent, os.W_OK | os.X_OK):
        return f"the directory {str(parent)!r} is not writable"
    return None


def write_report(flag: str, target: str, text: str) -> None:
    """Write a report; a failure (the disk full, the directory gone) is a clear error, exit 2."""
    try:
        Path(target).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError.single(
            "<command line>", flag, f"{target!r}: cannot write the report: {exc.strerror or exc}"
        ) from None


def emit_reports(
    report: dict[str, Any],
    json_target: str | None,
    files: tuple[Rendering, ...],
    summary: Callable[[], str] | None,
) -> None:
    """Write *report* as JSON and each of *files*, then print *summary* (``None``: --quiet)."""
    if json_target == "-":
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif json_target:
        write_report("--json", json_target, json.dumps(report, indent=2) + "\n")
    for flag, target, render in files:
        if target:
            write_report(flag, target, render())
    if summary is None:
        return
    # With the JSON on stdout, the summary goes to stderr so the JSON stays parseable.
    stream = sys.stderr if json_target == "-" else sys.stdout
    print(summary(), file=stream)
    named = [(flag.removeprefix("--").upper(), target) for flag, target, _ in files]
    for name, target in [*named, ("JSON", json_target)]:
        if target and target != "-":
            print(f"{name} report: {target}", file=stream)
