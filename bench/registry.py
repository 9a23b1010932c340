"""Registry stores: start time, memory, cache hits against InMemoryRegistry.get, misses, and
change-to-visibility across two store instances; the file store at 100k entities. And the gate
itself on each store: a whole :class:`Runtime` built and started from a configuration naming the
store (the time a ``serve`` process needs before it answers), and a decision on a cache hit
against the same decision with the registry in memory (the file registry's path), interleaved.

Run: ``.venv/bin/python bench/registry.py [--entities 1000000] [--file-entities 100000]``.

PostgreSQL runs in a temporary cluster (tests/support/postgres_server.py), SQLite in a temporary file; both
are filled with synthetic entities (a third with agreements) by the stores' own bulk import (COPY
for PostgreSQL), not timed as start. Hit timings interleave the cache and InMemoryRegistry.get in
the same loop rounds; RSS is measured in this process before and after the cache is filled.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from aidr_gate.facts import Identity, declared_origin
from aidr_gate.gate import Gate, GateState
from aidr_gate.registry import Entity, InMemoryRegistry, load_registry
from aidr_gate.runtime import Runtime
from aidr_gate.stores import MISS, UNAVAILABLE, CacheSettings, EntityCache
from aidr_gate.stores.base import RegistryChange, WritableStore
from aidr_gate.stores.postgres import PostgresStore
from aidr_gate.stores.sqlite import SqliteStore
from support.jwks_server import AUDIENCE, ISSUER, jwks_of, rsa_key
from support.postgres_server import postgres_server
from support.registry_support import entity_id, synthetic_entities, write_yaml_registry


def rss_mb() -> float:
    """This process's resident set, in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


def hit_ns(cache: EntityCache, baseline: InMemoryRegistry, ids: list[str]) -> tuple[float, float]:
    """ns per lookup, cache hit vs InMemoryRegistry.get, best of interleaved rounds."""
    best_cache = best_base = float("inf")
    for _ in range(7):
        start = time.perf_counter_ns()
        for key in ids:
            cache.lookup(key)
        best_cache = min(best_cache, (time.perf_counter_ns() - start) / len(ids))
        start = time.perf_counter_ns()
        for key in ids:
            baseline.get(key)
        best_base = min(best_base, (time.perf_counter_ns() - start) / len(ids))
    return best_cache, best_base


EXAMPLES = Path(__file__).resolve().parent.parent / "policies" / "examples"


async def gate_start(store: str, folder: str) -> tuple[float, Runtime]:
    """Seconds to build and start a Runtime whose registry is *store* (the caller closes it)."""
    config = Path(folder) / f"gate-{abs(hash(store))}.yaml"
    audit = Path(folder) / f"audit-{abs(hash(store))}"
    keys = Path(folder) / "jwks.json"
    keys.write_text(json.dumps(jwks_of(rsa_key("bench"))))
    config.write_text(
        f"policy: aidr-2025-01\ncatalog: {EXAMPLES / 'models.yaml'}\n"
        f"registry:\n  store: {store!r}\n"
        f"identity:\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  algorithms: [RS256]\n"
        f"  key_file: {keys}\n"
        f"audit:\n  directory: {audit}\n  sinks:\n    - {{type: file, path: {audit / 'a.jsonl'}}}\n"
    )
    started = time.perf_counter()
    runtime = await asyncio.to_thread(Runtime.from_config, str(config))
    await runtime.start()
    seconds = time.perf_counter() - started
    assert runtime.registry is not None and runtime.registry.health().state == "ready"
    return seconds, runtime


def decide_ns(
    runtime: Runtime, ids: list[str], countries: dict[str, str]
) -> tuple[float, float, float, list[float]]:
    """ns per decision: the middleware's path on a cache hit (lookup, then decide with the
    entity) vs Gate.decide with the same entities in memory (the file registry's path) over the
    same requests, interleaved round by round: each one's best, and the median and spread of the
    per-round differences."""
    registry = runtime.registry
    assert registry is not None
    cached = runtime.gate
    memory = InMemoryRegistry(
        [e for e in (registry.lookup(k) for k in ids) if isinstance(e, Entity)]
    )
    state = cached.state
    baseline = Gate(GateState(engine=state.engine, registry=memory, catalog=state.catalog))
    requests = [(Identity(k), declared_origin(countries[k])) for k in ids]
    cache_rounds: list[float] = []
    base_rounds: list[float] = []
    for round_ in range(33):
        # Rounds alternate which variant goes first: neither always pays for a cold cache line.
        for variant in (0, 1) if round_ % 2 else (1, 0):
            start = time.perf_counter_ns()
            if variant == 0:
                for identity, origin in requests:
                    entity = registry.lookup(identity.entity_id or "")
                    cached.decide(
                        identity=identity, origin=origin, model_id="aurora-mini", entity=entity
                    )
                cache_rounds.append((time.perf_counter_ns() - start) / len(requests))
            else:
                for identity, origin in requests:
                    baseline.decide(identity=identity, origin=origin, model_id="aurora-mini")
                base_rounds.append((time.perf_counter_ns() - start) / len(requests))
    # The first two rounds warm both paths up: not counted.
    cache_rounds, base_rounds = cache_rounds[2:], base_rounds[2:]
    differences = sorted(c - b for c, b in zip(cache_rounds, base_rounds, strict=True))
    return min(cache_rounds), min(base_rounds), statistics.median(differences), differences


