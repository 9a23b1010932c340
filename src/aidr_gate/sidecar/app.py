"""The sidecar: the same middleware in front of :class:`UpstreamProxy`, plus Kubernetes probes.

``/healthz`` answers while the process serves; ``/readyz`` only when the policy, registry, catalogue,
keys and GeoIP data are loaded, the audit trail takes records and the upstream accepts connections.
Everything else is gated. The sidecar's own settings are the ``proxy:`` section
(:mod:`aidr_gate.settings.proxy`); ``serve`` flags override them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import uvicorn

from aidr_gate.asgi.middleware import AIDRGateMiddleware
from aidr_gate.asgi.responses import json_headers
from aidr_gate.asgi.server_limits import server_options
from aidr_gate.asgi.types import Receive, Scope, Send
from aidr_gate.audit.record import loggable_target
from aidr_gate.errors import ConfigError
from aidr_gate.limits import Limits
from aidr_gate.runtime import Runtime
from aidr_gate.settings.loader import GateConfig, read_config
from aidr_gate.settings.proxy import PROXY, SidecarSettings, upstream_problem
from aidr_gate.sidecar.proxy import UpstreamProxy
from aidr_gate.stores.settings import registry_detail
from aidr_gate.tasks import stop_task
from aidr_gate.telemetry.wiring import count_upstream

logger = logging.getLogger("aidr_gate.sidecar")

__all__ = [
    "SidecarApp",
    "SidecarSettings",
    "UvicornServer",
    "build_sidecar",
    "uvicorn_config",
]

HEALTH_PATHS = ("/healthz", "/readyz")
# /readyz probes the upstream at most this often; Kubernetes probes every few seconds.
READY_CACHE_SECONDS = 1.0
# With metrics exported, the upstream is probed this often even when nobody asks /readyz.
UPSTREAM_PROBE_SECONDS = 5.0
COMMAND_LINE = "<command line>"


class SidecarApp:
    """ASGI app of ``aidr-gate serve``: probes, then the gate, then the upstream."""

    def __init__(
        self, runtime: Runtime, proxy: UpstreamProxy, settings: SidecarSettings | None = None
    ) -> None:
        self.runtime = runtime
        self.proxy = proxy
        self.settings = settings or SidecarSettings(upstream=str(proxy.upstream))
        self.gated = AIDRGateMiddleware(proxy, runtime=runtime)
        self._ready_at = -READY_CACHE_SECONDS
        self._upstream_ok = False
        self._started = False
        self._closed = False
        # Readiness as metrics: what /readyz decides on, with the upstream from its last probe.
        runtime.telemetry.watch_readiness(self.ready_checks)
        self._probe: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        """Start the runtime's background work and the upstream pool; log what serves (once)."""
        if self._started:
            return
        await self.runtime.start()
        await self.proxy.start()
        self._started = True
        if self.runtime.telemetry.counting:
            # Keeps the upstream check of the readiness metrics fresh when no probe asks /readyz.
            self._probe = asyncio.create_task(self._probe_upstream(), name="aidr-upstream-probe")
        logger.info("%s", self.describe())

    async def reload(self) -> None:
        """SIGHUP: reload policy, registry, catalogue, key file and GeoIP now; keep what fails."""
        await self.runtime.reload_all()

    async def shutdown(self) -> None:
        """Close the pool and flush the audit trail (once)."""
        if self._closed:
            return
        self._closed = True
        try:
            await stop_task(self._probe)
            await self.proxy.close()
        finally:
            await self.runtime.close()  # flushes the audit trail, whatever stopped the above

    def describe(self) -> str:
        """One line on what the sidecar adds: upstream, pool and timeouts, where audit goes."""
        s = self.proxy.settings
        audit = self.runtime.audit
        parts = [
            f"upstream {self.proxy.upstream}",
            f"pool {s.pool_size}, connect {s.connect_timeout:g}s, read {s.read_timeout:g}s",
            f"drain {self.settings.shutdown_timeout:g}s on SIGTERM",
            f"audit: {audit.describe()}" if audit is not None else "no audit",
        ]
        return "aidr-gate sidecar: " + "; ".join(parts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope.get("path")
            if path in HEALTH_PATHS and scope.get("method") in ("GET", "HEAD"):
                if path == "/healthz":
                    await _json(send, 200, {"status": "alive"})
                else:
                    ready, report = await self.readiness()
                    await _json(send, 200 if ready else 503, report)
                return
        elif kind == "lifespan":
            await self._lifespan(receive, send)
            return
        try:
            await self.gated(scope, receive, send)
        finally:
            count_upstream(self.runtime.telemetry, scope)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    logger.error("startup failed: %s", exc)
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
        if now - self._ready_at >= READY_CACHE_SECONDS:
            self._upstream_ok = await self.proxy.reachable()
            self._ready_at = time.monotonic()
        runtime = self.runtime
        state = runtime.gate.state
        decisive = self.ready_checks()
        checks: dict[str, Any] = {
            "started": decisive["started"],
            "policy": f"{state.pack.id} ({state.pack.status})",
            "registry": registry_detail(state.registry, runtime.registry),
            "catalog": len(state.catalog),
            "keys": decisive["keys"],
            "geoip": runtime.origin.describe(),
            "audit": decisive["audit"],
            "upstream": decisive["upstream"],
            # Informative, not decisive: stale lists deny registry entities (503), not the rest.
            "screening": None
            if state.screening is None
            else {
                "lists": state.screening.version.label,
                "entities": len(state.screening),
                "unavailable": state.screening.unavailable,
            },
            # Informative too: a lost shared view degrades signals to this replica's own counts
            # and the pack decides what that means (``patterns_degraded``); not a reason to stop.
            "patterns": runtime.gate.patterns.health(),
        }
        ready = all(decisive.values())
        report: dict[str, Any] = {"status": "ready" if ready else "not ready", "checks": checks}
        if runtime.restart_pending:
            # Serving, but not as configured: these changed settings wait for a restart.
            report["restart_pending"] = list(runtime.restart_pending)
        return ready, report

    def ready_checks(self) -> dict[str, bool]:
        """The checks /readyz decides on, without probing (the upstream's is its last probe)."""
        runtime = self.runtime
        return {
            "started": bool(runtime.started),
            "keys": bool(runtime.identity.ready),
            "audit": bool(runtime.audit_accepting),
            "upstream": self._upstream_ok,
            # A database registry past max_staleness (or never reached) refuses every entity.
            "registry": runtime.registry is None or runtime.registry.health().ready,
        }

    async def _probe_upstream(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a failed probe is "not reachable", next time
                await self.readiness()
            await asyncio.sleep(UPSTREAM_PROBE_SECONDS)


class AccessLogScrubber(logging.Filter):
    """Redacts the request target of uvicorn's access log lines: no query string (where keys and
    tokens are sent) and no credential path segment reaches the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the target argument of ``'%s - "%s %s HTTP/%s" %d'``; keep every line."""
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (args[0], args[1], loggable_target(args[2]), args[3], args[4])
        return True


def scrub_access_log() -> None:
    """Install :class:`AccessLogScrubber` on uvicorn's access logger (once)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, AccessLogScrubber) for f in access.filters):
        access.addFilter(AccessLogScrubber())


def uvicorn_config(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    access_log: bool = False,
    log_level: str | None = None,
    shutdown_timeout: float | None = None,
    limits: Limits | None = None,
) -> uvicorn.Config:
    """How the sidecar (and the demo, and the bench's plain proxy) run under uvicorn: with the
    server limits of *limits* (``server_limits.py``; the defaults when None)."""
    if access_log:
        scrub_access_log()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        # The gate resolves client IPs behind trusted proxies itself; uvicorn must not rewrite the
        # peer address from X-Forwarded-For first.
        proxy_headers=False,
        server_header=False,
        access_log=access_log,
        # Typed int, used as an asyncio.wait_for timeout: a fraction of a second is honoured.
        timeout_graceful_shutdown=shutdown_timeout,  # type: ignore[arg-type]
        log_config=None,  # the caller's logging format for every line
        log_level=log_level,
        **server_options(limits or Limits()),
    )


class UvicornServer(uvicorn.Server):
    """uvicorn's server without its signal handling: the caller decides what signals do.

    uvicorn's own handlers re-raise the signal after a graceful stop, so a process stopped with
    SIGTERM would end killed by it (exit 143) even after draining properly.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Install nothing."""
        yield


async def _json(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    await send(
        {"type": "http.response.start", "status": status, "headers": json_headers(len(body))}
    )
    await send({"type": "http.response.body", "body": body})


def build_sidecar(
    config: GateConfig | str | Path | None,
    upstream: str | None = None,
    settings: SidecarSettings | None = None,
    *,
    adjust: Callable[[SidecarSettings], SidecarSettings] | None = None,
) -> SidecarApp:
    """Load everything and build the sidecar app; one :class:`ConfigError` lists every problem
    (the same ones ``validate`` lists for the file, plus a missing upstream).

    *upstream* (``--upstream``) wins over ``proxy.upstream``; *adjust* applies the other flags.
    """
    errors: list[ConfigError] = []
    if upstream:
        problem = upstream_problem(upstream)
        if problem is not None:
            errors.append(ConfigError.single(COMMAND_LINE, "--upstream", problem))
    runtime: Runtime | None = None
    try:
        runtime = Runtime.from_config(config)
    except ConfigError as exc:
        errors.append(exc)
    loaded = runtime.config if runtime is not None else _readable(config)
    if settings is None:
        settings = loaded.get(PROXY) if loaded is not None else SidecarSettings()
    if adjust is not None:
        settings = adjust(settings)
    target = upstream or settings.upstream
    if not target and loaded is not None and loaded.values.get(PROXY.name) is not None:
        message = "no upstream: give --upstream URL or proxy.upstream"
        errors.append(ConfigError.single(loaded.file, "proxy.upstream", message))
    if errors or runtime is None or target is None:
        raise ConfigError.merge(errors)
    proxy_settings = replace(settings.proxy, state_key=runtime.settings.state_key)
    proxy = UpstreamProxy(target, proxy_settings)
    return SidecarApp(runtime, proxy, replace(settings, upstream=target, proxy=proxy_settings))


def _readable(config: GateConfig | str | Path | None) -> GateConfig | None:
    """The configuration as far as it reads, to tell a missing upstream beside other problems."""
    if isinstance(config, GateConfig):
        return config
    try:
        return read_config(config)[0]
    except ConfigError:  # the file itself cannot be read: that is the problem already reported
        return None
