"""The transport-free core: resolved facts in, a :class:`Decision` out.

Shared by the middleware, the sidecar, ``check`` and ``replay``; nothing here knows about HTTP. The
loaded state (packs, registry, catalogue) is one immutable :class:`GateState`, swapped whole on reload,
so a request sees either the old state or the new one, never a mix.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from msgspec.structs import replace

from aidr_gate import errors
from aidr_gate.catalog import InMemoryCatalog, Model, ModelCatalog, load_catalog
from aidr_gate.decision import (
    Decision,
    DecisionIds,
    Effect,
    Evidence,
    Mode,
    ShadowResult,
)
from aidr_gate.errors import (
    AidrGateError,
    ConfigError,
    PolicyEvaluationError,
    Problem,
    RegistryUnavailable,
)
from aidr_gate.facts import Identity, Origin
from aidr_gate.patterns.settings import PATTERNS, PatternSettings
from aidr_gate.patterns.tracker import PatternTracker, Signals
from aidr_gate.policy.engine import PolicyEngine, Verdict
from aidr_gate.policy.pack import Pack, load_pack
from aidr_gate.registry import Entity, InMemoryRegistry, load_registry
from aidr_gate.settings.loader import GateConfig, load_config
from aidr_gate.settings.screening import SCREENING
from aidr_gate.stores.cache import MISS, Absent, Unavailable

if TYPE_CHECKING:
    from aidr_gate.screening.facts import ScreeningFacts, ScreeningTable

logger = logging.getLogger("aidr_gate")

# The reason an allowed model listing carries (the listing is filtered model by model), and the
# rule every listing decision names, allowed or denied.
LISTING_REASON = "MODELS_LISTED"
LISTING_RULE = "gate/list-models"


# What the caller already resolved of the entity: the entity, ``None`` (no such entity), or
# UNAVAILABLE; MISS (the default) asks the gate to look it up in the state's registry.
Resolved = Entity | Absent | None


class EntitySource(Protocol):
    """Where the gate finds entities: the file registry in memory, or a store's cache
    (:class:`~aidr_gate.stores.cache.EntityCache`). ``lookup`` never does I/O; ``fetch`` is
    awaited only after a MISS."""

    def lookup(self, entity_id: str) -> Entity | Absent | None:
        """The answer now: an entity, ``None``, MISS or UNAVAILABLE."""
        ...

    async def fetch(self, entity_id: str) -> Entity | Unavailable | None:
        """The answer after reading the store if needed."""
        ...

    @property
    def revision(self) -> str | None:
        """The registry revision the answers come from (named in every audit record)."""
        ...


@dataclass(frozen=True, slots=True)
class GateState:
    """Everything the gate decides with, loaded together and replaced together."""

    engine: PolicyEngine
    registry: EntitySource
    catalog: ModelCatalog
    mode: Mode = Mode.ENFORCE
    shadow: PolicyEngine | None = None
    # Every entity's screening result (built off the request path); None: nothing is screened.
    screening: ScreeningTable | None = None

    @property
    def pack(self) -> Pack:
        """The enforced pack."""
        return self.engine.pack


def load_state(
    config: GateConfig,
    *,
    warnings: list[Problem] | None = None,
    registry: EntitySource | None = None,
) -> GateState:
    """Load the packs, registry and catalogue a configuration names; every problem in one error.

    A database registry is not loaded here: the runtime passes its cache as *registry*.
    """
    errors: list[ConfigError] = []
    engine = shadow = None
    catalog: ModelCatalog | None = None
    try:
        engine = PolicyEngine(
            load_pack(config.policy.pack, config.policy.search, warnings=warnings)
        )
    except ConfigError as exc:
        errors.append(exc)
    if config.policy.shadow:
        try:
            shadow = PolicyEngine(
                load_pack(config.policy.shadow, config.policy.search, warnings=warnings)
            )
        except ConfigError as exc:
            errors.append(exc)
    if registry is None:
        try:
            registry = load_file_registry(config.registry)
        except ConfigError as exc:
            errors.append(exc)
    try:
        catalog = load_catalog(config.catalog)
    except ConfigError as exc:
        errors.append(exc)
    screening = None
    if registry is not None and config.get(SCREENING) is not None:
        from aidr_gate.screening.settings import load_screening  # only when lists are configured

        if not isinstance(registry, InMemoryRegistry):
            # Screening reads every entity at load; a database store is read one entity at a
            # time through its cache. Refused rather than served unscreened (fail closed).
            line = config.document.lines.get("screening") if config.document else None
            errors.append(
                ConfigError(
                    Problem(
                        config.file,
                        "screening",
                        "screening a registry held in a database is not supported yet: "
                        "use a registry file with screening:, or remove screening:",
                        line,
                    )
                )
            )
        else:
            try:
                screening = load_screening(config, registry)  # off the request path: at load
            except ConfigError as exc:
                errors.append(exc)
    if errors or engine is None or registry is None or catalog is None:
        raise ConfigError.merge(errors)
    return GateState(
        engine=engine,
        registry=registry,
        catalog=catalog,
        mode=config.mode,
        shadow=shadow,
        screening=screening,
    )


def load_file_registry(path: Path | None) -> InMemoryRegistry:
    """The registry file, with its revision (the SHA-256 of its bytes, as the file store names
    it); a configuration whose registry is a database has no file to load here."""
    from aidr_gate.stores.file import file_revision

    if path is None:
        raise ConfigError.single("registry", "", "the registry is a database store, not a file")
    registry = load_registry(path)
    try:
        registry.revision = file_revision(path)
    except OSError:  # replaced between loading and hashing: the next reload names it
        registry.revision = None
    return registry


def state_for(
    pack: Pack,
    *,
    entities: list[Entity] | None = None,
    models: list[Model] | None = None,
    mode: Mode = Mode.ENFORCE,
    shadow: Pack | None = None,
    screening: ScreeningTable | None = None,
) -> GateState:
    """An in-memory state (tests, embedding): no files involved."""
    return GateState(
        engine=PolicyEngine(pack),
        registry=InMemoryRegistry(entities or []),
        catalog=InMemoryCatalog(models or []),
        mode=mode,
        shadow=PolicyEngine(shadow) if shadow else None,
        screening=screening,
    )


class Gate:
    """Decides requests with the current :class:`GateState`; safe to share across tasks."""

    def __init__(
        self,
        state: GateState,
        *,
        clock: Callable[[], float] = time.time,
        patterns: PatternTracker | None = None,
    ) -> None:
        self._state = state
        self._clock = clock
        self._ids = DecisionIds()
        # Kept across reloads: the counts are about traffic, not about the pack.
        self.patterns = patterns or PatternTracker()
        self.patterns.want(_pattern_keys(state))

    @property
    def state(self) -> GateState:
        """The state decisions are made with now."""
        return self._state

    def swap(self, state: GateState, *, patterns: PatternSettings | None = None) -> GateState:
        """Replace the state atomically (one reference assignment); returns the old one.

        *patterns*: a reload's ``patterns:`` settings, applied to the kept tracker with the state.
        """
        self.patterns.want(_pattern_keys(state), settings=patterns)
        old, self._state = self._state, state
        return old

    @classmethod
    def from_config(cls, config: GateConfig) -> Gate:
        """Load everything the configuration names and build a gate.

        Its tracker follows the ``patterns:`` section, locally: a fleet's shared view is started
        by :class:`~aidr_gate.runtime.Runtime`, which a bare gate does not have.
        """
        return cls(load_state(config), patterns=PatternTracker(config.get(PATTERNS)))

    @classmethod
    def from_path(cls, path: str | Path | None = None) -> Gate:
        """Load a configuration file (or the embedded default) and build a gate."""
        return cls.from_config(load_config(path))

    # -- deciding --------------------------------------------------------------------------------

    def decide(
        self,
        *,
        identity: Identity | None,
        origin: Origin,
        model_id: str | None,
        at: float | None = None,
        state: GateState | None = None,
        entity: Resolved = MISS,
    ) -> Decision:
        """Decide one request whose identity and origin are resolved. Never raises: fails closed.

        *entity* is what the caller resolved (the middleware awaits a cache miss first); by
        default the state's registry is looked up, and an entity that is not at hand is denied
        with REGISTRY_UNAVAILABLE.
        """
        state = state or self._state
        when = self._clock() if at is None else at
        try:
            return self._decide(state, identity, origin, model_id, when, entity)
        except AidrGateError as exc:  # a stage that knows why it cannot answer (stale lists)
            return self.refuse(
                exc, identity=identity, origin=origin, model_id=model_id, at=when, state=state
            )
        except Exception as exc:  # fail closed: a bug in evaluation is a deny, never an allow
            logger.exception("policy evaluation failed; denying")
            return self.refuse(
                PolicyEvaluationError(type(exc).__name__),
                identity=identity,
                origin=origin,
                model_id=model_id,
                at=when,
                state=state,
            )

    def _decide(
        self,
        state: GateState,
        identity: Identity | None,
        origin: Origin,
        model_id: str | None,
        at: float,
        resolved: Resolved,
    ) -> Decision:
        entity_id = identity.entity_id if identity is not None else None
        entity: Entity | None = None
        if entity_id:
            if resolved is MISS:
                resolved = state.registry.lookup(entity_id)
            if resolved.__class__ is Absent:  # not at hand: fail closed
                return self.refuse(
                    RegistryUnavailable("the entity registry cannot be reached"),
                    identity=identity,
                    origin=origin,
                    model_id=model_id,
                    at=at,
                    state=state,
                )
            entity = resolved  # type: ignore[assignment]
        headquarters, parent, source, disagree = jurisdiction_of(entity, identity)
        model = state.catalog.get(model_id) if model_id else None
        screened = screening_of(state, entity)
        if screened is not None and parent is None and screened.controlling_country is not None:
            parent = screened.controlling_country  # no stated parent: the controlling owners'
        patterns = self.patterns
        signals = None
        if patterns.active:
            worse = patterns.needs_worse and state.engine.origin_worse(
                origin.country, headquarters, at
            )
            signals = patterns.observe(at, identity, origin, worse)
        verdict = _evaluate(
            state.engine, entity, headquarters, parent, model, origin, at, screened, signals
        )
        shadow = None
        if state.shadow is not None:
            other = _evaluate(
                state.shadow, entity, headquarters, parent, model, origin, at, screened, signals
            )
            shadow = ShadowResult(
                outcome=other.outcome,
                policy=other.policy,
                agrees=other.outcome.effect is verdict.outcome.effect,
            )
        outcome = verdict.outcome
        # Positional: frozen dataclasses pay per keyword and per field; this runs per request.
        return Decision(
            self._ids.next(),
            at,
            outcome.effect,
            outcome.status,
            verdict.reasons,
            outcome.rule,
            verdict.policy,
            Evidence(
                identity,
                origin,
                entity_id,
                entity,
                source,
                disagree,
                model_id,
                model,
                verdict.model_tier_source,
                verdict.facts,
                verdict.agreement,
                screened,
                signals,
            ),
            state.mode,
            shadow,
            state.registry.revision,
        )

    def decide_listing(
        self,
        *,
        identity: Identity | None,
        origin: Origin,
        at: float | None = None,
        state: GateState | None = None,
        entity: Resolved = MISS,
    ) -> Decision:
        """Decide a model listing: allowed when the caller may use at least one catalogue model.

        The listing itself is then filtered model by model (see :meth:`verdict`), so listing and
        invoking agree. When every model is denied, the answer is the deny for the first one.
        """
        state = state or self._state
        when = self._clock() if at is None else at
        if entity is MISS and identity is not None and identity.entity_id:
            entity = state.registry.lookup(identity.entity_id)
        if entity.__class__ is Absent:
            return self.decide(
                identity=identity, origin=origin, model_id=None, at=when, state=state, entity=entity
            )
        allowed = next(
            self.allowed_models(
                identity=identity, origin=origin, at=when, state=state, entity=entity
            ),
            None,
        )
        first = next(iter(state.catalog), None)
        model = allowed or first
        decision = self.decide(
            identity=identity,
            origin=origin,
            model_id=model.id if model else None,
            at=when,
            state=state,
            entity=entity,
        )
        if allowed is not None and decision.effect is not Effect.DENY:
            decision = replace(
                decision, effect=Effect.ALLOW, status=None, reasons=(LISTING_REASON,)
            )
        # Either way the record is marked as a listing, so audit readers and replay do not take
        # it for a request for that one model. A deny keeps its own status and reasons: when every
        # model is denied, the first one's; when deciding failed, the failure (fail closed).
        return replace(
            decision,
            rule=LISTING_RULE,
            evidence=replace(decision.evidence, model_requested=None, model_tier_source="listing"),
        )

    def refuse(
        self,
        error: AidrGateError,
        *,
        identity: Identity | None = None,
        origin: Origin | None = None,
        model_id: str | None = None,
        at: float | None = None,
        state: GateState | None = None,
    ) -> Decision:
        """A deny for a stage that failed before the policy could run (bad token, bad body...)."""
        state = state or self._state
        when = self._clock() if at is None else at
        return Decision(
            decision_id=self._ids.next(),
            at=when,
            effect=Effect.DENY,
            status=error.status,
            reasons=(error.reason,),
            rule=f"gate/{error.stage}",  # the stage of its code's registry entry
            # The engine's shared reference (the status in force at *when*): a new one per
            # refusal would make every refused request a class of its own in the audit trail's
            # facts cache.
            policy=state.engine.policy_ref(when),
            evidence=Evidence(
                identity=identity,
                origin=origin,
                entity_id=identity.entity_id if identity else None,
                entity=None,
                entity_source="none",
                claims_disagree=(),
                model_requested=model_id,
                model=None,
                model_tier_source="not-evaluated",
                facts=None,
                agreement=None,
            ),
            mode=state.mode,
            # getattr: a refusal must not fail, whatever the registry object is.
            registry=getattr(state.registry, "revision", None),
        )

    def verdict(
        self,
        *,
        identity: Identity | None,
        origin: Origin,
        model: Model | None,
        at: float | None = None,
        state: GateState | None = None,
        entity: Resolved = MISS,
    ) -> Verdict:
        """The enforced pack's verdict for one model, without minting a decision (model listing).

        Raises :class:`RegistryUnavailable` when the entity is not at hand (callers deny)."""
        state = state or self._state
        entity_id = identity.entity_id if identity is not None else None
        if not entity_id:
            entity = None
        elif entity is MISS:
            entity = state.registry.lookup(entity_id)
        if entity.__class__ is Absent:
            raise RegistryUnavailable("the entity registry cannot be reached")
        known: Entity | None = entity  # type: ignore[assignment]
        headquarters, parent, _, _ = jurisdiction_of(known, identity)
        when = self._clock() if at is None else at
        screened = screening_of(state, known)
        if screened is not None and parent is None and screened.controlling_country is not None:
            parent = screened.controlling_country
        patterns = self.patterns
        signals = patterns.signals(when, identity, origin) if patterns.active else None
        return _evaluate(
            state.engine, known, headquarters, parent, model, origin, when, screened, signals
        )

    def allowed_models(
        self,
        *,
        identity: Identity | None,
        origin: Origin,
        at: float | None = None,
        state: GateState | None = None,
        entity: Resolved = MISS,
    ) -> Iterator[Model]:
        """The catalogue's models this caller may use now, under the enforced pack (none when
        the entity is not at hand)."""
        state = state or self._state
        when = self._clock() if at is None else at
        if entity is MISS and identity is not None and identity.entity_id:
            entity = state.registry.lookup(identity.entity_id)
        if entity.__class__ is Absent:
            return
        for model in state.catalog:
            verdict = self.verdict(
                identity=identity, origin=origin, model=model, at=when, state=state, entity=entity
            )
            if verdict.outcome.effect is not Effect.DENY:
                yield model


def _evaluate(
    engine: PolicyEngine,
    entity: Entity | None,
    headquarters: str | None,
    parent: str | None,
    model: Model | None,
    origin: Origin,
    at: float,
    screened: ScreeningFacts | None,
    signals: Signals | None = None,
) -> Verdict:
    # One argument list for the enforced pack and the shadow pack alike; a function, not a
    # closure built per request.
    return engine.evaluate(
        entity=entity,
        headquarters=headquarters,
        parent=parent,
        model=model,
        network_country=origin.country,
        anonymizer=origin.anonymizer,
        at=at,
        screening=screened.flags if screened is not None else _NOT_SCREENED,
        region=origin.region,
        signals=signals,
    )


_NOT_SCREENED: frozenset[str] = frozenset()


def _pattern_keys(state: GateState) -> tuple[str, ...]:
    """The pattern signals the enforced and the shadow pack test (what the tracker must track)."""
    keys = state.engine.pattern_keys
    return keys + state.shadow.pattern_keys if state.shadow is not None else keys


def screening_of(state: GateState, entity: Entity | None) -> ScreeningFacts | None:
    """The entity's screening result: one dict lookup. Raises when the lists are too stale."""
    table = state.screening
    if table is None or entity is None:
        return None
    if table.unavailable is not None:
        raise errors.ScreeningUnavailable(table.unavailable)
    return table.facts.get(entity.id, table.unscreened)  # ScreeningTable.get, without the call


def jurisdiction_of(
    entity: Entity | None, identity: Identity | None
) -> tuple[str | None, str | None, str, tuple[str, ...]]:
    """Headquarters and parent countries: the registry wins over token claims; note disagreements."""
    claimed_hq = identity.claimed_headquarters if identity is not None else None
    claimed_parent = identity.claimed_parent if identity is not None else None
    if entity is not None:
        disagree: list[str] = []
        if claimed_hq is not None and claimed_hq != entity.headquarters:
            disagree.append("headquarters")
        if claimed_parent is not None and claimed_parent != entity.ultimate_parent:
            disagree.append("parent")
        return entity.headquarters, entity.parent, "registry", tuple(disagree)
    if claimed_hq is not None:
        return claimed_hq, claimed_parent, "claims", ()
    return None, None, "none", ()
