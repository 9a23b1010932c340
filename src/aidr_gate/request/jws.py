"""A compact JWS: split, its header checked, the keys to try chosen, its signature verified.

What ``jwt.decode`` does for security is done here (and tested against it): the algorithm comes from
configuration and from the key record, never from the token alone; ``none``, ``HS*`` and unknown
``crit`` extensions are refused; the base64url must be canonical. Claims are read apart, by
:mod:`aidr_gate.request.claims`, once the signature holds.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from aidr_gate.errors import (
    TokenAlgorithmNotAllowed,
    TokenKeyUnknown,
    TokenMalformed,
    TokenSignatureInvalid,
)
from aidr_gate.request.keys import KeySet, VerificationKey, valid_kid

__all__ = [
    "MAX_KEYS_TRIED",
    "ParsedToken",
    "named_keys",
    "parse_token",
    "payload_of",
    "unnamed_keys",
    "verifying_key",
]

# A token naming an unknown kid may match several unnamed keys (PEM files); bound the work it costs.
MAX_KEYS_TRIED = 4


class ParsedToken:
    """A token split and its header read, before any key is chosen."""

    __slots__ = ("alg", "kid", "payload", "signature", "signing_input")

    def __init__(
        self, alg: str, kid: str | None, signing_input: bytes, payload: bytes, signature: bytes
    ) -> None:
        self.alg = alg
        self.kid = kid
        self.signing_input = signing_input
        self.payload = payload
        self.signature = signature


_JWS = re.compile(rb"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)")


def _b64(segment: bytes, what: str) -> bytes:
    # Canonical base64url without padding only: one text per byte string, as RFC 7515 writes it.
    try:
        if len(segment) % 4 == 1:
            raise ValueError
        decoded = base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))
    except (ValueError, binascii.Error):
        raise TokenMalformed(f"{what} is not base64url") from None
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != segment:
        raise TokenMalformed(f"{what} is not canonical base64url")
    return decoded


def parse_token(token: bytes, algorithms: frozenset[str]) -> ParsedToken:
    """Split a compact JWS and check its header: algorithm pinned, no ``crit``, a string ``kid``."""
    match = _JWS.fullmatch(token)
    if match is None:
        raise TokenMalformed("not three base64url segments")
    header_b64, payload_b64, signature_b64 = match.groups()
    try:
        header = json.loads(_b64(header_b64, "header"))
    except (ValueError, RecursionError):
        raise TokenMalformed("header is not JSON") from None
    if not isinstance(header, dict):
        raise TokenMalformed("header is not a JSON object")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms:
        raise TokenAlgorithmNotAllowed("alg is not one of the pinned algorithms")
    # No JWS extension is understood here, so any critical one (b64=false among them) is refused.
    if "crit" in header or "b64" in header:
        raise TokenMalformed("critical header extensions are not supported")
    kid = header.get("kid")
    if kid is not None and not valid_kid(kid):
        raise TokenMalformed("kid is not a short non-empty string")
    signing_input = token[: len(header_b64) + 1 + len(payload_b64)]
    return ParsedToken(alg, kid, signing_input, payload_b64, signature_b64)


def named_keys(parsed: ParsedToken, key_set: KeySet) -> tuple[VerificationKey, ...] | None:
    """The keys to try, or None when the token's kid is unknown (a refetch may help)."""
    alg = parsed.alg
    if parsed.kid is not None:
        named = key_set.named(parsed.kid)
        if named is None:
            return None
        usable = tuple(k for k in named if alg in k.by_algorithm)
        if not usable:
            # The kid names a key of another type or bound to another alg: confusion attempt.
            raise TokenAlgorithmNotAllowed("the key named by kid does not verify this alg")
        return usable
    unnamed = key_set.unnamed(alg)
    if unnamed:
        return unnamed
    only = key_set.only(alg)
    if only is not None:
        return (only,)
    raise TokenKeyUnknown("the token names no kid and no single key fits its alg")


def unnamed_keys(parsed: ParsedToken, key_set: KeySet) -> tuple[VerificationKey, ...]:
    """The keys without a kid that fit the token's alg: the last resort for an unknown kid."""
    unnamed = key_set.unnamed(parsed.alg)
    if not unnamed:
        raise TokenKeyUnknown("no key has the token's kid")
    return unnamed


def verifying_key(parsed: ParsedToken, keys: tuple[VerificationKey, ...]) -> VerificationKey:
    """The first of (at most :data:`MAX_KEYS_TRIED`) *keys* the signature verifies with."""
    signature = _b64(parsed.signature, "signature")
    alg = parsed.alg
    for key in keys[:MAX_KEYS_TRIED]:
        jwk = key.by_algorithm[alg]
        try:
            ok = jwk.Algorithm.verify(parsed.signing_input, jwk.key, signature)
        except Exception:  # a malformed signature the library did not expect: not valid
            ok = False
        if ok:
            return key
    raise TokenSignatureInvalid("signature does not verify")


def payload_of(parsed: ParsedToken) -> dict[str, Any]:
    """The claims of a token whose signature holds, as a JSON object."""
    try:
        payload = json.loads(_b64(parsed.payload, "payload"))
    except (ValueError, RecursionError):
        raise TokenMalformed("payload is not JSON") from None
    if not isinstance(payload, dict):
        raise TokenMalformed("payload is not a JSON object")
    return payload
