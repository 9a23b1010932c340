"""The authenticator's memory of tokens: bounded, oldest out first, refusals only when settled."""

from __future__ import annotations

import math

import pytest

from aidr_gate.bounded import store_bounded
from aidr_gate.errors import (
    IdentityError,
    TokenKeysUnavailable,
    TokenKeyUnknown,
    TokenNotYetValid,
    TokenSignatureInvalid,
)
from aidr_gate.facts import Identity
from aidr_gate.request.token_cache import SETTLED, RefusedTokens, VerifiedTokens


def _digest(n: int) -> bytes:
    return n.to_bytes(32, "big")


def test_a_verified_token_is_served_until_its_exp_and_marked_cached() -> None:
    cache = VerifiedTokens(4)
    cache.put(_digest(1), Identity("acme", expires_at=100.0), "thumb-a")
    hit = cache.get(_digest(1), 99.9)
    assert hit is not None
    assert (hit.entity_id, hit.cached) == ("acme", True)
    assert cache.get(_digest(1), 100.0) is None  # never past exp
    assert len(cache) == 0  # and the expired entry is gone


def test_verified_tokens_are_bounded_oldest_out_first() -> None:
    cache = VerifiedTokens(3)
    for n in range(5):
        cache.put(_digest(n), Identity(f"e{n}", expires_at=math.inf), "thumb")
    assert len(cache) == 3
    assert [cache.get(_digest(n), 0.0) is not None for n in range(5)] == [
        False,
        False,
        True,
        True,
        True,
    ]


def test_nothing_is_kept_without_exp_or_room() -> None:
    cache = VerifiedTokens(4)
    cache.put(_digest(1), Identity("acme"), "thumb")
    off = VerifiedTokens(0)
    off.put(_digest(1), Identity("acme", expires_at=100.0), "thumb")
    assert (len(cache), len(off)) == (0, 0)


def test_identities_of_a_rotated_key_are_forgotten() -> None:
    cache = VerifiedTokens(4)
    cache.put(_digest(1), Identity("a", expires_at=100.0), "old")
    cache.put(_digest(2), Identity("b", expires_at=100.0), "kept")
    cache.forget_keys({"old"})
    assert cache.get(_digest(1), 0.0) is None
    assert cache.get(_digest(2), 0.0) is not None


def test_a_settled_refusal_is_raised_again_as_a_new_error() -> None:
    refused = RefusedTokens(4, unknown_kid_interval=30.0)
    first = TokenSignatureInvalid("signature does not verify")
    refused.remember(_digest(1), first, 0.0)
    with pytest.raises(TokenSignatureInvalid, match="signature does not verify") as again:
        refused.raise_if_refused(_digest(1), 1e9)
    assert again.value is not first
    refused.raise_if_refused(_digest(2), 0.0)  # another token: nothing remembered


def test_an_unknown_kid_is_remembered_only_until_a_refetch_may_bring_it() -> None:
    refused = RefusedTokens(4, unknown_kid_interval=30.0)
    refused.remember(_digest(1), TokenKeyUnknown("no key has the token's kid"), 100.0)
    with pytest.raises(TokenKeyUnknown):
        refused.raise_if_refused(_digest(1), 129.9)
    refused.raise_if_refused(_digest(1), 130.0)
    assert len(refused) == 0


@pytest.mark.parametrize(
    "error",
    [TokenNotYetValid("nbf"), TokenKeysUnavailable("none"), IdentityError("internal error")],
)
def test_refusals_a_retry_may_undo_are_not_remembered(error: IdentityError) -> None:
    refused = RefusedTokens(4, unknown_kid_interval=30.0)
    refused.remember(_digest(1), error, 0.0)
    assert type(error) not in SETTLED
    assert len(refused) == 0


def test_refusals_are_bounded_oldest_out_first() -> None:
    refused = RefusedTokens(2, unknown_kid_interval=30.0)
    for n in range(3):
        refused.remember(_digest(n), TokenSignatureInvalid("bad"), 0.0)
    assert len(refused) == 2
    refused.raise_if_refused(_digest(0), 0.0)  # pushed out: not raised
    with pytest.raises(TokenSignatureInvalid):
        refused.raise_if_refused(_digest(2), 0.0)


def test_the_stage_caches_are_cleared_whole_when_full() -> None:
    cache: dict[str, int] = {}
    for n in range(5):
        store_bounded(cache, 3, f"k{n}", n)
    assert cache == {"k3": 3, "k4": 4}  # cleared at k3, then k3 and k4 stored
