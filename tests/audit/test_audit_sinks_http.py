"""HTTP delivery to a collector on 127.0.0.1 that is down for a while: every record once, in order."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from aidr_gate.audit import AuditTrail, HttpSinkConfig
from aidr_gate.audit.sinks.http import record_id
from aidr_gate.settings.audit import DeliveryConfig
from support.audit_support import (
    TOKEN,
    event,
    file_config,
    free_port,
    records,
    self_signed_certificate,
)

FAST_RETRY = DeliveryConfig(retries=2, backoff_base=0.02, backoff_max=0.1, batch_size=50)


class Collector:
    """A Splunk HEC / Elasticsearch bulk stand-in: a real aiohttp server that records what arrives."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.hec: list[dict[str, Any]] = []
        self.es: dict[str, dict[str, Any]] = {}
        self.es_order: list[str] = []
        self.fail_next = 0  # answer 503 to this many requests
        self.lose_response_next = 0  # store the batch, then answer 500 (a lost response)
        self.headers: list[dict[str, str]] = []
        self.raw: list[bytes] = []
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/services/collector/event", self._hec)
        app.router.add_post("/_bulk", self._bulk)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _hec(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.raw.append(body)
        self.headers.append(dict(request.headers))
        if self.fail_next:
            self.fail_next -= 1
            return web.json_response({"text": "busy", "code": 9}, status=503)
        for line in body.splitlines():
            self.hec.append(orjson.loads(line))
        return web.json_response({"text": "Success", "code": 0})

    async def _bulk(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.raw.append(body)
        if self.fail_next:
            self.fail_next -= 1
            return web.json_response({"error": "unavailable"}, status=503)
        lines = body.splitlines()
        items = []
        for action_line, doc_line in zip(lines[::2], lines[1::2], strict=True):
            action = orjson.loads(action_line)["create"]
            doc_id = action["_id"]
            if doc_id in self.es:
                items.append({"create": {"_id": doc_id, "status": 409}})
                continue
            self.es[doc_id] = orjson.loads(doc_line)
            self.es_order.append(doc_id)
            items.append({"create": {"_id": doc_id, "status": 201}})
        if self.lose_response_next:
            self.lose_response_next -= 1
            return web.Response(status=500, text="stored, but the answer got lost")
        errors = any(i["create"]["status"] >= 300 for i in items)
        return web.json_response({"took": 1, "errors": errors, "items": items})


def hec_sink(port: int, **kwargs: Any) -> HttpSinkConfig:
    return HttpSinkConfig(
        name="splunk",
        format="hec",
        url=f"http://127.0.0.1:{port}/services/collector/event",
        delivery=FAST_RETRY,
        **kwargs,
    )


def es_sink(port: int) -> HttpSinkConfig:
    return HttpSinkConfig(
        name="elastic",
        format="elasticsearch",
        url=f"http://127.0.0.1:{port}",
        index="aidr-audit",
        delivery=FAST_RETRY,
    )


async def wait_until(predicate: Any, limit: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


def seqs(docs: list[dict[str, Any]]) -> list[int]:
    return [int(d["chain"]["seq"]) for d in docs]


def test_collector_down_then_back_gets_every_record_once_in_order(tmp_path: Path) -> None:
    port = free_port()
    token_file = tmp_path / "hec-token"
    token_file.write_text("11111111-2222-3333-4444-555555555555\n")
    collector = Collector(port)

    async def run() -> None:
        sink = hec_sink(port, token_file=token_file, index="audit")
        trail = AuditTrail(file_config(tmp_path / "audit", sinks=(sink, es_sink(port))))
        await trail.start()
        for index in range(60):  # the collector is not listening yet
            trail.submit(event(index))
            await asyncio.sleep(0.002)
        await wait_until(lambda: all(s.state == "down" for s in trail.stats().sinks[1:]))
        await trail.drain()
        assert trail.stats().sinks[1].spooled > 0
        await collector.start()  # back up: spooled first, then new records, in order
        collector.fail_next = 2  # and flaky for two more requests
        for index in range(60, 100):
            trail.submit(event(index))
        await trail.drain(sinks=True)
        for stats in trail.stats().sinks[1:]:
            assert (stats.delivered, stats.pending, stats.lost) == (100, 0, 0), stats
            assert stats.state == "up"
        await trail.close(5)
        await collector.stop()

    asyncio.run(run())
    journal = records([tmp_path / "audit" / "audit.jsonl"])
    assert seqs([r["event"] for r in collector.hec]) == seqs(journal) == list(range(100))
    assert [r["event"] for r in collector.hec] == journal
    assert all(r["sourcetype"] == "_json" and r["index"] == "audit" for r in collector.hec)
    assert collector.headers[0]["Authorization"] == "Splunk 11111111-2222-3333-4444-555555555555"
    es_docs = [collector.es[i] for i in collector.es_order]
    assert es_docs == journal
    assert collector.es_order == [r["chain"]["hash"] for r in journal]


def test_spooled_records_survive_a_restart_exactly_once(tmp_path: Path) -> None:
    port = free_port()
    collector = Collector(port)
    directory = tmp_path / "audit"

    async def first() -> None:
        trail = AuditTrail(file_config(directory, sinks=(hec_sink(port),)))
        await trail.start()
        for index in range(30):
            trail.submit(event(index))
        await wait_until(lambda: trail.stats().sinks[1].state == "down")
        await trail.close(0.3)  # still down: what is left is kept for the next start

    async def second() -> None:
        await collector.start()
        trail = AuditTrail(file_config(directory, sinks=(hec_sink(port),)))
        await trail.start()
        for index in range(30, 40):
            trail.submit(event(index))
        await trail.drain(sinks=True)
        assert trail.stats().sinks[1].delivered == 40
        await trail.close(5)
        # A third start must not deliver anything again.
        again = AuditTrail(file_config(directory, sinks=(hec_sink(port),)))
        await again.start()
        await again.drain(sinks=True)
        assert again.stats().sinks[1].delivered == 0
        await again.close(5)
        await collector.stop()

    asyncio.run(first())
    asyncio.run(second())
    assert seqs([r["event"] for r in collector.hec]) == list(range(40))


def test_a_lost_bulk_response_does_not_duplicate(tmp_path: Path) -> None:
    port = free_port()
    collector = Collector(port)

    async def run() -> None:
        await collector.start()
        collector.lose_response_next = 1
        trail = AuditTrail(file_config(tmp_path / "audit", sinks=(es_sink(port),)))
        await trail.start()
        await asyncio.gather(*(trail.submit(event(i)) for i in range(20)))
        await trail.drain(sinks=True)
        stats = trail.stats().sinks[1]
        assert (stats.delivered, stats.failures) == (20, 1)
        await trail.close(5)
        await collector.stop()

    asyncio.run(run())
    assert len(collector.raw) == 2  # the batch was sent twice ...
    assert len(collector.es) == 20  # ... and stored once: create by _id
    assert seqs([collector.es[i] for i in collector.es_order]) == list(range(20))


def test_a_new_sink_starts_from_now_and_a_crashed_one_catches_up(tmp_path: Path) -> None:
    """After a crash, records a sink held only in memory are re-sent from the journal."""
    port = free_port()
    collector = Collector(port)
    directory = tmp_path / "audit"

    async def run() -> None:
        plain = AuditTrail(file_config(directory))
        await plain.start()
        await asyncio.gather(*(plain.submit(event(i)) for i in range(10)))
        await plain.close(5)
        await collector.start()
        trail = AuditTrail(file_config(directory, sinks=(hec_sink(port),)))
        await trail.start()  # a new sink: history before it is not sent
        await asyncio.gather(*(trail.submit(event(i)) for i in range(10, 15)))
        await trail.drain(sinks=True)
        # Simulate a crash: the cursor falls behind what the journal holds.
        cursor = directory / "spool" / "splunk" / "cursor"
        await trail.close(5)
        cursor.write_text("11\n")
        collector.hec.clear()
        restarted = AuditTrail(file_config(directory, sinks=(hec_sink(port),)))
        await restarted.start()
        await restarted.drain(sinks=True)
        await restarted.close(5)
        await collector.stop()

    asyncio.run(run())
    assert seqs([r["event"] for r in collector.hec]) == [12, 13, 14]


def test_rejected_records_are_counted_not_retried_forever(tmp_path: Path) -> None:
    port = free_port()

    async def refuse(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"text": "Invalid data format", "code": 6}, status=400)

    async def run() -> None:
        app = web.Application()
        app.router.add_post("/services/collector/event", refuse)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        trail = AuditTrail(file_config(tmp_path / "audit", sinks=(hec_sink(port),)))
        await trail.start()
        await asyncio.gather(*(trail.submit(event(i)) for i in range(5)))
        await trail.drain(sinks=True)
        stats = trail.stats().sinks[1]
        assert (stats.rejected, stats.pending) == (5, 0)
        await trail.close(5)
        await runner.cleanup()

    asyncio.run(run())


@pytest.mark.parametrize("fmt", ["hec", "elasticsearch"])
def test_no_token_reaches_the_collector(tmp_path: Path, fmt: str) -> None:
    port = free_port()
    collector = Collector(port)
    headers = (
        ("authorization", f"Bearer {TOKEN}"),
        ("cookie", f"s={TOKEN}"),
        ("x-api-key", TOKEN),
        ("x-custom-secret", TOKEN),
        ("user-agent", "pytest"),
    )

    async def run() -> None:
        await collector.start()
        sink = hec_sink(port) if fmt == "hec" else es_sink(port)
        config = file_config(
            tmp_path / "audit", sinks=(sink,), headers=("authorization", "user-agent")
        )
        trail = AuditTrail(config)
        await trail.start()
        await asyncio.gather(
            *(trail.submit(event(i, headers=headers, path=f"/v1?token={TOKEN}")) for i in range(5))
        )
        await trail.drain(sinks=True)
        await trail.close(5)
        await collector.stop()

    asyncio.run(run())
    sent = b"".join(collector.raw)
    assert len(sent) > 1000
    assert TOKEN.encode() not in sent
    assert b"pytest" in sent


def test_record_id_is_the_chain_hash() -> None:
    from aidr_gate.audit.chain import Chain

    line = Chain().link(b'{"a":1}')
    assert record_id(line).decode() == orjson.loads(line)["chain"]["hash"]


def test_https_collector_with_a_private_ca(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    port = free_port()
    collector = Collector(port)

    async def run() -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        app = web.Application()
        app.router.add_post("/services/collector/event", collector._hec)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
        sink = HttpSinkConfig(
            name="splunk",
            format="hec",
            url=f"https://127.0.0.1:{port}/services/collector/event",
            ca_file=cert,
            delivery=FAST_RETRY,
        )
        trail = AuditTrail(file_config(tmp_path / "audit", sinks=(sink,)))
        await trail.start()
        await asyncio.gather(*(trail.submit(event(i)) for i in range(12)))
        await trail.drain(sinks=True)
        assert trail.stats().sinks[1].delivered == 12
        await trail.close(5)
        await runner.cleanup()

    asyncio.run(run())
    assert seqs([r["event"] for r in collector.hec]) == list(range(12))
