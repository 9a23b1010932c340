"""Registry stores: the file (the embedded default), SQLite, PostgreSQL; and the cache before them.

:func:`open_store` names a store the way the ``registry`` commands do: a path to a ``.yaml``,
``.yml`` or ``.json`` file, a path to a ``.db``/``.sqlite``/``.sqlite3`` file (or ``sqlite:PATH``),
a ``postgresql://`` URL or libpq connection string, or ``env:NAME`` for a connection string held
in an environment variable (so no password is on a command line).
"""

from __future__ import annotations

import asyncio
import os

from aidr_gate.errors import ConfigError, RegistryUnavailable
from aidr_gate.registry import InMemoryRegistry
from aidr_gate.stores.base import RegistryChange, RegistryStore, WritableStore, store_kind
from aidr_gate.stores.cache import (
    MISS,
    UNAVAILABLE,
    Absent,
    CacheSettings,
    EntityCache,
    RegistryHealth,
    RegistryView,
    SnapshotView,
    registry_view,
)
from aidr_gate.stores.file import FileStore

__all__ = [
    "MISS",
    "UNAVAILABLE",
    "Absent",
    "CacheSettings",
    "EntityCache",
    "FileStore",
    "RegistryChange",
    "RegistryHealth",
    "RegistryStore",
    "RegistryView",
    "SnapshotView",
    "WritableStore",
    "load_whole",
    "open_store",
    "registry_view",
]


def open_store(name: str) -> WritableStore:
    """The store *name* designates (see the module docstring); not yet opened."""
    if name.startswith("env:"):
        value = os.environ.get(name[4:], "")
        if not value:
            raise ConfigError.single(name, "", f"environment variable {name[4:]} is not set")
        name = value
    kind = store_kind(name)
    if kind == "postgres":
        try:
            from aidr_gate.stores.postgres import PostgresStore
        except ImportError:
            raise ConfigError.single(
                "registry",
                "",
                "the PostgreSQL store needs psycopg: pip install 'aidr-gate[postgres]'",
            ) from None
        return PostgresStore(name)
    if kind == "sqlite":
        from aidr_gate.stores.sqlite import SqliteStore

        return SqliteStore(name.removeprefix("sqlite:"))
    return FileStore(name)


def load_whole(name: str) -> tuple[InMemoryRegistry, str]:
    """Every entity of the store *name* designates, in memory, and the store's revision (for
    offline tools: ``replay --registry``); raises ConfigError when it cannot be read."""

    async def read() -> tuple[InMemoryRegistry, str]:
        store = open_store(name)
        await store.open()
        try:
            revision = await store.revision()
            entities = [entity async for entity in store.entities()]
        finally:
            await store.close()
        return InMemoryRegistry(entities, source=store.source, revision=revision), revision

    try:
        return asyncio.run(read())
    except RegistryUnavailable as exc:
        raise ConfigError.single(name, "", f"the registry cannot be read: {exc.message}") from None
