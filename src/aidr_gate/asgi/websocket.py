"""A websocket through the gate: decided as a ``GET`` of its path before the handshake is answered;
a deny is an HTTP answer to the handshake where the server can send one, else a close 1008."""

from __future__ import annotations

import time

from aidr_gate.asgi.deciding import decide_request
from aidr_gate.asgi.http import decision_headers, shielded
from aidr_gate.asgi.responses import error_body, error_headers
from aidr_gate.asgi.types import ASGIApp, Message, Receive, Scope, Send
from aidr_gate.audit.record import Ending, RequestContext
from aidr_gate.decision import Decision
from aidr_gate.runtime import Runtime, Serving

# Close code for a websocket refused by policy (RFC 6455 "policy violation").
WS_POLICY_VIOLATION = 1008


class _Accepting:
    """The app's ``send``: the decision's headers go on the accept."""

    __slots__ = ("_extra", "_send", "status")

    def __init__(self, send: Send, extra: list[tuple[bytes, bytes]]) -> None:
        self._send = send
        self._extra = extra
        self.status: int | None = None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "websocket.accept":
            self.status = 101
            message = dict(message)
            message["headers"] = [*message.get("headers", ()), *self._extra]
        await self._send(message)


async def serve_websocket(
    app: ASGIApp, runtime: Runtime, serving: Serving, scope: Scope, receive: Receive, send: Send
) -> None:
    """Decide the handshake, refuse it or pass it to *app*, and record it."""
    started = time.perf_counter()
    path: str = scope.get("path", "")
    headers: list[tuple[bytes, bytes]] = scope.get("headers") or []
    decision, _ = await decide_request(runtime, serving, scope, receive, "GET", path, headers)
    gate_seconds = time.perf_counter() - started
    scope.setdefault("state", {})[serving.settings.state_key] = decision
    runtime.telemetry.record(decision, gate_seconds, path)
    ended = Ending.ERROR
    status: int | None = None
    try:
        if decision.blocks:
            ended = Ending.DENIED
            status = decision.status
            await _refuse(decision, scope, receive, send)
            return
        accepting = _Accepting(send, decision_headers(serving.settings, decision, gate_seconds))
        try:
            await app(scope, receive, accepting)
        finally:
            status = accepting.status
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
        await shielded(runtime.record(decision, context))


async def _refuse(decision: Decision, scope: Scope, receive: Receive, send: Send) -> None:
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
