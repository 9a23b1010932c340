"""The SQLite registry store, for a large registry on one machine (standard library ``sqlite3``).

Every query runs in a worker thread with its own connection (WAL mode: readers never wait for the
writer), so the event loop never blocks. The schema (``migrations/sqlite``) logs each change with a
revision, as the PostgreSQL one does; SQLite has no notifications, so the feed polls the revision
(a primary-key read, every ``poll_interval``), which also lets several processes share one file.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from aidr_gate.errors import ConfigError, RegistryUnavailable
from aidr_gate.registry import Entity
from aidr_gate.stores.base import RegistryChange
from aidr_gate.stores.migrate import latest_version, pending, schema_problem
from aidr_gate.stores.rows import (
    agreement_rows,
    entity_from_row,
    entity_row,
    owner_rows,
    review_rows,
)

T = TypeVar("T")
MAX_CHANGES_READ = 10_000
_DOCUMENT = (
    "SELECT id, name, headquarters, parent, denied, denied_reason, aliases, ownership, "
    "agreements, owners, screening_reviews FROM entity_documents"
)
_INSERTS = (
    ("INSERT INTO entities VALUES (?, ?, ?, ?, ?, ?, ?, ?)", None),
    ("INSERT INTO agreements VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", agreement_rows),
    (
        "INSERT INTO owners (entity_id, position, owner_entity, name, country, share) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        owner_rows,
    ),
    ("INSERT INTO screening_reviews VALUES (?, ?, ?, ?, ?, ?, ?, ?)", review_rows),
)


def _decoded(row: Sequence[Any]) -> Entity:
    values = list(row)
    for position in (6, 8, 9, 10):
        values[position] = orjson.loads(values[position]) if values[position] else []
    return entity_from_row(values)


def _encoded(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(orjson.dumps(v).decode() if isinstance(v, list) else v for v in row)


class SqliteStore:
    """Entities in one SQLite file; see the module docstring."""

    kind = "sqlite"

    def __init__(self, path: str | Path, *, poll_interval: float = 0.1, readers: int = 2) -> None:
        self.path = Path(path)
        self.source = f"sqlite:{path}"
        self._poll_interval = poll_interval
        self._executor = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="aidr-sqlite")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    @property
    def snapshot(self) -> Mapping[str, Entity] | None:
        """A database store holds nothing in memory."""
        return None

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, lambda: work(self._connection()))
        except sqlite3.IntegrityError as exc:
            raise ConfigError.single(self.source, "", f"refused by the database: {exc}") from None
        except (sqlite3.Error, OSError) as exc:
            raise RegistryUnavailable(f"registry {self.source} unavailable: {exc}") from None

    async def open(self) -> None:
        """Check that the file holds the registry schema this build needs."""
        if not self.path.exists():
            raise schema_problem(self.source, 0, latest_version("sqlite"))
        have = await self._run(_schema_version)
        if have < latest_version("sqlite"):
            raise schema_problem(self.source, have, latest_version("sqlite"))

    async def close(self) -> None:
        """Close every connection and stop the worker threads."""
        self._executor.shutdown(wait=True)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    async def get(self, entity_id: str) -> Entity | None:
        """One entity, read in a worker thread."""

        def read(conn: sqlite3.Connection) -> Entity | None:
            row = conn.execute(_DOCUMENT + " WHERE id = ?", (entity_id,)).fetchone()
            return None if row is None else _decoded(row)

        return await self._run(read)

    async def revision(self) -> str:
        """The revision of the last committed change."""
        return str(await self._run(lambda c: c.execute("SELECT revision FROM state").fetchone()[0]))

    async def entities(self) -> AsyncGenerator[Entity, None]:
        """Every entity in id order, read in batches."""
        after = ""
        while True:

            def batch(conn: sqlite3.Connection, after: str = after) -> list[Entity]:
                rows = conn.execute(_DOCUMENT + " WHERE id > ? ORDER BY id LIMIT 5000", (after,))
                return [_decoded(row) for row in rows]

            entities = await self._run(batch)
            if not entities:
                return
            for entity in entities:
                yield entity
            after = entities[-1].id

    async def watch(self, since: str) -> AsyncGenerator[RegistryChange, None]:
        """Poll the revision; read the change log when it moves."""
        last = int(since) if since.isdigit() else 0
        while True:
            change = await self._run(functools.partial(_changes_since, last=last))
            last = int(change.revision)
            yield change
            await asyncio.sleep(self._poll_interval)

    async def replace_all(self, entities: Sequence[Entity]) -> int:
        """Write *entities* in one transaction (bulk into an empty registry, else what differs)."""
        return await self._run(functools.partial(_replace_all, entities=entities))

    async def migrate(self) -> list[str]:
        """Create the file if needed and apply the migrations it lacks."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return await self._run(functools.partial(_migrate, source=self.source))


