"""The identity stage: configuration, the Authorization header, the token attack suite, the cache,
claim mapping, and key rotation, outage and unknown-kid floods against a real JWKS server."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from aidr_gate import errors
from aidr_gate.asgi.responses import www_authenticate
from aidr_gate.errors import (
    ConfigError,
    IdentityError,
    TokenAlgorithmNotAllowed,
    TokenAudienceInvalid,
    TokenClaimInvalid,
    TokenClaimMissing,
    TokenExpired,
    TokenIssuerInvalid,
    TokenKeysUnavailable,
    TokenKeyUnknown,
    TokenMalformed,
    TokenMissing,
    TokenNotYetValid,
    TokenSignatureInvalid,
)
from aidr_gate.facts import Identity
from aidr_gate.request.identity import Authenticator, authorization_header, bearer_token
from aidr_gate.request.jwks import RemoteJwks, StaticKeys
from aidr_gate.request.keys import build_key_set
from aidr_gate.settings.identity import IdentityConfig
from aidr_gate.settings.loader import config_from_text, parse_identity_config
from support.environment import ROOT
from support.jwks_server import (
    AUDIENCE,
    ISSUER,
    JwksServer,
    SigningKey,
    b64url,
    claims,
    ec_key,
    ed_key,
    foreign_curve_pem,
    hs256_forgery,
    jwks_of,
    rsa_key,
    tokens,
    unsigned,
)

PINNED = ("RS256", "ES256", "EdDSA")
RSA, EC, ED = rsa_key(), ec_key(), ed_key()
PS_ONLY = rsa_key("ps-only", index=1, alg="PS256")  # published with "alg": "PS256"


def _config(**overrides: Any) -> IdentityConfig:
    base = IdentityConfig(issuers=(ISSUER,), audiences=(AUDIENCE,), algorithms=PINNED)
    return replace(base, **overrides)


def _static(*keys: SigningKey, extra: list[dict[str, Any]] | None = None) -> StaticKeys:
    document = jwks_of(*keys)
    document["keys"].extend(extra or [])
    return StaticKeys(build_key_set(document, (*PINNED, "PS256"), source="test"))


def _authenticator(**overrides: Any) -> Authenticator:
    keys = _static(RSA, EC, ED, extra=[PS_ONLY.public_jwk(alg="PS256")])
    return Authenticator(_config(**overrides), keys=keys)


def _ready(auth: Authenticator) -> bool:
    # A call, not a property read, so the type checker does not pin the first answer.
    return auth.ready


def _bearer(token: str) -> str:
    return f"Bearer {token}"


# --- configuration -----------------------------------------------------------------------------------

EXAMPLES = ROOT / "policies" / "examples"
BASE = f"""\
policy: aidr-2025-01
registry: {EXAMPLES / "entities.yaml"}
catalog: {EXAMPLES / "models.yaml"}
"""


def _gate_config(tmp_path: Path, section: str) -> Any:
    path = tmp_path / "config.yaml"
    text = BASE + section
    path.write_text(text)
    return config_from_text(text, str(path))


def test_full_identity_section(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "issuer.pem").write_bytes(rsa_key().public_pem())
    config = _gate_config(
        tmp_path,
        """\
