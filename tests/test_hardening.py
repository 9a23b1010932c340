"""The attacks of issue 12, each against the middleware under uvicorn and the sidecar in front of
a real upstream process: the gate decides on exactly what the app serves, and no caller can stall,
flood or outlast it. Each test failed before its fix."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aidr_gate.asgi.middleware import AIDRGateMiddleware
from aidr_gate.errors import ConfigError
from aidr_gate.limits import LARGE_BODY, LIMITS, BufferBudget, Limits
from aidr_gate.request.model_id import BufferedBody
from aidr_gate.runtime import Runtime
from aidr_gate.settings.loader import load_config
from support import hostile_app
from support.gate_env import IP, GateEnv
from support.hostile_app import DEFAULT_MODEL
from support.hostile_support import (
    IPV6_BR,
    MODEL_HEADER,
    TESTS,
    Target,
    caller,
    form_body,
    hostile_env,
    raw_request,
    status_of,
    target,
    token,
    upstream_process,
)
from support.jwks_server import claims
from support.servers import free_port, serve
from support.sidecar_support import Process

KINDS = ("middleware", "sidecar")
MIB = 1024 * 1024
OPEN = "aurora-mini"  # andes-br (BR) may use it
CONTROLLED = "aurora-frontier"  # andes-br may not: the app's default model


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> GateEnv:
    return hostile_env(tmp_path_factory.mktemp("hardening"))


@pytest.fixture(scope="module", params=KINDS)
def gate(request: pytest.FixtureRequest, env: GateEnv) -> Iterator[Target]:
    with target(request.param, env, "--access-log") as found:
        yield found


def post(gate: Target, path: str, **options: Any) -> httpx.Response:
    with httpx.Client(base_url=gate.url, timeout=options.pop("timeout", 15.0)) as client:
        return client.post(path, **options)


def served_or_refused(gate: Target, response: httpx.Response) -> str | None:
    """The model the app served (None when the gate refused), after checking the record agrees:
    whatever the app served is the model the gate decided on, and allowed."""
    decision_id = response.headers["x-aidr-decision-id"]
    record = gate.record(decision_id)
    if response.status_code != 200:
        assert record["event"]["outcome"] == "failure"
        return None
    served = response.json()["served"]
    assert record["event"]["outcome"] == "success"
    assert record["gen_ai"]["request"]["model"] == served
    return str(served)


# -- 1. a form part with two Content-Disposition headers -------------------------------------------

FORM_CT = "multipart/form-data; boundary=gate"


@pytest.mark.parametrize(
    "lines",
    [
        # Starlette keeps the last disposition: the app sees a field "x", no model.
        [
            b'Content-Disposition: form-data; name="model"',
            b'Content-Disposition: form-data; name="x"',
        ],
        [
            b'content-disposition: form-data; name="x"',
            b'CONTENT-DISPOSITION: form-data; name="model"',
        ],
        # RFC 5987: python-multipart ignores name*, a reader of RFC 5987 takes it.
        [b"Content-Disposition: form-data; name=\"model\"; name*=UTF-8''x"],
        [b"Content-Disposition: form-data; name=\"x\"; name*=UTF-8''model"],
    ],
)
def test_a_form_part_two_parsers_read_differently_is_refused(
    gate: Target, env: GateEnv, lines: list[bytes]
) -> None:
    body = form_body(
        [
            (lines, OPEN.encode()),
            ([b'Content-Disposition: form-data; name="file"; filename="a.wav"'], b"RIFF"),
        ]
    )
    response = post(
        gate,
        "/v1/audio/transcriptions",
        content=body,
        headers={**caller(env), "content-type": FORM_CT},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "FORM_AMBIGUOUS"
    assert served_or_refused(gate, response) is None


def test_a_plain_form_is_still_served_its_model(gate: Target, env: GateEnv) -> None:
    body = form_body([([b'Content-Disposition: form-data; name="model"'], OPEN.encode())])
    response = post(
        gate,
        "/v1/audio/transcriptions",
        content=body,
        headers={**caller(env), "content-type": FORM_CT},
    )
    assert response.status_code == 200, response.text
    assert served_or_refused(gate, response) == OPEN


# -- 2. the model header and the body must agree ----------------------------------------------------


def test_a_model_header_that_disagrees_with_the_body_is_refused(gate: Target, env: GateEnv) -> None:
    response = post(
        gate,
        "/v1/chat/completions",
        json={"model": CONTROLLED, "messages": []},
        headers={**caller(env), MODEL_HEADER: OPEN},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "MODEL_CONFLICT"
    assert served_or_refused(gate, response) is None


def test_a_model_header_over_a_body_without_a_model_is_refused(gate: Target, env: GateEnv) -> None:
    # The app would serve its default (controlled) model: the body must name the model.
    response = post(
        gate,
        "/v1/chat/completions",
        json={"messages": []},
        headers={**caller(env), MODEL_HEADER: OPEN},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "MODEL_MISSING"


def test_a_model_header_agreeing_with_the_body_is_served(gate: Target, env: GateEnv) -> None:
    response = post(
        gate,
        "/v1/chat/completions",
        json={"model": OPEN, "messages": []},
        headers={**caller(env), MODEL_HEADER: OPEN},
    )
    assert response.status_code == 200, response.text
    assert served_or_refused(gate, response) == OPEN


def test_a_model_header_that_disagrees_with_the_path_is_refused(gate: Target, env: GateEnv) -> None:
    response = post(
        gate,
        f"/v2/models/{CONTROLLED}/infer",
        json={"inputs": []},
        headers={**caller(env), MODEL_HEADER: OPEN},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "MODEL_CONFLICT"


def test_an_unreadable_model_header_is_refused(gate: Target, env: GateEnv) -> None:
    response = post(
        gate,
        "/v1/chat/completions",
        json={"model": OPEN},
        headers=[*caller(env).items(), (MODEL_HEADER, b"bad\xffmodel")],
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "MODEL_MISSING"


# -- 9. caller input never takes the internal-error path ---------------------------------------------


@pytest.mark.parametrize("name", [b"x", b"99999999"])
def test_a_form_charset_the_app_cannot_decode_is_a_400_without_a_traceback(
    gate: Target, env: GateEnv, name: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # punycode raises a bare UnicodeError on these names: Starlette does not catch it (a 500).
    charset = "punycode"
    disposition = b'Content-Disposition: form-data; name="' + name + b'"'
    body = form_body(
        [([disposition], b"x"), ([b'Content-Disposition: form-data; name="model"'], b"m")]
    )
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            response = post(
                gate,
                "/v1/audio/transcriptions",
                content=body,
                headers={**caller(env), "content-type": f"{FORM_CT}; charset={charset}"},
            )
            assert response.status_code == 400, response.text
            assert response.json()["error"]["code"] == "FORM_AMBIGUOUS"
    assert "Traceback" not in caplog.text + gate.log()
    assert "POLICY_EVALUATION_FAILED" not in gate.log()


def test_the_app_never_serves_the_default_to_a_form_without_model(
    gate: Target, env: GateEnv
) -> None:
    body = form_body(
        [([b'Content-Disposition: form-data; name="file"; filename="a.wav"'], b"RIFF")]
    )
    response = post(
        gate,
        "/v1/audio/transcriptions",
        content=body,
        headers={**caller(env), "content-type": FORM_CT},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "MODEL_MISSING"
    assert DEFAULT_MODEL == CONTROLLED


_ = (IP, Path)


# -- 8. a verified token whose claims JSON cannot hold ----------------------------------------------


@pytest.mark.parametrize("model", [OPEN, CONTROLLED])
def test_a_lone_surrogate_in_a_verified_sub_keeps_the_whole_record(
    gate: Target, env: GateEnv, model: str
) -> None:
    payload = json.dumps(claims(sub="user\ud800@andes", org="andes-br")).encode()  # \\ud800
    signed = env.key.sign_raw(payload)
    response = post(
        gate,
        "/v1/chat/completions",
        json={"model": model},
        headers={"authorization": f"Bearer {signed}", "x-forwarded-for": IP["BR"]},
    )
    assert response.status_code == (200 if model == OPEN else 403), response.text
    record = gate.record(response.headers["x-aidr-decision-id"])
    assert record["event"]["kind"] == "event"  # not a pipeline_error stand-in
    assert record["user"]["id"] == "user\\ud800@andes"
    assert record["organization"]["id"] == "andes-br"
    assert record["gen_ai"]["request"]["model"] == model
    if model == CONTROLLED:
        assert record["event"]["reason"] == response.json()["error"]["code"]


def test_a_huge_sub_is_recorded_cut_to_its_cap(gate: Target, env: GateEnv) -> None:
    signed = token(env, sub="u" * 5000)
    response = post(
        gate,
        "/v1/chat/completions",
        json={"model": OPEN},
        headers={"authorization": f"Bearer {signed}", "x-forwarded-for": IP["BR"]},
    )
    record = gate.record(response.headers["x-aidr-decision-id"])
    assert record["user"]["id"] == "u" * 512 + "...[TRUNCATED]"


# -- 13. line separators stay inside their record ----------------------------------------------------


def test_line_separators_never_split_a_record(gate: Target, env: GateEnv) -> None:
    marker = "x-sep-" + gate.kind
    response = post(
        gate,
        "/v2/models/a\u2028b\u2029c\u0085d/infer",
        json={},
        headers=[
            *caller(env).items(),
            ("user-agent", b"agent\x85two"),
            ("x-request-id", marker.encode() + b"\xe2\x80\xa8\xc2\x85"),
        ],
    )
    record = gate.record(response.headers["x-aidr-decision-id"])
    assert "\u2028" in record["url"]["path"] and "\x85" in record["url"]["path"]
    assert record["user_agent"]["original"] == "agent\x85two"
    for path in sorted(env.audit_dir.glob("*.jsonl*")):
        data = path.read_bytes()
        assert len(data.decode().splitlines()) == data.count(b"\n")


# -- 7. credentials never reach the gate's log or records --------------------------------------------

SECRET = "sk-live-5ecret5ecret5ecret5ecret"
JWT_SEGMENT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl"


def test_credentials_in_query_path_and_referer_are_redacted(gate: Target, env: GateEnv) -> None:
    response = post(
        gate,
        f"/v1/keys/{JWT_SEGMENT}/chat?api_key={SECRET}&token={SECRET}",
        json={},
        headers={
            **caller(env),
            "referer": f"https://app.example/page?api_key={SECRET}",
            "x-request-id": f"token={SECRET}",
        },
    )
    record = gate.record(response.headers["x-aidr-decision-id"])
    text = json.dumps(record)
    assert SECRET not in text and JWT_SEGMENT not in text
    assert record["url"]["path"] == "/v1/keys/[REDACTED]/chat"
    assert record["aidr"]["request"]["headers"]["referer"] == "https://app.example/page?[REDACTED]"
    log = gate.log()
    assert SECRET not in log and JWT_SEGMENT not in log
    if gate.kind == "sidecar":  # the access log is the sidecar's own
        assert "/v1/keys/[REDACTED]/chat?[REDACTED]" in log


# -- 3. headers: bounded work before the token, linear joins, capped records -------------------------


def test_a_flood_of_header_lines_is_431_before_any_token_is_read(
    gate: Target, env: GateEnv
) -> None:
    lines = b"".join(b"User-Agent: " + b"a" * 500 + b"\r\n" for _ in range(150))
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        + lines
        + (b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
    )
    answer = raw_request(gate.port, request)
    assert status_of(answer) == 431, answer[:300]
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
    decision_id = head.split("x-aidr-decision-id: ", 1)[1].split("\r\n", 1)[0]
    record = gate.record(decision_id)
    assert record["event"]["reason"] == "HEADERS_TOO_LARGE"
    agent = record["user_agent"]["original"]
    assert agent.endswith("...[TRUNCATED]") and len(agent) <= 512 + 14
    line = next(
        line
        for line in (env.audit_dir / "audit.jsonl").read_bytes().splitlines()
        if decision_id.encode() in line
    )
    assert len(line) < 16 * 1024


def test_megabytes_of_header_lines_are_refused_and_recorded_small(
    gate: Target, env: GateEnv
) -> None:
    lines = b"".join(b"User-Agent: " + b"b" * 500 + b"\r\n" for _ in range(12_000))
    request = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + lines + b"Connection: close\r\n\r\n"
    answer = raw_request(gate.port, request)
    # The server refuses a head past its cap (server_limits.head_cap) before the gate sees it:
    # 431, or a reset if it closed while the 6 MB were still being sent.
    assert answer == b"" or status_of(answer) == 431, answer[:200]
    response = post(gate, "/v1/chat/completions", json={"model": OPEN}, headers=caller(env))
    assert response.status_code == 200
    for line in (env.audit_dir / "audit.jsonl").read_bytes().splitlines():
        assert len(line) < 16 * 1024


def test_without_server_limits_the_gate_still_bounds_a_header_flood(tmp_path: Path) -> None:
    # A host running plain uvicorn (httptools accepts megabytes of headers): the gate answers
    # 431 before reading any token, and its record stays within the record cap.
    env = hostile_env(tmp_path)
    gated = AIDRGateMiddleware(hostile_app.app, config=str(env.config))
    with serve(gated) as server:
        lines = b"".join(b"User-Agent: " + b"b" * 500 + b"\r\n" for _ in range(12_000))
        request = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + lines + b"Connection: close\r\n\r\n"
        answer = raw_request(server.port, request)
        assert status_of(answer) == 431, answer[:200]
    lines_written = (env.audit_dir / "audit.jsonl").read_bytes().splitlines()
    assert lines_written and all(len(line) < 16 * 1024 for line in lines_written)


# -- 6. every spelling of a trusted header is stripped (the sidecar's upstream trusts them) ---------


@pytest.fixture(scope="module")
def sidecar_env(tmp_path_factory: pytest.TempPathFactory) -> GateEnv:
    return hostile_env(tmp_path_factory.mktemp("trusted"))


@pytest.fixture(scope="module")
def sidecar_gate(sidecar_env: GateEnv) -> Iterator[Target]:
    with target("sidecar", sidecar_env) as found:
        yield found


@pytest.mark.parametrize(
    "name", ["x_aidr_entity", "X_AIDR_ENTITY", "x-aidr_entity", "x_aidr-entity", "x_aidr_effect"]
)
def test_no_spelling_of_a_trusted_header_reaches_the_upstream(
    sidecar_gate: Target, sidecar_env: GateEnv, name: str
) -> None:
    env = sidecar_env
    # Only the sidecar sends trusted headers (the middleware hands the app its decision in
    # scope["state"]): the upstream must see the sidecar's value and no other, however spelled.
    response = post(
        sidecar_gate,
        "/v1/chat/completions",
        json={"model": OPEN},
        headers=[*caller(env).items(), (name, "nordlys-se")],
    )
    assert response.status_code == 200, response.text
    seen = response.json()
    environ = seen["environ"]
    assert environ["HTTP_X_AIDR_ENTITY"] == ["andes-br"]
    assert environ["HTTP_X_AIDR_EFFECT"] == ["allow"]
    assert "nordlys-se" not in json.dumps(seen["headers"])


# -- 12. IPv6 zone ids in a trusted hop -------------------------------------------------------------


@pytest.mark.parametrize(
    "hop",
    [f"{IPV6_BR}%eth0", f"{IPV6_BR}%25eth0", f"[{IPV6_BR}%eth0]:443", "::ffff:177.0.1.1%eth0"],
)
def test_a_zone_id_in_a_hop_resolves_to_the_addresss_own_country(
    gate: Target, env: GateEnv, hop: str
) -> None:
    response = post(
        gate,
        "/v1/chat/completions",
        json={"model": OPEN},
        headers={**caller(env), "x-forwarded-for": hop},
    )
    assert response.status_code == 200, response.text
    record = gate.record(response.headers["x-aidr-decision-id"])
    address = "177.0.1.1" if "177" in hop else IPV6_BR
    assert record["client"] == {"ip": address, "geo": {"country_iso_code": "BR"}}


# -- 11. fsync: always: a response whose record was not stored does not complete ---------------------


def limited_gate(kind: str, env: GateEnv, upstream: str, limit: int) -> Process:
    """The middleware (under uvicorn) or the sidecar in a process that cannot grow a file past
    *limit* bytes: its audit journal, then its spool, fill up and every write after fails."""
    port = free_port()
    if kind == "middleware":
        args = [str(TESTS / "hostile_app.py"), "--port", str(port), "--gate", str(env.config)]
        ready = "/health"
    else:
        args = ["-m", "aidr_gate", "serve", "--config", str(env.config), "--upstream", upstream]
        args += ["--port", str(port)]
        ready = "/healthz"
    command = [str(TESTS / "limited.py"), str(limit), *args]
    return Process(command, port, env.root / f"limited-{kind}.log", ready_path=ready)


@pytest.mark.parametrize("kind", KINDS)
def test_fsync_always_never_answers_a_request_whose_record_was_not_stored(
    tmp_path: Path, kind: str
) -> None:
    env = hostile_env(tmp_path)
    answered: list[str] = []
    aborted = 0
    with (
        upstream_process(tmp_path) as upstream,
        limited_gate(kind, env, upstream.url, 24 * 1024) as gate,
    ):
        with httpx.Client(base_url=gate.url, timeout=10) as client:
            for number in range(800):
                try:
                    response = client.post(
                        "/v1/chat/completions",
                        json={"model": OPEN, "n": number},
                        headers=caller(env),
                    )
                except httpx.TransportError:
                    aborted += 1
                    if aborted >= 5:
                        break
                    continue
                answered.append(response.headers["x-aidr-decision-id"])
        log = gate.output()
    stored = b"".join(p.read_bytes() for p in env.audit_dir.rglob("*") if p.is_file())
    assert aborted >= 5, f"no response was aborted in {len(answered)} answers"
    assert answered, "the gate answered nothing before its files filled up"
    missing = [d for d in answered if d.encode() not in stored]
    assert not missing, f"{len(missing)} answered requests have no record"
    assert "Traceback" not in log


# -- 4. bodies: a deadline, and a budget for the whole process --------------------------------------


def held_upload(gate: Target, env: GateEnv, declared: int, sent: int) -> socket.socket:
    """A connection that declares *declared* body bytes, sends *sent* of them and waits."""
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: {caller(env)['authorization']}\r\nX-Forwarded-For: {IP['BR']}\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", gate.port), timeout=15)
    sock.sendall(head + b'{"model":"' + OPEN.encode() + b'","pad":"' + b"x" * (sent - 30))
    return sock


def answer_of(sock: socket.socket) -> bytes:
    with sock:
        out = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while b"\r\n\r\n" not in out and (chunk := sock.recv(65536)):
                out += chunk
            head, _, body = out.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n")[0])
            while len(body) < length and (chunk := sock.recv(65536)):
                body += chunk
            out = head + b"\r\n\r\n" + body
        return out


def reason_of(answer: bytes) -> str:
    return str(json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"])


def test_a_body_that_never_ends_is_408_and_its_bytes_are_given_back(
    gate: Target, env: GateEnv
) -> None:
    answer = answer_of(held_upload(gate, env, 10_000, 100))
    assert status_of(answer) == 408 and reason_of(answer) == "BODY_TIMEOUT", answer[:300]


def test_bodies_held_at_once_are_bounded_for_the_whole_process(gate: Target, env: GateEnv) -> None:
    # The tests' budget is 4 MiB: two uploads of 2.5 MiB cannot both be held.
    first = held_upload(gate, env, 3 << 20, 5 << 19)
    second = held_upload(gate, env, 3 << 20, 5 << 19)
    answers = sorted((answer_of(first), answer_of(second)), key=status_of)
    assert [status_of(a) for a in answers] == [408, 503], [a[:200] for a in answers]
    refused = answers[1]
    assert reason_of(refused) == "BUFFER_BUDGET_EXHAUSTED"
    assert b"retry-after: 1" in refused.lower()
    # Both are over: the budget is whole again, and a large body fits.
    response = post(
        gate,
        "/v1/chat/completions",
        json={"model": OPEN, "pad": "y" * (5 << 19)},
        headers=caller(env),
    )
    assert response.status_code == 200, response.text
    assert served_or_refused(gate, response) == OPEN


# -- 10. bounded JSON work ---------------------------------------------------------------------------


def test_megabytes_of_tiny_json_objects_are_refused_unparsed(gate: Target, env: GateEnv) -> None:
    objects = b",".join([b'{"model":1}'] * 200_000)  # 2.2 MB, within the large share
    body = b'{"model":"' + OPEN.encode() + b'","x":[' + objects + b"]}"
    response = post(
        gate,
        "/v1/chat/completions",
        content=body,
        headers={**caller(env), "content-type": "application/json"},
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "BODY_TOO_COMPLEX"
    # Thousands of objects (a long conversation, tool schemas) are still read.
    messages = [{"role": "user", "content": f"m{i}"} for i in range(20_000)]
    response = post(
        gate,
        "/v1/chat/completions",
        json={"model": OPEN, "messages": messages},
        headers=caller(env),
    )
    assert response.status_code == 200, response.text


# -- 5. the server bounds slow connections (the sidecar's uvicorn; a host's, with server_options) ----


def test_connections_trickling_headers_are_closed_and_others_answered(
    gate: Target, env: GateEnv
) -> None:
    slow = []
    for _ in range(60):
        sock = socket.create_connection(("127.0.0.1", gate.port), timeout=15)
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        slow.append(sock)
    try:
        response = post(gate, "/v1/chat/completions", json={"model": OPEN}, headers=caller(env))
        assert response.status_code == 200, response.text
        closed = 0
        for sock in slow:  # the header deadline (1.5 s here) ends each, answered 408
            with contextlib.suppress(OSError):
                sock.sendall(b"a")
            answer = answer_of(sock)
            closed += status_of(answer) == 408
        assert closed == len(slow)
    finally:
        for sock in slow:
            sock.close()


def test_connections_past_the_limit_are_refused_until_idle_ones_time_out(
    gate: Target, env: GateEnv
) -> None:
    idle = [socket.create_connection(("127.0.0.1", gate.port), timeout=15) for _ in range(205)]
    try:
        with httpx.Client(base_url=gate.url, timeout=15) as client:
            crowded = client.post("/v1/chat/completions", json={"model": OPEN}, headers=caller(env))
        assert crowded.status_code == 503  # limits.max_connections is 200 here
        for sock in idle:
            answer_of(sock)  # each is closed at its header deadline
        response = post(gate, "/v1/chat/completions", json={"model": OPEN}, headers=caller(env))
        assert response.status_code == 200
    finally:
        for sock in idle:
            sock.close()


# -- memory: what a refusal leaves behind -----------------------------------------------------------


def test_a_refused_body_is_freed_at_once_and_refusals_share_their_facts(tmp_path: Path) -> None:
    env = hostile_env(tmp_path)
    runtime = Runtime.from_config(str(env.config))
    gated = AIDRGateMiddleware(hostile_app.app, runtime=runtime)
    objects = b",".join([b"{}"] * 120_000)  # past max_json_containers, within the budget
    tiny = b'{"model":"' + OPEN.encode() + b'","x":[' + objects + b"]}"

    async def run() -> tuple[list[object], int]:
        await runtime.start()
        try:
            transport = httpx.ASGITransport(gated, client=("127.0.0.1", 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://gate") as client:
                gc.collect()
                gc.disable()  # whatever is still alive after the refusals is held, not garbage
                try:
                    for _ in range(3):
                        response = await client.post(
                            "/v1/chat/completions",
                            content=tiny,
                            headers={**caller(env), "content-type": "application/json"},
                        )
                        assert response.status_code == 413
                    alive: list[object] = [
                        o for o in gc.get_objects() if isinstance(o, BufferedBody)
                    ]
                finally:
                    gc.enable()
                for _ in range(200):  # unauthenticated: refused before any token is read
                    response = await client.post("/v1/chat/completions", json={"model": OPEN})
                    assert response.status_code == 401
            assert runtime.audit is not None
            book = runtime.audit.renderer.book  # type: ignore[attr-defined]
            return alive, len(book._shared)
        finally:
            await runtime.close()

    alive, classes = asyncio.run(run())
    assert alive == []
    assert runtime.budget.held == 0
    assert classes <= 4  # 200 refusals of one kind are one class of facts, not 200


def test_large_bodies_leave_a_quarter_of_the_budget_to_small_ones() -> None:
    budget = BufferBudget(32 * MIB)

    def fill(size: int) -> int:
        held = 0
        while held < size:
            piece = min(64 * 1024, size - held)
            if not budget.take(piece, held):
                break
            held += piece
        return held

    held = [fill(8 * MIB) for _ in range(4)]
    # Three large bodies take the large share (24 MiB); the fourth stops where it turns large.
    assert held[:3] == [8 * MIB] * 3 and held[3] == LARGE_BODY
    budget.give_back(held.pop())
    small = [fill(4096) for _ in range(2048)]  # 8 MiB of small bodies still fit
    assert all(size == 4096 for size in small)
    assert not budget.take(64 * 1024)  # and then nothing does
    for size in held + small:
        budget.give_back(size)
    assert budget.held == 0 and budget.large_held == 0


def test_the_limits_section_is_read_and_checked(tmp_path: Path) -> None:
    env = hostile_env(tmp_path, limits="limits:\n  max_header_lines: 50\n  body_timeout: 2.5\n")
    limits = load_config(str(env.config)).get(LIMITS)
    assert (limits.max_header_lines, limits.body_timeout) == (50, 2.5)
    assert limits.max_buffered_bytes == Limits().max_buffered_bytes  # the rest at the defaults
    bad = hostile_env(tmp_path / "bad", limits="limits:\n  max_header_lines: 2\n  nope: 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(bad.config))
    text = str(caught.value)
    assert "limits.max_header_lines" in text and "nope" in text and str(bad.config) in text


def test_a_reload_applies_the_limits_in_its_swap_and_keeps_the_server_ones(tmp_path: Path) -> None:
    """Header and body limits, the buffer budget and the record caps follow a reload at once (the
    budget keeps counting the bodies in flight); the sidecar's uvicorn limits wait for a restart."""
    env = hostile_env(tmp_path)
    text = env.config.read_text()
    runtime = Runtime.from_config(str(env.config))
    gated = AIDRGateMiddleware(hostile_app.app, runtime=runtime)
    many = {f"x-filler-{n}": "x" for n in range(40)}  # 40 header lines: within 100, past 20

    async def run() -> None:
        await runtime.start()
        try:
            transport = httpx.ASGITransport(gated, client=("127.0.0.1", 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://gate") as client:
                sent = {**caller(env), **many}
                response = await client.post(
                    "/v1/chat/completions", json={"model": OPEN}, headers=sent
                )
                assert response.status_code == 200
                budget = runtime.budget
                assert budget.take(1024 * 1024)  # a body in flight across the reload
                env.config.write_text(
                    text.replace(
                        "  max_buffered_bytes: 4194304\n",
                        "  max_buffered_bytes: 2097152\n"
                        "  max_header_lines: 20\n  max_recorded_value: 100\n",
                    ).replace("  max_connections: 200\n", "  max_connections: 50\n")
                )
                report = await runtime.reload()
                assert report.ok, report.detail
                assert report.restart_pending == ("limits.max_connections",)
                assert runtime.limits.max_header_lines == 20
                assert runtime.limits.max_connections == 200  # what uvicorn runs with
                assert runtime.budget is budget and budget.limit == 2097152
                assert budget.held == 1024 * 1024
                assert not budget.take(1024 * 1024 + 1)  # the new limit, with what is held
                budget.give_back(1024 * 1024)
                assert budget.held == 0
                assert runtime.audit is not None and runtime.audit.redactor.max_value == 100
                response = await client.post(
                    "/v1/chat/completions", json={"model": OPEN}, headers=sent
                )
                assert response.status_code == 431
                assert response.json()["error"]["code"] == "HEADERS_TOO_LARGE"
        finally:
            await runtime.close()

    asyncio.run(run())
