"""The audit record: every field issue 5 lists, replay evidence, redaction, ECS and OCSF shapes."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
import pytest

from aidr_gate.audit import AuditEvent, EcsRenderer, OcsfRenderer, Redactor, RequestContext
from aidr_gate.audit.facts import full_tree
from aidr_gate.audit.reader import RecordReader
from aidr_gate.audit.record import REDACTED, clean_path, fallback_record
from aidr_gate.decision import Mode
from aidr_gate.facts import AnonymizerFlag
from aidr_gate.gate import GateState
from aidr_gate.policy.engine import PolicyEngine
from aidr_gate.policy.pack import load_pack
from aidr_gate.settings.audit import ALWAYS_REDACTED
from support.audit_support import TOKEN, event, gate


def _get(doc: dict[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        value = value[part]
    return value


def ecs(
    ev: AuditEvent, headers: tuple[str, ...] = ("user-agent", "x-request-id")
) -> dict[str, Any]:
    """The ECS record of *ev*, with its whole evidence tree (read back) under ``aidr``."""
    body = EcsRenderer(Redactor(headers)).render(ev)
    doc: dict[str, Any] = orjson.loads(body)
    doc["compact"] = doc["aidr"]
    doc["aidr"] = RecordReader().tree(body)
    return doc


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("event.outcome", "success"),
        ("event.type", ["access", "allowed"]),
        ("event.dataset", "aidr_gate.audit"),
        ("event.duration", 40_000),
        ("rule.id", "us-embargo-baseline/default"),
        ("rule.ruleset", "aidr-2025-01"),
        ("user.id", "svc-7"),
        ("organization.id", "merlion-sg"),
        ("client.ip", "198.51.100.7"),
        ("client.geo.country_iso_code", "SG"),
        ("http.request.method", "POST"),
        ("http.response.status_code", 200),
        ("url.path", "/v1/chat/completions"),
        ("user_agent.original", "pytest"),
        ("gen_ai.request.model", "aurora-frontier"),
        ("aidr.decision.effect", "allow"),
        ("aidr.decision.status", None),
        ("aidr.decision.reasons", ["ALLOWED"]),
        ("aidr.decision.mode", "enforce"),
        ("aidr.policy.id", "aidr-2025-01"),
        ("aidr.policy.status", "contested"),  # at the decision time, after GAO B-337935
        ("aidr.shadow", None),
        ("aidr.identity.subject", "svc-7"),
        ("aidr.identity.key_id", "key-1"),
        ("aidr.origin.resolved_by", "x-forwarded-for[-1]"),
        ("aidr.origin.country_source", "geoip"),
        ("aidr.origin.database", "GeoIP2-Country"),
        ("aidr.origin.database_build", "2025-06-03"),
        ("aidr.origin.anonymizer_database_build", "2025-06-02"),
        ("aidr.origin.anonymizer", []),
        ("aidr.entity.headquarters", "SG"),
        ("aidr.entity.parent", "SG"),
        ("aidr.entity.denied", False),
        ("aidr.entity.agreements.0.id", "SA-2025-014"),
        ("aidr.model.training_ops", 4e26),
        ("aidr.model.weights", "closed"),
        ("aidr.model.tier", "controlled"),
        ("aidr.jurisdiction.effective_tier", "tier2"),
        ("aidr.agreement.id", "SA-2025-014"),
        ("aidr.agreement.state", "valid"),
        ("aidr.request.ending", "completed"),
        ("aidr.request.body_bytes", 321),
        ("aidr.gate.added_us", 40),
        ("aidr.upstream.status", 200),
        ("aidr.upstream.duration_us", 1200),
    ],
)
def test_ecs_record_carries_every_listed_field(path: str, expected: Any) -> None:
    doc = ecs(event(7))
    parts = path.split(".")
    value: Any = doc
    for part in parts:
        value = value[int(part)] if isinstance(value, list) else value[part]
    assert value == expected


def test_timestamp_and_ids_match_the_decision() -> None:
    ev = event(1)
    doc = ecs(ev)
    assert doc["event"]["id"] == doc["aidr"]["decision"]["id"] == ev.decision.decision_id
    assert doc["@timestamp"] == doc["aidr"]["decision"]["at"] == ev.decision.to_dict()["at"]
    assert doc["aidr"]["policy"]["digest"] == ev.decision.policy.digest


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"entity": "andes-br", "country": "BR"},
        {"entity": "lab-us", "country": "US", "anonymizer": frozenset({AnonymizerFlag.VPN})},
        {"entity": "no-such-entity", "country": None},
        {"entity": "lumen-in", "country": "IN", "model": "not-in-catalogue"},
        {"entity": "lab-us", "country": "SG", "model": "aurora-mini"},
    ],
)
@pytest.mark.parametrize("renderer", [EcsRenderer, OcsfRenderer])
def test_evidence_read_back_equals_the_decisions_own_tree(
    kwargs: dict[str, Any], renderer: type[Any]
) -> None:
    """``replay`` needs the evidence ``Decision.to_dict()`` gives: a compact record and its
    shared facts read back to it, whether the facts are inline or named."""
    redactor = Redactor(("user-agent", "x-request-id"))
    render = renderer(redactor)
    reader = RecordReader()
    for index in (3, 4):  # the class's first record carries the facts, the second names them
        ev = event(index, **kwargs)
        body = render.render(ev)
        assert reader.tree(body) == full_tree(ev, lambda r: redactor.headers(r.headers))
    assert b'"facts":"' in body


def _strings(node: Any) -> list[str]:
    """Every string value of more than five characters in a JSON tree, but the product name."""
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    # OCSF's product and vendor are one name, not a fact written twice.
    return [node] if isinstance(node, str) and len(node) > 5 and node != "aidr_gate" else []


def test_a_compact_record_writes_each_fact_once_in_little_space() -> None:
    """No value of more than a few characters appears twice; an allowed request's line (with its
    chain member) stays under 1.2 KB once its class's facts are in the file."""
    from aidr_gate.audit.chain import Chain

    for renderer in (EcsRenderer(), OcsfRenderer()):
        renderer.render(event(1))
        body = renderer.render(event(2, headers=(("user-agent", "openai-python/1.52"),)))
        values = _strings(orjson.loads(body))
        assert len(values) == len(set(values)), renderer.name
        assert len(Chain(10**6).link(body)) <= 1200, renderer.name


