"""Fuzzing the middleware in-process: 10,000 generated requests (headers, tokens, bodies, paths,
forwarding headers). It never answers 500, never lets an exception escape, and never lets through a
request its policy denies: for well-formed requests the expected decision is computed independently.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aidr_gate.asgi.middleware import AIDRGateMiddleware
from aidr_gate.asgi.types import Message, Receive, Scope, Send
from aidr_gate.decision import Effect
from aidr_gate.facts import AnonymizerFlag, Identity, declared_origin
from aidr_gate.runtime import Runtime
from support.gate_env import IP, PRIVATE_IP, VPN_IP, GateEnv, make_gate_env
from support.jwks_server import rsa_key

ENTITIES = [
    "lab-us",
    "sakura-jp",
    "merlion-sg",
    "andes-br",
    "nordlys-se",
    "harbour-hk",
    "pars-ir",
    "blocked-ae",
    "ghost",
]
MODELS = [
    "aurora-frontier",
    "aurora-mini",
    "aurora-ft-custom",
    "llama-3.1-405b",
    "open-giant",
    "embed-small",
    "mystery",
]
COUNTRY_OF = {ip: cc for cc, ip in IP.items()}
COUNTRY_OF[VPN_IP] = "US"
COUNTRY_OF[PRIVATE_IP] = None  # type: ignore[assignment]
BATCH = 100
EXAMPLES = 100  # 100 x 100 = 10,000 requests


@dataclass
class Probe:
    """One generated request and what is known about it by construction."""

    method: str
    path: str
    headers: list[tuple[bytes, bytes]]
    chunks: list[bytes]
    entity: str | None  # set when the token is valid
    ip: str | None  # set when X-Forwarded-For is exactly one known address
    model: str | None  # set when the model is unambiguous
    clean: bool  # every part well formed: the decision can be predicted


class World:
    """One runtime on one event loop for all examples (the runtime's tasks live on that loop)."""

    def __init__(self, root: Path) -> None:
        self.env: GateEnv = make_gate_env(root)
        self.loop = asyncio.new_event_loop()
        self.runtime = Runtime.from_config(str(self.env.config))
        self.loop.run_until_complete(self.runtime.start())
        self.reached: list[Effect] = []

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                return
            decision = scope["state"]["aidr_decision"]
            self.reached.append(decision.effect)
            while True:  # drain the replayed body as an app would
                message = await receive()
                if not message.get("more_body"):
                    break
            body = (
                b'{"object":"list","data":[{"id":"aurora-frontier"},{"id":"llama-3.1-405b"}]}'
                if scope["path"] == "/v1/models"
                else b'{"ok":true}'
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})

        self.middleware = AIDRGateMiddleware(app, runtime=self.runtime)
        self.forged = rsa_key("gate-test", index=5)

    def close(self) -> None:
        """Stop the runtime and the loop."""
        self.loop.run_until_complete(self.runtime.close())
        self.loop.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The shared runtime and app."""
    w = World(tmp_path_factory.mktemp("fuzz"))
    yield w
    w.close()


text = st.text(max_size=40)
junk_bytes = st.binary(max_size=60)


@st.composite
def probes(draw: st.DrawFn, world_key: Any) -> Probe:
    """A request: mostly plausible, often broken in one or more places."""
    clean = True
    entity = draw(st.sampled_from(ENTITIES))
    token_kind = draw(
        st.sampled_from(
            ["valid", "valid", "valid", "expired", "forged", "garbage", "missing", "scheme"]
        )
    )
    headers: list[tuple[bytes, bytes]] = []
    valid_entity: str | None = None
    if token_kind == "valid":
        headers.append((b"authorization", b"Bearer " + world_key.env.token(entity).encode()))
        valid_entity = entity
    elif token_kind == "expired":
        headers.append(
            (b"authorization", b"Bearer " + world_key.env.token(entity, exp=1000).encode())
        )
    elif token_kind == "forged":
        headers.append(
            (b"authorization", b"Bearer " + world_key.forged.sign({"sub": entity}).encode())
        )
    elif token_kind == "garbage":
        headers.append((b"authorization", draw(junk_bytes)))
    elif token_kind == "scheme":
        headers.append((b"authorization", b"Basic " + draw(junk_bytes)))
    clean = clean and valid_entity is not None

    ip_kind = draw(
        st.sampled_from(["known", "known", "known", "vpn", "private", "none", "garbage", "chain"])
    )
    single_ip: str | None = None
    if ip_kind == "known":
        single_ip = draw(st.sampled_from(sorted(IP.values())))
        headers.append((b"x-forwarded-for", single_ip.encode()))
    elif ip_kind == "vpn":
        single_ip = VPN_IP
        headers.append((b"x-forwarded-for", VPN_IP.encode()))
    elif ip_kind == "private":
        single_ip = PRIVATE_IP
        headers.append((b"x-forwarded-for", PRIVATE_IP.encode()))
    elif ip_kind == "garbage":
        headers.append((b"x-forwarded-for", draw(junk_bytes)))
        clean = False
    elif ip_kind == "chain":
        hops = draw(
            st.lists(
                st.sampled_from([*IP.values(), "unknown", "1.2.3.4.5", ""]), min_size=2, max_size=5
            )
        )
        headers.append((b"x-forwarded-for", ", ".join(hops).encode()))
        clean = False
    if draw(st.booleans()):
        headers.append((b"forwarded", draw(junk_bytes)))
        clean = False if ip_kind != "none" else clean
    if ip_kind == "none":
        single_ip = "127.0.0.1"  # the trusted peer itself: no header
    for _ in range(draw(st.integers(0, 2))):
        headers.append(
            (
                draw(st.sampled_from([b"x-junk", b"content-type", b"x-model", b"cookie"])),
                draw(junk_bytes),
            )
        )

    route = draw(
        st.sampled_from(["chat", "chat", "completions", "kserve", "models", "audio", "random"])
    )
    model = draw(st.sampled_from(MODELS))
    method = "POST"
    chunks: list[bytes] = []
    model_known: str | None = model
    if route in ("chat", "completions"):
        path = "/v1/chat/completions" if route == "chat" else "/v1/completions"
        body_kind = draw(st.sampled_from(["good", "good", "good", "junk", "json", "no-model"]))
        if body_kind == "good":
            raw = json.dumps(
                {"model": model, "messages": [{"role": "user", "content": draw(text)}]}
            ).encode()
        elif body_kind == "junk":
            raw = draw(junk_bytes)
            clean, model_known = False, None
        elif body_kind == "json":
            raw = json.dumps(
                draw(
                    st.recursive(
                        st.none() | st.integers() | text,
                        lambda c: st.lists(c, max_size=3) | st.dictionaries(text, c, max_size=3),
                        max_leaves=8,
                    )
                )
            ).encode()
            clean, model_known = False, None
        else:
            raw = b'{"messages": []}'
            clean, model_known = False, None
        split = draw(st.integers(0, len(raw)))
        chunks = [raw[:split], raw[split:]] if draw(st.booleans()) else [raw]
    elif route == "audio":  # a multipart upload: the model is a form field
        path = "/v1/audio/transcriptions"
        typed = any(name == b"content-type" for name, _ in headers)  # a junk one: two in all
        if draw(st.booleans()):
            audio = draw(st.binary(max_size=64))
            form = httpx.Request(
                "POST", "http://fuzz/", data={"model": model}, files={"file": ("a.wav", audio)}
            )
            raw = form.read()
            headers.append((b"content-type", form.headers["content-type"].encode()))
            if typed:
                clean, model_known = False, None
        else:
            raw = draw(junk_bytes)
            headers.append((b"content-type", b"multipart/form-data; boundary=" + draw(junk_bytes)))
            clean, model_known = False, None
        split = draw(st.integers(0, len(raw)))
        chunks = [raw[:split], raw[split:]] if draw(st.booleans()) else [raw]
    elif route == "kserve":
        path = f"/v2/models/{model}/infer"
        chunks = [b'{"inputs": []}']
    elif route == "models":
        method, path, model_known = "GET", "/v1/models", None
        clean = False  # listings are decided per model; checked separately below
    else:
        path = "/" + draw(
            st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=20)
        )
        method = draw(st.sampled_from(["GET", "POST", "DELETE"]))
        clean, model_known = False, None
    return Probe(method, path, headers, chunks, valid_entity, single_ip, model_known, clean)


async def call(world: World, probe: Probe) -> tuple[int, dict[bytes, bytes]]:
    """Send one request through the middleware, as uvicorn would."""
    pending = list(probe.chunks) or [b""]
    messages: list[Message] = []

    async def receive() -> Message:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
        await asyncio.sleep(0)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        messages.append(message)

    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": probe.method,
        "scheme": "http",
        "path": probe.path,
        "raw_path": probe.path.encode("utf-8", "surrogateescape"),
        "query_string": b"",
        "headers": probe.headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    await world.middleware(scope, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    return start["status"], dict(start.get("headers", []))


# 10,000 requests take about 50 s on a quiet machine; the suite-wide 120 s is too tight on a busy one.
@pytest.mark.timeout(600)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
    database=None,
)
@given(data=st.data())
def test_fuzzed_requests(world: World, data: st.DataObject) -> None:
    batch = data.draw(st.lists(probes(world), min_size=BATCH, max_size=BATCH))
    gate = world.runtime.gate
    for probe in batch:
        before = len(world.reached)
        status, headers = world.loop.run_until_complete(call(world, probe))
        reached = len(world.reached) > before
        assert status != 500
        if world.runtime.settings.exempt(probe.path):
            continue
        assert b"x-aidr-decision-id" in headers
        if reached:
            assert (
                world.reached[-1] is not Effect.DENY
            )  # enforce mode: a deny never reaches the app
        if probe.entity is None:  # no valid token: who is calling comes first
            assert not reached
            assert status == 401
        if probe.clean and probe.ip is not None:
            country = COUNTRY_OF.get(probe.ip)
            flags = frozenset({AnonymizerFlag.VPN}) if probe.ip == VPN_IP else frozenset()
            expected = gate.decide(
                identity=Identity(probe.entity or ""),
                origin=declared_origin(country, flags),
                model_id=probe.model,
            )
            assert reached == expected.allowed, (probe, expected.reasons, status)
            if not expected.allowed:
                assert status == expected.status