async def measure_gate(label: str, store: str, count: int, folder: str) -> None:
    """The gate on *store*: start end to end, and a decision on a cache hit vs in memory."""
    gc.collect()
    before = rss_mb()
    seconds, runtime = await gate_start(store, folder)
    try:
        registry = runtime.registry
        assert registry is not None
        rng = random.Random(11)
        ids = [entity_id(rng.randrange(count)) for _ in range(5_000)]
        countries = {}
        for key in ids:
            found = await registry.fetch(key)
            assert isinstance(found, Entity)
            countries[key] = found.headquarters or "US"
        cache_ns, base_ns, median, spread = decide_ns(runtime, ids, countries)
        print(
            f"{label:10} {count:>9,} entities: gate start (Runtime from configuration, started, "
            f"registry ready) {seconds:.2f} s (target < 2), RSS {rss_mb() - before:+.0f} MB; "
            f"decide on a cache hit {cache_ns / 1000:.2f} µs vs in memory {base_ns / 1000:.2f} µs "
            f"(best of 31 rounds); per-round difference median {median / 1000:+.3f} µs "
            f"(quartiles {spread[7] / 1000:+.3f} .. {spread[23] / 1000:+.3f}; target < 1)"
        )
    finally:
        await runtime.close()


async def measure(
    label: str,
    factory: Callable[[str], WritableStore],
    target: str,
    count: int,
    edit: object,
) -> None:
    """Start, fill, hit, miss and change timings for one database store."""
    gc.collect()
    before = rss_mb()
    started = time.perf_counter()
    caches = [EntityCache(factory(target), CacheSettings()) for _ in range(2)]
    for cache in caches:
        await cache.start()
    start_s = time.perf_counter() - started
    cache = caches[0]
    rng = random.Random(7)
    misses = []
    sample = [entity_id(rng.randrange(count)) for _ in range(100_000)]
    for key in sample:
        if cache.lookup(key) is not MISS:
            continue  # only real misses are timed
        t = time.perf_counter()
        found = await cache.fetch(key)
        misses.append(time.perf_counter() - t)
        assert found is not UNAVAILABLE
    filled = rss_mb()
    hot = sample[:20_000]
    baseline = InMemoryRegistry(
        [e for e in (cache.lookup(k) for k in hot) if isinstance(e, Entity)]
    )
    cache_ns, base_ns = hit_ns(cache, baseline, hot)
    seen: list[list[float]] = [[], []]
    marks: dict[str, float] = {}
    for index, each in enumerate(caches):

        def record(change: RegistryChange, i: int = index) -> None:
            for key in change.entity_ids or ():
                if key in marks:
                    seen[i].append(time.perf_counter() - marks[key])

        each.on_change(record)
    for round_ in range(50):
        key = entity_id(3 * (round_ + 1))
        marks[key] = time.perf_counter()
        await edit(target, key)  # type: ignore[operator]
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)
    delays = sorted(seen[0] + seen[1])
    for each in caches:
        await each.close()
    p99 = delays[int(len(delays) * 0.99) - 1] if delays else float("nan")
    print(
        f"{label:10} {count:>9,} entities: start {start_s:.2f} s (target < 2); RSS +{filled - before:.0f} MB "
        f"with {cache.health().entries:,} cached (target < +150); hit {cache_ns:.0f} ns vs "
        f"InMemoryRegistry.get {base_ns:.0f} ns (+{(cache_ns - base_ns) / 1000:.3f} µs, target < 1); "
        f"miss p50 {statistics.median(misses) * 1e3:.3f} ms (target < 1); change-to-visibility "
        f"p50 {statistics.median(delays) * 1e3:.0f} ms p99 {p99 * 1e3:.0f} ms over {len(delays)} "
        f"(2 instances; target p99 < 1000)"
    )


def main() -> None:
    """Run every measurement and print one line each."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--entities", type=int, default=1_000_000)
    parser.add_argument("--file-entities", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = write_yaml_registry(Path(folder) / "e.yaml", args.file_entities)
        gc.collect()
        before, started = rss_mb(), time.perf_counter()
        registry = load_registry(path)
        print(f"file       {len(registry):>9,} entities: load {time.perf_counter() - started:.2f} s "
              f"(target < 5), RSS +{rss_mb() - before:.0f} MB (target < +200)")  # fmt: skip
        del registry
        entities = list(synthetic_entities(args.entities))

        async def sqlite_edit(target: str, key: str) -> None:
            import sqlite3

            def run() -> None:
                conn = sqlite3.connect(target)
                with conn:
                    conn.execute("UPDATE entities SET name = name || '.' WHERE id = ?", (key,))
                conn.close()

            await asyncio.to_thread(run)

        async def sqlite_run() -> None:
            target = str(Path(folder) / "r.db")
            store = SqliteStore(target)
            await store.migrate()
            await store.replace_all(entities)
            await store.close()
            await measure("sqlite", SqliteStore, target, args.entities, sqlite_edit)
            await measure_gate("sqlite", f"sqlite:{target}", args.entities, folder)

        asyncio.run(sqlite_run())
        with postgres_server() as server:
            dsn = server.create_database("bench")

            async def pg_edit(target: str, key: str) -> None:
                import psycopg

                async with await psycopg.AsyncConnection.connect(target, autocommit=True) as conn:
                    await conn.execute(
                        "UPDATE aidr_registry.entities SET name = name || '.' WHERE id = %s", (key,)
                    )

            async def pg_run() -> None:
                store = PostgresStore(dsn)
                await store.migrate()
                await store.open()
                loaded = time.perf_counter()
                await store.replace_all(entities)
                print(
                    f"postgres   COPY of {len(entities):,} entities: {time.perf_counter() - loaded:.1f} s"
                )
                await store.close()
                await measure("postgres", PostgresStore, dsn, args.entities, pg_edit)
                await measure_gate("postgres", dsn, args.entities, folder)

            asyncio.run(pg_run())


if __name__ == "__main__":
    main()
