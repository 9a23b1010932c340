"""The gate's limits against hostile callers: what one request may cost, and all of them at once.

Every default is written once, here, in :class:`Limits`; the ``limits:`` section of the
configuration overrides any of them (every key optional)::

    limits:
      max_header_bytes: 32768      # names and values of one request's headers, summed: else 431
      max_header_lines: 100        # header lines of one request: else 431
      max_recorded_value: 512      # characters kept of any one recorded string (marker past it)
      max_record_bytes: 16384      # bytes of one audit record's request evidence (marker past it)
      max_buffered_bytes: 33554432 # request body bytes the process buffers at once: else 503
                                   # (at least middleware.max_form_bytes: one largest upload)
      body_timeout: 60             # seconds to read a body the gate must see: else 408
      max_json_containers: 100000  # "{" and "[" bytes in a JSON body (counted before parsing,
                                   # strings included): else 413 BODY_TOO_COMPLEX
      max_connections: 1024        # sidecar: concurrent connections and requests (uvicorn's
                                   # limit_concurrency): else 503
      header_timeout: 10           # sidecar: seconds to receive a request's headers: else closed
      keepalive_timeout: 5         # sidecar: seconds an idle keep-alive connection is kept

The last three are uvicorn's, fixed when the sidecar starts: a reload that changes them says
"needs a restart" and keeps them; the others apply on reload, in the same swap as the rest of the
configuration (the one buffer budget is resized; bodies in flight give back what they took).

The header limits apply before any token is verified: a caller without credentials costs no more
than they allow. Bodies count against one process-wide budget while the gate holds them (from the
first byte read until the app starts its answer, or the request ends), so many slow or large
uploads at once are refused with 503 and ``Retry-After`` rather than growing the process without
bound.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aidr_gate.document import Checker
from aidr_gate.settings.schema import KeyDoc, Section

__all__ = ["LARGE_BODY", "LIMITS", "BufferBudget", "Limits", "read_limits"]

# A body past this many bytes is large: large bodies share three quarters of the budget.
LARGE_BODY = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits one gate process applies (see the module docstring for each key)."""

    max_header_bytes: int = 32 * 1024
    max_header_lines: int = 100
    max_recorded_value: int = 512
    max_record_bytes: int = 16 * 1024
    # One largest form upload; with the copies an upload has in flight to the upstream, the
    # sidecar stays within +64 MiB of its idle RSS under body floods (bench/hostile.py).
    max_buffered_bytes: int = 32 * 1024 * 1024
    body_timeout: float = 60.0
    max_json_containers: int = 100_000
    max_connections: int = 1024
    header_timeout: float = 10.0
    keepalive_timeout: float = 5.0


SECTION = "limits"

KEYS: tuple[KeyDoc, ...] = (
    KeyDoc(
        "max_header_bytes", "bytes of one request's header names and values, summed (past it: 431)"
    ),
    KeyDoc("max_header_lines", "header lines of one request (past it: 431)"),
    KeyDoc("max_recorded_value", "characters kept of any one recorded string (a marker past it)"),
    KeyDoc("max_record_bytes", "bytes of one audit record's request evidence (a marker past it)"),
    KeyDoc("max_buffered_bytes", "request body bytes the process buffers at once (past it: 503)"),
    KeyDoc("body_timeout", "seconds to read a body the gate must see (past it: 408)"),
    KeyDoc("max_json_containers", "JSON objects and arrays in a body (past it: 413)"),
    KeyDoc("max_connections", "sidecar: concurrent connections and requests (past it: 503)"),
    KeyDoc("header_timeout", "sidecar: seconds to receive a request's headers"),
    KeyDoc("keepalive_timeout", "sidecar: seconds an idle keep-alive connection is kept"),
)

# Minimum of each integer key; the seconds keys take at least 0.01.
_INTEGERS = {
    "max_header_bytes": 1024,
    "max_header_lines": 8,
    "max_recorded_value": 64,
    "max_record_bytes": 2048,
    "max_buffered_bytes": 64 * 1024,
    "max_json_containers": 16,
    "max_connections": 1,
}
_SECONDS = ("body_timeout", "header_timeout", "keepalive_timeout")
# The sidecar's uvicorn takes these when it starts: a reload reports them as needing a restart.
# The rest apply on reload, with the rest of the configuration, in the same swap.
RESTART_ONLY = ("max_connections", "header_timeout", "keepalive_timeout")


