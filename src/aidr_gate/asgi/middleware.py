"""The drop-in pure ASGI middleware: every gated request is decided before the app sees it.

``app.add_middleware(AIDRGateMiddleware, config="gate.yaml")`` in Starlette or FastAPI; vLLM adds the
class with no arguments (``--middleware aidr_gate.AIDRGateMiddleware``), so without ``config`` it reads
``$AIDR_GATE_CONFIG`` (then ``/etc/aidr-gate/config.yaml``). Pure ASGI: per-request state lives in
one object per request (:class:`~aidr_gate.asgi.http.HttpExchange`), the response is never buffered
(except a bounded ``GET /v1/models`` listing, which is filtered), and the audit record is written
from a ``finally``.

One request's path: this dispatch takes one snapshot of the served state; ``asgi/deciding.py``
reads the headers in one pass and decides; ``asgi/http.py`` answers the deny or calls the app and
records. Starting with the server is ``asgi/lifespan.py``; websockets are ``asgi/websocket.py``.
"""

from __future__ import annotations

from pathlib import Path

from aidr_gate.asgi.http import HttpExchange
from aidr_gate.asgi.lifespan import WS_TRY_AGAIN_LATER, GateStarter, not_ready, start_failure
from aidr_gate.asgi.types import ASGIApp, Receive, Scope, Send
from aidr_gate.asgi.websocket import WS_POLICY_VIOLATION, serve_websocket
from aidr_gate.runtime import Runtime
from aidr_gate.settings.loader import GateConfig

__all__ = ["WS_POLICY_VIOLATION", "WS_TRY_AGAIN_LATER", "AIDRGateMiddleware", "start_failure"]


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
        self._starter = GateStarter(config, runtime)

    @property
    def runtime(self) -> Runtime | None:
        """The runtime requests are decided with (``None`` until a start loaded one)."""
        return self._starter.runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            if kind == "lifespan":
                await self._starter.lifespan(self.app, scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        runtime = self._starter.runtime
        if runtime is None or not runtime.started:
            try:
                runtime = await self._starter.ensure()
            except Exception as exc:  # fail closed: nothing reaches the app without a gate
                await not_ready(scope, receive, send, exc)
                return
        serving = runtime.serving  # one configuration for the whole request, even across a reload
        path = scope.get("path", "")
        scrape = runtime.wiring.scrape  # telemetry.prometheus.on_main_port: answered here
        if scrape is not None and path == scrape.path and kind == "http":
            await scrape(scope, receive, send)
            return
        if serving.settings.exempt(path):
            await self.app(scope, receive, send)
            return
        if kind == "websocket":
            await serve_websocket(self.app, runtime, serving, scope, receive, send)
            return
        await HttpExchange(runtime, serving, scope, send).run(self.app, receive)
