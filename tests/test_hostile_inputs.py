"""The hostile-input suite: generated variants of every attack class of issue 12, through the
middleware under uvicorn and the sidecar in front of a real upstream process.

Whatever a variant does, two things hold: when the app answers, it served the model the gate
decided on (the audit record of that decision names it, allowed); and a bystander calling all the
while keeps being answered, correctly. No variant gets a 500.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import cast

import httpx
import pytest

from support.gate_env import IP, GateEnv
from support.hostile_support import (
    IPV6_BR,
    MODEL_HEADER,
    Target,
    caller,
    form_body,
    hostile_env,
    target,
)

OPEN = "aurora-mini"
CONTROLLED = "aurora-frontier"
MODELS = (OPEN, CONTROLLED, "llama-3.1-405b")
FORM_CT = "multipart/form-data; boundary=gate"


@dataclass
class Variant:
    """One hostile request: where it goes, what it sends."""

    name: str
    path: str
    content: bytes
    headers: list[tuple[str, str | bytes]] = field(default_factory=list)
    content_type: str = "application/json"


def _dispositions() -> Iterator[Variant]:
    """Form parts whose Content-Disposition two parsers could read differently."""
    name_spellings = [
        b'name="model"',
        b"name=model",
        b'NAME="model"',
        b'name = "model"',
        b'name="x"; name="model"',
        b'name="model"; name="x"',
        b"name*=UTF-8''model",
        b"name=\"x\"; name*=UTF-8''model",
        b"name=\"model\"; name*0*=UTF-8''x",
        b"name=\"model\"; filename*=UTF-8''a.wav",
        b'name="mo\\"del"',
        b'name="model\\"',
        b'filename="a.wav"; name="model"',
        b"",
    ]
    header_names = [b"Content-Disposition", b"content-disposition", b"CONTENT-DISPOSITION"]
    for number, (spelling, header, model) in enumerate(
        itertools.product(name_spellings, header_names, MODELS[:2])
    ):
        line = header + b": form-data; " + spelling
        parts = [([line], model.encode())]
        yield Variant(f"form-{number}", "/v1/audio/transcriptions", form_body(parts), [], FORM_CT)
    # Two disposition headers in one part, any order and case.
    for number, (first, second) in enumerate(itertools.permutations(name_spellings[:6], 2)):
        lines = [
            b"Content-Disposition: form-data; " + first,
            b"content-disposition: form-data; " + second,
        ]
        body = form_body([(lines, OPEN.encode())])
        yield Variant(f"form-twice-{number}", "/v1/audio/transcriptions", body, [], FORM_CT)
    # Charsets, repeated fields, a model that is a file.
    for number, charset in enumerate(["utf-16", "utf-7", "punycode", "latin-1", "nope", "idna"]):
        body = form_body([([b'Content-Disposition: form-data; name="model"'], OPEN.encode())])
        yield Variant(
            f"form-charset-{number}",
            "/v1/audio/transcriptions",
            body,
            [],
            f"{FORM_CT}; charset={charset}",
        )
    twice = form_body([([b'Content-Disposition: form-data; name="model"'], OPEN.encode())] * 2)
    yield Variant("form-repeated", "/v1/audio/transcriptions", twice, [], FORM_CT)
    filed = form_body(
        [([b'Content-Disposition: form-data; name="model"; filename="m"'], OPEN.encode())]
    )
    yield Variant("form-file", "/v1/audio/transcriptions", filed, [], FORM_CT)


def _json_bodies() -> Iterator[Variant]:
    """JSON model smuggling, and the model header against the body."""
    bodies = [
        b'{"model":"%s","model":"%s"}',
        b'{"model":"%s","\\u006dodel":"%s"}',
        b'{"model":"%s","x":{"model":"%s"}}',
        b'{"m\\u006fdel":"%s","messages":[],"y":"%s"}',
        b'\xef\xbb\xbf{"model":"%s","z":"%s"}',
        b' {"model" : "%s" , "n":"%s"}',
        b'{"model":["%s","%s"]}',
        b'{"model":"%s\\u2028","m":"%s"}',
    ]
    for number, (body, (a, b)) in enumerate(
        itertools.product(bodies, itertools.permutations(MODELS[:2], 2))
    ):
        content = body % (a.encode(), b.encode())
        yield Variant(f"json-{number}", "/v1/chat/completions", content)
        yield Variant(f"json-header-{number}", "/v1/chat/completions", content, [(MODEL_HEADER, b)])
    for number, (header, body_model) in enumerate(itertools.product(MODELS, [*MODELS, None])):
        content = json.dumps({} if body_model is None else {"model": body_model}).encode()
        yield Variant(f"header-{number}", "/v1/chat/completions", content, [(MODEL_HEADER, header)])
        yield Variant(
            f"path-{number}", f"/v2/models/{header}/infer", content, [(MODEL_HEADER, CONTROLLED)]
        )


def _headers() -> Iterator[Variant]:
    """Trusted-header spellings, hops with zone ids and junk, separators, credentials, floods."""
    body = json.dumps({"model": OPEN}).encode()
    for number, name in enumerate(
        ["x_aidr_entity", "X-AIDR-ENTITY", "x-aidr_effect", "x_aidr_decision_id", "x-aidr-entity"]
    ):
        yield Variant(f"trusted-{number}", "/v1/chat/completions", body, [(name, "nordlys-se")])
    for number, hop in enumerate(
        [
            f"{IPV6_BR}%eth0",
            f"[{IPV6_BR}%25x]:1",
            "fe80::1%",
            "unknown",
            "1.2.3.4%eth0",
            "::ffff:177.0.1.1%1",
        ]
    ):
        yield Variant(f"hop-{number}", "/v1/chat/completions", body, [("x-forwarded-for", hop)])
    for number, text in enumerate([b"a\xe2\x80\xa8b", b"a\xc2\x85b", b"\x85", b"ua\xe2\x80\xa9"]):
        yield Variant(f"separator-{number}", "/v1/chat/completions", body, [("user-agent", text)])
    yield Variant(
        "credential-referer", "/v1/chat/completions", body, [("referer", "https://a/?api_key=k")]
    )
    for count in (90, 101, 400):
        flood: list[tuple[str, str | bytes]] = [("user-agent", "u" * 200)] * count
        yield Variant(f"flood-{count}", "/v1/chat/completions", body, flood)


VARIANTS = [*_dispositions(), *_json_bodies(), *_headers()]


def test_the_suite_is_large_enough() -> None:
    assert len(VARIANTS) >= 150


@pytest.fixture(scope="module", params=("middleware", "sidecar"))
def gate(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    env = hostile_env(tmp_path_factory.mktemp(f"hostile-{request.param}"))
    with target(request.param, env) as found:
        yield found


class Bystander:
    """A legitimate caller that keeps calling while the attacks run; every answer is checked."""

    def __init__(self, gate: Target, env: GateEnv) -> None:
        self.gate = gate
        self.env = env
        self.answers: list[tuple[int, str | None]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        headers = caller(self.env, "andes-br", IP["BR"])
        with httpx.Client(base_url=self.gate.url, timeout=20) as client:
            for _ in range(5000):  # bounded; stopped long before
                if self._stop.is_set():
                    return
                try:
                    response = client.post(
                        "/v1/chat/completions", json={"model": OPEN}, headers=headers
                    )
                except httpx.HTTPError as exc:
                    self.failures.append(type(exc).__name__)
                    continue
                served = response.json().get("served") if response.status_code == 200 else None
                self.answers.append((response.status_code, served))

    def __enter__(self) -> Bystander:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def test_the_app_only_ever_serves_what_the_gate_decided_and_bystanders_are_answered(
    gate: Target,
) -> None:
    env = gate.env
    sent: list[tuple[Variant, httpx.Response]] = []
    with Bystander(gate, env) as bystander, httpx.Client(base_url=gate.url, timeout=20) as client:
        for variant in VARIANTS:
            headers: list[tuple[str, str | bytes]] = [
                *caller(env).items(),
                ("content-type", variant.content_type),
                *variant.headers,
            ]
            # httpx takes str and bytes values side by side; its type names one or the other.
            mixed = cast("list[tuple[str, str]]", headers)
            response = client.post(variant.path, content=variant.content, headers=mixed)
            sent.append((variant, response))
    records = {r["event"]["id"]: r for r in env.audit_records() if "event" in r}
    served_by_app = 0
    for variant, response in sent:
        assert response.status_code < 500 or response.status_code == 503, (
            variant.name,
            response.text,
        )
        decision_id = response.headers.get("x-aidr-decision-id")
        assert decision_id, (variant.name, response.status_code)
        record = records[decision_id]
        if response.status_code == 200:
            served_by_app += 1
            served = response.json()["served"]
            assert record["event"]["outcome"] == "success", variant.name
            assert record["gen_ai"]["request"]["model"] == served, (variant.name, served)
            if gate.kind == "sidecar":  # the headers only the sidecar sets (the middleware
                # hands its decision to the app in scope["state"])
                environ = response.json()["environ"]
                assert environ["HTTP_X_AIDR_ENTITY"] == ["andes-br"], variant.name
        else:
            assert record["event"]["outcome"] == "failure", variant.name
    assert served_by_app >= 20  # the suite also checks what the app did, not only refusals
    assert not bystander.failures
    assert len(bystander.answers) >= 10
    assert all(answer == (200, OPEN) for answer in bystander.answers), set(bystander.answers)
