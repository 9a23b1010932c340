"""Audit trail throughput: chained records into the file sink vs the same records as plain JSON lines.

Run: ``.venv/bin/python bench/audit.py [--records N]``. Everything is measured in the same run, on
the same pre-built decisions, into files in a temporary directory:

- plain:   render each event (ECS), append a newline, write in batches from one I/O thread;
- chained: the real ``AuditTrail`` (render, link into the hash chain, write, resolve futures);
- with fsync per record: the same two, each record forced to disk before the next.

Prints records per second and the ratios. Bounded: a few seconds per case.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aidr_gate.audit import AuditEvent, AuditTrail, EcsRenderer, Ending, Redactor, RequestContext
from aidr_gate.audit.chain import Chain
from aidr_gate.audit.config import AuditConfig, FileSinkConfig, FsyncPolicy
from aidr_gate.facts import AnonymizerFlag, CountrySource, Identity, Origin
from aidr_gate.gate import Gate

ENTITIES = ["lab-us", "sakura-jp", "merlion-sg", "andes-br", "lumen-in", "oasis-ae", "unknown-co"]
COUNTRIES = ["US", "JP", "SG", "BR", "IN", "AE", "CN", "DE"]
MODELS = ["aurora-frontier", "aurora-mini", "llama-3.1-405b", "open-giant", "nope-model"]


def build_events(count: int) -> list[AuditEvent]:
    """Distinct decisions over a spread of entities, countries and models."""
    gate = Gate.from_path(None)
    events = []
    for i in range(count):
        identity = Identity(
            entity_id=ENTITIES[i % len(ENTITIES)],
            subject=f"svc-{i % 97}",
            issuer="https://idp.example",
            key_id="key-1",
            algorithm="RS256",
        )
        origin = Origin(
            ip=f"198.51.{i % 200}.{i % 250}",
            resolved_by="x-forwarded-for[-1]",
            peer="10.0.0.2",
            country=COUNTRIES[i % len(COUNTRIES)],
            country_source=CountrySource.GEOIP,
            anonymizer=frozenset({AnonymizerFlag.VPN}) if i % 13 == 0 else frozenset(),
            database="GeoIP2-Country",
            database_build="2025-06-03",
        )
        decision = gate.decide(identity=identity, origin=origin, model_id=MODELS[i % len(MODELS)])
        request = RequestContext(
            method="POST",
            path="/v1/chat/completions",
            headers=(("user-agent", "openai-python/1.52"), ("x-request-id", f"req-{i}")),
            status=decision.status or 200,
            upstream_status=200 if decision.allowed else None,
            upstream_duration_us=850_000 if decision.allowed else None,
            gate_us=42,
            ending=Ending.COMPLETED if decision.allowed else Ending.DENIED,
            body_bytes=512,
        )
        events.append(AuditEvent(decision, request))
    return events


def _write_all(fd: int, data: bytes, sync: bool) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    if sync:
        os.fdatasync(fd)


async def plain(events: list[AuditEvent], path: Path, batch: int, sync_each: bool) -> float:
    """The baseline: render, newline, write in batches from one I/O thread; records per second."""
    renderer = EcsRenderer(Redactor())
    loop = asyncio.get_running_loop()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    io = ThreadPoolExecutor(1)
    jobs: list[asyncio.Future[None]] = []
    start = time.perf_counter()
    for offset in range(0, len(events), batch):
        lines = [renderer.render(e) + b"\n" for e in events[offset : offset + batch]]
        jobs.append(loop.run_in_executor(io, _write_all, fd, b"".join(lines), sync_each))
        if len(jobs) >= 4:
            await jobs.pop(0)
    for job in jobs:
        await job
    elapsed = time.perf_counter() - start
    os.close(fd)
    io.shutdown()
    return len(events) / elapsed


async def chained(
    events: list[AuditEvent], directory: Path, fsync: FsyncPolicy, batch: int, sequential: bool
) -> float:
    """The real trail into its file sink; records per second."""
    config = AuditConfig(
        directory=directory,
        sinks=(
            FileSinkConfig(
                name="file",
                path=directory / "audit.jsonl",
                max_bytes=1 << 40,
                rotate_seconds=None,
                fsync=fsync,
            ),
        ),
        batch_size=batch,
        queue_size=20_000,
    )
    trail = AuditTrail(config)
    await trail.start()
    start = time.perf_counter()
    if sequential:  # one request at a time, each awaiting its record's durability
        for event in events:
            await trail.submit(event)
    else:
        window = config.queue_size // 2
        for offset in range(0, len(events), window):
            last = None
            for event in events[offset : offset + window]:
                last = trail.submit(event)
            if last is not None:
                await last  # futures resolve in order: the last one means all
    elapsed = time.perf_counter() - start
    lost = trail.lost
    await trail.close(30)
    if lost:
        sys.exit(f"the trail lost {lost} records: the benchmark is void")
    return len(events) / elapsed


def core(events: list[AuditEvent]) -> tuple[float, float]:
    """Single-thread cost per record in µs: render+newline, and render+link."""
    renderer = EcsRenderer(Redactor())
    start = time.perf_counter()
    for event in events:
        renderer.render(event) + b"\n"
    middle = time.perf_counter()
    chain = Chain()
    for event in events:
        chain.link(renderer.render(event))
    end = time.perf_counter()
    n = len(events)
    return (middle - start) / n * 1e6, (end - middle) / n * 1e6


async def main() -> None:
    """Run every case and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=60_000)
    parser.add_argument("--fsync-records", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3, help="best of N rounds per case")
    args = parser.parse_args()
    events = build_events(args.records)
    synced = events[: args.fsync_records]
    print(f"{len(events)} events built; record size ~{len(EcsRenderer().render(events[0]))} bytes")
    render_us, link_us = core(events[:20_000])
    print(f"single thread: render {render_us:.1f} µs/record, render+chain {link_us:.1f} µs/record")
    best: dict[str, float] = {}
    best_cpu: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for round_ in range(args.rounds):
            cases = {
                "plain": lambda r=round_: plain(events, root / f"plain{r}.jsonl", 512, False),
                "chained": lambda r=round_: chained(
                    events, root / f"chained{r}", FsyncPolicy.NEVER, 512, False
                ),
                "plain, fsync per record": lambda r=round_: plain(
                    synced, root / f"plain-sync{r}.jsonl", 1, True
                ),
                "chained, fsync per record": lambda r=round_: chained(
                    synced, root / f"chained-sync{r}", FsyncPolicy.ALWAYS, 1, True
                ),
                "chained, fsync always, concurrent (group commit)": lambda r=round_: chained(
                    events[:20_000], root / f"chained-group{r}", FsyncPolicy.ALWAYS, 512, False
                ),
            }
            for name, case in cases.items():
                cpu = time.process_time()
                rate = await case()
                cpu_us = (
                    (time.process_time() - cpu)
                    / (
                        len(synced)
                        if "per record" in name
                        else (20_000 if "group" in name else len(events))
                    )
                    * 1e6
                )
                best[name] = max(best.get(name, 0.0), rate)
                best_cpu[name] = min(best_cpu.get(name, 1e9), cpu_us)
    width = max(len(n) for n in best)
    for name, rate in best.items():
        print(f"{name:<{width}}  {rate:>10,.0f} records/s  {best_cpu[name]:6.1f} µs CPU/record")
    print(
        f"chaining overhead, no fsync:    {best['plain'] / best['chained'] - 1:+.1%} "
        f"(target < +25%; chained {best['chained']:,.0f}/s, target >= 50,000/s)"
    )
    print(
        "chaining overhead, fsync/record: "
        f"{best['plain, fsync per record'] / best['chained, fsync per record'] - 1:+.1%}"
    )


if __name__ == "__main__":
    asyncio.run(main())
