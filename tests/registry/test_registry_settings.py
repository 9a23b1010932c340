"""The ``registry:`` setting: a file as before, or a store read through the cache; errors name the
file, the key and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from aidr_gate.errors import ConfigError
from aidr_gate.settings.loader import config_from_text
from aidr_gate.stores.base import store_kind
from aidr_gate.stores.settings import RegistrySettings
from support.environment import EXAMPLES

_BASE = f"policy: aidr-2025-01\ncatalog: {EXAMPLES / 'models.yaml'}\n"


def _settings(registry: str, tmp_path: Path) -> RegistrySettings:
    config = config_from_text(_BASE + registry, str(tmp_path / "gate.yaml"))
    assert config.registry_settings is not None
    assert config.registry == config.registry_settings.file
    return config.registry_settings


def test_a_file_named_as_before_is_loaded_whole(tmp_path: Path) -> None:
    (tmp_path / "entities.yaml").write_text((EXAMPLES / "entities.yaml").read_text())
    settings = _settings("registry: entities.yaml\n", tmp_path)
    assert settings.file == tmp_path / "entities.yaml" and not settings.database
    assert settings.cut_streams is True


@pytest.mark.parametrize("registry", ["registry: gone.yaml\n", "registry:\n  store: gone.yaml\n"])
def test_a_missing_registry_file_is_named_at_its_line(registry: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_text(_BASE + registry, str(tmp_path / "gate.yaml"))
    (problem,) = caught.value.problems
    assert "no such file" in problem.message and str(tmp_path / "gone.yaml") in problem.message
    assert problem.path == ("registry" if "store" not in registry else "registry.store")
    assert problem.line == (3 if "store" not in registry else 4)


def test_a_database_store_is_not_a_missing_file(tmp_path: Path) -> None:
    for name in ("sqlite:nowhere/registry.db", "postgresql://gate@db/registry", "env:NOT_SET_HERE"):
        settings = _settings(f"registry: {name!r}\n", tmp_path)
        assert settings.database and settings.file is None


def test_a_database_store_with_its_cache_bounds(tmp_path: Path) -> None:
    settings = _settings(
        "registry:\n  store: sqlite:data/registry.db\n  max_staleness: 30\n  cache_size: 5000\n"
        "  negative_ttl: 2.5\n  cut_streams: false\n",
        tmp_path,
    )
    assert settings.database and settings.file is None
    assert settings.store == f"sqlite:{tmp_path / 'data' / 'registry.db'}"
    assert (settings.cache.max_staleness, settings.cache.max_entries) == (30, 5000)
    assert settings.cache.negative_ttl == 2.5 and settings.cut_streams is False


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("entities.yaml", "file"),
        ("registry.db", "sqlite"),
        ("sqlite:/var/lib/registry", "sqlite"),
        ("postgresql://gate@db/registry", "postgres"),
        ("host=db dbname=registry", "postgres"),
        ("env:AIDR_REGISTRY_DSN", "env"),
    ],
)
def test_store_kinds(name: str, kind: str) -> None:
    assert store_kind(name) == kind


def test_every_problem_is_named_with_its_line(tmp_path: Path) -> None:
    text = _BASE + (
        "registry:\n  store: env:DSN\n  max_staleness: -1\n  cache_size: 0\n"
        "  cut_streams: maybe\n  pool: 3\n"
    )
    with pytest.raises(ConfigError) as caught:
        config_from_text(text, str(tmp_path / "gate.yaml"))
    problems = {p.path: p for p in caught.value.problems}
    assert {
        "registry.max_staleness",
        "registry.cache_size",
        "registry.cut_streams",
    } <= set(problems)
    assert any("pool" in p.path or "pool" in p.message for p in caught.value.problems)
    assert problems["registry.max_staleness"].line == 5


def test_a_mapping_without_a_store_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="store"):
        config_from_text(_BASE + "registry:\n  max_staleness: 5\n", str(tmp_path / "gate.yaml"))
