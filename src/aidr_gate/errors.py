"""One exception tree with stable reason codes.

Every failure the gate can meet maps to a class here. Each class carries a stable ``reason`` code and
the HTTP ``status`` the gate answers with; the same code appears in responses, audit records and
metric labels, so renaming one is a breaking change. Reason codes a policy pack defines for its own
rules are plain strings and live in the pack, not here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar


class AidrGateError(Exception):
    """Root of every error aidr_gate raises on purpose."""

    reason: ClassVar[str] = "GATE_ERROR"
    status: ClassVar[int] = 403

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.reason)
        self.message = message or self.reason


# --- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a configuration file, named by file, key path and what is wrong."""

    file: str
    path: str
    message: str
    line: int | None = None
    severity: str = "error"

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        key = f" {self.path}:" if self.path else ""
        return f"{where}:{key} {self.message}"


class ConfigError(AidrGateError):
    """A configuration, policy pack, registry or catalogue is invalid; raised at load, never per request."""

    reason = "CONFIG_INVALID"
    status = 503

    def __init__(self, problems: Sequence[Problem] | Problem) -> None:
        self.problems: tuple[Problem, ...] = (
            (problems,) if isinstance(problems, Problem) else tuple(problems)
        )
        super().__init__("\n".join(str(p) for p in self.problems))

    @classmethod
    def single(cls, file: str, path: str, message: str) -> ConfigError:
        """Build an error holding one problem."""
        return cls(Problem(file, path, message))

    @classmethod
    def merge(cls, errors: Iterable[ConfigError]) -> ConfigError:
        """Join the problems of several errors into one."""
        return cls([p for e in errors for p in e.problems])


# --- the request itself (the caller's mistake, never a 500) ---------------------------------------


class RequestError(AidrGateError):
    """The request cannot be decided because of how it was sent."""

    reason = "REQUEST_INVALID"
    status = 400


class BodyTooLarge(RequestError):
    """The request body is longer than the configured limit for model extraction."""

    reason = "BODY_TOO_LARGE"
    status = 413


class BodyTooComplex(RequestError):
    """A JSON body holds more objects and arrays than ``limits.max_json_containers``: parsing it
    would hold the event loop (a megabyte of ``{}`` costs tens of milliseconds), so it is refused
    unparsed."""

    reason = "BODY_TOO_COMPLEX"
    status = 413


class BodyNotJSON(RequestError):
    """The body of a request whose model comes from JSON is not a JSON object."""

    reason = "BODY_NOT_JSON"


class BodyNotForm(RequestError):
    """The body of a request whose model comes from a form is not one readable multipart form."""

    reason = "BODY_NOT_FORM"


class BodyIncomplete(RequestError):
    """The client disconnected before sending the whole body."""

    reason = "BODY_INCOMPLETE"


class ModelMissing(RequestError):
    """A request on a path that needs a model id names none."""

    reason = "MODEL_MISSING"


class HeaderRepeated(RequestError):
    """A header the gate reads for the app's sake comes twice: the two could read different ones."""

    reason = "HEADER_REPEATED"


class ModelConflict(RequestError):
    """Two places of one request (header, path, body) name different models: the gate and the app
    could each act on another, so neither is decided on."""

    reason = "MODEL_CONFLICT"


class FormAmbiguous(RequestError):
    """A form part that parsers could read differently (two ``Content-Disposition`` headers, an
    RFC 5987 ``name*=``, a charset the app could not decode as the gate does): refused, not
    guessed."""

    reason = "FORM_AMBIGUOUS"


class HeadersTooLarge(RequestError):
    """The request's headers exceed ``limits.max_header_bytes`` or ``limits.max_header_lines``;
    checked before any token is verified."""

    reason = "HEADERS_TOO_LARGE"
    status = 431


class BodyTimeout(RequestError):
    """The body the gate must read did not arrive within ``limits.body_timeout`` seconds."""

    reason = "BODY_TIMEOUT"
    status = 408


