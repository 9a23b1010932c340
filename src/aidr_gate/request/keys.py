"""Verification key sets: JWKS documents and PEM files turned into keys bound to one algorithm each.

A :class:`KeySet` is immutable and built once per fetch or file load, outside the hot path. Every
usable key is stored as one :class:`jwt.PyJWK` per algorithm it may verify, so the algorithm that
checks a signature is fixed by the key record, never chosen by the token (RFC 8725 section 3.1; the
"algorithm confusion through kid" class of bugs). Only asymmetric algorithms exist here: ``none`` and
``HS*`` cannot be pinned, so a public key can never be used as an HMAC secret.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt import PyJWK
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.exceptions import PyJWTError

from aidr_gate.errors import AidrGateError

# Which key type (and curve) can verify which algorithm. Nothing symmetric: an HS* entry here would
# let a public key double as an HMAC secret.
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_CURVES: Mapping[str, str] = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
OKP_CURVES = frozenset({"Ed25519", "Ed448"})
SUPPORTED_ALGORITHMS = frozenset({*RSA_ALGORITHMS, *EC_CURVES, "EdDSA"})

MIN_RSA_BITS = 2048  # NIST SP 800-131A; pyjwt only warns below this
MAX_KEYS = 64  # a JWKS with more keys than this is a mistake or an attack on the loader
MAX_KID_LENGTH = 256

# JWK members that only private or symmetric keys carry; a public key set must not have them.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_THUMBPRINT_MEMBERS: Mapping[str, tuple[str, ...]] = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)


class KeySetError(AidrGateError, ValueError):
    """A JWKS document or key file holds no usable verification key; the last good set is kept.

    Also a ``ValueError``, as it was before the exception tree took it in."""


def valid_kid(kid: object) -> bool:
    """Whether a ``kid`` (of a token or a JWK) is a non-empty string of at most MAX_KID_LENGTH."""
    return isinstance(kid, str) and 0 < len(kid) <= MAX_KID_LENGTH


def algorithms_for(jwk: Mapping[str, Any]) -> frozenset[str]:
    """Every supported algorithm a JWK's type and curve can verify (before pinning and ``alg``)."""
    kty = jwk.get("kty")
    if kty == "RSA":
        return RSA_ALGORITHMS
    if kty == "EC":
        crv = jwk.get("crv")
        return frozenset(alg for alg, curve in EC_CURVES.items() if curve == crv)
    if kty == "OKP" and jwk.get("crv") in OKP_CURVES:
        return frozenset({"EdDSA"})
    return frozenset()


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK (base64url): names a key by its material."""
    members = _THUMBPRINT_MEMBERS[str(jwk["kty"])]
    canonical = json.dumps(
        {name: jwk[name] for name in members}, separators=(",", ":"), sort_keys=True
    )
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True, eq=False)
class VerificationKey:
    """One public key, with one pyjwt key object per algorithm it is allowed to verify."""

    kid: str | None
    thumbprint: str
    key_type: str
    by_algorithm: Mapping[str, PyJWK]

    @property
    def key_id(self) -> str:
        """The ``kid`` when the key has one, else its thumbprint: what evidence and audit record."""
        return self.kid if self.kid is not None else self.thumbprint

    @property
    def algorithms(self) -> frozenset[str]:
        """The algorithms this key verifies."""
        return frozenset(self.by_algorithm)


@dataclass(frozen=True, slots=True, eq=False)
class KeySet:
    """An immutable set of verification keys, looked up by ``kid`` and algorithm."""

    keys: tuple[VerificationKey, ...]
    source: str
    # Keys skipped while building, each as "key[i] (kid ...): why"; never key material.
    skipped: tuple[str, ...] = ()
    by_kid: Mapping[str, tuple[VerificationKey, ...]] = field(init=False)
    anonymous: Mapping[str, tuple[VerificationKey, ...]] = field(init=False)
    sole: Mapping[str, VerificationKey] = field(init=False)
    thumbprints: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        by_kid: dict[str, list[VerificationKey]] = {}
        anonymous: dict[str, list[VerificationKey]] = {}
        every: dict[str, list[VerificationKey]] = {}
        for key in self.keys:
            if key.kid is not None:
                by_kid.setdefault(key.kid, []).append(key)
            for alg in key.by_algorithm:
                every.setdefault(alg, []).append(key)
                if key.kid is None:
                    anonymous.setdefault(alg, []).append(key)
        # frozen: set the derived indexes once, here
        object.__setattr__(self, "by_kid", {k: tuple(v) for k, v in by_kid.items()})
        object.__setattr__(self, "anonymous", {k: tuple(v) for k, v in anonymous.items()})
        object.__setattr__(self, "sole", {k: v[0] for k, v in every.items() if len(v) == 1})
        object.__setattr__(self, "thumbprints", frozenset(k.thumbprint for k in self.keys))

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The key ids in the set (kid or thumbprint), for logs and readiness output."""
        return tuple(k.key_id for k in self.keys)

    def named(self, kid: str) -> tuple[VerificationKey, ...] | None:
        """The keys whose ``kid`` is *kid*, or None when the set does not know it."""
        return self.by_kid.get(kid)

    def unnamed(self, alg: str) -> tuple[VerificationKey, ...]:
        """Keys without a ``kid`` (PEM files) that verify *alg*: tried when the kid names no key."""
        return self.anonymous.get(alg, ())

    def only(self, alg: str) -> VerificationKey | None:
        """The single key for *alg* when there is exactly one: used for tokens that carry no kid."""
        return self.sole.get(alg)


