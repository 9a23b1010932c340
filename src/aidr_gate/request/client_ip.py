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

from aidr_gate.bounded import store_bounded

__all__ = [
    "DEFAULT_TRUSTED_PROXIES",
    "ClientIP",
    "ProxyHeader",
    "TrustedProxies",
    "normalize_ip",
    "normalize_network",
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
# Forwarding lines up to this length are cached (parsed, or with their answer); longer ones are
# parsed and walked per request.
MAX_CACHED_LINE = 512
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
# A parsed Forwarded line: its for= nodes, leftmost first, and the problem of each bad element.
_Elements = tuple[list[str], dict[int, str]]


def normalize_ip(text: str) -> IPAddress | None:
    """Parse one address with :mod:`ipaddress`; IPv4-mapped IPv6 becomes IPv4; an IPv6 zone id
    (``fe80::1%eth0``, RFC 4007) is dropped, since it names an interface of the sender, not part
    of the address (GeoIP and trust lists know the address alone); None if not an IP."""
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address):
        if address.scope_id is not None:
            address = IPv6Address(address.packed)
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
    return address


def normalize_network(network: IPNetwork) -> IPNetwork:
    """An IPv4-mapped IPv6 network (``::ffff:10.0.0.0/104``) as the IPv4 network it stands for.

    Addresses are normalised by :func:`normalize_ip`, so a mapped network would never match one.
    """
    if isinstance(network, IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return IPv4Network((mapped, network.prefixlen - 96))
    return network


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
            networks.append(normalize_network(network))
        self.networks: tuple[IPNetwork, ...] = tuple(networks)
        self._v4 = tuple(n for n in networks if isinstance(n, IPv4Network))
        self._v6 = tuple(n for n in networks if isinstance(n, IPv6Network))
        self.headers: tuple[ProxyHeader, ...] = tuple(ProxyHeader(h) for h in headers)
        if len(set(self.headers)) != len(self.headers):
            raise ValueError("a header is listed twice")
        if cache_size < 1 or max_hops < 1:
            raise ValueError("cache_size and max_hops must be positive")
        self.cache_size = cache_size
        self.max_hops = max_hops
        # Plain strings and positions: enum attribute access is slow on the hot path.
        self._names: tuple[str, ...] = tuple(h.value for h in self.headers)
        self._is_forwarded: tuple[bool, ...] = tuple(
            h is ProxyHeader.FORWARDED for h in self.headers
        )
        self._wanted: dict[bytes, int] = {name.encode(): i for i, name in enumerate(self._names)}
        # What a caller that reads the headers once collects for resolve() (see its docstring).
        self.header_names: frozenset[bytes] = frozenset(self._wanted)
        self._wanted_lengths = frozenset(len(name) for name in self._wanted)
        # "x-forwarded-for[-2]" and the like, built once so a walk allocates no label.
        self._labels: tuple[tuple[str, ...], ...] = tuple(
            tuple(f"{name}[-{back}]" for back in range(max_hops + 2)) for name in self._names
        )
        self._hops: dict[str, _Parsed] = {}
        # Peer text -> the final answer (untrusted or unusable peer), or the canonical text of a
        # trusted peer, whose headers are walked.
        self._peers: dict[object, ClientIP | str] = {}
        self._forwarded: dict[bytes, _Elements] = {}
        # (trusted peer, header position, its one line) -> the answer: most requests carry one
        # forwarding line that their proxy writes the same way each time.
        self._walks: dict[tuple[str, int, bytes], ClientIP] = {}

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
        if len(text) > MAX_HOP_CHARS:  # refused at once; keeping it would fill the cache with junk
            return parsed
        store_bounded(self._hops, self.cache_size, text, parsed)
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

    def _forwarded_line(self, line: bytes) -> _Elements:
        """One Forwarded line parsed into ``for=`` nodes; cached, since the regexes cost microseconds."""
        hit = self._forwarded.get(line)
        if hit is not None:
            return hit
        parsed = _forwarded_elements(line.decode("latin-1"))
        if len(line) <= MAX_CACHED_LINE:  # a long line is parsed each time, never kept
            store_bounded(self._forwarded, self.cache_size, line, parsed)
        return parsed

    # -- the walk ----------------------------------------------------------------------------------

    def resolve(self, peer: str | None, headers: Iterable[tuple[bytes, bytes]]) -> ClientIP:
        """The client address of one request: ASGI peer host and raw ASGI headers in, never raises.

        Only the lines named in :attr:`header_names` are read, so a caller that has read the
        headers already may pass just those lines, in request order (names compared lower-cased,
        repeated lines all kept): the answer is the same, without a second scan of every header.
        """
        try:
            known = self._peers.get(peer)
            if known is None:
                known = self._peer(peer)
                store_bounded(self._peers, self.cache_size, peer, known)
            if isinstance(known, str):
                return self._walk(known, headers)
            return known
        except Exception as exc:  # never raise out of the hot path: fail closed, say why
            return ClientIP(None, "peer", None, (f"client address not resolved: {exc!r:.120}",))

    def _peer(self, peer: object) -> ClientIP | str:
        """The answer for an untrusted or unusable peer, or the canonical text of a trusted one."""
        if peer is None:
            return ClientIP(None, "peer", None, ("the peer address is missing",))
        if not isinstance(peer, str):
            return ClientIP(None, "peer", None, (f"the peer address is not text: {peer!r:.40}",))
        ip, trusted, problem = self._parse(peer)
        if ip is None:
            return ClientIP(None, "peer", None, (f"the peer address {problem}",))
        return ip if trusted else ClientIP(ip, "peer", ip)

    def _walk(self, peer: str, headers: Iterable[tuple[bytes, bytes]]) -> ClientIP:
        wanted = self._wanted
        lengths = self._wanted_lengths
        # The first forwarding line seen; a dict of every line only once there is a second.
        first_index = -1
        first: bytes = b""
        found: dict[int, list[bytes]] | None = None
        for name, value in headers:
            if len(name) in lengths:
                index = wanted.get(name)
                if index is None:
                    # ASGI names are lower case; lowering keeps a non-conforming server safe.
                    if name.islower():
                        continue
                    index = wanted.get(name.lower())
                    if index is None:
                        continue
                if first_index < 0:
                    first_index, first = index, value
                    continue
                if found is None:
                    found = {first_index: [first]}
                found.setdefault(index, []).append(value)
        if first_index < 0:
            return ClientIP(peer, "peer", peer, (_NO_HEADER,))
        if found is None:
            if type(first) is not bytes or len(first) > MAX_CACHED_LINE:
                return self._walk_lines(first_index, [first], peer, ())
            key = (peer, first_index, first)
            hit = self._walks.get(key)
            if hit is not None:
                return hit
            answer = self._walk_lines(first_index, [first], peer, ())
            store_bounded(self._walks, self.cache_size, key, answer)
            return answer
        index = min(found)  # positions follow the configured order: the first listed wins
        notes: tuple[str, ...] = ()
        if len(found) > 1:
            others = ", ".join(self._names[i] for i in sorted(found) if i != index)
            notes = (f"{self._names[index]} used, {others} ignored (first in trusted_headers)",)
        return self._walk_lines(index, found[index], peer, notes)

    def _walk_lines(
        self, index: int, lines: list[bytes], peer: str, notes: tuple[str, ...]
    ) -> ClientIP:
        """Walk the lines of the header at *index* (repeated lines joined in order)."""
        limit = self.max_hops + 1
        if self._is_forwarded[index]:
            hops, problems = _join_lines([self._forwarded_line(line) for line in lines], limit)
        else:
            joined = lines[0] if len(lines) == 1 else b",".join(lines)
            hops, problems = _xff_hops(joined.decode("latin-1"), limit), None
        return self._walk_hops(index, hops, problems, peer, notes)

    def _walk_hops(
        self,
        index: int,
        hops: list[str],
        problems: dict[int, str] | None,
        peer: str,
        notes: tuple[str, ...],
    ) -> ClientIP:
        """Walk hops (leftmost first) from the right to the first that is not a trusted proxy."""
        labels = self._labels[index]
        count = len(hops)
        for back in range(1, min(count, self.max_hops) + 1):
            text = hops[count - back].strip()
            if problems is not None and count - back in problems:
                problem = f"{problems[count - back]}: {_show(text)}"
                return _untrusted(labels[back], peer, notes, problem)
            ip, trusted, problem_or_none = self._parse(text)
            if ip is None:
                return _untrusted(labels[back], peer, notes, problem_or_none or "")
            if not trusted:
                return ClientIP(ip, labels[back], peer, notes)
        name = self._names[index]
        if count > self.max_hops:
            note = f"{name} has more than {self.max_hops} hops; untrusted, no client IP"
            return ClientIP(None, labels[self.max_hops + 1], peer, (*notes, note))
        # Every hop is a trusted proxy (internal traffic, or a proxy that talks to itself): the
        # leftmost hop is the closest thing to a client there is.
        note = f"every {name} hop is a trusted proxy; the leftmost was taken"
        leftmost = self._parse(hops[0].strip())[0]
        return ClientIP(leftmost, labels[count], peer, (*notes, note))


_NO_HEADER = "the peer is a trusted proxy but sent no forwarding header; the peer was taken"


def _untrusted(where: str, peer: str, notes: tuple[str, ...], problem: str) -> ClientIP:
    """The walk stops at a hop that is not an address: no client IP, and why."""
    return ClientIP(None, where, peer, (*notes, f"{where} {problem}; untrusted, no client IP"))


def _xff_hops(text: str, limit: int) -> list[str]:
    """The last *limit* comma-separated hops (unstripped), leftmost first."""
    parts = text.rsplit(",", limit)
    if len(parts) > limit:
        del parts[0]  # the unsplit remainder: never reached by a walk of *limit* hops
    return parts


# RFC 7239: forwarded-element = [ pair ] *( ";" [ pair ] ); pair = token "=" value;
# value = token / quoted-string. Elements are separated by commas outside quoted strings.
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_ELEMENT = re.compile(rf'(?:[^,"]+|{_QUOTED})*')
_PAIR = re.compile(
    rf"[ \t]*([!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]*=[ \t]*({_QUOTED}|[^;\"\s]*)[ \t]*(?:;|\Z)"
)
_UNESCAPE = re.compile(r"\\(.)")


def _forwarded_elements(line: str) -> _Elements:
    """The ``for=`` node of each element of one line, leftmost first, and the bad ones' problems."""
    hops: list[str] = []
    problems: dict[int, str] = {}
    pos = 0
    end = len(line)
    while True:
        match = _ELEMENT.match(line, pos)
        stop = match.end() if match is not None else pos
        if stop < end and line[stop] != ",":
            # An unterminated quote: the rest of the line has no trustworthy boundaries.
            problems[len(hops)] = "is not a valid Forwarded element"
            hops.append(line[pos:].strip())
            break
        node, problem = _for_node(line[pos:stop].strip())
        if problem is not None:
            problems[len(hops)] = problem
        hops.append(node)
        if stop >= end:
            break
        pos = stop + 1
    return hops, problems


def _join_lines(lines: list[_Elements], limit: int) -> tuple[list[str], dict[int, str] | None]:
    """Parsed lines joined in order, cut to the last *limit* hops; never mutates the cached ones."""
    if len(lines) == 1:
        hops, problems = lines[0]
    else:
        hops, problems = [], {}
        for line_hops, line_problems in lines:
            problems.update((len(hops) + i, p) for i, p in line_problems.items())
            hops = hops + line_hops
    cut = len(hops) - limit
    if cut > 0:
        hops = hops[cut:]
        problems = {i - cut: p for i, p in problems.items() if i >= cut}
    return hops, problems or None


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
