"""The middleware in front of a real model app under uvicorn, driven by the openai SDK.

The same suite runs on a bare Starlette app, on FastAPI, and with the class added the way vLLM adds
it (no arguments; configuration from ``$AIDR_GATE_CONFIG``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette

from aidr_gate.asgi.middleware import AIDRGateMiddleware
from aidr_gate.demo.model_server import build_model_app
from support.gate_env import IP, VPN_IP, GateEnv, make_gate_env
from support.jwks_server import rsa_key
from support.servers import ThreadedServer, openai_client, serve

FLAVOURS = ("starlette", "fastapi", "vllm-style")


def build_app(flavour: str, env: GateEnv) -> Starlette | FastAPI:
    """The test model app with the gate added as a model host would add it."""
    model_app = build_model_app(token_delay=0.01, echo_digest=True)
    if flavour == "starlette":
        model_app.add_middleware(AIDRGateMiddleware, config=str(env.config))
        return model_app
    if flavour == "fastapi":
        app = FastAPI()
        app.mount("/", model_app)
        app.add_middleware(AIDRGateMiddleware, config=str(env.config))
        return app
    # vLLM: ``app.add_middleware(cls)`` with no arguments; the config comes from the environment.
    model_app.add_middleware(AIDRGateMiddleware)
    return model_app


@pytest.fixture(params=FLAVOURS)
def served(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[GateEnv, ThreadedServer]]:
    """A gate and its model app running under uvicorn on 127.0.0.1."""
    env = make_gate_env(tmp_path)
    monkeypatch.setenv("AIDR_GATE_CONFIG", str(env.config))
    # uvicorn's own proxy-header handling would rewrite the peer: the gate does that job.
    with serve(build_app(request.param, env), proxy_headers=False) as server:
        yield env, server


def client(server: ThreadedServer, token: str, ip: str) -> openai.OpenAI:
    """An openai SDK client calling through the gate as if from *ip* (behind a loopback proxy)."""
    return openai_client(f"{server.url}/v1", token, ip)


def test_allowed_chat_gets_its_answer(served: tuple[GateEnv, ThreadedServer]) -> None:
    env, server = served
    sdk = client(server, env.token("lab-us"), IP["US"])
    raw = sdk.chat.completions.with_raw_response.create(
        model="aurora-frontier", messages=[{"role": "user", "content": "hello gate"}]
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == "Hello from aurora-frontier. You said: hello gate"
    assert len(raw.headers["x-aidr-decision-id"]) == 28
    assert float(raw.headers["x-aidr-gate-overhead-ms"]) >= 0


def test_streamed_answer_arrives_in_several_chunks(served: tuple[GateEnv, ThreadedServer]) -> None:
    env, server = served
    sdk = client(server, env.token("sakura-jp"), IP["JP"])
    stream = sdk.chat.completions.create(
        model="llama-3.1-405b",
        messages=[{"role": "user", "content": "one two three four"}],
        stream=True,
    )
    pieces = [
        c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) >= 5
    assert "".join(pieces) == "Hello from llama-3.1-405b. You said: one two three four"


def test_completions_and_embeddings(served: tuple[GateEnv, ThreadedServer]) -> None:
    env, server = served
    sdk = client(server, env.token("andes-br"), IP["BR"])
    text = sdk.completions.create(model="aurora-mini", prompt="hi there")
    assert text.choices[0].text.startswith("Hello from aurora-mini")
    vectors = sdk.embeddings.create(model="embed-small", input=["a", "b"])
    assert len(vectors.data) == 2


def test_tier3_denial_is_status_451(served: tuple[GateEnv, ThreadedServer]) -> None:
    env, server = served
    sdk = client(server, env.token("nordlys-se"), IP["SE"])
    with pytest.raises(openai.APIStatusError) as info:
        sdk.chat.completions.create(
            model="aurora-frontier", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.status_code == 451
    error = info.value.body
    assert isinstance(error, dict)
    assert error["code"] == "TIER3_CONTROLLED_MODEL"
    assert error["decision_id"] == info.value.response.headers["x-aidr-decision-id"]


def test_streaming_denial_is_status_451(served: tuple[GateEnv, ThreadedServer]) -> None:
    env, server = served
    sdk = client(server, env.token("harbour-hk"), IP["HK"])
    with pytest.raises(openai.APIStatusError) as info:
        sdk.chat.completions.create(
            model="aurora-frontier", messages=[{"role": "user", "content": "x"}], stream=True
        )
    assert info.value.status_code == 451


def test_missing_agreement_is_permission_denied(served: tuple[GateEnv, ThreadedServer]) -> None:
    env, server = served
    sdk = client(server, env.token("andes-br"), IP["BR"])
    with pytest.raises(openai.PermissionDeniedError) as info:
        sdk.chat.completions.create(
            model="aurora-frontier", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.code == "NO_VALID_AGREEMENT"


def test_audio_is_decided_on_its_form_model(served: tuple[GateEnv, ThreadedServer]) -> None:
    env, server = served
    sdk = client(server, env.token("andes-br"), IP["BR"])
    audio = ("speech.wav", b"RIFF" + bytes(5000), "audio/wav")
    heard = sdk.audio.transcriptions.create(model="aurora-mini", file=audio)
    assert heard.text == "aurora-mini heard 5004 bytes of speech.wav"
    with pytest.raises(openai.PermissionDeniedError) as info:
        sdk.audio.transcriptions.create(model="aurora-frontier", file=audio)
    assert info.value.code == "NO_VALID_AGREEMENT"
    records = env.audit_records()
    assert [r["gen_ai"]["request"]["model"] for r in records[-2:]] == [
        "aurora-mini",
        "aurora-frontier",
    ]
    assert records[-1]["aidr"]["model"]["tier"] == "controlled"
    # Larger than max_body_bytes (8 MiB, for JSON), within max_form_bytes (32 MiB): decided.
    long_take = ("take.wav", b"RIFF" + bytes(10 * 1024 * 1024), "audio/wav")
    heard = sdk.audio.transcriptions.create(model="aurora-mini", file=long_take)
    assert heard.text == f"aurora-mini heard {10 * 1024 * 1024 + 4} bytes of take.wav"
    not_a_form = httpx.post(
        f"{server.url}/v1/audio/transcriptions",
        json={"model": "aurora-mini"},
        headers={"authorization": f"Bearer {env.token('andes-br')}", "x-forwarded-for": IP["BR"]},
    )
    assert not_a_form.status_code == 400
    assert not_a_form.json()["error"]["code"] == "BODY_NOT_FORM"


def test_anonymizer_is_denied_for_controlled(served: tuple[GateEnv, ThreadedServer]) -> None:
    env, server = served
    sdk = client(server, env.token("lab-us"), VPN_IP)
    with pytest.raises(openai.APIStatusError) as info:
        sdk.chat.completions.create(
            model="aurora-frontier", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.status_code == 451
    assert info.value.code == "ANONYMIZED_ORIGIN"


def test_bad_tokens_are_authentication_errors(served: tuple[GateEnv, ThreadedServer]) -> None:
    env, server = served
    forged = rsa_key("gate-test", index=7).sign({"sub": "lab-us"})
    expired = env.token("lab-us", exp=1_000_000)
    for token, code in (
        (forged, "TOKEN_SIGNATURE_INVALID"),
        (expired, "TOKEN_EXPIRED"),
        ("x", "TOKEN_MALFORMED"),
    ):
        sdk = client(server, token, IP["US"])
        with pytest.raises(openai.AuthenticationError) as info:
            sdk.chat.completions.create(
                model="llama-3.1-405b", messages=[{"role": "user", "content": "x"}]
            )
        assert info.value.code == code
        challenge = info.value.response.headers["www-authenticate"]
        assert challenge.startswith("Bearer") and 'error="invalid_token"' in challenge


def test_model_listing_matches_invoking(served: tuple[GateEnv, ThreadedServer]) -> None:
    env, server = served
    brazil = {m.id for m in client(server, env.token("andes-br"), IP["BR"]).models.list()}
    assert brazil == {"aurora-mini", "llama-3.1-405b", "open-giant", "embed-small"}
    usa = {m.id for m in client(server, env.token("lab-us"), IP["US"]).models.list()}
    assert {"aurora-frontier", "aurora-ft-custom"} <= usa
    with pytest.raises(openai.APIStatusError) as info:
        client(server, env.token("pars-ir"), IP["DE"]).models.list()
    assert info.value.status_code == 451


def test_log_effect_passes_and_says_so(served: tuple[GateEnv, ThreadedServer]) -> None:
    env, server = served
    sdk = client(server, env.token("sakura-jp"), IP["SG"])
    raw = sdk.chat.completions.with_raw_response.create(
        model="aurora-mini", messages=[{"role": "user", "content": "x"}]
    )
    assert raw.parse().choices[0].message.content
    decision_id = raw.headers["x-aidr-decision-id"]
    records = [r for r in env.audit_records() if r.get("event", {}).get("id") == decision_id]
    assert len(records) == 1
    assert records[0]["event"]["outcome"] == "success"


def test_body_reaches_the_app_byte_for_byte(served: tuple[GateEnv, ThreadedServer]) -> None:
    env, server = served
    body = b'{"model": "aurora-mini",   "messages": [{"role": "user", "content": "caf\\u00e9 \xe2\x98\x95"}]}'
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=body,
        headers={
            "authorization": f"Bearer {env.token('andes-br')}",
            "x-forwarded-for": IP["BR"],
            "content-type": "application/json",
        },
    )
    assert response.status_code == 200
    import hashlib

    assert response.headers["x-received-body-sha256"] == hashlib.sha256(body).hexdigest()


def test_chunked_upload_is_replayed(served: tuple[GateEnv, ThreadedServer]) -> None:
    env, server = served
    payload = json.dumps({"model": "aurora-mini", "prompt": "p" * 50_000}).encode()

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(payload), 7_000):
            yield payload[start : start + 7_000]

    response = httpx.post(
        f"{server.url}/v1/completions",
        content=pieces(),
        headers={"authorization": f"Bearer {env.token('andes-br')}", "x-forwarded-for": IP["BR"]},
    )
    assert response.status_code == 200
    import hashlib

    assert response.headers["x-received-body-sha256"] == hashlib.sha256(payload).hexdigest()


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "BODY_NOT_JSON"),
        (b"[1, 2]", 400, "BODY_NOT_JSON"),
        (b'{"messages": []}', 400, "MODEL_MISSING"),
        (b'{"model": 42}', 400, "MODEL_MISSING"),
        (b'{"model": "a", "model": "aurora-mini"}', 400, "BODY_NOT_JSON"),
        (
            b'{"model": "aurora-mini", "pad": "' + b"x" * (9 * 1024 * 1024) + b'"}',
            413,
            "BODY_TOO_LARGE",
        ),
    ],
    ids=["garbage", "array", "no-model", "model-not-text", "duplicate-model", "too-large"],
)
def test_bad_bodies(tmp_path: Path, body: bytes, status: int, code: str) -> None:
    env = make_gate_env(tmp_path)
    with serve(build_app("starlette", env), proxy_headers=False) as server:
        response = httpx.post(
            f"{server.url}/v1/chat/completions",
            content=body,
            headers={"authorization": f"Bearer {env.token('lab-us')}", "x-forwarded-for": IP["US"]},
            timeout=30,
        )
        assert response.status_code == status
        assert response.json()["error"]["code"] == code
        assert "x-aidr-decision-id" in response.headers
        records = env.audit_records()
        assert records[-1]["event"]["id"] == response.headers["x-aidr-decision-id"]


def test_exempt_paths_pass_without_a_decision(served: tuple[GateEnv, ThreadedServer]) -> None:
    _, server = served
    response = httpx.get(f"{server.url}/health")
    assert response.status_code == 200
    assert "x-aidr-decision-id" not in response.headers


def test_spoofed_forwarding_from_outside_is_ignored(tmp_path: Path) -> None:
    # Only loopback is trusted by default here; the test client IS loopback, so trust nothing.
    env = make_gate_env(tmp_path)
    env.config.write_text(env.config.read_text().replace('[127.0.0.0/8, "::1/128"]', "[]"))
    with serve(build_app("starlette", env), proxy_headers=False) as server:
        sdk = client(server, env.token("lab-us"), IP["US"])
        raw = sdk.chat.completions.with_raw_response.create(
            model="llama-3.1-405b", messages=[{"role": "user", "content": "x"}]
        )
        decision_id = raw.headers["x-aidr-decision-id"]
        (record,) = [r for r in env.audit_records() if r["event"]["id"] == decision_id]
        # The peer 127.0.0.1 is the client: its X-Forwarded-For is not believed.
        assert record["client"]["ip"] == "127.0.0.1"