identity:
  issuer: [https://idp.test/, https://idp2.test/]
  audience: aidr-gate
  algorithms: [RS256, ES256, EdDSA, PS256]
  key_file: keys/issuer.pem
  leeway: 10
  required_claims: [jti, org.id]
  entity_claim: org.id
  headquarters_claim: org.hq
  parent_claim: org.parent
  cache_size: 500
  refresh_min: 30
  refresh_max: 600
  unknown_kid_interval: 15
  max_token_length: 4096
  http_timeout: 2.5
  max_jwks_bytes: 65536
  reload_interval: 5
""",
    )
    parsed = parse_identity_config(config)
    assert parsed == IdentityConfig(
        issuers=("https://idp.test/", "https://idp2.test/"),
        audiences=("aidr-gate",),
        algorithms=("RS256", "ES256", "EdDSA", "PS256"),
        key_file=tmp_path / "keys" / "issuer.pem",
        leeway=10.0,
        required_claims=("jti", "org.id"),
        entity_claim="org.id",
        headquarters_claim="org.hq",
        parent_claim="org.parent",
        cache_size=500,
        refresh_min=30.0,
        refresh_max=600.0,
        unknown_kid_interval=15.0,
        max_token_length=4096,
        http_timeout=2.5,
        max_jwks_bytes=65536,
        reload_interval=5.0,
        file=str(tmp_path / "config.yaml"),
    )


def test_defaults(tmp_path: Path) -> None:
    config = _gate_config(
        tmp_path,
        """\
identity:
  issuer: https://idp.test/
  audience: aidr-gate
  algorithms: [ES256]
  jwks_url: https://idp.test/.well-known/jwks.json
""",
    )
    parsed = parse_identity_config(config)
    assert parsed.jwks_url == "https://idp.test/.well-known/jwks.json"
    assert parsed.key_file is None
    assert (parsed.leeway, parsed.entity_claim, parsed.cache_size) == (30.0, "sub", 10_000)
    assert (parsed.refresh_min, parsed.refresh_max, parsed.unknown_kid_interval) == (60, 3600, 30)
    assert (parsed.max_token_length, parsed.http_timeout) == (8192, 5.0)
    assert parsed.headquarters_claim is None
    assert parsed.required_claims == ()


@pytest.mark.parametrize(
    ("section", "where", "message"),
    [
        ("", "identity", "is required"),
        ("identity:\n  issuer: x\n  audience: y\n", "identity.algorithms", "is required"),
        (
            "identity:\n  issuer: x\n  audience: y\n  algorithms: [RS256, HS256]\n  key_file: k\n",
            "identity.algorithms[1]",
            "refused",
        ),
        (
            "identity:\n  issuer: x\n  audience: y\n  algorithms: [none]\n  key_file: k\n",
            "identity.algorithms[0]",
            "refused",
        ),
        (
            "identity:\n  issuer: x\n  audience: y\n  algorithms: [RS257]\n  key_file: k\n",
            "identity.algorithms[0]",
            "is not one of",
        ),
        (
            "identity:\n  issuer: x\n  audience: y\n  algorithms: []\n  key_file: k\n",
            "identity.algorithms",
            "must not be empty",
        ),
        (
            "identity:\n  issuer: x\n  audience: y\n  algorithms: [ES256]\n",
            "identity",
            "exactly one of jwks_url and key_file",
        ),
        (
            "identity:\n  issuer: x\n  audience: y\n  algorithms: [ES256]\n  key_file: k\n"
            "  jwks_url: https://idp/jwks\n",
            "identity",
            "exactly one",
        ),
        (
            "identity:\n  issuer: x\n  audience: y\n  algorithms: [ES256]\n"
            "  jwks_url: http://idp.example/jwks\n",
            "identity.jwks_url",
            "https://",
        ),
        (
            "identity:\n  issuer: x\n  audience: y\n  algorithms: [ES256]\n  key_file: k\n"
            "  refresh_min: 100\n  refresh_max: 10\n",
            "identity.refresh_max",
            "at least refresh_min",
        ),
        (
            "identity:\n  issuer: x\n  audience: y\n  algorithms: [ES256]\n  key_file: k\n"
            "  leeway: 3600\n",
            "identity.leeway",
            "at most 300",
        ),
        (
            "identity:\n  issuer: x\n  audience: y\n  algorithms: [ES256]\n  key_file: k\n"
            "  cache_sise: 10\n",
            "identity.cache_sise",
            "unknown key",
        ),
        (
            "identity:\n  issuer: []\n  audience: y\n  algorithms: [ES256]\n  key_file: k\n",
            "identity.issuer",
            "must not be empty",
        ),
        (
            "identity:\n  issuer: x\n  audience: y\n  algorithms: [ES256]\n  key_file: k\n"
            "  max_token_length: true\n",
            "identity.max_token_length",
            "whole number",
        ),
    ],
)
def test_config_errors_name_file_key_and_line(
    tmp_path: Path, section: str, where: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_identity_config(_gate_config(tmp_path, section))
    problems = [p for p in caught.value.problems if p.path == where]
    assert problems, caught.value
    assert message in problems[0].message
    assert problems[0].file.endswith("config.yaml")
    assert (problems[0].line is not None and problems[0].line >= 4) or where == "identity"


def test_one_run_lists_every_problem(tmp_path: Path) -> None:
    section = "identity:\n  audience: y\n  algorithms: [HS256]\n  leeway: -1\n  cache_size: x\n"
    with pytest.raises(ConfigError) as caught:
        parse_identity_config(_gate_config(tmp_path, section))
    paths = {p.path for p in caught.value.problems}
    assert paths == {
        "identity.issuer",
        "identity.algorithms[0]",
        "identity",  # neither jwks_url nor key_file
        "identity.leeway",
        "identity.cache_size",
    }


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://127.0.0.1:8080/jwks", True),
        ("http://127.8.9.10/jwks", True),
        ("http://localhost:8080/jwks", True),
        ("http://[::1]:8080/jwks", True),
        ("http://[::ffff:127.0.0.1]/jwks", True),
        ("https://idp.example/jwks", True),
        # A name that merely starts with "127." is any host on the internet.
        ("http://127.evil.example/jwks", False),
        ("http://127.0.0.1.nip.io/jwks", False),
        ("http://127.0.0.1.evil.example:8080/jwks", False),
        ("http://10.0.0.1/jwks", False),
        ("http://localhost.evil.example/jwks", False),
    ],
)
def test_http_jwks_url_is_allowed_only_to_loopback(tmp_path: Path, url: str, allowed: bool) -> None:
    section = f"identity:\n  issuer: x\n  audience: y\n  algorithms: [ES256]\n  jwks_url: {url}\n"
    if allowed:
        assert parse_identity_config(_gate_config(tmp_path, section)).jwks_url == url
    else:
        with pytest.raises(ConfigError) as caught:
            parse_identity_config(_gate_config(tmp_path, section))
        assert [p.path for p in caught.value.problems] == ["identity.jwks_url"]


# --- the Authorization header --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (None, TokenMissing),
        ("", TokenMalformed),
        (b"", TokenMalformed),
        ("Bearer", TokenMalformed),
        ("Bearer    ", TokenMalformed),
        ("Basic dXNlcjpwYXNz", TokenMalformed),
        ("Bearerx a.b.c", TokenMalformed),
        ("Bearer\ta.b.c", TokenMalformed),
        ("Bearer a.b.ç", TokenMalformed),
        (b"Bearer a.b.c" + b"\xff", TokenMalformed),
        ("Bearer " + "a" * 9000, TokenMalformed),
        (b"Bearer " + b"a" * 9000, TokenMalformed),
        (12345, TokenMalformed),
    ],
)
def test_bad_authorization_headers(value: Any, error: type[IdentityError]) -> None:
    with pytest.raises(error):
        bearer_token(value, 8192)


@pytest.mark.parametrize(
    "value", ["Bearer a.b.c", "bearer a.b.c", "BEARER  a.b.c ", b"Bearer a.b.c"]
)
def test_bearer_scheme_is_case_insensitive(value: str | bytes) -> None:
    assert bearer_token(value, 8192) == b"a.b.c"


def test_two_authorization_headers_are_refused() -> None:
    headers = [(b"host", b"x"), (b"authorization", b"Bearer a"), (b"Authorization", b"Bearer b")]
    with pytest.raises(TokenMalformed):
        authorization_header(headers)
    assert authorization_header(headers[:2]) == b"Bearer a"
    assert authorization_header([(b"host", b"x")]) is None


def test_authorization_header_name_in_any_case() -> None:
    """A server that does not lower names still has its one Authorization header found."""
    assert authorization_header([(b"cache-control", b"no"), (b"AUTHORIZATION", b"x")]) == b"x"
    assert authorization_header([(b"cache-control", b"no"), (b"if-none-match", b"y")]) is None
    with pytest.raises(TokenMalformed):
        authorization_header([(b"AUTHORIZATION", b"x"), (b"authorization", b"x")])


IDENTITY_ERRORS = [
    cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, IdentityError) and cls is not IdentityError
]


def test_every_identity_failure_has_its_own_reason_code() -> None:
    reasons = [cls.reason for cls in IDENTITY_ERRORS]
    assert len(reasons) == len(set(reasons)) >= 12
    assert all(cls.status == 401 for cls in IDENTITY_ERRORS)


@pytest.mark.parametrize("cls", [*IDENTITY_ERRORS, IdentityError], ids=lambda c: c.__name__)
def test_the_challenge_never_echoes_the_token(cls: type[IdentityError]) -> None:
    """The middleware's WWW-Authenticate comes from the reason code alone, never the message."""
    secret = "eyJhbGciOiJSUzI1NiJ9.secret-payload.sig"
    value = www_authenticate(cls(f"details with {secret}").reason).decode("ascii")
    assert value.startswith('Bearer realm="aidr-gate"')
    assert secret not in value
    if cls is TokenMissing:
        assert "error" not in value  # RFC 6750 3.1: no error code when no credentials were sent
    else:
        assert 'error="invalid_token"' in value
        description = value.split('error_description="', 1)[1]
        assert description.endswith('"')
        assert '"' not in description[:-1]
        assert all(0x20 <= ord(c) <= 0x7E and c != "\\" for c in description)


# --- the token attack suite ------------------------------------------------------------------------


def _pem_secret() -> bytes:
    return RSA.public_pem()


def _tamper(token: str) -> str:
    head, _, sig = token.split(".")
    body = b64url(json.dumps(claims(sub="someone-else")).encode())
    return f"{head}.{body}.{sig}"


def _short_signature(token: str) -> str:
    # A well-encoded signature of the wrong length (ES256 signatures are exactly 64 bytes).
    head, body, sig = token.split(".")
    raw = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    return f"{head}.{body}.{b64url(raw[:-6])}"


def _cut_signature(token: str) -> str:
    # Half the signature, cut on a 4-character boundary so the base64url stays canonical.
    head, body, sig = token.split(".")
    return f"{head}.{body}.{sig[: len(sig) // 8 * 4]}"


def _non_canonical(token: str) -> str:
    # Flip the unused low bits of the last signature character: same bytes, different text.
    head, body, sig = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(sig[-1])
    return f"{head}.{body}.{sig[:-1]}{alphabet[last | 1]}"


ATTACKS: list[tuple[str, Callable[[], str], type[IdentityError]]] = [
    (
        "alg-none-empty-signature",
        lambda: unsigned({"alg": "none"}, claims()),
        TokenAlgorithmNotAllowed,
    ),
    (
        "alg-none-with-signature",
        lambda: unsigned({"alg": "none", "kid": "rsa-1"}, claims(), b"sig"),
        TokenAlgorithmNotAllowed,
    ),
    ("alg-None-case", lambda: unsigned({"alg": "None"}, claims()), TokenAlgorithmNotAllowed),
    ("alg-missing", lambda: unsigned({"kid": "rsa-1"}, claims(), b"x"), TokenAlgorithmNotAllowed),
    (
        "hs256-with-rsa-public-pem",
        lambda: hs256_forgery(_pem_secret(), claims(), "rsa-1"),
        TokenAlgorithmNotAllowed,
    ),
    (
        "hs256-with-rsa-public-pem-no-kid",
        lambda: hs256_forgery(_pem_secret(), claims(), None),
        TokenAlgorithmNotAllowed,
    ),
    (
        "es384-not-pinned",
        lambda: unsigned({"alg": "ES384", "kid": "ec-1"}, claims(), b"x" * 96),
        TokenAlgorithmNotAllowed,
    ),
    ("rs256-naming-ec-key", lambda: RSA.sign(claims(), kid="ec-1"), TokenAlgorithmNotAllowed),
    ("es256-naming-rsa-key", lambda: EC.sign(claims(), kid="rsa-1"), TokenAlgorithmNotAllowed),
    ("eddsa-naming-rsa-key", lambda: ED.sign(claims(), kid="rsa-1"), TokenAlgorithmNotAllowed),
    (
        "jwk-alg-contradicts-header",
        lambda: PS_ONLY.sign(claims(), alg="RS256"),
        TokenAlgorithmNotAllowed,
    ),
    ("unknown-kid", lambda: RSA.sign(claims(), kid="made-up"), TokenKeyUnknown),
    ("expired", lambda: RSA.sign(claims(exp=int(time.time()) - 120)), TokenExpired),
    ("nbf-in-future", lambda: EC.sign(claims(nbf=int(time.time()) + 600)), TokenNotYetValid),
    ("iat-in-future", lambda: EC.sign(claims(iat=int(time.time()) + 600)), TokenNotYetValid),
    ("wrong-aud", lambda: ED.sign(claims(aud="someone-else")), TokenAudienceInvalid),
    ("wrong-aud-list", lambda: ED.sign(claims(aud=["a", "b"])), TokenAudienceInvalid),
    ("aud-not-strings", lambda: ED.sign(claims(aud=[1, 2])), TokenAudienceInvalid),
    ("wrong-iss", lambda: RSA.sign(claims(iss="https://evil.test/")), TokenIssuerInvalid),
    ("iss-not-string", lambda: RSA.sign(claims(iss=["https://idp.test/"])), TokenIssuerInvalid),
    ("missing-exp", lambda: RSA.sign(claims(exp=None)), TokenClaimMissing),
    ("missing-sub", lambda: RSA.sign(claims(sub=None)), TokenClaimMissing),
    ("missing-iss", lambda: RSA.sign(claims(iss=None)), TokenClaimMissing),
    ("missing-aud", lambda: RSA.sign(claims(aud=None)), TokenClaimMissing),
    ("exp-not-number", lambda: RSA.sign(claims(exp="2999999999")), TokenClaimInvalid),
    ("exp-boolean", lambda: RSA.sign(claims(exp=True)), TokenClaimInvalid),
    ("exp-huge", lambda: RSA.sign(claims(exp=10**400)), TokenClaimInvalid),
    ("sub-not-string", lambda: RSA.sign(claims(sub=42)), TokenClaimInvalid),
    ("sub-control-chars", lambda: RSA.sign(claims(sub="evil\nline")), TokenClaimInvalid),
    ("sub-too-long", lambda: RSA.sign(claims(sub="x" * 300)), TokenClaimInvalid),
    ("tampered-payload", lambda: _tamper(RSA.sign(claims())), TokenSignatureInvalid),
    ("tampered-payload-ec", lambda: _tamper(EC.sign(claims())), TokenSignatureInvalid),
    ("tampered-payload-ed", lambda: _tamper(ED.sign(claims())), TokenSignatureInvalid),
    (
        "signed-by-another-key",
        lambda: rsa_key("rsa-1", index=2).sign(claims()),
        TokenSignatureInvalid,
    ),
    (
        "signature-stripped",
        lambda: RSA.sign(claims()).rsplit(".", 1)[0] + ".",
        TokenSignatureInvalid,
    ),
    ("signature-short-ec", lambda: _short_signature(EC.sign(claims())), TokenSignatureInvalid),
    ("truncated", lambda: (t := RSA.sign(claims()))[: t.index(".") + 12], TokenMalformed),
    ("truncated-signature", lambda: _cut_signature(RSA.sign(claims())), TokenSignatureInvalid),
    ("two-segments", lambda: ".".join(RSA.sign(claims()).split(".")[:2]), TokenMalformed),
    ("four-segments", lambda: RSA.sign(claims()) + ".AAAA", TokenMalformed),
    ("not-base64", lambda: RSA.sign(claims()).replace(".", ".*", 1), TokenMalformed),
    ("padded-base64", lambda: RSA.sign(claims()) + "==", TokenMalformed),
    ("non-canonical-base64", lambda: _non_canonical(ED.sign(claims())), TokenMalformed),
    ("oversized", lambda: RSA.sign(claims(pad="x" * 9000)), TokenMalformed),
    ("header-not-json", lambda: b64url(b"{nope") + ".e30.AAAA", TokenMalformed),
    ("header-a-list", lambda: b64url(b'["RS256"]') + ".e30.AAAA", TokenMalformed),
    (
        "crit-header",
        lambda: RSA.sign(claims(), headers={"crit": ["exp"], "exp": 1}),
        TokenMalformed,
    ),
    ("b64-false", lambda: unsigned({"alg": "RS256", "b64": False}, {}, b"x"), TokenMalformed),
    (
        "kid-not-string",
        lambda: unsigned({"alg": "RS256", "kid": 7}, claims(), b"x"),
        TokenMalformed,
    ),
    ("payload-not-object", lambda: _payload(RSA, b"[1, 2]"), TokenMalformed),
    ("payload-not-json", lambda: _payload(RSA, b"{not json"), TokenMalformed),
    ("headquarters-not-iso", lambda: RSA.sign(claims(hq="XX")), TokenClaimInvalid),
    ("parent-not-string", lambda: RSA.sign(claims(org={"parent": 7})), TokenClaimInvalid),
]


def _payload(key: SigningKey, raw: bytes) -> str:
    # A correctly signed token whose payload is not a claims object.
    return key.sign_raw(raw, headers={"kid": key.kid})


@pytest.mark.parametrize(("build", "error"), [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS])
def test_attack_is_refused_with_its_reason(
    build: Callable[[], str], error: type[IdentityError]
) -> None:
    auth = _authenticator(headquarters_claim="hq", parent_claim="org.parent")
    token = build()
    with pytest.raises(IdentityError) as caught:
        asyncio.run(auth.authenticate(_bearer(token)))
    assert type(caught.value) is error, caught.value.message
    # The sync path (CLI) refuses the same way, and nothing was cached.
    with pytest.raises(error):
        auth.authenticate_sync(_bearer(token))
    assert auth.cached_tokens == 0
    assert token not in caught.value.message


@pytest.mark.parametrize("key", [RSA, EC, ED], ids=lambda k: k.alg)
def test_valid_tokens_for_each_algorithm(key: SigningKey) -> None:
    auth = _authenticator()
    identity = asyncio.run(auth.authenticate(_bearer(key.sign(claims()))))
    assert identity.entity_id == "nordlys-se"
    assert (identity.algorithm, identity.key_id, identity.issuer) == (key.alg, key.kid, ISSUER)
    assert identity.method == "jwt"
    assert identity.cached is False


def test_leeway_accepts_slightly_expired_and_early_tokens() -> None:
    auth = _authenticator(leeway=30)
    now = time.time()
    assert auth.authenticate_sync(_bearer(RSA.sign(claims(exp=int(now) - 10))))
    assert auth.authenticate_sync(_bearer(RSA.sign(claims(nbf=int(now) + 10))))
    assert auth.authenticate_sync(_bearer(RSA.sign(claims(aud=["x", AUDIENCE]))))
    with pytest.raises(TokenExpired):
        auth.authenticate_sync(_bearer(RSA.sign(claims(exp=int(now) - 31))))


def test_es384_with_a_p384_key() -> None:
    p384 = SigningKey(ec.generate_private_key(ec.SECP384R1()), "ES384", "ec-384")
    keys = StaticKeys(build_key_set(jwks_of(p384, EC), ("ES256", "ES384"), source="t"))
    auth = Authenticator(_config(algorithms=("ES256", "ES384")), keys=keys)
    assert auth.authenticate_sync(_bearer(p384.sign(claims()))).algorithm == "ES384"
    with pytest.raises(TokenAlgorithmNotAllowed):  # a P-256 key never verifies ES384
        auth.authenticate_sync(_bearer(p384.sign(claims(), kid="ec-1")))


def test_ps256_key_verifies_ps256_tokens() -> None:
    auth = _authenticator(algorithms=(*PINNED, "PS256"))
    identity = auth.authenticate_sync(_bearer(PS_ONLY.sign(claims())))
    assert identity.algorithm == "PS256"
    assert identity.key_id == "ps-only"


# Where pyjwt's own jwt.decode is the reference: same verdict for the same token and key.
DIFFERENTIAL = [
    a
    for a in ATTACKS
    if a[0]
    in {
        "alg-none-empty-signature",
        "hs256-with-rsa-public-pem",
        "rs256-naming-ec-key",
        "expired",
        "nbf-in-future",
        "iat-in-future",
        "wrong-aud",
        "wrong-aud-list",
        "wrong-iss",
        "missing-exp",
        "missing-sub",
        "missing-iss",
        "missing-aud",
        "tampered-payload",
        "tampered-payload-ec",
        "tampered-payload-ed",
        "signed-by-another-key",
        "signature-stripped",
        "signature-short-ec",
        "truncated",
        "truncated-signature",
        "two-segments",
        "not-base64",
        "header-not-json",
        "crit-header",
        "payload-not-object",
    }
]


@pytest.mark.parametrize(
    "build", [a[1] for a in DIFFERENTIAL] + [lambda: RSA.sign(claims()), lambda: ED.sign(claims())]
)
def test_same_verdict_as_jwt_decode(build: Callable[[], str]) -> None:
    token = build()
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError:
        kid = None
    key = {k.kid: k for k in (RSA, EC, ED)}.get(kid or "rsa-1", RSA)
    try:
        jwt.decode(
            token,
            key.private.public_key(),
            algorithms=[key.alg],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["exp", "iss", "aud", "sub"]},
        )
        reference = True
    except jwt.PyJWTError:
        reference = False
    try:
        _authenticator().authenticate_sync(_bearer(token))
        ours = True
    except IdentityError:
        ours = False
    assert ours == reference


