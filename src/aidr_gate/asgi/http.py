"""One HTTP request through the gate: decide, then answer the deny or pass the request to the app,
and write its audit record.

The request's state lives in one :class:`HttpExchange`, made per request with its methods defined
once: its :meth:`~HttpExchange.app_send` is the ``send`` the app gets (it adds the decision's
headers, follows an event stream a change may cut, and holds back the end of the response until the
record is as durable as configured), and the record is written once, from a ``finally`` at the
latest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable

from aidr_gate.asgi.deciding import decide_request
from aidr_gate.asgi.listing import ListingFilter
from aidr_gate.asgi.responses import error_body, error_headers
from aidr_gate.asgi.streams import AdmittedStream, cancelled_otherwise, finish_cut
from aidr_gate.asgi.types import ASGIApp, Message, Receive, Scope, Send
from aidr_gate.audit.record import Ending, RequestContext
from aidr_gate.decision import Decision, Effect, Mode
from aidr_gate.request.model_id import BufferedBody, replay
from aidr_gate.runtime import Runtime, Serving
from aidr_gate.settings.middleware import MiddlewareSettings
from aidr_gate.stages import CLIENT_DISCONNECTED, UPSTREAM_STATE_KEY

logger = logging.getLogger("aidr_gate.middleware")

# Why a response was left incomplete (the responses.aborted metric's label).
AUDIT_NOT_STORED = "AUDIT_NOT_STORED"
_perf_counter = time.perf_counter


class HttpExchange:
    """One HTTP request: its decision, its answer, its record."""

    __slots__ = (
        "aborted",
        "app_started",
        "body",
        "decision",
        "ended",
        "extra",
        "gate_us",
        "headers",
        "method",
        "path",
        "recorded",
        "runtime",
        "scope",
        "send",
        "serving",
        "status",
        "stream",
    )

    def __init__(self, runtime: Runtime, serving: Serving, scope: Scope, send: Send) -> None:
        self.runtime = runtime
        self.serving = serving  # one configuration for the whole request, even across a reload
        self.scope = scope
        self.send = send
        self.method: str = scope.get("method", "GET")
        self.path: str = scope.get("path", "")
        self.headers: list[tuple[bytes, bytes]] = scope.get("headers") or []
        self.decision: Decision | None = None
        self.body: BufferedBody | None = None
        self.status: int | None = None  # of the response, once it starts
        self.ended = Ending.ERROR
        self.recorded = False
        self.aborted = False  # the response was left incomplete: nothing more is sent
        self.gate_us = 0
        self.app_started: float | None = None
        self.stream: AdmittedStream | None = None  # an event stream a change may cut
        self.extra: list[tuple[bytes, bytes]] = []  # the decision's headers on the response

    async def run(self, app: ASGIApp, receive: Receive) -> None:
        """Decide, answer or call *app*, and record (once, whatever happens)."""
        started = _perf_counter()
        runtime, serving = self.runtime, self.serving
        try:
            decision, self.body = await decide_request(
                runtime, serving, self.scope, receive, self.method, self.path, self.headers
            )
            self.decision = decision
            gate_seconds = _perf_counter() - started
            self.gate_us = int(gate_seconds * 1_000_000)
            settings = serving.settings
            self.scope.setdefault("state", {})[settings.state_key] = decision
            runtime.telemetry.record(decision, gate_seconds, self.path)
            self.extra = decision_headers(settings, decision, gate_seconds)
            if self.body is not None and self.body.disconnected:
                self.ended = Ending.CLIENT_DISCONNECTED  # nobody is left to answer
                return
            if decision.blocks:
                self.status = decision.status
                self.ended = Ending.DENIED
                await self._refuse(decision)
                return
            await self._call(app, receive, decision)
        except (OSError, asyncio.CancelledError):
            self.ended = Ending.CLIENT_DISCONNECTED
            raise
        finally:
            if self.body is not None:
                self.body.release()  # a denied or cut request's body goes back to the budget
            if self.decision is not None and not self.recorded:
                await shielded(self.record())

    async def _refuse(self, decision: Decision) -> None:
        payload = error_body(decision)
        await self.send(
            {
                "type": "http.response.start",
                "status": decision.status or 403,
                "headers": [*error_headers(decision, len(payload)), *self.extra],
            }
        )
        if not await self.record():
            return  # not recorded: the answer is left incomplete
        await self.send({"type": "http.response.body", "body": payload, "more_body": False})

    async def _call(self, app: ASGIApp, receive: Receive, decision: Decision) -> None:
        """The app answers an allowed request, with the body replayed as it came."""
        body = self.body
        app_receive = replay(body, receive) if body is not None else receive
        app_send: Send = self.app_send
        # Filtering a listing is enforcement: dry-run shows the app's listing unchanged.
        if (
            decision.mode is Mode.ENFORCE
            and self.method == "GET"
            and self.path in self.serving.settings.list_models_paths
        ):
            app_send = ListingFilter(self.runtime, self.serving, decision, app_send)
        self.app_started = _perf_counter()
        try:
            await app(self.scope, app_receive, app_send)
        except asyncio.CancelledError:
            stream = self.stream
            if stream is None or stream.cut is None or cancelled_otherwise():
                raise
        finally:
            if self.stream is not None:
                self.runtime.streams.done(self.stream)
        stream = self.stream
        if stream is not None and stream.cut is not None and self.ended is not Ending.COMPLETED:
            # Cut by the stream book (a change denies it now). An app may absorb the
            # cancellation (anyio task groups do) and return: the cut is finished here too.
            self.ended = Ending.CUT
            runtime = self.runtime
            headers = runtime.recorded_headers(self.headers)
            if not await finish_cut(stream, self.send, runtime.record, self.scope, headers):
                runtime.telemetry.response_aborted(AUDIT_NOT_STORED)
        if self.ended not in (Ending.COMPLETED, Ending.CUT) and self.status is not None:
            self.ended = Ending.CLIENT_DISCONNECTED

    async def app_send(self, message: Message) -> None:
        """The ``send`` the app answers through."""
        if self.aborted:
            return
        kind = message["type"]
        if kind == "http.response.start":
            if self.body is not None:
                # The app answers: it has read the body (the sidecar's upstream has it whole),
                # so its bytes go back to the budget, and a long answer streamed after a large
                # upload does not keep the upload's share.
                self.body.release()
            self.status = message["status"]
            headers = message.get("headers", ())
            if self.decision is not None:
                self.stream = self.runtime.streams.admit(self.decision, headers)
            message = {**message, "headers": [*headers, *self.extra]}
        elif kind == "http.response.body":
            if not message.get("more_body", False):
                if self.stream is not None:
                    self.runtime.streams.done(self.stream)  # its last chunk: no longer cut
                self.ended = Ending.COMPLETED
                # The record is as durable as configured before the client has the whole
                # answer; a record that was not stored leaves the response incomplete (the
                # server closes the connection), never answered as if recorded.
                if not await self.record():
                    self.aborted = True
                    return
            elif self.stream is not None:
                self.stream.sent(message.get("body", b""))
        await self.send(message)

    async def record(self) -> bool:
        """Write the record (once); False when it was not stored and the response must not
        complete."""
        decision = self.decision
        if self.recorded or decision is None:
            return True
        self.recorded = True
        scope = self.scope
        runtime = self.runtime
        upstream_status, upstream_us, upstream_error = _upstream_of(
            scope, self.status, self.app_started
        )
        body = self.body
        # Positional (see RequestContext's field order): this runs once per request.
        context = RequestContext(
            self.method,
            self.path,
            scope.get("scheme", "http"),
            scope.get("http_version", "1.1"),
            runtime.recorded_headers(self.headers),
            self.status,
            upstream_status,
            upstream_us,
            self.gate_us,
            _ending(self.ended, upstream_error),
            body.size if body is not None else None,
            upstream_error,
        )
        if await runtime.record(decision, context):
            return True
        runtime.telemetry.response_aborted(AUDIT_NOT_STORED)
        return False


def decision_headers(
    settings: MiddlewareSettings, decision: Decision, gate_seconds: float
) -> list[tuple[bytes, bytes]]:
    """The headers the gate adds to every answer: the decision id, the gate's time, and in
    dry-run what enforcing would have answered."""
    extra = [
        (settings.decision_header, decision.decision_id.encode()),
        (settings.overhead_header, b"%.3f" % (gate_seconds * 1000)),
    ]
    if decision.mode is Mode.DRY_RUN:
        verdict = decision.effect.value
        if decision.effect is Effect.DENY:
            verdict = f"deny {decision.status} {decision.reasons[0]}"
        extra.append((settings.dry_run_header, verdict.encode()))
    return extra


async def shielded(work: Awaitable[object]) -> None:
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
    return response_status, int((_perf_counter() - app_started) * 1_000_000), None


def _ending(seen: Ending, upstream_error: str | None) -> Ending:
    """How the request ended. The proxy knows better than the send path when the client left
    first, or when the upstream broke off an answer; a 502/504 sent whole is still "completed"
    (``upstream.error`` in the record says why)."""
    if upstream_error is None:
        return seen
    if upstream_error == CLIENT_DISCONNECTED:
        return Ending.CLIENT_DISCONNECTED
    return seen if seen is Ending.COMPLETED else Ending.ERROR
