"""The sidecar: the same middleware in front of :class:`UpstreamProxy`, plus Kubernetes probes.

``/healthz`` answers while the process serves; ``/readyz`` only when the policy, registry, catalogue,
keys and GeoIP data are loaded, the audit trail takes records and the upstream accepts connections.
Everything else is gated. The ``proxy:`` section of the configuration (every key optional; ``serve``
flags override it)::

    proxy:
      upstream: http://127.0.0.1:8000   # the model server (or --upstream)
      connect_timeout: 5                # seconds to open a connection to it: then 504
      read_timeout: 120                 # seconds without a byte from it: 504, or a cut stream
      pool_size: 256                    # connections kept to it at most
      keepalive_timeout: 30             # seconds an idle pooled connection is kept
      forward_client_ip: true           # append X-Forwarded-For / Forwarded
      shutdown_timeout: 30              # seconds SIGTERM waits for in-flight streams
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import uvicorn

from aidr_gate.asgi_types import Receive, Scope, Send
from aidr_gate.audit.record import loggable_target
from aidr_gate.config import GateConfig
from aidr_gate.document import Checker
from aidr_gate.errors import ConfigError
from aidr_gate.limits import Limits
from aidr_gate.middleware import AIDRGateMiddleware
from aidr_gate.proxy import ProxySettings, UpstreamProxy
from aidr_gate.responses import json_headers
from aidr_gate.runtime import Runtime
from aidr_gate.server_limits import server_options
from aidr_gate.stores.settings import registry_detail
from aidr_gate.telemetry.wiring import count_upstream

logger = logging.getLogger("aidr_gate.sidecar")

__all__ = [
    "SidecarApp",
    "SidecarSettings",
    "UvicornServer",
    "build_sidecar",
    "parse_sidecar_settings",
    "uvicorn_config",
]

HEALTH_PATHS = ("/healthz", "/readyz")
# /readyz probes the upstream at most this often; Kubernetes probes every few seconds.
READY_CACHE_SECONDS = 1.0
# With metrics exported, the upstream is probed this often even when nobody asks /readyz.
UPSTREAM_PROBE_SECONDS = 5.0
DEFAULT_SHUTDOWN_TIMEOUT = 30.0
COMMAND_LINE = "<command line>"
_KEYS = (
    "upstream",
    "connect_timeout",
    "read_timeout",
    "pool_size",
    "keepalive_timeout",
    "forward_client_ip",
    "shutdown_timeout",
)


@dataclass(frozen=True, slots=True)
class SidecarSettings:
    """The ``proxy:`` section (and ``serve`` flags): upstream, pooling, timeouts, shutdown."""

    upstream: str | None = None
    proxy: ProxySettings = field(default_factory=ProxySettings)
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT


def parse_sidecar_settings(config: GateConfig) -> SidecarSettings:
    """Parse the ``proxy:`` section; raise :class:`ConfigError` naming file, key and line."""
    if config.document is None or "proxy" not in config.sections:
        return SidecarSettings()
    check = Checker(config.document)
    data = check.mapping(config.section("proxy"), "proxy", keys=_KEYS) or {}
    defaults = ProxySettings()

    def seconds(key: str, default: float) -> float:
        if data.get(key) is None:
            return default
        value = check.number(data[key], f"proxy.{key}", minimum=0.001)
        return default if value is None else value

    upstream = None
    if data.get("upstream") is not None:
        upstream = check.string(data["upstream"], "proxy.upstream")
        if upstream is not None:
            try:
                UpstreamProxy(upstream)
            except ValueError as exc:
                check.error("proxy.upstream", str(exc))
    pool = defaults.pool_size
    if data.get("pool_size") is not None:
        pool = check.integer(data["pool_size"], "proxy.pool_size", minimum=1) or pool
    forward = defaults.forward_client_ip
    if data.get("forward_client_ip") is not None:
        read = check.boolean(data["forward_client_ip"], "proxy.forward_client_ip")
        forward = forward if read is None else read
    settings = SidecarSettings(
        upstream=upstream,
        proxy=replace(
            defaults,
            connect_timeout=seconds("connect_timeout", defaults.connect_timeout),
            read_timeout=seconds("read_timeout", defaults.read_timeout),
            pool_size=pool,
            keepalive_timeout=seconds("keepalive_timeout", defaults.keepalive_timeout),
            forward_client_ip=forward,
        ),
        shutdown_timeout=seconds("shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT),
    )
    check.raise_if_errors()
    return settings


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
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        await self.proxy.close()
        await self.runtime.close()

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
        }
        ready = all(decisive.values())
        return ready, {"status": "ready" if ready else "not ready", "checks": checks}

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
    config: GateConfig,
    upstream: str | None = None,
    settings: SidecarSettings | None = None,
    *,
    adjust: Callable[[SidecarSettings], SidecarSettings] | None = None,
) -> SidecarApp:
    """Load everything and build the sidecar app; one :class:`ConfigError` lists every problem.

    *upstream* (``--upstream``) wins over ``proxy.upstream``; *adjust* applies the other flags.
    """
    errors: list[ConfigError] = []
    if settings is None:
        try:
            settings = parse_sidecar_settings(config)
        except ConfigError as exc:
            errors.append(exc)
            settings = SidecarSettings()
    if adjust is not None:
        settings = adjust(settings)
    target = upstream or settings.upstream
    if not target:
        errors.append(
            ConfigError.single(
                config.file, "proxy.upstream", "no upstream: give --upstream URL or proxy.upstream"
            )
        )
    elif upstream:
        try:
            UpstreamProxy(upstream)
        except ValueError as exc:
            errors.append(ConfigError.single(COMMAND_LINE, "--upstream", str(exc)))
    runtime: Runtime | None = None
    try:
        runtime = Runtime.from_config(config)
    except ConfigError as exc:
        errors.append(exc)
    if errors or runtime is None or target is None:
        raise ConfigError.merge(errors)
    proxy_settings = replace(settings.proxy, state_key=runtime.settings.state_key)
    proxy = UpstreamProxy(target, proxy_settings)
    return SidecarApp(runtime, proxy, replace(settings, upstream=target, proxy=proxy_settings))
