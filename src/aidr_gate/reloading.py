"""Reloading a running gate: the configuration's files watched, read again, and swapped in whole.

A :class:`Reloader` belongs to one :class:`~aidr_gate.runtime.Runtime`. It watches the files the
configuration names (by inode, size and mtime: a Kubernetes ConfigMap swap and an edit in place
alike), the screening lists and the GeoIP databases; a reload reads the whole configuration in a
thread, builds a new :class:`~aidr_gate.serving.Serving` (keeping the stages whose settings did not
change) and hands it to the runtime's one swap. A reload that fails keeps the last good state and
says so; a changed setting that only a restart applies keeps its running value and is reported as
waiting for a restart, never as reloaded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from aidr_gate.asgi.streams import StreamBook
from aidr_gate.errors import ConfigError, Problem
from aidr_gate.gate import Gate, GateState, load_state
from aidr_gate.limits import LIMITS
from aidr_gate.patterns.settings import PATTERNS, PatternSettings
from aidr_gate.request.geo import ReloadResult
from aidr_gate.request.identity import Authenticator
from aidr_gate.request.jwks import FileKeys, RemoteJwks
from aidr_gate.request.origin import OriginResolver, build_origin_resolver
from aidr_gate.serving import Serving
from aidr_gate.settings.identity import IDENTITY
from aidr_gate.settings.loader import GateConfig, parse_identity_config, read_config
from aidr_gate.settings.middleware import MIDDLEWARE
from aidr_gate.settings.origin import GEOIP, NETWORK
from aidr_gate.settings.sections import SECTIONS
from aidr_gate.stores.cache import RegistryView
from aidr_gate.stores.settings import REGISTRY, open_registry, registry_summary
from aidr_gate.tasks import stop_task
from aidr_gate.telemetry import Telemetry
from aidr_gate.telemetry.wiring import count_geoip_reload, count_reload

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


class Served(Protocol):
    """What a reloader reads and swaps of its runtime."""

    gate: Gate
    registry: RegistryView | None
    streams: StreamBook
    telemetry: Telemetry
    started: bool
    watching: bool  # registry changes and removed keys cut admitted streams
    last_reload: ReloadReport | None
    restart_pending: tuple[str, ...]

    @property
    def serving(self) -> Serving:
        """The state requests are decided with now."""

    def swap(
        self, serving: Serving, patterns: PatternSettings | None = None, *, whole: bool = True
    ) -> None:
        """Serve *serving* from now on (see :meth:`aidr_gate.runtime.Runtime.swap`)."""


def count_key_reloads(served: Served, identity: Authenticator) -> None:
    """Count the reloads of a key file in the runtime's telemetry."""
    if isinstance(identity.keys, FileKeys):
        identity.keys.on_reload = lambda ok: served.telemetry.reload("keys", ok=ok)


