"""Deciding one request: its headers in one pass, then where it comes from, who calls, which model,
and the gate's decision. Any failure is a deny with its reason code (fail closed).

Every place that may name the model is read as the app reads it (the header, the path, the JSON
body, the multipart form); where two name one they must agree (``MODEL_CONFLICT``), so the app never
acts on a model the gate did not decide on.
"""

from __future__ import annotations

import logging

from aidr_gate.asgi.types import Receive, Scope
from aidr_gate.decision import Decision
from aidr_gate.errors import (
    AidrGateError,
    AuditUnavailable,
    BodyNotForm,
    BufferBudgetExhausted,
    HeaderRepeated,
    HeadersTooLarge,
    IdentityError,
    ModelConflict,
    ModelMissing,
    PolicyEvaluationError,
    RequestError,
    TokenMalformed,
)
from aidr_gate.facts import Identity, Origin
from aidr_gate.gate import Resolved
from aidr_gate.request.form_model import model_from_form
from aidr_gate.request.headers import AUTHORIZATION, CONTENT_TYPE, MODEL, SeenHeaders
from aidr_gate.request.model_id import (
    BufferedBody,
    model_from_json,
    read_body_within,
    valid_model_id,
)
from aidr_gate.runtime import Runtime, Serving
from aidr_gate.stores.cache import MISS

logger = logging.getLogger("aidr_gate.middleware")


class _Asked:
    """What one request says, filled in stage by stage (a failure keeps what was found)."""

    __slots__ = ("body", "error", "identity", "model_id", "named", "origin")

    def __init__(self) -> None:
        self.identity: Identity | None = None
        self.origin: Origin | None = None
        self.model_id: str | None = None
        self.body: BufferedBody | None = None
        self.error: AidrGateError | None = None
        self.named: list[str] = []  # every model id the request names, where it names one


async def decide_request(
    runtime: Runtime,
    serving: Serving,
    scope: Scope,
    receive: Receive,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
) -> tuple[Decision, BufferedBody | None]:
    """Resolve every stage and decide; any failure becomes a deny with its reason code."""
    gate = runtime.gate
    # Bounded work before anything else, the token included: a caller without credentials
    # costs at most this many header lines and bytes.
    limits = serving.limits
    if len(headers) > limits.max_header_lines:
        too_many = HeadersTooLarge(f"more than {limits.max_header_lines} header lines")
        return gate.refuse(too_many, origin=unknown_origin(scope)), None
    seen = serving.headers.scan(headers)
    if seen.size > limits.max_header_bytes:
        too_large = HeadersTooLarge(f"headers larger than {limits.max_header_bytes} bytes")
        return gate.refuse(too_large, origin=unknown_origin(scope)), None
    asked = _Asked()
    state = serving.state
    try:
        asked.origin = serving.origin.resolve(peer(scope), seen.forwarded)
        _models_named_outside_the_body(asked, serving, seen, path)
        new_token = _known_caller(asked, serving, seen)
        if new_token is not None:
            await _verified_caller(asked, serving, new_token)
        if asked.error is None and not runtime.audit_accepting:
            # Refused whatever the body says: it is not read.
            asked.error = AuditUnavailable("audit records cannot be written")
        await _model_named_in_the_body(asked, runtime, serving, seen, receive, method, path)
        named = asked.named
        if asked.error is None and len(named) > 1 and len(set(named)) > 1:
            asked.error = ModelConflict(
                "the request names different models: " + ", ".join(m[:64] for m in named)
            )
        if asked.error is not None:
            refused = gate.refuse(
                asked.error,
                identity=asked.identity,
                origin=asked.origin,
                model_id=asked.model_id,
                state=state,
            )
            return refused, asked.body
        identity, origin = asked.identity, asked.origin
        entity: Resolved = None
        if identity is not None and identity.entity_id:
            # A cache hit is a dict read; only a miss awaits the store (coalesced).
            entity = state.registry.lookup(identity.entity_id)
            if entity is MISS:
                entity = await state.registry.fetch(identity.entity_id)
        if method == "GET" and path in serving.settings.list_models_paths:
            listing = gate.decide_listing(
                identity=identity, origin=origin, state=state, entity=entity
            )
            return listing, asked.body
        decision = gate.decide(
            identity=identity, origin=origin, model_id=asked.model_id, state=state, entity=entity
        )
        return decision, asked.body
    except Exception as exc:  # fail closed: a bug in a stage is a deny, never an allow
        _log_internal_error(exc)
        failed = gate.refuse(
            PolicyEvaluationError("internal error"),
            identity=asked.identity,
            origin=asked.origin or unknown_origin(scope),
            model_id=asked.model_id,
            state=state,
        )
        return failed, asked.body


