"""Everything a serving gate holds: the decision core, the stages, the audit trail, and their lifecycle.

The middleware and the sidecar share one :class:`Runtime`. Loading happens once, up front, and a bad
configuration fails with every problem listed. While serving, background tasks refresh keys, watch
GeoIP databases and watch the policy files; a reload builds a whole new :class:`GateState` off the
event loop and swaps it in, and a reload that fails keeps the last good state and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from aidr_gate.audit.config import audit_config
from aidr_gate.audit.record import AuditEvent, RequestContext
from aidr_gate.audit.trail import AuditTrail
from aidr_gate.config import GateConfig, load_config
from aidr_gate.decision import Decision
from aidr_gate.errors import ConfigError
from aidr_gate.gate import Gate, GateState, load_state
from aidr_gate.geo import ReloadResult
from aidr_gate.identity import Authenticator, parse_identity_config
from aidr_gate.jwks import FileKeys, RemoteJwks
from aidr_gate.limits import BufferBudget, Limits, parse_limits
from aidr_gate.middleware_config import MiddlewareSettings, parse_middleware_settings
from aidr_gate.origin import OriginResolver, origin_resolver_for
from aidr_gate.stores.cache import RegistryView
from aidr_gate.stores.settings import RegistrySettings, open_registry, registry_summary
from aidr_gate.streams import AdmittedStream, StreamBook
from aidr_gate.telemetry import Telemetry
from aidr_gate.telemetry.wiring import (
    TelemetryWiring,
    count_geoip_reload,
    count_reload,
    pending_restart,
)

T = TypeVar("T")

logger = logging.getLogger("aidr_gate.runtime")

DEFAULT_POLICY_WATCH_INTERVAL = 2.0


@dataclass(slots=True)
class ReloadReport:
    """What one reload attempt did."""

    ok: bool
    changed: bool
    detail: str
    at: float = field(default_factory=time.time)


class Runtime:
    """The loaded gate and its stages; start once, share between middleware instances, close once."""

    def __init__(
        self,
        *,
        gate: Gate,
        identity: Authenticator,
        origin: OriginResolver,
        settings: MiddlewareSettings,
        audit: AuditTrail | None = None,
        config: GateConfig | None = None,
        telemetry: Telemetry | None = None,
        policy_watch_interval: float = DEFAULT_POLICY_WATCH_INTERVAL,
        wiring: TelemetryWiring | None = None,
        limits: Limits | None = None,
        registry: RegistryView | None = None,
    ) -> None:
        self.gate = gate
        self.limits = limits or Limits()
        # Request bodies held at once, across every request this runtime gates.
        self.budget = BufferBudget(self.limits.max_buffered_bytes)
        # A database registry's cache (None for a file loaded whole with the policy): started and
        # closed here, kept across reloads, its changes rechecking the admitted streams.
        self.registry = registry
        settings_of = config.registry_settings if config is not None else None
        self.streams = StreamBook(
            gate,
            enabled=settings_of.cut_streams if settings_of is not None else True,
            on_cut=self._stream_cut,
        )
        self.identity = identity
        self.origin = origin
        self.settings = settings
        self.audit = audit
        self.config = config
        # The exporters the telemetry: section names, started and closed with the runtime.
        self.wiring = wiring or TelemetryWiring()
        self.telemetry = telemetry or self.wiring.telemetry
        self.telemetry.watch_runtime(self)
        if isinstance(identity.keys, FileKeys):
            identity.keys.on_reload = lambda ok: self.telemetry.reload("keys", ok=ok)
        self._started_config = config  # what a reload is compared with for restart-only changes
        if audit is not None:
            # Caps of recorded values, applied where records are rendered (the writer thread,
            # which is then the one thread that counts truncations).
            redactor = audit.redactor
            redactor.max_value = self.limits.max_recorded_value
            redactor.max_record = self.limits.max_record_bytes
            redactor.notify = self.telemetry.truncated
        self._watch_interval = policy_watch_interval
        self._tasks: list[asyncio.Task[None]] = []
        self._policy_stamp = self._stamp()
        self._unwatch: Callable[[], None] = lambda: None
        self._watching = False
        self.started = False
        self.last_reload: ReloadReport | None = None

    def _stream_cut(self, stream: AdmittedStream) -> None:
        reasons = stream.cut.reasons if stream.cut is not None else ()
        if reasons:  # counted by the deny's own first reason (after ACCESS_REVOKED)
            self.telemetry.stream_cut(reasons[1] if len(reasons) > 1 else reasons[0])

    # -- building -------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: GateConfig | str | Path | None = None) -> Runtime:
        """Load everything a configuration names; raise one :class:`ConfigError` listing every problem."""
        cfg = config if isinstance(config, GateConfig) else load_config(config)
        errors: list[ConfigError] = []

        def attempt(load: Callable[[GateConfig], T]) -> T | None:
            # Every section is read even when one fails: the error lists every problem at once.
            try:
                return load(cfg)
            except ConfigError as exc:
                errors.append(exc)
                return None

        registry = attempt(open_registry)
        state = attempt(lambda c: load_state(c, registry=registry))
        identity_config = attempt(parse_identity_config)
        origin = attempt(origin_resolver_for)
        settings = attempt(parse_middleware_settings)
        audit = attempt(lambda c: AuditTrail(audit_config(c)))
        wiring = attempt(TelemetryWiring.from_config)
        limits = attempt(parse_limits)
        if errors or state is None or identity_config is None or origin is None or settings is None:
            raise ConfigError.merge(errors)
        return cls(
            gate=Gate(state),
            identity=Authenticator(identity_config),
            origin=origin,
            settings=settings,
            audit=audit,
            config=cfg,
            wiring=wiring,
            limits=limits,
            registry=registry,
        )

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start background work: key refresh, GeoIP and policy file watching, audit delivery."""
        if self.started:
            return
        await self.wiring.start()  # first: a metrics port in use fails the start before the rest
        if self.registry is not None:
            # A store that is down leaves the cache unavailable (requests are denied with
            # REGISTRY_UNAVAILABLE) and is retried in the background: the gate still starts.
            # Idempotent: a start retried after a failure below follows the same cache.
            await self.registry.start()
        if not self._watching:  # registry changes and removed keys cut admitted streams
            if self.registry is not None:
                self._unwatch = self.registry.on_change(self.streams.changed)
            self.identity.keys.add_listener(self.streams.keys_changed)
            self._watching = True
        try:
            await self.identity.start()
        except BaseException:
            await self.wiring.close()
            raise
        if self.audit is not None:
            try:
                await self.audit.start()
            except BaseException:
                await self.identity.close()  # a runtime that failed to start leaves nothing running
                await self.wiring.close()
                raise
        self._tasks.append(
            asyncio.create_task(self.origin.watch(self._geoip_reloaded), name="aidr-geoip-watch")
        )
        if self.config is not None and self._watch_interval > 0:
            self._tasks.append(asyncio.create_task(self._watch_policy(), name="aidr-policy-watch"))
        if self.gate.state.screening is not None and self.gate.state.screening.source is not None:
            self._tasks.append(
                asyncio.create_task(self._watch_screening(), name="aidr-screening-watch")
            )
        self.started = True
        logger.info("%s", self.summary())

    async def close(self, timeout: float = 10.0) -> None:
        """Stop background work and flush the audit trail within *timeout* seconds."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.streams.close()
        if self.registry is not None:
            self._unwatch()
            await self.registry.close()
        if self.audit is not None:
            await self.audit.close(timeout)
        await self.identity.close()
        self.origin.close()
        await self.wiring.close()  # last: the final export has the audit trail's final counts
        self.started = False

    def summary(self) -> str:
        """One readable line of what is loaded: pack, entities, models, GeoIP, keys, audit."""
        state = self.gate.state
        pack = state.pack
        parts = [
            f"pack {pack.id} ({pack.status}, {pack.digest[:19]})",
            f"mode {state.mode.value}",
            registry_summary(state.registry, self.registry),
            f"{len(state.catalog)} models",
            self.origin.describe(),
            "keys ready" if self.identity.ready else "keys not loaded yet",
            f"metrics: {self.wiring.describe()}",
        ]
        if state.shadow is not None:
            parts.insert(1, f"shadow {state.shadow.pack.id}")
        if state.screening is not None:
            parts.append(f"screening lists {state.screening.version.label}")
        parts.append(f"audit: {self.audit.describe()}" if self.audit is not None else "audit: none")
        return "aidr-gate ready: " + "; ".join(parts)

    # -- per request ---------------------------------------------------------------------------

    @property
    def audit_accepting(self) -> bool:
        """False when the audit trail refuses records ("no audit, no access")."""
        return self.audit is None or self.audit.accepting

    def recorded_headers(
        self, headers: Sequence[tuple[bytes, bytes]]
    ) -> tuple[tuple[str, str], ...]:
        """The request headers the configuration allows into audit records (never credentials)."""
        if self.audit is None:
            return ()
        return self.audit.redactor.select(headers)

    async def record(self, decision: Decision, context: RequestContext) -> bool:
        """Hand one record to the audit trail; wait only as long as its durability policy says.

        False when the trail was waited for and says the record was not stored: the caller must
        not complete its response (``fsync: always``: answered means recorded).
        """
        audit = self.audit
        if audit is None:
            return True
        stored = audit.submit(AuditEvent(decision, context))
        # fsync always: answered means recorded. A backlog under on_failure deny: the request
        # waits for its record (backpressure) rather than the record being lost.
        if audit.durable_on_await or audit.backlogged:
            # Shielded: the future is shared by every record of its batch, and a cancelled request
            # (a client gone) must not cancel the others' wait.
            return bool(await asyncio.shield(stored))
        return True

    # -- reloading -----------------------------------------------------------------------------

    def _watched_files(self) -> list[Path]:
        if self.config is None:
            return []
        state = self.gate.state
        files = [Path(self.config.file), self.config.catalog]
        if self.config.registry is not None:  # a database store is followed, not polled
            files.append(self.config.registry)
        files += [Path(f) for f in state.pack.files]
        if state.shadow is not None:
            files += [Path(f) for f in state.shadow.pack.files]
        return files

    def _stamp(self) -> tuple[tuple[str, int, int, int, int], ...]:
        out = []
        for path in self._watched_files():
            try:
                # stat follows symlinks: a Kubernetes ConfigMap swap points at a new inode; an
                # edit in place changes the size or the nanosecond mtime.
                info = os.stat(path)
            except OSError:
                out.append((str(path), -1, -1, -1, -1))
                continue
            out.append((str(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns))
        return tuple(out)

    async def reload(self) -> ReloadReport:
        """Reload the configuration, packs, registry and catalogue; keep the old state on failure."""
        if self.config is None:
            report = ReloadReport(False, False, "no configuration file to reload from")
            self.last_reload = report
            return report
        path = self.config.file
        try:
            config, state = await asyncio.to_thread(
                _load_policy, path, self.registry, self.config.registry_settings
            )
        except ConfigError as exc:
            report = ReloadReport(
                False, False, f"reload refused, keeping the last good state: {exc}"
            )
            logger.error("%s", report.detail)
            count_reload(self.telemetry, self.config, exc)
            self.last_reload = report
            self._policy_stamp = self._stamp()
            return report
        old = self.gate.swap(state)
        self.config = config
        if config.registry_settings is not None:
            self.streams.enabled = config.registry_settings.cut_streams
        self.streams.recheck()  # a stream the new pack (or registry file) denies is cut
        self._policy_stamp = self._stamp()
        changed = old.pack.digest != state.pack.digest or old is not state
        report = ReloadReport(
            True,
            changed,
            f"reloaded: pack {state.pack.id} ({state.pack.digest[:19]}), "
            f"{registry_summary(state.registry, self.registry)}, {len(state.catalog)} models",
        )
        logger.info("%s", report.detail)
        count_reload(self.telemetry, config, None)
        self._note_restart_only(config)
        self.last_reload = report
        return report

    def _note_restart_only(self, config: GateConfig) -> None:
        restart = pending_restart(self._started_config or config, config)
        self.telemetry.restart_pending(len(restart))
        if restart:
            logger.warning("changed settings need a restart to apply: %s", ", ".join(restart))

    def _geoip_reloaded(self, results: tuple[ReloadResult, ...]) -> None:
        count_geoip_reload(self.telemetry, results)

    async def reload_all(self) -> ReloadReport:
        """What SIGHUP does: reload the policy files, and the key file (or refetch the JWKS) and
        the GeoIP databases now rather than at their next check. Each keeps its last good state
        when its new one fails."""
        report = await self.reload()
        keys = self.identity.keys
        if isinstance(keys, FileKeys):
            await keys.reload()  # counted by the key file's own reload hook
        elif isinstance(keys, RemoteJwks):
            self.telemetry.reload("keys", ok=await keys.refresh())
        self._geoip_reloaded(await asyncio.to_thread(self.origin.reload))
        return report

    async def _watch_screening(self) -> None:
        # The lists are checked in a thread; a change re-screens the registry there, and the new
        # table is swapped in with the state it was screened for (unless a reload replaced it).
        while True:
            table = self.gate.state.screening
            source = table.source if table is not None else None
            # A reload may drop the screening: section, or bring it back; the watch goes on.
            await asyncio.sleep(
                source.settings.check_interval
                if source is not None
                else DEFAULT_POLICY_WATCH_INTERVAL
            )
            state = self.gate.state
            table = state.screening
            if table is None or table.source is None:
                continue
            try:
                fresh, tried = await asyncio.to_thread(table.source.check, table, state.registry)
            except Exception:  # a bug here must not end the watch; the staleness bound holds
                logger.exception("screening check failed")
                continue
            if tried is not None:
                self.telemetry.reload("screening", ok=tried)
            if fresh is not None and self.gate.state is state:
                self.gate.swap(dataclasses.replace(state, screening=fresh))

    async def _watch_policy(self) -> None:
        while True:
            await asyncio.sleep(self._watch_interval)
            stamp = await asyncio.to_thread(self._stamp)
            if stamp != self._policy_stamp:
                await self.reload()


def _load_policy(
    path: str, registry: RegistryView | None, running: RegistrySettings | None
) -> tuple[GateConfig, GateState]:
    config = load_config(path)
    settings = config.registry_settings
    if registry is not None and (
        settings is None
        or running is None
        or (settings.store, settings.cache) != (running.store, running.cache)
    ):
        # The cache follows the store it was started on: another store (or other cache bounds)
        # needs a restart; a file registry is reloaded with the policy.
        raise ConfigError.single(
            config.file, "registry", "changing the registry store needs a restart"
        )
    return config, load_state(config, registry=registry)
