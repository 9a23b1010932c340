"""The client-IP trust boundary: a spoofing matrix, garbage that never raises, and properties."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aidr_gate.request.client_ip import (
    DEFAULT_TRUSTED_PROXIES,
    MAX_CACHED_LINE,
    MAX_HOP_CHARS,
    ClientIP,
    ProxyHeader,
    TrustedProxies,
    normalize_ip,
    normalize_network,
)
from aidr_gate.request.headers import HeaderPlan

INTERNAL = ["127.0.0.0/8", "::1", "10.0.0.0/8", "fd00::/8"]
PROXIES = {
    "loopback": TrustedProxies(),
    "chain": TrustedProxies(INTERNAL),
    "forwarded": TrustedProxies(INTERNAL, headers=["forwarded"]),
    "both": TrustedProxies(INTERNAL, headers=["forwarded", "x-forwarded-for"]),
    "both-xff-first": TrustedProxies(INTERNAL, headers=["x-forwarded-for", "forwarded"]),
    "short": TrustedProxies(INTERNAL, max_hops=4),
    "short-forwarded": TrustedProxies(INTERNAL, headers=["forwarded"], max_hops=4),
}

XFF = "x-forwarded-for"
FWD = "forwarded"
Header = tuple[str, str | bytes]
C = "198.51.100.7"  # the real client
LO = "127.0.0.1"  # a trusted peer under every preset
PX = "10.0.0.2"  # a trusted internal proxy under the "chain" presets


def X(*values: str | bytes) -> list[Header]:
    """X-Forwarded-For lines."""
    return [(XFF, value) for value in values]


def F(*values: str | bytes) -> list[Header]:
    """Forwarded lines."""
    return [(FWD, value) for value in values]


def asgi(headers: list[Header]) -> list[tuple[bytes, bytes]]:
    """Headers as an ASGI server hands them over: bytes names and values."""
    return [
        (name.encode(), value if isinstance(value, bytes) else value.encode("latin-1"))
        for name, value in headers
    ]


# (id, proxies, peer, headers, expected ip, expected resolved_by, note fragment or None for no notes)
MATRIX: list[tuple[str, str, str | None, list[Header], str | None, str, str | None]] = [
    # An untrusted peer's forwarding headers are ignored, whatever they say.
    ("untrusted-peer-xff", "loopback", "203.0.113.9", X("1.2.3.4"), "203.0.113.9", "peer", None),
    (
        "untrusted-peer-forwarded",
        "forwarded",
        "203.0.113.9",
        F("for=1.2.3.4"),
        "203.0.113.9",
        "peer",
        None,
    ),
    (
        "private-peer-not-trusted-by-default",
        "loopback",
        "10.0.0.5",
        X("1.2.3.4"),
        "10.0.0.5",
        "peer",
        None,
    ),
    ("untrusted-ipv6-peer", "loopback", "2001:db8::5", X("1.2.3.4"), "2001:db8::5", "peer", None),
    (
        "untrusted-peer-ipv4-mapped",
        "loopback",
        "::ffff:203.0.113.9",
        X("1.2.3.4"),
        "203.0.113.9",
        "peer",
        None,
    ),
    # A trusted peer: walk right to left to the first untrusted hop.
    ("trusted-peer-one-hop", "loopback", LO, X(C), C, "xff[-1]", None),
    ("spoofed-prefix-ignored", "loopback", LO, X(f"6.6.6.6, {C}"), C, "xff[-1]", None),
    ("trusted-chain-two", "chain", PX, X(f"6.6.6.6, {C}, 10.0.0.9"), C, "xff[-2]", None),
    ("trusted-chain-three", "chain", PX, X(f"{C}, 10.0.0.9, 10.1.2.3"), C, "xff[-3]", None),
    ("duplicate-lines-joined", "chain", PX, X("6.6.6.6", f"{C}, 10.0.0.9"), C, "xff[-2]", None),
    ("duplicate-lines-order", "chain", PX, X(C, "10.0.0.9"), C, "xff[-2]", None),
    (
        "every-hop-trusted",
        "chain",
        PX,
        X("10.0.0.7, 10.0.0.9"),
        "10.0.0.7",
        "xff[-2]",
        "leftmost was taken",
    ),
    ("trusted-peer-no-header", "chain", PX, [], PX, "peer", "sent no forwarding header"),
    ("whitespace-around-hops", "chain", PX, X(f"  {C}  ,10.0.0.9 "), C, "xff[-2]", None),
    ("mixed-case-header-name", "loopback", LO, [("X-Forwarded-For", C)], C, "xff[-1]", None),
    ("trusted-ipv6-peer", "chain", "fd00::2", X(C), C, "xff[-1]", None),
    (
        "ipv6-loopback-peer-ipv6-hop",
        "loopback",
        "::1",
        X("2001:db8::9"),
        "2001:db8::9",
        "xff[-1]",
        None,
    ),
    ("ipv4-mapped-trusted-peer", "loopback", "::ffff:127.0.0.1", X(C), C, "xff[-1]", None),
    ("ipv4-mapped-hop", "loopback", LO, X(f"::ffff:{C}"), C, "xff[-1]", None),
    ("ipv4-mapped-trusted-hop", "chain", PX, X(f"{C}, ::ffff:10.0.0.9"), C, "xff[-2]", None),
    ("ipv6-upper-case", "loopback", LO, X("2001:DB8::A"), "2001:db8::a", "xff[-1]", None),
    ("xff-ipv4-with-port", "loopback", LO, X(f"{C}:5555"), C, "xff[-1]", None),
    (
        "xff-bracketed-ipv6-port",
        "loopback",
        LO,
        X("[2001:db8::1]:443"),
        "2001:db8::1",
        "xff[-1]",
        None,
    ),
    ("xff-bracketed-ipv6", "loopback", LO, X("[2001:db8::1]"), "2001:db8::1", "xff[-1]", None),
    ("xff-ipv6-zone-dropped", "loopback", LO, X("fe80::1%eth0"), "fe80::1", "xff[-1]", None),
    # RFC 7239 Forwarded.
    (
        "forwarded-quoted-ipv6-port",
        "forwarded",
        LO,
        F('for="[2001:db8:cafe::17]:4711"'),
        "2001:db8:cafe::17",
        "fwd[-1]",
        None,
    ),
    (
        "forwarded-multi-element",
        "forwarded",
        PX,
        F('for=192.0.2.60;proto=http;by=203.0.113.43, for="[fd00::1]"'),
        "192.0.2.60",
        "fwd[-2]",
        None,
    ),
    ("forwarded-ipv4-port", "forwarded", LO, F(f'for="{C}:8080"'), C, "fwd[-1]", None),
    ("forwarded-mixed-case-params", "forwarded", LO, F(f"For={C};Proto=https"), C, "fwd[-1]", None),
    ("forwarded-quoted-comma", "forwarded", LO, F(f'for={C};host="a,b"'), C, "fwd[-1]", None),
    ("forwarded-escaped-quote", "forwarded", LO, F(rf'for={C};ext="x\"y"'), C, "fwd[-1]", None),
    (
        "forwarded-duplicate-lines",
        "forwarded",
        LO,
        F("for=6.6.6.6", f"for={C}"),
        C,
        "fwd[-1]",
        None,
    ),
    (
        "forwarded-unquoted-brackets",
        "forwarded",
        LO,
        F("for=[2001:db8::1]"),
        "2001:db8::1",
        "fwd[-1]",
        None,
    ),
    (
        "forwarded-obfuscated",
        "forwarded",
        PX,
        F(f"for={C}, for=_hidden, for=10.0.0.9"),
        None,
        "fwd[-2]",
        "obfuscated identifier",
    ),
    (
        "forwarded-unknown",
        "forwarded",
        LO,
        F("for=unknown"),
        None,
        "fwd[-1]",
        "obfuscated identifier",
    ),
    (
        "forwarded-no-for",
        "forwarded",
        LO,
        F("proto=https;by=10.0.0.1"),
        None,
        "fwd[-1]",
        "has no for= parameter",
    ),
    (
        "forwarded-two-for",
        "forwarded",
        LO,
        F(f"for=1.2.3.4;for={C}"),
        None,
        "fwd[-1]",
        "more than one for=",
    ),
    (
        "forwarded-unterminated-quote",
        "forwarded",
        LO,
        F(f'for="{C}, for=10.0.0.9'),
        None,
        "fwd[-1]",
        "not a valid Forwarded element",
    ),
    (
        "forwarded-bad-pair",
        "forwarded",
        LO,
        F(f"for {C}"),
        None,
        "fwd[-1]",
        "not a valid Forwarded element",
    ),
    ("forwarded-empty-for", "forwarded", LO, F("for="), None, "fwd[-1]", "is empty"),
    (
        "forwarded-ignored-when-not-configured",
        "chain",
        LO,
        F("for=6.6.6.6"),
        LO,
        "peer",
        "sent no forwarding header",
    ),
    (
        "xff-ignored-when-not-configured",
        "forwarded",
        LO,
        X("6.6.6.6"),
        LO,
        "peer",
        "sent no forwarding header",
    ),
    # Both headers configured: the first listed that is present wins, and the evidence says so.
    (
        "both-forwarded-first",
        "both",
        LO,
        X("6.6.6.6") + F(f"for={C}"),
        C,
        "fwd[-1]",
        "x-forwarded-for ignored",
    ),
    (
        "both-xff-first",
        "both-xff-first",
        LO,
        X(C) + F("for=6.6.6.6"),
        C,
        "xff[-1]",
        "forwarded ignored",
    ),
    ("both-only-xff-present", "both", LO, X(C), C, "xff[-1]", None),
    # Garbage: the hop is untrusted, the walk stops there with no IP, and never skips past it.
    ("garbage-five-octets", "loopback", LO, X("1.2.3.4.5"), None, "xff[-1]", "not an IP address"),
    ("garbage-empty", "loopback", LO, X(""), None, "xff[-1]", "is empty"),
    ("garbage-commas-only", "loopback", LO, X(",,,"), None, "xff[-1]", "is empty"),
    ("garbage-trailing-comma", "loopback", LO, X(f"{C},"), None, "xff[-1]", "is empty"),
    ("garbage-unknown", "loopback", LO, X("unknown"), None, "xff[-1]", "obfuscated identifier"),
    ("garbage-very-long", "loopback", LO, X("1" * 5000), None, "xff[-1]", "5000 characters"),
    (
        "garbage-non-ascii",
        "loopback",
        LO,
        X(b"\xc3\xa9\xff" + C.encode()),
        None,
        "xff[-1]",
        "not an IP address",
    ),
    (
        "garbage-not-skipped",
        "chain",
        PX,
        X(f"{C}, garbage, 10.0.0.9"),
        None,
        "xff[-2]",
        "not an IP address",
    ),
    ("garbage-leading-zeros", "loopback", LO, X("010.0.0.1"), None, "xff[-1]", "not an IP address"),
    ("garbage-cidr", "loopback", LO, X("198.51.100.0/24"), None, "xff[-1]", "not an IP address"),
    ("garbage-bad-port", "loopback", LO, X(f"{C}:http"), None, "xff[-1]", "bad port"),
    ("garbage-unclosed-bracket", "loopback", LO, X("[2001:db8::1"), None, "xff[-1]", "unclosed"),
    (
        "too-many-hops",
        "short",
        PX,
        X(", ".join([C] + ["10.0.0.9"] * 6)),
        None,
        "xff[-5]",
        "more than 4 hops",
    ),
    (
        "too-many-forwarded-hops",
        "short-forwarded",
        PX,
        F(f"for={C}, for=10.0.0.9, for=10.0.0.9", "for=10.0.0.9, for=10.0.0.9, for=10.0.0.9"),
        None,
        "fwd[-5]",
        "more than 4 hops",
    ),
    (
        "forwarded-long-line",
        "forwarded",
        LO,
        F(f'for={C};ext="{"a" * 600}"'),
        C,
        "fwd[-1]",
        None,
    ),
    ("peer-garbage", "loopback", "not-an-ip", X(C), None, "peer", "peer address is not an IP"),
    ("peer-missing", "loopback", None, X(C), None, "peer", "peer address is missing"),
]


@pytest.mark.parametrize(
    ("proxies", "peer", "headers", "ip", "resolved_by", "note"),
    [pytest.param(*case[1:], id=case[0]) for case in MATRIX],
)
def test_spoofing_matrix(
    proxies: str,
    peer: str | None,
    headers: list[Header],
    ip: str | None,
    resolved_by: str,
    note: str | None,
) -> None:
    """Each case resolves to exactly the expected address, hop and evidence."""
    result = PROXIES[proxies].resolve(peer, asgi(headers))
    expected_by = resolved_by.replace("xff[", "x-forwarded-for[").replace("fwd[", "forwarded[")
    assert (result.ip, result.resolved_by) == (ip, expected_by)
    if note is None:
        assert result.notes == ()
    else:
        assert any(note in n for n in result.notes), result.notes
    # The peer evidence is the canonical peer (or None when it is not an address).
    canonical = normalize_ip(peer) if peer else None
    assert result.peer == (str(canonical) if canonical else None)


OTHER_LINES = [
    (b"host", b"api.example"),
    (b"x-forwarded-proto", b"https"),
    (b"forwarded-for", b"x"),
]


@pytest.mark.parametrize(
    ("proxies", "peer", "headers"),
    [pytest.param(case[1], case[2], case[3], id=case[0]) for case in MATRIX],
)
def test_the_forwarding_lines_alone_give_the_same_answer(
    proxies: str, peer: str | None, headers: list[Header]
) -> None:
    """A caller that read the headers once may pass only the lines in ``header_names``."""
    resolver = PROXIES[proxies]
    lines = asgi(headers)
    mixed = [OTHER_LINES[0], *lines[:1], OTHER_LINES[1], *lines[1:], OTHER_LINES[2]]
    picked = [(name, value) for name, value in mixed if name.lower() in resolver.header_names]
    assert resolver.header_names == {h.value.encode() for h in resolver.headers}
    assert resolver.resolve(peer, picked) == resolver.resolve(peer, mixed)


def test_matrix_is_large_enough() -> None:
    """The issue asks for at least 30 spoofing cases."""
    assert len(MATRIX) >= 30
    assert len({case[0] for case in MATRIX}) == len(MATRIX)


def test_repeat_gives_the_same_answer_from_the_caches() -> None:
    """Warm answers (cached peer and hop parses) equal cold ones."""
    proxies = TrustedProxies(INTERNAL, cache_size=2)
    headers = asgi([(XFF, "198.51.100.7, 10.0.0.9")])
    first = proxies.resolve("10.0.0.2", headers)
    for _ in range(3):
        assert proxies.resolve("10.0.0.2", headers) == first
    # A cache of two entries keeps answering correctly while it is cleared over and over.
    for n in range(1, 50):
        hop = f"198.51.100.{n}"
        assert proxies.resolve("10.0.0.2", asgi([(XFF, f"{hop}, 10.0.0.9")])).ip == hop
        assert proxies.resolve(f"203.0.113.{n}", []).ip == f"203.0.113.{n}"


def test_oversized_hops_are_not_cached() -> None:
    """A hop longer than any address is refused each time, never kept (the cache holds short keys)."""
    proxies = TrustedProxies(INTERNAL)
    for n in range(20):
        junk = f"{n:03d}" + "x" * 4000
        found = proxies.resolve("10.0.0.2", asgi([(XFF, f"{junk}, 10.0.0.9")]))
        assert found.ip is None
        assert "is not an IP address" in found.notes[-1]
    assert proxies.resolve("10.0.0.2", asgi([(XFF, C)])).ip == C
    assert proxies._hops  # short hops are cached
    assert max(len(text) for text in proxies._hops) <= MAX_HOP_CHARS


def test_one_line_answer_is_cached_per_peer_and_value() -> None:
    """A request's one forwarding line is walked once; another value or peer gets its own answer."""
    proxies = TrustedProxies(INTERNAL, cache_size=4)
    first = proxies.resolve(LO, asgi(X(C)))
    assert (first.ip, first.resolved_by, first.peer) == (C, "x-forwarded-for[-1]", LO)
    assert proxies.resolve(LO, asgi(X(C))) is first
    # Same line from another trusted peer: that peer is the evidence, not the cached one.
    other_peer = proxies.resolve(PX, asgi(X(C)))
    assert (other_peer.ip, other_peer.peer) == (C, PX)
    # Another value from the same peer is never answered from the first one's entry.
    assert proxies.resolve(LO, asgi(X("203.0.113.9"))).ip == "203.0.113.9"
    assert proxies.resolve(LO, asgi(X(f"{C}, {PX}"))).resolved_by == "x-forwarded-for[-2]"
    garbage = proxies.resolve(LO, asgi(X("unknown")))
    assert garbage.ip is None
    assert "obfuscated" in garbage.notes[-1]
    assert proxies.resolve(LO, asgi(X(C))) == first
    # Two lines, or two headers, are not one cached line: joined and noted as before.
    assert proxies.resolve(LO, asgi(X("203.0.113.9", PX))).ip == "203.0.113.9"
    both = PROXIES["both"].resolve(LO, asgi([*X("203.0.113.9"), *F(f"for={C}")]))
    assert both.ip == C
    assert "x-forwarded-for ignored" in both.notes[0]
    assert len(proxies._walks) <= 4


