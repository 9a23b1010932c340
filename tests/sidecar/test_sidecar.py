"""``aidr-gate serve`` as a real process in front of the demo model server (another real process).

Both listen on 127.0.0.1; the openai SDK (and httpx where exact bytes matter) drives them. Keys and
GeoIP databases are written at test time by ``gate_env``.
"""

from __future__ import annotations

import hashlib
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from aidr_gate.cli import main
from support.gate_env import IP, GateEnv, make_gate_env
from support.servers import free_port, openai_client
from support.sidecar_support import Process, model_server, run_cli, sidecar

READ_TIMEOUT = 1.5  # the shared sidecar's --read-timeout: the slow-upstream case waits this long


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> GateEnv:
    """Keys, GeoIP databases and a configuration on disk."""
    return make_gate_env(tmp_path_factory.mktemp("gate"))


@pytest.fixture
def own_env(tmp_path: Path) -> GateEnv:
    """A configuration with its own audit directory, for a sidecar started beside ``gate``: two
    processes cannot write one audit chain (the second would refuse to start)."""
    return make_gate_env(tmp_path)


@pytest.fixture(scope="module")
def upstream(env: GateEnv) -> Iterator[Process]:
    """The demo model server, with fault injection."""
    with model_server(env.root) as process:
        yield process


@pytest.fixture(scope="module")
def gate(env: GateEnv, upstream: Process) -> Iterator[Process]:
    """``aidr-gate serve`` in front of it, with a short read timeout."""
    with sidecar(
        env.root, env.config, upstream.url, "--read-timeout", str(READ_TIMEOUT)
    ) as process:
        yield process


def sdk(base: str, token: str, ip: str = IP["US"], **options: Any) -> openai.OpenAI:
    """An openai client calling *base* as if from *ip* (the test runs on a trusted loopback)."""
    return openai_client(f"{base}/v1", token, ip, **options)


