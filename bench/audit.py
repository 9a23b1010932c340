"""Audit trail throughput: chained records into the file sink vs the same records as plain JSON lines.

Run: ``.venv/bin/python bench/audit.py [--records N] [--rounds R]``. Every case runs in the same
process, on the same pre-built decisions, into files in a temporary directory; each is repeated
*R* times, alternating, and the best run is kept (the machine may be shared):

- writer, plain:  render each event (ECS), add a newline, write batches from one I/O thread;
- trail, plain:   the real ``AuditTrail`` (queue, futures, I/O thread, journal) with the chain step
                  replaced by a newline: the same records as plain JSON lines through the same path;
- trail, chained: the real ``AuditTrail``: render, link into the hash chain, write;
- the same with an fsync after every record (one request at a time, each awaiting durability),
  and ``fsync: always`` under concurrent submitters (group commit).

Prints records per second, CPU µs per record, and the ratios. Bounded: about a minute in all.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aidr_gate.audit import (
    AuditEvent,
    AuditTrail,
    EcsRenderer,
    Ending,
    OcsfRenderer,
    Redactor,
    RequestContext,
)
from aidr_gate.audit.chain import Chain
from aidr_gate.facts import AnonymizerFlag, CountrySource, Identity, Origin
from aidr_gate.gate import Gate
from aidr_gate.settings.audit import AuditConfig, FileSinkConfig, FsyncPolicy

ENTITIES = ["lab-us", "sakura-jp", "merlion-sg", "andes-br", "lumen-in", "oasis-ae", "unknown-co"]
COUNTRIES = ["US", "JP", "SG", "BR", "IN", "AE", "CN", "DE"]
MODELS = ["aurora-frontier", "aurora-mini", "llama-3.1-405b", "open-giant", "nope-model"]


def build_events(count: int) -> list[AuditEvent]:
    """Distinct decisions over a spread of entities, countries and models.

    As in a serving gate, where the token cache hands out one ``Identity`` per token and the origin
    resolver one ``Origin`` per client address, callers and addresses repeat: 679 callers, 1,000
    addresses. Every decision, id and timestamp is distinct.
    """
    gate = Gate.from_path(None)
    events = []
    identities: dict[tuple[str, str], Identity] = {}
    origins: dict[str, Origin] = {}
    for i in range(count):
        entity, subject = ENTITIES[i % len(ENTITIES)], f"svc-{i % 97}"
        identity = identities.get((entity, subject))
        if identity is None:
            identity = identities[entity, subject] = Identity(
                entity_id=entity,
                subject=subject,
                issuer="https://idp.example",
                key_id="key-1",
                algorithm="RS256",
            )
        ip = f"198.51.{i % 200}.{i % 250}"
        origin = origins.get(ip)
        if origin is None:
            origin = origins[ip] = Origin(
                ip=ip,
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


class NewlineChain(Chain):
    """Counts sequence numbers like the chain but links nothing: each body just gets a newline."""

    def extend(self, out: list[bytes | memoryview], bodies: Sequence[bytes]) -> None:
        for body in bodies:
            out += (body, b"\n")
        self.next_seq += len(bodies)


class PlainTrail(AuditTrail):
    """The same trail with the chain step replaced by a newline: the baseline for chaining's cost."""

    async def start(self) -> None:
        await super().start()
        # The writer thread has no batch yet: its first batch already links with this chain.
        self.writer.chain = NewlineChain(self.chain.next_seq)


def _write_all(fd: int, data: bytes, sync: bool) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    if sync:
        os.fdatasync(fd)


async def writer(events: list[AuditEvent], path: Path, batch: int, sync_each: bool) -> float:
    """The bare baseline: render, newline, write in batches from one I/O thread; records/s."""
    renderer = EcsRenderer(Redactor())
    loop = asyncio.get_running_loop()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    io = ThreadPoolExecutor(1)
    jobs: list[asyncio.Future[None]] = []
    start = time.perf_counter()
    for offset in range(0, len(events), batch):
        pieces: list[bytes] = []
        for event in events[offset : offset + batch]:
            pieces += (renderer.render(event), b"\n")
        jobs.append(loop.run_in_executor(io, _write_all, fd, b"".join(pieces), sync_each))
        if len(jobs) >= 4:
            await jobs.pop(0)
    for job in jobs:
        await job
    elapsed = time.perf_counter() - start
    os.close(fd)
    io.shutdown()
    return len(events) / elapsed


