"""The settings schema against its documentation and its readers.

The README's table of keys is the one generated from the registered sections; every key the
README's examples use exists; every documented key is one its reader accepts, and every section
reads its defaults from nothing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from aidr_gate.document import Checker, Document
from aidr_gate.settings.loader import TOP
from aidr_gate.settings.reference import LISTS, key_paths, markdown
from aidr_gate.settings.schema import KeyDoc
from aidr_gate.settings.sections import SECTIONS
from support.environment import ROOT

README = (ROOT / "README.md").read_text()


def test_the_readme_table_is_generated_from_the_schema() -> None:
    start, end = "<!-- settings-keys: generated -->\n", "<!-- /settings-keys -->"
    table = README.split(start, 1)[1].split(end, 1)[0]
    assert table == markdown(), "regenerate with aidr_gate.settings.reference.markdown()"


def _paths(data: Any, prefix: str = "") -> set[str]:
    out: set[str] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            out.add(path)
            if path in LISTS and isinstance(value, list):
                for item in value:
                    out |= _paths(item, f"{path}[]")
            elif isinstance(value, dict) and path not in ("telemetry.otlp.resource",):
                out |= _paths(value, path)
    return out


def _yaml_blocks(section: str) -> list[str]:
    text = README.split(section, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```yaml\n(.*?)```", text, re.S)


def test_every_key_in_the_readme_examples_exists() -> None:
    documented = {path for path, _, _ in key_paths()} | {s.name for s in SECTIONS}
    blocks = _yaml_blocks("## Configuration reference")[:1] + _yaml_blocks("## Observability")[:1]
    assert len(blocks) == 2
    used: set[str] = set()
    for block in blocks:
        used |= _paths(yaml.safe_load(block))
    assert used, blocks
    assert used - documented == set()
    # The example shows every section and most keys, not a few of them.
    assert {s.name for s in SECTIONS} <= used
    assert len(used) > 90, len(used)


def _accepts(section_name: str, keys: tuple[KeyDoc, ...]) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for key in keys:
        if key.keys and f"{section_name}.{key.name}" not in LISTS:
            raw[key.name] = {sub.name: None for sub in key.keys}
        else:
            raw[key.name] = None
    return raw


def test_every_documented_key_is_read() -> None:
    for section in SECTIONS:
        check = Checker(Document("config.yaml", None, {}))
        section.read(check, _accepts(section.name, section.keys), Path.cwd())
        unknown = [str(p) for p in check.problems if "unknown key" in p.message]
        assert unknown == [], section.name


def test_every_section_reads_its_defaults_from_nothing() -> None:
    names = [k.name for k in TOP] + [s.name for s in SECTIONS]
    assert len(names) == len(set(names))
    for section in SECTIONS:
        check = Checker(Document("config.yaml", None, {}))
        section.read(check, None, Path.cwd())
        assert check.problems == [], section.name
        for key in section.keys:
            assert key.doc and not key.doc.endswith("."), (section.name, key.name)


def test_restart_only_keys_are_named_and_kept() -> None:
    """A section with one restart-only key: the rest of it applies, that key keeps running."""
    from dataclasses import replace

    from aidr_gate.settings.middleware import MIDDLEWARE, default_settings
    from aidr_gate.settings.proxy import PROXY, SidecarSettings

    old = default_settings()
    new = replace(old, state_key="other", max_listing_bytes=2048)
    assert MIDDLEWARE.restart_changes(old, new) == ("middleware.state_key",)
    kept = MIDDLEWARE.keep_running(old, new)
    assert (kept.state_key, kept.max_listing_bytes) == ("aidr_decision", 2048)
    assert MIDDLEWARE.restart_changes(old, replace(old, max_listing_bytes=2048)) == ()
    # A section restart-only as a whole names each changed key, nested pool settings included.
    running = SidecarSettings()
    changed = replace(running, proxy=replace(running.proxy, pool_size=8), shutdown_timeout=5)
    assert PROXY.restart_changes(running, changed) == ("proxy.pool_size", "proxy.shutdown_timeout")
    assert PROXY.keep_running(running, changed) is running


def test_a_registry_file_may_change_a_database_store_may_not(tmp_path: Path) -> None:
    """The registry's restart rule: another file applies, another store (or cache bound) waits,
    and cut_streams always applies."""
    from dataclasses import replace

    from aidr_gate.stores.cache import CacheSettings
    from aidr_gate.stores.settings import REGISTRY, RegistrySettings

    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    file_one = RegistrySettings(store=str(one), file=one)
    assert REGISTRY.restart_changes(file_one, RegistrySettings(store=str(two), file=two)) == ()
    database = RegistrySettings(store="sqlite:/a.db")
    moved = RegistrySettings(
        store="sqlite:/b.db", cache=CacheSettings(max_entries=5), cut_streams=False
    )
    assert REGISTRY.restart_changes(database, moved) == ("registry.store", "registry.cache_size")
    assert REGISTRY.keep_running(database, moved) == replace(database, cut_streams=False)
    assert REGISTRY.restart_changes(file_one, database) == ("registry.store",)
    assert REGISTRY.keep_running(file_one, database) == file_one
    assert REGISTRY.restart_changes(database, replace(database, cut_streams=False)) == ()