class Reloader:
    """The watches of one runtime and its reload: files, screening lists, GeoIP databases."""

    def __init__(self, served: Served, watch_interval: float) -> None:
        self._served = served
        self._watch_interval = watch_interval
        self._tasks: list[asyncio.Task[None]] = []
        self._geoip_watch: asyncio.Task[None] | None = None
        self._reloading = asyncio.Lock()
        self._policy_stamp = self._stamp()

    def start(self) -> None:
        """Start watching (the runtime's start, once its stages run)."""
        served = self._served
        self._watch_geoip(served.serving.origin)
        if served.serving.config is not None and self._watch_interval > 0:
            self._tasks.append(asyncio.create_task(self._watch_policy(), name="aidr-policy-watch"))
        screening = served.gate.state.screening
        if screening is not None and screening.source is not None:
            self._tasks.append(
                asyncio.create_task(self._watch_screening(), name="aidr-screening-watch")
            )

    async def close(self) -> None:
        """Stop every watch."""
        for task in self._tasks:
            await stop_task(task)
        self._tasks.clear()
        await self._stop_geoip_watch()

    def _watch_geoip(self, origin: OriginResolver) -> None:
        self._geoip_watch = asyncio.create_task(
            origin.watch(self._geoip_reloaded), name="aidr-geoip-watch"
        )

    def _geoip_reloaded(self, results: tuple[ReloadResult, ...]) -> None:
        count_geoip_reload(self._served.telemetry, results)

    async def _stop_geoip_watch(self) -> None:
        task, self._geoip_watch = self._geoip_watch, None
        await stop_task(task)

    def _watched_files(self) -> list[Path]:
        if self._served.serving.config is None:
            return []
        state = self._served.gate.state
        files = [Path(self._served.serving.config.file), self._served.serving.config.catalog]
        if (
            self._served.serving.config.registry is not None
        ):  # a database store is followed, not polled
            files.append(self._served.serving.config.registry)
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
        self._served.last_reload = report
        self._policy_stamp = self._stamp()
        return report

    async def _reload(self) -> ReloadReport:
        old = self._served.serving
        running = old.config
        if running is None:
            return ReloadReport(False, False, "no configuration file to reload from")
        try:
            loaded = await asyncio.to_thread(
                partial(
                    load_everything, running.file, running=running, registry=self._served.registry
                )
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
                restart_pending=self._served.restart_pending,
            )
            logger.error("%s", report.detail)
            count_reload(self._served.telemetry, running, error or ConfigError([]))
            return report
        changed = _changed_sections(running, applied)
        # The swap: the gate's own state (for callers of Gate) and what requests read, with no
        # await between them, so no request on this loop sees one without the other. The
        # patterns tracker is kept (its counts are about traffic): it takes the new pack's
        # signals and the section's reloadable keys in the same swap.
        self._served.swap(new, applied.get(PATTERNS))
        await self._retire(old, new)
        self._served.restart_pending = pending
        self._served.telemetry.restart_pending(len(pending))
        count_reload(self._served.telemetry, applied, None)  # the packs, registry and catalogue
        for name in changed:  # and each section applied in place (the registry: counted above)
            if name != REGISTRY.name:
                self._served.telemetry.reload(name, ok=True)
        detail = (
            f"reloaded: pack {state.pack.id} ({state.pack.digest[:19]}), "
            f"{registry_summary(state.registry, self._served.registry)}, {len(state.catalog)} models"
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
            count_key_reloads(self._served, identity)
            if self._served.watching:  # removed keys cut the streams admitted with them
                identity.keys.add_listener(self._served.streams.keys_changed)
            if self._served.started:
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
            if self._served.started:
                self._watch_geoip(new.origin)

    async def reload_all(self) -> ReloadReport:
        """What SIGHUP does: reload the policy files, and the key file (or refetch the JWKS) and
        the GeoIP databases now rather than at their next check. Each keeps its last good state
        when its new one fails."""
        report = await self.reload()
        keys = self._served.serving.identity.keys
        if isinstance(keys, FileKeys):
            await keys.reload()  # counted by the key file's own reload hook
        elif isinstance(keys, RemoteJwks):
            self._served.telemetry.reload("keys", ok=await keys.refresh())
        self._geoip_reloaded(await asyncio.to_thread(self._served.serving.origin.reload))
        return report

    async def _watch_screening(self) -> None:
        # The lists are checked in a thread; a change re-screens the registry there, and the new
        # table is swapped in with the state it was screened for (unless a reload replaced it).
        while True:
            table = self._served.gate.state.screening
            source = table.source if table is not None else None
            # A reload may drop the screening: section, or bring it back; the watch goes on.
            await asyncio.sleep(
                source.settings.check_interval
                if source is not None
                else DEFAULT_POLICY_WATCH_INTERVAL
            )
            state = self._served.gate.state
            table = state.screening
            if table is None or table.source is None:
                continue
            try:
                fresh, tried = await asyncio.to_thread(table.source.check, table, state.registry)
            except Exception:  # a bug here must not end the watch; the staleness bound holds
                logger.exception("screening check failed")
                continue
            if tried is not None:
                self._served.telemetry.reload("screening", ok=tried)
            if fresh is not None and self._served.gate.state is state:
                # Requests read the serving state: the new table goes in with it, at once.
                screened = dataclasses.replace(state, screening=fresh)
                served = self._served
                served.swap(dataclasses.replace(served.serving, state=screened), whole=False)

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