async def trail(
    kind: type[AuditTrail],
    events: list[AuditEvent],
    directory: Path,
    fsync: FsyncPolicy,
    batch: int,
    sequential: bool,
) -> float:
    """The trail into its file sink; records/s."""
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
    audit = kind(config)
    await audit.start()
    start = time.perf_counter()
    if sequential:  # one request at a time, each awaiting its record's durability
        for event in events:
            await audit.submit(event)
    else:
        window = config.queue_size // 2
        for offset in range(0, len(events), window):
            last = None
            for event in events[offset : offset + window]:
                last = audit.submit(event)
            if last is not None:
                await last  # futures resolve in order: the last one means all
    elapsed = time.perf_counter() - start
    lost = audit.lost
    await audit.close(30)
    if lost:
        sys.exit(f"the trail lost {lost} records: the benchmark is void")
    return len(events) / elapsed


def _linked(chain: Chain, renderer: EcsRenderer, events: list[AuditEvent]) -> None:
    """As the trail does: render a run of 64, link the run into the batch, join the batch."""
    for run in range(0, len(events), 64):
        pieces: list[bytes | memoryview] = []
        chain.extend(pieces, [renderer.render(event) for event in events[run : run + 64]])
        b"".join(pieces)


def core(events: list[AuditEvent]) -> tuple[float, float]:
    """Single-thread cost per record in µs: render+newline, and render+link (best of 3 each).

    A first pass warms the renderer's caches; then the two alternate, so neither runs colder.
    """
    renderer = EcsRenderer(Redactor())
    _linked(NewlineChain(), renderer, events)
    best: dict[type[Chain], float] = {}
    for _ in range(3):
        for kind in (NewlineChain, Chain):
            start = time.perf_counter()
            _linked(kind(), renderer, events)
            spent = (time.perf_counter() - start) / len(events) * 1e6
            best[kind] = min(best.get(kind, spent), spent)
    return best[NewlineChain], best[Chain]


Case = tuple[int, Callable[[], Awaitable[float]]]


def _cases(
    root: Path, events: list[AuditEvent], synced: list[AuditEvent], group: list[AuditEvent]
) -> dict[str, Case]:
    root.mkdir(parents=True, exist_ok=True)
    never, always = FsyncPolicy.NEVER, FsyncPolicy.ALWAYS
    return {
        "writer, plain": (len(events), lambda: writer(events, root / "w", 512, False)),
        "trail, plain": (
            len(events),
            lambda: trail(PlainTrail, events, root / "p", never, 512, False),
        ),
        "trail, chained": (
            len(events),
            lambda: trail(AuditTrail, events, root / "c", never, 512, False),
        ),
        "writer, plain, fsync per record": (
            len(synced),
            lambda: writer(synced, root / "ws", 1, True),
        ),
        "trail, plain, fsync per record": (
            len(synced),
            lambda: trail(PlainTrail, synced, root / "ps", always, 1, True),
        ),
        "trail, chained, fsync per record": (
            len(synced),
            lambda: trail(AuditTrail, synced, root / "cs", always, 1, True),
        ),
        "trail, chained, fsync always, concurrent": (
            len(group),
            lambda: trail(AuditTrail, group, root / "cg", always, 512, False),
        ),
    }


