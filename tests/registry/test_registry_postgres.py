# ruff: noqa: S608
"""The PostgreSQL registry store against a real server: migrations, constraints, two replicas seeing
a change through NOTIFY, an outage served stale then refused, and recovery without a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aidr_gate.errors import ConfigError
from aidr_gate.registry import AgreementStatus, load_registry
from aidr_gate.stores import UNAVAILABLE, CacheSettings, EntityCache, open_store
from aidr_gate.stores.base import RegistryChange
from aidr_gate.stores.file import write_registry
from aidr_gate.stores.postgres import PostgresStore
from support.environment import EXAMPLES
from support.postgres_server import PostgresServer, postgres_server
from support.registry_support import synthetic_entities, until

_COUNTER = iter(range(1_000_000))


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    """One server for the module; each test gets its own database."""
    with postgres_server() as running:
        yield running


@pytest.fixture
def dsn(server: PostgresServer) -> str:
    """A fresh database with the registry schema migrated."""
    url = server.create_database(f"t{next(_COUNTER)}")
    assert asyncio.run(PostgresStore(url).migrate()) == ["001_registry.sql"]
    return url


async def _import(url: str, path: Path) -> int:
    store = PostgresStore(url)
    await store.open()
    try:
        return await store.replace_all(list(load_registry(path)))
    finally:
        await store.close()


def test_migrate_is_idempotent_and_a_missing_schema_is_named(server: PostgresServer) -> None:
    url = server.create_database("fresh")
    with pytest.raises(ConfigError, match="run `aidr-gate registry migrate` first"):
        asyncio.run(PostgresStore(url).open())
    assert asyncio.run(PostgresStore(url).migrate()) == ["001_registry.sql"]
    assert asyncio.run(PostgresStore(url).migrate()) == []
    assert server.psql("SELECT version FROM aidr_registry.schema_migrations", "fresh") == "1"


_ENTITY = "INSERT INTO aidr_registry.entities (id, headquarters) VALUES ('ok', 'US');"
_AGREEMENT = "INSERT INTO aidr_registry.agreements (entity_id, id, type, status{cols}) VALUES ('ok', 'a', {vals})"


@pytest.mark.parametrize(
    ("sql", "refusal"),
    [
        ("INSERT INTO aidr_registry.entities (id, headquarters) VALUES ('x', 'us')", "headquarters"),
        ("INSERT INTO aidr_registry.entities (id, headquarters) VALUES ('x', 'ZZ')", "headquarters"),
        ("INSERT INTO aidr_registry.entities (id, headquarters) VALUES ('  ', 'US')", "id_check"),
        ("INSERT INTO aidr_registry.entities (id, headquarters, parent) VALUES ('x', 'US', 'XX')", "parent"),
        ("INSERT INTO aidr_registry.entities (id, headquarters, ownership) VALUES ('x', 'US', 'mostly')", "ownership"),
        (_ENTITY + _AGREEMENT.format(cols="", vals="'lease', 'active'"), "type"),
        (_ENTITY + _AGREEMENT.format(cols="", vals="'nveu', 'paused'"), "status"),
        (
            _ENTITY + _AGREEMENT.format(
                cols=", valid_from, valid_until", vals="'nveu', 'active', '2026-01-01', '2025-01-01'"
            ),
            "window_ordered",
        ),
        (_ENTITY + _AGREEMENT.format(cols=", countries", vals="'nveu', 'active', '{SG,ZZ}'"), "countries"),
        (_ENTITY + _AGREEMENT.format(cols=", countries", vals="'nveu', 'active', '{}'"), "countries"),
        (_ENTITY + _AGREEMENT.format(cols=", model_tiers", vals="'nveu', 'active', '{Controlled}'"), "model_tiers"),
        (
            _ENTITY + "INSERT INTO aidr_registry.owners (entity_id, owner_entity, share) VALUES ('ok', 'ghost', 10)",
            "owner_entity",
        ),
        (_ENTITY + "INSERT INTO aidr_registry.owners (entity_id, name, share) VALUES ('ok', 'X', 0)", "share"),
        (_ENTITY + "INSERT INTO aidr_registry.owners (entity_id, name, share) VALUES ('ok', 'X', 101)", "share"),
        (
            _ENTITY + "INSERT INTO aidr_registry.owners (entity_id, name, share) "
            "VALUES ('ok', 'X', 60), ('ok', 'Y', 50)",
            "more than 100",
        ),
        (
            "INSERT INTO aidr_registry.entities (id, headquarters) VALUES ('a', 'US'), ('b', 'US');"
            "INSERT INTO aidr_registry.owners (entity_id, owner_entity, share) VALUES ('a', 'b', 60), ('b', 'a', 60)",
            "ownership cycle",
        ),
        (
            _ENTITY + "INSERT INTO aidr_registry.screening_reviews (entity_id, entry, decision, reviewer, at, why) "
            "VALUES ('ok', 'sdn:1', 'maybe', 'j', now(), 'y')",
            "decision",
        ),
    ],
)  # fmt: skip
def test_the_schema_refuses_what_the_file_validator_refuses(
    server: PostgresServer, dsn: str, sql: str, refusal: str
) -> None:
    database = dsn.rsplit("/", 1)[1]
    with pytest.raises(RuntimeError, match=refusal):
        server.psql(sql, database)
    assert server.psql("SELECT count(*) FROM aidr_registry.entities", database) == "0"


def test_import_export_round_trip_file_to_postgres_to_file(dsn: str, tmp_path: Path) -> None:
    source = EXAMPLES / "entities.yaml"
    original = load_registry(source)
    assert asyncio.run(_import(dsn, source)) == len(original)

    async def export() -> list[object]:
        store = open_store(dsn)
        await store.open()
        try:
            return [e async for e in store.entities()]
        finally:
            await store.close()

    exported = asyncio.run(export())
    assert exported == sorted(original, key=lambda e: e.id)
    out = tmp_path / "again.yaml"
    write_registry(out, exported)  # type: ignore[arg-type]
    assert sorted(load_registry(out), key=lambda e: e.id) == exported
    # Importing the same file again changes nothing; one entity edited changes one.
    assert asyncio.run(_import(dsn, out)) == 0


def _fast(**changes: float) -> CacheSettings:
    return CacheSettings(**{"retry_min": 0.05, "retry_max": 0.2, "feed_timeout": 2.0, **changes})  # type: ignore[arg-type]


def test_two_replicas_see_a_revocation_through_notify_within_a_second(
    server: PostgresServer, dsn: str, tmp_path: Path
) -> None:
    path = tmp_path / "e.yaml"
    from support.registry_support import write_yaml_registry

    write_yaml_registry(path, 300)
    asyncio.run(_import(dsn, path))
    database = dsn.rsplit("/", 1)[1]

    async def scenario() -> list[float]:
        caches = [EntityCache(PostgresStore(dsn, heartbeat=5.0), _fast()) for _ in range(2)]
        seen: list[list[float]] = [[], []]
        for index, cache in enumerate(caches):
            await cache.start()

            def record(change: RegistryChange, i: int = index) -> None:
                if change.entity_ids and "org-0000003" in change.entity_ids:
                    seen[i].append(time.monotonic())

            cache.on_change(record)
            first = await cache.fetch("org-0000003")
            assert first is not None and first is not UNAVAILABLE
            assert first.agreements[0].status is not AgreementStatus.REVOKED
            assert cache.lookup("org-0000003") is first  # now a hit
        start = time.monotonic()
        await asyncio.to_thread(
            server.psql,
            "UPDATE aidr_registry.agreements SET status = 'revoked' WHERE entity_id = 'org-0000003'",
            database,
        )
        await until(lambda: all(seen), 3)
        delays = [s[0] - start for s in seen if s]
        for cache in caches:
            again = await cache.fetch("org-0000003")
            assert again is not None and again is not UNAVAILABLE
            assert again.agreements[0].status is AgreementStatus.REVOKED
            assert cache.revision is not None and int(cache.revision) >= 2
            await cache.close()
        return delays

    delays = asyncio.run(scenario())
    assert len(delays) == 2, "a replica never saw the change"
    # psql's own start-up is inside the measured time; the notification itself takes milliseconds.
    assert max(delays) < 1.0, delays


def test_an_outage_serves_stale_until_max_staleness_then_refuses_then_recovers(
    tmp_path: Path,
) -> None:
    with postgres_server() as own:
        url = own.create_database("outage")
        asyncio.run(PostgresStore(url).migrate())
        path = tmp_path / "e.yaml"
        from support.registry_support import write_yaml_registry

        write_yaml_registry(path, 30)
        asyncio.run(_import(url, path))

        async def scenario() -> None:
            cache = EntityCache(
                PostgresStore(url, heartbeat=0.2, fetch_timeout=1.0),
                _fast(max_staleness=1.5, feed_timeout=1.0),
            )
            await cache.start()
            assert cache.health().state == "ready"
            cached = await cache.fetch("org-0000001")
            assert cached is not None and cached is not UNAVAILABLE
            await asyncio.to_thread(own.stop)
            lost_at = time.monotonic()
            await until(lambda: cache.health().state != "ready", 5)
            health = cache.health()
            assert health.state == "stale" and health.ready
            assert cache.lookup("org-0000001") is cached  # served from the cache
            assert await cache.fetch("org-0000002") is UNAVAILABLE  # never cached: refused
            await until(lambda: cache.lookup("org-0000001") is UNAVAILABLE, 5)
            assert cache.lookup("org-0000001") is UNAVAILABLE
            assert 1.0 < time.monotonic() - lost_at < 3.0
            assert cache.health().state == "unavailable" and not cache.health().ready
            await asyncio.to_thread(own.start)
            time.monotonic()
            await until(lambda: cache.health().state == "ready", 10)
            assert cache.health().state == "ready"
            assert cache.lookup("org-0000001") is cached  # nothing changed meanwhile: still valid
            # The pool reconnects with its own backoff: misses are answered again within seconds.
            fresh = await cache.fetch("org-0000002")
            for _ in range(50):
                if fresh is not UNAVAILABLE:
                    break
                await asyncio.sleep(0.1)
                fresh = await cache.fetch("org-0000002")
            assert fresh is not None and fresh is not UNAVAILABLE and fresh.id == "org-0000002"
            await cache.close()

        asyncio.run(scenario())


def test_a_bulk_import_is_one_change_for_everything(dsn: str) -> None:
    async def scenario() -> None:
        cache = EntityCache(PostgresStore(dsn, heartbeat=5.0), _fast())
        await cache.start()
        changes: list[RegistryChange] = []
        cache.on_change(changes.append)
        store = PostgresStore(dsn)
        await store.open()
        assert await store.replace_all(list(synthetic_entities(50))) == 50
        await store.close()
        time.monotonic()
        await until(lambda: bool(changes), 3)
        assert changes and changes[0].everything
        entity = await cache.fetch("org-0000049")
        assert entity is not None and entity is not UNAVAILABLE
        await cache.close()

    asyncio.run(scenario())