def _schema_version(conn: sqlite3.Connection) -> int:
    try:
        row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    except sqlite3.OperationalError:
        return 0
    return int(row[0])


def _migrate(conn: sqlite3.Connection, source: str) -> list[str]:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
        "name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    conn.commit()
    applied = dict(conn.execute("SELECT version, checksum FROM schema_migrations").fetchall())
    names = []
    for migration in pending("sqlite", applied, source):
        # executescript commits first; BEGIN inside it makes the migration one transaction.
        conn.executescript(
            "BEGIN;\n" + migration.sql + "\nINSERT INTO schema_migrations VALUES "
            f"({migration.version}, '{migration.name}', '{migration.checksum}', "
            "(julianday('now') - 2440587.5) * 86400.0);\nCOMMIT;"
        )
        names.append(migration.name)
    return names


def _changes_since(conn: sqlite3.Connection, last: int) -> RegistryChange:
    revision, pruned = conn.execute("SELECT revision, pruned_through FROM state").fetchone()
    if revision == last:
        return RegistryChange(str(revision), frozenset())
    rows = conn.execute(
        "SELECT entity_id FROM changes WHERE revision > ? ORDER BY revision LIMIT ?",
        (last, MAX_CHANGES_READ + 1),
    ).fetchall()
    ids = [row[0] for row in rows]
    if revision < last or pruned > last or None in ids or len(ids) > MAX_CHANGES_READ:
        return RegistryChange(str(revision), None)
    return RegistryChange(str(revision), frozenset(ids))


def _insert(conn: sqlite3.Connection, entities: Sequence[Entity]) -> None:
    for statement, rows_of in _INSERTS:
        if rows_of is None:
            conn.executemany(statement, (_encoded(entity_row(e)) for e in entities))
        else:
            conn.executemany(statement, (_encoded(r) for e in entities for r in rows_of(e)))


def _replace_all(conn: sqlite3.Connection, entities: Sequence[Entity]) -> int:
    with conn:  # one transaction
        conn.execute("BEGIN IMMEDIATE")
        if conn.execute("SELECT NOT EXISTS (SELECT 1 FROM entities)").fetchone()[0]:
            conn.execute("UPDATE state SET bulk = 1")
            _insert(conn, entities)
            conn.execute("UPDATE state SET bulk = 0, revision = revision + 1")
            conn.execute(
                "INSERT INTO changes (revision, entity_id) SELECT revision, NULL FROM state"
            )
            return len(entities)
        current = {e.id: e for e in map(_decoded, conn.execute(_DOCUMENT))}
        wanted = {e.id for e in entities}
        changed = [e for e in entities if current.get(e.id) != e]
        gone = [i for i in current if i not in wanted] + [e.id for e in changed if e.id in current]
        conn.executemany("DELETE FROM entities WHERE id = ?", ((i,) for i in gone))
        _insert(conn, changed)
        return len(changed) + sum(1 for i in current if i not in wanted)
