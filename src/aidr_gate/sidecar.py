"""The sidecar: the same middleware in front of :class:`UpstreamProxy`, plus Kubernetes probes.

``/healthz`` answers while the process serves; ``/readyz`` only when the policy, registry, catalogue,
keys and GeoIP data are loaded and the upstream accepts connections. Everything else is gated.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from aidr_gate.config import GateConfig
from aidr_gate.document import Checker
from aidr_gate.errors import ConfigError
from aidr_gate.middleware import AIDRGateMiddleware
from aidr_gate.proxy import ProxySettings, UpstreamProxy
from aidr_gate.runtime import Runtime

logger = logging.getLogger("aidr_gate.sidecar")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HEALTH_PATHS = ("/healthz", "/readyz")
# /readyz probes the upstream at most this often; Kubernetes probes every few seconds.
READY_CACHE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class SidecarSettings:
    """The ``proxy:`` section (and ``serve`` flags): upstream, pooling, timeouts, shutdown."""

    upstream: str | None = None
    proxy: ProxySettings = field(default_factory=ProxySettings)
    shutdown_timeout: float = 30.0


def parse_sidecar_settings(config: GateConfig) -> SidecarSettings:
    """Parse the ``proxy:`` section; raise :class:`ConfigError` naming file, key and line."""
    if config.document is None or "proxy" not in config.sections:
        return SidecarSettings()
    check = Checker(config.document)
    keys = (
        "upstream",
        "connect_timeout",
        "read_timeout",
        "pool_size",
        "keepalive_timeout",
        "shutdown_timeout",
    )
    data = check.mapping(config.section("proxy"), "proxy", keys=keys) or {}
    defaults = ProxySettings()

    def seconds(key: str, default: float) -> float:
        if data.get(key) is None:
            return default
        value = check.number(data[key], f"proxy.{key}", minimum=0.001)
        return default if value is None else value

    upstream = check.string(data["upstream"], "proxy.upstream") if data.get("upstream") else None
    pool = defaults.pool_size
    if data.get("pool_size") is not None:
        pool = check.integer(data["pool_size"], "proxy.pool_size", minimum=1) or pool
    settings = SidecarSettings(
        upstream=upstream,
        proxy=ProxySettings(
            connect_timeout=seconds("connect_timeout", defaults.connect_timeout),
            read_timeout=seconds("read_timeout", defaults.read_timeout),
            pool_size=pool,
            keepalive_timeout=seconds("keepalive_timeout", defaults.keepalive_timeout),
        ),
        shutdown_timeout=seconds("shutdown_timeout", 30.0),
    )
    check.raise_if_errors()
    return settings


class SidecarApp:
    """ASGI app of ``aidr-gate serve``: probes, then the gate, then the upstream."""

    def __init__(self, runtime: Runtime, proxy: UpstreamProxy) -> None:
        self.runtime = runtime
        self.proxy = proxy
        self.gated = AIDRGateMiddleware(proxy, runtime=runtime)
        self._ready_at = 0.0
        self._upstream_ok = False

    async def startup(self) -> None:
        """Start the runtime's background work and the upstream pool."""
        await self.runtime.start()
        await self.proxy.start()

    async def shutdown(self) -> None:
        """Close the pool and flush the audit trail."""
        await self.proxy.close()
        await self.runtime.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind == "http" and scope.get("path") in HEALTH_PATHS and scope.get("method") == "GET":
            if scope["path"] == "/healthz":
                await _json(send, 200, {"status": "alive"})
            else:
                ready, report = await self.readiness()
                await _json(send, 200 if ready else 503, report)
            return
        await self.gated(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    logger.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether to take traffic, and why; the upstream check is cached for a second."""
        now = time.monotonic()
        if now - self._ready_at > READY_CACHE_SECONDS:
            self._upstream_ok = await self.proxy.reachable()
            self._ready_at = now
        runtime = self.runtime
        state = runtime.gate.state
        checks = {
            "policy": state.pack.id,
            "registry": len(state.registry),
            "catalog": len(state.catalog),
            "keys": runtime.identity.ready,
            "audit": runtime.audit_accepting,
            "upstream": self._upstream_ok,
            "started": runtime.started,
        }
        ready = bool(
            runtime.started
            and runtime.identity.ready
            and runtime.audit_accepting
            and self._upstream_ok
        )
        return ready, {"status": "ready" if ready else "not ready", "checks": checks}


async def _json(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def build_sidecar(
    config: GateConfig, upstream: str | None = None, settings: SidecarSettings | None = None
) -> SidecarApp:
    """Load everything and build the sidecar app (raises :class:`ConfigError` listing problems)."""
    settings = settings or parse_sidecar_settings(config)
    target = upstream or settings.upstream
    if not target:
        raise ConfigError.single(config.file, "proxy.upstream", "no upstream: give --upstream URL")
    runtime = Runtime.from_config(config)
    try:
        proxy = UpstreamProxy(target, settings.proxy)
    except ValueError as exc:
        raise ConfigError.single(config.file, "proxy.upstream", str(exc)) from None
    return SidecarApp(runtime, proxy)
