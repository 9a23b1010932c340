"""Builders for the replay tests: real decisions under a pack, written through a real audit trail.

The generated traffic covers every tier (1, 2, 3, embargoed), entities with valid, expired,
suspended, out-of-scope and no agreements, a subsidiary of a Chinese parent, a denied party, an
entity known only from token claims and one nobody knows; closed models on both sides of 1e26 and
of 1e25, open models, an explicit catalogue tier and an unknown model; every anonymizer flag;
unknown countries; and times on both sides of 2026-02-03 (Cambodia leaves D:5) and of the
agreements' windows. Each request's facts are kept, so a test can decide them again, independently,
under another pack with :class:`Gate` and compare.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from aidr_gate.audit import AuditEvent, AuditTrail, Ending, RequestContext
from aidr_gate.audit.facts import full_tree
from aidr_gate.audit.record import Redactor, Renderer
from aidr_gate.audit.sinks.file import rotated_files
from aidr_gate.catalog import Model, Weights
from aidr_gate.decision import Decision
from aidr_gate.errors import BodyTooLarge, TokenExpired
from aidr_gate.facts import AnonymizerFlag, CountrySource, Identity, Origin
from aidr_gate.gate import Gate, state_for
from aidr_gate.policy.pack import load_pack
from aidr_gate.registry import AgreementStatus, Entity
from aidr_gate.settings.audit import (
    AuditConfig,
    FileSinkConfig,
    FsyncPolicy,
    RecordFormat,
    SigningConfig,
)
from support.policy_cases import sa, t

ENTITIES: tuple[Entity, ...] = (
    Entity("lab-us", "US", name="Frontier Lab (US)"),
    Entity("sakura-jp", "JP"),
    Entity(
        "merlion-sg",
        "SG",
        agreements=(sa("SA-SG", countries=("SG",), tiers=("controlled", "restricted")),),
    ),
    Entity("andes-br", "BR"),
    Entity("lumen-in", "IN", agreements=(sa("NVEU-IN", kind="nveu", until="2025-08-01"),)),
    Entity("oasis-ae", "AE", agreements=(sa("SA-AE", status=AgreementStatus.SUSPENDED),)),
    Entity("selat-my", "MY", agreements=(sa("SA-MY", countries=("MY",)),)),
    Entity("nordlys-se", "SE", parent="CN"),
    Entity("harbour-hk", "HK"),
    Entity("mekong-kh", "KH"),
    Entity("pars-ir", "IR"),
    Entity("macau-mo", "MO"),
    Entity("blocked-ae", "AE", denied=True, denied_reason="Entity List (fictional)"),
)
# Entities the registry does not know: one with token claims, one with nothing.
CLAIMS_ONLY = "claims-only"
NOBODY = "nobody-knows"
ENTITY_IDS: tuple[str, ...] = (*(e.id for e in ENTITIES), CLAIMS_ONLY, NOBODY)

MODELS: tuple[Model, ...] = (
    Model("aurora-frontier", 4.0e26, Weights.CLOSED, aliases=("aurora-frontier-2026-01",)),
    Model("aurora-mini", 6.0e25, Weights.CLOSED),
    Model("aurora-ft-custom", None, Weights.CLOSED, tier="controlled"),
    Model("llama-3.1-405b", 3.8e25, Weights.OPEN),
    Model("open-giant", 2.0e26, Weights.OPEN),
    Model("embed-small", 1.0e22, Weights.CLOSED),
)
MODEL_IDS: tuple[str, ...] = (*(m.id for m in MODELS), "aurora-frontier-2026-01", "mystery-model")

COUNTRIES: tuple[str | None, ...] = (
    "US",
    "DE",
    "JP",
    "SG",
    "BR",
    "IN",
    "MY",
    "SE",
    "CN",
    "HK",
    "KH",
    "IR",
    "RU",
    "MO",
    "AE",
    None,
)
FLAGS: tuple[frozenset[AnonymizerFlag], ...] = (
    frozenset(),
    frozenset(),
    frozenset(),
    frozenset({AnonymizerFlag.VPN}),
    frozenset({AnonymizerFlag.RESIDENTIAL_PROXY}),
    frozenset({AnonymizerFlag.TOR, AnonymizerFlag.HOSTING}),
    frozenset({AnonymizerFlag.PUBLIC_PROXY}),
)
START = t("2025-01-01")
END = t("2026-12-31")
KH_LEAVES = t("2026-02-03")


@dataclass(frozen=True, slots=True)
class Request:
    """The facts of one generated request: enough to decide it again under any pack."""

    entity: str | None
    claimed_headquarters: str | None
    country: str | None
    flags: frozenset[AnonymizerFlag]
    model: str | None
    at: float
    kind: str = "policy"  # "policy", "refusal" or "listing"

    @property
    def identity(self) -> Identity | None:
        """The verified identity of the request."""
        if self.entity is None:
            return None
        return Identity(
            entity_id=self.entity,
            subject=f"svc-{self.entity}",
            issuer="https://idp.example",
            key_id="k1",
            algorithm="ES256",
            claimed_headquarters=self.claimed_headquarters,
        )

    @property
    def origin(self) -> Origin:
        """Where the request came from."""
        return Origin(
            ip="203.0.113.7",
            resolved_by="x-forwarded-for[-1]",
            peer="10.0.0.2",
            country=self.country,
            country_source=CountrySource.GEOIP if self.country else CountrySource.NONE,
            anonymizer=self.flags,
            database="GeoIP2-Country",
            database_build="2025-06-03",
        )


def requests(count: int, seed: int = 7, *, extras: bool = True) -> list[Request]:
    """*count* requests over every kind of fact, in time order; a few refusals and listings."""
    rng = random.Random(seed)
    span_ms = int((END - START) * 1000)
    out: list[Request] = []
    times = sorted(START + rng.randrange(span_ms) / 1000 for _ in range(count))
    # Make sure both sides of KH's change are well covered, whatever the seed.
    for index in range(0, count, 7):
        times[index] = KH_LEAVES + rng.choice((-1, 1)) * rng.randrange(1, 86_400_000) / 1000
    times.sort()
    for index, at in enumerate(times):
        entity = rng.choice(ENTITY_IDS)
        kind = "policy"
        if extras and index % 97 == 5:
            kind = "refusal"
        elif extras and index % 89 == 3:
            kind = "listing"
        out.append(
            Request(
                entity=entity,
                claimed_headquarters=rng.choice(("CN", "DE", None))
                if entity == CLAIMS_ONLY
                else None,
                country=rng.choice(COUNTRIES),
                flags=rng.choice(FLAGS),
                model=rng.choice(MODEL_IDS),
                at=at,
                kind=kind,
            )
        )
    return out


def gate_for(pack: str) -> Gate:
    """A gate deciding with *pack* and the generated registry and catalogue."""
    return Gate(state_for(load_pack(pack), entities=list(ENTITIES), models=list(MODELS)))


def decide(gate: Gate, request: Request) -> Decision:
    """The decision *gate* makes for *request* (what the middleware would do for it)."""
    if request.kind == "refusal":
        error = TokenExpired() if request.at % 2 < 1 else BodyTooLarge()
        return gate.refuse(
            error, identity=None, origin=request.origin, model_id=request.model, at=request.at
        )
    if request.kind == "listing":
        return gate.decide_listing(identity=request.identity, origin=request.origin, at=request.at)
    return gate.decide(
        identity=request.identity, origin=request.origin, model_id=request.model, at=request.at
    )


def event_for(decision: Decision) -> AuditEvent:
    """The audit event the transport would submit for *decision*."""
    return AuditEvent(
        decision,
        RequestContext(
            method="POST",
            path="/v1/chat/completions",
            headers=(("user-agent", "replay-test"),),
            status=decision.status or 200,
            gate_us=35,
            ending=Ending.COMPLETED if decision.allowed else Ending.DENIED,
            body_bytes=200,
        ),
    )


class LegacyRenderer:
    """Schema 1 records, as gates wrote them before the compact record: the whole evidence tree
    in every record (``aidr`` last for ECS, ``unmapped.aidr`` for OCSF). Replay reads them still;
    tests that edit a record's evidence write these, whose tree sits in one place."""

    def __init__(self, record_format: RecordFormat = RecordFormat.ECS) -> None:
        self.name = record_format.value
        self.redactor = Redactor()

    def render(self, event: AuditEvent) -> bytes:
        tree = full_tree(event, lambda request: self.redactor.headers(request.headers))
        tree["schema"] = 1
        decision = event.decision
        identity = decision.evidence.identity
        if self.name == RecordFormat.OCSF.value:
            return orjson.dumps(
                {
                    "class_uid": 6003,
                    "time": int(decision.at * 1000),
                    "metadata": {"version": "1.3.0", "uid": decision.decision_id},
                    "unmapped": {"aidr": tree},
                }
            )
        return orjson.dumps(
            {
                "@timestamp": tree["decision"]["at"],
                "ecs": {"version": "8.11.0"},
                "event": {"id": decision.decision_id, "kind": "event"},
                "user": {"id": identity.subject if identity else None},
                "aidr": tree,
            }
        )

    def new_file(self) -> None:
        """Schema 1 records share nothing across records."""


