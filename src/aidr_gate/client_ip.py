"""The trust boundary for client addresses: which IP a request really comes from.

The peer address (ASGI ``scope["client"]``) is the client, unless the peer is a configured trusted
proxy (default: loopback only). Behind trusted proxies the forwarding header is walked from the right,
the hop each proxy appended, to the first hop that is not itself a trusted proxy: everything left of
that hop was written by the client and proves nothing.

Rules, each chosen to fail closed:

- Repeated header lines are joined in order (RFC 9110 list semantics), then split on commas.
- A hop that is not an IP address (empty, ``unknown``, an RFC 7239 obfuscated ``_name``, garbage,
  non-ASCII bytes, oversized) is treated as untrusted: the walk stops there with no IP (so the country is
  unknown) and a note says why. It never skips past such a hop to something further left, which the
  attacker controls.
- When every hop is a trusted proxy the leftmost hop is taken, and a note says so.
- A trusted peer that sent no forwarding header is itself the client, with a note.
- IPv4-mapped IPv6 (``::ffff:a.b.c.d``) is normalised to IPv4 everywhere, peers included.
- Only the headers named in configuration are read. ``x-forwarded-for`` alone is the default (what
  nginx, HAProxy, cloud load balancers and uvicorn use). When both ``forwarded`` and
  ``x-forwarded-for`` are configured, the first one listed that the request carries is used and the other
  is ignored, with a note when both are present. List only headers your proxies set or overwrite: a
  header the proxy passes through untouched is the client's to forge.
- A hop may carry a port (``1.2.3.4:80``, ``[2001:db8::1]:443``); it is dropped. Unbracketed IPv6 is
  accepted where it parses as a whole address.

Parsing uses :mod:`ipaddress` (which rejects leading zeros and other ambiguous forms); parsed hops are
cached by their text in a bounded dict, so a warm request costs dictionary lookups, not parsing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

__all__ = [
    "DEFAULT_TRUSTED_PROXIES",
    "ClientIP",
    "ProxyHeader",
    "TrustedProxies",
    "normalize_ip",
]

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


class ProxyHeader(StrEnum):
    """A forwarding header the gate may trust, by its lower-case name."""

    FORWARDED = "forwarded"  # RFC 7239
    X_FORWARDED_FOR = "x-forwarded-for"


DEFAULT_TRUSTED_PROXIES: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
DEFAULT_HEADERS: tuple[ProxyHeader, ...] = (ProxyHeader.X_FORWARDED_FOR,)

# No real chain is this deep; a longer one is cut (and the walk fails closed) so a huge header cannot
# cost more than this many parses.
MAX_HOPS = 32
# The longest sensible hop: a bracketed IPv6 address with a zone id and a port. Longer is garbage.
MAX_HOP_CHARS = 96
# How much of a garbage value a note repeats (notes reach audit records; keep them short).
_SHOWN_CHARS = 40


@dataclass(frozen=True, slots=True)
class ClientIP:
    """The resolved client address and how it was chosen."""

    ip: str | None  # canonical text (IPv4-mapped IPv6 as IPv4), or None when no hop is usable
    resolved_by: str  # "peer", or the hop: "x-forwarded-for[-2]", "forwarded[-1]"
    peer: str | None  # the peer address, canonical, or None when missing or not an IP
    notes: tuple[str, ...] = ()


# Parsed hop: (canonical ip or None, trusted proxy?, problem when not an IP).
_Parsed = tuple[str | None, bool, str | None]


def normalize_ip(text: str) -> IPAddress | None:
    """Parse one address with :mod:`ipaddress`; IPv4-mapped IPv6 becomes IPv4; None if not an IP."""
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _show(text: str) -> str:
    """A value as a note quotes it: repr (escapes control and non-ASCII bytes), cut short."""
    if len(text) > _SHOWN_CHARS:
        return f"{text[:_SHOWN_CHARS]!r}... ({len(text)} characters)"
    return repr(text)


_PORT = re.compile(r"[0-9]{1,5}|_[A-Za-z0-9._-]+")  # a number, or an RFC 7239 obfuscated port
_OBFUSCATED = re.compile(r"_[A-Za-z0-9._-]+")  # RFC 7239 obfnode


def _split_node(text: str) -> tuple[str | None, str | None]:
    """Split ``host[:port]``; (host, None) or (None, problem). Brackets are required for v6 ports."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None, "unclosed '['"
        rest = text[end + 1 :]
        if rest and not (rest[0] == ":" and _PORT.fullmatch(rest[1:])):
            return None, "junk after ']'"
        host = text[1:end]
        if ":" not in host:  # brackets are for IPv6 only
            return None, "brackets around a non-IPv6 value"
        return host, None
    if text.count(":") == 1:  # IPv4 with a port; IPv6 always has two or more colons
        host, port = text.split(":")
        if not _PORT.fullmatch(port):
            return None, "bad port"
        return host, None
    return text, None


