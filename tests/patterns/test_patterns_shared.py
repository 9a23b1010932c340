"""Pattern state shared by replicas through a real Redis (started by the test on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from aidr_gate.facts import AnonymizerFlag, CountrySource, Identity, Origin
from aidr_gate.patterns.settings import PatternSettings, RedisSettings
from aidr_gate.patterns.shared import SharedState
from aidr_gate.patterns.tracker import PatternTracker
from aidr_gate.telemetry import Telemetry
from support.redis_server import RedisServer, redis_server

WANTED = ("origin_countries_1m", "entity_anonymizer_share_1h", "network_entities_1h")


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def replica(server: RedisServer, prefix: str, name: str) -> tuple[PatternTracker, SharedState]:
    tracker = PatternTracker(PatternSettings(), wanted=WANTED)
    settings = RedisSettings(
        url=server.url, prefix=prefix, interval=0.05, timeout=0.3, stale_after=0.5
    )
    return tracker, SharedState(tracker, settings, replica=name)


def seen(country: str, ip: str = "198.51.100.7", *, vpn: bool = False) -> Origin:
    flags = frozenset({AnonymizerFlag.VPN}) if vpn else frozenset()
    return Origin(ip=ip, country=country, country_source=CountrySource.GEOIP, anonymizer=flags)


ALICE = Identity("acme", subject="alice")


def test_two_replicas_see_one_token_hopping(redis: RedisServer) -> None:
    async def scenario() -> None:
        a, share_a = replica(redis, "t1:", "a")
        b, share_b = replica(redis, "t1:", "b")
        await share_a.start()
        await share_b.start()
        try:
            now = time.time()
            a.observe(now, ALICE, seen("DE"), False)
            b.observe(now + 0.01, ALICE, seen("FR"), False)
            got = a.observe(now + 0.02, ALICE, seen("US"), False)
            assert got["origin_countries_1m"] == 2  # B's FR not here yet: no request waits
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                sa = a.signals(time.time(), ALICE, seen("US"))
                sb = b.signals(time.time(), ALICE, seen("US"))
                if sa["origin_countries_1m"] == 3 and sb["origin_countries_1m"] == 3:
                    break
                await asyncio.sleep(0.02)
            assert sa["origin_countries_1m"] == 3 and sb["origin_countries_1m"] == 3
            # Rounds again and again count nothing twice.
            for _ in range(5):
                await share_a.round()
                await share_b.round()
            assert a.signals(time.time(), ALICE, seen("US"))["origin_countries_1m"] == 3
            assert share_a.health().state == "shared" and not a.degraded
        finally:
            await share_a.close()
            await share_b.close()

    asyncio.run(scenario())


def test_shares_sum_the_other_replicas_without_counting_twice(redis: RedisServer) -> None:
    async def scenario() -> None:
        a, share_a = replica(redis, "t2:", "a")
        b, share_b = replica(redis, "t2:", "b")
        await share_a.start()
        await share_b.start()
        try:
            now = time.time()
            for i in range(30):
                a.observe(now + i * 0.001, ALICE, seen("US", vpn=True), False)
            for i in range(10):
                b.observe(now + i * 0.001, ALICE, seen("US"), False)
            for _ in range(4):
                await share_a.round()
                await share_b.round()
            at = time.time()
            share_seen_by_a = a.signals(at, ALICE, seen("US"))["entity_anonymizer_share_1h"]
            share_seen_by_b = b.signals(at, ALICE, seen("US"))["entity_anonymizer_share_1h"]
            assert share_seen_by_a == pytest.approx(0.75, abs=0.01)
            assert share_seen_by_b == pytest.approx(0.75, abs=0.01)
        finally:
            await share_a.close()
            await share_b.close()

    asyncio.run(scenario())


def test_an_outage_degrades_to_local_and_recovers_without_a_restart() -> None:
    async def scenario(server: RedisServer) -> None:
        a, share_a = replica(server, "t3:", "a")
        b, share_b = replica(server, "t3:", "b")
        telemetry = Telemetry()
        telemetry.watch_patterns(lambda: a)
        await share_a.start()
        await share_b.start()
        try:
            now = time.time()
            a.observe(now, ALICE, seen("DE"), False)
            await share_a.round()
            assert a.signals(now, ALICE, seen("DE"))["patterns_degraded"] == 0.0
            server.stop()
            assert await share_a.round() is False
            health = share_a.health()
            assert health.state == "degraded" and health.degraded and health.error
            assert a.signals(time.time(), ALICE, seen("DE"))["patterns_degraded"] == 1.0
            # Local counting goes on: a hop seen by this replica alone is still seen.
            a.observe(time.time(), ALICE, seen("FR"), False)
            a.observe(time.time(), ALICE, seen("US"), False)
            assert a.signals(time.time(), ALICE, seen("US"))["origin_countries_1m"] == 3
            samples = {c.spec.name: c.points for c in telemetry.collect()}
            assert [v for _, v in samples["aidr_gate.patterns.shared"]] == [0.0]
            server.start()
            for _ in range(100):  # the client reconnects by itself: no restart, no new object
                if await share_a.round():
                    break
                await asyncio.sleep(0.05)
            assert share_a.health().state == "shared" and not a.degraded
            # What was counted during the outage reaches the fleet.
            await share_b.round()
            b.observe(time.time(), ALICE, seen("US"), False)
            await share_b.round()
            assert b.signals(time.time(), ALICE, seen("US"))["origin_countries_1m"] == 3
            samples = {c.spec.name: c.points for c in telemetry.collect()}
            assert [v for _, v in samples["aidr_gate.patterns.shared"]] == [1.0]
            assert next(v for _, v in samples["aidr_gate.patterns.sync.failures"]) >= 1
        finally:
            await share_a.close()
            await share_b.close()

    with redis_server() as server:
        asyncio.run(scenario(server))


def test_redis_never_reached_only_degrades() -> None:
    async def scenario() -> None:
        tracker = PatternTracker(PatternSettings(), wanted=WANTED)
        share = SharedState(
            tracker,
            RedisSettings(url="redis://127.0.0.1:1/0", interval=0.05, timeout=0.2, stale_after=0.5),
        )
        await share.start()  # refused at once: started, degraded
        try:
            got = tracker.observe(time.time(), ALICE, seen("DE"), False)
            assert got["patterns_degraded"] == 1.0 and got["origin_countries_1m"] == 1
            assert tracker.health()["state"] == "degraded"
        finally:
            await share.close()

    asyncio.run(scenario())


def test_a_close_while_a_command_is_in_flight_ends(redis: RedisServer) -> None:
    """Python 3.11's ``asyncio.wait_for``, which redis-py writes through, swallows a cancel that
    comes as the write ends; a close landing there used to wait for ever on a background task
    that went on with its rounds (about one close in four, caught this way)."""

    async def scenario() -> None:
        tracker, shared = replica(redis, "closing:", "a")
        took: list[float] = []
        for attempt in range(16):
            await shared.start()
            now = time.time()
            for i in range(1500):  # dirty keys: the next round writes for a while
                caller = Identity(f"e{i % 200}", subject=f"s{attempt}-{i}")
                tracker.observe(
                    now, caller, seen("DE", ip=f"10.{attempt}.{i // 250}.{i % 250}"), False
                )
            deadline = time.monotonic() + 5
            wire = shared.exchange.wire
            while wire is None or not wire._lock.locked():  # a command of the round in flight
                assert time.monotonic() < deadline, "no round started"
                await asyncio.sleep(0)
                wire = shared.exchange.wire
            for _ in range(attempt % 6):  # land at each step of the command's end
                await asyncio.sleep(0)
            started = time.monotonic()
            async with asyncio.timeout(10):
                await shared.close()
            took.append(time.monotonic() - started)
        assert max(took) < 3.0, took

    asyncio.run(scenario())