def read_limits(check: Checker, raw: Any, base_dir: Path | None = None) -> Limits | None:
    """Read the ``limits:`` section (``None``: the defaults); problems go to *check*.

    *base_dir* is unused (the section names no file); it keeps the section readers' signature.
    """
    if raw is None:
        return Limits()
    data = check.mapping(raw, SECTION, keys=[k.name for k in KEYS])
    if data is None:
        return None
    values: dict[str, int | float] = {}
    for key, minimum in _INTEGERS.items():
        if data.get(key) is not None:
            read = check.integer(data[key], f"{SECTION}.{key}", minimum=minimum)
            if read is not None:
                values[key] = read
    for key in _SECONDS:
        if data.get(key) is not None:
            seconds = check.number(data[key], f"{SECTION}.{key}", minimum=0.01)
            if seconds is not None:
                values[key] = seconds
    return Limits(**values)  # type: ignore[arg-type]


LIMITS: Section[Limits] = Section(SECTION, read_limits, KEYS, restart=RESTART_ONLY)


class BufferBudget:
    """The request body bytes a process holds at once, against ``limits.max_buffered_bytes``.

    Taken as bytes arrive and given back when the app starts its answer (or the request ends),
    on the event loop's thread: plain integers, no lock. Large bodies (past ``LARGE_BODY``) may
    hold at most three quarters of the budget between them: slow large uploads cannot starve the
    small requests (a chat completion's few kilobytes) of the rest. Once the bytes held come back
    to zero after a large peak, the C allocator is asked to return its free memory to the system
    (``malloc_trim``), so an attack's memory does not stay with the process.
    """

    __slots__ = ("_trim_above", "held", "large_held", "large_limit", "limit", "peak", "refused")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.large_limit = limit * 3 // 4
        self.held = 0
        self.large_held = 0  # what bodies past LARGE_BODY hold, within held
        self.peak = 0  # the most held since memory was last handed back
        self.refused = 0  # requests refused for want of budget
        self._trim_above = min(limit // 4, 8 * 1024 * 1024)

    def resize(self, limit: int) -> None:
        """Apply a reloaded ``max_buffered_bytes``: the bytes held stay counted (their requests
        give them back here), and only new takes meet the new limit."""
        self.limit = limit
        self.large_limit = limit * 3 // 4
        self._trim_above = min(limit // 4, 8 * 1024 * 1024)

    def take(self, size: int, holding: int = 0) -> bool:
        """Hold *size* more bytes for a body already holding *holding*; False (nothing held)
        when that would pass the limit, or the large bodies' share."""
        after = holding + size
        large = 0
        if after > LARGE_BODY:  # the body is large from this chunk on: all of it counts as such
            large = size if holding > LARGE_BODY else after
            if self.large_held + large > self.large_limit:
                return False
        held = self.held + size
        if held > self.limit:
            return False
        self.held = held
        self.large_held += large
        if held > self.peak:
            self.peak = held
        return True

    def give_back(self, size: int) -> None:
        """Release the *size* bytes a body took (all it held)."""
        self.held -= size
        if size > LARGE_BODY:
            self.large_held -= size
        if self.held <= 0:
            self.held = self.large_held = 0
            if self.peak > self._trim_above:
                self.peak = 0
                _trim()


def _load_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None)
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return trim


_MALLOC_TRIM = _load_trim()


def _trim() -> None:
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
LARGE_ALLOCATION = 128 * 1024


def hand_back_large_allocations() -> bool:
    """Serve every allocation of ``LARGE_ALLOCATION`` bytes or more (request bodies) from its own
    mapping, returned to the system when freed (glibc, where this is the initial threshold, raises
    it to the largest block freed, up to 32 MiB: buffered bodies would then stay in the heap).
    For the sidecar's process, which it owns; a host process's allocator is the host's. False
    where the C library has no ``mallopt``."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, LARGE_ALLOCATION))
