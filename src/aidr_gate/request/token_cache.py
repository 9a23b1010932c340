"""What the authenticator remembers between requests, by token digest: verified and refused tokens.

Both are bounded dicts keyed by the SHA-256 of the token (never the token), evicting oldest first,
and kept apart: a flood of forged tokens repeated costs a lookup each, and can never push a verified
caller out of its cache. Evicting tolerates a concurrent writer (``authenticate_sync`` in threads).
"""

from __future__ import annotations

import math
from typing import TypeVar

from msgspec.structs import replace

from aidr_gate.errors import (
    IdentityError,
    TokenAlgorithmNotAllowed,
    TokenAudienceInvalid,
    TokenClaimInvalid,
    TokenClaimMissing,
    TokenExpired,
    TokenIssuerInvalid,
    TokenKeyUnknown,
    TokenMalformed,
    TokenSignatureInvalid,
)
from aidr_gate.facts import Identity

__all__ = ["RefusedTokens", "VerifiedTokens"]

# Refusals that a later attempt with the same keys would repeat, and so may be remembered: each cost
# a parse and usually a signature check. Not remembered: a token whose time has not come yet
# (TokenNotYetValid), keys not loaded, an internal error. An unknown kid is remembered only until a
# refetch may bring the key (``unknown_kid_interval``).
SETTLED: frozenset[type[IdentityError]] = frozenset(
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


_V = TypeVar("_V")


def _make_room(entries: dict[bytes, _V], size: int) -> None:
    while len(entries) >= size:
        try:  # oldest first
            del entries[next(iter(entries))]
        except (KeyError, RuntimeError, StopIteration):
            break


class VerifiedTokens:
    """Identities of verified tokens, each with its ``exp`` and the thumbprint of its key."""

    __slots__ = ("_entries", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: dict[bytes, tuple[Identity, float, str]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes, now: float) -> Identity | None:
        """The cached identity of this token, never past its ``exp`` whatever the leeway."""
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if now < entry[1]:
            return entry[0]
        self._entries.pop(digest, None)
        return None

    def put(self, digest: bytes, identity: Identity, thumbprint: str) -> None:
        """Remember a verified identity (marked ``cached``); one without ``exp`` is not kept."""
        expires_at = identity.expires_at
        if self.size <= 0 or expires_at is None:
            return
        _make_room(self._entries, self.size)
        self._entries[digest] = (replace(identity, cached=True), expires_at, thumbprint)

    def forget_keys(self, thumbprints: frozenset[str] | set[str]) -> None:
        """Drop the identities verified with these keys: they are verified again on next use."""
        entries = self._entries
        for digest in [d for d, e in list(entries.items()) if e[2] in thumbprints]:
            entries.pop(digest, None)

    def clear(self) -> None:
        """Forget every identity."""
        self._entries.clear()


class RefusedTokens:
    """Refusals worth repeating without the work: the error's class and message, and until when."""

    __slots__ = ("_entries", "size", "unknown_kid_interval")

    def __init__(self, size: int, unknown_kid_interval: float) -> None:
        self.size = size
        self.unknown_kid_interval = unknown_kid_interval
        self._entries: dict[bytes, tuple[type[IdentityError], str, float]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def raise_if_refused(self, digest: bytes, now: float) -> None:
        """Raise the remembered refusal of this token again, as a new error (no traceback piles
        up on a shared one)."""
        refusal = self._entries.get(digest)
        if refusal is None:
            return
        kind, message, until = refusal
        if now < until:
            raise kind(message)
        self._entries.pop(digest, None)

    def remember(self, digest: bytes, error: IdentityError, now: float) -> None:
        """Remember a refusal a retry with the same keys would repeat; forget others."""
        kind = type(error)
        if kind in SETTLED:
            until = math.inf
        elif kind is TokenKeyUnknown:
            until = now + self.unknown_kid_interval
        else:
            return
        if self.size <= 0:
            return
        _make_room(self._entries, self.size)
        self._entries[digest] = (kind, str(error), until)

    def clear(self) -> None:
        """Forget every refusal (a new key set may verify a token refused before)."""
        self._entries.clear()
