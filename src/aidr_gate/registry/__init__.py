"""The entity registry: who an entity is, where it and its ultimate parent are headquartered,
whether it is denied, and which agreements it holds.

The registry is a store behind a small :class:`EntityRegistry` protocol: the file implementation
loads YAML/JSON once and is immutable afterwards; reloading builds a new one and swaps it whole.
"""

from aidr_gate.registry.model import (
    AGREEMENT_TYPES,
    ANY,
    Agreement,
    AgreementState,
    AgreementStatus,
    Entity,
    EntityRegistry,
    InMemoryRegistry,
    Owner,
    OwnershipStatus,
    ReviewDecision,
    ScreeningReview,
    evaluate_agreements,
)
from aidr_gate.registry.reader import check_ownership_graph, load_registry, registry_from_document

__all__ = [
    "AGREEMENT_TYPES",
    "ANY",
    "Agreement",
    "AgreementState",
    "AgreementStatus",
    "Entity",
    "EntityRegistry",
    "InMemoryRegistry",
    "Owner",
    "OwnershipStatus",
    "ReviewDecision",
    "ScreeningReview",
    "check_ownership_graph",
    "evaluate_agreements",
    "load_registry",
    "registry_from_document",
]
