"""``python -m aidr_gate``: the same as the ``aidr-gate`` command."""

from __future__ import annotations

from aidr_gate.cli import main

raise SystemExit(main())
