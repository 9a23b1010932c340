"""The bounded caches of the request stages: one policy, written once.

Every per-request cache in :mod:`aidr_gate.request` (hop parses, peers, walks, GeoIP answers,
override matches, built origins) is a plain dict that is cleared whole when full. Clearing costs one
burst of misses; an LRU would cost on every hit, which is what these caches exist to make cheap
(``bench/origin.py`` measures a dict hit against ``cachetools.LRUCache``). The token caches are the
exception (:mod:`aidr_gate.request.token_cache`): a miss there is a signature check, so they evict
oldest first instead.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = ["store_bounded"]

_K = TypeVar("_K")
_V = TypeVar("_V")


def store_bounded(cache: dict[_K, _V], size: int, key: _K, value: _V) -> None:
    """Store *value* under *key*, clearing *cache* first when it holds *size* entries."""
    if len(cache) >= size:
        cache.clear()
    cache[key] = value