async def main() -> None:
    """Run every case and print the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=30_000)
    parser.add_argument("--fsync-records", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=5, help="runs per case")
    args = parser.parse_args()
    events = build_events(args.records)
    synced = events[: args.fsync_records]
    group = events[: min(len(events), 20_000)]
    print(f"{len(events)} events; {os.cpu_count()} CPUs")
    record_sizes(events)
    compression(events[:20_000])
    await loop_cost(events[:5_000], args.rounds)
    await overload(events[:10_000])
    render_us, link_us = core(events[:10_000])
    print(f"single thread: render {render_us:.1f} µs/record, render+chain {link_us:.1f} µs/record")
    rates: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for r in range(args.rounds):
            for name, (count, case) in _cases(root / str(r), events, synced, group).items():
                cpu = time.process_time()
                rate = await case()
                rates.setdefault(name, []).append(rate)
                cpus.setdefault(name, []).append((time.process_time() - cpu) / count * 1e6)
    width = max(len(n) for n in rates)
    print(f"{'case':<{width}}  {'best':>9}  {'median':>9}  records/s   µs CPU/record (best)")
    for name in rates:
        print(
            f"{name:<{width}}  {max(rates[name]):>9,.0f}  {statistics.median(rates[name]):>9,.0f}"
            f"              {min(cpus[name]):6.1f}"
        )

    def ratio(base: str, other: str, table: dict[str, list[float]]) -> float:
        # Each round's two runs ran back to back, under the same load: compare within rounds.
        return statistics.median(b / o for b, o in zip(table[base], table[other], strict=True))

    chained = max(rates["trail, chained"])
    print(
        "chaining cost, no fsync:      "
        f"{ratio('trail, plain', 'trail, chained', rates) - 1:+.1%} throughput, "
        f"{ratio('trail, chained', 'trail, plain', cpus) - 1:+.1%} CPU "
        f"(median of rounds); chained {chained:,.0f} records/s"
    )
    print(
        "chaining cost, fsync/record:  "
        f"{ratio('trail, plain, fsync per record', 'trail, chained, fsync per record', rates) - 1:+.1%}"
        " throughput"
    )
    print(
        "trail vs bare writer (queue, futures, journal; no chain): "
        f"{ratio('writer, plain', 'trail, plain', rates) - 1:+.1%} throughput"
    )


# The headers a client sends (wrk's, the middleware bench's load): none of them is recorded.
RAW_HEADERS = [
    (b"host", b"127.0.0.1:8000"),
    (b"authorization", b"Bearer eyJhbGciOiJFZERTQSJ9.eyJpc3MiOiJodHRwczovL2lkcCJ9.c2ln"),
    (b"content-type", b"application/json"),
    (b"content-length", b"98"),
]


async def _loop_pass(audit: AuditTrail | None, events: list[AuditEvent], count: int) -> float:
    """Event-loop CPU µs per request of what the middleware does for its record (the allowed
    headers, the context, ``Runtime.record``), yielding to the loop every 8 requests."""
    from aidr_gate.runtime import Runtime

    runtime = Runtime.__new__(Runtime)  # only its recorded_headers() and record() are used
    runtime.audit = audit
    started = time.thread_time()
    for i in range(count):
        decision = events[i % len(events)].decision
        context = RequestContext(
            "POST",
            "/v1/chat/completions",
            "http",
            "1.1",
            runtime.recorded_headers(RAW_HEADERS),
            200,
            200,
            850_000,
            42,
        )
        await runtime.record(decision, context)
        if i % 8 == 7:
            await asyncio.sleep(0)
    return (time.thread_time() - started) / count * 1e6


async def loop_cost(events: list[AuditEvent], rounds: int) -> None:
    """What a record costs the event loop itself, in-process: the trail (default file journal,
    ``fsync: interval``, its writer thread running) against none, interleaved rounds, median of
    the per-round differences. Only the loop's own work: bench/middleware.py measures a server."""
    differences = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(max(3, rounds)):
            directory = Path(tmp) / str(r)
            config = AuditConfig(
                directory=directory,
                sinks=(FileSinkConfig(name="file", path=directory / "audit.jsonl"),),
            )
            audit = AuditTrail(config)
            await audit.start()
            await _loop_pass(audit, events, 2_000)  # warm
            with_trail = await _loop_pass(audit, events, 20_000)
            await audit.close(30)
            without = await _loop_pass(None, events, 20_000)
            differences.append(with_trail - without)
    median = statistics.median(differences)
    print(
        f"event loop per record, in-process (headers, context, Runtime.record; writer running): "
        f"+{median:.2f} µs (rounds {min(differences):.2f} .. {max(differences):.2f})   "
        f"target <= 10   {'OK' if median <= 10 else 'MISSED'}"
    )


