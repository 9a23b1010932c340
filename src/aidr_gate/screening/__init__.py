"""Restricted-party screening: lists as versioned data, entities screened (not requests), ownership.

- ``store``: list snapshots (OFAC's SDN CSV set, the Consolidated Screening List in both CSV
  layouts) with a version (digest and date); a store that reloads and keeps the last good lists.
- ``screen``: every registry entity's names and its named owners' screened against a snapshot
  (``matcher``, ``names``), with the compliance officer's recorded reviews applied.
- ``ownership``: the 50%-in-aggregate test over the owner graph, and the controlling owner chain.
- ``facts``: per-entity facts behind one dict lookup, for the request path.
- ``report``, ``page``: the review report (terminal, CSV, JSON, HTML) of ``aidr-gate screen``.
"""

from __future__ import annotations

from aidr_gate.screening.entries import ListEntry, ListVersion
from aidr_gate.screening.facts import ScreeningFacts, ScreeningTable, screening_table
from aidr_gate.screening.matcher import NameIndex, NameMatch
from aidr_gate.screening.ownership import ControlChain, controlling_chain, listed_ownership
from aidr_gate.screening.screen import Hit, HitState, ScreeningRun, screen_registry
from aidr_gate.screening.store import (
    ListSnapshot,
    ListSource,
    ListStore,
    load_snapshot,
    sources_for,
)

__all__ = [
    "ControlChain",
    "Hit",
    "HitState",
    "ListEntry",
    "ListSnapshot",
    "ListSource",
    "ListStore",
    "ListVersion",
    "NameIndex",
    "NameMatch",
    "ScreeningFacts",
    "ScreeningRun",
    "ScreeningTable",
    "controlling_chain",
    "listed_ownership",
    "load_snapshot",
    "screen_registry",
    "screening_table",
    "sources_for",
]
