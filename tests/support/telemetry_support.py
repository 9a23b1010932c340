"""Real decisions for the telemetry tests: the bundled packs (one enforced, one in shadow) deciding
callers from several countries, entities and models, and the audit events they make; and the
shipped monitoring files (deploy/grafana, deploy/prometheus) as the tests read them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from functools import cache
from typing import Any

import yaml

from aidr_gate.audit import AuditEvent, RequestContext
from aidr_gate.catalog import Model, Weights
from aidr_gate.decision import Decision
from aidr_gate.document import parse_instant
from aidr_gate.facts import Identity, declared_origin
from aidr_gate.gate import Gate, state_for
from aidr_gate.policy.pack import load_pack
from aidr_gate.registry import Entity
from support.environment import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "aidr-gate.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yaml"
# Grafana's variables, as Prometheus would see them for "all gates, the last five minutes".
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__range": "5m", "$instance": ".*"}

ENFORCED = "aidr-2025-01"
SHADOW = "aidr-2025-05-rescinded"
AT = parse_instant("2025-03-01")

ENTITIES = [
    Entity("us-lab", "US"),
    Entity("jp-co", "JP"),
    Entity("br-none", "BR"),
    Entity("cn-co", "CN"),
    Entity("ir-co", "IR"),
    Entity("denied-ae", "AE", denied=True, denied_reason="Entity List"),
]
MODELS = [
    Model("frontier", 4.0e26, Weights.CLOSED),
    Model("small", 1.0e22, Weights.CLOSED),
]
# (entity or None, network country or None, model): allowed, denied for several reasons, from
# several countries and from nowhere GeoIP knows.
CASES = [
    ("us-lab", "US", "frontier"),
    ("jp-co", "JP", "frontier"),
    ("br-none", "BR", "frontier"),  # denied here, allowed by the shadow pack
    ("cn-co", "CN", "small"),
    ("ir-co", "IR", "small"),
    ("denied-ae", "AE", "small"),
    ("us-lab", None, "frontier"),
    (None, "US", "small"),
]


@cache
def gate() -> Gate:
    """The enforced pack with the rescinded one in shadow, over the test registry and catalogue."""
    state = state_for(
        load_pack(ENFORCED), entities=ENTITIES, models=MODELS, shadow=load_pack(SHADOW)
    )
    return Gate(state)


def decisions() -> list[Decision]:
    """One real decision per case."""
    out = []
    for entity, country, model in CASES:
        identity = Identity(entity, method="declared") if entity else None
        out.append(
            gate().decide(identity=identity, origin=declared_origin(country), model_id=model, at=AT)
        )
    return out


def timed(decision_index: int) -> tuple[Decision, float]:
    """A fresh decision of one case and the seconds deciding it took."""
    entity, country, model = CASES[decision_index % len(CASES)]
    identity = Identity(entity, method="declared") if entity else None
    started = time.perf_counter()
    decision = gate().decide(
        identity=identity, origin=declared_origin(country), model_id=model, at=AT
    )
    return decision, time.perf_counter() - started


def audit_event(decision: Decision) -> AuditEvent:
    """The audit event of a decision served by an upstream that answered 200 when allowed."""
    return AuditEvent(
        decision,
        RequestContext(
            method="POST",
            path="/v1/chat/completions",
            status=decision.status or 200,
            upstream_status=200 if decision.allowed else None,
            gate_us=40,
        ),
    )


def dashboard_panels() -> list[dict[str, Any]]:
    """Every panel of the shipped dashboard, rows and the panels of collapsed rows included."""

    def walk(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for item in items:
            yield item
            yield from walk(item.get("panels", []))

    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return list(walk(board["panels"]))


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, with Grafana's variables filled in."""
    out = []
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            out.append((panel["title"], expr))
    return out


def alert_rules() -> list[dict[str, Any]]:
    """Every rule of the shipped alert rules."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition by (name, sorted labels)."""
    # Imported here: a test imports this module where prometheus_client is blocked.
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
