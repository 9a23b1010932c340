"""The serving gate's telemetry, wired: what the runtime, the middleware and the sidecar call.

- :class:`TelemetryWiring`: the exporters a configuration's ``telemetry:`` section asks for,
  started and closed with the runtime; the scrape endpoint on a port of its own
  (``prometheus.host:port``, served by a uvicorn server on the gate's event loop), or the app the
  middleware answers ``prometheus.path`` with on the main port (``on_main_port: true``).
- :func:`count_reload`, :func:`count_geoip_reload`: reloads by component and result.
- :func:`count_upstream`: the sidecar's upstream exchange of one request, after it ended.

Nothing here runs per request except :func:`count_upstream` (a dict lookup and a few additions).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import socket
from collections.abc import Iterable, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aidr_gate.errors import ConfigError, Problem
from aidr_gate.settings.loader import GateConfig
from aidr_gate.stages import UPSTREAM_STATE_KEY
from aidr_gate.tasks import stop_task
from aidr_gate.telemetry.export import Exporters
from aidr_gate.telemetry.record import Telemetry
from aidr_gate.telemetry.settings import TelemetrySettings, telemetry_settings
from aidr_gate.telemetry.table import RELOAD_COMPONENTS

if TYPE_CHECKING:
    import uvicorn

    from aidr_gate.request.geo import ReloadResult
    from aidr_gate.telemetry.prometheus import MetricsApp

logger = logging.getLogger("aidr_gate.telemetry")

# Seconds the metrics listener may take to start or to stop.
LISTENER_TIMEOUT = 10.0


class TelemetryWiring:
    """One runtime's telemetry and the exporters its configuration names."""

    def __init__(self, settings: TelemetrySettings | None = None, *, file: str = "<telemetry>"):
        self.settings = settings or TelemetrySettings()
        # Nothing exported: no SDK objects, no threads; the Telemetry returns at once per decision.
        exporting = self.settings.prometheus is not None or self.settings.otlp is not None
        self.exporters = Exporters(self.settings, file=file) if exporting else None
        self.telemetry = self.exporters.telemetry if self.exporters else Telemetry(self.settings)
        prometheus = self.settings.prometheus
        app = self.exporters.metrics_app if self.exporters else None
        # The app the middleware answers its path with on the gate's own port, if so configured.
        self.scrape: MetricsApp | None = app if prometheus and prometheus.on_main_port else None
        # Or the listener of its own: the app, its host and port.
        self._own_port: tuple[MetricsApp, str, int] | None = None
        if app is not None and prometheus and not prometheus.on_main_port:
            self._own_port = (app, prometheus.host, prometheus.port)
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, config: GateConfig) -> TelemetryWiring:
        """Read the section and build its exporters; :class:`ConfigError` for a bad one."""
        return cls(telemetry_settings(config), file=config.file)

    def describe(self) -> str:
        """Where the metrics go, for the startup line."""
        prometheus, otlp = self.settings.prometheus, self.settings.otlp
        parts = []
        if prometheus is not None:
            where = (
                "main port" if prometheus.on_main_port else f"{prometheus.host}:{prometheus.port}"
            )
            parts.append(f"scrape {where}{prometheus.path}")
        if otlp is not None:
            signals = [s for s, on in (("metrics", otlp.metrics), ("traces", otlp.traces)) if on]
            parts.append(f"OTLP {'+'.join(signals)} to {otlp.endpoint}")
        return ", ".join(parts) or "none"

    async def start(self) -> None:
        """Listen for scrapes on the port of its own (a bind error is raised here, at start), and
        start the periodic OTLP export."""
        if self._own_port is not None and self._task is None:
            await self._listen(*self._own_port)
        if self.exporters is not None:
            self.exporters.start()

    async def _listen(self, app: MetricsApp, host: str, port: int) -> None:
        from aidr_gate.sidecar.app import UvicornServer, uvicorn_config

        try:
            # Bound here rather than by uvicorn, which logs a bind error and calls sys.exit.
            sock = socket.create_server(
                (host, port),
                family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                reuse_port=False,
            )
        except OSError as exc:
            raise OSError(
                exc.errno, f"the metrics listener cannot bind {host}:{port}: {exc.strerror}"
            ) from None
        # log_level None: the process's logging levels stay as they are (uvicorn would set them).
        server = UvicornServer(uvicorn_config(app, host=host, port=port))
        # The listener's own uvicorn INFO lines (started, shutting down) would read as the main
        # server's: they are dropped, its warnings and errors kept (the task runs in a copy of
        # this context, where the flag is set).
        _install_quiet_filter()
        flag = _IN_LISTENER.set(True)
        try:
            task = asyncio.create_task(server.serve(sockets=[sock]), name="aidr-metrics-listener")
        finally:
            _IN_LISTENER.reset(flag)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LISTENER_TIMEOUT
        while not server.started:
            if task.done() or loop.time() > deadline:
                sock.close()
                await stop_task(task)
                raise OSError(f"the metrics listener on {host}:{port} did not start")
            await asyncio.sleep(0.005)
        self._server, self._task = server, task
        logger.info("metrics: scrape http://%s:%d%s", host, port, app.path or "/")

    async def close(self) -> None:
        """Stop listening, export what is left and stop the exporters."""
        server, task = self._server, self._task
        self._server = self._task = None
        if server is not None and task is not None:
            server.should_exit = True
            try:
                async with asyncio.timeout(LISTENER_TIMEOUT):
                    await task
            except (TimeoutError, Exception):
                logger.warning("the metrics listener did not stop cleanly")
        if self.exporters is not None:
            await self.exporters.close()


