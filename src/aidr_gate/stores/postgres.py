"""The PostgreSQL registry store, for a fleet: every replica reads the same tables, and changes reach
every replica through LISTEN/NOTIFY within milliseconds.

psycopg 3 (async) with its pool serves lookups; one more connection per replica LISTENs. The schema
(``migrations/postgres``) refuses what the file validator refuses, logs every change with the
revision of its transaction (writers are ordered by a row lock, so revisions follow commit order)
and notifies ``aidr_registry`` with that revision. The feed reads the change log from the last
revision it saw, so a notification lost while a replica was away is caught up on reconnection.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolTimeout

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

CHANNEL = "aidr_registry"
# More changed entities than this since the last revision seen: drop the whole cache instead.
MAX_CHANGES_READ = 10_000
_DOCUMENT = (
    "SELECT id, name, headquarters, parent, denied, denied_reason, aliases, ownership, "
    "agreements, owners, screening_reviews FROM aidr_registry.entity_documents"
)
_GET = _DOCUMENT + " WHERE id = %s"
_CHANGES = (
    "SELECT s.revision, s.pruned_through, ARRAY(SELECT c.entity_id FROM aidr_registry.changes c "
    "WHERE c.revision > %s ORDER BY c.revision LIMIT %s) FROM aidr_registry.state s"
)
_COPIES = (
    ("entities (id, name, headquarters, parent, denied, denied_reason, aliases, ownership)", None),
    (
        "agreements (entity_id, id, position, type, status, valid_from, valid_until, "
        "model_tiers, countries)",
        agreement_rows,
    ),
    ("owners (entity_id, position, owner_entity, name, country, share)", owner_rows),
    (
        "screening_reviews (entity_id, position, entry, decision, reviewer, at, why, name)",
        review_rows,
    ),
)
_DRIVER_ERRORS = (psycopg.Error, PoolTimeout, OSError, TimeoutError)


def display_dsn(dsn: str) -> str:
    """*dsn* without its password (or anything else secret), for logs and health."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable connection string)"
    host = parts.get("host") or "localhost"
    port = f":{parts['port']}" if parts.get("port") else ""
    user = f"{parts['user']}@" if parts.get("user") else ""
    return f"postgresql://{user}{host}{port}/{parts.get('dbname') or ''}"


def _instant(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=UTC)


def _timestamps(row: tuple[Any, ...], *positions: int) -> tuple[Any, ...]:
    values = list(row)
    for position in positions:
        values[position] = _instant(values[position])
    return tuple(values)


