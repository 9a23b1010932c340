"""The file registry store: the YAML/JSON file (the embedded default), held whole in memory.

It loads with the file validator (``file:line`` errors), follows the file by polling its size,
modification time and inode, and reloads in a thread when it changes; a reload that fails keeps the
last good registry. Its revision is the SHA-256 of the file's bytes, so a record names exactly the
file it was decided on. ``replace_all`` writes a new file atomically (``registry import`` into a
file, or ``export``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import yaml

from aidr_gate.errors import ConfigError
from aidr_gate.registry import Entity, InMemoryRegistry, OwnershipStatus, load_registry
from aidr_gate.stores.base import RegistryChange

log = logging.getLogger("aidr_gate.registry")


def file_revision(path: Path) -> str:
    """``sha256:`` and the first 16 hex digits of the SHA-256 of the file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:16]


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino)


def entity_document(entity: Entity) -> dict[str, Any]:
    """*entity* in the registry file's format (what the loader reads back to an equal entity)."""
    out: dict[str, Any] = {"headquarters": entity.headquarters}
    if entity.name is not None:
        out = {"name": entity.name, **out}
    if entity.parent is not None:
        out["ultimate_parent"] = entity.parent
    if entity.aliases:
        out["aliases"] = list(entity.aliases)
    if entity.denied:
        out["denied"] = True
    if entity.denied_reason is not None:
        out["denied_reason"] = entity.denied_reason
    if entity.agreements:
        out["agreements"] = [
            {k: v for k, v in a.to_dict().items() if v is not None} for a in entity.agreements
        ]
    if entity.owners:
        out["owners"] = [
            {k: v for k, v in o.to_dict().items() if v is not None} for o in entity.owners
        ]
    if entity.owners or entity.ownership is not OwnershipStatus.UNKNOWN:
        out["ownership"] = entity.ownership.value
    if entity.screening_reviews:
        out["screening_reviews"] = [
            {k: v for k, v in r.to_dict().items() if v is not None}
            for r in entity.screening_reviews
        ]
    return out


def render_registry(entities: Iterable[Entity], json: bool = False) -> bytes:
    """A registry file holding *entities*: YAML, or JSON with *json*."""
    document = {"version": 1, "entities": {e.id: entity_document(e) for e in entities}}
    if json:
        return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    text = yaml.dump(document, Dumper=dumper, sort_keys=False, allow_unicode=True, width=100)
    return text.encode("utf-8")


def write_registry(path: Path, entities: Iterable[Entity]) -> None:
    """Write a registry file atomically (a temporary file renamed over *path*)."""
    data = render_registry(entities, json=path.suffix.lower() == ".json")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


class FileStore:
    """The registry file, held in memory; see the module docstring."""

    kind = "file"

    def __init__(self, path: str | Path, *, poll_interval: float = 1.0) -> None:
        self.path = Path(path)
        self.source = str(path)
        self._poll_interval = poll_interval
        self._registry = InMemoryRegistry([], source=self.source)
        self._revision = ""
        self._stamp: tuple[int, int, int] | None = None

    @property
    def snapshot(self) -> Mapping[str, Entity] | None:
        """Every entity, by id (the last good load)."""
        return self._registry._entities

    def _load(self) -> tuple[InMemoryRegistry, str, tuple[int, int, int] | None]:
        stamp = _stamp(self.path)
        registry = load_registry(self.path)
        return registry, file_revision(self.path), stamp

    async def open(self) -> None:
        """Load the file (in a thread); ConfigError lists every problem with its line."""
        self._registry, self._revision, self._stamp = await asyncio.to_thread(self._load)

    async def close(self) -> None:
        """Nothing to release."""

    async def get(self, entity_id: str) -> Entity | None:
        """The entity, from memory."""
        return self._registry.get(entity_id)

    async def revision(self) -> str:
        """The SHA-256 of the file last loaded."""
        return self._revision

    async def entities(self) -> AsyncGenerator[Entity, None]:
        """Every entity, in id order."""
        for entity_id in sorted(self._registry._entities):
            yield self._registry._entities[entity_id]

    async def watch(self, since: str) -> AsyncGenerator[RegistryChange, None]:
        """Poll the file; on a change, reload it and name the entities that differ."""
        if since != self._revision:
            yield RegistryChange(self._revision, None)
        while True:
            await asyncio.sleep(self._poll_interval)
            stamp = _stamp(self.path)
            if stamp is None or stamp == self._stamp:
                yield RegistryChange(self._revision, frozenset())
                continue
            try:
                registry, revision, stamp = await asyncio.to_thread(self._load)
            except ConfigError as exc:
                self._stamp = stamp  # reported once; retried when the file changes again
                log.error(
                    "registry %s not reloaded, keeping the last good one:\n%s", self.path, exc
                )
                yield RegistryChange(self._revision, frozenset())
                continue
            old, self._registry = self._registry._entities, registry
            self._revision, self._stamp = revision, stamp
            new = registry._entities
            changed = {i for i, e in new.items() if old.get(i) != e} | (old.keys() - new.keys())
            yield RegistryChange(revision, frozenset(changed))

    async def replace_all(self, entities: Sequence[Entity]) -> int:
        """Write *entities* as the registry file, then load it back (so it is validated)."""
        before = dict(self._registry._entities)
        await asyncio.to_thread(write_registry, self.path, entities)
        await self.open()
        new = self._registry._entities
        return sum(1 for i, e in new.items() if before.get(i) != e) + len(
            before.keys() - new.keys()
        )
