"""Who calls: a bearer JWT verified against pinned algorithms and issuer keys, mapped to an Identity.

The hot path: a token seen before costs a SHA-256 of its bytes and a dictionary lookup (the cache holds
the resulting :class:`~aidr_gate.facts.Identity`, never the token, and never serves it past ``exp``);
a token refused before costs the same, and raises its refusal again
(:mod:`aidr_gate.request.token_cache`). A new token is parsed and its signature checked with pyjwt's
algorithm objects bound to each key (:mod:`aidr_gate.request.jws`, keys from
:mod:`aidr_gate.request.keys`); then its claims are read (:mod:`aidr_gate.request.claims`) against the
caller's clock, so ``now`` can be given. Every failure raises one
:class:`~aidr_gate.errors.IdentityError` subclass with its own reason code; nothing else escapes
:meth:`Authenticator.authenticate`.

Why not ``jwt.decode``: it re-parses the token, checks the base64 alphabet one byte at a time in
Python (most of its ~80 µs overhead), reads the wall clock itself and maps several distinct failures
onto one exception. What it does for security is done in :mod:`aidr_gate.request.jws`, and tested
against it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import aiohttp

from aidr_gate.errors import (
    ConfigError,
    IdentityError,
    Problem,
    TokenKeysUnavailable,
    TokenMalformed,
    TokenMissing,
)
from aidr_gate.facts import Identity
from aidr_gate.request.claims import ClaimRules
from aidr_gate.request.headers import single_header_value
from aidr_gate.request.jwks import FileKeys, KeyProvider, RemoteJwks, on_event_loop
from aidr_gate.request.jws import (
    ParsedToken,
    named_keys,
    parse_token,
    payload_of,
    unnamed_keys,
    verifying_key,
)
from aidr_gate.request.keys import KeySet, KeySetError, VerificationKey
from aidr_gate.request.token_cache import RefusedTokens, VerifiedTokens
from aidr_gate.settings.identity import SECTION, IdentityConfig

logger = logging.getLogger("aidr_gate.identity")


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
        self._max_length = config.max_token_length
        self._claims = ClaimRules(config)
        self._verified = VerifiedTokens(config.cache_size)
        self._refused = RefusedTokens(config.cache_size, config.unknown_kid_interval)
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
        return len(self._verified)

    @property
    def refused_tokens(self) -> int:
        """How many refused tokens the cache remembers now."""
        return len(self._refused)

    async def start(self) -> None:
        """Load the keys and start background refresh; a bad key file is a :class:`ConfigError`."""
        try:
            await self._keys.start()
        except KeySetError as exc:  # from a key file: a startup error, named
            raise ConfigError(Problem(self.config.file, "identity.key_file", str(exc))) from None

    async def close(self) -> None:
        """Stop background refresh and forget cached identities."""
        await self._keys.close()
        self._verified.clear()
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
        if old is not None:
            gone = old.thumbprints - new.thumbprints
            if gone:
                self._verified.forget_keys(gone)

    # -- the hot path ----------------------------------------------------------------------------

    async def authenticate(
        self, authorization: bytes | str | None, *, now: float | None = None
    ) -> Identity:
        """The verified identity behind an Authorization header value; raises IdentityError.

        A cached token returns without suspending; a new one costs one signature check, and an
        unknown kid may wait for the (shared, rate-limited) JWKS refetch.
        """
        token, digest, when, cached = self._seen(authorization, now)
        if cached is not None:
            return cached
        try:
            return await self._authenticate(token, digest, when)
        except IdentityError as exc:
            self._refused.remember(digest, exc, when)
            raise

    def known(
        self, authorization: bytes | str | None, *, now: float | None = None
    ) -> Identity | None:
        """The identity of a token verified before (a cache hit), without a coroutine: the
        request path tries this first and awaits :meth:`authenticate` only for a new token
        (``None``). Raises IdentityError as :meth:`authenticate` would for a malformed header or
        a token refused before."""
        return self._seen(authorization, now)[3]

    def _seen(
        self, authorization: bytes | str | None, now: float | None
    ) -> tuple[bytes, bytes, float, Identity | None]:
        """The token, its digest, the time, and its cached identity (raising a remembered
        refusal)."""
        token = bearer_token(authorization, self._max_length)
        when = self._clock() if now is None else now
        digest = _sha256(token).digest()
        cached = self._verified.get(digest, when)
        if cached is None:
            self._refused.raise_if_refused(digest, when)
        return token, digest, when, cached

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
            keys = named_keys(parsed, key_set)
            if keys is None:
                if await self._keys.refetch_for_unknown_kid():
                    key_set = self._keys.current or key_set
                    keys = named_keys(parsed, key_set)
                if keys is None:
                    keys = unnamed_keys(parsed, key_set)
            return self._verify(parsed, keys, digest, when)

    def authenticate_sync(
        self, authorization: bytes | str | None, *, now: float | None = None
    ) -> Identity:
        """Like :meth:`authenticate`, without an event loop (CLI).

        When no keys are loaded yet, loads them once, blocking (the key file, or one JWKS fetch);
        inside a running event loop it never does I/O and refuses with TokenKeysUnavailable instead.
        An unknown kid does not trigger a refetch here.
        """
        token, digest, when, cached = self._seen(authorization, now)
        if cached is not None:
            return cached
        try:
            with _fail_closed():
                parsed = parse_token(token, self._algorithms)
                key_set = self._keys.current or self._load_blocking()
                keys = named_keys(parsed, key_set)
                if keys is None:
                    keys = unnamed_keys(parsed, key_set)
                return self._verify(parsed, keys, digest, when)
        except IdentityError as exc:
            self._refused.remember(digest, exc, when)
            raise

    def _load_blocking(self) -> KeySet:
        if on_event_loop():
            raise TokenKeysUnavailable("no keys loaded; not loading them on a running event loop")
        try:
            return self._keys.load_sync()
        except KeySetError as exc:  # FetchError included
            logger.warning("verification keys could not be loaded: %s", exc)
            raise TokenKeysUnavailable(str(exc)) from None

    def _verify(
        self,
        parsed: ParsedToken,
        keys: tuple[VerificationKey, ...],
        digest: bytes,
        now: float,
    ) -> Identity:
        """Signature, then claims; the identity is cached under the token's digest."""
        key = verifying_key(parsed, keys)
        identity = self._claims.identity(payload_of(parsed), parsed.alg, key.key_id, now)
        self._verified.put(digest, identity, key.thumbprint)
        return identity


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
