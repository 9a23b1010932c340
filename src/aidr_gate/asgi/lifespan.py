"""Starting the gate with the server, and the answer while it cannot start.

The middleware loads its :class:`~aidr_gate.runtime.Runtime` when the server sends
``lifespan.startup`` (or, for a server without lifespan, at the first request), reports a failed
start through the protocol, and closes the runtime it owns at ``lifespan.shutdown``. Until a start
succeeds, gated requests are answered 503 ``GATE_NOT_READY``, never passed to the app.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from aidr_gate.asgi.responses import own_answer
from aidr_gate.asgi.types import ASGIApp, Message, Receive, Scope, Send
from aidr_gate.errors import ConfigError, GateNotReady
from aidr_gate.runtime import Runtime
from aidr_gate.settings.loader import GateConfig

logger = logging.getLogger("aidr_gate.middleware")

# A gate that failed to start (a bad key file, an audit directory another process holds) is tried
# again at most this often; requests meanwhile get 503 GATE_NOT_READY, never the app.
RETRY_START_SECONDS = 1.0
# Close code of a websocket refused while the gate is not ready (RFC 6455 "try again later").
WS_TRY_AGAIN_LATER = 1013


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


class GateStarter:
    """The runtime a middleware serves with: loaded and started once, retried after a failure,
    closed at shutdown when the middleware owns it."""

    def __init__(self, config: GateConfig | str | Path | None, runtime: Runtime | None) -> None:
        self.runtime = runtime  # started, or None until a start succeeds (when owned)
        self._config = config
        self._owns_runtime = runtime is None
        self._starting: asyncio.Lock | None = None
        self._failed_start: float | None = None  # monotonic time of the last failed start

    async def ensure(self) -> Runtime:
        """The started runtime; raises what a failed start raised (GateNotReady within the
        retry interval)."""
        runtime = self.runtime
        if runtime is not None and runtime.started:
            return runtime
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            runtime = self.runtime
            if runtime is not None and runtime.started:
                return runtime
            failed = self._failed_start
            if failed is not None and time.monotonic() - failed < RETRY_START_SECONDS:
                raise GateNotReady("the gate failed to start; it is tried again shortly")
            try:
                if runtime is None:
                    # Loading reads files: keep it off the event loop.
                    runtime = await asyncio.to_thread(Runtime.from_config, self._config)
                    self.runtime = runtime
                await runtime.start()
            except Exception:
                self._failed_start = time.monotonic()
                if self._owns_runtime:  # the next attempt loads afresh (files may be fixed)
                    self.runtime = None
                raise
            self._failed_start = None
            return runtime

    async def close(self) -> None:
        """Close the runtime this starter loaded (one handed in is its owner's to close)."""
        if self.runtime is not None and self._owns_runtime:
            # A closed runtime cannot restart (its audit trail is flushed and shut): the next
            # startup, if the server runs the app again, loads a fresh one.
            runtime, self.runtime = self.runtime, None
            await runtime.close()

    async def lifespan(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
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
                    await self.ensure()
                except Exception as exc:
                    failed = True
                    await send({"type": "lifespan.startup.failed", "message": start_failure(exc)})
                    raise _StartFailed from None
            elif kind == "lifespan.shutdown":
                await self.close()
            return message

        async def send_wrapper(message: Message) -> None:
            if not failed:  # the server has its answer; the app's own (a traceback) would be two
                await send(message)

        try:
            await app(scope, receive_wrapper, send_wrapper)
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
                    await self.ensure()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": start_failure(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def not_ready(scope: Scope, receive: Receive, send: Send, error: Exception) -> None:
    """503 GATE_NOT_READY with Retry-After. A websocket gets the same answer to its handshake,
    or, where the server cannot send one, an accept and a close 1013 (try again later): a close
    before accepting reaches the client as a 403, a policy denial. The cause of a failed start
    goes to the log (once per attempt, not once per refused request), never to the caller."""
    if not isinstance(error, GateNotReady):
        logger.error("the gate cannot start; refusing requests: %s", error, exc_info=error)
    status, body, headers = own_answer(GateNotReady.reason)
    if scope["type"] == "websocket":
        if (await receive()).get("type") != "websocket.connect":
            return
        if "websocket.http.response" in scope.get("extensions", {}):
            start = {"type": "websocket.http.response.start", "status": status, "headers": headers}
            await send(start)
            await send({"type": "websocket.http.response.body", "body": body})
            return
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": WS_TRY_AGAIN_LATER})
        return
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