_IN_LISTENER: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "aidr_metrics_listener", default=False
)


class _QuietListener(logging.Filter):
    """Drops uvicorn's INFO records logged by the metrics listener's task."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or not _IN_LISTENER.get()


_QUIET = _QuietListener()


def _install_quiet_filter() -> None:
    uvicorn_log = logging.getLogger("uvicorn.error")
    if _QUIET not in uvicorn_log.filters:
        uvicorn_log.addFilter(_QUIET)


# -- reloads ----------------------------------------------------------------------------------------


def count_reload(telemetry: Telemetry, config: GateConfig, error: ConfigError | None) -> None:
    """Count a reload of the configuration file and what it names.

    Success: the policy packs, the registry and the catalogue were all read again. Failure: the
    component each problem is in (a problem in the configuration file itself is ``config``).
    """
    if error is None:
        for component in ("policy", "registry", "catalog"):
            telemetry.reload(component, ok=True)
        return
    failed = {_component(config, problem) for problem in error.problems} or {"config"}
    for component in sorted(failed):
        telemetry.reload(component, ok=False)


def _component(config: GateConfig, problem: Problem) -> str:
    if not problem.file:
        return "config"
    path = Path(problem.file).absolute()
    if path == Path(config.file).absolute():
        # A key of the configuration file: the pack, registry or catalogue it names, or a section
        # (an unknown pack id is the policy's problem, a missing key file the identity's).
        head = problem.path.split(".", 1)[0].split("[", 1)[0]
        return head if head in RELOAD_COMPONENTS else "config"
    if config.registry is not None and path == config.registry.absolute():
        return "registry"
    if path == config.catalog.absolute():
        return "catalog"
    return "policy"  # a pack file (or a pack id that names none)


def count_geoip_reload(telemetry: Telemetry, results: Iterable[ReloadResult]) -> None:
    """Count the databases a GeoIP check swapped in (ok) or refused (failed); unchanged ones not."""
    from aidr_gate.request.geo import ReloadOutcome

    for result in results:
        if result.outcome is ReloadOutcome.RELOADED:
            telemetry.reload("geoip", ok=True)
        elif result.outcome in (ReloadOutcome.REFUSED, ReloadOutcome.MISSING):
            telemetry.reload("geoip", ok=False)


# -- the sidecar's upstream ---------------------------------------------------------------------------


def count_upstream(telemetry: Telemetry, scope: MutableMapping[str, Any]) -> None:
    """Count the upstream exchange the proxy left in the request's state (none when denied)."""
    state = scope.get("state")
    result = state.get(UPSTREAM_STATE_KEY) if state else None
    if result is not None:
        telemetry.upstream(result.status, result.seconds, result.error)
