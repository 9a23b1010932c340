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
from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum
from typing import Any, Generic, Protocol, TypeVar

import msgspec
import orjson

from aidr_gate.bounded import store_bounded
from aidr_gate.decision import Decision, Mode
from aidr_gate.document import format_instant
from aidr_gate.settings.audit import ALWAYS_REDACTED, DEFAULT_HEADERS

# 2: the compact record (shared facts in facts records, each fact written once); 1: before.
SCHEMA_VERSION = 2
ECS_VERSION = "8.11.0"
DATASET = "aidr_gate.audit"

# Header names whose values are credentials: never recorded, even when allow-listed by mistake.
REDACTED = "[REDACTED]"
# Appended to a value cut to its cap (``limits.max_recorded_value``): the record says it was cut.
TRUNCATED = "...[TRUNCATED]"
MAX_PATH = 2048
MAX_HEADER_VALUE = 512
# The bounds of the redactor's memory of header tuples (see Redactor.headers).
_RECORDED_KEYS = 1024
_RECORDED_CHARS = 2048
DEFAULT_MAX_RECORD = 16 * 1024
# A value that carries a credential even under an innocent header name: a JWT, an auth scheme, a
# key or token passed as a URL parameter.
_CREDENTIAL = re.compile(
    r"eyJ[A-Za-z0-9_-]{4,}\.|^\s*(?:bearer|basic|digest|splunk|apikey)\s"
    r"|(?:api[_-]?key|access[_-]?token|token|secret|password|passwd|sig|signature)=",
    re.I,
)
# A path segment that is a credential: a JWT, or an API key in a common vendor shape.
_CREDENTIAL_SEGMENT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.|^(?:sk|pk|rk|api|key)-[A-Za-z0-9_-]{16,}")
# What a line reader splits on that JSON leaves raw: escaped in the record's bytes (``\u2028``),
# which reads back as the same string. Anything else (control characters) orjson escapes itself.
_LINE_BREAKS = (
    (b"\xe2\x80\xa8", b"\\u2028"),
    (b"\xe2\x80\xa9", b"\\u2029"),
    (b"\xc2\x85", b"\\u0085"),
)


def escape_line_breaks(body: bytes) -> bytes:
    """*body* (one JSON record) with U+2028, U+2029 and U+0085 escaped: one record stays one line
    for ``str.splitlines`` and the log shippers that split where it does. These bytes can only
    be inside JSON strings, where the escape means the same character.

    Most records are ASCII, which ``isascii`` tells at memory speed; ``bytes.find``, not ``in``,
    for the rest: in CPython 3.11 ``in`` first tries its operand as an int and formats the
    ``TypeError`` it discards (2 µs a record, more than the search)."""
    if not body.isascii() and (body.find(b"\xe2\x80") >= 0 or body.find(b"\xc2\x85") >= 0):
        for raw, escaped in _LINE_BREAKS:
            body = body.replace(raw, escaped)
    return body