def test_denial_log_and_refusal_render() -> None:
    denied = ecs(event(2, entity="andes-br", country="BR"))
    assert denied["compact"]["decision"] == {
        "effect": "deny",
        "status": 403,
        "reasons": ["NO_VALID_AGREEMENT", "AGREEMENT_NONE"],  # several: all of them
    }
    assert denied["event"]["reason"] == "NO_VALID_AGREEMENT"
    assert denied["event"]["outcome"] == "failure"
    assert denied["event"]["type"] == ["access", "denied"]
    assert denied["aidr"]["decision"]["blocked"] is True
    assert denied["aidr"]["request"]["ending"] == "denied"
    logged = ecs(event(2, entity="lab-us", country="SG", model="aurora-mini"))
    assert logged["aidr"]["decision"]["effect"] == "log"
    from aidr_gate.errors import TokenExpired

    refused = AuditEvent(gate().refuse(TokenExpired()), None)
    doc = ecs(refused)
    assert doc["aidr"]["decision"]["reasons"] == ["TOKEN_EXPIRED"]
    assert doc["aidr"]["identity"] is None
    assert "http" not in doc and "user" not in doc  # members without a value are left out


def test_shadow_and_dry_run_are_recorded() -> None:
    base = gate().state
    state = GateState(
        engine=base.engine,
        registry=base.registry,
        catalog=base.catalog,
        mode=Mode.DRY_RUN,
        shadow=PolicyEngine(load_pack("strict-hypothetical")),
    )
    ev = event(4, entity="andes-br", country="BR")
    origin = ev.decision.evidence.origin
    assert origin is not None
    decision = gate().decide(
        identity=ev.decision.evidence.identity,
        origin=origin,
        model_id="aurora-frontier",
        state=state,
    )
    doc = ecs(AuditEvent(decision, ev.request))
    assert doc["aidr"]["decision"]["mode"] == "dry-run"
    assert doc["aidr"]["decision"]["blocked"] is False
    assert doc["aidr"]["shadow"]["policy"]["id"] == "strict-hypothetical"
    assert doc["aidr"]["shadow"] == decision.to_dict()["shadow"]
    ocsf = orjson.loads(OcsfRenderer().render(AuditEvent(decision, ev.request)))
    assert (ocsf["action_id"], ocsf["disposition_id"]) == (1, 15)


