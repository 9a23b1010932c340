"""The template paths (ECS and OCSF) give the very bytes of the dict path, whatever the request carries."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aidr_gate.audit import AuditEvent, EcsRenderer, Ending, OcsfRenderer, Redactor, RequestContext
from aidr_gate.audit.ecs import _Slot
from aidr_gate.audit.record import _Clock
from aidr_gate.decision import Decision, Mode
from aidr_gate.errors import AuditUnavailable, BodyNotJSON, TokenExpired
from aidr_gate.facts import AnonymizerFlag, CountrySource, Identity, Origin
from aidr_gate.gate import Gate, GateState
from aidr_gate.policy.engine import PolicyEngine
from aidr_gate.policy.pack import load_pack
from support.audit_support import TOKEN, event, gate

ENTITIES = ["merlion-sg", "andes-br", "lab-us", "sakura-jp", "nobody-at-all", ""]
COUNTRIES = ["SG", "BR", "US", "JP", "CN", "KH", None]
MODELS = ["aurora-frontier", "aurora-mini", "open-giant", "nope", None]

# One renderer of each format for every example: templates made for one request are reused by the
# next.
_REDACTOR = Redactor(("user-agent", "x-request-id", "x-tenant"))
RENDERERS = [EcsRenderer(_REDACTOR), OcsfRenderer(_REDACTOR)]
_BASE = gate().state
_DRY_SHADOW = Gate(
    GateState(
        engine=_BASE.engine,
        registry=_BASE.registry,
        catalog=_BASE.catalog,
        mode=Mode.DRY_RUN,
        shadow=PolicyEngine(load_pack("strict-hypothetical")),
    )
)
# A few shared objects, as the token cache and the origin resolver hand them out.
_IDENTITIES = [
    Identity(entity_id=e, subject=f"svc-{i}", issuer="https://idp.example", key_id="k")
    for i, e in enumerate(ENTITIES)
]
_ORIGINS = [
    Origin(
        ip=f"198.51.100.{i}",
        resolved_by="x-forwarded-for[-1]",
        peer="10.0.0.2",
        country=c,
        country_source=CountrySource.GEOIP if c else CountrySource.NONE,
        anonymizer=frozenset({AnonymizerFlag.VPN}) if i == 3 else frozenset(),
        notes=("ünïcode note \u2028",) if i == 2 else (),
    )
    for i, c in enumerate(COUNTRIES)
]

text = st.text(max_size=40)
optional_int = st.none() | st.integers(min_value=-(2**40), max_value=2**40)


@st.composite
def decisions(draw: st.DrawFn) -> Decision:
    kind = draw(st.sampled_from(["decide", "dry-run", "refuse"]))
    identity = draw(st.none() | st.sampled_from(_IDENTITIES))
    origin = draw(st.sampled_from(_ORIGINS))
    model = draw(st.sampled_from(MODELS))
    if kind == "refuse":
        error = draw(st.sampled_from([TokenExpired(), AuditUnavailable("down"), BodyNotJSON("x")]))
        return gate().refuse(error, identity=identity, origin=origin, model_id=model)
    chosen = _DRY_SHADOW if kind == "dry-run" else gate()
    return chosen.decide(identity=identity, origin=origin, model_id=model)


@st.composite
def requests(draw: st.DrawFn) -> RequestContext:
    header_names = st.sampled_from(["user-agent", "x-request-id", "x-tenant", "authorization"])
    headers = draw(st.lists(st.tuples(header_names, text | st.just(f"Bearer {TOKEN}")), max_size=4))
    return RequestContext(
        method=draw(st.sampled_from(["POST", "GET", "DELETE"]) | text),
        path=draw(st.sampled_from(["/v1/chat/completions", "/v1/models"]) | text),
        scheme=draw(st.sampled_from(["http", "https"])),
        http_version=draw(st.sampled_from(["1.1", "2"])),
        headers=tuple(headers),
        status=draw(st.none() | st.sampled_from([200, 403, 451, 502])),
        upstream_status=draw(st.none() | st.just(200)),
        upstream_duration_us=draw(optional_int),
        gate_us=draw(optional_int),
        ending=draw(st.sampled_from(list(Ending))),
        body_bytes=draw(optional_int),
        upstream_error=draw(st.none() | text),
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(decision=decisions(), request=requests())
def test_template_render_equals_the_dict_path(decision: Decision, request: RequestContext) -> None:
    ev = AuditEvent(decision, request)
    for renderer in RENDERERS:
        # The first record of a class in a file carries the class's facts; later ones name them.
        inline = renderer.book.shared(decision).facts_id not in renderer.book._written
        expected = orjson.dumps(renderer.document(ev, facts_inline=inline))
        assert renderer.render(ev) == expected, renderer.name
        assert renderer.compiled
        assert TOKEN.encode() not in expected


def _ecs_members_by_dicts(redactor: Redactor, request: RequestContext) -> dict[str, Any]:
    """ECS's per-request members as plain dicts (the definition the fast paths must match)."""
    http: dict[str, Any] = {"request": {"method": request.method}}
    if request.body_bytes is not None:
        http["request"]["body"] = {"bytes": request.body_bytes}
    if request.status is not None:
        http["response"] = {"status_code": request.status}
    headers = redactor.headers(request.headers)
    member: dict[str, Any] = {"ending": request.ending.value}
    if request.cut_of is not None:
        member["cut_of"] = request.cut_of
    if others := {k: v for k, v in headers.items() if k != "user-agent"}:
        member["headers"] = others
    upstream = {
        k: v
        for k, v in (
            ("status", request.upstream_status),
            ("duration_us", request.upstream_duration_us),
            ("error", request.upstream_error),
        )
        if v is not None
    }
    out = {
        "http": http,
        "url": {"path": redactor.path(request.path), "scheme": request.scheme},
        "request": member,
        "upstream": upstream or None,
    }
    if "user-agent" in headers:
        out["user_agent"] = {"original": headers["user-agent"]}
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(decision=decisions(), request=requests(), cut=st.booleans())
def test_ecs_per_request_members_are_the_dicts_they_stand_for(
    decision: Decision, request: RequestContext, cut: bool
) -> None:
    if cut:
        request = msgspec.structs.replace(request, cut_of="01a2", ending=Ending.CUT)
    renderer = EcsRenderer(Redactor(("user-agent", "x-request-id", "x-tenant")))
    for _ in range(2):  # the first time worked out, the second remembered
        values, _ = renderer.slot_values(
            AuditEvent(decision, request), renderer.book.shared(decision)
        )
        parsed = {
            name: None if values[slot] is None else orjson.loads(values[slot] or b"")
            for name, slot in (
                ("http", _Slot.HTTP),
                ("url", _Slot.URL),
                ("request", _Slot.REQUEST),
                ("upstream", _Slot.UPSTREAM),
                ("user_agent", _Slot.USER_AGENT),
            )
        }
        got = {k: v for k, v in parsed.items() if v is not None or k != "user_agent"}
        assert got == _ecs_members_by_dicts(renderer.redactor, request)


