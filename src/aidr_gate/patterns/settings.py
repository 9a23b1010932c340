"""The ``patterns:`` section: which signals are recorded, the bounds of their state, and Redis.

Read with a :class:`~aidr_gate.document.Checker` like every other section, so problems read
``file:line: patterns.key: message`` and one run lists them all::

    patterns:
      windows: [1m, 1h]          # windows recorded in every decision's evidence (besides the
                                 # signals the pack tests, which are always tracked and recorded)
      record: [origin_countries, network_entities]   # families recorded per window (default: all)
      max_keys: 100000           # tokens, entities, addresses and networks tracked, each at most
      max_distinct: 64           # distinct countries or entities kept per key (counts saturate)
      ipv4_prefix: 24            # what "one network" is for network_entities
      ipv6_prefix: 48
      redis:                     # absent: state is local to this process (the embedded default)
        url: redis://127.0.0.1:6379/0
        prefix: "aidr:patterns:"
        interval: 0.25           # seconds between a batch of writes and a refresh of the view
        timeout: 1.0             # seconds a Redis reply may take (a round: four times that)
        stale_after: 2.0         # a view older than this is degraded: signals count this replica only
        watch: 300               # seconds a key stays in the refreshed view after its last request
        max_batch: 5000          # keys written or read per round trip at most

:data:`PATTERNS` registers the reader with the settings loader (:mod:`aidr_gate.settings`). A
reload applies ``windows``, ``record`` and the exchange's pace (``redis.interval``,
``stale_after``, ``watch``, ``max_batch``) to the running tracker; the shape of its state
(``max_keys``, ``max_distinct``, the prefixes) and the Redis connection (``redis`` itself, its
``url``, ``prefix`` and ``timeout``) keep their running values and wait for a restart: the counts
kept so far are about that shape and that server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aidr_gate.document import Checker, join
from aidr_gate.patterns.signals import FAMILIES, MAX_DISTINCT, window_seconds
from aidr_gate.settings.schema import KeyDoc, Section

SECTION = "patterns"
EXTRA_HINT = "install the fleet extra: pip install 'aidr-gate[fleet]'"
KEYS: tuple[KeyDoc, ...] = (
    KeyDoc("windows", "windows recorded in every decision's evidence, such as [1m, 1h]"),
    KeyDoc("record", "signal families recorded per window (default: all)"),
    KeyDoc("max_keys", "tokens, entities, addresses and networks tracked, each at most"),
    KeyDoc(
        "max_distinct",
        "distinct countries or entities kept per key (counts saturate; a pack's larger count "
        "threshold raises it for its subject, with a `validate` warning)",
    ),
    KeyDoc("ipv4_prefix", "the IPv4 prefix length that is one network for network_entities"),
    KeyDoc("ipv6_prefix", "the IPv6 prefix length that is one network for network_entities"),
    KeyDoc(
        "redis",
        "a fleet's shared state (a URL or a mapping; absent: local to this process)",
        (
            KeyDoc("url", "redis://, rediss:// or unix:// address of the server"),
            KeyDoc("prefix", "prefix of every key the gate writes"),
            KeyDoc("interval", "seconds between a batch of writes and a refresh of the view"),
            KeyDoc("timeout", "seconds a Redis reply may take"),
            KeyDoc("stale_after", "seconds after which the view is degraded (local counts only)"),
            KeyDoc("watch", "seconds a key stays in the refreshed view after its last request"),
            KeyDoc("max_batch", "keys written or read per round trip at most"),
        ),
    ),
)
_KEYS = tuple(k.name for k in KEYS)
_REDIS_KEYS = next(tuple(k.name for k in key.keys) for key in KEYS if key.name == "redis")
# What a reload cannot change: the shape of the tracker's state and the server it shares.
_SHAPE = ("max_keys", "max_distinct", "ipv4_prefix", "ipv6_prefix")
_CONNECTION = ("url", "prefix", "timeout")


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """Where the fleet's shared state lives, and how often this replica meets it."""

    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "aidr:patterns:"
    interval: float = 0.25
    timeout: float = 1.0
    stale_after: float = 2.0
    watch: float = 300.0
    max_batch: int = 5000


@dataclass(frozen=True, slots=True)
class PatternSettings:
    """The parsed ``patterns:`` section; the defaults track only what the pack tests, locally."""

    windows: tuple[str, ...] = ()
    record: tuple[str, ...] = tuple(f.name for f in FAMILIES)
    max_keys: int = 100_000
    max_distinct: int = 64
    ipv4_prefix: int = 24
    ipv6_prefix: int = 48
    redis: RedisSettings | None = None

    @property
    def recorded(self) -> tuple[str, ...]:
        """The signal names the section asks to record: each family of ``record`` per window."""
        return tuple(f"{family}_{window}" for window in self.windows for family in self.record)


def _integer(
    check: Checker, data: Mapping[str, Any], key: str, where: str, low: int, high: int, default: int
) -> int:
    if data.get(key) is None:
        return default
    got = check.integer(data[key], join(where, key), minimum=low)
    if got is not None and got > high:
        check.error(join(where, key), f"must be at most {high}, not {got}")
        got = None
    return default if got is None else got


