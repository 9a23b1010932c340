"""One exception tree with stable reason codes.

Every failure the gate can meet maps to a class here. Each class names its stable ``reason``
code; the HTTP ``status`` the gate answers with and the ``stage`` that failed come from the code's
entry in the reason registry (:mod:`aidr_gate.reasons`), where the sentence clients read is too.
The same code appears in responses, audit records and metric labels, so renaming one is a
breaking change. Reason codes a policy pack defines for its own rules are plain strings and live
in the pack; the bundled packs' are in the registry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

from aidr_gate.reasons import REASONS, Kind, of_kind


class AidrGateError(Exception):
    """Root of every error aidr_gate raises on purpose."""

    reason: ClassVar[str] = "GATE_ERROR"
    # From the code's registry entry, for every class (see __init_subclass__): never by hand.
    status: ClassVar[int]
    stage: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _adopt(cls)

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.reason)
        self.message = message or self.reason


def _adopt(cls: type[AidrGateError]) -> None:
    """Give *cls* the status and stage of its code's registry entry. A class whose code has no
    entry (one defined outside aidr_gate) keeps what it inherits or states; a test holds every
    class of aidr_gate to the registry."""
    entry = REASONS.get(cls.reason)
    if entry is None or entry.status is None:
        return
    cls.status = entry.status
    cls.stage = str(entry.stage)


_adopt(AidrGateError)


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


class BodyTooLarge(RequestError):
    """The request body is longer than the configured limit for model extraction."""

    reason = "BODY_TOO_LARGE"


class BodyTooComplex(RequestError):
    """A JSON body holds more objects and arrays than ``limits.max_json_containers``: parsing it
    would hold the event loop (a megabyte of ``{}`` costs tens of milliseconds), so it is refused
    unparsed."""

    reason = "BODY_TOO_COMPLEX"


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


class BodyTimeout(RequestError):
    """The body the gate must read did not arrive within ``limits.body_timeout`` seconds."""

    reason = "BODY_TIMEOUT"


class BufferBudgetExhausted(AidrGateError):
    """The bytes of request bodies the process holds at once would exceed
    ``limits.max_buffered_bytes``: answered 503 with ``Retry-After``, the body unread."""

    reason = "BUFFER_BUDGET_EXHAUSTED"


# --- identity (401) -------------------------------------------------------------------------------


class IdentityError(AidrGateError):
    """The caller's identity could not be verified; answered with 401 and WWW-Authenticate."""

    reason = "IDENTITY_INVALID"


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


# --- policy and the gate itself --------------------------------------------------------------------


class PolicyEvaluationError(AidrGateError):
    """Evaluating the policy raised; the request is denied (fail closed)."""

    reason = "POLICY_EVALUATION_FAILED"


class AuditUnavailable(AidrGateError):
    """The audit trail can be written nowhere, not even the local spool ("no audit, no access")."""

    reason = "AUDIT_UNAVAILABLE"


class GateNotReady(AidrGateError):
    """The gate has no loaded state to decide with."""

    reason = "GATE_NOT_READY"


class ScreeningUnavailable(AidrGateError):
    """The restricted-party screening a decision needs is missing: the screening lists could not be
    (re)loaded, or the entities re-screened, for longer than the configured ``max_staleness``, so
    what the gate holds may no longer be the lists in force: the request is denied (fail closed)."""

    reason = "SCREENING_UNAVAILABLE"


class RegistryUnavailable(AidrGateError):
    """The entity registry's store cannot be reached and what the gate cached of it is older than
    the configured ``max_staleness`` (or was never cached): the request is denied (fail closed)."""

    reason = "REGISTRY_UNAVAILABLE"


class AccessRevoked(AidrGateError):
    """An admitted stream was ended because a change (a registry change, a pack reload) now
    denies it; the final event and the cut's own audit record carry this reason first, then the
    reasons of the deny that caused it."""

    reason = "ACCESS_REVOKED"


# --- reasons the bundled packs give ---------------------------------------------------------------

# The reason codes of the rules in the packs aidr_gate ships (``policies/``), with what each
# means: the registry's pack entries. Packs may define their own; a test keeps the packs, the
# registry and the README in step.
PACK_REASONS: Mapping[str, str] = MappingProxyType({r.code: r.when for r in of_kind(Kind.PACK)})
