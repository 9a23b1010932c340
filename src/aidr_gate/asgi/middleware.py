"""The drop-in pure ASGI middleware: every gated request is decided before the app sees it.

``app.add_middleware(AIDRGateMiddleware, config="gate.yaml")`` in Starlette or FastAPI; vLLM adds the
class with no arguments (``--middleware aidr_gate.AIDRGateMiddleware``), so without ``config`` it reads
``$AIDR_GATE_CONFIG`` (then ``/etc/aidr-gate/config.yaml``). Pure ASGI: per-request state lives in
locals, the response is never buffered (except a bounded ``GET /v1/models`` listing, which is
filtered), and the audit record is written from a ``finally``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aidr_gate.asgi.responses import error_body, error_headers, own_answer
from aidr_gate.asgi.streams import AdmittedStream, cancelled_otherwise, finish_cut
from aidr_gate.asgi.types import ASGIApp, Message, Receive, Scope, Send
from aidr_gate.audit.record import Ending, RequestContext
from aidr_gate.decision import Decision, Effect, Mode
from aidr_gate.errors import (
    AidrGateError,
    AuditUnavailable,
    BufferBudgetExhausted,
    ConfigError,
    GateNotReady,
    HeaderRepeated,
    HeadersTooLarge,
    IdentityError,
    ModelConflict,
    ModelMissing,
    PolicyEvaluationError,
    RequestError,
)
from aidr_gate.facts import Identity, Origin
from aidr_gate.gate import Resolved
from aidr_gate.request.form_model import content_type_of, model_from_form
from aidr_gate.request.headers import single_header_value
from aidr_gate.request.identity import authorization_header
from aidr_gate.request.model_id import (
    BufferedBody,
    model_from_json,
    read_body_within,
    replay,
    valid_model_id,
)
from aidr_gate.runtime import Runtime, Serving
from aidr_gate.settings.loader import GateConfig
from aidr_gate.settings.middleware import MiddlewareSettings
from aidr_gate.stages import CLIENT_DISCONNECTED, UPSTREAM_STATE_KEY
from aidr_gate.stores.cache import MISS

logger = logging.getLogger("aidr_gate.middleware")

# Close code for a websocket refused by policy (RFC 6455 "policy violation").
WS_POLICY_VIOLATION = 1008
WS_TRY_AGAIN_LATER = 1013
# A gate that failed to start (a bad key file, an audit directory another process holds) is tried
# again at most this often; requests meanwhile get 503 GATE_NOT_READY, never the app.
RETRY_START_SECONDS = 1.0
# Why a response was left incomplete (the responses.aborted metric's label).
AUDIT_NOT_STORED = "AUDIT_NOT_STORED"


class _StartFailed(Exception):
    """Unwinds the app's lifespan handler once the server has been told the start failed."""


def start_failure(error: Exception) -> str:
    """What a failed start says: every configuration problem on a line of its own, no traceback."""
    if isinstance(error, ConfigError):
        lines = "\n".join(f"  {problem}" for problem in error.problems)
        return f"aidr-gate cannot start: configuration problems:\n{lines}"
    return f"aidr-gate cannot start: {error}"


def _log_somewhere() -> None:
    """A server that configures only its own loggers (uvicorn does) leaves the gate's INFO lines,
    the one that says what was loaded among them, going nowhere: give them stderr then."""
    gate_logger = logging.getLogger("aidr_gate")
    if gate_logger.hasHandlers():
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
    gate_logger.addHandler(handler)
    if gate_logger.level == logging.NOTSET:
        gate_logger.setLevel(logging.INFO)