class BufferBudgetExhausted(AidrGateError):
    """The bytes of request bodies the process holds at once would exceed
    ``limits.max_buffered_bytes``: answered 503 with ``Retry-After``, the body unread."""

    reason = "BUFFER_BUDGET_EXHAUSTED"
    status = 503


# --- identity (401) -------------------------------------------------------------------------------


class IdentityError(AidrGateError):
    """The caller's identity could not be verified; answered with 401 and WWW-Authenticate."""

    reason = "IDENTITY_INVALID"
    status = 401


class TokenMissing(IdentityError):
    """No bearer token in the Authorization header."""

    reason = "TOKEN_MISSING"


class TokenMalformed(IdentityError):
    """The Authorization header or the token is not a well-formed bearer JWT, or is oversized."""

    reason = "TOKEN_MALFORMED"


class TokenAlgorithmNotAllowed(IdentityError):
    """The token's ``alg`` is not one of the algorithms pinned in configuration (``none`` never is)."""

    reason = "TOKEN_ALGORITHM_NOT_ALLOWED"


class TokenKeyUnknown(IdentityError):
    """The token's ``kid`` is in no key set the gate has, even after the rate-limited refetch."""

    reason = "TOKEN_KEY_UNKNOWN"


class TokenKeysUnavailable(IdentityError):
    """No key set has ever been loaded (the issuer was unreachable from start)."""

    reason = "TOKEN_KEYS_UNAVAILABLE"


class TokenSignatureInvalid(IdentityError):
    """The signature does not verify with the key the token names."""

    reason = "TOKEN_SIGNATURE_INVALID"


class TokenExpired(IdentityError):
    """The token's ``exp`` is in the past (beyond the configured leeway)."""

    reason = "TOKEN_EXPIRED"


class TokenNotYetValid(IdentityError):
    """The token's ``nbf`` or ``iat`` is in the future (beyond the configured leeway)."""

    reason = "TOKEN_NOT_YET_VALID"


class TokenIssuerInvalid(IdentityError):
    """The token's ``iss`` is not the configured issuer."""

    reason = "TOKEN_ISSUER_INVALID"


class TokenAudienceInvalid(IdentityError):
    """The token's ``aud`` does not include the configured audience."""

    reason = "TOKEN_AUDIENCE_INVALID"


class TokenClaimMissing(IdentityError):
    """A required claim (``exp``, ``iss``, ``aud``, the entity claim...) is absent or empty."""

    reason = "TOKEN_CLAIM_MISSING"


class TokenClaimInvalid(IdentityError):
    """A mapped claim has the wrong type or value (a country claim that is not ISO 3166-1 alpha-2)."""

    reason = "TOKEN_CLAIM_INVALID"


# --- origin ---------------------------------------------------------------------------------------


class OriginError(AidrGateError):
    """The client's network origin could not be resolved; packs treat it as an unknown country."""

    reason = "ORIGIN_UNRESOLVED"
    status = 403


# --- policy and the gate itself --------------------------------------------------------------------


class PolicyEvaluationError(AidrGateError):
    """Evaluating the policy raised; the request is denied (fail closed)."""

    reason = "POLICY_EVALUATION_FAILED"
    status = 403


class AuditUnavailable(AidrGateError):
    """The audit trail can be written nowhere, not even the local spool ("no audit, no access")."""

    reason = "AUDIT_UNAVAILABLE"
    status = 503


class GateNotReady(AidrGateError):
    """The gate has no loaded state to decide with."""

    reason = "GATE_NOT_READY"
    status = 503


class ScreeningUnavailable(AidrGateError):
    """The restricted-party screening a decision needs is missing: the screening lists could not be
    (re)loaded, or the entities re-screened, for longer than the configured ``max_staleness``, so
    what the gate holds may no longer be the lists in force: the request is denied (fail closed)."""

    reason = "SCREENING_UNAVAILABLE"
    status = 503