SECRET_HEADERS = (
    ("authorization", f"Bearer {TOKEN}"),
    ("proxy-authorization", f"Basic {TOKEN}"),
    ("cookie", f"session={TOKEN}"),
    ("x-api-key", TOKEN),
    ("x-custom-token", TOKEN),
    ("x-request-id", f"{TOKEN}"),  # allow-listed, but the value is a JWT
    ("user-agent", "pytest"),
)


@pytest.mark.parametrize(
    "allowed",
    [
        ("user-agent", "x-request-id"),
        # Mis-configured: credential headers allow-listed. They are still never recorded.
        ("authorization", "cookie", "x-api-key", "proxy-authorization", "user-agent"),
    ],
)
@pytest.mark.parametrize("renderer", [EcsRenderer, OcsfRenderer])
def test_tokens_never_reach_a_record(allowed: tuple[str, ...], renderer: type[Any]) -> None:
    ev = event(5, headers=SECRET_HEADERS, path=f"/v1/chat/completions?api_key={TOKEN}#{TOKEN}")
    body = renderer(Redactor(allowed)).render(ev)
    assert TOKEN.encode() not in body
    assert b"eyJ" not in body
    doc = orjson.loads(body)
    text = orjson.dumps(doc).decode()
    assert "api_key" not in text
    assert "user-agent" in text or "pytest" in text


def test_redactor_allow_list() -> None:
    redactor = Redactor(["User-Agent", "Authorization", "X-Request-Id"])
    assert redactor.allowed == {"user-agent", "x-request-id"}
    assert {"authorization", "cookie", "x-api-key"} <= ALWAYS_REDACTED
    picked = redactor.select(
        [(b"authorization", b"Bearer x"), (b"User-Agent", b"curl/8"), (b"x-request-id", b"r1")]
    )
    assert picked == (("user-agent", "curl/8"), ("x-request-id", "r1"))
    joined = redactor.headers([("x-request-id", "a"), ("X-Request-Id", "b"), ("cookie", "c")])
    assert joined == {"x-request-id": "a, b"}
    assert redactor.headers([("user-agent", "Bearer abc")]) == {"user-agent": REDACTED}
    # Any whitespace after the scheme, as servers pass it through (h11 accepts \xa0 and \x85).
    for gap in ("\xa0", "\x85", "\x0b", "\x0c", "\t", " "):
        assert redactor.headers([("user-agent", f"Bearer{gap}abc.def")]) == {"user-agent": REDACTED}
    odd = Redactor(["x-\u65e5\u672c", "X-Tenant"])  # a name no raw header can carry is harmless
    assert odd.select([(b"X-TENANT", b"t1"), (b"x-tenant", b"t2"), (b"host", b"h")]) == (
        ("x-tenant", "t1"),
        ("x-tenant", "t2"),
    )


def test_repeated_header_tuples_are_redacted_once_and_every_cut_is_counted() -> None:
    redactor = Redactor(["user-agent", "x-request-id"], max_value=16)
    pairs = (("user-agent", "OpenAI/Python 1.54"), ("x-request-id", "Bearer abc"))
    first = redactor.headers(pairs)
    assert first == {
        "user-agent": "OpenAI/Python 1.54"[:16] + "...[TRUNCATED]",
        "x-request-id": REDACTED,
    }
    assert redactor.values_cut == 1
    assert redactor.headers(pairs) == first
    assert redactor.values_cut == 2  # a tuple with a cut value is worked out (and counted) again
    secret = (("user-agent", f"Bearer {TOKEN}"),)
    assert redactor.headers(secret) == {"user-agent": REDACTED}
    assert secret not in redactor._recorded  # a credential is not remembered past its request
    # Redacted inside a value, not as the whole value: a URL keeps its base, repeats are joined.
    referer = Redactor(["referer", "x-forwarded-client"])
    for hidden in (
        (("referer", "https://app.example/p?api_key=sk-live-123"),),
        (("x-forwarded-client", "web"), ("x-forwarded-client", f"Bearer {TOKEN}")),
    ):
        recorded = referer.headers(hidden)
        assert any(REDACTED in value for value in recorded.values())
        assert "sk-live-123" not in str(recorded) and TOKEN not in str(recorded)
        assert hidden not in referer._recorded
    renderer = EcsRenderer(Redactor())
    clean, keyed = "/v1/chat/completions", f"/v1/keys/{TOKEN}/chat"
    for path in (clean, keyed, clean + "?api_key=k"):
        assert TOKEN.encode() not in renderer._url(path, "https")
    assert list(renderer._urls) == [(clean, "https")]  # only the path recorded as it came
    plain = (("user-agent", "curl/8"),)
    kept = redactor.headers(plain)
    assert redactor.headers(plain) is kept  # remembered: the same mapping, not worked out again
    assert redactor.headers(tuple(plain)) == {"user-agent": "curl/8"}
    for n in range(3000):  # bounded, whatever the number of distinct tuples
        redactor.headers((("user-agent", f"agent/{n}"),))
    assert len(redactor._recorded) <= 1024
    assert redactor.headers((("user-agent", "agent/2999"),)) == {"user-agent": "agent/2999"}


