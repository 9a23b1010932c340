"""Origin: client IP and GeoIP together, its configuration, and a real server behind the walk."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from aidr_gate.errors import ConfigError
from aidr_gate.facts import AnonymizerFlag, CountrySource, Origin, RegionSource
from aidr_gate.request.client_ip import ProxyHeader, TrustedProxies
from aidr_gate.request.geo import (
    GeoResult,
    IptoccCountryResolver,
    MaxMindCountryResolver,
    ReloadOutcome,
    ReloadResult,
)
from aidr_gate.request.origin import (
    OriginResolver,
    build_origin_resolver,
    origin_resolver_for,
    parse_header_lines,
)
from aidr_gate.settings.loader import GateConfig, config_from_text
from aidr_gate.settings.origin import GEOIP, NETWORK, GeoipSettings, NetworkSettings
from support.environment import ROOT
from support.mmdb_files import ANONYMOUS, BUILD, COUNTRIES, write_anonymous_db, write_country_db

EXAMPLES = ROOT / "policies" / "examples"
BASE = (
    f"policy: aidr-2025-01\nregistry: {EXAMPLES}/entities.yaml\ncatalog: {EXAMPLES}/models.yaml\n"
)


def gate_config(tmp_path: Path, sections: str = "") -> GateConfig:
    """A configuration file in *tmp_path* with the given network/geoip sections."""
    path = tmp_path / "config.yaml"
    text = BASE + sections
    path.write_text(text)
    return config_from_text(text, str(path))


@pytest.fixture
def databases(tmp_path: Path) -> tuple[Path, Path]:
    """Country and Anonymous IP databases in tmp_path/geo."""
    geo = tmp_path / "geo"
    geo.mkdir()
    return (
        write_country_db(geo / "GeoIP2-Country.mmdb", COUNTRIES),
        write_anonymous_db(geo / "GeoIP2-Anonymous-IP.mmdb", ANONYMOUS),
    )


@pytest.fixture
def resolver(tmp_path: Path, databases: tuple[Path, Path]) -> Iterator[OriginResolver]:
    """An origin resolver built from configuration: an internal proxy range and both databases."""
    config = gate_config(
        tmp_path,
        "network:\n"
        "  trusted_proxies: [127.0.0.0/8, '::1', 10.0.0.0/8]\n"
        "  trusted_headers: [forwarded, x-forwarded-for]\n"
        "geoip:\n"
        "  country_database: geo/GeoIP2-Country.mmdb\n"
        "  anonymous_ip_database: geo/GeoIP2-Anonymous-IP.mmdb\n",
    )
    origins = origin_resolver_for(config)
    yield origins
    origins.close()


# --- resolving -------------------------------------------------------------------------------------


def test_resolve_behind_proxies(resolver: OriginResolver) -> None:
    """The whole path: the trusted walk finds the client, GeoIP gives country, flags and builds."""
    headers = [(b"x-forwarded-for", b"6.6.6.6, 81.2.69.200, 10.0.0.9")]
    origin = resolver.resolve("10.0.0.2", headers)
    assert origin == Origin(
        ip="81.2.69.200",
        resolved_by="x-forwarded-for[-2]",
        peer="10.0.0.2",
        country="GB",
        country_source=CountrySource.GEOIP,
        anonymizer=frozenset({AnonymizerFlag.VPN}),
        database="GeoIP2-Country",
        database_build=BUILD,
        anonymizer_database="GeoIP2-Anonymous-IP",
        anonymizer_database_build=BUILD,
        notes=(),
        region_source=RegionSource.NO_CITY_DATABASE,  # a Country database: no regions
    )
    assert json.loads(json.dumps(origin.to_dict()))["anonymizer"] == ["vpn"]


def test_the_forwarding_headers_are_named_for_a_one_pass_caller(resolver: OriginResolver) -> None:
    """The names ``resolve`` reads are the configured ones; those lines alone give the origin."""
    assert resolver.forwarding_headers == {b"forwarded", b"x-forwarded-for"}
    headers = [
        (b"host", b"api.example"),
        (b"forwarded", b"for=81.2.69.200"),
        (b"x-forwarded-for", b"6.6.6.6"),
        (b"user-agent", b"openai/1.0"),
    ]
    picked = [pair for pair in headers if pair[0] in resolver.forwarding_headers]
    origin = resolver.resolve("10.0.0.2", picked)
    assert origin == resolver.resolve("10.0.0.2", headers)
    assert (origin.ip, origin.country) == ("81.2.69.200", "GB")


def test_resolve_forwarded_ipv6(resolver: OriginResolver) -> None:
    """Forwarded with a quoted IPv6 address and port, preferred over X-Forwarded-For."""
    headers = [
        (b"x-forwarded-for", b"81.2.69.1"),
        (b"forwarded", b'for="[2001:218:1::9]:4711";proto=https'),
    ]
    origin = resolver.resolve("127.0.0.1", headers)
    assert (origin.ip, origin.resolved_by, origin.country) == (
        "2001:218:1::9",
        "forwarded[-1]",
        "JP",
    )
    assert origin.anonymizer == {AnonymizerFlag.VPN, AnonymizerFlag.HOSTING}
    assert origin.notes == ("forwarded used, x-forwarded-for ignored (first in trusted_headers)",)


def test_untrusted_peer_is_the_client(resolver: OriginResolver) -> None:
    """A peer outside the trusted ranges is looked up itself; its headers are ignored."""
    origin = resolver.resolve("::ffff:89.160.20.130", [(b"x-forwarded-for", b"81.2.69.1")])
    assert (origin.ip, origin.resolved_by, origin.peer, origin.country) == (
        "89.160.20.130",
        "peer",
        "89.160.20.130",
        "SE",
    )
    assert origin.anonymizer == {AnonymizerFlag.TOR, AnonymizerFlag.HOSTING}


def test_notes_from_both_stages_are_kept(resolver: OriginResolver) -> None:
    """Client-IP notes and GeoIP notes both reach the evidence."""
    origin = resolver.resolve("10.0.0.2", [(b"x-forwarded-for", b"10.0.0.7, 10.0.0.9")])
    assert origin.ip == "10.0.0.7"
    assert origin.country is None
    assert origin.notes == (
        "every x-forwarded-for hop is a trusted proxy; the leftmost was taken",
        "10.0.0.7 is a private or special-purpose address; country unknown",
    )


def test_garbage_hop_means_no_ip_and_unknown_country(resolver: OriginResolver) -> None:
    """A garbage hop stops the walk: no IP, no lookup, unknown country, and why."""
    origin = resolver.resolve("127.0.0.1", [(b"x-forwarded-for", b"81.2.69.1, \xff\xfe")])
    assert (origin.ip, origin.country, origin.country_source) == (None, None, CountrySource.NONE)
    assert origin.resolved_by == "x-forwarded-for[-1]"
    assert origin.peer == "127.0.0.1"
    assert "not an IP address" in origin.notes[0]


def test_warm_origin_is_shared_until_the_database_changes(resolver: OriginResolver) -> None:
    """Repeat requests reuse one Origin; a database swap gives a fresh one with the new answer."""
    headers = [(b"x-forwarded-for", b"81.2.69.7")]
    first = resolver.resolve("127.0.0.1", headers)
    assert resolver.resolve("127.0.0.1", headers) is first
    geo = resolver.geo
    assert isinstance(geo, MaxMindCountryResolver)
    write_country_db(geo.country_path, {"81.2.69.0/24": "SE"})
    assert [r.outcome for r in resolver.reload()] == [
        ReloadOutcome.RELOADED,
        ReloadOutcome.RELOADED,  # an explicit reload reopens both
    ]
    second = resolver.resolve("127.0.0.1", headers)
    assert (first.country, second.country) == ("GB", "SE")


@pytest.mark.parametrize(
    "headers",
    [
        [],  # a trusted peer that forwards nothing: the common sidecar case, with a note
        [(b"x-forwarded-for", b"10.0.0.1, 127.0.0.1")],  # every hop trusted, with a note
    ],
    ids=["no-header", "all-trusted"],
)
def test_an_origin_with_notes_is_shared_too(
    headers: list[tuple[bytes, bytes]], databases: tuple[Path, Path]
) -> None:
    """Notes are part of the cache key, so a request with notes costs no new Origin either."""
    resolver = OriginResolver(
        TrustedProxies(["127.0.0.0/8", "10.0.0.0/8"]), MaxMindCountryResolver(databases[0])
    )
    try:
        first = resolver.resolve("127.0.0.1", headers)
        assert first.notes
        assert resolver.resolve("127.0.0.1", headers) is first
        # The same address, hop and peer without those notes (the peer no longer trusted) is
        # another Origin: the notes are part of the key.
        resolver.proxies = TrustedProxies([])
        direct = resolver.resolve("127.0.0.1", [])
        assert (direct.ip, direct.resolved_by, direct.peer) == ("127.0.0.1", "peer", "127.0.0.1")
        assert direct.notes == ("127.0.0.1 is a loopback address; country unknown",)
    finally:
        resolver.close()


def test_resolve_ip_is_declared(resolver: OriginResolver) -> None:
    """An address given by hand is looked up and labelled declared."""
    origin = resolver.resolve_ip("::ffff:216.160.83.200")
    assert (origin.ip, origin.resolved_by, origin.peer, origin.country) == (
        "216.160.83.200",
        "declared",
        None,
        "US",
    )
    assert resolver.resolve_ip("nope").notes == ("'nope' is not an IP address",)


class _Raising:
    """Fault injection: a resolver whose every call raises (neither real one ever does)."""

    def lookup(self, ip: str) -> GeoResult:
        raise RuntimeError(f"broken for {ip}")

    def refresh_if_changed(self) -> tuple[ReloadResult, ...]:
        raise RuntimeError("broken")

    def reload(self) -> tuple[ReloadResult, ...]:
        raise RuntimeError("broken")

    def close(self) -> None:
        """Nothing to close."""


def test_resolve_never_raises() -> None:
    """Whatever fails inside, resolve answers: no IP, no country, and the reason."""
    origins = OriginResolver(geo=_Raising())
    origin = origins.resolve("81.2.69.1", [])
    assert (origin.ip, origin.country, origin.resolved_by) == (None, None, "error")
    assert "broken for 81.2.69.1" in origin.notes[0]
    assert origins.resolve_ip("81.2.69.1").resolved_by == "error"
    broken_headers: Any = None
    assert origins.resolve("127.0.0.1", broken_headers).ip is None
    closed = OriginResolver()
    closed.close()
    assert closed.resolve("8.8.8.8", []).country_source is CountrySource.REGISTRATION


def test_default_resolver_is_loopback_and_iptocc() -> None:
    """With nothing configured: loopback proxies, registration country from iptocc."""
    origins = OriginResolver()
    origin = origins.resolve("127.0.0.1", [(b"x-forwarded-for", b"8.8.8.8")])
    assert (origin.ip, origin.country_source, origin.database) == (
        "8.8.8.8",
        CountrySource.REGISTRATION,
        "iptocc",
    )
    assert origins.reload()[0].outcome is ReloadOutcome.UNCHANGED
    assert origins.geo.refresh_if_changed() == ()


def test_watch_runs_until_cancelled(resolver: OriginResolver) -> None:
    """OriginResolver.watch is the task the gate starts at startup; cancelling it is clean."""

    async def run() -> bool:
        task = asyncio.create_task(resolver.watch())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert asyncio.run(run())


# --- check --ip / --peer / --header ----------------------------------------------------------------


def test_resolve_for_check(resolver: OriginResolver) -> None:
    """The one call ``aidr-gate check`` makes for --ip, or --peer with --header lines."""
    declared = resolver.resolve_for_check(ip="89.160.20.5")
    assert (declared.resolved_by, declared.country) == ("declared", "SE")
    walked = resolver.resolve_for_check(
        peer="127.0.0.1", header_lines=["X-Forwarded-For: 6.6.6.6", "X-Forwarded-For: 2001:480::1"]
    )
    assert (walked.ip, walked.resolved_by, walked.country) == (
        "2001:480::1",
        "x-forwarded-for[-1]",
        "US",
    )
    direct = resolver.resolve_for_check(peer="175.16.199.200")
    assert (direct.resolved_by, direct.country) == ("peer", "CN")


@pytest.mark.parametrize(
    ("kwargs", "flag", "message"),
    [
        ({"ip": "1.2.3.4", "peer": "127.0.0.1"}, "--ip", "give --ip alone"),
        ({"ip": "1.2.3.4", "header_lines": ["X-Forwarded-For: 1.1.1.1"]}, "--ip", "alone"),
        ({"ip": "1.2.3"}, "--ip", "is not an IP address"),
        ({"header_lines": ["X-Forwarded-For: 1.1.1.1"]}, "--peer", "needs --peer"),
        ({"peer": "127.0.0.1", "header_lines": ["no colon"]}, "--header", "is not 'Name: value'"),
        ({"peer": "127.0.0.1", "header_lines": [": value"]}, "--header", "is not 'Name: value'"),
    ],
)
def test_resolve_for_check_usage_errors(kwargs: dict[str, Any], flag: str, message: str) -> None:
    """Command-line mistakes are configuration errors naming the flag."""
    with pytest.raises(ConfigError) as caught:
        OriginResolver().resolve_for_check(**kwargs)
    problem = caught.value.problems[0]
    assert (problem.file, problem.path) == ("<command line>", flag)
    assert message in problem.message


def test_parse_header_lines() -> None:
    """Header lines become ASGI headers: lower-case names, stripped values, order kept."""
    assert parse_header_lines(["X-Forwarded-For:  1.2.3.4 ", 'Forwarded: for="[::1]:80"']) == [
        (b"x-forwarded-for", b"1.2.3.4"),
        (b"forwarded", b'for="[::1]:80"'),
    ]
    assert parse_header_lines(["X-Forwarded-For: é"]) == [(b"x-forwarded-for", "é".encode())]


# --- configuration ---------------------------------------------------------------------------------


def test_config_defaults(tmp_path: Path) -> None:
    """No network or geoip section: loopback only, X-Forwarded-For, embedded iptocc."""
    config = gate_config(tmp_path)
    network, geoip = config.get(NETWORK), config.get(GEOIP)
    assert network.trusted_proxies == (ip_network("127.0.0.0/8"), ip_network("::1/128"))
    assert network.trusted_headers == (ProxyHeader.X_FORWARDED_FOR,)
    assert (geoip.country_database, geoip.anonymous_ip_database) == (None, None)
    origins = build_origin_resolver(network, geoip)
    assert isinstance(origins.geo, IptoccCountryResolver)
    assert origins.proxies.networks == network.trusted_proxies
    assert origins.cache_size == origins.geo.cache_size == geoip.cache_size


def test_config_full(tmp_path: Path, databases: tuple[Path, Path]) -> None:
    """Every key read, paths made absolute against the configuration file."""
    config = gate_config(
        tmp_path,
        "network:\n"
        "  trusted_proxies: [10.0.0.0/8, 'fd00::/8', 192.0.2.7]\n"
        "  trusted_headers: [forwarded]\n"
        "geoip:\n"
        "  country_database: geo/GeoIP2-Country.mmdb\n"
        "  anonymous_ip_database: geo/GeoIP2-Anonymous-IP.mmdb\n"
        "  cache_size: 1000\n"
        "  reload_check_interval: 2.5\n",
    )
    network, geoip = config.get(NETWORK), config.get(GEOIP)
    assert network.trusted_proxies == (
        ip_network("10.0.0.0/8"),
        ip_network("fd00::/8"),
        ip_network("192.0.2.7/32"),
    )
    assert network.trusted_headers == (ProxyHeader.FORWARDED,)
    assert (geoip.country_database, geoip.anonymous_ip_database) == databases
    assert (geoip.cache_size, geoip.reload_check_interval) == (1000, 2.5)
    origins = build_origin_resolver(network, geoip)
    try:
        assert isinstance(origins.geo, MaxMindCountryResolver)
        assert origins.geo.cache_size == 1000
        assert origins.cache_size == 1000  # built origins, bounded like the GeoIP answers
        assert origins.reload_check_interval == 2.5
        assert origins.proxies.headers == (ProxyHeader.FORWARDED,)
    finally:
        origins.close()


def test_config_empty_proxy_list_trusts_nobody(tmp_path: Path) -> None:
    """An empty list is allowed: the gate faces clients directly, every header is ignored."""
    origins = origin_resolver_for(gate_config(tmp_path, "network:\n  trusted_proxies: []\n"))
    origin = origins.resolve("127.0.0.1", [(b"x-forwarded-for", b"8.8.8.8")])
    assert (origin.ip, origin.resolved_by) == ("127.0.0.1", "peer")


CONFIG_ERRORS = [
    (
        "network:\n  trusted_proxies: [10.0.0.1/8]\n",
        "network.trusted_proxies[0]",
        "host bits set",
        5,
    ),
    ("network:\n  trusted_proxies: 10.0.0.0/8\n", "network.trusted_proxies", "must be a list", 5),
    ("network:\n  trusted_proxies: [nope]\n", "network.trusted_proxies[0]", "not a CIDR", 5),
    ("network:\n  trusted_headers: [x-real-ip]\n", "network.trusted_headers[0]", "not one of", 5),
    (
        "network:\n  trusted_headers: [forwarded, forwarded]\n",
        "network.trusted_headers",
        "more than once",
        5,
    ),
    ("network:\n  trusted_proxy: []\n", "network.trusted_proxy", "unknown key", 5),
    ("geoip:\n  country_database: nowhere.mmdb\n", "geoip.country_database", "no such file", 5),
    (
        "geoip:\n  anonymous_ip_database: geo/GeoIP2-Anonymous-IP.mmdb\n",
        "geoip.anonymous_ip_database",
        "needs geoip.country_database",
        5,
    ),
    ("geoip:\n  cache_size: 0\n", "geoip.cache_size", "at least 1", 5),
    ("geoip:\n  cache_size: 99999999999\n", "geoip.cache_size", "at most", 5),
    ("geoip:\n  cache_size: big\n", "geoip.cache_size", "whole number", 5),
    ("geoip:\n  reload_check_interval: -1\n", "geoip.reload_check_interval", "at least 0", 5),
]


@pytest.mark.parametrize(("section", "path", "message", "line"), CONFIG_ERRORS)
def test_config_errors_name_file_key_and_line(
    tmp_path: Path, databases: tuple[Path, Path], section: str, path: str, message: str, line: int
) -> None:
    """Each mistake is reported as file:line: key.path: what is wrong."""
    with pytest.raises(ConfigError) as caught:
        gate_config(tmp_path, section)
    problems = [p for p in caught.value.problems if p.path == path]
    assert problems, caught.value
    assert message in problems[0].message
    assert str(problems[0]).startswith(f"{tmp_path / 'config.yaml'}:{line}: {path}:")


def test_config_reports_every_error_at_once(tmp_path: Path) -> None:
    """One run lists everything to fix."""
    section = (
        "network:\n  trusted_proxies: [nope, 10.0.0.0/8, also-nope]\n"
        "geoip:\n  cache_size: 0\n  reload_check_interval: soon\n"
    )
    with pytest.raises(ConfigError) as caught:
        gate_config(tmp_path, section)
    assert [p.path for p in caught.value.problems] == [
        "network.trusted_proxies[0]",
        "network.trusted_proxies[2]",
        "geoip.cache_size",
        "geoip.reload_check_interval",
    ]


def test_config_corrupt_database_names_key_and_file(tmp_path: Path) -> None:
    """A database that exists but cannot be opened is reported at its key, with the file."""
    (tmp_path / "broken.mmdb").write_bytes(b"\x00" * 4096)
    with pytest.raises(ConfigError) as caught:
        gate_config(tmp_path, "geoip:\n  country_database: broken.mmdb\n")
    problem = caught.value.problems[0]
    assert (problem.path, problem.line) == ("geoip.country_database", 5)
    assert str(tmp_path / "broken.mmdb") in problem.message


def test_config_wrong_anonymous_database_names_its_key(
    tmp_path: Path, databases: tuple[Path, Path]
) -> None:
    """A country file given as the Anonymous IP database is reported at that key."""
    with pytest.raises(ConfigError) as caught:
        gate_config(
            tmp_path,
            "geoip:\n"
            "  country_database: geo/GeoIP2-Country.mmdb\n"
            "  anonymous_ip_database: geo/GeoIP2-Country.mmdb\n",
        )
    assert caught.value.problems[0].path == "geoip.anonymous_ip_database"
    assert "is not an Anonymous IP database" in caught.value.problems[0].message


def test_origin_config_without_document(databases: tuple[Path, Path], tmp_path: Path) -> None:
    """Built in code (no file), database errors still name the database file."""
    broken = tmp_path / "broken.mmdb"
    broken.write_bytes(b"\x00" * 64)
    with pytest.raises(ConfigError, match=r"broken\.mmdb"):
        build_origin_resolver(NetworkSettings(), GeoipSettings(country_database=broken))
    origins = build_origin_resolver(NetworkSettings(), GeoipSettings(country_database=databases[0]))
    try:
        assert origins.resolve_ip("2a02:cf40::1").country == "SE"
    finally:
        origins.close()


# --- a real server ---------------------------------------------------------------------------------


class Server:
    """uvicorn on 127.0.0.1 (an ephemeral port) in a thread; its own proxy-header handling off."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        # proxy_headers=False: uvicorn would otherwise rewrite scope["client"] from
        # X-Forwarded-For for 127.0.0.1 peers before the gate sees the real peer.
        config = uvicorn.Config(app, log_level="warning", lifespan="off", proxy_headers=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def origin_app(resolvers: dict[str, OriginResolver]) -> Any:
    """A bare ASGI app answering with the Origin the resolver for its path computes."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        client = scope.get("client")
        origins = resolvers[scope["path"]]
        origin = origins.resolve(client[0] if client else None, scope["headers"])
        body = json.dumps(origin.to_dict()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def test_real_server_walks_real_headers(databases: tuple[Path, Path]) -> None:
    """Over real HTTP: repeated header lines arrive in order and the walk stops where it should."""
    geo = MaxMindCountryResolver(*databases)
    resolvers = {
        "/behind-proxy": OriginResolver(TrustedProxies(), geo),
        "/direct": OriginResolver(TrustedProxies([]), geo),
    }

    def get(client: httpx.Client, path: str, headers: Iterable[tuple[str, str]]) -> Any:
        response = client.get(path, headers=list(headers))
        assert response.status_code == 200
        return response.json()

    try:
        with Server(origin_app(resolvers)) as url, httpx.Client(base_url=url) as client:
            spoofed = [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "81.2.69.200")]
            behind = get(client, "/behind-proxy", spoofed)
            assert (behind["ip"], behind["resolved_by"], behind["peer"]) == (
                "81.2.69.200",
                "x-forwarded-for[-1]",
                "127.0.0.1",
            )
            assert (behind["country"], behind["anonymizer"]) == ("GB", ["vpn"])
            assert behind["database_build"] == BUILD
            direct = get(client, "/direct", spoofed)
            assert (direct["ip"], direct["resolved_by"], direct["country"]) == (
                "127.0.0.1",
                "peer",
                None,
            )
            assert "loopback" in direct["notes"][0]
            garbage = get(client, "/behind-proxy", [("X-Forwarded-For", "81.2.69.1, nonsense")])
            assert (garbage["ip"], garbage["country"]) == (None, None)
            assert "not an IP address" in garbage["notes"][0]
    finally:
        geo.close()
