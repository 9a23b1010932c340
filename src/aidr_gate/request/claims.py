"""A verified token's claims read into an :class:`~aidr_gate.facts.Identity`, one claim reader each.

:class:`ClaimRules` holds the configured checks as a table: each reader reads one claim, raises the
:class:`~aidr_gate.errors.IdentityError` subclass of its failure, and names the ``Identity`` field
its value fills (or none: ``nbf``, ``aud`` and the required claims are checks only). The readers run
in table order, so when a token fails several checks the first one listed is the reason given:
time (``exp``, ``nbf``, ``iat``), then ``iss``, ``aud``, the required claims, ``sub``, the entity and
the claimed countries.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aidr_gate.countries import normalize_country
from aidr_gate.errors import (
    TokenAudienceInvalid,
    TokenClaimInvalid,
    TokenClaimMissing,
    TokenExpired,
    TokenIssuerInvalid,
    TokenNotYetValid,
)
from aidr_gate.facts import Identity
from aidr_gate.registry.model import ENTITY_IDS
from aidr_gate.settings.identity import IdentityConfig

__all__ = ["MAX_ENTITY_LENGTH", "ClaimPath", "ClaimRules"]

MAX_ENTITY_LENGTH = 256


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


# Reads one claim of a payload at a time ``now``: its value, or a raised IdentityError.
ClaimReader = Callable[[Mapping[str, Any], float], Any]


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


def _expiry(leeway: float) -> ClaimReader:
    def read(payload: Mapping[str, Any], now: float) -> float:
        exp = _number(payload, "exp")
        if exp is None:
            raise TokenClaimMissing("exp is missing")
        if exp <= now - leeway:
            raise TokenExpired("exp is in the past")
        return exp

    return read


def _not_in_future(name: str, leeway: float) -> ClaimReader:
    def read(payload: Mapping[str, Any], now: float) -> None:
        value = _number(payload, name)
        if value is not None and value > now + leeway:
            raise TokenNotYetValid(f"{name} is in the future")

    return read


def _issuer(issuers: frozenset[str]) -> ClaimReader:
    def read(payload: Mapping[str, Any], now: float) -> str:
        iss = payload.get("iss")
        if iss is None or iss == "":
            raise TokenClaimMissing("iss is missing")
        if not isinstance(iss, str) or iss not in issuers:
            raise TokenIssuerInvalid("iss is not the configured issuer")
        return iss

    return read


def _audience(audiences: frozenset[str]) -> ClaimReader:
    def read(payload: Mapping[str, Any], now: float) -> None:
        aud = payload.get("aud")
        if aud is None or aud == "" or aud == []:
            raise TokenClaimMissing("aud is missing")
        if isinstance(aud, str):
            if aud not in audiences:
                raise TokenAudienceInvalid("aud does not name this audience")
        elif not isinstance(aud, list) or not all(isinstance(a, str) for a in aud):
            raise TokenAudienceInvalid("aud is neither a string nor a list of strings")
        elif audiences.isdisjoint(aud):
            raise TokenAudienceInvalid("aud does not name this audience")

    return read


def _present(paths: tuple[ClaimPath, ...]) -> ClaimReader:
    def read(payload: Mapping[str, Any], now: float) -> None:
        for claim in paths:
            value = claim.get(payload)
            if value is None or value == "":
                raise TokenClaimMissing(f"required claim {claim.name} is missing")

    return read


def _subject(payload: Mapping[str, Any], now: float) -> str | None:
    sub = payload.get("sub")
    if sub is not None and not isinstance(sub, str):
        raise TokenClaimInvalid("sub is not a string")
    return sub


def _entity(path: ClaimPath) -> ClaimReader:
    def read(payload: Mapping[str, Any], now: float) -> str:
        entity = path.get(payload)
        if entity is None or entity == "":
            raise TokenClaimMissing(f"entity claim {path.name} is missing")
        if (
            not isinstance(entity, str)
            or len(entity) > MAX_ENTITY_LENGTH
            or not entity.isprintable()
        ):
            raise TokenClaimInvalid(f"entity claim {path.name} is not a short string")
        # One object per entity id whatever the token: the tables keyed by entity (the
        # registry, the pattern tracker) find it by identity.
        return ENTITY_IDS.one(entity)

    return read


def _country(path: ClaimPath) -> ClaimReader:
    def read(payload: Mapping[str, Any], now: float) -> str | None:
        value = path.get(payload)
        if value is None:
            return None
        code = normalize_country(value)
        if code is None:
            raise TokenClaimInvalid(f"{path.name} is not an ISO 3166-1 alpha-2 country code")
        return code

    return read


class ClaimRules:
    """The configured claim checks, in order, and the :class:`Identity` the claims make."""

    __slots__ = ("entity", "readers")

    def __init__(self, config: IdentityConfig) -> None:
        self.entity = ClaimPath(config.entity_claim)
        leeway = config.leeway
        readers: list[tuple[str | None, ClaimReader]] = [
            ("expires_at", _expiry(leeway)),
            (None, _not_in_future("nbf", leeway)),
            (None, _not_in_future("iat", leeway)),
            ("issuer", _issuer(frozenset(config.issuers))),
            (None, _audience(frozenset(config.audiences))),
            (None, _present(tuple(ClaimPath(c) for c in config.required_claims))),
            ("subject", _subject),
            ("entity_id", _entity(self.entity)),
        ]
        if config.headquarters_claim:
            readers.append(("claimed_headquarters", _country(ClaimPath(config.headquarters_claim))))
        if config.parent_claim:
            readers.append(("claimed_parent", _country(ClaimPath(config.parent_claim))))
        # (Identity field or None for a check only, reader), run in this order.
        self.readers: tuple[tuple[str | None, ClaimReader], ...] = tuple(readers)

    def identity(
        self, payload: Mapping[str, Any], algorithm: str, key_id: str | None, now: float
    ) -> Identity:
        """The identity a verified payload names; raises the first failed check's IdentityError."""
        fields: dict[str, Any] = {}
        for field, read in self.readers:
            value = read(payload, now)
            if field is not None:
                fields[field] = value
        return Identity(key_id=key_id, algorithm=algorithm, method="jwt", **fields)