def _verification_key(
    jwk: Mapping[str, Any], pinned: frozenset[str]
) -> tuple[VerificationKey | None, str]:
    """A key built from one JWK, or None and why it was skipped."""
    kty = jwk.get("kty")
    if not isinstance(kty, str) or not kty:
        return None, "no kty"
    problem = _member_problem(jwk, kty)
    if problem is not None:
        return None, problem
    usable = _usable_algorithms(jwk, kty, pinned)
    if isinstance(usable, str):
        return None, usable
    missing = [m for m in _THUMBPRINT_MEMBERS[kty] if not isinstance(jwk.get(m), str)]
    if missing:
        return None, f"member {missing[0]!r} is missing or not a string"
    by_algorithm = _prepared(jwk, kty, usable)
    if isinstance(by_algorithm, str):
        return None, by_algorithm
    first = next(iter(by_algorithm.values())).key
    if isinstance(first, rsa.RSAPublicKey) and first.key_size < MIN_RSA_BITS:
        return None, f"RSA key of {first.key_size} bits is shorter than {MIN_RSA_BITS}"
    return VerificationKey(jwk.get("kid"), thumbprint(jwk), kty, by_algorithm), ""


def _member_problem(jwk: Mapping[str, Any], kty: str) -> str | None:
    """Why a JWK's members rule it out before any algorithm is considered, or None."""
    if kty not in _THUMBPRINT_MEMBERS:
        return f"key type {kty!r} is not accepted (symmetric or unknown)"
    if _PRIVATE_MEMBERS & jwk.keys():
        return "holds private or symmetric key material"
    kid = jwk.get("kid")
    if kid is not None and not valid_kid(kid):
        return "kid is not a short non-empty string"
    use = jwk.get("use")
    if use is not None and use != "sig":
        return f"use is {use!r}, not 'sig'"
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return "key_ops does not include 'verify'"
    return None


def _usable_algorithms(
    jwk: Mapping[str, Any], kty: str, pinned: frozenset[str]
) -> frozenset[str] | str:
    """The pinned algorithms the key may verify, or why there are none."""
    possible = algorithms_for(jwk)
    if not possible:
        return f"unsupported curve {jwk.get('crv')!r} for {kty}"
    declared = jwk.get("alg")
    if declared is not None:
        # A JWK's own alg binds it: the key verifies that algorithm and nothing else.
        if declared not in possible:
            return f"alg {declared!r} does not fit a {kty} key"
        possible = frozenset({declared})
    usable = possible & pinned
    if not usable:
        return f"verifies none of the pinned algorithms ({', '.join(sorted(possible))})"
    return usable


def _prepared(jwk: Mapping[str, Any], kty: str, usable: frozenset[str]) -> dict[str, PyJWK] | str:
    """One pyjwt key per usable algorithm, checked now rather than per request; or why not."""
    by_algorithm: dict[str, PyJWK] = {}
    try:
        for alg in sorted(usable):
            pyjwk = PyJWK(dict(jwk), algorithm=alg)
            # Type and curve checks happen in prepare_key; run them now, not per request.
            pyjwk.Algorithm.prepare_key(pyjwk.key)
            by_algorithm[alg] = pyjwk
    except (PyJWTError, ValueError, TypeError) as exc:
        return f"not a valid {kty} key ({type(exc).__name__})"
    return by_algorithm