def test_long_forwarding_lines_are_not_cached() -> None:
    """A line longer than MAX_CACHED_LINE is walked each time and never kept."""
    proxies = TrustedProxies(INTERNAL)
    line = ", ".join(["10.0.0.9"] * 100)
    assert len(line) > MAX_CACHED_LINE
    for _ in range(2):
        found = proxies.resolve(LO, asgi(X(f"{C}, {line}")))
        assert found.ip is None  # deeper than max_hops: fails closed
        assert "more than" in found.notes[-1]
    assert not proxies._walks


def test_peer_answer_is_shared() -> None:
    """An untrusted peer's answer is built once and reused (no allocation per request)."""
    proxies = TrustedProxies()
    assert proxies.resolve("203.0.113.9", []) is proxies.resolve("203.0.113.9", [])


def test_non_text_peer_never_raises() -> None:
    """A peer that is not text (a broken server) is an unusable peer, not an exception."""
    result = TrustedProxies().resolve(b"127.0.0.1", [])  # type: ignore[arg-type]
    assert result == ClientIP(None, "peer", None, result.notes)
    assert "not text" in result.notes[0]
    unhashable = TrustedProxies().resolve(["127.0.0.1"], [])  # type: ignore[arg-type]
    assert unhashable.ip is None
    assert "not resolved" in unhashable.notes[0]


