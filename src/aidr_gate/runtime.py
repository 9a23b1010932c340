"""Everything a serving gate holds: the decision core, the stages, the audit trail, and their lifecycle.

The middleware and the sidecar share one :class:`Runtime`. Loading happens once, up front, through
the one settings loader, and a bad configuration fails with every problem listed. While serving,
background tasks refresh keys, watch GeoIP databases and watch the configuration's files. A reload
reads the whole configuration again, builds a new :class:`Serving` (the gate state, the
authenticator, the origin resolver, the middleware settings) and swaps it in with one assignment:
a request decides with the old one or the new one, never a mix. A reload that fails keeps the last
good state and says so; a changed setting that only a restart applies keeps its running value and
is reported as waiting for a restart, never as reloaded.
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
from functools import partial
from pathlib import Path
from typing import Any

from aidr_gate.asgi.deadlines import Deadlines
from aidr_gate.asgi.streams import AdmittedStream, StreamBook
from aidr_gate.audit.record import AuditEvent, RequestContext
from aidr_gate.audit.trail import AuditTrail
from aidr_gate.decision import Decision
from aidr_gate.errors import ConfigError, Problem
from aidr_gate.gate import Gate, GateState, load_state
from aidr_gate.limits import LIMITS, BufferBudget, Limits
from aidr_gate.patterns.runtime import pattern_tracker_for
from aidr_gate.patterns.settings import PATTERNS
from aidr_gate.request.geo import ReloadResult
from aidr_gate.request.headers import HeaderPlan
from aidr_gate.request.identity import Authenticator
from aidr_gate.request.jwks import FileKeys, RemoteJwks
from aidr_gate.request.origin import OriginResolver, build_origin_resolver
from aidr_gate.settings.audit import AUDIT
from aidr_gate.settings.identity import IDENTITY
from aidr_gate.settings.loader import GateConfig, parse_identity_config, read_config
from aidr_gate.settings.middleware import MIDDLEWARE, MiddlewareSettings
from aidr_gate.settings.origin import GEOIP, NETWORK
from aidr_gate.settings.sections import SECTIONS
from aidr_gate.stores.cache import RegistryView
from aidr_gate.stores.settings import REGISTRY, open_registry, registry_summary
from aidr_gate.telemetry import Telemetry
from aidr_gate.telemetry.settings import TELEMETRY
from aidr_gate.telemetry.wiring import TelemetryWiring, count_geoip_reload, count_reload

logger = logging.getLogger("aidr_gate.runtime")

DEFAULT_POLICY_WATCH_INTERVAL = 2.0


@dataclass(slots=True)
class ReloadReport:
    """What one reload attempt did; *restart_pending* names changed settings not applied."""

    ok: bool
    changed: bool
    detail: str
    at: float = field(default_factory=time.time)
    restart_pending: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Serving:
    """What requests are decided with, built together and replaced together (one assignment)."""

    state: GateState
    identity: Authenticator
    origin: OriginResolver
    settings: MiddlewareSettings
    config: GateConfig | None = None
    limits: Limits = field(default_factory=Limits)
    # The headers a request's one pass collects for these stages (the token, the model header,
    # the content type, the trusted forwarding headers): derived, built with the rest.
    headers: HeaderPlan = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        plan = HeaderPlan(self.settings.models.header, self.origin.proxies.header_names)
        object.__setattr__(self, "headers", plan)


@dataclass(frozen=True, slots=True)
class Loaded:
    """A configuration and everything it names, ready to serve (or to swap in)."""

    config: GateConfig
    state: GateState
    registry: RegistryView | None = None  # a database store's cache, not started
    restart_pending: tuple[str, ...] = ()  # on a reload: changed keys kept at their running values


def load_everything(
    config: GateConfig | str | Path | None,
    *,
    warnings: list[Problem] | None = None,
    running: GateConfig | None = None,
    registry: RegistryView | None = None,
) -> Loaded:
    """The configuration and everything it names, or one :class:`ConfigError` listing every
    problem: its sections, the packs, registry and catalogue, and the identity serving needs.

    On a reload, *running* is the configuration in force: its restart-only settings are kept, and
    a database store keeps the running *registry* cache (opened only at the start: ``validate``
    names a database, it does not connect to it).
    """
    problems: list[Problem] = []
    if isinstance(config, GateConfig):
        cfg: GateConfig | None = config
    else:
        cfg, check = read_config(config)
        problems += check.errors
        if warnings is not None:
            warnings.extend(check.warnings)
    state = None
    pending: tuple[str, ...] = ()
    view: RegistryView | None = None
    if cfg is not None:
        if running is not None:
            cfg, pending = _keep_restart_only(running, cfg)
        try:
            parse_identity_config(cfg)
        except ConfigError as exc:
            problems += exc.problems
        registry_ok = True
        try:
            view = registry if running is not None else open_registry(cfg)
        except ConfigError as exc:  # an env: variable not set, no psycopg
            problems += [_at_registry_key(cfg, p) for p in exc.problems]
            registry_ok = False
        if registry_ok:
            try:
                state = load_state(cfg, warnings=warnings, registry=view)
            except ConfigError as exc:
                problems += exc.problems
    if problems or cfg is None or state is None:
        raise ConfigError(problems)
    return Loaded(cfg, state, view, pending)


def _at_registry_key(config: GateConfig, problem: Problem) -> Problem:
    """A store's problem, named at the configuration line that names the store."""
    document = config.document
    for path in ("registry.store", "registry"):
        line = document.lines.get(path) if document is not None else None
        if line is not None:
            return Problem(config.file, path, problem.message, line)
    return Problem(config.file, "registry", problem.message)


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
        limits = limits or (config.get(LIMITS) if config is not None else Limits())
        self._serving = Serving(gate.state, identity, origin, settings, config, limits)
        # Request bodies held at once, across every request this runtime gates: one budget for
        # the runtime's life (a reload resizes it; bodies in flight give back what they took).
        self.budget = BufferBudget(limits.max_buffered_bytes)
        self.deadlines = Deadlines()  # of the request bodies being read: one timer for all
        # A database registry's cache (None for a file loaded whole with the policy): started and
        # closed here, kept across reloads, its changes rechecking the admitted streams.
        self.registry = registry
        settings_of = config.registry_settings if config is not None else None
        self.streams = StreamBook(
            gate,
            enabled=settings_of.cut_streams if settings_of is not None else True,
            on_cut=self._stream_cut,
        )
        self.audit = audit
        # The exporters the telemetry: section names, started and closed with the runtime.
        self.wiring = wiring or TelemetryWiring()
        self.telemetry: Telemetry = telemetry or self.wiring.telemetry
        self.telemetry.watch_runtime(self)
        self._count_key_reloads(identity)
        self._apply_limits(limits)
        self._watch_interval = policy_watch_interval
        self._tasks: list[asyncio.Task[None]] = []
        self._geoip_watch: asyncio.Task[None] | None = None
        self._policy_stamp = self._stamp()
        self._reloading = asyncio.Lock()
        self._unwatch: Callable[[], None] = lambda: None
        self._watching = False
        self.started = False
        self.last_reload: ReloadReport | None = None
        # Changed settings that wait for a restart, by key path (a reload never applies them).
        self.restart_pending: tuple[str, ...] = ()

    # -- what requests see ----------------------------------------------------------------------

    @property
    def serving(self) -> Serving:
        """The current state, authenticator, origin resolver and settings, as one value: a
        request reads it once."""
        return self._serving

    @property
    def identity(self) -> Authenticator:
        """The current authenticator."""
        return self._serving.identity

    @property
    def origin(self) -> OriginResolver:
        """The current origin resolver."""
        return self._serving.origin

    @property
    def settings(self) -> MiddlewareSettings:
        """The current ``middleware:`` settings."""
        return self._serving.settings

    @property
    def limits(self) -> Limits:
        """The current ``limits:`` settings."""
        return self._serving.limits

    @property
    def config(self) -> GateConfig | None:
        """The configuration in force (restart-only sections as they were at start)."""
        return self._serving.config

    def _stream_cut(self, stream: AdmittedStream) -> None:
        reasons = stream.cut.reasons if stream.cut is not None else ()
        if reasons:  # counted by the deny's own first reason (after ACCESS_REVOKED)
            self.telemetry.stream_cut(reasons[1] if len(reasons) > 1 else reasons[0])

    # -- building -------------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        config: GateConfig | str | Path | None = None,
        *,
        warnings: list[Problem] | None = None,
    ) -> Runtime:
        """Load everything a configuration names; raise one :class:`ConfigError` listing every problem."""
        loaded = load_everything(config, warnings=warnings)
        cfg, state = loaded.config, loaded.state
        wiring = TelemetryWiring(cfg.get(TELEMETRY), file=cfg.file)
        origin = build_origin_resolver(cfg.get(NETWORK), cfg.get(GEOIP))
        return cls(
            gate=Gate(state, patterns=pattern_tracker_for(cfg.get(PATTERNS))),
            identity=Authenticator(parse_identity_config(cfg)),
            origin=origin,
            settings=cfg.get(MIDDLEWARE),
            audit=AuditTrail(cfg.get(AUDIT)),
            config=cfg,
            wiring=wiring,
            limits=cfg.get(LIMITS),
            registry=loaded.registry,
        )

    def _apply_limits(self, limits: Limits) -> None:
        """Size the buffer budget and the recorded values' caps to *limits* (at the start, and in
        a reload's swap, so requests see the new limits and the budget together)."""
        self.budget.resize(limits.max_buffered_bytes)
        if self.audit is not None:
            # Caps of recorded values, applied where records are rendered (the writer thread,
            # which is then the one thread that counts truncations).
            redactor = self.audit.redactor
            redactor.max_value = limits.max_recorded_value
            redactor.max_record = limits.max_record_bytes
            redactor.notify = self.telemetry.truncated

    def _count_key_reloads(self, identity: Authenticator) -> None:
        if isinstance(identity.keys, FileKeys):
            identity.keys.on_reload = lambda ok: self.telemetry.reload("keys", ok=ok)

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
        shared = self.gate.patterns.shared
        if shared is not None:
            await shared.start()  # one round trip at most; Redis down only degrades
        self._watch_geoip(self.origin)
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
        shared = self.gate.patterns.shared
        if shared is not None:
            await shared.close()
        await self._stop_geoip_watch()
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

    def _watch_geoip(self, origin: OriginResolver) -> None:
        self._geoip_watch = asyncio.create_task(
            origin.watch(self._geoip_reloaded), name="aidr-geoip-watch"
        )

    def _geoip_reloaded(self, results: tuple[ReloadResult, ...]) -> None:
        count_geoip_reload(self.telemetry, results)

    async def _stop_geoip_watch(self) -> None:
        task, self._geoip_watch = self._geoip_watch, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

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
        parts.append(f"patterns: {self.gate.patterns.describe()}")
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
        """Read the whole configuration again and apply every section that can change in place,
        at once; keep the last good state when anything in it fails."""
        async with self._reloading:  # a file change and a SIGHUP at once: one after the other
            report = await self._reload()
        self.last_reload = report
        self._policy_stamp = self._stamp()
        return report

    async def _reload(self) -> ReloadReport:
        old = self._serving
        running = old.config
        if running is None:
            return ReloadReport(False, False, "no configuration file to reload from")
        try:
            loaded = await asyncio.to_thread(
                partial(load_everything, running.file, running=running, registry=self.registry)
            )
            applied, state, pending = loaded.config, loaded.state, loaded.restart_pending
            new = await self._build(old, running, applied, state)
        except Exception as exc:  # whatever fails, the last good state keeps serving
            error = exc if isinstance(exc, ConfigError) else None
            reason = str(exc) if error is not None else f"{type(exc).__name__}: {exc}"
            report = ReloadReport(
                False,
                False,
                f"reload refused, keeping the last good state: {reason}",
                restart_pending=self.restart_pending,
            )
            logger.error("%s", report.detail)
            count_reload(self.telemetry, running, error or ConfigError([]))
            return report
        changed = _changed_sections(running, applied)
        # The swap: the gate's own state (for callers of Gate) and what requests read, with no
        # await between them, so no request on this loop sees one without the other. The
        # patterns tracker is kept (its counts are about traffic): it takes the new pack's
        # signals and the section's reloadable keys in the same swap.
        self.gate.swap(state, patterns=applied.get(PATTERNS))
        self._serving = new
        self._apply_limits(new.limits)
        registry = applied.registry_settings
        if registry is not None:
            self.streams.enabled = registry.cut_streams
        self.streams.recheck()  # a stream the new pack (or registry file, or keys) denies is cut
        await self._retire(old, new)
        self.restart_pending = pending
        self.telemetry.restart_pending(len(pending))
        count_reload(self.telemetry, applied, None)  # the packs, registry and catalogue
        for name in changed:  # and each section applied in place (the registry: counted above)
            if name != REGISTRY.name:
                self.telemetry.reload(name, ok=True)
        detail = (
            f"reloaded: pack {state.pack.id} ({state.pack.digest[:19]}), "
            f"{registry_summary(state.registry, self.registry)}, {len(state.catalog)} models"
            + (f"; sections changed: {', '.join(changed)}" if changed else "")
        )
        logger.info("%s", detail)  # and what waits for a restart in a WARNING of its own:
        if pending:
            logger.warning(
                "not applied, each needs a restart (running with the values from the start): %s",
                ", ".join(pending),
            )
            detail += f"; not applied, needs a restart: {', '.join(pending)}"
        return ReloadReport(True, True, detail, restart_pending=pending)

    async def _build(
        self, old: Serving, running: GateConfig, config: GateConfig, state: GateState
    ) -> Serving:
        """The new serving state: stages whose settings did not change are kept as they are (the
        token cache, the fetched keys, the open GeoIP databases); new ones are started first."""
        identity = old.identity
        identity_settings = parse_identity_config(config)
        if identity_settings != running.get(IDENTITY) or identity_settings != identity.config:
            identity = Authenticator(identity_settings)
            self._count_key_reloads(identity)
            if self._watching:  # removed keys cut the streams admitted with them
                identity.keys.add_listener(self.streams.keys_changed)
            if self.started:
                await identity.start()  # a key file that fails to load refuses the reload
        origin = old.origin
        network, geoip = config.get(NETWORK), config.get(GEOIP)
        if network != running.get(NETWORK) or geoip != running.get(GEOIP):
            try:
                origin = await asyncio.to_thread(build_origin_resolver, network, geoip)
            except BaseException:
                if identity is not old.identity:
                    await identity.close()
                raise
        return Serving(state, identity, origin, config.get(MIDDLEWARE), config, config.get(LIMITS))

    async def _retire(self, old: Serving, new: Serving) -> None:
        """Close the stages the new state replaced (after the swap: lookups are synchronous on
        this loop, so none is using them now)."""
        if new.identity is not old.identity:
            await old.identity.close()
        if new.origin is not old.origin:
            await self._stop_geoip_watch()
            old.origin.close()
            if self.started:
                self._watch_geoip(new.origin)

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
                # Requests read the serving state: the new table goes in with it, at once.
                screened = dataclasses.replace(state, screening=fresh)
                self.gate.swap(screened)
                self._serving = dataclasses.replace(self._serving, state=screened)

    async def _watch_policy(self) -> None:
        while True:
            await asyncio.sleep(self._watch_interval)
            stamp = await asyncio.to_thread(self._stamp)
            if stamp != self._policy_stamp:
                await self.reload()


def _keep_restart_only(old: GateConfig, new: GateConfig) -> tuple[GateConfig, tuple[str, ...]]:
    """*new* with every restart-only setting as it runs now, and the key paths that differ."""
    kept: dict[str, Any] = {}
    pending: list[str] = []
    for section in SECTIONS:
        before, after = old.get(section), new.get(section)
        changes = section.restart_changes(before, after)
        if changes:
            pending += changes
            kept[section.name] = section.keep_running(before, after)
    return new.with_values(kept), tuple(pending)


def _changed_sections(old: GateConfig, new: GateConfig) -> list[str]:
    return [s.name for s in SECTIONS if old.get(s) != new.get(s)]
