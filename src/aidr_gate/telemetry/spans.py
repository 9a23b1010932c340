"""The decision span's attributes: semantic-convention names where they exist, ``aidr.*`` otherwise.

Spans carry per-request detail (entity, client address, model) that metric labels never do.
"""

from __future__ import annotations

from aidr_gate.decision import Decision


def span_attributes(
    decision: Decision, path: str | None
) -> dict[str, str | int | bool | list[str]]:
    """Every attribute of the ``aidr_gate.decide`` span for *decision*."""
    evidence = decision.evidence
    attrs: dict[str, str | int | bool | list[str]] = {
        "aidr.decision.id": decision.decision_id,
        "aidr.effect": decision.effect.value,
        "aidr.reasons": list(decision.reasons),
        "aidr.rule": decision.rule,
        "aidr.mode": decision.mode.value,
        "aidr.policy.id": decision.policy.id,
        "aidr.policy.digest": decision.policy.digest,
    }
    if decision.status is not None:
        attrs["http.response.status_code"] = decision.status
    if path is not None:
        attrs["url.path"] = path
    if evidence.entity_id:
        attrs["enduser.id"] = evidence.entity_id
    origin = evidence.origin
    if origin is not None:
        if origin.ip:
            attrs["client.address"] = origin.ip
        if origin.country:
            attrs["aidr.network.country"] = origin.country
        attrs["aidr.network.country_source"] = origin.country_source.value
        if origin.anonymizer:
            attrs["aidr.network.anonymizer"] = sorted(f.value for f in origin.anonymizer)
    if evidence.model_requested:
        attrs["gen_ai.request.model"] = evidence.model_requested
    facts = evidence.facts
    if facts is not None:
        attrs["aidr.model.tier"] = facts.model_tier
        for key, value in (
            ("aidr.tier.effective", facts.effective_tier),
            ("aidr.tier.network", facts.network_tier),
            ("aidr.tier.headquarters", facts.headquarters_tier),
            ("aidr.tier.parent", facts.parent_tier),
            ("aidr.headquarters.country", facts.headquarters),
            ("aidr.parent.country", facts.parent),
        ):
            if value is not None:
                attrs[key] = value
        attrs["aidr.agreement.state"] = facts.agreement.value
    if decision.shadow is not None:
        attrs["aidr.shadow.effect"] = decision.shadow.outcome.effect.value
        attrs["aidr.shadow.agrees"] = decision.shadow.agrees
    return attrs