def write_trail(
    directory: Path,
    decisions: Sequence[Decision],
    *,
    max_bytes: int = 1 << 30,
    compress: bool = False,
    record_format: RecordFormat = RecordFormat.ECS,
    renderer: Renderer | None = None,
    batch_size: int = 64,
    signing: SigningConfig | None = None,
    legacy: bool = False,
) -> list[Path]:
    """Write *decisions* through a real :class:`AuditTrail`; the journal's files, oldest first.

    *legacy*: schema 1 records (:class:`LegacyRenderer`), as older gates wrote them.
    """
    if legacy and renderer is None:
        renderer = LegacyRenderer(record_format)
    journal = FileSinkConfig(
        name="file",
        path=directory / "audit.jsonl",
        max_bytes=max_bytes,
        rotate_seconds=None,
        fsync=FsyncPolicy.NEVER,
        compress=compress,
        compression="gzip",
    )
    # Small batches, so the journal can rotate every few dozen records.
    config = AuditConfig(
        directory=directory,
        sinks=(journal,),
        format=record_format,
        batch_size=batch_size,
        signing=signing,
    )

    async def run() -> None:
        trail = AuditTrail(config, renderer=renderer)
        await trail.start()
        futures = []
        for decision in decisions:
            futures.append(trail.submit(event_for(decision)))
            if len(futures) >= 512:
                assert all(await asyncio.gather(*futures))
                futures.clear()
        assert all(await asyncio.gather(*futures))
        await trail.close(30)

    asyncio.run(run())
    active = directory / "audit.jsonl"
    files = rotated_files(active)
    return [*files, active] if active.exists() else files
