"""The headers the sidecar sends upstream and back, each built in one pass over the request's.

A request header's name is looked up once in a table of what the proxy does with it (pass it on,
drop it, or keep its value for the forwarding headers it writes), learnt on first sight for names
outside the table, so the common request costs one dictionary lookup a header. Dropped: the
hop-by-hop headers (and the ones ``Connection`` names), ``expect``, and every spelling an upstream
may fold into a header only the sidecar may set (``x-aidr-*``, ``x_aidr_*``, any case).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from aidr_gate.asgi.types import Scope
from aidr_gate.settings.proxy import ProxySettings

# RFC 9110 section 7.6.1, plus the de-facto ones; never forwarded in either direction.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Response headers replaced by the sidecar's own (uvicorn writes ``date``).
RESPONSE_DROP = HOP_BY_HOP | {b"date"}
# Headers the upstream may trust only from the sidecar: any the client sends are removed.
TRUSTED_PREFIX = b"x-aidr-"

# What the proxy does with a request header, by name. PASS: forwarded as it is. DROP: never
# forwarded. The others are dropped, their values kept for the headers the proxy writes itself
# (HOST, FOR, FORWARDED), or read for the hop-by-hop names they list (CONNECTION); NOTED ones are
# forwarded and remembered (the proxy adds X-Forwarded-Proto/Host only when the client sent none,
# and drops Content-Length when it sends the body whole).
PASS, DROP, HOST, FOR, FORWARDED, CONNECTION, PROTO_NOTED, HOST_NOTED, LENGTH_NOTED = range(9)
_REQUEST_KINDS: dict[bytes, int] = {
    **dict.fromkeys(HOP_BY_HOP, DROP),
    # uvicorn already answered any ``100-continue``; the upstream must not wait for another.
    b"expect": DROP,
    b"host": HOST,
    b"x-forwarded-for": FOR,
    b"forwarded": FORWARDED,
    b"connection": CONNECTION,
    b"x-forwarded-proto": PROTO_NOTED,
    b"x-forwarded-host": HOST_NOTED,
    b"content-length": LENGTH_NOTED,
}
_NOTED = (PROTO_NOTED, HOST_NOTED, LENGTH_NOTED)
# Names learnt beyond the table, at most: past it a new name is classified every time (as before
# the table existed), so a caller inventing names cannot grow the process.
MAX_LEARNT_NAMES = 512

# A header value the upstream can read as it is; anything else is percent-encoded.
_PLAIN_VALUE = re.compile(r"[\x21-\x7e]{1,512}")
_HOST_VALUE = re.compile(r"[A-Za-z0-9.:\[\]-]{1,255}")

Header = tuple[str, str]


class RequestHeaders:
    """Builds the header list an upstream request carries (one instance per proxy)."""

    __slots__ = ("_kinds", "_learnt", "_reserved", "settings")

    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        s = settings
        reserved = {s.decision_header, s.entity_header, s.effect_header}
        self._reserved = frozenset(folded(name.encode("latin-1")) for name in reserved)
        # name -> (kind, the name as text): the table, then every name learnt.
        self._kinds: dict[bytes, tuple[int, str]] = {
            name: (kind, name.decode("latin-1")) for name, kind in _REQUEST_KINDS.items()
        }
        for name in self._reserved:
            self._kinds.setdefault(name, (DROP, name.decode("latin-1")))
        self._learnt = 0

    def build(self, scope: Scope, whole_body: bool = False) -> list[Header]:
        """The client's headers less the dropped ones, then the forwarding and decision headers.

        *whole_body*: the body goes as one piece with its exact length, so the client's
        ``content-length`` is left out (the client library writes the right one).
        """
        out, held = self._scan(scope.get("headers") or [])
        if CONNECTION in held:
            out = _unlisted(out, held)
        if whole_body and LENGTH_NOTED in held:
            out = [(n, v) for n, v in out if n != "content-length"]
        self._forwarding(scope, out, held)
        self._decision(scope, out)
        return out

    def _scan(
        self, incoming: list[tuple[bytes, bytes]]
    ) -> tuple[list[Header], dict[int, list[str]]]:
        """One pass: the headers passed on, and the values of the ones the proxy reads."""
        out: list[Header] = []
        held: dict[int, list[str]] = {}
        kinds = self._kinds
        for name, value in incoming:
            entry = kinds.get(name)
            if entry is None:
                entry = self._learn(name)
            kind, text = entry
            if kind == PASS:
                out.append((text, value.decode("latin-1")))
            elif kind != DROP:
                decoded = value.decode("latin-1")
                held.setdefault(kind, []).append(decoded)
                if kind in _NOTED:
                    out.append((text, decoded))
        return out, held

    def _learn(self, name: bytes) -> tuple[int, str]:
        entry = (DROP if trusted_spelling(name, self._reserved) else PASS, name.decode("latin-1"))
        if self._learnt < MAX_LEARNT_NAMES:
            self._learnt += 1
            self._kinds[name] = entry
        return entry

    def _forwarding(self, scope: Scope, out: list[Header], held: dict[int, list[str]]) -> None:
        """X-Forwarded-For and Forwarded appended to, X-Forwarded-Host/Proto when absent."""
        forwarded_for = held.get(FOR, [])
        forwarded = held.get(FORWARDED, [])
        hosts = held.get(HOST)
        host = hosts[-1] if hosts else None
        proto: str = scope.get("scheme", "http")
        client = scope.get("client")
        peer = client[0] if client else None
        if self.settings.forward_client_ip and peer:
            forwarded_for.append(peer)
            node = f'"[{peer}]"' if ":" in peer else peer
            element = f"for={node};proto={proto}"
            if host is not None and _HOST_VALUE.fullmatch(host):
                element += f';host="{host}"'
            forwarded.append(element)
        if forwarded_for:
            out.append(("x-forwarded-for", ", ".join(forwarded_for)))
        if forwarded:
            out.append(("forwarded", ", ".join(forwarded)))
        if host is not None and HOST_NOTED not in held:
            out.append(("x-forwarded-host", host))
        if PROTO_NOTED not in held:
            out.append(("x-forwarded-proto", proto))

    def _decision(self, scope: Scope, out: list[Header]) -> None:
        """What the gate decided, in the headers only the sidecar sets."""
        state = scope.get("state")
        decision = state.get(self.settings.state_key) if state else None
        if decision is None:
            return
        s = self.settings
        out.append((s.decision_header, decision.decision_id))
        out.append((s.effect_header, decision.effect.value))
        entity = decision.evidence.entity_id
        if entity:
            out.append((s.entity_header, header_text(entity)))


def _unlisted(out: list[Header], held: dict[int, list[str]]) -> list[Header]:
    """*out* less the headers the (first) ``Connection`` header names as hop-by-hop.

    Forwarding headers it names count as absent, as if they had been dropped in the scan.
    """
    value = held[CONNECTION][0].encode("latin-1")
    listed = {v.strip().lower() for v in value.split(b",")}
    for kind, name in ((PROTO_NOTED, b"x-forwarded-proto"), (HOST_NOTED, b"x-forwarded-host")):
        if name in listed:
            held.pop(kind, None)
    return [(n, v) for n, v in out if n.encode("latin-1") not in listed]


def response_headers(raw: Any) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers, lowercased, less hop-by-hop and ``date``."""
    listed: set[bytes] = set()
    for name, value in raw:
        if name.lower() == b"connection":
            listed.update(v.strip().lower() for v in value.split(b","))
    out = []
    for name, value in raw:
        lower = name.lower()
        if lower in RESPONSE_DROP or lower in listed:
            continue
        out.append((lower, value))
    return out


def folded(name: bytes) -> bytes:
    """A header name as an upstream may fold it: any case, ``_`` read as ``-`` (WSGI servers map
    both ``x-aidr-entity`` and ``x_aidr_entity`` to ``HTTP_X_AIDR_ENTITY``)."""
    return name.lower().replace(b"_", b"-")


def trusted_spelling(name: bytes, reserved: frozenset[bytes]) -> bool:
    """True for any spelling of a header only the sidecar may set."""
    if name.startswith(TRUSTED_PREFIX) or name in reserved:
        return True
    # find, not ``in``: CPython 3.11's ``bytes in bytes`` formats and drops a TypeError first.
    if name.find(b"_") < 0 and name.islower():
        return False  # the common case: an ASGI name, already as the upstream reads it
    spelled = folded(name)
    return spelled.startswith(TRUSTED_PREFIX) or spelled in reserved


def header_text(value: str) -> str:
    """A header value safe to send: printable ASCII as is, anything else percent-encoded."""
    return value if _PLAIN_VALUE.fullmatch(value) else quote(value, safe="")[:1024]
