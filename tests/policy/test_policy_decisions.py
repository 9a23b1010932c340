"""The decision table: what each bundled pack decides, case by case, through the public Gate API."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cache

import pytest

from aidr_gate.catalog import Model, Weights
from aidr_gate.decision import Decision, Effect
from aidr_gate.facts import AnonymizerFlag, Identity, declared_origin
from aidr_gate.gate import Gate, state_for
from aidr_gate.policy.engine import PolicyEngine, Verdict
from aidr_gate.policy.pack import load_pack
from aidr_gate.registry import AgreementStatus, Entity
from support.policy_cases import sa, t

ENTITIES = [
    Entity("us-lab", "US"),
    Entity("jp-co", "JP"),
    Entity("sg-agree", "SG", agreements=(sa("SA-SG", countries=("SG",)),)),
    Entity("br-none", "BR"),
    Entity(
        "in-window",
        "IN",
        agreements=(sa("NVEU-IN", kind="nveu", since="2025-02-01", until="2025-08-01"),),
    ),
    Entity("in-marked-expired", "IN", agreements=(sa("SA-IN", status=AgreementStatus.EXPIRED),)),
    Entity("ae-suspended", "AE", agreements=(sa("SA-AE1", status=AgreementStatus.SUSPENDED),)),
    Entity("ae-revoked", "AE", agreements=(sa("SA-AE2", status=AgreementStatus.REVOKED),)),
    Entity("my-scoped", "MY", agreements=(sa("SA-MY", countries=("MY",)),)),
    Entity("my-tier-scope", "MY", agreements=(sa("SA-MY2", tiers=("restricted",)),)),
    Entity("future-agree", "BR", agreements=(sa("SA-BR", since="2027-01-01", until="2028-01-01"),)),
    Entity("contract-only", "BR", agreements=(sa("C-BR", kind="contract"),)),
    Entity(
        "two-agreements",
        "BR",
        agreements=(sa("SA-OLD", status=AgreementStatus.REVOKED), sa("SA-NEW", countries=("BR",))),
    ),
    Entity("se-cn", "SE", parent="CN"),
    Entity("de-ru", "DE", parent="RU"),
    Entity("hk-co", "HK"),
    Entity("mo-co", "MO"),
    Entity("kh-co", "KH"),
    Entity("ir-co", "IR"),
    Entity("de-parent-ir", "DE", parent="IR"),
    Entity("denied-ae", "AE", denied=True, denied_reason="Entity List"),
    Entity("denied-us", "US", denied=True, denied_reason="host's own list"),
    Entity("cn-co", "CN"),
]

MODELS = [
    Model("frontier", 4.0e26, Weights.CLOSED, aliases=("frontier-2026-01",)),
    Model("mini", 6.0e25, Weights.CLOSED),
    Model("small", 1.0e22, Weights.CLOSED),
    Model("llama", 3.8e25, Weights.OPEN),
    Model("open-giant", 2.0e26, Weights.OPEN),
    Model("ft", None, Weights.CLOSED, tier="controlled"),
    Model("bogus-tier", None, Weights.CLOSED, tier="no-such-tier"),
    Model("at-threshold", 1.0e26, Weights.CLOSED),
    Model("below-threshold", 9.9e25, Weights.CLOSED),
]


@cache
def gate_for(pack_id: str) -> Gate:
    """A gate over a bundled pack and the test registry and catalogue."""
    return Gate(state_for(load_pack(pack_id), entities=ENTITIES, models=MODELS))


@dataclass(frozen=True)
class Case:
    """One row of the table."""

    pack: str
    entity: str | None
    country: str | None
    model: str
    effect: Effect
    status: int | None
    reasons: tuple[str, ...]
    at: str = "2025-03-01"
    flags: tuple[str, ...] = ()
    claimed_hq: str | None = None
    claimed_parent: str | None = None

    def decide(self) -> Decision:
        """Run the case through the gate."""
        identity = None
        if self.entity is not None:
            identity = Identity(
                self.entity,
                claimed_headquarters=self.claimed_hq,
                claimed_parent=self.claimed_parent,
                method="declared",
            )
        origin = declared_origin(self.country, frozenset(AnonymizerFlag(f) for f in self.flags))
        return gate_for(self.pack).decide(
            identity=identity, origin=origin, model_id=self.model, at=t(self.at)
        )


A, R, S, B = "aidr-2025-01", "aidr-2025-05-rescinded", "strict-hypothetical", "us-embargo-baseline"
ALLOW, DENY, LOG = Effect.ALLOW, Effect.DENY, Effect.LOG
OK = ("ALLOWED",)
NVA = "NO_VALID_AGREEMENT"
T3 = ("TIER3_CONTROLLED_MODEL",)
EMB = ("EMBARGOED_JURISDICTION",)
MISMATCH = ("ORIGIN_TIER_WORSE_THAN_HEADQUARTERS",)

CASES: dict[str, Case] = {
    # --- aidr-2025-01: Tier 1 ---------------------------------------------------------------
    "a/tier1-controlled-allowed": Case(A, "us-lab", "US", "frontier", ALLOW, None, OK),
    "a/tier1-small-allowed": Case(A, "us-lab", "US", "small", ALLOW, None, OK),
    "a/jp-from-jp-controlled": Case(A, "jp-co", "JP", "frontier", ALLOW, None, OK),
    "a/jp-from-sg-is-log": Case(A, "jp-co", "SG", "small", LOG, None, MISMATCH),
    "a/jp-from-sg-controlled-needs-agreement": Case(
        A, "jp-co", "SG", "frontier", DENY, 403, (NVA, "AGREEMENT_NONE")
    ),
    "a/us-from-hk-small-is-log": Case(A, "us-lab", "HK", "small", LOG, None, MISMATCH),
    "a/us-from-hk-controlled-tier3": Case(A, "us-lab", "HK", "frontier", DENY, 451, T3),
    # --- aidr-2025-01: Tier 2 and agreements ------------------------------------------------------
    "a/sg-with-agreement": Case(A, "sg-agree", "SG", "frontier", ALLOW, None, OK),
    "a/sg-agreement-other-country": Case(
        A, "sg-agree", "MY", "frontier", DENY, 403, (NVA, "AGREEMENT_OUT_OF_SCOPE")
    ),
    "a/br-no-agreement": Case(A, "br-none", "BR", "frontier", DENY, 403, (NVA, "AGREEMENT_NONE")),
    "a/br-uncontrolled-closed": Case(A, "br-none", "BR", "mini", ALLOW, None, OK),
    "a/br-open-weights-above-1e26": Case(A, "br-none", "BR", "open-giant", ALLOW, None, OK),
    "a/br-open-llama": Case(A, "br-none", "BR", "llama", ALLOW, None, OK),
    "a/in-agreement-inside-window": Case(A, "in-window", "IN", "frontier", ALLOW, None, OK),
    "a/in-agreement-window-ended": Case(
        A, "in-window", "IN", "frontier", DENY, 403, (NVA, "AGREEMENT_EXPIRED"), at="2025-09-01"
    ),
    "a/in-agreement-marked-expired": Case(
        A, "in-marked-expired", "IN", "frontier", DENY, 403, (NVA, "AGREEMENT_EXPIRED")
    ),
    "a/ae-agreement-suspended": Case(
        A, "ae-suspended", "AE", "frontier", DENY, 403, (NVA, "AGREEMENT_SUSPENDED")
    ),
    "a/ae-agreement-revoked": Case(
        A, "ae-revoked", "AE", "frontier", DENY, 403, (NVA, "AGREEMENT_REVOKED")
    ),
    "a/agreement-not-yet-valid": Case(
        A, "future-agree", "BR", "frontier", DENY, 403, (NVA, "AGREEMENT_NOT_YET_VALID")
    ),
    "a/my-agreement-in-scope": Case(A, "my-scoped", "MY", "frontier", ALLOW, None, OK),
    "a/my-agreement-wrong-tier": Case(
        A, "my-tier-scope", "MY", "frontier", DENY, 403, (NVA, "AGREEMENT_OUT_OF_SCOPE")
    ),
    "a/agreement-type-not-accepted": Case(
        A, "contract-only", "BR", "frontier", DENY, 403, (NVA, "AGREEMENT_NONE")
    ),
    "a/revoked-then-valid-agreement": Case(A, "two-agreements", "BR", "frontier", ALLOW, None, OK),
    "a/my-agreement-unknown-country": Case(
        A, "my-scoped", None, "frontier", DENY, 451, ("NETWORK_COUNTRY_UNKNOWN",)
    ),
    # --- aidr-2025-01: Tier 3 by headquarters, parent or network ----------------------------------
    "a/swedish-subsidiary-of-chinese-parent": Case(A, "se-cn", "SE", "frontier", DENY, 451, T3),
    "a/swedish-subsidiary-small-model": Case(A, "se-cn", "SE", "small", ALLOW, None, OK),
    "a/german-subsidiary-of-russian-parent": Case(A, "de-ru", "DE", "frontier", DENY, 451, T3),
    "a/hong-kong-is-tier3": Case(A, "hk-co", "HK", "frontier", DENY, 451, T3),
    "a/hong-kong-small-model": Case(A, "hk-co", "HK", "mini", ALLOW, None, OK),
    "a/macau-is-tier3": Case(A, "mo-co", "MO", "frontier", DENY, 451, T3),
    "a/china-is-tier3": Case(A, "cn-co", "CN", "frontier", DENY, 451, T3),
    "a/kh-tier3-before-2026-02-03": Case(
        A, "kh-co", "KH", "frontier", DENY, 451, T3, at="2026-02-02T23:59:59Z"
    ),
    "a/kh-tier2-from-2026-02-03": Case(
        A, "kh-co", "KH", "frontier", DENY, 403, (NVA, "AGREEMENT_NONE"), at="2026-02-03"
    ),
    "a/kh-open-model-before": Case(A, "kh-co", "KH", "llama", ALLOW, None, OK, at="2026-01-15"),
    "a/us-from-kh-before-is-log": Case(
        A, "us-lab", "KH", "small", LOG, None, MISMATCH, at="2026-01-15"
    ),
    "a/us-from-kh-after-still-log": Case(
        A, "us-lab", "KH", "small", LOG, None, MISMATCH, at="2026-03-01"
    ),
    "a/us-from-kh-controlled-before": Case(
        A, "us-lab", "KH", "frontier", DENY, 451, T3, at="2026-01-15"
    ),
    "a/us-from-kh-controlled-after": Case(
        A, "us-lab", "KH", "frontier", DENY, 403, (NVA, "AGREEMENT_NONE"), at="2026-03-01"
    ),
    # --- aidr-2025-01: embargo and denied parties (inherited from the baseline) -------------------
    "a/iran-headquarters": Case(A, "ir-co", "DE", "small", DENY, 451, EMB),
    "a/iran-network": Case(A, "us-lab", "IR", "llama", DENY, 451, EMB),
    "a/cuba-network": Case(A, "us-lab", "CU", "small", DENY, 451, EMB),
    "a/north-korea-network-controlled": Case(A, "us-lab", "KP", "frontier", DENY, 451, EMB),
    "a/syria-network": Case(A, "jp-co", "SY", "open-giant", DENY, 451, EMB),
    "a/iranian-parent": Case(A, "de-parent-ir", "DE", "small", DENY, 451, EMB),
    "a/denied-entity": Case(A, "denied-ae", "AE", "small", DENY, 403, ("ENTITY_DENIED",)),
    "a/denied-entity-tier1": Case(A, "denied-us", "US", "llama", DENY, 403, ("ENTITY_DENIED",)),
    # --- aidr-2025-01: anonymizers and unknowns --------------------------------------------------
    "a/vpn-controlled": Case(
        A, "us-lab", "US", "frontier", DENY, 451, ("ANONYMIZED_ORIGIN",), flags=("vpn",)
    ),
    "a/tor-controlled": Case(
        A, "jp-co", "JP", "frontier", DENY, 451, ("ANONYMIZED_ORIGIN",), flags=("tor",)
    ),
    "a/hosting-controlled": Case(
        A, "us-lab", "US", "frontier", DENY, 451, ("ANONYMIZED_ORIGIN",), flags=("hosting",)
    ),
    "a/proxy-controlled": Case(
        A, "us-lab", "US", "frontier", DENY, 451, ("ANONYMIZED_ORIGIN",), flags=("public_proxy",)
    ),
    "a/tor-small-model": Case(A, "us-lab", "US", "small", ALLOW, None, OK, flags=("tor",)),
    "a/residential-proxy-not-listed": Case(
        A, "us-lab", "US", "frontier", ALLOW, None, OK, flags=("residential_proxy",)
    ),
    "a/unknown-country-controlled": Case(
        A, "us-lab", None, "frontier", DENY, 451, ("NETWORK_COUNTRY_UNKNOWN",)
    ),
    "a/unknown-country-small": Case(A, "us-lab", None, "small", ALLOW, None, OK),
    "a/unknown-entity-controlled": Case(
        A, "ghost", "US", "frontier", DENY, 403, ("HEADQUARTERS_UNKNOWN",)
    ),
    "a/unknown-entity-small": Case(A, "ghost", "US", "small", ALLOW, None, OK),
    "a/no-identity-controlled": Case(
        A, None, "US", "frontier", DENY, 403, ("HEADQUARTERS_UNKNOWN",)
    ),
    "a/claims-give-headquarters": Case(
        A, "ghost", "JP", "frontier", ALLOW, None, OK, claimed_hq="JP"
    ),
    "a/claims-give-tier3-parent": Case(
        A, "ghost", "JP", "frontier", DENY, 451, T3, claimed_hq="JP", claimed_parent="CN"
    ),
    "a/registry-wins-over-claims": Case(
        A, "us-lab", "US", "frontier", ALLOW, None, OK, claimed_hq="CN"
    ),
    # --- aidr-2025-01: model tiers -----------------------------------------------------------------
    "a/unknown-model-is-controlled": Case(
        A, "br-none", "BR", "mystery", DENY, 403, (NVA, "AGREEMENT_NONE", "MODEL_UNKNOWN")
    ),
    "a/unknown-model-tier3": Case(A, "se-cn", "SE", "mystery", DENY, 451, (*T3, "MODEL_UNKNOWN")),
    "a/unknown-model-tier1": Case(A, "us-lab", "US", "mystery", ALLOW, None, OK),
    "a/explicit-catalog-tier": Case(A, "br-none", "BR", "ft", DENY, 403, (NVA, "AGREEMENT_NONE")),
    "a/catalog-tier-unknown-to-pack": Case(
        A, "br-none", "BR", "bogus-tier", DENY, 403, (NVA, "AGREEMENT_NONE")
    ),
    "a/alias": Case(A, "br-none", "BR", "frontier-2026-01", DENY, 403, (NVA, "AGREEMENT_NONE")),
    "a/case-insensitive-name": Case(
        A, "br-none", "BR", "FRONTIER", DENY, 403, (NVA, "AGREEMENT_NONE")
    ),
    "a/exactly-1e26-is-controlled": Case(
        A, "br-none", "BR", "at-threshold", DENY, 403, (NVA, "AGREEMENT_NONE")
    ),
    "a/just-below-1e26": Case(A, "br-none", "BR", "below-threshold", ALLOW, None, OK),
    # --- aidr-2025-05-rescinded ------------------------------------------------------------------
    "r/swedish-subsidiary-of-chinese-parent": Case(
        R,
        "se-cn",
        "SE",
        "frontier",
        DENY,
        451,
        ("D5_HEADQUARTERED_CONTROLLED_MODEL",),
        at="2025-06-01",
    ),
    "r/tier2-needs-no-agreement": Case(
        R, "br-none", "BR", "frontier", ALLOW, None, OK, at="2025-06-01"
    ),
    "r/network-country-no-longer-matters": Case(
        R, "us-lab", "HK", "frontier", ALLOW, None, OK, at="2025-06-01"
    ),
    "r/hong-kong-headquarters": Case(
        R,
        "hk-co",
        "HK",
        "frontier",
        DENY,
        451,
        ("D5_HEADQUARTERED_CONTROLLED_MODEL",),
        at="2025-06-01",
    ),
    "r/macau-headquarters": Case(
        R,
        "mo-co",
        "PT",
        "frontier",
        DENY,
        451,
        ("D5_HEADQUARTERED_CONTROLLED_MODEL",),
        at="2025-06-01",
    ),
    "r/kh-before-2026-02-03": Case(
        R,
        "kh-co",
        "KH",
        "frontier",
        DENY,
        451,
        ("D5_HEADQUARTERED_CONTROLLED_MODEL",),
        at="2026-01-15",
    ),
    "r/kh-after-2026-02-03": Case(R, "kh-co", "KH", "frontier", ALLOW, None, OK, at="2026-03-01"),
    "r/d5-small-model": Case(R, "cn-co", "CN", "small", ALLOW, None, OK, at="2025-06-01"),
    "r/iran-still-embargoed": Case(R, "ir-co", "IR", "small", DENY, 451, EMB, at="2025-06-01"),
    "r/vpn-no-longer-matters": Case(R, "us-lab", "US", "frontier", ALLOW, None, OK, flags=("vpn",)),
    "r/unknown-headquarters": Case(
        R, "ghost", "US", "frontier", DENY, 403, ("HEADQUARTERS_UNKNOWN",)
    ),
    "r/no-log-rule": Case(R, "jp-co", "SG", "small", ALLOW, None, OK),
    "r/denied-entity": Case(R, "denied-ae", "AE", "small", DENY, 403, ("ENTITY_DENIED",)),
    # --- strict-hypothetical ------------------------------------------------------------------
    "s/restricted-needs-agreement": Case(
        S, "br-none", "BR", "mini", DENY, 403, (NVA, "AGREEMENT_NONE")
    ),
    "s/agreement-covers-controlled-only": Case(
        S, "sg-agree", "SG", "mini", DENY, 403, (NVA, "AGREEMENT_OUT_OF_SCOPE")
    ),
    "s/agreement-covers-controlled": Case(S, "sg-agree", "SG", "frontier", ALLOW, None, OK),
    "s/residential-proxy-closed": Case(
        S, "us-lab", "US", "mini", DENY, 451, ("ANONYMIZED_ORIGIN",), flags=("residential_proxy",)
    ),
    "s/vpn-open-model": Case(S, "us-lab", "US", "llama", ALLOW, None, OK, flags=("vpn",)),
    "s/tier3-restricted": Case(S, "se-cn", "SE", "mini", DENY, 451, T3),
    "s/unknown-country-any-closed": Case(
        S, "us-lab", None, "small", DENY, 451, ("NETWORK_COUNTRY_UNKNOWN",)
    ),
    "s/tiny-closed-model-tier2": Case(S, "br-none", "BR", "small", ALLOW, None, OK),
    "s/log-rule-inherited": Case(S, "jp-co", "SG", "small", LOG, None, MISMATCH),
    "s/embargo-inherited": Case(S, "us-lab", "CU", "llama", DENY, 451, EMB),
    # An unknown model counts as closed weights: rules on closed models cover it (fail closed).
    "s/unknown-model-behind-vpn": Case(
        S,
        "us-lab",
        "US",
        "mystery",
        DENY,
        451,
        ("ANONYMIZED_ORIGIN", "MODEL_UNKNOWN"),
        flags=("vpn",),
    ),
    "s/unknown-model-unknown-country": Case(
        S, "us-lab", None, "mystery", DENY, 451, ("NETWORK_COUNTRY_UNKNOWN", "MODEL_UNKNOWN")
    ),
    # --- us-embargo-baseline ----------------------------------------------------------------------
    "b/tier3-not-its-business": Case(B, "se-cn", "SE", "frontier", ALLOW, None, OK),
    "b/iran": Case(B, "ir-co", "IR", "frontier", DENY, 451, EMB),
    "b/denied": Case(B, "denied-us", "US", "small", DENY, 403, ("ENTITY_DENIED",)),
    "b/unknown-model-any-tier": Case(B, "us-lab", "US", "mystery", ALLOW, None, OK),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_decision_table(case: Case) -> None:
    decision = case.decide()
    assert (decision.effect, decision.status, decision.reasons) == (
        case.effect,
        case.status,
        case.reasons,
    )
    assert decision.policy.id == case.pack
    if case.effect is Effect.DENY:
        assert decision.blocks
    else:
        assert decision.allowed and not decision.blocks


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 60
    for pack in (A, R, S, B):
        assert any(c.pack == pack for c in CASES.values())


def test_evidence_records_every_fact() -> None:
    decision = CASES["a/swedish-subsidiary-of-chinese-parent"].decide()
    evidence = decision.to_dict()["evidence"]
    assert evidence["entity"]["headquarters"] == "SE"
    assert evidence["entity"]["parent"] == "CN"
    jurisdiction = evidence["jurisdiction"]
    assert jurisdiction["parent_tier"] == "tier3"
    assert jurisdiction["parent_groups"] == ["D5"]
    assert jurisdiction["headquarters_tier"] == "tier1"
    assert jurisdiction["effective_tier"] == "tier3"
    assert evidence["model"]["tier"] == "controlled"
    assert evidence["model"]["tier_source"] == "thresholds"
    assert decision.rule == "aidr-2025-01/tier3-controlled"
    assert decision.policy.digest.startswith("sha256:")


def test_registry_disagreement_is_recorded() -> None:
    decision = CASES["a/registry-wins-over-claims"].decide()
    assert decision.evidence.entity_source == "registry"
    assert decision.evidence.claims_disagree == ("headquarters",)


def test_claims_used_when_registry_does_not_know() -> None:
    decision = CASES["a/claims-give-headquarters"].decide()
    assert decision.evidence.entity_source == "claims"
    assert decision.evidence.claims_disagree == ()


def test_agreement_evidence_names_the_agreement() -> None:
    decision = CASES["a/sg-with-agreement"].decide()
    assert decision.evidence.agreement is not None
    assert decision.evidence.agreement.id == "SA-SG"
    assert decision.to_dict()["evidence"]["agreement"]["state"] == "valid"


def test_legal_window_is_reported() -> None:
    inside = CASES["a/tier1-controlled-allowed"].decide()
    outside = CASES["a/in-agreement-window-ended"].decide()
    assert inside.policy.in_window
    assert not outside.policy.in_window


def test_unknown_catalog_tier_reported_as_unknown_model_tier() -> None:
    decision = CASES["a/catalog-tier-unknown-to-pack"].decide()
    assert decision.evidence.model_tier_source == "unknown-model"
    assert decision.evidence.model is not None


def test_shadow_pack_disagreement() -> None:
    state = state_for(load_pack(A), entities=ENTITIES, models=MODELS, shadow=load_pack(R))
    gate = Gate(state)
    decision = gate.decide(
        identity=Identity("br-none", method="declared"),
        origin=declared_origin("BR"),
        model_id="frontier",
        at=t("2025-03-01"),
    )
    assert decision.effect is Effect.DENY
    assert decision.shadow is not None
    assert decision.shadow.outcome.effect is Effect.ALLOW
    assert not decision.shadow.agrees
    assert decision.shadow.policy.id == R


def test_decision_ids_are_unique_and_time_ordered() -> None:
    gate = gate_for(A)
    ids = [
        gate.decide(identity=None, origin=declared_origin("US"), model_id="small").decision_id
        for _ in range(2000)
    ]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


def test_allowed_models_match_decisions() -> None:
    gate = gate_for(A)
    identity = Identity("br-none", method="declared")
    origin = declared_origin("BR")
    listed = {
        m.id for m in gate.allowed_models(identity=identity, origin=origin, at=t("2025-03-01"))
    }
    for model in MODELS:
        decision = gate.decide(
            identity=identity, origin=origin, model_id=model.id, at=t("2025-03-01")
        )
        assert (model.id in listed) == decision.allowed, model.id
    assert "frontier" not in listed and "llama" in listed


def test_evaluation_failure_is_a_deny() -> None:
    gate = gate_for(A)

    class Broken:
        """A registry whose lookups raise."""

        source = "broken"
        revision = None

        def lookup(self, entity_id: str) -> Entity | None:
            raise RuntimeError("registry exploded")

        async def fetch(self, entity_id: str) -> Entity | None:
            raise RuntimeError("registry exploded")

    from dataclasses import replace

    broken = replace(gate.state, registry=Broken())
    decision = gate.decide(
        identity=Identity("us-lab"), origin=declared_origin("US"), model_id="small", state=broken
    )
    assert decision.effect is Effect.DENY
    assert decision.reasons == ("POLICY_EVALUATION_FAILED",)
    assert decision.rule == "gate/policy"


def test_a_denied_listing_is_marked_as_a_listing() -> None:
    gate = gate_for(A)
    denied = gate.decide_listing(identity=Identity("ir-co"), origin=declared_origin("IR"))
    assert (denied.effect, denied.status, denied.reasons) == (Effect.DENY, 451, EMB)
    assert denied.rule == "gate/list-models"
    assert denied.evidence.model_requested is None
    assert denied.evidence.model_tier_source == "listing"
    allowed = gate.decide_listing(identity=Identity("br-none"), origin=declared_origin("BR"))
    assert (allowed.effect, allowed.reasons, allowed.rule) == (
        Effect.ALLOW,
        ("MODELS_LISTED",),
        "gate/list-models",
    )


def test_a_listing_whose_decision_fails_is_denied() -> None:
    """Deciding the listing raises (here: the shadow pack): fail closed, never 'listed'."""

    class Exploding(PolicyEngine):
        """An engine whose evaluation raises."""

        def evaluate(self, **kwargs: object) -> Verdict:
            raise RuntimeError("shadow pack exploded")

    state = state_for(load_pack(A), entities=ENTITIES, models=MODELS)
    gate = Gate(dataclasses.replace(state, shadow=Exploding(load_pack(R))))
    decision = gate.decide_listing(identity=Identity("br-none"), origin=declared_origin("BR"))
    assert decision.effect is Effect.DENY
    assert decision.reasons == ("POLICY_EVALUATION_FAILED",)
    assert decision.rule == "gate/list-models"