class TrustedProxies:
    """Which peers may speak for the client, and how their forwarding headers are read."""

    def __init__(
        self,
        cidrs: Iterable[str | IPNetwork] = DEFAULT_TRUSTED_PROXIES,
        *,
        headers: Sequence[str | ProxyHeader] = DEFAULT_HEADERS,
        cache_size: int = 4096,
        max_hops: int = MAX_HOPS,
    ) -> None:
        """Build from CIDRs (a bare address is a /32 or /128); raise ValueError on a bad one."""
        networks: list[IPNetwork] = []
        for cidr in cidrs:
            network = cidr if isinstance(cidr, IPv4Network | IPv6Network) else ip_network(cidr)
            # Trust of an IPv4-mapped range means trust of the IPv4 range: addresses are normalised.
            if isinstance(network, IPv6Network):
                mapped = network.network_address.ipv4_mapped
                if mapped is not None and network.prefixlen >= 96:
                    network = IPv4Network((mapped, network.prefixlen - 96))
            networks.append(network)
        self.networks: tuple[IPNetwork, ...] = tuple(networks)
        self._v4 = tuple(n for n in networks if isinstance(n, IPv4Network))
        self._v6 = tuple(n for n in networks if isinstance(n, IPv6Network))
        self.headers: tuple[ProxyHeader, ...] = tuple(ProxyHeader(h) for h in headers)
        if len(set(self.headers)) != len(self.headers):
            raise ValueError("a header is listed twice")
        self._wanted: dict[bytes, ProxyHeader] = {h.value.encode(): h for h in self.headers}
        self._wanted_lengths = frozenset(len(name) for name in self._wanted)
        if cache_size < 1 or max_hops < 1:
            raise ValueError("cache_size and max_hops must be positive")
        self.cache_size = cache_size
        self.max_hops = max_hops
        self._hops: dict[str, _Parsed] = {}
        self._peers: dict[str, ClientIP | None] = {}  # None: the peer is trusted, walk the headers

    def __repr__(self) -> str:
        nets = ", ".join(str(n) for n in self.networks)
        return f"TrustedProxies([{nets}], headers={[h.value for h in self.headers]})"

    # -- parsing -----------------------------------------------------------------------------------

    def is_trusted(self, ip: str) -> bool:
        """Whether *ip* (any textual form) is inside a trusted network; garbage is never trusted."""
        return self._parse(ip)[1]

    def _contains(self, address: IPAddress) -> bool:
        networks = self._v4 if isinstance(address, IPv4Address) else self._v6
        return any(address in network for network in networks)

    def _parse(self, text: str) -> _Parsed:
        hit = self._hops.get(text)
        if hit is not None:
            return hit
        parsed = self._parse_uncached(text)
        hops = self._hops
        if len(hops) >= self.cache_size:
            # Clearing costs one burst of re-parses; an LRU costs every hit (see bench/origin.py).
            hops.clear()
        hops[text] = parsed
        return parsed

    def _parse_uncached(self, text: str) -> _Parsed:
        if not text:
            return None, False, "is empty"
        if len(text) > MAX_HOP_CHARS:
            return None, False, f"is not an IP address: {_show(text)}"
        if text.lower() == "unknown" or _OBFUSCATED.fullmatch(text):
            return None, False, f"is an obfuscated identifier: {_show(text)}"
        host, problem = _split_node(text)
        address = None if host is None else normalize_ip(host)
        if address is None:
            # An unbracketed IPv6 address would be cut at a colon by the port split: try it whole.
            address = normalize_ip(text) if text.count(":") >= 2 else None
        if address is None:
            why = f" ({problem})" if problem else ""
            return None, False, f"is not an IP address: {_show(text)}{why}"
        return str(address), self._contains(address), None

    # -- the walk ----------------------------------------------------------------------------------

    def resolve(self, peer: str | None, headers: Iterable[tuple[bytes, bytes]]) -> ClientIP:
        """The client address of one request: ASGI peer host and raw ASGI headers in, never raises."""
        try:
            if peer is None:
                return ClientIP(None, "peer", None, ("the peer address is missing",))
            known = self._peers.get(peer)
            if known is not None:
                return known
            if peer not in self._peers:
                known = self._peer(peer)
                if len(self._peers) >= self.cache_size:
                    self._peers.clear()
                self._peers[peer] = known
                if known is not None:
                    return known
            return self._walk(self._parse(peer)[0], headers)
        except Exception as exc:  # never raise out of the hot path: fail closed, say why
            return ClientIP(None, "peer", None, (f"client address not resolved: {exc!r}",))

    def _peer(self, peer: object) -> ClientIP | None:
        """The answer for an untrusted or unusable peer, or None when the peer is a trusted proxy."""
        if not isinstance(peer, str):
            return ClientIP(None, "peer", None, (f"the peer address is not text: {peer!r:.40}",))
        ip, trusted, problem = self._parse(peer)
        if ip is None:
            return ClientIP(None, "peer", None, (f"the peer address {problem}",))
        return None if trusted else ClientIP(ip, "peer", ip)

    def _walk(self, peer: str | None, headers: Iterable[tuple[bytes, bytes]]) -> ClientIP:
        found: dict[ProxyHeader, list[bytes]] = {}
        wanted = self._wanted
        lengths = self._wanted_lengths
        for name, value in headers:
            if len(name) in lengths:
                # ASGI names are lower case; lowering here keeps a non-conforming server safe.
                header = wanted.get(name) or wanted.get(name.lower())
                if header is not None:
                    found.setdefault(header, []).append(value)
        notes: list[str] = []
        for header in self.headers:
            lines = found.get(header)
            if lines is None:
                continue
            others = [h.value for h in found if h is not header]
            if others:
                notes.append(
                    f"{header.value} used, {', '.join(others)} ignored (first in trusted_headers)"
                )
            texts = [line.decode("latin-1") for line in lines]
            if header is ProxyHeader.FORWARDED:
                hops = _forwarded_hops(texts, self.max_hops + 1)
            else:
                hops = _xff_hops(texts, self.max_hops + 1)
            return self._walk_hops(header.value, hops, peer, notes)
        notes.append(
            "the peer is a trusted proxy but sent no forwarding header; the peer was taken"
        )
        return ClientIP(peer, "peer", peer, tuple(notes))

    def _walk_hops(
        self, name: str, hops: list[tuple[str, str | None]], peer: str | None, notes: list[str]
    ) -> ClientIP:
        """Walk hops (rightmost last) from the right to the first that is not a trusted proxy."""
        count = len(hops)
        for back in range(1, min(count, self.max_hops) + 1):
            text, syntax = hops[count - back]
            where = f"{name}[-{back}]"
            if syntax is not None:
                notes.append(f"{where} {syntax}: {_show(text)}; untrusted, no client IP")
                return ClientIP(None, where, peer, tuple(notes))
            ip, trusted, problem = self._parse(text)
            if ip is None:
                notes.append(f"{where} {problem}; untrusted, no client IP")
                return ClientIP(None, where, peer, tuple(notes))
            if not trusted:
                return ClientIP(ip, where, peer, tuple(notes))
        if count > self.max_hops:
            where = f"{name}[-{self.max_hops + 1}]"
            notes.append(f"{name} has more than {self.max_hops} hops; untrusted, no client IP")
            return ClientIP(None, where, peer, tuple(notes))
        # Every hop is a trusted proxy (internal traffic, or a proxy that talks to itself): the
        # leftmost hop is the closest thing to a client there is.
        where = f"{name}[-{count}]"
        notes.append(f"every {name} hop is a trusted proxy; the leftmost was taken")
        return ClientIP(self._parse(hops[0][0])[0], where, peer, tuple(notes))


