"""The registry store interface: where entities and agreements live, behind one small protocol.

A store answers one entity at a time (the database stores do I/O, so lookups are awaited), names its
*revision* (a value that changes with every change, for the audit record), lists every entity for
export, and feeds changes: the ids of the entities that changed, with the new revision. The gate
never calls a store on the request path directly: :mod:`aidr_gate.stores.cache` sits in front.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from aidr_gate.registry import Entity


@dataclass(frozen=True, slots=True)
class RegistryChange:
    """What changed in a store: these entities, or (``entity_ids is None``) possibly any of them.

    An empty set is a heartbeat: the store was reached and nothing changed since the last one.
    """

    revision: str
    entity_ids: frozenset[str] | None

    @property
    def everything(self) -> bool:
        """True when any entity may have changed (a reload, a bulk import, a gap in the feed)."""
        return self.entity_ids is None


@runtime_checkable
class RegistryStore(Protocol):
    """A registry of entities, read by the gate through a cache.

    Every method that does I/O raises :class:`~aidr_gate.errors.RegistryUnavailable` when the
    store cannot be reached, never a driver's own exception.
    """

    source: str  # what to call it in logs and health: a path, or a DSN without its password
    kind: str  # "file", "sqlite" or "postgres"

    @property
    def snapshot(self) -> Mapping[str, Entity] | None:
        """Every entity, when the store holds them all in memory (the file store); else ``None``."""
        ...

    async def open(self) -> None:
        """Load or connect; raises ConfigError for what no retry can fix (a bad file, no schema)."""
        ...

    async def close(self) -> None:
        """Release files, connections and tasks."""
        ...

    async def get(self, entity_id: str) -> Entity | None:
        """The entity with this id, or ``None`` when the store has none."""
        ...

    async def revision(self) -> str:
        """The store's current revision."""
        ...

    def entities(self) -> AsyncGenerator[Entity, None]:
        """Every entity, in id order (export, diff)."""
        ...

    def watch(self, since: str) -> AsyncGenerator[RegistryChange, None]:
        """Changes after revision *since*, then each change as it happens, and a heartbeat at
        least every few seconds; raises RegistryUnavailable when the store is lost."""
        ...


class WritableStore(RegistryStore, Protocol):
    """A store the ``registry import`` tool can write."""

    async def replace_all(self, entities: Sequence[Entity]) -> int:
        """Make the store hold exactly *entities* (already validated), in one change that every
        reader sees whole; return how many entities were added, changed or removed."""
        ...


_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def store_kind(name: str) -> str:
    """``file``, ``sqlite``, ``postgres`` or ``env`` (decided when the variable is read)."""
    if name.startswith("env:"):
        return "env"
    if name.startswith(("postgresql://", "postgres://")) or "dbname=" in name or "host=" in name:
        return "postgres"
    if name.startswith("sqlite:") or name.lower().endswith(_SQLITE_SUFFIXES):
        return "sqlite"
    return "file"