def _number(
    check: Checker,
    data: Mapping[str, Any],
    key: str,
    where: str,
    low: float,
    high: float,
    default: float,
) -> float:
    if data.get(key) is None:
        return default
    got = check.number(data[key], join(where, key), minimum=low)
    if got is not None and (got > high or got <= 0):
        check.error(join(where, key), f"must be more than 0 and at most {high:g}, not {got:g}")
        got = None
    return default if got is None else got


def _read_redis(check: Checker, raw: Any) -> RedisSettings | None:
    where = join(SECTION, "redis")
    if isinstance(raw, str):
        raw = {"url": raw}
    data = check.mapping(raw, where, keys=_REDIS_KEYS)
    if data is None:
        return None
    d = RedisSettings()
    url = d.url
    if data.get("url") is not None:
        url = check.string(data["url"], join(where, "url")) or d.url
        if not url.startswith(("redis://", "rediss://", "unix://")):
            check.error(join(where, "url"), f"{url!r} is not a redis://, rediss:// or unix:// URL")
    prefix = d.prefix
    if data.get("prefix") is not None:
        prefix = check.string(data["prefix"], join(where, "prefix")) or d.prefix
    interval = _number(check, data, "interval", where, 0.01, 60.0, d.interval)
    settings = RedisSettings(
        url=url,
        prefix=prefix,
        interval=interval,
        timeout=_number(check, data, "timeout", where, 0.001, 60.0, d.timeout),
        stale_after=_number(check, data, "stale_after", where, 0.01, 3600.0, d.stale_after),
        watch=_number(check, data, "watch", where, 1.0, 86_400.0, d.watch),
        max_batch=_integer(check, data, "max_batch", where, 1, 1_000_000, d.max_batch),
    )
    if settings.stale_after <= settings.interval:
        check.error(
            join(where, "stale_after"), f"must be longer than the interval ({interval:g} s)"
        )
    try:
        import redis.asyncio  # noqa: F401 - only to say early that the extra is missing
    except ImportError:
        check.error(where, f"needs the redis package, which is not installed: {EXTRA_HINT}")
    return settings


def read_patterns(check: Checker, raw: Any, base_dir: Path | None = None) -> PatternSettings | None:
    """Read the section (``None`` raw: the defaults); problems go to *check*.

    *base_dir* is unused (the section names no file); it keeps the section readers' signature.
    """
    if raw is None:
        return PatternSettings()
    data = check.mapping(raw, SECTION, keys=_KEYS)
    if data is None:
        return None
    d = PatternSettings()
    windows: list[str] = []
    for index, item in enumerate(
        check.sequence(data.get("windows", []), join(SECTION, "windows")) or []
    ):
        text = item if isinstance(item, str) else None
        if text is None or window_seconds(text) is None:
            check.error(
                join(join(SECTION, "windows"), index),
                f"{item!r} is not a window such as 30s, 10m, 1h or 7d (30 days at most)",
            )
        elif text not in windows:
            windows.append(text)
    record = d.record
    if data.get("record") is not None:
        names = [f.name for f in FAMILIES]
        chosen: list[str] = []
        for index, item in enumerate(check.sequence(data["record"], join(SECTION, "record")) or []):
            if item not in names:
                check.error(
                    join(join(SECTION, "record"), index),
                    f"unknown signal {item!r} (known: {', '.join(names)})",
                )
            elif item not in chosen:
                chosen.append(item)
        record = tuple(chosen)
    return PatternSettings(
        windows=tuple(windows),
        record=record,
        max_keys=_integer(check, data, "max_keys", SECTION, 16, 10_000_000, d.max_keys),
        max_distinct=_integer(
            check, data, "max_distinct", SECTION, 2, MAX_DISTINCT, d.max_distinct
        ),
        ipv4_prefix=_integer(check, data, "ipv4_prefix", SECTION, 8, 32, d.ipv4_prefix),
        ipv6_prefix=_integer(check, data, "ipv6_prefix", SECTION, 16, 128, d.ipv6_prefix),
        redis=_read_redis(check, data["redis"]) if data.get("redis") is not None else None,
    )


def _restart_only(
    old: PatternSettings, new: PatternSettings
) -> tuple[tuple[str, ...], PatternSettings]:
    """The restart-only keys that differ, and *new* with them as they run (see the module
    docstring: the state's shape and the Redis connection wait for a restart)."""
    pending = [f"{SECTION}.{key}" for key in _SHAPE if getattr(old, key) != getattr(new, key)]
    redis = new.redis
    if (old.redis is None) != (new.redis is None):
        pending.append(f"{SECTION}.redis")
        redis = old.redis
    elif old.redis is not None and new.redis is not None:
        moved = [k for k in _CONNECTION if getattr(old.redis, k) != getattr(new.redis, k)]
        pending += [f"{SECTION}.redis.{key}" for key in moved]
        if moved:
            redis = replace(new.redis, **{k: getattr(old.redis, k) for k in _CONNECTION})
    if not pending:
        return (), new
    kept = replace(new, redis=redis, **{key: getattr(old, key) for key in _SHAPE})
    return tuple(pending), kept


PATTERNS: Section[PatternSettings] = Section(
    SECTION,
    read_patterns,
    KEYS,
    restart=(*_SHAPE, "redis", *(f"redis.{key}" for key in _CONNECTION)),
    rule=_restart_only,
)
"""The ``patterns:`` section, registered in :data:`aidr_gate.settings.sections.SECTIONS`."""