def test_ocsf_records_of_one_class_and_activity_share_one_template() -> None:
    renderer = OcsfRenderer()
    first, second = event(1), event(2)
    renderer.render(first)
    renderer.render(second)
    assert len(renderer._templates) == 1  # facts inline or named: the same template
    doc = orjson.loads(renderer.render(second))
    assert doc["actor"]["user"]["uid"] == "svc-2"
    assert second.request is not None
    listing = AuditEvent(second.decision, msgspec.structs.replace(second.request, method="GET"))
    assert orjson.loads(renderer.render(listing))["activity_id"] == 2
    assert len(renderer._templates) == 2


def test_every_record_of_a_class_shares_one_template() -> None:
    renderer = EcsRenderer()
    first, second = event(1), event(2)
    renderer.render(first)  # the facts inline
    renderer.render(second)
    renderer.render(first)
    assert len(renderer._templates) == 1
    assert orjson.loads(renderer.render(second))["user"]["id"] == "svc-2"


def test_no_request_renders_too() -> None:
    ev = AuditEvent(gate().refuse(TokenExpired()), None)
    renderer = EcsRenderer()
    assert renderer.render(ev) == orjson.dumps(renderer.document(ev, facts_inline=True))
    assert renderer.render(ev) == orjson.dumps(renderer.document(ev))


def test_a_misplaced_field_falls_back_to_the_dict_path(caplog: pytest.LogCaptureFixture) -> None:
    class Moved(EcsRenderer):
        def fields(self, ev, shared, values):  # type: ignore[no-untyped-def]
            doc = super().fields(ev, shared, values)
            doc["somewhere"] = {"user": doc.pop("user")}  # not where places says
            return doc

    renderer = Moved()
    ev = event(3)
    with caplog.at_level(logging.ERROR, logger="aidr_gate.audit"):
        body = renderer.render(ev)
    assert body == orjson.dumps(renderer.document(ev, facts_inline=True))
    assert not renderer.compiled
    assert "no ecs template" in caplog.text


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.floats(min_value=1.6e9, max_value=1.9e9), min_size=1, max_size=20))
def test_the_clocks_cached_json_is_its_text(instants: list[float]) -> None:
    clock = _Clock()
    for at in [*instants, instants[0], instants[0] + 0.0004, instants[0] + 0.001]:
        assert clock.json(at) == orjson.dumps(_Clock().format(at))
        clock.format(at + 1.0)  # the slow path formats other instants on the same clock
