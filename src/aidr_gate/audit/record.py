"""The audit event, and what its renderings share (ECS in ``ecs.py``, OCSF in ``ocsf.py``).

An :class:`AuditEvent` is the immutable input of one record: the gate's :class:`Decision` (which
carries every fact it rested on) and a :class:`RequestContext` the transport fills in (method, path,
the allow-listed headers, how the request ended, timings). Renderers turn it into the bytes of one
JSON object; the chain (``chain.py``) then appends the sequence number and hashes.

Rendering reads the decision objects directly and caches the parts that many requests share (the
entity with its agreements, the model, the pack reference, the jurisdiction facts the engine already
caches), so a record costs a few microseconds rather than the ~16 µs of ``Decision.to_dict()``.
Redaction is applied here, whatever the caller passed: no tokens, no bodies, no query strings, no
header values beyond the configured allow-list, and never the credential headers.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Any, Generic, Protocol, TypeVar

import msgspec
import orjson

from aidr_gate.decision import Decision, Mode
from aidr_gate.document import format_instant
from aidr_gate.settings.audit import ALWAYS_REDACTED, DEFAULT_HEADERS

# 2: the compact record (shared facts in facts records, each fact written once); 1: before.
SCHEMA_VERSION = 2
ECS_VERSION = "8.11.0"
DATASET = "aidr_gate.audit"

# Header names whose values are credentials: never recorded, even when allow-listed by mistake.
REDACTED = "[REDACTED]"
MAX_PATH = 2048
MAX_HEADER_VALUE = 512
# A value that carries a credential even under an innocent header name: a JWT or an auth scheme.
_CREDENTIAL = re.compile(
    r"eyJ[A-Za-z0-9_-]{4,}\.|^\s*(?:bearer|basic|digest|splunk|apikey)\s", re.I
)


class Ending(StrEnum):
    """How the request ended, as the transport saw it."""

    COMPLETED = "completed"
    CLIENT_DISCONNECTED = "client-disconnected"
    ERROR = "error"
    DENIED = "denied"
    CUT = "cut"  # admitted, then ended by the gate: a change now denies it (ACCESS_REVOKED)


class RequestContext(msgspec.Struct, frozen=True, gc=False):
    """What the transport knows of one request beside the decision. Never holds a body or token.

    ``headers`` should already be limited to the allow-list (see :meth:`Redactor.select`); the
    renderer applies the allow-list again, so a wider tuple is still safe. Times are microseconds.
    A msgspec Struct, like the decision: one is made per request, 18 times faster than a frozen
    dataclass.
    """

    method: str
    path: str
    scheme: str = "http"
    http_version: str = "1.1"
    headers: tuple[tuple[str, str], ...] = ()
    status: int | None = None  # the status the client was sent
    upstream_status: int | None = None
    upstream_duration_us: int | None = None
    gate_us: int | None = None  # time the gate added to the request
    ending: Ending = Ending.COMPLETED
    body_bytes: int | None = None
    upstream_error: str | None = None  # UPSTREAM_UNAVAILABLE, UPSTREAM_TIMEOUT, ... (sidecar)
    cut_of: str | None = None  # a cut's own record: the decision id of the stream it ended


class AuditEvent(msgspec.Struct, frozen=True, gc=False):
    """The immutable input of one audit record."""

    decision: Decision
    request: RequestContext | None = None


class Redactor:
    """Which request header values may be recorded: the allow-list less the credential headers."""

    def __init__(self, allowed: Iterable[str] = DEFAULT_HEADERS) -> None:
        self.allowed: frozenset[str] = frozenset(h.lower() for h in allowed) - ALWAYS_REDACTED
        raw = []
        for name in self.allowed:
            try:
                raw.append(name.encode("latin-1"))
            except UnicodeEncodeError:  # it can match no raw header
                continue
        self._allowed_raw = frozenset(raw)

    def select(self, raw: Iterable[tuple[bytes, bytes]]) -> tuple[tuple[str, str], ...]:
        """The allow-listed headers of an ASGI ``scope["headers"]`` list, decoded."""
        allowed = self._allowed_raw
        out = []
        for name, value in raw:
            # ASGI names are lower case: only a non-conforming server's names are lowered here.
            if name not in allowed and (name.islower() or name.lower() not in allowed):
                continue
            out.append((name.lower().decode("latin-1"), value.decode("latin-1")))
        return tuple(out)

    def headers(self, pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
        """The recordable headers as a mapping; repeated names are joined with ``, ``."""
        out: dict[str, str] = {}
        allowed = self.allowed
        for name, value in pairs:
            key = name.lower()
            if key not in allowed:
                continue
            text = value[:MAX_HEADER_VALUE]
            if _CREDENTIAL.search(text):
                text = REDACTED
            out[key] = f"{out[key]}, {text}" if key in out else text
        return out


def clean_path(path: str) -> str:
    """The path without its query string or fragment (which may carry keys), bounded in length."""
    if "?" not in path and "#" not in path and len(path) <= MAX_PATH:
        return path  # the common case, once per record
    cut = len(path)
    for mark in ("?", "#"):
        at = path.find(mark)
        if 0 <= at < cut:
            cut = at
    return path[: min(cut, MAX_PATH)]


K = TypeVar("K")


class ObjectCache(Generic[K]):
    """A bounded cache keyed by object identity, for frozen objects many records share.

    It holds a strong reference to each key object, so an id cannot be reused while cached.
    """

    def __init__(self, build: Callable[[K], Any], limit: int = 4096) -> None:
        self._build = build
        self._limit = limit
        self._items: dict[int, tuple[K, Any]] = {}

    def get(self, obj: K) -> Any:
        """The built value for *obj*."""
        hit = self._items.get(id(obj))
        if hit is not None and hit[0] is obj:
            return hit[1]
        value = self._build(obj)
        if len(self._items) >= self._limit:
            self._items.clear()
        self._items[id(obj)] = (obj, value)
        return value


class _Clock:
    """ISO 8601 UTC with milliseconds; the second part is formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""
        self._json_at = (-1, -1)  # the (second, millisecond) self._json is for
        self._json = b""

    def format(self, at: float) -> str:
        second = int(at)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((at - second) * 1000):03d}Z"

    def json(self, at: float) -> bytes:
        """:meth:`format` as a JSON string; records of the same millisecond share it."""
        second = int(at)
        key = (second, int((at - second) * 1000))  # as format() computes it
        # Its own key, not format()'s: format() moves self._second without touching self._json.
        if key != self._json_at:
            self._json = b'"%s"' % self.format(at).encode("ascii")
            self._json_at = key
        return self._json


class Renderer(Protocol):
    """Turns an event into the bytes of one JSON object (no newline)."""

    name: str

    def render(self, event: AuditEvent) -> bytes:
        """The record's JSON object."""
        ...

    def new_file(self) -> None:
        """The journal starts a new file: the shared facts (``facts.py``) are written again."""
        ...


def fallback_record(event: object, error: BaseException) -> bytes:
    """A minimal record for an event the renderer failed on: the record is never lost."""
    decision = getattr(event, "decision", None)
    return orjson.dumps(
        {
            "@timestamp": format_instant(time.time()),
            "event": {
                "kind": "pipeline_error",
                "id": getattr(decision, "decision_id", None),
                "dataset": DATASET,
                "outcome": "unknown",
            },
            "aidr": {
                "schema": SCHEMA_VERSION,
                "render_error": type(error).__name__,
                "decision": {
                    "id": getattr(decision, "decision_id", None),
                    "effect": getattr(getattr(decision, "effect", None), "value", None),
                    "mode": getattr(getattr(decision, "mode", None), "value", Mode.ENFORCE.value),
                },
            },
        }
    )
