"""The one registry of reason codes: what each code answers, says, and which stage gives it.

A reason code names why a request was decided as it was. The same code is the ``code`` of a JSON
error answer, the first of a decision's ``reasons``, the audit record's ``event.reason`` and a
metric label, so renaming one is a breaking change. Every code the gate, the sidecar or a bundled
pack uses has one entry in :data:`REASONS`; the exceptions of :mod:`aidr_gate.errors` take
their status and stage from it, :mod:`aidr_gate.asgi.responses` its sentences and
``Retry-After``, the sidecar's proxy its error answers, and the README's tables are generated
from it (:func:`markdown`). A test fails for a code used in ``src`` or a bundled pack that has
no entry here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType


class Kind(StrEnum):
    """Where a code comes from, and whether a client is ever answered with it."""

    REFUSAL = "refusal"  # the gate refuses a request with it (an exception of errors.py)
    SIDECAR = "sidecar"  # the sidecar's proxy answers with it
    FAMILY = "family"  # names a family of errors, or one raised at load: never an answer's code
    PACK = "pack"  # a bundled pack's rules give it; the rule sets effect and status
    RECORD = "record"  # recorded beside a decision or counted in a metric, never an answer's code
    PLACEHOLDER = "placeholder"  # stands where a decision names no reason (none of the gate's does)


class Stage(StrEnum):
    """The step of a request's path whose outcome a code reports. A refusal's rule id is
    ``gate/<stage>`` (so these values are in audit records and must not change)."""

    REQUEST = "request"  # the request as sent: headers, body, the model it names
    IDENTITY = "identity"  # the bearer token
    ORIGIN = "origin"  # the client's network origin
    JURISDICTION = "jurisdiction"  # the countries of the entity and its parent
    REGISTRY = "registry"  # the entity registry
    SCREENING = "screening"  # restricted-party screening
    AGREEMENT = "agreement"  # the entity's agreements
    TIER = "tier"  # the model's tier and the effective jurisdiction's
    PATTERNS = "patterns"  # access patterns over time
    POLICY = "policy"  # deciding itself, and the gate around it
    AUDIT = "audit"  # the audit trail
    UPSTREAM = "upstream"  # the sidecar's model server


@dataclass(frozen=True, slots=True)
class Reason:
    """One reason code and everything the places that use it look up."""

    code: str
    kind: Kind
    stage: Stage
    # What the code means, one line: the README's table prints it.
    when: str
    # The HTTP status the gate answers with it; None where a pack's rule or nobody sets one.
    status: int | None = None
    # The sentence a client reads; None: the policy's sentence (pack codes) or never answered.
    message: str | None = None
    # The sentence of an answer no decision stands behind (a gate that could not start); None:
    # ``message``.
    undecided: str | None = None
    # Seconds for ``Retry-After`` on its answer (every 503 of the gate: try again shortly).
    retry_after: int | None = None
    # PACK: how the bundled packs give it, a deny's status or ``log`` / ``allow``.
    effects: tuple[str, ...] = ()

    @property
    def answered(self) -> bool:
        """True for a code a client is answered with (the gate's refusals, the sidecar's own)."""
        return self.kind in (Kind.REFUSAL, Kind.SIDECAR)


def _refusal(code: str, status: int, stage: Stage, message: str, when: str) -> Reason:
    retry = 1 if status == 503 else None  # every 503 of the gate: try again shortly
    return Reason(code, Kind.REFUSAL, stage, when, status, message, retry_after=retry)


def _sidecar(code: str, status: int, stage: Stage, message: str, when: str) -> Reason:
    return Reason(code, Kind.SIDECAR, stage, when, status, message)


def _family(code: str, status: int, stage: Stage, when: str) -> Reason:
    retry = 1 if status == 503 else None
    return Reason(code, Kind.FAMILY, stage, when, status, retry_after=retry)


def _record(code: str, stage: Stage, when: str, kind: Kind = Kind.RECORD) -> Reason:
    return Reason(code, kind, stage, when)


def _pack(code: str, stage: Stage, effects: tuple[str, ...], when: str) -> Reason:
    return Reason(code, Kind.PACK, stage, when, effects=effects)


_R, _I, _P, _U = Stage.REQUEST, Stage.IDENTITY, Stage.POLICY, Stage.UPSTREAM
_S, _O, _J, _T = Stage.SCREENING, Stage.ORIGIN, Stage.JURISDICTION, Stage.TIER
_G, _A = Stage.REGISTRY, Stage.AUDIT

# One entry per code: (code, status, stage, the sentence clients read, when) for the answered ones.
_TABLE: tuple[Reason, ...] = (
    # --- families and load-time errors: classes of errors.py, never the code of an answer ------
    _family("GATE_ERROR", 403, _P, "the root of the tree: only its subclasses are raised"),
    _family("CONFIG_INVALID", 503, _P, "raised while loading, never per request"),
    _family("REQUEST_INVALID", 400, _R, "the family of request errors: each raised is a subclass"),
    _family("ORIGIN_UNRESOLVED", 403, _O, "an unresolved origin is an unknown country to the pack, not a refusal"),
    # --- the request itself ---------------------------------------------------------------------
    _refusal("BODY_NOT_JSON", 400, _R, "The request body must be a JSON object.",
             "the body of a request whose model comes from JSON is not a JSON object"),
    _refusal("BODY_NOT_FORM", 400, _R, "The request body must be a multipart form with one model field.",
             "the body of a request whose model comes from a form is not one readable multipart form"),
    _refusal("MODEL_MISSING", 400, _R, "The request must name a model.",
             "a request on a path that needs a model id names none"),
    _refusal("HEADER_REPEATED", 400, _R, "The request repeats a header that must come once.",
             "a header the gate reads for the app's sake comes twice: the two could read different ones"),
    _refusal("BODY_INCOMPLETE", 400, _R, "The request body was not received in full.",
             "the client disconnected before sending the whole body"),
    _refusal("MODEL_CONFLICT", 400, _R, "The request names different models in different places.",
             "header, path and body name different models"),
    _refusal("FORM_AMBIGUOUS", 400, _R, "The form has a part that parsers could read differently.",
             "a form part parsers could read differently (two `Content-Disposition` headers, an "
             "RFC 5987 `name*=`, a charset the app could not decode as the gate does)"),
    _refusal("BODY_TIMEOUT", 408, _R, "The request body did not arrive in time.",
             "the body did not arrive within `limits.body_timeout`"),
    _refusal("BODY_TOO_LARGE", 413, _R, "The request body is too large.",
             "a body the gate must read is longer than `middleware.max_body_bytes`"),
    _refusal("BODY_TOO_COMPLEX", 413, _R, "The request body holds too many JSON objects and arrays.",
             "more JSON objects and arrays than `limits.max_json_containers`"),
    _refusal("HEADERS_TOO_LARGE", 431, _R, "The request's headers are too large or too many.",
             "more header bytes or lines than `limits.max_header_bytes` / `max_header_lines`; "
             "checked before the token"),
    _refusal("BUFFER_BUDGET_EXHAUSTED", 503, _R, "The service is holding too many uploads; try again shortly.",
             "the process already holds `limits.max_buffered_bytes` of request bodies"),
    # --- identity -------------------------------------------------------------------------------
    _refusal("TOKEN_MISSING", 401, _I, "A bearer token is required.",
             "no bearer token in the Authorization header"),
    _refusal("TOKEN_MALFORMED", 401, _I, "The bearer token is malformed.",
             "the Authorization header or the token is not a well-formed bearer JWT, or is oversized"),
    _refusal("TOKEN_ALGORITHM_NOT_ALLOWED", 401, _I, "The bearer token uses an algorithm this gate does not accept.",
             "the token's `alg` is not one of the pinned algorithms (`none` never is)"),
    _refusal("TOKEN_KEY_UNKNOWN", 401, _I, "The bearer token was signed with a key this gate does not know.",
             "the token's `kid` is in no key set, even after the rate-limited refetch"),
    _refusal("TOKEN_KEYS_UNAVAILABLE", 401, _I, "The gate cannot verify tokens right now.",
             "no key set has ever been loaded (the issuer was unreachable from start)"),
    _refusal("TOKEN_SIGNATURE_INVALID", 401, _I, "The bearer token's signature does not verify.",
             "the signature does not verify with the key the token names"),
    _refusal("TOKEN_EXPIRED", 401, _I, "The bearer token has expired.",
             "the token's `exp` is in the past, beyond the leeway"),
    _refusal("TOKEN_NOT_YET_VALID", 401, _I, "The bearer token is not valid yet.",
             "the token's `nbf` or `iat` is in the future, beyond the leeway"),
    _refusal("TOKEN_ISSUER_INVALID", 401, _I, "The bearer token was issued by an issuer this gate does not trust.",
             "the token's `iss` is not the configured issuer"),
    _refusal("TOKEN_AUDIENCE_INVALID", 401, _I, "The bearer token is not meant for this service.",
             "the token's `aud` does not include the configured audience"),
    _refusal("TOKEN_CLAIM_MISSING", 401, _I, "The bearer token lacks a required claim.",
             "a required claim (`exp`, `iss`, `aud`, the entity claim...) is absent or empty"),
    _refusal("TOKEN_CLAIM_INVALID", 401, _I, "A claim in the bearer token has an invalid value.",
             "a mapped claim has the wrong type or value (a country claim that is not ISO 3166-1 alpha-2)"),
    _refusal("IDENTITY_INVALID", 401, _I, "The bearer token could not be verified.",
             "verifying the token failed unexpectedly: a fault is a refusal, logged"),
    # --- policy and the gate itself -------------------------------------------------------------
    _refusal("POLICY_EVALUATION_FAILED", 403, _P, "The request could not be evaluated and is refused.",
             "a bug in evaluation is a deny, never an allow"),
    _refusal("ACCESS_REVOKED", 403, _P, "Access ended while the response was streaming.",
             "the final SSE event of an admitted stream that a change now denies, before the deny's own reasons"),
    _refusal("SCREENING_UNAVAILABLE", 503, _S, "Restricted-party screening is out of date; the request is refused.",
             "the screening lists could not be reloaded for longer than `screening.max_staleness`: "
             "every request of a registry entity is denied until they are"),
    _refusal("REGISTRY_UNAVAILABLE", 503, _G, "The registry of customers cannot be reached; the request is refused.",
             "the registry's database cannot be reached and the gate's cached copy of the entity is "
             "older than `max_staleness`, or was never cached: fail closed"),
    _refusal("AUDIT_UNAVAILABLE", 503, _A, "The service cannot record requests right now and refuses them.",
             '"no audit, no access": the audit trail can be written nowhere, not even the local spool'),
    Reason("GATE_NOT_READY", Kind.REFUSAL, _P,
           "the gate could not start, for example its audit directory is held by another process: "
           "the cause is logged, the start retried each second, and nothing reaches the app; no "
           "decision, so no record",
           503, "The gate is not ready.",
           undecided="the access gate is not ready; try again shortly", retry_after=1),
    # --- the sidecar's own answers --------------------------------------------------------------
    _sidecar("PATH_NOT_CANONICAL", 400, _R, "The request path must not contain '.' or '..' segments.",
             "a path with `.` or `..` segments, which an upstream could route elsewhere"),
    _sidecar("UPSTREAM_UNAVAILABLE", 502, _U, "The model server is unavailable.",
             "the model server could not be reached or failed before its answer began"),
    _sidecar("UPSTREAM_TIMEOUT", 504, _U, "The model server did not answer in time.",
             "the model server did not connect or answer within `proxy.connect_timeout` / `read_timeout`"),
    # --- recorded beside a decision, or a metric's label ----------------------------------------
    _record("MODEL_UNKNOWN", _T, "the model is not in the catalogue: decided as the most restricted tier"),
    _record("MODELS_LISTED", _P, "an allowed `GET /v1/models` listing, filtered model by model"),
    _record("UPSTREAM_FAILED_MIDSTREAM", _U,
            "the model server broke off an answer already begun: the stream is cut, the error recorded"),
    _record("CLIENT_DISCONNECTED", _U, "the client left, so the sidecar cancelled the upstream request"),
    _record("AUDIT_NOT_STORED", _A,
            "a response left incomplete because its audit record was not stored (`fsync: always`)"),
    _record("DENIED", _P, "the `code` of a deny that names no reason", Kind.PLACEHOLDER),
    _record("NONE", _P, "the metrics' reason label of a decision that names none", Kind.PLACEHOLDER),
    # --- the bundled packs' rules ---------------------------------------------------------------
    _pack("ALLOWED", _P, ("allow",), "no rule matched: the pack's default"),
    _pack("EMBARGOED_JURISDICTION", _J, ("451",),
          "network, headquarters or parent country under a comprehensive US embargo"),
    _pack("EMBARGOED_REGION", _O, ("451",),
          "network origin in a region an OFAC program covers whole (Crimea, Sevastopol)"),
    _pack("REGION_UNCERTAIN", _O, ("451", "log"),
          "origin in a country with restricted regions whose region cannot be told"),
    _pack("ENTITY_DENIED", _G, ("403",), "the registry marks the entity as denied"),
    _pack("RESTRICTED_PARTY", _S, ("403",), "the entity is a listed party (a confirmed screening hit)"),
    _pack("RESTRICTED_PARTY_OWNED", _S, ("403",),
          "owned 50%+ in aggregate by SDN-listed parties (OFAC 50 Percent Rule)"),
    _pack("RESTRICTED_PARTY_AFFILIATE", _S, ("403", "log"),
          "owned 50%+ in aggregate by listed parties (BIS Affiliates rule; logged while suspended)"),
    _pack("RESTRICTED_PARTY_PENDING_REVIEW", _S, ("403",),
          "an unreviewed hit matching a listed name word for word"),
    _pack("RESTRICTED_PARTY_POTENTIAL", _S, ("log",),
          "an unreviewed screening hit (entity or owners), logged for review"),
    _pack("SCREENING_PENDING", _S, ("403",), "the entity is not yet screened against the lists in use"),
    _pack("OWNERSHIP_UNKNOWN", _S, ("log",),
          "owners unknown or incomplete for a controlled model (BIS Red Flag 29)"),
    _pack("TIER3_CONTROLLED_MODEL", _T, ("451",), "a controlled model for a Tier 3 effective jurisdiction"),
    _pack("ANONYMIZED_ORIGIN", _O, ("451",), "a VPN, Tor, proxy or hosting origin for a controlled model"),
    _pack("NETWORK_COUNTRY_UNKNOWN", _O, ("451",), "no network country for a controlled model"),
    _pack("HEADQUARTERS_UNKNOWN", _J, ("403",), "no headquarters country for a controlled model"),
    _pack("NO_VALID_AGREEMENT", Stage.AGREEMENT, ("403",),
          "Tier 2 and a controlled model without a valid agreement"),
    _pack("ORIGIN_TIER_WORSE_THAN_HEADQUARTERS", _T, ("log",),
          "the network country's tier is worse than the headquarters'"),
    _pack("D5_HEADQUARTERED_CONTROLLED_MODEL", _J, ("451",),
          "a controlled model, headquarters or parent in D:5, Macau or Hong Kong"),
    _pack("EU_RUSSIA_AI_SERVICES", _J, ("451",),
          "an entity established in Russia (EU 19th package): no AI model"),
    _pack("EU_RUSSIA_CONTROLLED", _J, ("log",),
          "ultimate parent in Russia (UNCONFIRMED reach of the EU ban), logged"),
    _pack("EU_RUSSIA_NETWORK_ORIGIN", _O, ("log",),
          "a Russian network origin alone, logged (the EU ban is on establishment)"),
    _pack("EU_SANCTIONED_REGION", _O, ("log",), "origin in Crimea or Sevastopol under the EU regime, logged"),
    _pack("UAE_NAMED_RECIPIENT", _G, ("log",),
          "UNCONFIRMED: a named UAE recipient using a controlled model, logged"),
    # Access patterns over time (patterns/; policies/examples/patterns.yaml).
    _pack("ORIGIN_VELOCITY", Stage.PATTERNS, ("403", "log"),
          "one token used from more countries within a window than the pack allows"),
    _pack("INTERMEDIARY_SUSPECTED", Stage.PATTERNS, ("log",),
          "one client address or network fronting many entities within a window"),
    _pack("ANONYMIZER_SHIFT", Stage.PATTERNS, ("log",),
          "an entity's recent traffic mostly through VPN, Tor, proxy or hosting origins"),
    _pack("PATTERNS_DEGRADED", Stage.PATTERNS, (),
          "the fleet's shared pattern view is lost; the pack will not decide on one replica's "
          "counts alone (no bundled pack gives it)"),
)  # fmt: skip

# Code -> its entry, read-only: the registry every other module looks up.
REASONS: Mapping[str, Reason] = MappingProxyType({r.code: r for r in _TABLE})
if len(REASONS) != len(_TABLE):  # pragma: no cover - a code entered twice
    raise RuntimeError("a reason code is entered twice in aidr_gate.reasons")


def of_kind(*kinds: Kind) -> tuple[Reason, ...]:
    """The entries of these kinds, in the registry's order."""
    return tuple(r for r in _TABLE if r.kind in kinds)


