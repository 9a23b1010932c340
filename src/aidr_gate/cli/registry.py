"""``aidr-gate registry``: import, export, show, diff and migrate entity registries.

A store is named by a path (``.yaml``/``.yml``/``.json``: the file; ``.db``/``.sqlite``/``.sqlite3``
or ``sqlite:PATH``: SQLite), a ``postgresql://`` URL, or ``env:NAME`` (a connection string in an
environment variable, so no password is on the command line). Files are read with the file
validator: every problem with its line, and nothing is written when there is one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from aidr_gate.document import parse_instant
from aidr_gate.errors import ConfigError
from aidr_gate.registry import Entity, load_registry
from aidr_gate.stores import FileStore, WritableStore, open_store
from aidr_gate.stores.file import entity_document, render_registry


def add_parser(sub: Any) -> None:
    """Register the subcommand and its actions."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "registry",
        help="import, export, show, diff and migrate entity registries (file, SQLite, PostgreSQL)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    imp = actions.add_parser("import", help="validate a registry file and write it into a store")
    imp.add_argument("file", metavar="FILE")
    imp.add_argument("store", metavar="STORE")
    imp.set_defaults(run=lambda a: _run(_import(a.file, a.store)))
    exp = actions.add_parser("export", help="print a store's registry as YAML (or JSON)")
    exp.add_argument("store", metavar="STORE")
    exp.add_argument("--json", action="store_true", help="JSON instead of YAML")
    exp.set_defaults(run=lambda a: _run(_export(a.store, a.json)))
    show = actions.add_parser("show", help="one entity, with its agreements and their states")
    show.add_argument("entity", metavar="ENTITY")
    show.add_argument("--store", required=True, metavar="STORE")
    show.add_argument("--at", help="the time to evaluate agreements at (default: now)")
    show.add_argument("--json", action="store_true")
    show.set_defaults(run=lambda a: _run(_show(a.store, a.entity, a.at, a.json)))
    diff = actions.add_parser("diff", help="entities added, removed or changed between two stores")
    diff.add_argument("a", metavar="A")
    diff.add_argument("b", metavar="B")
    diff.add_argument("--json", action="store_true")
    diff.set_defaults(run=lambda a: _run(_diff(a.a, a.b, a.json)))
    mig = actions.add_parser("migrate", help="create or upgrade a database store's schema")
    mig.add_argument("store", metavar="STORE")
    mig.set_defaults(run=lambda a: _run(_migrate(a.store)))
    parser.set_defaults(run=lambda a: 2)


def _run(work: Any) -> int:
    result: int = asyncio.run(work)
    return result


async def _entities(name: str) -> dict[str, Entity]:
    store = open_store(name)
    await store.open()
    try:
        return {e.id: e async for e in store.entities()}
    finally:
        await store.close()


async def _import(file: str, target: str) -> int:
    entities = list(load_registry(file))  # the file validator: every problem, with its line
    store: WritableStore = open_store(target)
    if isinstance(store, FileStore) and not store.path.exists():
        store.path.write_text("entities: {}\n")
    await store.open()
    try:
        changed = await store.replace_all(entities)
        revision = await store.revision()
    finally:
        await store.close()
    print(f"imported {len(entities)} entities into {store.source}: {changed} changed, "
          f"revision {revision}")  # fmt: skip
    return 0


async def _export(name: str, as_json: bool) -> int:
    entities = await _entities(name)
    sys.stdout.buffer.write(render_registry(entities.values(), json=as_json))
    return 0


async def _show(name: str, entity_id: str, at_text: str | None, as_json: bool) -> int:
    at = time.time() if at_text is None else parse_instant(at_text)
    if at is None:
        raise ConfigError.single("--at", "", f"not a date or ISO 8601 time: {at_text!r}")
    store = open_store(name)
    await store.open()
    try:
        entity = await store.get(entity_id)
    finally:
        await store.close()
    if entity is None:
        print(f"no entity {entity_id!r} in {store.source}", file=sys.stderr)
        return 1
    states = []
    for agreement in entity.agreements:
        states.append({**agreement.to_dict(), "state_now": agreement.state_at(at).value})
    report = {"id": entity.id, **entity_document(entity), "agreements": states}
    if as_json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    print(f"{entity.id}: {entity.name or ''}")
    print(f"  headquarters {entity.headquarters}, ultimate parent {entity.ultimate_parent}")
    print(f"  denied: {'yes, ' + (entity.denied_reason or '') if entity.denied else 'no'}")
    print(f"  ownership: {entity.ownership.value}, {len(entity.owners)} owner(s) listed")
    for owner in entity.owners:
        print(
            f"    {owner.share:g}% {owner.entity_id or owner.name} {owner.country or ''}".rstrip()
        )
    print(f"  agreements ({len(states)}):" if states else "  agreements: none")
    for item in states:
        window = f"{item['valid_from'] or '…'} to {item['valid_until'] or '…'}"
        print(f"    {item['id']} {item['type']} {item['status']}, {window}: {item['state_now']} now; "
              f"tiers {','.join(item['model_tiers'])}, countries {','.join(item['countries'])}")  # fmt: skip
    return 0


async def _diff(a: str, b: str, as_json: bool) -> int:
    left, right = await _entities(a), await _entities(b)
    added = sorted(right.keys() - left.keys())
    removed = sorted(left.keys() - right.keys())
    changed = sorted(i for i in left.keys() & right.keys() if left[i] != right[i])
    if as_json:
        print(json.dumps({"added": added, "removed": removed, "changed": changed}, indent=2))
    else:
        for label, ids in (("added", added), ("removed", removed), ("changed", changed)):
            for entity_id in ids:
                print(f"{label}: {entity_id}")
        print(f"{len(added)} added, {len(removed)} removed, {len(changed)} changed")
    return 0 if not (added or removed or changed) else 1


async def _migrate(name: str) -> int:
    store = open_store(name)
    migrate = getattr(store, "migrate", None)
    if migrate is None:
        raise ConfigError.single(name, "", "a registry file has no schema to migrate")
    applied = await migrate()
    print(f"{store.source}: " + (f"applied {', '.join(applied)}" if applied else "up to date"))
    return 0