def wait_record(env: GateEnv, decision_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The audit record of *decision_id*, once it is on disk."""
    deadline = time.monotonic() + timeout
    while True:
        for record in env.audit_records():
            if record.get("event", {}).get("id") == decision_id:
                return record
        if time.monotonic() > deadline:
            raise AssertionError(f"no audit record for {decision_id}")
        time.sleep(0.05)


def stats(upstream: Process) -> dict[str, Any]:
    """What the model server saw."""
    answer: dict[str, Any] = httpx.get(f"{upstream.url}/demo/stats").json()
    return answer


def timed_stream(client: openai.OpenAI, **extra: Any) -> tuple[float, list[float], str]:
    """Stream one chat completion: time to the first chunk, arrival times, and the text."""
    started = time.perf_counter()
    stream = client.chat.completions.create(
        model="llama-3.1-405b",
        messages=[{"role": "user", "content": "one two three four five six"}],
        stream=True,
        **extra,
    )
    arrivals: list[float] = []
    text = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter() - started)
            text.append(chunk.choices[0].delta.content)
    return arrivals[0], arrivals, "".join(text)


# -- streaming -----------------------------------------------------------------------------------


def test_stream_arrives_in_chunks_as_fast_as_direct(
    env: GateEnv, upstream: Process, gate: Process
) -> None:
    delay = {"extra_headers": {"x-demo-token-delay": "0.06"}}
    direct = sdk(upstream.url, "unused")
    through = sdk(gate.url, env.token("sakura-jp"), IP["JP"])
    timed_stream(through, extra_headers={"x-demo-token-delay": "0"})  # warm up: keys, pools
    direct_first, _, direct_text = timed_stream(direct, **delay)
    first, arrivals, text = timed_stream(through, **delay)
    expected = "Hello from llama-3.1-405b. You said: one two three four five six"
    assert text == direct_text == expected
    assert len(arrivals) == 11
    # The tokens arrived spread over the upstream's pace, not in one burst at the end...
    assert arrivals[-1] - arrivals[0] > 0.4
    assert first < arrivals[-1] / 3
    # ...and the first one was not held back by the gate (a generous bound for a busy machine).
    assert first < direct_first + 0.25


# -- headers -------------------------------------------------------------------------------------


def test_upstream_sees_trusted_headers_and_no_forged_ones(
    env: GateEnv, upstream: Process, gate: Process
) -> None:
    response = httpx.post(
        f"{gate.url}/v1/chat/completions?x=1",
        json={"model": "aurora-mini", "messages": [{"role": "user", "content": "hi"}]},
        headers={
            "authorization": f"Bearer {env.token('lab-us')}",
            "x-forwarded-for": IP["US"],
            "x-aidr-entity": "someone-else",
            "x-aidr-decision-id": "forged",
            "x-aidr-anything": "forged",
            "x-private-hop": "secret",
            "connection": "keep-alive, x-private-hop",
            "keep-alive": "timeout=5",
            "te": "trailers",
            "x-custom": "kept",
        },
    )
    assert response.status_code == 200
    seen: dict[str, list[str]] = {}
    for name, value in stats(upstream)["last_headers"]:
        seen.setdefault(name, []).append(value)
    decision_id = response.headers["x-aidr-decision-id"]
    assert seen["x-aidr-decision-id"] == [decision_id]
    assert seen["x-aidr-entity"] == ["lab-us"]
    assert seen["x-aidr-effect"] == ["allow"]
    assert "x-aidr-anything" not in seen
    for hop in ("x-private-hop", "keep-alive", "te", "connection"):
        assert hop not in seen, hop
    assert seen["x-custom"] == ["kept"]
    assert seen["authorization"] == ["<redacted>"]  # passed on (the stats hide its value)
    # The client's chain, then the peer this sidecar saw.
    assert seen["x-forwarded-for"] == [f"{IP['US']}, 127.0.0.1"]
    assert seen["forwarded"] == [f'for=127.0.0.1;proto=http;host="127.0.0.1:{gate.port}"']
    assert seen["x-forwarded-proto"] == ["http"]
    # No hop-by-hop header comes back either, and one date header, the sidecar's.
    assert "transfer-encoding" not in response.headers or response.headers.get_list(
        "transfer-encoding"
    ) == ["chunked"]
    assert len(response.headers.get_list("date")) == 1


# -- bodies --------------------------------------------------------------------------------------


def test_large_body_arrives_intact(env: GateEnv, upstream: Process, gate: Process) -> None:
    prompt = "".join(chr(0x41 + i % 26) for i in range(5_000_000)) + " café ☕"
    messages: Any = [{"role": "user", "content": prompt}]
    direct = sdk(upstream.url, "unused").chat.completions.with_raw_response.create(
        model="aurora-mini", messages=messages
    )
    through = sdk(
        gate.url, env.token("andes-br"), IP["BR"]
    ).chat.completions.with_raw_response.create(model="aurora-mini", messages=messages)
    # The SDK serialises the same request the same way: the upstream saw the same bytes.
    assert through.headers["x-received-body-sha256"] == direct.headers["x-received-body-sha256"]
    assert through.parse().choices[0].message.content == direct.parse().choices[0].message.content
    record = wait_record(env, through.headers["x-aidr-decision-id"])
    assert record["aidr"]["request"]["body_bytes"] > 5_000_000


def test_an_audio_upload_is_decided_on_its_form_and_forwarded_intact(
    env: GateEnv, upstream: Process, gate: Process
) -> None:
    audio = ("take.wav", b"RIFF" + bytes(range(256)) * 8000, "audio/wav")
    client = sdk(gate.url, env.token("andes-br"), IP["BR"])
    heard = client.audio.transcriptions.with_raw_response.create(model="aurora-mini", file=audio)
    assert heard.parse().text == f"aurora-mini heard {4 + 256 * 8000} bytes of take.wav"
    record = wait_record(env, heard.headers["x-aidr-decision-id"])
    assert record["gen_ai"]["request"]["model"] == "aurora-mini"
    assert record["aidr"]["request"]["body_bytes"] > 256 * 8000
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.audio.transcriptions.create(model="aurora-frontier", file=audio)
    assert info.value.code == "NO_VALID_AGREEMENT"


def test_streamed_upload_is_forwarded_as_it_comes(
    env: GateEnv, upstream: Process, gate: Process
) -> None:
    # The model is in the path (KServe), so the gate does not read the body: the proxy streams it.
    payload = json.dumps({"inputs": [{"name": "x", "data": "y" * 6_000_000}]}).encode()

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(payload), 64 * 1024):
            yield payload[start : start + 64 * 1024]

    response = httpx.post(
        f"{gate.url}/v2/models/aurora-mini/infer",
        content=pieces(),
        headers={"authorization": f"Bearer {env.token('andes-br')}", "x-forwarded-for": IP["BR"]},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-received-body-sha256"] == hashlib.sha256(payload).hexdigest()
    assert response.json()["model_name"] == "aurora-mini"


# -- upstream failures ---------------------------------------------------------------------------


def test_upstream_error_passes_through_with_its_body(
    env: GateEnv, upstream: Process, gate: Process
) -> None:
    client = sdk(gate.url, env.token("lab-us"))
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(
            model="aurora-mini",
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-demo-status": "500"},
        )
    assert info.value.status_code == 500
    assert info.value.code == "demo_fault"
    record = wait_record(env, info.value.response.headers["x-aidr-decision-id"])
    assert record["aidr"]["upstream"]["status"] == 500
    assert record["aidr"]["decision"]["effect"] == "allow"


def test_slow_upstream_is_504(env: GateEnv, upstream: Process, gate: Process) -> None:
    client = sdk(gate.url, env.token("lab-us"))
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model="aurora-mini",
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-demo-delay": "8"},
        )
    elapsed = time.monotonic() - started
    assert info.value.status_code == 504
    assert READ_TIMEOUT <= elapsed < READ_TIMEOUT + 3
    error_shape(info.value, "UPSTREAM_TIMEOUT", "upstream_timeout")
    record = wait_record(env, info.value.response.headers["x-aidr-decision-id"])
    assert record["http"]["response"]["status_code"] == 504
    assert record["aidr"]["upstream"]["status"] is None


def error_shape(error: openai.APIStatusError, code: str, kind: str) -> None:
    """The sidecar's own errors have the shape of the gate's denials."""
    body = error.response.json()
    assert set(body) == {"error"}
    inner = body["error"]
    assert {"message", "type", "code", "decision_id"} <= set(inner)
    assert inner["code"] == code and inner["type"] == kind
    assert inner["decision_id"] == error.response.headers["x-aidr-decision-id"]
    assert code in inner["message"]
    assert error.response.headers["content-type"] == "application/json"


def test_upstream_down_is_502_and_not_ready(own_env: GateEnv) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with sidecar(own_env.root, own_env.config, dead) as process:
        assert httpx.get(f"{process.url}/healthz").status_code == 200
        ready = httpx.get(f"{process.url}/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["upstream"] is False
        client = sdk(process.url, own_env.token("lab-us"))
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(
                model="aurora-mini", messages=[{"role": "user", "content": "x"}]
            )
        assert info.value.status_code == 502
        error_shape(info.value, "UPSTREAM_UNAVAILABLE", "upstream_error")
        record = wait_record(own_env, info.value.response.headers["x-aidr-decision-id"])
        assert record["http"]["response"]["status_code"] == 502
        # A denial is still a denial: the gate decides before the upstream is tried.
        with pytest.raises(openai.PermissionDeniedError):
            sdk(process.url, own_env.token("andes-br"), IP["BR"]).chat.completions.create(
                model="aurora-frontier", messages=[{"role": "user", "content": "x"}]
            )


def test_readyz_reports_what_is_loaded(gate: Process) -> None:
    answer = httpx.get(f"{gate.url}/readyz")
    assert answer.status_code == 200
    checks = answer.json()["checks"]
    assert checks["policy"] == "aidr-2025-01 (contested)"
    assert checks["keys"] is True and checks["upstream"] is True and checks["audit"] is True
    assert checks["registry"] > 10 and checks["catalog"] == 6
    assert "GeoIP2-Country built 2025-03-04" in checks["geoip"]
    assert checks["screening"] is None  # no screening: section


# -- client disconnect ---------------------------------------------------------------------------


def test_client_disconnect_cancels_the_upstream(
    env: GateEnv, upstream: Process, gate: Process
) -> None:
    before = stats(upstream)
    client = sdk(gate.url, env.token("lab-us"))
    stream = client.chat.completions.create(
        model="aurora-mini",
        messages=[{"role": "user", "content": "a b c d e f g h i j k l"}],
        stream=True,
        extra_headers={"x-demo-token-delay": "0.3"},
    )
    first = next(iter(stream))
    assert first.choices[0].delta.content == "Hello"
    decision_id = stream.response.headers["x-aidr-decision-id"]
    stream.close()  # the client goes away mid-stream
    deadline = time.monotonic() + 5
    while stats(upstream)["streams_cancelled"] == before["streams_cancelled"]:
        assert time.monotonic() < deadline, "the upstream never saw the cancellation"
        time.sleep(0.05)
    after = stats(upstream)
    assert after["streams_completed"] == before["streams_completed"]
    record = wait_record(env, decision_id)
    assert record["aidr"]["request"]["ending"] == "client-disconnected"
    assert record["aidr"]["upstream"]["status"] == 200


# -- shutdown ------------------------------------------------------------------------------------


def slow_stream(client: openai.OpenAI) -> openai.Stream[Any]:
    """A stream that takes several seconds: one word a second."""
    return client.chat.completions.create(
        model="aurora-mini",
        messages=[{"role": "user", "content": "a b c d e f"}],
        stream=True,
        extra_headers={"x-demo-token-delay": "1.0"},
    )


def test_sigterm_drains_a_stream_in_flight(own_env: GateEnv, upstream: Process) -> None:
    with sidecar(own_env.root, own_env.config, upstream.url, "--shutdown-timeout", "10") as process:
        client = sdk(process.url, own_env.token("sakura-jp"), IP["JP"])
        stream = client.chat.completions.create(
            model="llama-3.1-405b",
            messages=[{"role": "user", "content": "one two three four five six"}],
            stream=True,
            extra_headers={"x-demo-token-delay": "0.15"},
        )
        decision_id = stream.response.headers["x-aidr-decision-id"]
        pieces = []
        stopped_at = 0.0
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
                if len(pieces) == 2:
                    process.signal(signal.SIGTERM)
                    stopped_at = time.monotonic()
        assert "".join(pieces) == "Hello from llama-3.1-405b. You said: one two three four five six"
        # The rest of the stream took about 9 x 0.15 s; the process then exits 0, well in time.
        assert process.wait(timeout=10) == 0
        assert time.monotonic() - stopped_at < 8
        record = wait_record(own_env, decision_id, timeout=1)
        assert record["aidr"]["request"]["ending"] == "completed"
        log = process.output()
        assert "SIGTERM: draining" in log and "Traceback" not in log


def test_sigterm_deadline_cuts_what_does_not_finish(own_env: GateEnv, upstream: Process) -> None:
    with sidecar(
        own_env.root, own_env.config, upstream.url, "--shutdown-timeout", "0.5"
    ) as process:
        stream = slow_stream(sdk(process.url, own_env.token("lab-us")))
        decision_id = stream.response.headers["x-aidr-decision-id"]
        next(iter(stream))
        started = time.monotonic()
        process.signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        with pytest.raises((httpx.HTTPError, openai.APIError)):
            list(stream)
        # Cut by the deadline: still audited.
        assert (
            wait_record(own_env, decision_id, timeout=1)["aidr"]["request"]["ending"] != "completed"
        )


def test_second_signal_stops_at_once(own_env: GateEnv, upstream: Process) -> None:
    with sidecar(own_env.root, own_env.config, upstream.url, "--shutdown-timeout", "30") as process:
        stream = slow_stream(sdk(process.url, own_env.token("lab-us")))
        next(iter(stream))
        started = time.monotonic()
        process.signal(signal.SIGINT)
        time.sleep(0.3)
        process.signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        stream.close()


# -- configuration errors ------------------------------------------------------------------------


def _bad(env: GateEnv, name: str, text: str) -> Path:
    path = env.root / name
    path.write_text(env.config.read_text() + text)
    return path


@pytest.mark.parametrize(
    ("addition", "upstream", "expected"),
    [
        ("proxy:\n  read_timout: 5\n", "http://127.0.0.1:1", "proxy.read_timout: unknown key"),
        ("proxy:\n  pool_size: 0\n", "http://127.0.0.1:1", "proxy.pool_size: must be at least 1"),
        ("proxy:\n  upstream: ftp://x\n", None, "proxy.upstream: upstream must be an http(s) URL"),
        ("proxy:\n  forward_client_ip: 'yes'\n", "http://x", "must be true or false"),
        ("", None, "no upstream: give --upstream URL"),
        ("", "not a url", "--upstream: upstream must be an http(s) URL"),
    ],
    ids=["typo", "pool", "scheme", "flag-type", "no-upstream", "bad-flag"],
)
def test_bad_configuration_is_a_clear_error(
    env: GateEnv,
    capsys: pytest.CaptureFixture[str],
    addition: str,
    upstream: str | None,
    expected: str,
) -> None:
    config = env.root / f"bad-{abs(hash(addition))}.yaml"
    config.write_text(env.config.read_text() + addition)
    args = ["serve", "--config", str(config), "--port", str(free_port())]
    if upstream is not None:
        args += ["--upstream", upstream]
    assert main(args) == 2
    stderr = capsys.readouterr().err
    assert "configuration problems" in stderr
    assert expected in stderr
    if not expected.startswith("--upstream"):
        assert str(config) in stderr


def test_every_problem_is_listed_at_once(env: GateEnv, capsys: pytest.CaptureFixture[str]) -> None:
    config = env.root / "many.yaml"
    text = env.config.read_text().replace("algorithms: [RS256]", "algorithms: [HS256]")
    config.write_text(text + "proxy:\n  read_timeout: -1\n")
    assert main(["serve", "--config", str(config)]) == 2
    stderr = capsys.readouterr().err
    for part in (
        "identity.algorithms[0]: 'HS256' is refused",
        "proxy.read_timeout: must be at least",
        "no upstream",
    ):
        assert part in stderr


def test_unusable_key_file_is_a_clear_error(env: GateEnv, tmp_path: Path) -> None:
    keys = tmp_path / "jwks.json"
    keys.write_text('{"keys": []}')
    config = tmp_path / "config.yaml"
    config.write_text(
        env.config.read_text()
        .replace("key_file: jwks.json", f"key_file: {keys}")
        .replace("country.mmdb", str(env.root / "country.mmdb"))
        .replace("anonymous.mmdb", str(env.root / "anonymous.mmdb"))
    )
    result = run_cli("serve", "--config", str(config), "--upstream", "http://127.0.0.1:1")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "identity.key_file" in result.stderr


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli(
        "serve", "--config", str(tmp_path / "nope.yaml"), "--upstream", "http://127.0.0.1:1"
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "nope.yaml" in result.stderr


def test_start_summary_names_what_was_loaded(gate: Process) -> None:
    log = gate.output()
    summary = next(line for line in log.splitlines() if "aidr-gate ready:" in line)
    for part in ("pack aidr-2025-01 (contested", "entities", "6 models", "GeoIP2-Country"):
        assert part in summary
    sidecar_line = next(line for line in log.splitlines() if "aidr-gate sidecar:" in line)
    assert "audit.jsonl (fsync always)" in sidecar_line
    assert log.count("aidr-gate sidecar:") == 1
