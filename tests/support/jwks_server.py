"""Test helpers for identity: signing keys generated at run time and a real JWKS server on 127.0.0.1.

The server runs its own event loop in a thread, so both async tests (``asyncio.run``) and blocking
code (``authenticate_sync``) can reach it; it counts every fetch, can rotate keys, serve garbage or
errors, answer slowly, and go down and come back on the same port.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
import jwt.api_jws
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ISSUER = "https://idp.test/"
AUDIENCE = "aidr-gate"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def b64url(data: bytes) -> str:
    """Base64url without padding, as JWS writes it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class SigningKey:
    """A private key, the algorithm it signs with and the kid it is published under."""

    private: PrivateKey
    alg: str
    kid: str | None

    def public_jwk(self, **extra: Any) -> dict[str, Any]:
        """The public JWK (with kid, without alg unless given in *extra*)."""
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
        out: dict[str, Any] = {k: v for k, v in jwk.items() if k != "key_ops"}
        if self.kid is not None:
            out["kid"] = self.kid
        out.update(extra)
        return out

    def public_pem(self) -> bytes:
        """The public key as a PEM SubjectPublicKeyInfo."""
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(
        self,
        claims: Mapping[str, Any],
        *,
        alg: str | None = None,
        headers: Mapping[str, Any] | None = None,
        kid: str | None = "",
    ) -> str:
        """A compact JWS over *claims*; ``kid=""`` means this key's kid, None means no kid."""
        head: dict[str, Any] = dict(headers or {})
        chosen = self.kid if kid == "" else kid
        if chosen is not None:
            head["kid"] = chosen
        # Signed as raw JSON (not jwt.encode), so tests can craft claims jwt.encode would refuse.
        return self.sign_raw(json.dumps(dict(claims)).encode(), alg=alg, headers=head)

    def sign_raw(
        self, payload: bytes, *, alg: str | None = None, headers: Mapping[str, Any] | None = None
    ) -> str:
        """A compact JWS over arbitrary payload bytes."""
        return jwt.api_jws.encode(
            payload, self.private, algorithm=alg or self.alg, headers=dict(headers or {})
        )

    def with_kid(self, kid: str | None) -> SigningKey:
        """The same key published under another kid."""
        return SigningKey(self.private, self.alg, kid)


@functools.cache
def _private(kind: str, index: int) -> PrivateKey:
    del index  # distinct cache entries give distinct keys
    if kind == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "EC":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def rsa_key(kid: str | None = "rsa-1", index: int = 0, alg: str = "RS256") -> SigningKey:
    """An RSA 2048 key (generated once per process and index)."""
    return SigningKey(_private("RSA", index), alg, kid)


def ec_key(kid: str | None = "ec-1", index: int = 0) -> SigningKey:
    """An EC P-256 key for ES256."""
    return SigningKey(_private("EC", index), "ES256", kid)


def ed_key(kid: str | None = "ed-1", index: int = 0) -> SigningKey:
    """An Ed25519 key for EdDSA."""
    return SigningKey(_private("OKP", index), "EdDSA", kid)


def foreign_curve_pem(curve: str = "secp192r1") -> bytes:
    """A PEM public key on an EC curve JOSE has no algorithm for (P-192, brainpool...)."""
    key = ec.generate_private_key(_CURVES[curve]()).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "secp192r1": ec.SECP192R1,
    "brainpoolP256r1": ec.BrainpoolP256R1,
    "secp256k1": ec.SECP256K1,
}


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims for the test issuer and audience, expiring in ten minutes; None deletes."""
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "nordlys-se",
        "iat": now,
        "exp": now + 600,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def unsigned(header: Mapping[str, Any], payload: Mapping[str, Any], signature: bytes = b"") -> str:
    """A token assembled by hand (for ``alg: none`` and other forgeries)."""
    head = b64url(json.dumps(dict(header)).encode())
    body = b64url(json.dumps(dict(payload)).encode())
    return f"{head}.{body}.{b64url(signature)}"


def hs256_forgery(secret: bytes, payload: Mapping[str, Any], kid: str | None) -> str:
    """HS256 signed with *secret* (the public key's PEM bytes in the confusion attack)."""
    header: dict[str, Any] = {"alg": "HS256", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(dict(payload)).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(mac)}"


def jwks_of(*keys: SigningKey) -> dict[str, Any]:
    """A JWKS document publishing *keys*."""
    return {"keys": [k.public_jwk() for k in keys]}


class JwksServer:
    """A JWKS endpoint on 127.0.0.1 (its own thread and event loop) that counts fetches."""

    def __init__(self, jwks: Mapping[str, Any], *, cache_control: str | None = "max-age=3600"):
        self.jwks: Mapping[str, Any] = jwks
        self.cache_control = cache_control
        self.body: bytes | None = None  # served instead of the JWKS when set (garbage)
        self.status = 200
        self.delay = 0.0
        self.chunked = False
        self._fetches = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- control ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Where the JWKS is served."""
        return f"http://127.0.0.1:{self.port}/jwks.json"

    @property
    def fetches(self) -> int:
        """How many requests the server has answered (or started answering)."""
        with self._lock:
            return self._fetches

    def serve(self, jwks: Mapping[str, Any]) -> None:
        """Publish another key set (rotation)."""
        self.jwks = jwks
        self.body = None
        self.status = 200

    def __enter__(self) -> JwksServer:
        self._thread.start()
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def up(self) -> None:
        """Start listening (again, on the same port once one was chosen)."""
        asyncio.run_coroutine_threadsafe(self._up(), self._loop).result(timeout=5)

    def down(self) -> None:
        """Stop listening: fetches now fail with connection refused."""
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=5)
            self._runner = None

    # -- serving ---------------------------------------------------------------------------------

    async def _up(self) -> None:
        app = web.Application()
        app.router.add_get("/jwks.json", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(runner, sock).start()
        self._runner = runner

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self._fetches += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        body = self.body if self.body is not None else json.dumps(self.jwks).encode()
        headers = {"Content-Type": "application/json"}
        if self.cache_control is not None:
            headers["Cache-Control"] = self.cache_control
        if self.chunked:
            response = web.StreamResponse(status=self.status, headers=headers)
            response.enable_chunked_encoding()
            await response.prepare(request)
            for start in range(0, len(body), 16 * 1024):
                await response.write(body[start : start + 16 * 1024])
            await response.write_eof()
            return response
        return web.Response(body=body, status=self.status, headers=headers)


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    """Poll *predicate* until true or *timeout* seconds pass (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def tokens(key: SigningKey, count: int, **overrides: Any) -> Iterator[str]:
    """*count* distinct valid tokens signed by *key*."""
    for index in range(count):
        yield key.sign(claims(jti=f"t{index}", **overrides))