def test_broken_header_list_never_raises() -> None:
    """Headers that are not (bytes, bytes) pairs leave the client unresolved, with a note."""
    result = TrustedProxies().resolve("127.0.0.1", [(b"x-forwarded-for", None)])  # type: ignore[list-item]
    assert result.ip is None
    assert result.notes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("::FFFF:c000:0201", "192.0.2.1"),
        ("2001:DB8:0:0::1", "2001:db8::1"),
        ("::1", "::1"),
        ("1.2.3", None),
        ("01.2.3.4", None),
        ("", None),
        ("[::1]", None),
    ],
)
def test_normalize_ip(text: str, expected: str | None) -> None:
    """ipaddress parsing, with IPv4-mapped addresses folded to IPv4."""
    address = normalize_ip(text)
    assert (str(address) if address is not None else None) == expected


def test_defaults_are_loopback_and_xff() -> None:
    """The safe default: only loopback is trusted, only X-Forwarded-For is read."""
    proxies = TrustedProxies()
    assert proxies.networks == tuple(ip_network(c) for c in DEFAULT_TRUSTED_PROXIES)
    assert proxies.headers == (ProxyHeader.X_FORWARDED_FOR,)
    assert proxies.is_trusted("127.9.9.9")
    assert proxies.is_trusted("::1")
    assert proxies.is_trusted("::ffff:127.0.0.1")
    assert not proxies.is_trusted("10.0.0.1")
    assert not proxies.is_trusted("garbage")
    assert "127.0.0.0/8" in repr(proxies)


