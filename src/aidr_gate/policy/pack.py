"""Policy packs: versioned data that says who may use which model tier from where.

A pack file names its legal source and dates, defines country groups (with dated membership), the
country tiers built from them, the model tiers built from training compute and weights, and ordered
rules. ``extends`` layers a pack on another (the US embargo baseline, say). Loading validates
everything and reports each problem as ``file:line: key.path: what is wrong``.

Merge rules for ``extends``: groups merge by id (the child wins); ``country_tiers``, ``model_tiers``,
``agreements`` and ``default`` are taken whole from the nearest pack that defines them; rules are the
parent's in order (a child rule with the same id replaces it in place, ``remove_rules`` drops one),
then the child's new rules.

This module is the face the rest of aidr_gate imports: the data is :mod:`aidr_gate.policy.schema`,
reading one file :mod:`aidr_gate.policy.reader`, finding files and the ``extends`` merge
:mod:`aidr_gate.policy.extends`.
"""

from __future__ import annotations

from aidr_gate.policy.extends import bundled_pack_dir, find_pack_file, load_pack

# The reader's fact kinds, for the test that ties them to the engine's getter tables.
from aidr_gate.policy.reader import _BOOL_FACTS as _BOOL_FACTS
from aidr_gate.policy.reader import _COUNTRY_FACTS as _COUNTRY_FACTS
from aidr_gate.policy.reader import _GROUP_FACTS as _GROUP_FACTS
from aidr_gate.policy.reader import _TIER_FACTS as _TIER_FACTS
from aidr_gate.policy.reader import CONDITION_KEYS
from aidr_gate.policy.schema import (
    DENY_STATUSES,
    MAX_EXTENDS_DEPTH,
    PACK_STATUSES,
    Condition,
    CountryGroup,
    Membership,
    ModelTier,
    ModelTiers,
    Pack,
    Rule,
    TierTable,
    compute_digest,
)

__all__ = [
    "CONDITION_KEYS",
    "DENY_STATUSES",
    "MAX_EXTENDS_DEPTH",
    "PACK_STATUSES",
    "Condition",
    "CountryGroup",
    "Membership",
    "ModelTier",
    "ModelTiers",
    "Pack",
    "Rule",
    "TierTable",
    "bundled_pack_dir",
    "compute_digest",
    "find_pack_file",
    "load_pack",
]
