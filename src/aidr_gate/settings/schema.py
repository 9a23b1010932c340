"""What a configuration section is: a frozen settings type, its reader, its documented keys.

A :class:`Section` ties a section name to a reader with one signature,
``read(check, raw, base_dir) -> T | None``: *raw* is the section's value as the file gives it
(``None`` when absent: the reader returns its defaults), problems go to *check* with their key
paths, and *base_dir* is where relative paths start. The keys a section documents (the README's
reference is tested against them) and the keys that only a restart applies live beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from aidr_gate.document import Checker

T = TypeVar("T")

# A section whose every key waits for a restart.
EVERY_KEY = "*"


@dataclass(frozen=True, slots=True)
class KeyDoc:
    """One documented key of a section (the README's reference and a test read these)."""

    name: str
    doc: str
    keys: tuple[KeyDoc, ...] = ()


@dataclass(frozen=True, slots=True)
class Section(Generic[T]):
    """One top-level section: its name, reader, documented keys and restart-only keys.

    *restart* names the keys (or :data:`EVERY_KEY`) that a running process cannot change: a
    reload that changes them keeps the running value and says "needs a restart".
    """

    name: str
    read: Callable[[Checker, Any, Path], T | None]
    keys: tuple[KeyDoc, ...]
    restart: tuple[str, ...] = ()
    # A row for the section itself in the reference, for a section that may be one value
    # (``registry: entities.yaml``); empty: the section is documented by its keys only.
    doc: str = ""
    # When whether a key needs a restart depends on the values (a registry file may be renamed,
    # a database store may not): ``rule(old, new)`` is (changed restart-only key paths, what
    # keeps running); *restart* then only documents the keys.
    rule: Callable[[T, T], tuple[tuple[str, ...], T]] | None = None

    def restart_changes(self, old: T, new: T) -> tuple[str, ...]:
        """Key paths of restart-only settings that differ between *old* and *new*."""
        if not self.restart or old == new:
            return ()
        if self.rule is not None:
            return self.rule(old, new)[0]
        if EVERY_KEY in self.restart:
            return tuple(f"{self.name}.{key}" for key in _changed(old, new)) or (self.name,)
        changed = set(_changed(old, new))
        return tuple(f"{self.name}.{key}" for key in self.restart if key in changed)

    def keep_running(self, old: T, new: T) -> T:
        """*new* with its restart-only settings as they are in *old* (what keeps running)."""
        if self.rule is not None:
            return self.rule(old, new)[1]
        if EVERY_KEY in self.restart or not is_dataclass(new):
            return old
        return replace(new, **{key: getattr(old, key) for key in self.restart})  # type: ignore[type-var]


def _changed(old: object, new: object) -> list[str]:
    """The fields that differ; a nested settings value (the proxy's pool) is looked into."""
    if not (is_dataclass(old) and is_dataclass(new)) or type(old) is not type(new):
        return []
    out: list[str] = []
    for f in fields(old):
        before, after = getattr(old, f.name), getattr(new, f.name)
        if before != after:
            inner = _changed(before, after)
            out += inner or [f.name]
    return out


def subkeys(keys: tuple[KeyDoc, ...], name: str) -> tuple[str, ...]:
    """The names under *name* in a documented key table."""
    return next(tuple(k.name for k in key.keys) for key in keys if key.name == name)


class Configured(Protocol):
    """A loaded configuration, as the section modules see it (they cannot import the loader,
    which imports them)."""

    def get(self, section: Section[T], /) -> T:
        """A section's settings."""
        ...
