"""Who calls: a bearer JWT verified against pinned algorithms and issuer keys, mapped to an Identity.

The hot path: a token seen before costs a SHA-256 of its bytes and a dictionary lookup (the cache holds
the resulting :class:`~aidr_gate.facts.Identity`, never the token, and never serves it past ``exp``).
A new token is parsed here and its signature checked with pyjwt's algorithm objects bound to each key
(see :mod:`aidr_gate.request.keys`); the claims are checked here, against the caller's clock, so ``now`` can
be given. Every failure raises one :class:`~aidr_gate.errors.IdentityError` subclass with its own
reason code; nothing else escapes :meth:`Authenticator.authenticate`.

Why not ``jwt.decode``: it re-parses the token, checks the base64 alphabet one byte at a time in
Python (most of its ~80 µs overhead), reads the wall clock itself and maps several distinct failures
onto one exception. What it does for security is done here too and tested against it: the
algorithm comes from configuration and from the key record, never from the token alone; ``none``,
``HS*`` and unknown ``crit`` extensions are refused; the base64url must be canonical.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from msgspec.structs import replace

from aidr_gate.countries import normalize_country
from aidr_gate.errors import (
    ConfigError,
    IdentityError,
    Problem,
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
from aidr_gate.request.headers import single_header_value
from aidr_gate.request.jwks import FileKeys, KeyProvider, RemoteJwks, on_event_loop
from aidr_gate.request.keys import KeySet, KeySetError, VerificationKey, valid_kid
from aidr_gate.settings.identity import SECTION, IdentityConfig

logger = logging.getLogger("aidr_gate.identity")

MAX_ENTITY_LENGTH = 256
# A token naming an unknown kid may match several unnamed keys (PEM files); bound the work it costs.
MAX_KEYS_TRIED = 4


# --- the Authorization header ------------------------------------------------------------------


def bearer_token(authorization: bytes | str | None, max_length: int) -> bytes:
    """The token of a ``Bearer`` Authorization header value, as ASCII bytes; raises on anything else."""
    if authorization is None:
        raise TokenMissing("no Authorization header")
    if isinstance(authorization, bytes):  # first: what ASGI servers hand over
        raw = authorization
        if len(raw) > max_length + 64:
            raise TokenMalformed("Authorization header is too long")
        if not raw.isascii():
            raise TokenMalformed("Authorization header is not ASCII")
    elif isinstance(authorization, str):
        if len(authorization) > max_length + 64:
            raise TokenMalformed("Authorization header is too long")
        try:
            raw = authorization.encode("ascii")
        except UnicodeEncodeError:
            raise TokenMalformed("Authorization header is not ASCII") from None
    else:
        raise TokenMalformed("Authorization header is not text")
    scheme, _, rest = raw.partition(b" ")
    if scheme != b"Bearer" and scheme.lower() != b"bearer":
        raise TokenMalformed("Authorization scheme is not Bearer")
    token = rest.strip(b" ")
    if not token:
        raise TokenMalformed("bearer token is empty")
    if len(token) > max_length:
        raise TokenMalformed("bearer token is longer than the configured maximum")
    return token


def authorization_header(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The one Authorization value of ASGI headers; two of them is ambiguous and refused."""
    return single_header_value(headers, b"authorization", TokenMalformed)


# --- claims ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClaimPath:
    """A claim name, or a dotted path into nested claims (``org.id``); an exact top-level name wins."""

    name: str

    def get(self, payload: Mapping[str, Any]) -> Any:
        """The claim's value, or None when absent."""
        if self.name in payload:
            return payload[self.name]
        node: Any = payload
        for part in self.name.split("."):
            if not isinstance(node, dict):
                return None
            node = node.get(part)
        return node


def _number(payload: Mapping[str, Any], name: str) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenClaimInvalid(f"{name} is not a number")
    try:
        number = float(value)
    except OverflowError:
        raise TokenClaimInvalid(f"{name} is out of range") from None
    if not math.isfinite(number):
        raise TokenClaimInvalid(f"{name} is not a finite number")
    return number


class _Parsed:
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


def parse_token(token: bytes, algorithms: frozenset[str]) -> _Parsed:
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
    return _Parsed(alg, kid, signing_input, payload_b64, signature_b64)


_sha256 = hashlib.sha256


@contextmanager
def _fail_closed() -> Iterator[None]:
    """Let IdentityError through; turn anything else (a bug) into a refusal, never a crash."""
    try:
        yield
    except IdentityError:
        raise
    except Exception as exc:
        logger.error("token verification failed unexpectedly: %s", type(exc).__name__)
        raise IdentityError("internal error while verifying the token") from None


