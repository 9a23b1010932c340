"""Versioned SQL migrations of the registry schema, one folder per database (``migrations/``).

Files are named ``NNN_what.sql`` and applied in order, each in its own transaction, recorded with a
checksum in ``schema_migrations``; a recorded migration whose file has changed since is an error
(edit a schema by adding a migration, never by changing an applied one).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

from aidr_gate.errors import ConfigError, Problem

_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema migration: its version, file name, SQL text and checksum."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the SQL text, recorded when the migration is applied."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations(dialect: str) -> list[Migration]:
    """The migrations bundled for *dialect* (``postgres`` or ``sqlite``), in order."""
    folder = resources.files("aidr_gate.stores") / "migrations" / dialect
    found: list[Migration] = []
    for item in folder.iterdir():
        match = _NAME.match(item.name)
        if match:
            found.append(Migration(int(match.group(1)), item.name, item.read_text("utf-8")))
    return sorted(found, key=lambda m: m.version)


def latest_version(dialect: str) -> int:
    """The schema version this build needs."""
    return max(m.version for m in migrations(dialect))


def pending(dialect: str, applied: Mapping[int, str], source: str) -> list[Migration]:
    """Migrations not yet applied; ConfigError when an applied one no longer matches its file."""
    problems = [
        Problem(source, "schema_migrations", f"migration {m.name} was changed after it was applied")
        for m in migrations(dialect)
        if m.version in applied and applied[m.version] != m.checksum
    ]
    if problems:
        raise ConfigError(problems)
    return [m for m in migrations(dialect) if m.version not in applied]


def schema_problem(source: str, have: int, need: int) -> ConfigError:
    """The error a store raises on opening a database whose schema is behind this build."""
    return ConfigError.single(
        source,
        "schema_migrations",
        f"registry schema is at version {have}, this gate needs {need}: "
        "run `aidr-gate registry migrate` first",
    )