def markdown() -> str:
    """The README's table of the codes clients are answered with, by status."""
    rows = [
        "| status | code | stage | the client reads | when |",
        "| --- | --- | --- | --- | --- |",
    ]
    answered = sorted(of_kind(Kind.REFUSAL, Kind.SIDECAR), key=lambda r: r.status or 0)
    for r in answered:
        where = f"{r.when} (sidecar)" if r.kind is Kind.SIDECAR else r.when
        rows.append(f"| {r.status} | `{r.code}` | {r.stage} | {r.message} | {where} |")
    return "\n".join(rows) + "\n"


def pack_markdown() -> str:
    """The README's table of the bundled packs' codes."""
    rows = ["| code | the bundled packs | stage | what it means |", "| --- | --- | --- | --- |"]
    for r in of_kind(Kind.PACK):
        given = ", ".join(r.effects) or "none"
        rows.append(f"| `{r.code}` | {given} | {r.stage} | {r.when} |")
    return "\n".join(rows) + "\n"


def other_markdown() -> str:
    """The README's table of the codes no client is answered with."""
    rows = ["| code | kind | stage | what it means |", "| --- | --- | --- | --- |"]
    for r in of_kind(Kind.RECORD, Kind.PLACEHOLDER, Kind.FAMILY):
        rows.append(f"| `{r.code}` | {r.kind} | {r.stage} | {r.when} |")
    return "\n".join(rows) + "\n"
