"""Access-pattern signals: the bounded sketches, the tracker, pack conditions and gate decisions."""

from __future__ import annotations

import asyncio
from dataclasses import fields, replace
from pathlib import Path

import pytest

from aidr_gate.catalog import Model, Weights
from aidr_gate.decision import Effect
from aidr_gate.errors import ConfigError
from aidr_gate.facts import AnonymizerFlag, CountrySource, Identity, Origin
from aidr_gate.gate import Gate, state_for
from aidr_gate.patterns.settings import KEYS, PATTERNS, PatternSettings, RedisSettings
from aidr_gate.patterns.signals import parse_signal_key
from aidr_gate.patterns.sketches import RecentSet, Shares
from aidr_gate.patterns.tracker import PatternTracker
from aidr_gate.policy.pack import load_pack
from aidr_gate.registry import Entity
from aidr_gate.runtime import Runtime
from aidr_gate.settings.loader import config_from_text
from support.environment import EXAMPLES
from support.gate_env import make_gate_env

EXAMPLE_PACK = EXAMPLES / "patterns.yaml"
BIG = Model("big", training_ops=4e26, weights=Weights.CLOSED)  # controlled
SMALL = Model("small", training_ops=1e22, weights=Weights.CLOSED)
T0 = 1_767_225_600.0  # 2026-01-01


def origin(country: str | None, ip: str = "198.51.100.7", *, vpn: bool = False) -> Origin:
    flags = frozenset({AnonymizerFlag.VPN}) if vpn else frozenset()
    return Origin(ip=ip, country=country, country_source=CountrySource.GEOIP, anonymizer=flags)


def example_gate(entities: list[Entity] | None = None) -> Gate:
    pack = load_pack(EXAMPLE_PACK)
    return Gate(state_for(pack, entities=entities or [Entity("acme", "US")], models=[BIG, SMALL]))


# -- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "family", "seconds"),
    [
        ("origin_countries_1h", "origin_countries", 3600.0),
        ("network_entities_30s", "network_entities", 30.0),
        ("entity_worse_origin_share_7d", "entity_worse_origin_share", 604_800.0),
        ("anonymizer_share_10m", "anonymizer_share", 600.0),
    ],
)
def test_signal_names_carry_their_window(name: str, family: str, seconds: float) -> None:
    key = parse_signal_key(name)
    assert key is not None and key.family.name == family and key.seconds == seconds


@pytest.mark.parametrize(
    "name", ["origin_countries", "origin_countries_1y", "origin_countries_0m", "nope_1h",
             "origin_countries_31d"],
)  # fmt: skip
def test_names_that_are_no_signal(name: str) -> None:
    assert parse_signal_key(name) is None


# -- sketches -------------------------------------------------------------------------------------


def test_recent_set_counts_each_window_and_saturates_at_capacity() -> None:
    seen = RecentSet()
    for i, country in enumerate(["DE", "FR", "US", "DE"]):
        seen.add(country, T0 + i * 30, capacity=8, horizon=3600)
    now = T0 + 90
    assert seen.count(now - 3600) == 3
    assert seen.count(now - 45) == 2  # FR at +30 is outside 45 s; US at +60, DE at +90 inside
    for i in range(100):
        seen.add(f"e{i}", now, capacity=8, horizon=3600)
    assert len(seen.seen) == 8 and seen.count(now - 3600) == 8  # bounded: saturated, not grown


def test_recent_set_merge_is_idempotent() -> None:
    mine, theirs = RecentSet(), RecentSet()
    mine.add("DE", T0, 8, 60)
    theirs.add("FR", T0 + 1, 8, 60)
    for _ in range(3):  # a replica merging the same view again counts nothing twice
        mine.merge(theirs.items_since(T0 - 60), 8, 60)
    assert mine.count(T0 - 60) == 2


def test_shares_decay_towards_recent_traffic() -> None:
    shares = Shares(1)
    for i in range(10):
        shares.add(T0 + i, anonymous=True, worse=False, taus=[60.0])
    assert shares.share(0, 1, T0 + 10, 60.0) == pytest.approx(1.0)
    for i in range(600):  # ten minutes of clean traffic: the anonymous start is forgotten
        shares.add(T0 + 10 + i, anonymous=False, worse=False, taus=[60.0])
    assert shares.share(0, 1, T0 + 610, 60.0) < 0.01
    assert len(shares.values) == 3