@pytest.mark.parametrize(
    ("path", "clean"),
    [
        ("/v1/models", "/v1/models"),
        ("/v1/chat?key=1", "/v1/chat"),
        ("/a#frag?x", "/a"),
        ("/" + "x" * 5000, "/" + "x" * 2047),
    ],
)
def test_clean_path(path: str, clean: str) -> None:
    assert clean_path(path) == clean


@pytest.mark.parametrize(
    ("kwargs", "method", "expected"),
    [
        ({}, "POST", (1, 1, 1, "Success", 600301)),
        ({"entity": "andes-br", "country": "BR"}, "POST", (2, 2, 3, "Failure", 600301)),
        (
            {"entity": "lab-us", "country": "SG", "model": "aurora-mini"},
            "GET",
            (1, 17, 2, "Success", 600302),
        ),
    ],
)
def test_ocsf_api_activity(kwargs: dict[str, Any], method: str, expected: tuple[Any, ...]) -> None:
    ev = event(6, **kwargs)
    assert ev.request is not None
    ev = AuditEvent(ev.decision, msgspec.structs.replace(ev.request, method=method))
    doc = orjson.loads(OcsfRenderer().render(ev))
    action, disposition, severity, status, type_uid = expected
    assert doc["class_uid"] == 6003
    assert doc["category_uid"] == 6
    assert (doc["action_id"], doc["disposition_id"], doc["severity_id"]) == (
        action,
        disposition,
        severity,
    )
    assert doc["status_id"] == (1 if status == "Success" else 2)
    assert doc["type_uid"] == type_uid
    assert doc["policy"]["uid"] == "aidr-2025-01"
    assert doc["firewall_rule"]["uid"] == ev.decision.rule
    assert doc["src_endpoint"]["ip"] == "198.51.100.6"
    assert abs(doc["time"] - ev.decision.at * 1000) < 1
    tree = RecordReader().tree(orjson.dumps(doc))
    assert tree is not None
    assert tree["entity"] == ev.decision.to_dict()["evidence"]["entity"]
    assert tree["decision"]["effect"] == ev.decision.effect.value


def test_a_renderer_failure_still_yields_a_record() -> None:
    ev = event(8)
    body = fallback_record(ev, ValueError("boom"))
    doc = orjson.loads(body)
    assert doc["event"]["id"] == ev.decision.decision_id
    assert doc["aidr"]["render_error"] == "ValueError"


def test_shared_parts_are_reused_but_never_stale() -> None:
    renderer = EcsRenderer()
    first = event(9)
    second = event(10)
    assert renderer.book.shared(first.decision) is renderer.book.shared(second.decision)
    other = event(11, entity="andes-br", country="BR")
    doc = orjson.loads(renderer.render(other))
    assert doc["aidr"]["facts"]["entity"]["id"] == "andes-br"
    assert doc["organization"]["id"] == "andes-br"
    assert _get(doc, "aidr.decision.effect") == "deny"


def test_request_context_is_frozen() -> None:
    context = RequestContext(method="GET", path="/")
    with pytest.raises(AttributeError):
        context.method = "POST"  # type: ignore[misc]
