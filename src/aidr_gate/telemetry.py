"""OpenTelemetry through opentelemetry-api only: a no-op unless the host configures the SDK.

One span per decision, a counter of decisions by effect and reason, a histogram of the gate's added
time, and a counter of shadow-pack disagreements. Attribute names follow the semantic conventions
where they exist (``client.address``, ``enduser.id``, ``gen_ai.request.model``); the rest are under
``aidr.``. The same reason codes label metrics, responses and audit records.
"""

from __future__ import annotations

from opentelemetry import metrics, trace
from opentelemetry.metrics import _internal as _metrics_api
from opentelemetry.trace import ProxyTracerProvider, SpanKind, Status, StatusCode

from aidr_gate import __version__
from aidr_gate.decision import Decision, Effect

INSTRUMENTATION = "aidr_gate"

# Where opentelemetry-api keeps the global providers: None until a host sets one (or names one in
# OTEL_PYTHON_*_PROVIDER, loaded by the first get_tracer/get_meter). Its proxies read the same
# globals, so while both are None the proxy tracer and instruments drop everything. The public
# getters cost a microsecond each (they look up the environment), more than the work they would
# save; without these globals (another opentelemetry-api) every decision takes the full path.
_PROVIDER_GLOBALS = (
    hasattr(trace, "_TRACER_PROVIDER")
    and hasattr(_metrics_api, "_METER_PROVIDER")
    and hasattr(_metrics_api, "_ProxyMeterProvider")
)


class Telemetry:
    """Spans and metrics for decisions; next to free while no SDK provider is set."""

    def __init__(self) -> None:
        self._tracer = trace.get_tracer(INSTRUMENTATION, __version__)
        meter = metrics.get_meter(INSTRUMENTATION, __version__)
        self._decisions = meter.create_counter(
            "aidr_gate.decisions",
            unit="{decision}",
            description="Decisions by effect, status and first reason code",
        )
        self._duration = meter.create_histogram(
            "aidr_gate.decision.duration",
            unit="s",
            description="Time the gate added to a request before the app saw it",
        )
        self._shadow = meter.create_counter(
            "aidr_gate.shadow.disagreements",
            unit="{decision}",
            description="Decisions where the shadow pack's effect differs from the enforced one",
        )
        self._labels: dict[tuple[object, ...], tuple[dict[str, str], dict[str, str]]] = {}
        self._reloads = meter.create_counter(
            "aidr_gate.reloads",
            unit="{reload}",
            description="Configuration reloads by component and result",
        )
        # True when the tracer and the instruments above are opentelemetry-api's proxies, which
        # stay no-ops until a provider is set: then record() can skip its work while none is.
        self._proxied = (
            _PROVIDER_GLOBALS
            and isinstance(trace.get_tracer_provider(), ProxyTracerProvider)
            and isinstance(metrics.get_meter_provider(), _metrics_api._ProxyMeterProvider)
        )

    def record(self, decision: Decision, seconds: float, path: str | None) -> None:
        """Count one decision, record its time, and emit its span."""
        if (
            self._proxied
            and trace._TRACER_PROVIDER is None
            and _metrics_api._METER_PROVIDER is None
        ):
            # No SDK (the common case): nothing would be counted or recorded. Checked per call,
            # so a provider a host sets later is used from its first decision on.
            return
        reason = decision.reasons[0] if decision.reasons else "NONE"
        key = (decision.effect, reason, decision.mode, decision.policy.id)
        labels = self._labels.get(key)
        if labels is None:
            # Label sets are few (effect x reason x mode x pack): build each once.
            if len(self._labels) > 4096:
                self._labels.clear()
            labels = self._labels[key] = (
                {
                    "aidr.effect": decision.effect.value,
                    "aidr.reason": reason,
                    "aidr.mode": decision.mode.value,
                    "aidr.policy.id": decision.policy.id,
                },
                {"aidr.effect": decision.effect.value},
            )
        self._decisions.add(1, labels[0])
        self._duration.record(seconds, labels[1])
        if decision.shadow is not None and not decision.shadow.agrees:
            self._shadow.add(
                1,
                {
                    "aidr.effect": decision.effect.value,
                    "aidr.shadow.effect": decision.shadow.outcome.effect.value,
                    "aidr.shadow.policy.id": decision.shadow.policy.id,
                },
            )
        span = self._tracer.start_span("aidr_gate.decide", kind=SpanKind.INTERNAL)
        if span.is_recording():
            span.set_attributes(_attributes(decision, path))
            if decision.effect is Effect.DENY:
                span.set_status(Status(StatusCode.ERROR, reason))
        span.end()

    def reload(self, component: str, ok: bool) -> None:
        """Count a reload attempt of *component*."""
        self._reloads.add(1, {"aidr.component": component, "aidr.result": "ok" if ok else "failed"})


def _attributes(decision: Decision, path: str | None) -> dict[str, str | int | bool | list[str]]:
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