async def overload(events: list[AuditEvent]) -> None:
    """Records arriving far faster than a slow disk takes them, under ``on_failure: deny``,
    through the runtime's own path (``Runtime.record``), all at once: while the queue is full new
    requests are refused (the middleware answers 503 and records the refusal too), and every
    request already admitted waits for its record. Nothing may be lost."""
    from aidr_gate.runtime import Runtime

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        config = AuditConfig(
            directory=directory,
            sinks=(FileSinkConfig(name="file", path=directory / "audit.jsonl"),),
            queue_size=256,
            batch_size=64,
        )
        audit = AuditTrail(config)
        store = audit.stores.store

        def slow_disk(
            data: bytes, lines: int, first: int, position: tuple[int, str] | None
        ) -> bool:
            time.sleep(0.002)  # 2 ms a batch of at most 64: about 30,000 records/s at best
            return store(data, lines, first, position)

        audit.stores.store = slow_disk  # type: ignore[method-assign]
        runtime = Runtime.__new__(Runtime)  # only its record() path is used here
        runtime.audit = audit
        await audit.start()
        refused = 0

        async def request(event: AuditEvent) -> None:
            nonlocal refused
            if not audit.accepting:
                refused += 1
            assert event.request is not None
            await runtime.record(event.decision, event.request)

        await asyncio.gather(*(request(e) for e in events))
        await audit.close(60)
        lost = audit.stats().lost
        print(
            f"overload under on_failure deny: {len(events)} requests at once, queue of "
            f"{config.queue_size}: {refused} refused while it was full, {audit.written} written, "
            f"{lost} lost   target 0 lost   {'OK' if lost == 0 else 'MISSED'}"
        )


def record_sizes(events: list[AuditEvent]) -> None:
    """The median line (chain member and newline included) of an allowed request, each format,
    over a journal's worth of records: the first of each class in a file carries its facts."""
    for renderer in (EcsRenderer(Redactor()), OcsfRenderer(Redactor())):
        chain = Chain()
        allowed = sorted(len(chain.link(renderer.render(e))) for e in events if e.decision.allowed)
        median = allowed[len(allowed) // 2]
        print(
            f"record size, {renderer.name}: median {median} bytes for an allowed request "
            f"(largest {allowed[-1]}: a class's first record, with its facts)   target <= 1200   "
            f"{'OK' if median <= 1200 else 'MISSED'}"
        )


def compression(events: list[AuditEvent]) -> None:
    """CPU per record of compressing a rotated file, each codec at level 1 (and gzip 9, the old
    default), timed on the compressing thread itself."""
    from aidr_gate.audit.compression import compress_file

    renderer = EcsRenderer(Redactor())
    pieces: list[bytes | memoryview] = []
    Chain().extend(pieces, [renderer.render(e) for e in events])
    data = b"".join(pieces)
    with tempfile.TemporaryDirectory() as tmp:
        for codec, level in (("zstd", 1), ("gzip", 1), ("gzip", 9)):
            path = Path(tmp) / f"audit-{codec}{level}.jsonl"
            path.write_bytes(data)
            started = time.thread_time()
            packed = compress_file(path, codec, level)
            used = (time.thread_time() - started) / len(events) * 1e6
            ratio = len(data) / packed.stat().st_size
            mark = (
                ("   the default: target <= 2 µs   " + ("OK" if used <= 2 else "MISSED"))
                if (codec, level) == ("zstd", 1)
                else ""
            )
            print(
                f"rotation compression, {codec} {level}: {used:.2f} µs/record, {ratio:.1f}x{mark}"
            )


if __name__ == "__main__":
    asyncio.run(main())