def test_tables_are_bounded_whatever_the_number_of_keys() -> None:
    tracker = PatternTracker(PatternSettings(max_keys=100), wanted=["origin_countries_1h",
                             "address_entities_1h", "network_entities_1h", "entity_countries_1h"])  # fmt: skip
    for i in range(5000):
        ident = Identity(f"org{i}", subject=f"user{i}")
        tracker.observe(
            T0 + i * 0.01, ident, origin("US", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"), False
        )
    assert max(tracker.sizes().values()) <= 100
    assert tracker.tokens.evicted > 0


def test_every_address_of_a_network_gives_one_network_object() -> None:
    # The network table then finds its key by identity, as the entity tables do (test_claims).
    tracker = PatternTracker(wanted=["network_entities_1h"])
    first, second = tracker.network_of("198.51.100.7"), tracker.network_of("198.51.100.200")
    assert first == "198.51.100.0/24"
    assert first is second
    assert tracker.network_of("not an address") is None


# -- pack conditions ------------------------------------------------------------------------------


def test_a_token_hopping_countries_is_denied_for_controlled_models() -> None:
    gate = example_gate()
    ident = Identity("acme", subject="alice")
    decisions = [
        gate.decide(identity=ident, origin=origin(c), model_id="big", at=T0 + i * 10)
        for i, c in enumerate(["DE", "FR", "US"])
    ]
    assert [d.effect for d in decisions] == [Effect.ALLOW, Effect.ALLOW, Effect.DENY]
    assert decisions[-1].reasons == ("ORIGIN_VELOCITY",)
    assert decisions[-1].rule == "example-patterns/origin-velocity-controlled"
    assert decisions[-1].evidence.signals is not None
    assert decisions[-1].evidence.signals["origin_countries_1m"] == 3
    # An uncontrolled model is only logged; another token of the same entity is untouched.
    small = gate.decide(identity=ident, origin=origin("US"), model_id="small", at=T0 + 31)
    assert small.effect is Effect.LOG and small.reasons == ("ORIGIN_VELOCITY",)
    other = gate.decide(
        identity=Identity("acme", subject="bob"), origin=origin("US"), model_id="big", at=T0 + 32
    )
    assert other.effect is Effect.ALLOW
    # Past the minute, the one-minute rule lets go; the hour still logs.
    later = gate.decide(identity=ident, origin=origin("US"), model_id="big", at=T0 + 200)
    assert later.effect is Effect.LOG and later.reasons == ("ORIGIN_VELOCITY",)


def test_ordinary_traffic_raises_no_flag() -> None:
    gate = example_gate()
    ident = Identity("acme", subject="carol")
    for i in range(300):
        decision = gate.decide(identity=ident, origin=origin("US"), model_id="big", at=T0 + i)
        assert decision.effect is Effect.ALLOW, decision.reasons
    assert decision.evidence.signals == {
        "origin_countries_1m": 1,
        "origin_countries_1h": 1,
        "network_entities_1h": 1,
        "entity_anonymizer_share_1h": 0.0,
    }
    # Numbers that change with every request do not defeat the engine's cache.
    assert gate.state.engine.cache_info().currsize <= 4


def test_one_network_fronting_many_entities_is_flagged() -> None:
    entities = [Entity(f"org{i}", "US") for i in range(12)]
    gate = example_gate(entities)
    effects = []
    for i, entity in enumerate(entities):
        d = gate.decide(
            identity=Identity(entity.id, subject="svc"),
            origin=origin("US", f"203.0.113.{i + 1}"),
            model_id="small",
            at=T0 + i,
        )
        effects.append((d.effect, d.reasons))
    assert effects[8] == (Effect.ALLOW, ("ALLOWED",))
    assert effects[9] == (Effect.LOG, ("INTERMEDIARY_SUSPECTED",))  # the tenth entity
    # Another network is unaffected.
    d = gate.decide(
        identity=Identity("org0", subject="svc"),
        origin=origin("US", "198.51.100.9"),
        model_id="small",
        at=T0 + 20,
    )
    assert d.effect is Effect.ALLOW


def test_anonymizer_shift_of_an_entity_is_logged() -> None:
    gate = example_gate()
    ident = Identity("acme", subject="dave")
    for i in range(5):
        gate.decide(identity=ident, origin=origin("US"), model_id="small", at=T0 + i)
    for i in range(10):
        d = gate.decide(
            identity=ident, origin=origin("US", vpn=True), model_id="small", at=T0 + 5 + i
        )
    assert d.reasons == ("ANONYMIZER_SHIFT",)
    assert d.evidence.signals is not None and d.evidence.signals["entity_anonymizer_share_1h"] > 0.5


def _pack_text(when: str) -> str:
    return (
        "id: p\ntitle: P\nstatus: hypothetical\nextends: aidr-2025-01\nrules:\n"
        f"  - id: r\n    when: {when}\n    then: {{effect: log, reason: ORIGIN_VELOCITY}}\n"
    )


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ("{origin_countries_1x: 3}", "unknown key"),
        ("{origin_countries_1h: {at_least: -1}}", "at least 0"),
        ("{origin_countries_1h: {above: 3}}", "unknown key"),
        ("{origin_countries_1h: {}}", "needs a threshold"),
        ("{origin_countries_1h: three}", "must be a mapping"),
        ("{patterns_degraded: 1}", "true or false"),
    ],
)
def test_bad_pattern_conditions_are_load_errors(tmp_path: Path, when: str, message: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(_pack_text(when))
    with pytest.raises(ConfigError) as caught:
        load_pack(path)
    assert message in str(caught.value)
    assert "rules[0].when" in str(caught.value)


def test_pattern_thresholds_and_any(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    when = "{any: [{origin_countries_10m: {more_than: 1, at_most: 2}}, {address_entities_10m: 3}]}"
    path.write_text(_pack_text(when))
    pack = load_pack(path)
    gate = Gate(state_for(pack, entities=[Entity(f"o{i}", "US") for i in range(3)], models=[SMALL]))
    assert gate.patterns.names == ("origin_countries_10m", "address_entities_10m")
    ident = Identity("o0", subject="s")
    first = gate.decide(identity=ident, origin=origin("US"), model_id="small", at=T0)
    second = gate.decide(identity=ident, origin=origin("DE"), model_id="small", at=T0 + 1)
    assert (first.effect, second.effect) == (Effect.ALLOW, Effect.LOG)
    third = gate.decide(identity=ident, origin=origin("FR"), model_id="small", at=T0 + 2)
    assert third.effect is Effect.ALLOW  # three countries: not at most two
    for i in (1, 2):
        last = gate.decide(
            identity=Identity(f"o{i}", subject="s"),
            origin=origin("US"),
            model_id="small",
            at=T0 + 3,
        )
    assert last.effect is Effect.LOG  # the third entity behind one address


# -- settings -------------------------------------------------------------------------------------


def _config(section: str) -> str:
    return (
        f"policy: aidr-2025-01\nregistry: {EXAMPLES / 'entities.yaml'}\n"
        f"catalog: {EXAMPLES / 'models.yaml'}\n{section}"
    )


def test_settings_defaults_and_values(tmp_path: Path) -> None:
    assert config_from_text(_config(""), str(tmp_path / "c.yaml")).get(PATTERNS) == (
        PatternSettings()
    )
    text = _config(
        "patterns:\n  windows: [1m, 1h]\n  record: [origin_countries]\n  max_keys: 500\n"
        "  redis: {url: 'redis://127.0.0.1:1/0', interval: 0.1, stale_after: 0.5}\n"
    )
    config = config_from_text(text, str(tmp_path / "c.yaml"))
    settings = config.get(PATTERNS)
    gate = Gate.from_config(config)  # a bare gate: the section's tracker, local
    assert gate.patterns.settings == settings and gate.patterns.shared is None
    assert settings.recorded == ("origin_countries_1m", "origin_countries_1h")
    assert settings.max_keys == 500
    assert settings.redis is not None and settings.redis.interval == 0.1


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("patterns: {windows: [1y]}", "patterns.windows[0]"),
        ("patterns: {record: [nope]}", "unknown signal 'nope'"),
        ("patterns: {max_keys: 3}", "patterns.max_keys"),
        ("patterns: {redis: {url: 'http://x'}}", "not a redis://"),
        ("patterns: {redis: {interval: 1, stale_after: 0.5}}", "longer than the interval"),
        ("patterns: {colour: red}", "unknown key"),
    ],
)
def test_settings_errors_name_the_key(tmp_path: Path, section: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_text(_config(section + "\n"), str(tmp_path / "c.yaml"))
    assert message in str(caught.value)


def test_every_redis_setting_is_documented() -> None:
    redis = next(key for key in KEYS if key.name == "redis")
    assert [k.name for k in redis.keys] == [f.name for f in fields(RedisSettings)]


def test_the_shape_and_the_connection_wait_for_a_restart() -> None:
    """What a reload may change in place (what is recorded, the exchange's pace) and what keeps
    running until a restart (the tables' bounds, the prefixes, the Redis connection)."""
    redis = RedisSettings(url="redis://127.0.0.1:1/0")
    old = PatternSettings(windows=("1m",), redis=redis)
    paced = replace(old, windows=("1h",), redis=replace(redis, interval=0.1, max_batch=10))
    assert PATTERNS.restart_changes(old, paced) == ()
    assert PATTERNS.keep_running(old, paced) == paced
    moved = replace(
        paced,
        max_keys=64,
        ipv4_prefix=16,
        redis=replace(paced.redis or redis, url="redis://10.0.0.1:6379/0", interval=0.5),
    )
    assert PATTERNS.restart_changes(old, moved) == (
        "patterns.max_keys",
        "patterns.ipv4_prefix",
        "patterns.redis.url",
    )
    kept = PATTERNS.keep_running(old, moved)
    assert (kept.max_keys, kept.ipv4_prefix, kept.windows) == (old.max_keys, 24, ("1h",))
    assert kept.redis == replace(redis, interval=0.5, max_batch=10)
    assert PATTERNS.restart_changes(old, replace(old, redis=None)) == ("patterns.redis",)
    assert PATTERNS.keep_running(old, replace(old, redis=None)).redis == redis


def test_a_reload_keeps_the_tracker_and_its_counts(tmp_path: Path) -> None:
    """The whole-configuration reload: the same tracker, its counts kept, the new windows and
    pace applied, the new bounds and server named as needing a restart and not applied."""
    env = make_gate_env(tmp_path)
    base = env.config.read_text()
    section = (
        "patterns:\n  windows: [{window}]\n  record: [origin_countries]\n  max_keys: {keys}\n"
        "  redis: {{url: 'redis://127.0.0.1:{port}/0', interval: {interval}}}\n"
    )
    env.config.write_text(base + section.format(window="1m", keys=500, port=1, interval=0.25))

    async def run() -> None:
        runtime = Runtime.from_config(env.config)  # not started: no Redis is reached
        try:
            tracker = runtime.gate.patterns
            identity = Identity(subject="alice", entity_id="lab-us", issuer="i")
            for at, country in ((T0, "US"), (T0 + 1, "DE")):
                tracker.observe(at, identity, origin(country), worse=False)
            assert tracker.names == ("origin_countries_1m", "patterns_degraded")
            env.config.write_text(base + section.format(window="1h", keys=64, port=2, interval=0.1))
            report = await runtime.reload()
            assert report.ok, report.detail
            assert report.restart_pending == ("patterns.max_keys", "patterns.redis.url")
            assert runtime.gate.patterns is tracker
            assert tracker.names == ("origin_countries_1h", "patterns_degraded")
            assert tracker.settings.max_keys == 500 and tracker.tokens.limit == 500
            assert tracker.shared is not None
            shared_settings = tracker.shared.settings  # type: ignore[attr-defined]
            assert shared_settings.interval == 0.1
            assert shared_settings.url == "redis://127.0.0.1:1/0"
            assert tracker.signals(T0 + 2, identity, origin("US"))["origin_countries_1h"] == 2
        finally:
            await runtime.close()

    asyncio.run(run())