class RegistryUnavailable(AidrGateError):
    """The entity registry's store cannot be reached and what the gate cached of it is older than
    the configured ``max_staleness`` (or was never cached): the request is denied (fail closed)."""

    reason = "REGISTRY_UNAVAILABLE"
    status = 503


class AccessRevoked(AidrGateError):
    """An admitted stream was ended because a change (a registry change, a pack reload) now
    denies it; the final event and the cut's own audit record carry this reason first, then the
    reasons of the deny that caused it."""

    reason = "ACCESS_REVOKED"
    status = 403


# --- reasons the bundled packs give ---------------------------------------------------------------

# The reason codes of the rules in the packs aidr_gate ships (``policies/``), with what each
# means. Packs may define their own; these are the ones the README's table documents, and a test
# keeps the packs, this table and the README in step.
PACK_REASONS: Mapping[str, str] = {
    "ALLOWED": "no rule matched: the pack's default",
    "EMBARGOED_JURISDICTION": "network, headquarters or parent country under a comprehensive US embargo",
    "EMBARGOED_REGION": "network origin in a region an OFAC program covers whole (Crimea, Sevastopol)",
    "REGION_UNCERTAIN": "origin in a country with restricted regions whose region cannot be told",
    "ENTITY_DENIED": "the registry marks the entity as denied",
    "RESTRICTED_PARTY": "the entity is a listed party (a confirmed screening hit)",
    "RESTRICTED_PARTY_OWNED": "owned 50%+ in aggregate by SDN-listed parties (OFAC 50 Percent Rule)",
    "RESTRICTED_PARTY_AFFILIATE": "owned 50%+ in aggregate by listed parties (BIS Affiliates rule)",
    "RESTRICTED_PARTY_PENDING_REVIEW": "an unreviewed hit matching a listed name word for word",
    "RESTRICTED_PARTY_POTENTIAL": "an unreviewed screening hit (entity or owners), logged for review",
    "SCREENING_PENDING": "the entity is not yet screened against the lists in use",
    "OWNERSHIP_UNKNOWN": "owners unknown or incomplete for a controlled model (BIS Red Flag 29)",
    "TIER3_CONTROLLED_MODEL": "a controlled model for a Tier 3 effective jurisdiction",
    "ANONYMIZED_ORIGIN": "a VPN, Tor, proxy or hosting origin for a controlled model",
    "NETWORK_COUNTRY_UNKNOWN": "no network country for a controlled model",
    "HEADQUARTERS_UNKNOWN": "no headquarters country for a controlled model",
    "NO_VALID_AGREEMENT": "Tier 2 and a controlled model without a valid agreement",
    "ORIGIN_TIER_WORSE_THAN_HEADQUARTERS": "the network country's tier is worse than the headquarters'",
    "D5_HEADQUARTERED_CONTROLLED_MODEL": "a controlled model, headquarters or parent in D:5, Macau or Hong Kong",
    "EU_RUSSIA_AI_SERVICES": "an entity established in Russia (EU 19th package): no AI model",
    "EU_RUSSIA_CONTROLLED": "ultimate parent in Russia (UNCONFIRMED reach of the EU ban), logged",
    "EU_RUSSIA_NETWORK_ORIGIN": "a Russian network origin alone, logged (the EU ban is on establishment)",
    "EU_SANCTIONED_REGION": "origin in Crimea or Sevastopol under the EU regime, logged",
    "UAE_NAMED_RECIPIENT": "UNCONFIRMED: a named UAE recipient using a controlled model, logged",
    # Access patterns over time (patterns/; policies/examples/patterns.yaml).
    "ORIGIN_VELOCITY": "one token used from more countries within a window than the pack allows",
    "INTERMEDIARY_SUSPECTED": "one client address or network fronting many entities within a window",
    "ANONYMIZER_SHIFT": "an entity's recent traffic mostly through VPN, Tor, proxy or hosting origins",
    "PATTERNS_DEGRADED": "the fleet's shared pattern view is lost; the pack will not decide on one "
    "replica's counts alone",
}
