"""The file and SQLite registry stores, the cache in front of them, and the ``registry`` commands."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from aidr_gate.cli import main
from aidr_gate.errors import ConfigError
from aidr_gate.registry import AgreementStatus, Entity, load_registry
from aidr_gate.stores import (
    MISS,
    UNAVAILABLE,
    CacheSettings,
    EntityCache,
    open_store,
    registry_view,
)
from aidr_gate.stores.file import write_registry
from aidr_gate.stores.sqlite import SqliteStore
from support.environment import EXAMPLES
from support.registry_support import (
    synthetic_entities,
    synthetic_entity,
    until,
    write_yaml_registry,
)


def test_the_fast_reader_and_the_reference_reader_agree(tmp_path: Path) -> None:
    from aidr_gate.document import load_document, load_large_document

    path = write_yaml_registry(tmp_path / "e.yaml", 300)
    assert load_large_document(path).data == load_document(path).data
    example = EXAMPLES / "entities.yaml"
    assert load_large_document(example).data == load_document(example).data
    json_path = tmp_path / "e.json"
    write_registry(json_path, list(load_registry(example)))
    assert sorted(load_registry(json_path), key=lambda e: e.id) == sorted(
        load_registry(example), key=lambda e: e.id
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "entities:\n  a: {headquarters: US}\n  a: {headquarters: DE}\n",
            "3: entities.a: key appears",
        ),
        ("entities:\n  a:\n    headquarters: us\n", "3: entities.a.headquarters"),
        ("entities:\n  a: !!python/object:os.system {headquarters: US}\n", "2:"),
        ('entities:\n  a: {headquarters: US, name: "x\x00y"}\n', "not valid YAML"),
    ],
)
def test_large_registry_errors_keep_their_lines(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "e.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_registry(path)
    assert expected in str(caught.value), str(caught.value)


def test_json_duplicate_keys_are_found(tmp_path: Path) -> None:
    path = tmp_path / "e.json"
    path.write_text('{"entities": {"a": {"headquarters": "US"}, "a": {"headquarters": "DE"}}}')
    with pytest.raises(ConfigError, match="key appears more than once"):
        load_registry(path)


def _sqlite(tmp_path: Path, count: int) -> str:
    name = str(tmp_path / "registry.db")
    assert main(["registry", "migrate", name]) == 0
    source = write_yaml_registry(tmp_path / "e.yaml", count)
    assert main(["registry", "import", str(source), name]) == 0
    return name


def test_sqlite_round_trip_and_diff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = _sqlite(tmp_path, 200)
    out = tmp_path / "out.yaml"
    capsys.readouterr()
    assert main(["registry", "export", name]) == 0
    out.write_text(capsys.readouterr().out)
    assert sorted(load_registry(out), key=lambda e: e.id) == list(synthetic_entities(200))
    assert main(["registry", "diff", name, str(out)]) == 0
    write_yaml_registry(tmp_path / "fewer.yaml", 199)
    assert main(["registry", "diff", name, str(tmp_path / "fewer.yaml")]) == 1
    assert "removed: org-0000199" in capsys.readouterr().out
    assert main(["registry", "show", "org-0000003", "--store", name]) == 0
    assert "AG-0000003" in capsys.readouterr().out


def test_sqlite_refuses_what_the_validator_refuses(tmp_path: Path) -> None:
    import sqlite3

    name = _sqlite(tmp_path, 3)
    conn = sqlite3.connect(name)
    conn.execute("PRAGMA foreign_keys=ON")
    for sql in (
        "INSERT INTO entities (id, headquarters) VALUES ('x', 'us')",
        "INSERT INTO agreements (entity_id, id, type, status, countries) "
        "VALUES ('org-0000001', 'a', 'nveu', 'active', '[\"ZZ\"]')",
        "INSERT INTO agreements (entity_id, id, type, status) VALUES ('org-0000001', 'a', 'lease', 'active')",
        "INSERT INTO owners (entity_id, owner_entity, share) VALUES ('org-0000001', 'ghost', 10)",
        "INSERT INTO owners (entity_id, name, share) VALUES ('org-0000001', 'X', 150)",
    ):
        with pytest.raises(sqlite3.IntegrityError), conn:
            conn.execute(sql)
    conn.close()


def test_an_invalid_file_is_not_imported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = _sqlite(tmp_path, 3)
    bad = tmp_path / "bad.yaml"
    bad.write_text("entities:\n  a:\n    headquarters: XX\n")
    assert main(["registry", "import", str(bad), name]) == 2
    assert "bad.yaml:3: entities.a.headquarters" in capsys.readouterr().err


def test_sqlite_cache_sees_a_change_and_coalesces_misses(tmp_path: Path) -> None:
    import sqlite3

    name = _sqlite(tmp_path, 30)

    async def scenario() -> None:
        store = SqliteStore(name, poll_interval=0.05)
        cache = EntityCache(store, CacheSettings(max_entries=10, negative_ttl=60))
        await cache.start()
        assert cache.lookup("org-0000003") is MISS
        reads = []
        original_get = store.get

        async def counted(entity_id: str) -> Entity | None:
            reads.append(entity_id)
            return await original_get(entity_id)

        store.get = counted  # type: ignore[method-assign]
        results = await asyncio.gather(*(cache.fetch("org-0000003") for _ in range(20)))
        assert reads == ["org-0000003"]  # twenty waiters, one read
        assert all(r is results[0] for r in results)
        assert await cache.fetch("nobody") is None
        assert cache.lookup("nobody") is None  # negative-cached
        for index in range(20):  # bounded
            await cache.fetch(f"org-{index:07d}")
        assert cache.health().entries == 10
        changed: list[object] = []
        cache.on_change(changed.append)
        conn = sqlite3.connect(name)
        with conn:
            conn.execute(
                "UPDATE agreements SET status = 'suspended' WHERE entity_id = 'org-0000018'"
            )
        conn.close()
        time.monotonic()
        await until(lambda: bool(changed), 3)
        assert changed
        assert cache.lookup("org-0000018") is MISS
        again = await cache.fetch("org-0000018")
        assert again is not None and again is not UNAVAILABLE
        assert again.agreements[0].status is AgreementStatus.SUSPENDED
        await cache.close()

    asyncio.run(scenario())


def test_the_file_store_reloads_and_names_what_changed(tmp_path: Path) -> None:
    path = write_yaml_registry(tmp_path / "e.yaml", 20)

    async def scenario() -> None:
        store = open_store(str(path))
        view = registry_view(store)
        await view.start()
        assert view.lookup("org-0000001") == synthetic_entity(1)
        assert view.lookup("nobody") is None
        first = view.revision
        changed: list[object] = []
        view.on_change(changed.append)
        entities = list(synthetic_entities(20))
        entities[5] = synthetic_entity(6).__class__(id=entities[5].id, headquarters="DE")
        write_registry(path, entities)
        time.monotonic()
        await until(lambda: bool(changed), 5)
        assert [c.entity_ids for c in changed] == [frozenset({"org-0000005"})]  # type: ignore[attr-defined]
        assert view.revision != first
        found = view.lookup("org-0000005")
        assert isinstance(found, Entity) and found.headquarters == "DE"
        path.write_text(
            "entities:\n  a: {headquarters: nowhere}\n"
        )  # a bad edit: kept the last good
        await asyncio.sleep(1.5)
        assert view.lookup("org-0000005") == found
        await view.close()

    asyncio.run(scenario())
