"""The attacks of issue 12, each against the middleware under uvicorn and the sidecar in front of
a real upstream process: the gate decides on exactly what the app serves, and no caller can stall,
flood or outlast it. Each test failed before its fix."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gate_env import IP, GateEnv
from hostile_app import DEFAULT_MODEL
from hostile_support import (
    MODEL_HEADER,
    Target,
    caller,
    form_body,
    hostile_env,
    target,
)

KINDS = ("middleware", "sidecar")
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