class AIDRGateMiddleware:
    """Decide, enforce and audit every gated request in front of *app*."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        config: GateConfig | str | Path | None = None,
        runtime: Runtime | None = None,
    ) -> None:
        self.app = app
        self._config = config
        self._runtime = runtime
        self._owns_runtime = runtime is None
        self._starting: asyncio.Lock | None = None
        self._failed_start: float | None = None  # monotonic time of the last failed start

    # -- lifecycle -------------------------------------------------------------------------------

    async def _ensure_runtime(self) -> Runtime:
        runtime = self._runtime
        if runtime is not None and runtime.started:
            return runtime
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            runtime = self._runtime
            if runtime is not None and runtime.started:
                return runtime
            failed = self._failed_start
            if failed is not None and time.monotonic() - failed < RETRY_START_SECONDS:
                raise GateNotReady("the gate failed to start; it is tried again shortly")
            try:
                if runtime is None:
                    # Loading reads files: keep it off the event loop.
                    runtime = await asyncio.to_thread(Runtime.from_config, self._config)
                    self._runtime = runtime
                await runtime.start()
            except Exception:
                self._failed_start = time.monotonic()
                if self._owns_runtime:  # the next attempt loads afresh (files may be fixed)
                    self._runtime = None
                raise
            self._failed_start = None
            return runtime

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Start the gate when the server starts the app, and report a failed start through the
        protocol (``lifespan.startup.failed`` with the problem list): uvicorn, with its default
        ``--lifespan auto`` too, then prints the problems and exits non-zero. An exception out of
        here would read as "lifespan unsupported" under ``auto`` and start serving 503s."""
        failed = False
        received = False

        async def receive_wrapper() -> Message:
            nonlocal failed, received
            message = await receive()
            received = True
            kind = message.get("type")
            if kind == "lifespan.startup":
                _log_somewhere()
                try:
                    await self._ensure_runtime()
                except Exception as exc:
                    failed = True
                    await send({"type": "lifespan.startup.failed", "message": start_failure(exc)})
                    raise _StartFailed from None
            elif kind == "lifespan.shutdown":
                await self._close_runtime()
            return message

        async def send_wrapper(message: Message) -> None:
            if not failed:  # the server has its answer; the app's own (a traceback) would be two
                await send(message)

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except Exception:
            if failed:
                return
            if received:
                raise
            # The app does not speak lifespan: the gate still starts with the server.
            await self._own_lifespan(receive, send)

    async def _own_lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _log_somewhere()
                try:
                    await self._ensure_runtime()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": start_failure(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._close_runtime()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _close_runtime(self) -> None:
        if self._runtime is not None and self._owns_runtime:
            # A closed runtime cannot restart (its audit trail is flushed and shut): the next
            # startup, if the server runs the app again, loads a fresh one.
            runtime, self._runtime = self._runtime, None
            await runtime.close()

    # -- dispatch --------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        runtime = self._runtime
        if runtime is None or not runtime.started:
            try:
                runtime = await self._ensure_runtime()
            except Exception as exc:  # fail closed: nothing reaches the app without a gate
                await self._not_ready(scope, receive, send, exc)
                return
        path = scope.get("path", "")
        scrape = runtime.wiring.scrape  # telemetry.prometheus.on_main_port: answered here
        if scrape is not None and path == scrape.path and kind == "http":
            await scrape(scope, receive, send)
            return
        if runtime.serving.settings.exempt(path):
            await self.app(scope, receive, send)
            return
        if kind == "websocket":
            await self._websocket(runtime, scope, receive, send)
            return
        await self._http(runtime, scope, receive, send)

    async def _not_ready(
        self, scope: Scope, receive: Receive, send: Send, error: Exception
    ) -> None:
        """503 GATE_NOT_READY with Retry-After. A websocket gets the same answer to its handshake,
        or, where the server cannot send one, an accept and a close 1013 (try again later): a
        close before accepting reaches the client as a 403, a policy denial. The cause of a failed
        start goes to the log (once per attempt, not once per refused request), never to the
        caller."""
        if not isinstance(error, GateNotReady):
            logger.error("the gate cannot start; refusing requests: %s", error, exc_info=error)
        status, body, headers = own_answer(GateNotReady.reason)
        if scope["type"] == "websocket":
            if (await receive()).get("type") != "websocket.connect":
                return
            if "websocket.http.response" in scope.get("extensions", {}):
                start = {
                    "type": "websocket.http.response.start",
                    "status": status,
                    "headers": headers,
                }
                await send(start)
                await send({"type": "websocket.http.response.body", "body": body})
                return
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": WS_TRY_AGAIN_LATER})
            return
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    # -- http ------------------------------------------------------------------------------------

    async def _http(self, runtime: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        serving = runtime.serving  # one configuration for the whole request, even across a reload
        settings = serving.settings
        method: str = scope.get("method", "GET")
        path: str = scope.get("path", "")
        headers: list[tuple[bytes, bytes]] = scope.get("headers") or []
        body: BufferedBody | None = None
        decision: Decision | None = None
        response_status: int | None = None
        ended = Ending.ERROR
        recorded = False
        gate_seconds = 0.0
        app_started: float | None = None
        stream: AdmittedStream | None = None  # an event stream a change may cut

        async def record() -> bool:
            """Write the record (once); False when it was not stored and the response must
            not complete."""
            nonlocal recorded
            if recorded or decision is None:
                return True
            recorded = True
            upstream_status, upstream_us, upstream_error = _upstream_of(
                scope, response_status, app_started
            )
            # Positional (see RequestContext's field order): this runs once per request.
            context = RequestContext(
                method,
                path,
                scope.get("scheme", "http"),
                scope.get("http_version", "1.1"),
                runtime.recorded_headers(headers),
                response_status,
                upstream_status,
                upstream_us,
                int(gate_seconds * 1_000_000),
                _ending(ended, upstream_error),
                body.size if body is not None else None,
                upstream_error,
            )
            if await runtime.record(decision, context):
                return True
            runtime.telemetry.response_aborted(AUDIT_NOT_STORED)
            return False

        try:
            decision, body = await self._decide_http(
                runtime, serving, scope, receive, method, path, headers
            )
            gate_seconds = time.perf_counter() - started
            scope.setdefault("state", {})[settings.state_key] = decision
            runtime.telemetry.record(decision, gate_seconds, path)
            extra = _response_headers(settings, decision, gate_seconds)
            if body is not None and body.disconnected:
                ended = Ending.CLIENT_DISCONNECTED  # nobody is left to answer
                return
            if decision.blocks:
                response_status = decision.status
                ended = Ending.DENIED
                await self._send_error(send, decision, extra, record)
                return
            app_receive = replay(body, receive) if body is not None else receive

            aborted = False

            async def send_wrapper(message: Message) -> None:
                nonlocal response_status, ended, aborted, stream
                if aborted:
                    return  # the response was left incomplete: nothing more is sent
                kind = message["type"]
                if kind == "http.response.start":
                    if body is not None:
                        # The app answers: it has read the body (the sidecar's upstream has it
                        # whole), so its bytes go back to the budget, and a long answer streamed
                        # after a large upload does not keep the upload's share.
                        body.release()
                    response_status = message["status"]
                    message = dict(message)
                    headers_out = message.get("headers", ())
                    stream = runtime.streams.admit(decision, headers_out)
                    message["headers"] = [*headers_out, *extra]
                elif kind == "http.response.body":
                    if not message.get("more_body", False):
                        if stream is not None:
                            runtime.streams.done(stream)  # its last chunk: no longer cut
                        ended = Ending.COMPLETED
                        # The record is as durable as configured before the client has the
                        # whole answer; a record that was not stored leaves the response
                        # incomplete (the server closes the connection), never answered as if
                        # recorded.
                        if not await record():
                            aborted = True
                            return
                    elif stream is not None:
                        stream.sent(message.get("body", b""))
                await send(message)

            app_send: Send = send_wrapper
            # Filtering a listing is enforcement: dry-run shows the app's listing unchanged.
            if (
                decision.mode is Mode.ENFORCE
                and method == "GET"
                and path in settings.list_models_paths
            ):
                app_send = self._listing_filter(runtime, serving, decision, send_wrapper)
            app_started = time.perf_counter()
            try:
                await self.app(scope, app_receive, app_send)
            except asyncio.CancelledError:
                if stream is None or stream.cut is None or cancelled_otherwise():
                    raise
            finally:
                if stream is not None:
                    runtime.streams.done(stream)
            if stream is not None and stream.cut is not None and ended is not Ending.COMPLETED:
                # Cut by the stream book (a change denies it now). An app may absorb the
                # cancellation (anyio task groups do) and return: the cut is finished here too.
                ended = Ending.CUT
                if not await finish_cut(
                    stream, send, runtime.record, scope, runtime.recorded_headers(headers)
                ):
                    runtime.telemetry.response_aborted(AUDIT_NOT_STORED)
            if ended not in (Ending.COMPLETED, Ending.CUT) and response_status is not None:
                ended = Ending.CLIENT_DISCONNECTED
        except (OSError, asyncio.CancelledError):
            ended = Ending.CLIENT_DISCONNECTED
            raise
        finally:
            if body is not None:
                body.release()  # a denied or cut request's body goes back to the budget
            if decision is not None and not recorded:
                await _shielded(record())

    async def _decide_http(
        self,
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
        state = serving.state
        models = serving.settings.models
        identity: Identity | None = None
        origin: Origin | None = None
        model_id: str | None = None
        body: BufferedBody | None = None
        try:
            # Bounded work before anything else, the token included: a caller without credentials
            # costs at most this many header lines and bytes.
            limits = serving.limits
            if len(headers) > limits.max_header_lines:
                raise HeadersTooLarge(f"more than {limits.max_header_lines} header lines")
            if _header_bytes(headers) > limits.max_header_bytes:
                raise HeadersTooLarge(f"headers larger than {limits.max_header_bytes} bytes")
        except HeadersTooLarge as exc:
            return gate.refuse(exc, origin=_unknown_origin(scope)), None
        try:
            origin = serving.origin.resolve(_peer(scope), headers)
            error: AidrGateError | None = None
            # Every place that may name the model is read as the app reads it; where two name
            # one, they must agree (MODEL_CONFLICT), so the app never acts on another.
            named: list[str] = []
            if models.header is not None:
                try:
                    raw = single_header_value(headers, models.header, HeaderRepeated)
                except RequestError as exc:
                    error = exc.with_traceback(None)  # no frame cycle keeping the body alive
                else:
                    if raw is not None:
                        header_model = _model_from_header(raw)
                        if header_model is None:
                            error = ModelMissing(
                                "the model header must be a printable string of at most 256 "
                                "characters"
                            )
                        else:
                            named.append(header_model)
            path_model = models.from_path(path)
            if path_model is not None:
                named.append(path_model)
            model_id = named[0] if named else None
            try:
                # Two Authorization headers are refused: the app might read the other one.
                identity = await serving.identity.authenticate(authorization_header(headers))
            except IdentityError as exc:
                # Who is calling comes first: a 401 outranks a bad header, and the gate reads (and
                # parses, for up to 32 MiB of form) no body of a caller it cannot identify.
                error = exc.with_traceback(None)  # no frame cycle keeping the body alive
            if error is None and not runtime.audit_accepting:
                # Refused whatever the body says: it is not read.
                error = AuditUnavailable("audit records cannot be written")
            wants_json = models.wants_body(method, path)
            if error is None and (wants_json or models.wants_form(method, path)):
                # The body is read even when a header names the model: the app reads the body,
                # and serves its default model when the body names none.
                limit = models.max_body_bytes if wants_json else models.max_form_bytes
                try:
                    body = await read_body_within(receive, limit, runtime.budget, limits)
                    if wants_json:
                        named.append(model_from_json(body, limit, limits.max_json_containers))
                    else:
                        named.append(model_from_form(body, content_type_of(headers), limit))
                except RequestError as exc:
                    error = exc.with_traceback(None)  # no frame cycle keeping the body alive
                except BufferBudgetExhausted as exc:
                    error = exc.with_traceback(None)  # no frame cycle keeping the body alive
                body_id = named[-1] if error is None else None
                model_id = model_id or body_id
            if error is None and len(set(named)) > 1:
                error = ModelConflict(
                    "the request names different models: " + ", ".join(m[:64] for m in named)
                )
            if error is not None:
                refused = gate.refuse(
                    error, identity=identity, origin=origin, model_id=model_id, state=state
                )
                return refused, body
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
                return listing, body
            decision = gate.decide(
                identity=identity, origin=origin, model_id=model_id, state=state, entity=entity
            )
            return decision, body
        except Exception as exc:  # fail closed: a bug in a stage is a deny, never an allow
            _log_internal_error(exc)
            fallback = origin or _unknown_origin(scope)
            return (
                gate.refuse(
                    PolicyEvaluationError("internal error"),
                    identity=identity,
                    origin=fallback,
                    model_id=model_id,
                    state=state,
                ),
                body,
            )

    async def _send_error(
        self,
        send: Send,
        decision: Decision,
        extra: list[tuple[bytes, bytes]],
        record: Callable[[], Awaitable[bool]],
    ) -> None:
        payload = error_body(decision)
        await send(
            {
                "type": "http.response.start",
                "status": decision.status or 403,
                "headers": [*error_headers(decision, len(payload)), *extra],
            }
        )
        if not await record():
            return  # not recorded: the answer is left incomplete
        await send({"type": "http.response.body", "body": payload, "more_body": False})

    def _listing_filter(
        self, runtime: Runtime, serving: Serving, decision: Decision, send: Send
    ) -> Send:
        """Wrap *send* so a model listing only names models this caller may use."""
        identity = decision.evidence.identity
        origin = decision.evidence.origin
        entity = decision.evidence.entity  # as resolved for the decision: no second lookup
        limit = serving.settings.max_listing_bytes
        start: Message | None = None
        chunks: list[bytes] = []
        size = 0

        async def filtering_send(message: Message) -> None:
            nonlocal start, size
            kind = message["type"]
            if kind == "http.response.start":
                if message.get("status") != 200:
                    start = None
                    await send(message)
                    return
                start = message
                return
            if kind != "http.response.body" or start is None:
                await send(message)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            if message.get("more_body", False):
                return
            payload = _filter_listing(
                runtime,
                serving,
                b"".join(chunks) if size <= limit else b"",
                identity,
                origin,
                decision.at,
                entity,
            )
            headers = [
                (k, v) for k, v in start.get("headers", ()) if k.lower() != b"content-length"
            ]
            headers.append((b"content-length", str(len(payload)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": payload, "more_body": False})

        return filtering_send

    # -- websocket -------------------------------------------------------------------------------

    async def _websocket(
        self, runtime: Runtime, scope: Scope, receive: Receive, send: Send
    ) -> None:
        started = time.perf_counter()
        serving = runtime.serving
        path: str = scope.get("path", "")
        headers: list[tuple[bytes, bytes]] = scope.get("headers") or []
        decision, _ = await self._decide_http(
            runtime, serving, scope, receive, "GET", path, headers
        )
        gate_seconds = time.perf_counter() - started
        scope.setdefault("state", {})[serving.settings.state_key] = decision
        runtime.telemetry.record(decision, gate_seconds, path)
        ended = Ending.ERROR
        status: int | None = None
        try:
            if decision.blocks:
                ended = Ending.DENIED
                status = decision.status
                message = await receive()
                if message.get("type") != "websocket.connect":
                    return
                if "websocket.http.response" in scope.get("extensions", {}):
                    payload = error_body(decision)
                    await send(
                        {
                            "type": "websocket.http.response.start",
                            "status": decision.status or 403,
                            "headers": error_headers(decision, len(payload)),
                        }
                    )
                    await send({"type": "websocket.http.response.body", "body": payload})
                else:
                    await send(
                        {
                            "type": "websocket.close",
                            "code": WS_POLICY_VIOLATION,
                            "reason": decision.reasons[0],
                        }
                    )
                return
            extra = _response_headers(serving.settings, decision, gate_seconds)

            async def send_wrapper(message: Message) -> None:
                nonlocal status
                if message["type"] == "websocket.accept":
                    status = 101
                    message = dict(message)
                    message["headers"] = [*message.get("headers", ()), *extra]
                await send(message)

            await self.app(scope, receive, send_wrapper)
            ended = Ending.COMPLETED
        finally:
            context = RequestContext(
                method="GET",
                path=path,
                scheme=scope.get("scheme", "ws"),
                http_version=scope.get("http_version", "1.1"),
                headers=runtime.recorded_headers(headers),
                status=status,
                gate_us=int(gate_seconds * 1_000_000),
                ending=ended,
            )
            await _shielded(runtime.record(decision, context))


def _response_headers(
    settings: MiddlewareSettings, decision: Decision, gate_seconds: float
) -> list[tuple[bytes, bytes]]:
    extra = [
        (settings.decision_header, decision.decision_id.encode()),
        (settings.overhead_header, f"{gate_seconds * 1000:.3f}".encode()),
    ]
    if decision.mode is Mode.DRY_RUN:
        verdict = decision.effect.value
        if decision.effect is Effect.DENY:
            verdict = f"deny {decision.status} {decision.reasons[0]}"
        extra.append((settings.dry_run_header, verdict.encode()))
    return extra


def _filter_listing(
    runtime: Runtime,
    serving: Serving,
    payload: bytes,
    identity: Identity | None,
    origin: Origin | None,
    at: float,
    entity: Resolved = MISS,
) -> bytes:
    """Keep only the listed models this caller may use; anything unreadable lists nothing."""
    try:
        listing = json.loads(payload)
        data = listing["data"]
        if not isinstance(data, list):
            raise TypeError("data is not a list")
    except (ValueError, KeyError, TypeError):
        logger.warning("model listing is not the OpenAI shape; returning an empty list")
        return b'{"object":"list","data":[]}'
    catalog = serving.state.catalog
    keep = []
    for item in data:
        model_id = item.get("id") if isinstance(item, dict) else None
        if not isinstance(model_id, str):
            continue
        verdict = runtime.gate.verdict(
            identity=identity,
            origin=origin or _unknown_origin({}),
            model=catalog.get(model_id),
            at=at,
            state=serving.state,
            entity=entity,
        )
        if verdict.outcome.effect is not Effect.DENY:
            keep.append(item)
    return json.dumps({**listing, "data": keep}, separators=(",", ":")).encode()


def _peer(scope: Scope) -> str | None:
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


def _unknown_origin(scope: Scope) -> Origin:
    peer = _peer(scope)
    origin = _UNKNOWN_ORIGINS.get(peer)
    if origin is None:
        if len(_UNKNOWN_ORIGINS) >= _MAX_UNKNOWN_ORIGINS:
            _UNKNOWN_ORIGINS.clear()
        origin = _UNKNOWN_ORIGINS[peer] = Origin(ip=None, resolved_by="unresolved", peer=peer)
    return origin


def _header_bytes(headers: list[tuple[bytes, bytes]]) -> int:
    total = 0
    for name, value in headers:
        total += len(name) + len(value)
    return total


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


async def _shielded(work: Awaitable[object]) -> None:
    """Finish an audit write even when the request task is being cancelled."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        # The record is still written by the shielded task; let cancellation proceed.
        raise
    except Exception:
        logger.exception("writing an audit record failed")


def _upstream_of(
    scope: Scope, response_status: int | None, app_started: float | None
) -> tuple[int | None, int | None, str | None]:
    """Upstream status, duration and error: the sidecar's proxy measures them; in-process, the
    app is the upstream."""
    upstream = (scope.get("state") or {}).get(UPSTREAM_STATE_KEY)
    if upstream is not None:
        seconds = upstream.seconds
        duration = int(seconds * 1_000_000) if seconds is not None else None
        return upstream.status, duration, upstream.error
    if app_started is None:
        return None, None, None
    return response_status, int((time.perf_counter() - app_started) * 1_000_000), None


def _ending(seen: Ending, upstream_error: str | None) -> Ending:
    """How the request ended. The proxy knows better than the send path when the client left
    first, or when the upstream broke off an answer; a 502/504 sent whole is still "completed"
    (``upstream.error`` in the record says why)."""
    if upstream_error is None:
        return seen
    if upstream_error == CLIENT_DISCONNECTED:
        return Ending.CLIENT_DISCONNECTED
    return seen if seen is Ending.COMPLETED else Ending.ERROR