def _xff_hops(lines: list[str], limit: int) -> list[tuple[str, str | None]]:
    """The last *limit* comma-separated hops of the joined lines, stripped, leftmost first."""
    parts = ",".join(lines).rsplit(",", limit)
    if len(parts) > limit:
        parts = parts[1:]  # the unsplit remainder: never reached by a walk of *limit* hops
    return [(part.strip(), None) for part in parts]


# RFC 7239: forwarded-element = [ pair ] *( ";" [ pair ] ); pair = token "=" value;
# value = token / quoted-string. Elements are separated by commas outside quoted strings.
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_ELEMENT = re.compile(rf'(?:[^,"]+|{_QUOTED})*')
_PAIR = re.compile(
    rf"[ \t]*([!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]*=[ \t]*({_QUOTED}|[^;\"\s]*)[ \t]*(?:;|\Z)"
)
_UNESCAPE = re.compile(r"\\(.)")


def _forwarded_hops(lines: list[str], limit: int) -> list[tuple[str, str | None]]:
    """The ``for=`` node of each element, leftmost first; (text, problem) when an element is bad."""
    hops: list[tuple[str, str | None]] = []
    for line in lines:
        pos = 0
        end = len(line)
        while True:
            match = _ELEMENT.match(line, pos)
            stop = match.end() if match is not None else pos
            if stop < end and line[stop] != ",":
                # An unterminated quote: the rest of the line has no trustworthy boundaries.
                hops.append((line[pos:].strip(), "is not a valid Forwarded element"))
                break
            hops.append(_for_node(line[pos:stop].strip()))
            if stop >= end:
                break
            pos = stop + 1
    return hops[-limit:]


def _for_node(element: str) -> tuple[str, str | None]:
    """The unquoted ``for=`` value of one Forwarded element, or (element, problem)."""
    if not element:
        return element, None  # empty: reported as "is empty" by the hop parser
    found: str | None = None
    pos = 0
    while pos < len(element):
        match = _PAIR.match(element, pos)
        if match is None or match.end() == pos:
            return element, "is not a valid Forwarded element"
        if match.group(1).lower() == "for":
            if found is not None:
                return element, "has more than one for= parameter"
            value = match.group(2)
            if value.startswith('"'):
                value = _UNESCAPE.sub(r"\1", value[1:-1])
            found = value
        pos = match.end()
    if found is None:
        return element, "has no for= parameter"
    return found, None