class PostgresStore:
    """Entities in PostgreSQL (``aidr_registry`` schema); see the module docstring."""

    kind = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 4,
        fetch_timeout: float = 2.0,
        heartbeat: float = 1.0,
    ) -> None:
        self._dsn = dsn
        self.source = display_dsn(dsn)
        self._fetch_timeout = fetch_timeout
        self._heartbeat = heartbeat
        self._connect: dict[str, Any] = {
            "connect_timeout": max(1, round(fetch_timeout)),
            "autocommit": True,
        }
        self._pool = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=fetch_timeout,
            reconnect_timeout=float(os.environ.get("AIDR_PG_RECONNECT_TIMEOUT", 86_400)),
            kwargs={**self._connect, "prepare_threshold": 0},
            configure=self._configure,
            name="aidr-registry",
        )

    @staticmethod
    async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
        set_json_loads(orjson.loads, conn)

    @property
    def snapshot(self) -> Mapping[str, Entity] | None:
        """A database store holds nothing in memory."""
        return None

    def _unavailable(self, exc: BaseException) -> RegistryUnavailable:
        # The driver's message can name hosts and users, never passwords; keep it short.
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return RegistryUnavailable(f"registry {self.source} unavailable: {detail[:200]}")

    async def open(self) -> None:
        """Open the pool (without waiting for the database) and check the schema version."""
        await self._pool.open(wait=False)
        try:
            await self._check_schema()
        except BaseException:
            await self._pool.close()  # its workers must not outlive a store that did not open
            raise

    async def _check_schema(self) -> None:
        need = latest_version("postgres")
        try:
            async with self._pool.connection(timeout=self._fetch_timeout) as conn:
                cur = await conn.execute(
                    "SELECT coalesce(max(version), 0) FROM aidr_registry.schema_migrations"
                )
                row = await cur.fetchone()
        except psycopg.errors.UndefinedTable:
            raise schema_problem(self.source, 0, need) from None
        except _DRIVER_ERRORS as exc:
            raise self._unavailable(exc) from None
        have = int(row[0]) if row else 0
        if have < need:
            raise schema_problem(self.source, have, need)

    async def close(self) -> None:
        """Close the pool."""
        await self._pool.close()

    async def get(self, entity_id: str) -> Entity | None:
        """One entity, read in one round trip (a prepared statement on a pooled connection)."""
        try:
            async with asyncio.timeout(self._fetch_timeout):
                try:
                    row = await self._get_row(entity_id)
                except psycopg.OperationalError:
                    # Pooled connections that died with the server: drop every broken one, so
                    # the first read after an outage gets a live connection instead of failing.
                    await self._pool.check()
                    row = await self._get_row(entity_id)
        except _DRIVER_ERRORS as exc:
            raise self._unavailable(exc) from None
        return None if row is None else entity_from_row(row)

    async def _get_row(self, entity_id: str) -> tuple[Any, ...] | None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(_GET, (entity_id,))
            return await cur.fetchone()

    async def revision(self) -> str:
        """The revision of the last committed change."""
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute("SELECT revision FROM aidr_registry.state")
                row = await cur.fetchone()
        except _DRIVER_ERRORS as exc:
            raise self._unavailable(exc) from None
        return str(row[0] if row else 0)

    async def entities(self) -> AsyncGenerator[Entity, None]:
        """Every entity in id order, streamed through a server-side cursor."""
        try:
            async with self._pool.connection() as conn, conn.transaction():
                async for entity in _stream(conn):
                    yield entity
        except _DRIVER_ERRORS as exc:
            raise self._unavailable(exc) from None

    async def watch(self, since: str) -> AsyncGenerator[RegistryChange, None]:
        """LISTEN, catch up from *since* through the change log, then follow notifications; a
        heartbeat query every ``heartbeat`` seconds proves the connection alive."""
        last = _revision_number(since)
        try:
            conn = await psycopg.AsyncConnection.connect(self._dsn, **self._connect)
        except _DRIVER_ERRORS as exc:
            raise self._unavailable(exc) from None
        try:
            async with conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                while True:
                    async with asyncio.timeout(self._fetch_timeout):
                        change = await _changes_since(conn, last)
                    last = int(change.revision)
                    yield change
                    async for _ in conn.notifies(timeout=self._heartbeat, stop_after=1):
                        pass
        except _DRIVER_ERRORS as exc:
            raise self._unavailable(exc) from None

    async def replace_all(self, entities: Sequence[Entity]) -> int:
        """Write *entities* in one transaction: COPY into an empty registry (one change for
        everything), else only the entities that differ (one logged change for each)."""
        try:
            async with self._pool.connection() as conn, conn.transaction():
                cur = await conn.execute("SELECT EXISTS (SELECT 1 FROM aidr_registry.entities)")
                row = await cur.fetchone()
                if not (row and row[0]):
                    await conn.execute("SET LOCAL aidr_registry.bulk = 'on'")
                    await _copy(conn, entities)
                    await conn.execute("SET LOCAL aidr_registry.bulk = 'off'")
                    await conn.execute("SELECT aidr_registry.record_change(NULL)")
                    return len(entities)
                current = {e.id: e async for e in _stream(conn)}
                wanted = {e.id for e in entities}
                changed = [e for e in entities if current.get(e.id) != e]
                gone = [i for i in current if i not in wanted]
                replaced = [e.id for e in changed if e.id in current]
                if gone or replaced:
                    await conn.execute(
                        "DELETE FROM aidr_registry.entities WHERE id = ANY(%s)",
                        ([*gone, *replaced],),
                    )
                await _copy(conn, changed)
                return len(changed) + len(gone)
        except psycopg.errors.IntegrityError as exc:
            raise ConfigError.single(self.source, "", f"refused by the database: {exc}") from None
        except _DRIVER_ERRORS as exc:
            raise self._unavailable(exc) from None

    async def migrate(self) -> list[str]:
        """Apply the migrations the database lacks, each in its own transaction; return their
        names. Concurrent runs wait for each other (an advisory lock)."""
        applied_now: list[str] = []
        try:
            async with await psycopg.AsyncConnection.connect(self._dsn, **self._connect) as conn:
                await conn.execute("SELECT pg_advisory_lock(hashtext('aidr_registry.migrate'))")
                await conn.execute("CREATE SCHEMA IF NOT EXISTS aidr_registry")
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS aidr_registry.schema_migrations (version integer "
                    "PRIMARY KEY, name text NOT NULL, checksum text NOT NULL, "
                    "applied_at timestamptz NOT NULL DEFAULT now())"
                )
                cur = await conn.execute(
                    "SELECT version, checksum FROM aidr_registry.schema_migrations"
                )
                applied = {int(v): str(c) for v, c in await cur.fetchall()}
                for migration in pending("postgres", applied, self.source):
                    async with conn.transaction():
                        await conn.execute(migration.sql.encode(), prepare=False)
                        await conn.execute(
                            "INSERT INTO aidr_registry.schema_migrations (version, name, checksum) "
                            "VALUES (%s, %s, %s)",
                            (migration.version, migration.name, migration.checksum),
                        )
                    applied_now.append(migration.name)
        except _DRIVER_ERRORS as exc:
            raise self._unavailable(exc) from None
        return applied_now


