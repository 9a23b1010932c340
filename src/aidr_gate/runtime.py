"""Everything a serving gate holds: the decision core, the stages, the audit trail, and their lifecycle.

The middleware and the sidecar share one :class:`Runtime`. Loading happens once, up front, through
the one settings loader, and a bad configuration fails with every problem listed. While serving,
background tasks refresh keys, watch GeoIP databases and watch the configuration's files (their
:class:`~aidr_gate.reloading.Reloader`). A reload builds a new :class:`~aidr_gate.serving.Serving`
(the gate state, the authenticator, the origin resolver, the middleware settings) and the runtime
swaps it in with one assignment: a request decides with the old one or the new one, never a mix.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from aidr_gate.asgi.deadlines import Deadlines
from aidr_gate.asgi.streams import AdmittedStream, StreamBook
from aidr_gate.audit.record import RequestContext
from aidr_gate.audit.trail import AuditTrail
from aidr_gate.decision import Decision
from aidr_gate.errors import Problem
from aidr_gate.gate import Gate
from aidr_gate.limits import LIMITS, BufferBudget, Limits
from aidr_gate.patterns.runtime import pattern_tracker_for
from aidr_gate.patterns.settings import PATTERNS, PatternSettings
from aidr_gate.reloading import (
    DEFAULT_POLICY_WATCH_INTERVAL,
    Loaded,
    Reloader,
    ReloadReport,
    count_key_reloads,
    load_everything,
)
from aidr_gate.request.identity import Authenticator
from aidr_gate.request.origin import OriginResolver, build_origin_resolver
from aidr_gate.serving import Serving
from aidr_gate.settings.audit import AUDIT
from aidr_gate.settings.loader import GateConfig, parse_identity_config
from aidr_gate.settings.middleware import MIDDLEWARE, MiddlewareSettings
from aidr_gate.settings.origin import GEOIP, NETWORK
from aidr_gate.stores.cache import RegistryView
from aidr_gate.stores.settings import registry_summary
from aidr_gate.telemetry import Telemetry
from aidr_gate.telemetry.settings import TELEMETRY
from aidr_gate.telemetry.wiring import TelemetryWiring

__all__ = ["Loaded", "ReloadReport", "Runtime", "Serving", "load_everything"]

logger = logging.getLogger("aidr_gate.runtime")


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
        count_key_reloads(self, identity)
        self._apply_limits(limits)
        self._unwatch: Callable[[], None] = lambda: None
        self.watching = False  # registry changes and removed keys cut admitted streams
        self.started = False
        self.last_reload: ReloadReport | None = None
        # Changed settings that wait for a restart, by key path (a reload never applies them).
        self.restart_pending: tuple[str, ...] = ()
        self._reloader = Reloader(self, policy_watch_interval)

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
        if not self.watching:
            if self.registry is not None:
                self._unwatch = self.registry.on_change(self.streams.changed)
            self.identity.keys.add_listener(self.streams.keys_changed)
            self.watching = True
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
        self._reloader.start()  # GeoIP, the configuration's files, the screening lists
        self.started = True
        logger.info("%s", self.summary())

    async def close(self, timeout: float = 10.0) -> None:
        """Stop background work and flush the audit trail within *timeout* seconds."""
        try:
            await self._reloader.close()
            shared = self.gate.patterns.shared
            if shared is not None:
                await shared.close()
            await self.streams.close()
            if self.registry is not None:
                self._unwatch()
                await self.registry.close()
        finally:
            # Whatever stopped the steps above (a shutdown cancelled, a failure), the trail is
            # still written out and closed: no record is lost to them.
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
        parts.append(f"patterns: {self.gate.patterns.describe()}")
        parts.append(f"audit: {self.audit.describe()}" if self.audit is not None else "audit: none")
        return "aidr-gate ready: " + "; ".join(parts)

    # -- reloading -----------------------------------------------------------------------------

    def swap(
        self, serving: Serving, patterns: PatternSettings | None = None, *, whole: bool = True
    ) -> None:
        """Serve *serving* from now on: the gate's own state (for callers of Gate) and what
        requests read, with no await between them, so no request on this loop sees one without
        the other. The patterns tracker is kept (its counts are about traffic): it takes the new
        pack's signals and the section's reloadable *patterns* keys in the same swap. *whole*: a
        reload's swap, which applies the new limits and rechecks the admitted streams (a new
        screening table alone does neither)."""
        self.gate.swap(serving.state, patterns=patterns)
        self._serving = serving
        if not whole:
            return
        self._apply_limits(serving.limits)
        registry = serving.config.registry_settings if serving.config is not None else None
        if registry is not None:
            self.streams.enabled = registry.cut_streams
        self.streams.recheck()  # a stream the new pack (or registry file, or keys) denies is cut

    async def reload(self) -> ReloadReport:
        """Read the whole configuration again and apply every section that can change in place,
        at once; keep the last good state when anything in it fails."""
        return await self._reloader.reload()

    async def reload_all(self) -> ReloadReport:
        """What SIGHUP does: :meth:`reload`, and the key file (or the JWKS) and the GeoIP
        databases now rather than at their next check."""
        return await self._reloader.reload_all()

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
        # Queued as it is, with no future unless the request must wait: fsync always, or a
        # backlog under on_failure deny (backpressure rather than a lost record).
        waiting = audit.record(decision, context)
        # Shielded: the future is shared by every record of its batch, and a cancelled request
        # (a client gone) must not cancel the others' wait.
        return True if waiting is None else bool(await asyncio.shield(waiting))