def build_key_set(data: Any, algorithms: Iterable[str], *, source: str) -> KeySet:
    """A key set from a parsed JWKS (``{"keys": [...]}``) or a single JWK; unusable keys are skipped.

    Raises :class:`KeySetError` when nothing usable is left, so a caller keeps its last good set.
    """
    pinned = frozenset(algorithms) & SUPPORTED_ALGORITHMS
    if isinstance(data, dict) and "keys" not in data and "kty" in data:
        data = {"keys": [data]}
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise KeySetError(f"{source}: not a JWK set (an object with a 'keys' list)")
    items: list[Any] = data["keys"]
    if len(items) > MAX_KEYS:
        raise KeySetError(f"{source}: {len(items)} keys is more than {MAX_KEYS}")
    keys: list[VerificationKey] = []
    skipped: list[str] = []
    for index, item in enumerate(items):
        label = f"key[{index}]"
        if isinstance(item, dict) and isinstance(item.get("kid"), str):
            label += f" (kid {item['kid'][:64]!r})"
        if not isinstance(item, dict):
            skipped.append(f"{label}: not an object")
            continue
        key, why = _verification_key(item, pinned)
        if key is None:
            skipped.append(f"{label}: {why}")
        else:
            keys.append(key)
    if not keys:
        detail = "; ".join(skipped) if skipped else "the set is empty"
        raise KeySetError(f"{source}: no usable verification key ({detail})")
    return KeySet(tuple(keys), source, tuple(skipped))


def _public_jwk(key: object) -> dict[str, Any]:
    """The public JWK of a key read from PEM; raises :class:`KeySetError` for one JOSE cannot name."""
    try:
        if isinstance(key, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(key, as_dict=True)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            jwk = ECAlgorithm.to_jwk(key, as_dict=True)
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            jwk = OKPAlgorithm.to_jwk(key, as_dict=True)
        else:
            raise KeySetError(f"unsupported public key type {type(key).__name__}")
    except PyJWTError:  # InvalidKeyError is no ValueError: P-192, brainpool and other curves
        curve = key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else "?"
        raise KeySetError(f"unsupported curve {curve!r} for EC") from None
    jwk.pop("key_ops", None)
    return dict(jwk)


def pem_to_jwks(text: bytes, *, source: str) -> dict[str, Any]:
    """A JWKS (without kids) from PEM public keys and certificates; private keys are refused."""
    jwks: list[dict[str, Any]] = []
    for match in _PEM_BLOCK.finditer(text):
        label = match.group(1).decode("ascii")
        block = match.group(0)
        public: object
        try:
            if label == "CERTIFICATE":
                public = x509.load_pem_x509_certificate(block).public_key()
            elif label == "PUBLIC KEY":
                public = load_pem_public_key(block)
            elif "PRIVATE" in label:
                raise KeySetError(f"{source}: holds a private key; give the public key only")
            else:
                raise KeySetError(f"{source}: PEM block {label!r} is not a public key")
        except KeySetError:
            raise
        except (ValueError, UnsupportedAlgorithm):  # the latter: a key type cryptography lacks
            raise KeySetError(f"{source}: PEM block {label!r} cannot be read") from None
        try:
            jwks.append(_public_jwk(public))
        except KeySetError as exc:
            raise KeySetError(f"{source}: PEM block {label!r}: {exc}") from None
    if not jwks:
        raise KeySetError(f"{source}: no PEM public key or certificate found")
    return {"keys": jwks}


def parse_key_file(raw: bytes, algorithms: Sequence[str], *, source: str) -> KeySet:
    """A key set from a key file's bytes: a JWKS (or one JWK) as JSON, or PEM keys/certificates."""
    if raw.lstrip().startswith(b"{"):
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise KeySetError(f"{source}: not valid JSON") from None
        return build_key_set(data, algorithms, source=source)
    return build_key_set(pem_to_jwks(raw, source=source), algorithms, source=source)
