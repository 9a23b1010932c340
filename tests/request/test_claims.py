"""The claim readers: the table's order decides which failure a token is refused for."""

from __future__ import annotations

from typing import Any

import pytest

from aidr_gate.errors import (
    IdentityError,
    TokenAudienceInvalid,
    TokenClaimInvalid,
    TokenClaimMissing,
    TokenExpired,
    TokenIssuerInvalid,
    TokenNotYetValid,
)
from aidr_gate.facts import Identity
from aidr_gate.request.claims import ClaimPath, ClaimRules
from aidr_gate.settings.identity import IdentityConfig

NOW = 1_000_000.0
ISS = "https://idp.example/"
CONFIG = IdentityConfig(
    issuers=(ISS,),
    audiences=("gate",),
    algorithms=("ES256",),
    entity_claim="org.id",
    required_claims=("jti",),
    headquarters_claim="hq",
    parent_claim="parent_hq",
)
GOOD: dict[str, Any] = {
    "exp": NOW + 60,
    "iss": ISS,
    "aud": ["other", "gate"],
    "jti": "x1",
    "sub": "alice",
    "org": {"id": "acme-se"},
    "hq": "se",
    "parent_hq": "US",
}


def test_good_claims_make_the_identity() -> None:
    identity = ClaimRules(CONFIG).identity(GOOD, "ES256", "k1", NOW)
    assert identity == Identity(
        entity_id="acme-se",
        subject="alice",
        issuer=ISS,
        key_id="k1",
        algorithm="ES256",
        expires_at=NOW + 60,
        claimed_headquarters="SE",
        claimed_parent="US",
        method="jwt",
    )


def test_one_entity_is_one_string_object_whatever_the_token() -> None:
    # Tokens decode to fresh strings; the tables keyed by entity find an interned one by identity.
    rules = ClaimRules(CONFIG)
    first = rules.identity({**GOOD, "org": {"id": "".join(["acme", "-se"])}}, "ES256", None, NOW)
    second = rules.identity({**GOOD, "org": {"id": "".join(["acme-", "se"])}}, "ES256", None, NOW)
    assert first.entity_id == "acme-se"
    assert first.entity_id is second.entity_id


def test_countries_are_read_only_when_configured() -> None:
    plain = IdentityConfig(issuers=(ISS,), audiences=("gate",), algorithms=("ES256",))
    identity = ClaimRules(plain).identity({**GOOD, "hq": "not a country"}, "ES256", None, NOW)
    assert (identity.entity_id, identity.claimed_headquarters) == ("alice", None)


# Each case breaks one more claim than the last: the reason is always the earliest in the table.
BROKEN: list[tuple[str, dict[str, Any], type[IdentityError]]] = [
    ("parent", {"parent_hq": "XX"}, TokenClaimInvalid),
    ("hq", {"hq": 7, "parent_hq": "XX"}, TokenClaimInvalid),
    ("entity", {"org": {"id": "a\nb"}, "hq": 7}, TokenClaimInvalid),
    ("sub", {"sub": 5, "org": {}}, TokenClaimInvalid),
    ("required", {"jti": "", "sub": 5}, TokenClaimMissing),
    ("aud", {"aud": "elsewhere", "jti": ""}, TokenAudienceInvalid),
    ("iss", {"iss": "https://evil/", "aud": 3}, TokenIssuerInvalid),
    ("iat", {"iat": NOW + 3600, "iss": None}, TokenNotYetValid),
    ("nbf", {"nbf": NOW + 3600, "iat": "soon"}, TokenNotYetValid),
    ("exp", {"exp": NOW - 3600, "nbf": NOW + 3600}, TokenExpired),
    ("no exp", {"exp": None, "nbf": True}, TokenClaimMissing),
]


@pytest.mark.parametrize(
    ("changes", "error"), [pytest.param(c, e, id=name) for name, c, e in BROKEN]
)
def test_the_first_failed_check_is_the_reason(
    changes: dict[str, Any], error: type[IdentityError]
) -> None:
    payload = {k: v for k, v in {**GOOD, **changes}.items() if v is not None}
    with pytest.raises(IdentityError) as refused:
        ClaimRules(CONFIG).identity(payload, "ES256", None, NOW)
    assert type(refused.value) is error


def test_an_exact_top_level_name_wins_over_a_path() -> None:
    path = ClaimPath("org.id")
    assert path.get({"org.id": "flat", "org": {"id": "nested"}}) == "flat"
    assert path.get({"org": {"id": "nested"}}) == "nested"
    assert path.get({"org": "not an object"}) is None
