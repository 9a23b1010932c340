"""The configuration reference in the README, generated from the registered sections.

``python -c "from aidr_gate.settings.reference import markdown; print(markdown())"`` prints it; a
test holds the README's copy to it, so every documented key exists and every key is documented.
"""

from __future__ import annotations

from collections.abc import Iterator

from aidr_gate.settings.loader import TOP
from aidr_gate.settings.schema import EVERY_KEY, KeyDoc
from aidr_gate.settings.sections import SECTIONS

# Keys whose value is a list of mappings: their keys are written ``name[].key``.
LISTS = frozenset({"geoip.overrides", "audit.sinks"})


def key_paths() -> Iterator[tuple[str, str, bool]]:
    """Every documented key as (path, what it does, restart-only), in the reference's order."""
    for key in TOP:
        yield from _walk("", key, restart=False)
    for section in SECTIONS:
        if section.doc:
            yield section.name, section.doc, False
        for key in section.keys:
            restart = EVERY_KEY in section.restart or key.name in section.restart
            below = frozenset(
                name.split(".", 1)[1] for name in section.restart if name.startswith(f"{key.name}.")
            )
            yield from _walk(section.name, key, restart, below)


def _walk(
    prefix: str, key: KeyDoc, restart: bool, named: frozenset[str] = frozenset()
) -> Iterator[tuple[str, str, bool]]:
    # *named*: the keys under this one that a section names restart-only one by one (the
    # patterns' redis.url); when there are any, only those are, else each inherits *restart*.
    path = f"{prefix}.{key.name}" if prefix else key.name
    yield path, key.doc, restart
    inner = f"{path}[]" if path in LISTS else path
    for sub in key.keys:
        yield from _walk(inner, sub, sub.name in named if named else restart)


def markdown() -> str:
    """The README's table of every key."""
    rows = ["| key | what | a reload |", "| --- | --- | --- |"]
    for path, doc, restart in key_paths():
        rows.append(f"| `{path}` | {doc} | {'needs a restart' if restart else 'applies it'} |")
    return "\n".join(rows) + "\n"
