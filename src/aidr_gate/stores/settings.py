"""The ``registry:`` setting: which store holds the entities, and how the gate caches it.

Either a name, as the ``registry`` commands take it (a YAML/JSON file, as before; ``sqlite:PATH``
or a ``.db`` file; a ``postgresql://`` URL; ``env:NAME`` for a connection string in an environment
variable, so no password is in the file), or a mapping::

    registry:
      store: env:AIDR_REGISTRY_DSN   # required: the same names as above
      max_staleness: 60              # seconds cached entities serve while the store is lost
      cache_size: 100000             # entities held in memory at most (a database store)
      negative_ttl: 5                # seconds an unknown entity id is remembered as unknown
      cut_streams: true              # end admitted streams that a change now denies

A file named directly is loaded whole with the policy (and reloaded with it); any other store is
read through a bounded cache (:class:`~aidr_gate.stores.cache.EntityCache`) and followed by its
change feed, without reloads.

:data:`REGISTRY` registers this reader with the settings loader (:mod:`aidr_gate.settings`): a
reload applies another registry file and ``cut_streams``; another database store, or other cache
bounds, keep the running ones and wait for a restart (the cache follows the store it started on).
"""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from aidr_gate.document import Checker
from aidr_gate.settings.schema import KeyDoc, Section
from aidr_gate.stores.base import store_kind
from aidr_gate.stores.cache import CacheSettings, RegistryView

SECTION = "registry"
DOCUMENTED = (
    KeyDoc(
        "store",
        "a file (another one applies on reload), sqlite:PATH, a postgresql:// URL or env:NAME",
    ),
    KeyDoc("max_staleness", "seconds cached entities serve while the store is lost; default 60"),
    KeyDoc("cache_size", "entities a database store's cache holds at most; default 100000"),
    KeyDoc("negative_ttl", "seconds an unknown entity id is remembered as unknown; default 5"),
    KeyDoc("cut_streams", "end admitted streams that a change now denies; default true"),
)
KEYS = tuple(k.name for k in DOCUMENTED)
# The cache's bounds as the setting names them (CacheSettings field, key).
_CACHE_KEYS = (
    ("max_staleness", "max_staleness"),
    ("max_entries", "cache_size"),
    ("negative_ttl", "negative_ttl"),
)


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    """Where the registry is and how it is read; ``file`` is set for a file loaded whole."""

    store: str  # the store's name (a file path made absolute), for open_store
    file: Path | None = None
    cache: CacheSettings = field(default_factory=CacheSettings)
    cut_streams: bool = True

    @property
    def database(self) -> bool:
        """True when the registry is read through the cache (not a file loaded whole)."""
        return self.file is None


def _absolute(base_dir: Path | None, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() or base_dir is None else base_dir / path


def read_registry(
    check: Checker, raw: Any, base_dir: Path | None = None
) -> RegistrySettings | None:
    """Read the setting (a name or a mapping); problems go to *check* (``None`` after one).

    Relative paths (a registry file, a SQLite file) are relative to *base_dir*; a registry file
    that does not exist is reported at the key that names it. ``None`` when absent (the loader
    requires the key).
    """
    if raw is None:
        return None
    data: dict[str, Any] = {"store": raw} if isinstance(raw, str) else {}
    if not isinstance(raw, str):
        mapping = check.mapping(raw, SECTION, keys=KEYS, required=("store",))
        if mapping is None:
            return None
        data = dict(mapping)
    name = check.string(data.get("store"), SECTION if isinstance(raw, str) else "registry.store")
    if name is None:
        return None
    defaults = CacheSettings()

    def seconds(key: str, default: float) -> float:
        if data.get(key) is None:
            return default
        value = check.number(data[key], f"registry.{key}", minimum=0.0)
        return default if value is None else value

    size = defaults.max_entries
    if data.get("cache_size") is not None:
        size = check.integer(data["cache_size"], "registry.cache_size", minimum=1) or size
    cut = True
    if data.get("cut_streams") is not None:
        read = check.boolean(data["cut_streams"], "registry.cut_streams")
        cut = cut if read is None else read
    cache = CacheSettings(
        max_entries=size,
        negative_ttl=seconds("negative_ttl", defaults.negative_ttl),
        max_staleness=seconds("max_staleness", defaults.max_staleness),
    )
    kind = store_kind(name)
    if kind == "file":
        file = _absolute(base_dir, name)
        if not file.is_file():
            check.error(
                SECTION if isinstance(raw, str) else "registry.store", f"no such file: {file}"
            )
        return RegistrySettings(store=str(file), file=file, cache=cache, cut_streams=cut)
    if kind == "sqlite":
        name = "sqlite:" + str(_absolute(base_dir, name.removeprefix("sqlite:")))
    return RegistrySettings(store=name, cache=cache, cut_streams=cut)


def _restart_only(
    old: RegistrySettings | None, new: RegistrySettings | None
) -> tuple[tuple[str, ...], RegistrySettings | None]:
    """What a reload may not change: the database store a cache follows and its bounds (a file
    is loaded again with the policy, so another file applies; ``cut_streams`` always does)."""
    if old is None or new is None or not (old.database or new.database):
        return (), new
    pending = [f"{SECTION}.store"] if old.store != new.store else []
    pending += [
        f"{SECTION}.{key}"
        for name, key in _CACHE_KEYS
        if getattr(old.cache, name) != getattr(new.cache, name)
    ]
    if not pending:
        return (), new
    return tuple(pending), replace(old, cut_streams=new.cut_streams)


REGISTRY: Section[RegistrySettings | None] = Section(
    SECTION,
    read_registry,
    DOCUMENTED,
    restart=("store", "max_staleness", "cache_size", "negative_ttl"),
    doc="the entity registry: a file (loaded whole with the policy), or a store and its cache",
    rule=_restart_only,
)


class _NamesARegistry(Protocol):
    """What :func:`open_registry` reads of a configuration (a protocol: the configuration module
    imports this one)."""

    @property
    def registry_settings(self) -> RegistrySettings | None: ...


def open_registry(config: _NamesARegistry) -> RegistryView | None:
    """The cache of the configuration's database store (not started), or ``None`` for a file
    (loaded whole with the policy). Raises ConfigError (an unset ``env:`` variable, no psycopg)."""
    from aidr_gate.stores import open_store, registry_view

    settings = config.registry_settings
    if settings is None or not settings.database:
        return None
    return registry_view(open_store(settings.store), settings.cache)


def registry_summary(source: object, view: RegistryView | None) -> str:
    """A few words on the registry for the start line and reload reports."""
    if view is not None:
        health = view.health()
        return f"registry {health.kind} {health.source} ({health.state}, {health.entries} cached)"
    if isinstance(source, Sized):
        return f"{len(source)} entities"
    return "registry"


def registry_detail(source: object, view: RegistryView | None) -> object:
    """The registry's part of ``/readyz``: the entity count of a file, the cache's health (state,
    staleness, revision, counters, last error) of a database store."""
    if view is None:
        return len(source) if isinstance(source, Sized) else None
    health = view.health()
    return {
        "ready": health.ready,
        "state": health.state,
        "kind": health.kind,
        "source": health.source,
        "revision": health.revision,
        "stale_for": health.stale_for,
        "entries": health.entries,
        "hits": health.hits,
        "misses": health.misses,
        "fetch_errors": health.fetch_errors,
        "last_error": health.last_error,
    }