# --- the cache -----------------------------------------------------------------------------------


def test_repeat_caller_is_served_from_the_cache_without_suspending() -> None:
    auth = _authenticator()
    header = _bearer(EC.sign(claims()))
    first = auth.authenticate_sync(header)
    assert first.cached is False
    # The cached path completes on the first step of the coroutine: it never awaits anything.
    coroutine = auth.authenticate(header.encode())
    with pytest.raises(StopIteration) as done:
        coroutine.send(None)
    second: Identity = done.value.value
    assert second.cached is True
    assert msgspec.structs.replace(second, cached=False) == first
    assert "token" not in repr(second).lower()


def test_known_reads_the_cache_and_the_refusals_without_verifying(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _counting_signature_checks(monkeypatch)
    auth = _authenticator()
    header = _bearer(EC.sign(claims()))
    assert auth.known(header) is None  # new: the request path awaits authenticate() for it
    assert calls[0] == 0
    first = auth.authenticate_sync(header)
    hit = auth.known(header)
    assert hit is not None and hit.cached is True
    assert msgspec.structs.replace(hit, cached=False) == first
    forged = _bearer(_tamper(ED.sign(claims())))
    assert auth.known(forged) is None
    with pytest.raises(TokenSignatureInvalid):
        auth.authenticate_sync(forged)
    checks = calls[0]
    with pytest.raises(TokenSignatureInvalid):
        auth.known(forged)  # remembered: refused again with no signature check
    assert calls[0] == checks
    with pytest.raises(TokenMalformed):
        auth.known("Basic abc")
    now = time.time()
    short = _bearer(RSA.sign(claims(exp=int(now) + 5)))
    auth.authenticate_sync(short, now=now)
    assert auth.known(short, now=now + 6) is None  # never served past exp


def test_cache_is_never_served_past_exp() -> None:
    auth = _authenticator(leeway=0)
    now = time.time()
    header = _bearer(RSA.sign(claims(exp=int(now) + 5)))
    assert asyncio.run(auth.authenticate(header, now=now)).cached is False
    assert asyncio.run(auth.authenticate(header, now=now + 4)).cached is True
    with pytest.raises(TokenExpired):
        asyncio.run(auth.authenticate(header, now=now + 6))
    assert auth.cached_tokens == 0
    with pytest.raises(TokenExpired):
        auth.authenticate_sync(header, now=now + 6)


def test_cache_is_bounded_and_can_be_off() -> None:
    auth = _authenticator(cache_size=3)
    headers = [_bearer(t) for t in tokens(ED, 5)]
    for header in headers:
        auth.authenticate_sync(header)
    assert auth.cached_tokens == 3
    assert auth.authenticate_sync(headers[-1]).cached is True
    assert auth.authenticate_sync(headers[0]).cached is False  # evicted first, verified again
    off = _authenticator(cache_size=0)
    off.authenticate_sync(headers[0])
    assert off.authenticate_sync(headers[0]).cached is False
    assert off.cached_tokens == 0


def test_entries_of_a_rotated_out_key_are_dropped() -> None:
    keys = _static(RSA, EC)
    auth = Authenticator(_config(), keys=keys)
    rsa_header, ec_header = _bearer(RSA.sign(claims())), _bearer(EC.sign(claims()))
    auth.authenticate_sync(rsa_header)
    auth.authenticate_sync(ec_header)
    assert auth.cached_tokens == 2
    keys.replace(build_key_set(jwks_of(EC), PINNED, source="rotated"))
    assert auth.cached_tokens == 1
    assert auth.authenticate_sync(ec_header).cached is True
    with pytest.raises(TokenKeyUnknown):
        auth.authenticate_sync(rsa_header)


def _counting_signature_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the signature checks every key's algorithm object makes from now on."""
    from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

    calls = [0]
    for cls in (RSAAlgorithm, ECAlgorithm, OKPAlgorithm):
        original = cls.verify

        def counted(self: Any, *args: Any, _original: Any = original) -> Any:
            calls[0] += 1
            return _original(self, *args)

        monkeypatch.setattr(cls, "verify", counted)
    return calls


def test_a_repeated_forged_token_costs_no_second_signature_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A flood of one forged token: the first costs a signature check, every repeat a lookup."""
    calls = _counting_signature_checks(monkeypatch)
    auth = _authenticator()
    forged = _bearer(_tamper(ED.sign(claims())))
    for _ in range(50):
        with pytest.raises(TokenSignatureInvalid):
            auth.authenticate_sync(forged)
        with pytest.raises(TokenSignatureInvalid):
            asyncio.run(auth.authenticate(forged))
    assert calls[0] == 1
    assert auth.refused_tokens == 1
    expired = _bearer(RSA.sign(claims(exp=int(time.time()) - 3600)))
    for _ in range(3):
        with pytest.raises(TokenExpired):
            auth.authenticate_sync(expired)
    assert calls[0] == 2
    for _ in range(3):
        with pytest.raises(TokenMalformed):
            auth.authenticate_sync(_bearer("not-a-token"))
    assert auth.refused_tokens == 3


def test_refusals_are_bounded_and_never_evict_verified_callers() -> None:
    auth = _authenticator(cache_size=4)
    good = [_bearer(t) for t in tokens(ED, 2)]
    for header in good:
        auth.authenticate_sync(header)
    for index in range(20):  # distinct forged tokens
        with pytest.raises(TokenSignatureInvalid):
            auth.authenticate_sync(_bearer(_tamper(ED.sign(claims(jti=str(index))))))
    assert auth.refused_tokens == 4
    assert all(auth.authenticate_sync(header).cached for header in good)


def test_refusals_that_time_or_keys_may_undo_are_not_kept_for_good() -> None:
    """A token not yet valid becomes valid; a new key set may verify what the old one refused."""
    auth = _authenticator(leeway=0)
    now = time.time()
    early = _bearer(EC.sign(claims(nbf=int(now) + 60)))
    with pytest.raises(TokenNotYetValid):
        auth.authenticate_sync(early, now=now)
    assert auth.refused_tokens == 0
    assert auth.authenticate_sync(early, now=now + 61).entity_id
    keys = _static(RSA)
    rotating = Authenticator(_config(), keys=keys)
    newcomer = _bearer(EC.sign(claims()))
    with pytest.raises(TokenKeyUnknown):
        rotating.authenticate_sync(newcomer)
    assert rotating.refused_tokens == 1  # until a refetch may bring the key
    with pytest.raises(TokenKeyUnknown):
        rotating.authenticate_sync(newcomer, now=now + rotating.config.unknown_kid_interval + 1)
    keys.replace(build_key_set(jwks_of(RSA, EC), PINNED, source="rotated"))
    assert rotating.refused_tokens == 0
    assert rotating.authenticate_sync(newcomer).entity_id


# --- claim mapping ---------------------------------------------------------------------------------


def test_nested_entity_and_country_claims() -> None:
    auth = _authenticator(
        entity_claim="org.id",
        headquarters_claim="org.hq",
        parent_claim="org.parent",
        required_claims=("jti",),
    )
    token = RSA.sign(claims(jti="1", org={"id": "acme-de", "hq": "de", "parent": "US"}))
    identity = auth.authenticate_sync(_bearer(token))
    assert identity.entity_id == "acme-de"
    assert identity.subject == "nordlys-se"
    assert (identity.claimed_headquarters, identity.claimed_parent) == ("DE", "US")
    with pytest.raises(TokenClaimMissing):
        auth.authenticate_sync(_bearer(RSA.sign(claims(org={"id": "acme-de"}))))  # no jti
    with pytest.raises(TokenClaimMissing):
        auth.authenticate_sync(_bearer(RSA.sign(claims(jti="2", org={"name": "x"}))))
    with pytest.raises(TokenClaimInvalid):
        auth.authenticate_sync(_bearer(RSA.sign(claims(jti="3", org={"id": ["a"]}))))


def test_namespaced_claim_names_with_dots_are_read_whole() -> None:
    auth = _authenticator(entity_claim="https://idp.test/org", headquarters_claim="hq")
    token = RSA.sign(claims(**{"https://idp.test/org": "nordlys-se"}))
    identity = auth.authenticate_sync(_bearer(token))
    assert identity.entity_id == "nordlys-se"
    assert identity.claimed_headquarters is None


# --- key sources through the authenticator -------------------------------------------------------


def test_pem_key_file_tokens_with_any_or_no_kid(tmp_path: Path) -> None:
    path = tmp_path / "issuer.pem"
    path.write_bytes(RSA.public_pem() + ED.public_pem())
    auth = Authenticator(_config(key_file=path))
    identity = auth.authenticate_sync(_bearer(RSA.sign(claims(), kid=None)))
    loaded = auth.keys.current
    assert loaded is not None
    assert identity.key_id == loaded.keys[0].thumbprint  # PEM keys are named by thumbprint
    assert auth.authenticate_sync(_bearer(ED.sign(claims()))).algorithm == "EdDSA"
    with pytest.raises(TokenSignatureInvalid):
        auth.authenticate_sync(_bearer(rsa_key(index=2).sign(claims(), kid=None)))
    with pytest.raises(TokenKeyUnknown):
        auth.authenticate_sync(_bearer(EC.sign(claims())))  # no EC key in the file


def test_token_without_kid_against_several_named_keys_is_refused() -> None:
    auth = Authenticator(_config(), keys=_static(RSA, rsa_key("rsa-2", index=1)))
    with pytest.raises(TokenKeyUnknown):
        auth.authenticate_sync(_bearer(RSA.sign(claims(), kid=None)))
    single = Authenticator(_config(), keys=_static(RSA))
    assert single.authenticate_sync(_bearer(RSA.sign(claims(), kid=None))).key_id == "rsa-1"


@pytest.mark.parametrize(
    "content",
    [
        b"not a key",
        foreign_curve_pem("secp192r1"),
        foreign_curve_pem("brainpoolP256r1"),
        b"-----BEGIN PUBLIC KEY-----\nMAswBQYDKgMEAwIAAA==\n-----END PUBLIC KEY-----\n",
    ],
    ids=["garbage", "p192", "brainpool", "unknown-key-type"],
)
def test_bad_key_file_is_a_startup_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "issuer.pem"
    path.write_bytes(content)
    auth = Authenticator(_config(key_file=path, file="config.yaml"))
    with pytest.raises(ConfigError) as caught:
        asyncio.run(auth.start())
    assert caught.value.problems[0].path == "identity.key_file"
    with pytest.raises(TokenKeysUnavailable):
        auth.authenticate_sync(_bearer(RSA.sign(claims())))


def test_sync_authentication_with_a_one_off_jwks_fetch() -> None:
    with JwksServer(jwks_of(RSA, ED)) as server:
        auth = Authenticator(_config(jwks_url=server.url))
        assert not _ready(auth)
        assert auth.authenticate_sync(_bearer(ED.sign(claims()))).key_id == "ed-1"
        assert _ready(auth)
        assert server.fetches == 1
        assert auth.authenticate_sync(_bearer(RSA.sign(claims()))).key_id == "rsa-1"
        assert server.fetches == 1

        async def inside_a_loop() -> None:
            cold = Authenticator(_config(jwks_url=server.url))
            with pytest.raises(TokenKeysUnavailable):
                cold.authenticate_sync(_bearer(ED.sign(claims())))

        asyncio.run(inside_a_loop())
        assert server.fetches == 1
        server.down()
        with pytest.raises(TokenKeysUnavailable):
            Authenticator(_config(jwks_url=server.url)).authenticate_sync(
                _bearer(ED.sign(claims()))
            )


def test_rotation_and_outage_against_a_real_jwks_server() -> None:
    old, new = rsa_key("2025-old"), ec_key("2026-new", index=1)
    with JwksServer(jwks_of(old)) as server:

        async def scenario() -> None:
            config = _config(jwks_url=server.url, unknown_kid_interval=0.3, http_timeout=1.0)
            async with Authenticator(config) as auth:
                assert server.fetches == 1
                old_header = _bearer(old.sign(claims()))
                assert (await auth.authenticate(old_header)).key_id == "2025-old"
                # The issuer rotates: the new kid is unknown until the single refetch.
                server.serve(jwks_of(new))
                new_header = _bearer(new.sign(claims()))
                await asyncio.sleep(0.35)
                assert (await auth.authenticate(new_header)).key_id == "2026-new"
                assert server.fetches == 2
                # The old key is gone, and so are the identities it verified.
                with pytest.raises(TokenKeyUnknown):
                    await auth.authenticate(old_header)
                assert server.fetches == 2  # rate limited: no second refetch
                # The issuer goes down: the gate keeps verifying with the last good keys.
                server.down()
                await asyncio.sleep(0.35)
                fresh = _bearer(new.sign(claims(sub="second-caller")))
                assert (await auth.authenticate(fresh)).entity_id == "second-caller"
                assert (await auth.authenticate(new_header)).cached is True
                with pytest.raises(TokenKeyUnknown):
                    await auth.authenticate(_bearer(new.sign(claims(), kid="made-up")))
                assert auth.keys.current is not None
                assert auth.keys.current.key_ids == ("2026-new",)
                assert isinstance(auth.keys, RemoteJwks)
                assert auth.keys.failures >= 1
                # It comes back serving garbage: still the last good keys.
                server.up()
                server.body = b"garbage"
                await asyncio.sleep(0.35)
                with pytest.raises(TokenKeyUnknown):
                    await auth.authenticate(_bearer(new.sign(claims(), kid="other")))
                assert (
                    await auth.authenticate(_bearer(new.sign(claims(sub="third"))))
                ).entity_id == "third"

        asyncio.run(scenario())


def test_unknown_kid_flood_costs_the_issuer_one_fetch_per_interval() -> None:
    with JwksServer(jwks_of(ED)) as server:

        async def scenario() -> None:
            config = _config(jwks_url=server.url, unknown_kid_interval=0.5)
            async with Authenticator(config) as auth:
                assert server.fetches == 1
                await asyncio.sleep(0.55)
                server.delay = 0.05

                async def forged() -> str:
                    kid = secrets.token_hex(8)
                    try:
                        await auth.authenticate(_bearer(ED.sign(claims(), kid=kid)))
                    except IdentityError as exc:
                        return exc.reason
                    return "ACCEPTED"

                started = time.monotonic()
                reasons = await asyncio.gather(*(forged() for _ in range(500)))
                elapsed = time.monotonic() - started
                assert set(reasons) == {"TOKEN_KEY_UNKNOWN"}
                intervals = int(elapsed / 0.5) + 1
                assert server.fetches - 1 <= intervals, (server.fetches, elapsed)
                assert server.fetches == 2  # 500 callers, one shared refetch
                # Meanwhile the real caller is unaffected.
                assert (await auth.authenticate(_bearer(ED.sign(claims())))).key_id == "ed-1"

        asyncio.run(scenario())


def test_no_keys_yet_refuses_with_keys_unavailable() -> None:
    with JwksServer(jwks_of(ED)) as server:
        server.down()

        async def scenario() -> None:
            config = _config(jwks_url=server.url, unknown_kid_interval=0.2, refresh_min=30)
            async with Authenticator(config) as auth:
                assert not _ready(auth)
                with pytest.raises(TokenKeysUnavailable):
                    await auth.authenticate(_bearer(ED.sign(claims())))
                server.up()
                await asyncio.sleep(0.25)
                # The first request after the interval fetches the keys itself.
                assert (await auth.authenticate(_bearer(ED.sign(claims())))).key_id == "ed-1"
                assert _ready(auth)

        asyncio.run(scenario())


class _BrokenKeys(StaticKeys):
    """A key source with a bug: reading the current set raises."""

    @property
    def current(self) -> Any:
        raise RuntimeError("bug in a key source")


def test_a_bug_behind_the_hot_path_is_a_refusal_not_a_crash() -> None:
    auth = Authenticator(
        _config(), keys=_BrokenKeys(build_key_set(jwks_of(ED), PINNED, source="t"))
    )
    header = _bearer(ED.sign(claims()))
    with pytest.raises(IdentityError) as caught:
        asyncio.run(auth.authenticate(header))
    with pytest.raises(IdentityError) as caught_sync:
        auth.authenticate_sync(header)
    for error in (caught.value, caught_sync.value):
        assert type(error) is IdentityError
        assert error.reason == "IDENTITY_INVALID"
        assert "bug" not in www_authenticate(error.reason).decode()