def test_ipv4_mapped_network_is_trusted_as_ipv4() -> None:
    """A trusted ::ffff:a.b.c.d/n range means the IPv4 range, since addresses are normalised."""
    proxies = TrustedProxies(["::ffff:10.0.0.0/104"])
    assert proxies.networks == (ip_network("10.0.0.0/8"),)
    assert proxies.is_trusted("10.1.2.3")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ("::ffff:203.0.113.0/120", "203.0.113.0/24"),
        ("::ffff:203.0.113.7/128", "203.0.113.7/32"),
        ("::ffff:0:0/96", "0.0.0.0/0"),
        ("::/0", "::/0"),
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("2001:db8::/32", "2001:db8::/32"),
    ],
)
def test_normalize_network(text: str, expected: str) -> None:
    assert normalize_network(ip_network(text)) == ip_network(expected)


@pytest.mark.parametrize(
    ("cidrs", "headers"),
    [
        (["10.0.0.0/33"], [XFF]),
        (["10.0.0.1/8"], [XFF]),
        (["nope"], [XFF]),
        (["10.0.0.0/8"], ["x-real-ip"]),
        (["10.0.0.0/8"], [XFF, XFF]),
    ],
)
def test_bad_construction_raises_value_error(cidrs: list[str], headers: list[str]) -> None:
    """Construction validates (the config parser reports these with file and line first)."""
    with pytest.raises(ValueError):  # noqa: PT011 - ipaddress and enum messages vary
        TrustedProxies(cidrs, headers=headers)