def _revision_number(revision: str) -> int:
    try:
        return max(0, int(revision))
    except ValueError:
        return 0


async def _changes_since(conn: psycopg.AsyncConnection[Any], last: int) -> RegistryChange:
    cur = await conn.execute(_CHANGES, (last, MAX_CHANGES_READ + 1))
    row = await cur.fetchone()
    if row is None:
        raise psycopg.OperationalError("aidr_registry.state is empty")
    revision, pruned_through, ids = int(row[0]), int(row[1]), list(row[2] or [])
    # A revision behind ours (a restored backup), a pruned log, a bulk change (NULL) or too many
    # changes to name: anything may have changed.
    if revision < last or pruned_through > last or None in ids or len(ids) > MAX_CHANGES_READ:
        return RegistryChange(str(revision), None)
    return RegistryChange(str(revision), frozenset(ids))


async def _stream(conn: psycopg.AsyncConnection[Any]) -> AsyncGenerator[Entity, None]:
    async with conn.cursor(name="aidr_registry_export") as cur:
        cur.itersize = 5000
        await cur.execute(_DOCUMENT + " ORDER BY id")
        async for row in cur:
            yield entity_from_row(row)


async def _copy(conn: psycopg.AsyncConnection[Any], entities: Sequence[Entity]) -> None:
    async with conn.cursor() as cur:
        for columns, rows_of in _COPIES:
            async with cur.copy(f"COPY aidr_registry.{columns} FROM STDIN") as copy:
                for entity in entities:
                    if rows_of is None:
                        await copy.write_row(entity_row(entity))
                        continue
                    for row in rows_of(entity):
                        if rows_of is agreement_rows:
                            row = _timestamps(row, 5, 6)
                        elif rows_of is review_rows:
                            row = _timestamps(row, 5)
                        await copy.write_row(row)