def _escaped(text: str) -> str:
    """*text* with lone surrogates (which UTF-8, so JSON, cannot hold) written as ``\\udXXX``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


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
    """What of a request may be recorded, and how much: the header allow-list less the credential
    headers, credentials scrubbed from values and paths, every caller-influenced string capped
    (``limits.max_recorded_value``, marked and counted) and made renderable.

    ``select`` runs on the event loop; the rest on the audit writer's thread, where records are
    rendered: ``notify`` (``Telemetry.truncated``) is called there only.
    """

    def __init__(
        self,
        allowed: Iterable[str] = DEFAULT_HEADERS,
        *,
        max_value: int = MAX_HEADER_VALUE,
        max_record: int = DEFAULT_MAX_RECORD,
    ) -> None:
        self.allowed: frozenset[str] = frozenset(h.lower() for h in allowed) - ALWAYS_REDACTED
        raw = []
        for name in self.allowed:
            try:
                raw.append(name.encode("latin-1"))
            except UnicodeEncodeError:  # it can match no raw header
                continue
        self._allowed_raw = frozenset(raw)
        self.max_value = max_value
        self.max_record = max_record
        self.notify: Callable[[str], None] | None = None
        self.values_cut = 0
        self.records_cut = 0
        # Most callers send the same few header tuples on every request: each one's recordable
        # mapping is worked out once (the credential search alone costs 3 µs a record).
        self._recorded: dict[tuple[tuple[str, str], ...], Mapping[str, str]] = {}

    def cut(self, text: str, cap: int | None = None) -> str:
        """*text* made renderable and cut to *cap* characters (``max_value``), with a marker."""
        cap = self.max_value if cap is None else cap
        if len(text) > cap:
            text = text[:cap] + TRUNCATED
            self.values_cut += 1
            if self.notify is not None:
                self.notify("value")
        return text if text.isascii() else _escaped(text)

    def record_cut(self) -> None:
        """Count a record cut to ``max_record`` bytes."""
        self.records_cut += 1
        if self.notify is not None:
            self.notify("record")

    def select(self, raw: Iterable[tuple[bytes, bytes]]) -> tuple[tuple[str, str], ...]:
        """The allow-listed headers of an ASGI ``scope["headers"]`` list, decoded; of a header
        repeated past ``max_value`` bytes, what follows is not kept (it would be cut anyway)."""
        allowed = self._allowed_raw
        cap = self.max_value
        out = []
        kept: dict[bytes, int] = {}
        for name, value in raw:
            # ASGI names are lower case: only a non-conforming server's names are lowered here.
            if name not in allowed and (name.islower() or name.lower() not in allowed):
                continue
            key = name.lower()
            size = kept.get(key, 0)
            if size > cap:
                continue
            kept[key] = size + len(value) + 2
            out.append((key.decode("latin-1"), value[: cap + 1].decode("latin-1")))
        return tuple(out)

    def headers(self, pairs: Iterable[tuple[str, str]]) -> Mapping[str, str]:
        """The recordable headers as a mapping; repeated names are joined with ``, `` (once, at
        the end: linear in the values kept), each joined value capped.

        A tuple of pairs seen before gets the same mapping again (shared: read it, never change
        it). Kept: at most ``_RECORDED_KEYS`` tuples of at most ``_RECORDED_CHARS`` characters,
        and only those with no value cut (every cut is counted when it happens) and nothing
        redacted in any value (the tuple, the key, holds the raw value: a credential is not held
        in memory longer than its request).
        """
        if type(pairs) is tuple:
            seen = self._recorded.get(pairs)
            if seen is not None:
                return seen
            cuts = self.values_cut
            recorded = self._headers(pairs)
            if (
                cuts == self.values_cut
                and sum(len(n) + len(v) for n, v in pairs) <= _RECORDED_CHARS
                # In any value: a URL keeps its base, a repeated header is joined.
                and not any(REDACTED in value for value in recorded.values())
            ):
                store_bounded(self._recorded, _RECORDED_KEYS, pairs, recorded)
            return recorded
        return self._headers(pairs)

    def _headers(self, pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
        joined: dict[str, list[str]] = {}
        sizes: dict[str, int] = {}
        allowed = self.allowed
        cap = self.max_value
        for name, value in pairs:
            key = name.lower()
            if key not in allowed:
                continue
            parts = joined.get(key)
            if parts is None:
                parts = joined[key] = []
                sizes[key] = 0
            elif sizes[key] > cap:
                continue  # already past the cap: the rest is cut off
            text = value[: cap + 1]
            sizes[key] += len(text) + 2
            if _CREDENTIAL.search(text):
                text = _without_credential(text)
            parts.append(text)
        return {key: self.cut(", ".join(parts)) for key, parts in joined.items()}

    def path(self, path: str) -> str:
        """The recorded path: no query string or fragment, no credential segment, capped."""
        return self.cut(without_credential_segments(clean_path(path, MAX_PATH + 1)), MAX_PATH)


def without_credential_segments(path: str) -> str:
    """*path* (no query) with each segment that is a credential (a JWT, an API key) redacted."""
    if "eyJ" not in path and "-" not in path:
        return path
    return "/".join(
        REDACTED if _CREDENTIAL_SEGMENT.search(segment) else segment for segment in path.split("/")
    )


def loggable_target(target: str) -> str:
    """A request target (path and query) as a log line may show it: credential segments and
    the whole query string redacted (the query is where keys and tokens are sent)."""
    path, mark, _ = target.partition("?")
    path = without_credential_segments(path)
    return f"{path}?{REDACTED}" if mark else path


def _without_credential(text: str) -> str:
    """A header value that holds a credential: a URL keeps its scheme, host and path, its query
    (where the credential is) redacted; anything else is redacted whole."""
    if "://" in text:
        base = text.split("#", 1)[0].split("?", 1)[0]
        if not _CREDENTIAL.search(base):
            return f"{base}?{REDACTED}"
    return REDACTED


def clean_path(path: str, limit: int = MAX_PATH) -> str:
    """The path without its query string or fragment (which may carry keys), bounded in length."""
    if "?" not in path and "#" not in path and len(path) <= limit:
        return path  # the common case, once per record
    cut = len(path)
    for mark in ("?", "#"):
        at = path.find(mark)
        if 0 <= at < cut:
            cut = at
    return path[: min(cut, limit)]


def renderable(event: AuditEvent, redactor: Redactor) -> AuditEvent:
    """*event* with every string a caller or a token could choose escaped for JSON and cut to
    the redactor's caps (the slow path of a record that failed to render or was too large): the
    token's claims, the entity id, the path and headers; and a request's headers dropped when,
    even so, the record would be larger than ``max_record``."""
    cut = redactor.cut
    decision = event.decision
    evidence = decision.evidence
    identity = evidence.identity
    if identity is not None:
        identity = msgspec.structs.replace(
            identity,
            entity_id=cut(identity.entity_id),
            subject=None if identity.subject is None else cut(identity.subject),
            key_id=None if identity.key_id is None else cut(identity.key_id, 128),
            issuer=None if identity.issuer is None else cut(identity.issuer),
            claimed_headquarters=None
            if identity.claimed_headquarters is None
            else cut(identity.claimed_headquarters, 64),
            claimed_parent=None
            if identity.claimed_parent is None
            else cut(identity.claimed_parent),
        )
    evidence = msgspec.structs.replace(
        evidence,
        identity=identity,
        entity_id=None if evidence.entity_id is None else cut(evidence.entity_id),
        model_requested=None if evidence.model_requested is None else cut(evidence.model_requested),
    )
    request = event.request
    if request is not None:
        headers = tuple((name, cut(value)) for name, value in request.headers)
        budget = redactor.max_record // 2  # the rest of a record is the gate's own, bounded
        if sum(len(n) + len(v) for n, v in headers) + len(request.path) > budget:
            headers = ()
        request = msgspec.structs.replace(request, path=cut(request.path, 256), headers=headers)
    return AuditEvent(msgspec.structs.replace(decision, evidence=evidence), request)


def compact(value: Any) -> Any:
    """*value* (bytes, or a tuple of them) copied to its exact size, for a long-lived cache.

    orjson returns its output in the buffer it wrote it into, 4 KiB or more whatever the
    length: a cache of 4,096 small serialised members would hold 16 MiB or more.
    """
    if isinstance(value, bytes):
        return memoryview(value).tobytes()
    if isinstance(value, tuple):
        return tuple(memoryview(v).tobytes() if isinstance(v, bytes) else v for v in value)
    return value


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
        value = compact(self._build(obj))
        store_bounded(self._items, self._limit, id(obj), (obj, value))
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