# --- properties ------------------------------------------------------------------------------------

PUBLIC_V4 = st.builds(
    lambda a, b: f"198.51.{a}.{b}", st.integers(0, 255), st.integers(1, 254)
) | st.sampled_from(["81.2.69.160", "2001:218::7", "2a02:cf40::1"])


@settings(max_examples=300, deadline=None)
@given(peer=PUBLIC_V4, values=st.lists(st.binary(max_size=80), max_size=4))
def test_untrusted_peer_headers_never_matter(peer: str, values: list[bytes]) -> None:
    """Whatever an untrusted peer sends, its own address is the client."""
    proxies = PROXIES["both"]
    headers = [(b"x-forwarded-for", v) for v in values] + [(b"forwarded", v) for v in values]
    result = proxies.resolve(peer, headers)
    assert (result.ip, result.resolved_by) == (str(ip_address(peer)), "peer")


@settings(max_examples=300, deadline=None)
@given(prefix=st.binary(max_size=120), client=PUBLIC_V4)
def test_attacker_prefix_cannot_move_the_client_xff(prefix: bytes, client: str) -> None:
    """A proxy appends the real client to whatever the client sent: the walk always finds it."""
    header = prefix + b", " + client.encode()
    result = PROXIES["loopback"].resolve("127.0.0.1", [(b"x-forwarded-for", header)])
    assert (result.ip, result.resolved_by) == (str(ip_address(client)), "x-forwarded-for[-1]")


