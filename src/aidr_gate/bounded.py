"""Bounded memos: one policy, written once, for every cache that is a plain dict.

The request stages' caches (hop parses, peers, walks, GeoIP answers, override matches, built
origins), the audit renderer's memos (recorded headers, URL and agent fragments, templates, shared
facts), the readers' (facts records, replayed evidence) and the tracker's are plain dicts cleared
whole when full. Clearing costs one burst of misses; an LRU would cost on every hit, which is what
these caches exist to make cheap (``bench/origin.py`` measures a dict hit against
``cachetools.LRUCache``). The token caches are the exception (:mod:`aidr_gate.request.token_cache`):
a miss there is a signature check, so they evict oldest first instead.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = ["StringPool", "store_bounded"]

_K = TypeVar("_K")
_V = TypeVar("_V")


def store_bounded(cache: dict[_K, _V], size: int, key: _K, value: _V) -> None:
    """Store *value* under *key*, clearing *cache* first when it holds *size* entries."""
    if len(cache) >= size:
        cache.clear()
    cache[key] = value


class StringPool:
    """One object per distinct string, at most *size* held (cleared whole when full, as above).

    Why: a dict lookup whose key is the very object stored matches it by identity and never reads
    it; an equal copy is compared byte by byte, which on a large table is a cache miss per lookup.
    ``sys.intern`` does the same but is not bounded: on CPython 3.12.0 to 3.12.4 and on
    free-threaded builds the strings it interns are immortal, so interning what callers send
    would grow for ever (500,000 distinct networks: 46 MB kept on 3.12.1).
    """

    __slots__ = ("_held", "size")

    def __init__(self, size: int) -> None:
        self._held: dict[str, str] = {}
        self.size = size

    def __len__(self) -> int:
        return len(self._held)

    def one(self, text: str) -> str:
        """The pool's object equal to *text* (*text* itself, now held, when new)."""
        held = self._held.get(text)
        if held is None:
            store_bounded(self._held, self.size, text, text)
            held = text
        return held