def _models_named_outside_the_body(
    asked: _Asked, serving: Serving, seen: SeenHeaders, path: str
) -> None:
    """The model header (when configured) and the path (KServe, Triton)."""
    models = serving.settings.models
    if models.header is not None:
        try:
            raw = seen.single(MODEL, serving.headers, HeaderRepeated)
        except RequestError as exc:
            asked.error = exc.with_traceback(None)  # no frame cycle keeping the body alive
        else:
            if raw is not None:
                header_model = _model_from_header(raw)
                if header_model is None:
                    asked.error = ModelMissing(
                        "the model header must be a printable string of at most 256 characters"
                    )
                else:
                    asked.named.append(header_model)
    path_model = models.from_path(path)
    if path_model is not None:
        asked.named.append(path_model)
    asked.model_id = asked.named[0] if asked.named else None


def _known_caller(asked: _Asked, serving: Serving, seen: SeenHeaders) -> bytes | None:
    """The verified caller. Who is calling comes first: a 401 outranks a bad header, and the gate
    reads (and parses, for up to 32 MiB of form) no body of a caller it cannot identify.

    Most requests are settled here, without a coroutine: a token the cache holds, or one it
    refused before, or a header that is no token. Returned: the Authorization value of a new
    token, which :func:`_verified_caller` verifies; None when settled.
    """
    try:
        # Two Authorization headers are refused: the app might read the other one.
        authorization = seen.single(AUTHORIZATION, serving.headers, TokenMalformed)
        asked.identity = serving.identity.known(authorization)
    except IdentityError as exc:
        asked.error = exc.with_traceback(None)  # no frame cycle keeping the body alive
        return None
    return authorization if asked.identity is None else None


async def _verified_caller(asked: _Asked, serving: Serving, authorization: bytes) -> None:
    """A new token, verified (a signature check, perhaps a key refetch)."""
    try:
        asked.identity = await serving.identity.authenticate(authorization)
    except IdentityError as exc:
        asked.error = exc.with_traceback(None)  # no frame cycle keeping the body alive


async def _model_named_in_the_body(
    asked: _Asked,
    runtime: Runtime,
    serving: Serving,
    seen: SeenHeaders,
    receive: Receive,
    method: str,
    path: str,
) -> None:
    """The JSON body's ``model`` or the form's ``model`` field, where the path carries one. The
    body is read even when a header names the model: the app reads the body, and serves its
    default model when the body names none."""
    models = serving.settings.models
    wants_json = models.wants_body(method, path)
    if asked.error is not None or not (wants_json or models.wants_form(method, path)):
        return
    limits = serving.limits
    limit = models.max_body_bytes if wants_json else models.max_form_bytes
    try:
        body = asked.body = await read_body_within(
            receive, limit, runtime.budget, limits, runtime.deadlines
        )
        if wants_json:
            named = model_from_json(body, limit, limits.max_json_containers)
        else:
            content_type = seen.single(CONTENT_TYPE, serving.headers, BodyNotForm)
            named = model_from_form(body, content_type, limit)
    except (RequestError, BufferBudgetExhausted) as exc:
        asked.error = exc.with_traceback(None)  # no frame cycle keeping the body alive
        return
    asked.named.append(named)
    asked.model_id = asked.model_id or named


def peer(scope: Scope) -> str | None:
    """The ASGI peer's host, when it is one."""
    client = scope.get("client")
    if (
        type(client) in (tuple, list) and client and type(client[0]) is str
    ):  # exact types: faster than ABCs
        return client[0]
    return None


# One unresolved origin per peer address, shared: the audit trail caches what it serialises of
# an origin by the object's identity, so a flood of refusals must not bring a new one each.
_UNKNOWN_ORIGINS: dict[str | None, Origin] = {}
_MAX_UNKNOWN_ORIGINS = 1024


def unknown_origin(scope: Scope) -> Origin:
    """The origin of a request refused before its origin was resolved."""
    address = peer(scope)
    origin = _UNKNOWN_ORIGINS.get(address)
    if origin is None:
        if len(_UNKNOWN_ORIGINS) >= _MAX_UNKNOWN_ORIGINS:
            _UNKNOWN_ORIGINS.clear()
        origin = Origin(ip=None, resolved_by="unresolved", peer=address)
        _UNKNOWN_ORIGINS[address] = origin
    return origin


# Internal errors already logged with their traceback, by where they were raised: a bug that
# every request meets is logged once, not once per request (bounded: a new cause past the bound
# is logged again, never lost).
_LOGGED_CAUSES: set[tuple[str, str, int]] = set()
_MAX_LOGGED_CAUSES = 256


def _log_internal_error(exc: Exception) -> None:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = (tb.tb_frame.f_code.co_filename, tb.tb_lineno) if tb is not None else ("?", 0)
    cause = (type(exc).__qualname__, *where)
    if cause in _LOGGED_CAUSES:
        return
    if len(_LOGGED_CAUSES) >= _MAX_LOGGED_CAUSES:
        _LOGGED_CAUSES.clear()
    _LOGGED_CAUSES.add(cause)
    logger.error(
        "deciding a request failed; denying (logged once per cause: %s at %s:%d)",
        cause[0],
        cause[1],
        cause[2],
        exc_info=exc,
    )


def _model_from_header(raw: bytes) -> str | None:
    try:
        return valid_model_id(raw.decode("utf-8").strip())
    except UnicodeDecodeError:
        return None
