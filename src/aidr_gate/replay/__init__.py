"""Replay: what a recorded audit trail would have been decided under another policy pack.

Start with :func:`replay_files` (audit files and :class:`ReplayOptions` in, :class:`ReplayResult`
out), turn the result into the JSON report with :func:`build_report`, and print it with
:func:`summary` or :func:`render_html`. :func:`diff_packs` compares two packs directly.
"""

from __future__ import annotations

from aidr_gate.replay.diff import diff_packs, render_diff
from aidr_gate.replay.page import render_html
from aidr_gate.replay.reader import AuditReader
from aidr_gate.replay.report import ProgressBar, build_report, summary
from aidr_gate.replay.run import Replayer, ReplayOptions, ReplayResult, replay_files

__all__ = [
    "AuditReader",
    "ProgressBar",
    "ReplayOptions",
    "ReplayResult",
    "Replayer",
    "build_report",
    "diff_packs",
    "render_diff",
    "render_html",
    "replay_files",
    "summary",
]
