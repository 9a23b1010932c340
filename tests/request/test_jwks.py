"""Key sets and key sources: JWKS documents, PEM files, and a real JWKS server that misbehaves."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from aidr_gate.request.jwks import FileKeys, RemoteJwks, StaticKeys, cache_max_age, shown_url
from aidr_gate.request.keys import (
    MAX_KEYS,
    MAX_KID_LENGTH,
    KeySet,
    KeySetError,
    build_key_set,
    parse_key_file,
    pem_to_jwks,
    thumbprint,
    valid_kid,
)
from support.jwks_server import (
    JwksServer,
    SigningKey,
    ec_key,
    ed_key,
    foreign_curve_pem,
    jwks_of,
    rsa_key,
)

ALL = ("RS256", "PS256", "ES256", "ES384", "EdDSA")

# --- building key sets -----------------------------------------------------------------------------


def test_rfc7638_thumbprint_example() -> None:
    # RFC 7638 section 3.1: the example RSA key and its SHA-256 thumbprint.
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
        "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2"
        "QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6"
        "WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    key_set = build_key_set({"keys": [jwk]}, ["RS256"], source="rfc")
    assert key_set.key_ids == ("2011-04-29",)
    assert key_set.keys[0].thumbprint == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_each_key_type_verifies_only_its_own_algorithms() -> None:
    key_set = build_key_set(jwks_of(rsa_key(), ec_key(), ed_key()), ALL, source="t")
    by_kid = {k.kid: k.algorithms for k in key_set.keys}
    assert by_kid == {
        "rsa-1": frozenset({"RS256", "PS256"}),
        "ec-1": frozenset({"ES256"}),  # a P-256 key never verifies ES384
        "ed-1": frozenset({"EdDSA"}),
    }
    assert key_set.named("rsa-1") is not None
    assert key_set.named("nope") is None
    assert key_set.only("ES256") is not None
    assert key_set.unnamed("ES256") == ()


def test_a_jwks_own_alg_binds_the_key() -> None:
    key_set = build_key_set(
        {"keys": [rsa_key().public_jwk(alg="PS256")]}, ["RS256", "PS256"], source="t"
    )
    assert key_set.keys[0].algorithms == frozenset({"PS256"})


def _skipped(jwk: Any, pinned: tuple[str, ...] = ALL) -> str:
    key_set = build_key_set({"keys": [jwk, ed_key("good").public_jwk()]}, pinned, source="t")
    assert key_set.key_ids == ("good",)
    assert len(key_set.skipped) == 1
    return key_set.skipped[0]


def _small_rsa() -> dict[str, Any]:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - refused on purpose
    return SigningKey(small, "RS256", "small").public_jwk()


@pytest.mark.parametrize(
    ("jwk", "why"),
    [
        ({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}, "symmetric or unknown"),
        ("not an object", "not an object"),
        ({"kid": "x"}, "no kty"),
        ({**rsa_key().public_jwk(), "d": "AQAB"}, "private or symmetric"),
        (rsa_key().public_jwk(use="enc"), "use is 'enc'"),
        (rsa_key().public_jwk(key_ops=["sign"]), "key_ops"),
        (rsa_key().public_jwk(alg="ES256"), "does not fit a RSA key"),
        (rsa_key().public_jwk(alg="HS256"), "does not fit a RSA key"),
        (rsa_key().public_jwk(alg="none"), "does not fit a RSA key"),
        (rsa_key().public_jwk(kid=17), "kid is not"),
        (rsa_key().public_jwk(kid="k" * 300), "kid is not"),
        ({**ec_key().public_jwk(), "crv": "secp256k1"}, "unsupported curve"),
        ({**ec_key().public_jwk(), "x": "AAAA"}, "not a valid EC key"),
        ({k: v for k, v in rsa_key().public_jwk().items() if k != "n"}, "'n' is missing"),
        (_small_rsa(), "1024 bits"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_unusable_keys_are_skipped_with_a_reason(jwk: Any, why: str) -> None:
    assert why in _skipped(jwk)


def test_keys_outside_the_pinned_algorithms_are_skipped() -> None:
    assert "pinned" in _skipped(ec_key().public_jwk(), ("RS256", "EdDSA"))


@pytest.mark.parametrize(
    "document",
    [None, [], {"keys": {}}, {"keys": []}, {"nokeys": 1}, {"keys": [{"kty": "oct", "k": "AA"}]}],
)
def test_a_set_without_usable_keys_is_an_error(document: Any) -> None:
    with pytest.raises(KeySetError):
        build_key_set(document, ALL, source="t")


def test_a_huge_set_is_refused() -> None:
    jwk = ed_key().public_jwk()
    with pytest.raises(KeySetError, match="more than"):
        build_key_set({"keys": [jwk] * (MAX_KEYS + 1)}, ALL, source="t")


def test_a_single_jwk_is_a_set_of_one() -> None:
    assert len(build_key_set(ed_key().public_jwk(), ALL, source="t")) == 1


def test_skipped_reasons_never_hold_key_material() -> None:
    jwk = {**rsa_key().public_jwk(), "d": "secret-material"}
    key_set = build_key_set({"keys": [jwk, ed_key().public_jwk()]}, ALL, source="t")
    assert "secret-material" not in repr(key_set.skipped)
    assert jwk["n"][:20] not in repr(key_set.skipped)


# --- key files -------------------------------------------------------------------------------------


def _certificate(key: SigningKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.test")])
    start = dt.datetime.now(tz=dt.UTC) - dt.timedelta(minutes=1)
    private = key.private
    assert isinstance(private, rsa.RSAPrivateKey)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=1))
        .sign(private, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_pem_file_with_several_keys_and_a_certificate() -> None:
    pem = rsa_key().public_pem() + ec_key().public_pem() + ed_key().public_pem()
    pem += _certificate(rsa_key(index=1))
    key_set = parse_key_file(pem, ALL, source="keys.pem")
    assert len(key_set) == 4
    assert all(k.kid is None for k in key_set.keys)  # PEM keys have no kid: named by thumbprint
    assert len(key_set.unnamed("RS256")) == 2
    assert {k.key_type for k in key_set.keys} == {"RSA", "EC", "OKP"}


def test_pem_private_key_is_refused() -> None:
    private = rsa_key().private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(KeySetError, match="private key"):
        pem_to_jwks(private, source="k.pem")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"garbage",
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        b"-----BEGIN DH PARAMETERS-----\nAAAA\n-----END DH PARAMETERS-----\n",
        b"{not json",
        b'{"keys": []}',
        # SubjectPublicKeyInfo with an unknown algorithm (1.2.3.4): cryptography's UnsupportedAlgorithm
        b"-----BEGIN PUBLIC KEY-----\nMAswBQYDKgMEAwIAAA==\n-----END PUBLIC KEY-----\n",
    ],
)
def test_bad_key_files_are_errors(raw: bytes) -> None:
    with pytest.raises(KeySetError):
        parse_key_file(raw, ALL, source="k")


@pytest.mark.parametrize("curve", ["secp192r1", "brainpoolP256r1", "secp256k1"])
def test_pem_key_on_a_curve_without_an_algorithm_is_a_key_set_error(curve: str) -> None:
    # pyjwt refuses P-192 and brainpool keys with its own InvalidKeyError, not a ValueError.
    with pytest.raises(KeySetError) as caught:
        parse_key_file(foreign_curve_pem(curve), ALL, source="keys.pem")
    assert str(caught.value).startswith("keys.pem: ")
    assert " at 0x" not in str(caught.value)  # says which curve, not which Python object


async def _until(predicate: Callable[[], bool], seconds: float = 5.0) -> bool:
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


def _replace_file(path: Path, data: bytes) -> None:
    replacement = path.with_suffix(".tmp")
    replacement.write_bytes(data)
    os.replace(replacement, path)


def test_file_watch_outlives_a_key_pyjwt_refuses(tmp_path: Path) -> None:
    path = tmp_path / "keys.pem"
    path.write_bytes(rsa_key().public_pem())

    async def scenario() -> None:
        keys = FileKeys(path, ALL, reload_interval=0.02)
        await keys.start()
        first = keys.current
        _replace_file(path, foreign_curve_pem())
        await asyncio.sleep(0.2)  # several checks: the refused file is logged, the keys kept
        assert keys.current is first
        _replace_file(path, ed_key().public_pem())
        assert await _until(lambda: keys.current is not first)
        current = keys.current
        assert current is not None
        assert {k.key_type for k in current.keys} == {"OKP"}
        await keys.close()

    asyncio.run(scenario())


def test_a_parser_surprise_is_a_key_set_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "keys.pem"
    path.write_bytes(rsa_key().public_pem())

    def broken(*args: object, **kwargs: object) -> KeySet:
        raise TypeError("a parser bug")

    monkeypatch.setattr("aidr_gate.request.jwks.parse_key_file", broken)
    with pytest.raises(KeySetError, match=r"cannot be read \(TypeError\)"):
        FileKeys(path, ALL).load_sync()


def test_file_watch_outlives_an_unexpected_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.pem"
    path.write_bytes(rsa_key().public_pem())

    async def scenario() -> None:
        keys = FileKeys(path, ALL, reload_interval=0.02)
        await keys.start()
        first = keys.current
        real_reload = keys.reload
        calls: list[int] = []

        async def broken_once() -> bool:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("a bug in the reload path")
            return await real_reload()

        keys.reload = broken_once  # type: ignore[method-assign]
        _replace_file(path, ed_key().public_pem())
        assert await _until(lambda: keys.current is not first)
        assert len(calls) >= 2
        await keys.close()

    with caplog.at_level("ERROR", logger="aidr_gate.jwks"):
        asyncio.run(scenario())
    assert "a bug in the reload path" in caplog.text


def test_file_keys_reload_on_change_and_keep_the_last_good_set(tmp_path: Path) -> None:
    path = tmp_path / "keys.pem"
    path.write_bytes(rsa_key().public_pem())

    async def scenario() -> None:
        keys = FileKeys(path, ALL, reload_interval=0.05)
        seen: list[tuple[KeySet | None, KeySet]] = []
        keys.add_listener(lambda old, new: seen.append((old, new)))
        await keys.start()
        first = keys.current
        assert first is not None
        assert len(first) == 1
        # A new file, written atomically (rename), is picked up by the watcher.
        replacement = tmp_path / "keys.tmp"
        replacement.write_text('{"keys": [' + json.dumps(ed_key("ed-new").public_jwk()) + "]}")
        os.replace(replacement, path)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if keys.current is not first:
                break
        second = keys.current
        assert second is not None
        assert second.key_ids == ("ed-new",)
        # A corrupt replacement is refused: the last good set stays.
        path.write_bytes(b"-----BEGIN PUBLIC KEY-----\ncorrupt\n-----END PUBLIC KEY-----\n")
        assert await keys.reload() is False
        assert keys.current is second
        await keys.close()
        assert [new for _, new in seen] == [first, second]
        assert await keys.refetch_for_unknown_kid() is False

    asyncio.run(scenario())


def test_file_keys_missing_file_fails_at_start(tmp_path: Path) -> None:
    keys = FileKeys(tmp_path / "absent.pem", ALL)
    with pytest.raises(KeySetError, match="cannot read"):
        asyncio.run(keys.start())


# --- Cache-Control -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], None),
        (["max-age=300"], 300.0),
        (["public, max-age=60, must-revalidate"], 60.0),
        (['max-age="120"'], 120.0),
        (["MAX-AGE=5"], 5.0),
        (["no-cache"], 0.0),
        (["max-age=600", "no-store"], 0.0),
        (["max-age=-1"], None),
        (["max-age=abc"], None),
        (["max-age=99999999999"], None),
        (["s-maxage=10"], None),
    ],
)
def test_cache_max_age(values: list[str], expected: float | None) -> None:
    assert cache_max_age(values) == expected


# --- a JWKS URL ---------------------------------------------------------------------------------------


def _loaded(keys: RemoteJwks) -> bool:
    # A call, not a property read, so the type checker does not pin the first answer.
    return keys.current is not None


def _remote(server: JwksServer, **options: Any) -> RemoteJwks:
    settings: dict[str, Any] = {
        "refresh_min": 60.0,
        "refresh_max": 3600.0,
        "unknown_kid_interval": 0.3,
        "timeout": 1.0,
        "max_bytes": 64 * 1024,
    }
    settings.update(options)
    return RemoteJwks(server.url, ALL, **settings)


def test_fetch_keeps_the_last_good_set_through_every_kind_of_failure() -> None:
    with JwksServer(jwks_of(rsa_key())) as server:

        async def scenario() -> None:
            keys = _remote(server, timeout=0.5)
            await keys.start()
            good = keys.current
            assert good is not None
            assert good.key_ids == ("rsa-1",)
            failures: list[str] = []
            for breakage in ("status", "garbage", "not-a-set", "oversized", "chunked", "slow"):
                server.serve(jwks_of(ec_key()))
                if breakage == "status":
                    server.status = 503
                elif breakage == "garbage":
                    server.body = b"<html>not json</html>"
                elif breakage == "not-a-set":
                    server.body = b'{"keys": [{"kty": "oct", "k": "AAAA"}]}'
                elif breakage in ("oversized", "chunked"):
                    server.body = b'{"keys": [' + b" " * (200 * 1024) + b"]}"
                    server.chunked = breakage == "chunked"
                else:
                    server.delay = 1.0
                assert await keys.refresh() is False
                assert keys.current is good
                failures.append(keys.last_error or "")
                server.chunked = False
                server.delay = 0.0
            assert "503" in failures[0]
            assert "not JSON" in failures[1]
            assert "no usable" in failures[2]
            assert "exceeds" in failures[3]
            assert "exceeds" in failures[4]
            assert "within" in failures[5]
            # The server comes back with the new keys: they are installed.
            server.serve(jwks_of(ec_key()))
            assert await keys.refresh() is True
            assert keys.current is not None
            assert keys.current.key_ids == ("ec-1",)
            await keys.close()

        asyncio.run(scenario())


def test_server_down_keeps_keys_and_start_without_server_does_not_raise() -> None:
    with JwksServer(jwks_of(ed_key())) as server:

        async def scenario() -> None:
            keys = _remote(server)
            await keys.start()
            good = keys.current
            server.down()
            assert await keys.refresh() is False
            assert keys.current is good
            assert keys.last_error is not None
            assert "ClientConnectorError" in keys.last_error
            await keys.close()
            # A gate starting while the issuer is down starts, without keys, and retries.
            cold = _remote(server, refresh_min=0.2)
            await cold.start()
            assert not _loaded(cold)
            server.up()
            for _ in range(300):
                if _loaded(cold):
                    break
                await asyncio.sleep(0.01)
            assert _loaded(cold), "the background retry found the issuer again"
            await cold.close()

        asyncio.run(scenario())


def test_background_refresh_follows_max_age_within_bounds() -> None:
    with JwksServer(jwks_of(ed_key()), cache_control="max-age=0") as server:

        async def scenario() -> None:
            # max-age=0 is raised to refresh_min: a fetch about every 0.25 s, not a busy loop.
            keys = _remote(server, refresh_min=0.25, refresh_max=10.0)
            await keys.start()
            await asyncio.sleep(1.3)
            await keys.close()
            assert 3 <= server.fetches <= 8, server.fetches

        asyncio.run(scenario())
        before = server.fetches
        server.cache_control = "max-age=86400"

        async def capped() -> None:
            # A day-long max-age is capped to refresh_max.
            keys = _remote(server, refresh_min=0.01, refresh_max=0.3)
            await keys.start()
            await asyncio.sleep(1.3)
            await keys.close()
            assert 3 <= server.fetches - before <= 7, server.fetches - before

        asyncio.run(capped())
        before = server.fetches
        server.cache_control = "max-age=3600"

        async def long_lived() -> None:
            keys = _remote(server, refresh_min=0.01, refresh_max=3600)
            await keys.start()
            await asyncio.sleep(0.5)
            await keys.close()
            assert server.fetches - before == 1

        asyncio.run(long_lived())


def test_unknown_kid_refetch_is_rate_limited_and_shared() -> None:
    with JwksServer(jwks_of(rsa_key())) as server:

        async def scenario() -> None:
            keys = _remote(server, unknown_kid_interval=0.5)
            await keys.start()
            assert server.fetches == 1
            # Right after a fetch: no refetch at all.
            assert await keys.refetch_for_unknown_kid() is False
            assert server.fetches == 1
            await asyncio.sleep(0.55)
            # 200 concurrent callers share one fetch in flight (the server answers slowly).
            server.delay = 0.2
            server.serve(jwks_of(rsa_key(), ec_key()))
            results = await asyncio.gather(*(keys.refetch_for_unknown_kid() for _ in range(200)))
            assert server.fetches == 2
            assert all(results)
            assert keys.current is not None
            assert set(keys.current.key_ids) == {"rsa-1", "ec-1"}
            # And none again within the interval.
            server.delay = 0.0
            assert not any(
                await asyncio.gather(*(keys.refetch_for_unknown_kid() for _ in range(50)))
            )
            assert server.fetches == 2
            await keys.close()

        asyncio.run(scenario())


def test_a_cancelled_caller_does_not_cancel_the_shared_fetch() -> None:
    with JwksServer(jwks_of(rsa_key())) as server:

        async def scenario() -> None:
            keys = _remote(server)
            server.delay = 0.3
            caller = asyncio.create_task(keys.refresh())
            await asyncio.sleep(0.05)
            caller.cancel()
            with pytest.raises(asyncio.CancelledError):
                await caller
            assert await keys.refresh() is True  # joins the fetch still in flight
            assert server.fetches == 1
            await keys.close()

        asyncio.run(scenario())


def test_load_sync_one_off_fetch_and_refusal_inside_a_loop() -> None:
    with JwksServer(jwks_of(ec_key())) as server:
        keys = _remote(server)
        key_set = keys.load_sync()
        assert key_set.key_ids == ("ec-1",)
        assert keys.current is key_set

        async def inside() -> None:
            with pytest.raises(KeySetError, match="running event loop"):
                keys.load_sync()

        asyncio.run(inside())
        server.down()
        with pytest.raises(KeySetError):
            _remote(server).load_sync()


def test_static_keys_replace_tells_listeners() -> None:
    first = build_key_set(jwks_of(rsa_key()), ALL, source="a")
    second = build_key_set(jwks_of(ec_key()), ALL, source="b")
    keys = StaticKeys(first)
    seen: list[tuple[KeySet | None, KeySet]] = []
    keys.add_listener(lambda old, new: seen.append((old, new)))

    def broken(old: KeySet | None, new: KeySet) -> None:
        raise RuntimeError("listener bug")

    keys.add_listener(broken)
    keys.replace(second)
    assert keys.current is second
    assert seen == [(first, second)]
    assert keys.load_sync() is second


def test_logs_and_errors_never_show_url_credentials_or_query(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with JwksServer(jwks_of(rsa_key())) as server:
        secret_url = server.url.replace("http://", "http://alice:hunter2@") + "?api_key=s3cr3t"
        shown = server.url  # scheme, host, port and path: enough to find the endpoint

        async def scenario() -> list[str]:
            keys = RemoteJwks(secret_url, ALL, timeout=0.5)
            errors: list[str] = []
            await keys.start()
            assert keys.current is not None
            for breakage in ("status", "not-a-set", "garbage", "down"):
                server.serve(jwks_of(ec_key()))
                if breakage == "status":
                    server.status = 503
                elif breakage == "not-a-set":
                    server.body = b'{"keys": [{"kty": "oct", "k": "AAAA"}]}'
                elif breakage == "garbage":
                    server.body = b"<html>"
                else:
                    server.down()
                assert await keys.refresh() is False
                errors.append(keys.last_error or "")
            await keys.close()
            return errors

        with caplog.at_level("DEBUG", logger="aidr_gate"):
            errors = asyncio.run(scenario())
            server.up()
            server.serve(jwks_of(rsa_key()))
            with pytest.raises(KeySetError) as caught:
                RemoteJwks(secret_url, ("ES384",)).load_sync()
    text = caplog.text + "\n".join(errors) + str(caught.value)
    for secret in ("alice", "hunter2", "s3cr3t", "api_key"):
        assert secret not in text
    assert shown in caplog.text
    assert all(e.startswith(shown) for e in errors[:3]), errors
    assert str(caught.value).startswith(shown)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://idp.example/jwks", "https://idp.example/jwks"),
        ("https://u:p@idp.example:8443/a/jwks?key=s#f", "https://idp.example:8443/a/jwks"),
        ("http://token@[::1]:8080/jwks", "http://[::1]:8080/jwks"),
        ("https://idp.example:99999/jwks", "<a URL that does not parse>"),
    ],
)
def test_shown_url(url: str, shown: str) -> None:
    assert shown_url(url) == shown


@pytest.mark.parametrize(
    ("kid", "valid"),
    [
        ("k", True),
        ("k" * MAX_KID_LENGTH, True),
        ("", False),
        ("k" * (MAX_KID_LENGTH + 1), False),
        (1, False),
        (None, False),
        (["k"], False),
    ],
)
def test_valid_kid(kid: object, valid: bool) -> None:
    """One rule for the kid of a token and of a JWK."""
    assert valid_kid(kid) is valid