@settings(max_examples=300, deadline=None)
@given(prefix=st.binary(max_size=120), client=PUBLIC_V4, new_line=st.booleans())
def test_attacker_prefix_cannot_move_the_client_forwarded(
    prefix: bytes, client: str, new_line: bool
) -> None:
    """With Forwarded, a forged prefix yields the real client or, at worst, no client: never a lie."""
    node = f'"[{client}]"' if ":" in client else client
    appended = f"for={node}".encode()
    if new_line:
        headers = [(b"forwarded", prefix), (b"forwarded", appended)]
    else:
        headers = [(b"forwarded", prefix + b", " + appended)]
    result = PROXIES["forwarded"].resolve("127.0.0.1", headers)
    assert result.ip in (str(ip_address(client)), None)
    if new_line:  # a line of its own cannot be swallowed by the client's broken quoting
        assert result.ip == str(ip_address(client))


@settings(max_examples=300, deadline=None)
@given(peer=st.one_of(st.none(), st.text(max_size=50)), raw=st.lists(st.binary(max_size=200)))
def test_garbage_never_raises(peer: str | None, raw: list[bytes]) -> None:
    """Any peer text and any header bytes give a result; an IP, when given, is canonical."""
    headers = [(b"x-forwarded-for" if i % 2 else b"forwarded", v) for i, v in enumerate(raw)]
    result = PROXIES["both"].resolve(peer, headers)
    if result.ip is not None:
        assert str(normalize_ip(result.ip)) == result.ip
    else:
        assert result.notes


@pytest.mark.parametrize(
    ("header", "value"),
    [
        (XFF, "2a01:5ec0::1%eth0, 10.0.0.9"),
        (XFF, "2a01:5ec0::1%25eth0"),
        ("forwarded", 'for="[2a01:5ec0::1%eth0]:443", for=10.0.0.9'),
        ("forwarded", 'for="[2a01:5ec0::1%25eth0]"'),
    ],
)
def test_a_zone_id_is_dropped_in_either_header(header: str, value: str) -> None:
    """A hop's IPv6 zone id names the sender's interface: the address is looked up without it."""
    proxies = TrustedProxies(INTERNAL, headers=["forwarded", "x-forwarded-for"])
    resolved = proxies.resolve("10.0.0.2", asgi([(header, value)]))
    assert resolved.ip == "2a01:5ec0::1"
    # A zone id does not make an untrusted address trusted, nor a trusted one untrusted.
    assert proxies.resolve("fd00::1%eth0", []).ip == "fd00::1"
    assert proxies.is_trusted("fd00::1%eth0")
    assert normalize_ip("::ffff:10.1.2.3%eth1") == ip_address("10.1.2.3")


@pytest.mark.parametrize(
    ("proxies", "peer", "headers"),
    [pytest.param(case[1], case[2], case[3], id=case[0]) for case in MATRIX],
)
def test_the_one_header_pass_resolves_as_the_walk_does(
    proxies: str, peer: str | None, headers: list[Header]
) -> None:
    """The middleware collects the forwarding lines in its one pass over the headers: what they
    resolve to is what the resolver's own walk over the same headers gives."""
    trust = PROXIES[proxies]
    plan = HeaderPlan(None, trust.header_names)
    raw = [(b"host", b"gate"), *asgi(headers), (b"authorization", b"Bearer x")]
    walked = trust.resolve(peer, raw)
    collected = trust.resolve(peer, plan.scan(raw).forwarded)
    assert collected == walked