_Entry = tuple[Identity, float, str]  # the cached identity, its exp, the verifying key's thumbprint
# A refused token: the error's class and message, and until when the refusal is remembered.
_Refusal = tuple[type[IdentityError], str, float]
# Refusals that a later attempt with the same keys would repeat, and so may be remembered: each cost
# a parse and usually a signature check. Not remembered: a token whose time has not come yet
# (TokenNotYetValid), keys not loaded, an internal error. An unknown kid is remembered only until a
# refetch may bring the key (``unknown_kid_interval``).
_SETTLED: frozenset[type[IdentityError]] = frozenset(
    {
        TokenMalformed,
        TokenAlgorithmNotAllowed,
        TokenSignatureInvalid,
        TokenExpired,
        TokenIssuerInvalid,
        TokenAudienceInvalid,
        TokenClaimMissing,
        TokenClaimInvalid,
    }
)


class Authenticator:
    """Verifies bearer tokens into :class:`Identity` values, with a bounded cache of verified tokens.

    Use ``await start()`` before serving (loads keys, starts background refresh) and
    ``await close()`` after; or ``async with Authenticator(...)``. Safe to share across tasks.
    """

    def __init__(
        self,
        config: IdentityConfig,
        *,
        keys: KeyProvider | None = None,
        clock: Callable[[], float] = time.time,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.config = config
        self._keys = keys if keys is not None else key_provider(config, session=session)
        self._clock = clock
        self._algorithms = frozenset(config.algorithms)
        self._issuers = frozenset(config.issuers)
        self._audiences = frozenset(config.audiences)
        self._leeway = config.leeway
        self._max_length = config.max_token_length
        self._cache_size = config.cache_size
        self._cache: dict[bytes, _Entry] = {}
        # Refused tokens, by digest, bounded apart from the verified ones: a flood of forged tokens
        # repeated costs a lookup each, and can never push a verified caller out of its cache.
        self._refused: dict[bytes, _Refusal] = {}
        self._entity = ClaimPath(config.entity_claim)
        self._required = tuple(ClaimPath(c) for c in config.required_claims)
        self._hq = ClaimPath(config.headquarters_claim) if config.headquarters_claim else None
        self._parent = ClaimPath(config.parent_claim) if config.parent_claim else None
        self._keys.add_listener(self._keys_changed)

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def keys(self) -> KeyProvider:
        """Where the verification keys come from."""
        return self._keys

    @property
    def ready(self) -> bool:
        """True once a key set has loaded (for ``/readyz``)."""
        return self._keys.current is not None

    @property
    def cached_tokens(self) -> int:
        """How many verified tokens the cache holds now."""
        return len(self._cache)

    async def start(self) -> None:
        """Load the keys and start background refresh; a bad key file is a :class:`ConfigError`."""
        try:
            await self._keys.start()
        except KeySetError as exc:  # from a key file: a startup error, named
            raise ConfigError(Problem(self.config.file, "identity.key_file", str(exc))) from None

    async def close(self) -> None:
        """Stop background refresh and forget cached identities."""
        await self._keys.close()
        self._cache.clear()
        self._refused.clear()

    async def __aenter__(self) -> Authenticator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _keys_changed(self, old: KeySet | None, new: KeySet) -> None:
        # A new key set may verify a token refused before: refusals are forgotten.
        self._refused.clear()
        # Identities verified with a key that was rotated out are verified again on next use.
        if old is None:
            return
        gone = old.thumbprints - new.thumbprints
        if gone:
            for digest in [d for d, e in list(self._cache.items()) if e[2] in gone]:
                self._cache.pop(digest, None)

    # -- the hot path ----------------------------------------------------------------------------

    async def authenticate(
        self, authorization: bytes | str | None, *, now: float | None = None
    ) -> Identity:
        """The verified identity behind an Authorization header value; raises IdentityError.

        A cached token returns without suspending; a new one costs one signature check, and an
        unknown kid may wait for the (shared, rate-limited) JWKS refetch.
        """
        token = bearer_token(authorization, self._max_length)
        when = self._clock() if now is None else now
        digest = _sha256(token).digest()
        cached = self._cached(digest, when)
        if cached is not None:
            return cached
        self._raise_if_refused(digest, when)
        try:
            return await self._authenticate(token, digest, when)
        except IdentityError as exc:
            self._remember_refusal(digest, exc, when)
            raise

    async def _authenticate(self, token: bytes, digest: bytes, when: float) -> Identity:
        with _fail_closed():
            parsed = parse_token(token, self._algorithms)
            key_set = self._keys.current
            if key_set is None:
                # Never loaded (the issuer was down at start): try now, rate limited.
                await self._keys.refetch_for_unknown_kid()
                key_set = self._keys.current
                if key_set is None:
                    raise TokenKeysUnavailable("no verification keys loaded")
            keys = self._select(parsed, key_set)
            if keys is None:
                if await self._keys.refetch_for_unknown_kid():
                    key_set = self._keys.current or key_set
                    keys = self._select(parsed, key_set)
                if keys is None:
                    keys = self._unnamed(parsed, key_set)
            return self._verify(parsed, keys, digest, when)

    def authenticate_sync(
        self, authorization: bytes | str | None, *, now: float | None = None
    ) -> Identity:
        """Like :meth:`authenticate`, without an event loop (CLI).

        When no keys are loaded yet, loads them once, blocking (the key file, or one JWKS fetch);
        inside a running event loop it never does I/O and refuses with TokenKeysUnavailable instead.
        An unknown kid does not trigger a refetch here.
        """
        token = bearer_token(authorization, self._max_length)
        when = self._clock() if now is None else now
        digest = _sha256(token).digest()
        cached = self._cached(digest, when)
        if cached is not None:
            return cached
        self._raise_if_refused(digest, when)
        try:
            with _fail_closed():
                parsed = parse_token(token, self._algorithms)
                key_set = self._keys.current or self._load_blocking()
                keys = self._select(parsed, key_set)
                if keys is None:
                    keys = self._unnamed(parsed, key_set)
                return self._verify(parsed, keys, digest, when)
        except IdentityError as exc:
            self._remember_refusal(digest, exc, when)
            raise

    @property
    def refused_tokens(self) -> int:
        """How many refused tokens the cache remembers now."""
        return len(self._refused)

    def _raise_if_refused(self, digest: bytes, now: float) -> None:
        """Raise the remembered refusal of this token again, as a new error (no traceback piles
        up on a shared one)."""
        refusal = self._refused.get(digest)
        if refusal is None:
            return
        kind, message, until = refusal
        if now < until:
            raise kind(message)
        self._refused.pop(digest, None)

    def _remember_refusal(self, digest: bytes, error: IdentityError, now: float) -> None:
        kind = type(error)
        if kind in _SETTLED:
            until = math.inf
        elif kind is TokenKeyUnknown:
            until = now + self.config.unknown_kid_interval
        else:
            return
        if self._cache_size <= 0:
            return
        refused = self._refused
        while len(refused) >= self._cache_size:
            try:  # oldest first
                del refused[next(iter(refused))]
            except (KeyError, RuntimeError, StopIteration):
                break
        refused[digest] = (kind, str(error), until)

    def _cached(self, digest: bytes, now: float) -> Identity | None:
        entry = self._cache.get(digest)
        if entry is None:
            return None
        if now < entry[1]:  # never past exp, whatever the leeway
            return entry[0]
        self._cache.pop(digest, None)
        return None

    def _load_blocking(self) -> KeySet:
        if on_event_loop():
            raise TokenKeysUnavailable("no keys loaded; not loading them on a running event loop")
        try:
            return self._keys.load_sync()
        except KeySetError as exc:  # FetchError included
            logger.warning("verification keys could not be loaded: %s", exc)
            raise TokenKeysUnavailable(str(exc)) from None

    # -- verification ----------------------------------------------------------------------------

    def _select(self, parsed: _Parsed, key_set: KeySet) -> tuple[VerificationKey, ...] | None:
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

    def _unnamed(self, parsed: _Parsed, key_set: KeySet) -> tuple[VerificationKey, ...]:
        unnamed = key_set.unnamed(parsed.alg)
        if not unnamed:
            raise TokenKeyUnknown("no key has the token's kid")
        return unnamed

    def _verify(
        self,
        parsed: _Parsed,
        keys: tuple[VerificationKey, ...],
        digest: bytes,
        now: float,
    ) -> Identity:
        signature = _b64(parsed.signature, "signature")
        alg = parsed.alg
        verified: VerificationKey | None = None
        for key in keys[:MAX_KEYS_TRIED]:
            jwk = key.by_algorithm[alg]
            try:
                ok = jwk.Algorithm.verify(parsed.signing_input, jwk.key, signature)
            except Exception:  # a malformed signature the library did not expect: not valid
                ok = False
            if ok:
                verified = key
                break
        if verified is None:
            raise TokenSignatureInvalid("signature does not verify")
        try:
            payload = json.loads(_b64(parsed.payload, "payload"))
        except (ValueError, RecursionError):
            raise TokenMalformed("payload is not JSON") from None
        if not isinstance(payload, dict):
            raise TokenMalformed("payload is not a JSON object")
        identity = self._identity(payload, alg, verified, now)
        if self._cache_size > 0 and identity.expires_at is not None:
            cache = self._cache
            while len(cache) >= self._cache_size:
                try:  # oldest first; tolerate a concurrent writer (authenticate_sync in threads)
                    del cache[next(iter(cache))]
                except (KeyError, RuntimeError, StopIteration):
                    break
            cache[digest] = (
                replace(identity, cached=True),
                identity.expires_at,
                verified.thumbprint,
            )
        return identity

    def _identity(
        self, payload: dict[str, Any], alg: str, key: VerificationKey, now: float
    ) -> Identity:
        leeway = self._leeway
        exp = _number(payload, "exp")
        if exp is None:
            raise TokenClaimMissing("exp is missing")
        if exp <= now - leeway:
            raise TokenExpired("exp is in the past")
        nbf = _number(payload, "nbf")
        if nbf is not None and nbf > now + leeway:
            raise TokenNotYetValid("nbf is in the future")
        iat = _number(payload, "iat")
        if iat is not None and iat > now + leeway:
            raise TokenNotYetValid("iat is in the future")
        iss = payload.get("iss")
        if iss is None or iss == "":
            raise TokenClaimMissing("iss is missing")
        if not isinstance(iss, str) or iss not in self._issuers:
            raise TokenIssuerInvalid("iss is not the configured issuer")
        aud = payload.get("aud")
        if aud is None or aud == "" or aud == []:
            raise TokenClaimMissing("aud is missing")
        if isinstance(aud, str):
            if aud not in self._audiences:
                raise TokenAudienceInvalid("aud does not name this audience")
        elif not isinstance(aud, list) or not all(isinstance(a, str) for a in aud):
            raise TokenAudienceInvalid("aud is neither a string nor a list of strings")
        elif self._audiences.isdisjoint(aud):
            raise TokenAudienceInvalid("aud does not name this audience")
        for claim in self._required:
            value = claim.get(payload)
            if value is None or value == "":
                raise TokenClaimMissing(f"required claim {claim.name} is missing")
        sub = payload.get("sub")
        if sub is not None and not isinstance(sub, str):
            raise TokenClaimInvalid("sub is not a string")
        entity = self._entity.get(payload)
        if entity is None or entity == "":
            raise TokenClaimMissing(f"entity claim {self._entity.name} is missing")
        if (
            not isinstance(entity, str)
            or len(entity) > MAX_ENTITY_LENGTH
            or not entity.isprintable()
        ):
            raise TokenClaimInvalid(f"entity claim {self._entity.name} is not a short string")
        return Identity(
            entity_id=entity,
            subject=sub,
            issuer=iss,
            key_id=key.key_id,
            algorithm=alg,
            expires_at=exp,
            claimed_headquarters=_country(self._hq, payload),
            claimed_parent=_country(self._parent, payload),
            method="jwt",
        )


def _country(path: ClaimPath | None, payload: Mapping[str, Any]) -> str | None:
    if path is None:
        return None
    value = path.get(payload)
    if value is None:
        return None
    code = normalize_country(value)
    if code is None:
        raise TokenClaimInvalid(f"{path.name} is not an ISO 3166-1 alpha-2 country code")
    return code


def key_provider(
    config: IdentityConfig, *, session: aiohttp.ClientSession | None = None
) -> KeyProvider:
    """The key source the configuration names: a JWKS URL or a key file."""
    if config.jwks_url is not None:
        return RemoteJwks(
            config.jwks_url,
            config.algorithms,
            refresh_min=config.refresh_min,
            refresh_max=config.refresh_max,
            unknown_kid_interval=config.unknown_kid_interval,
            timeout=config.http_timeout,
            max_bytes=config.max_jwks_bytes,
            session=session,
        )
    if config.key_file is not None:
        return FileKeys(config.key_file, config.algorithms, reload_interval=config.reload_interval)
    raise ConfigError.single(config.file, SECTION, "give exactly one of jwks_url and key_file")
