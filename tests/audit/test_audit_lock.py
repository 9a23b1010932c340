"""One writer per chain: a second trail on the same directory or journal refuses to start."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket

from aidr_gate.asgi.middleware import WS_TRY_AGAIN_LATER, AIDRGateMiddleware
from aidr_gate.audit import AuditTrail, audit_config, verify_files
from aidr_gate.audit.lock import DIRECTORY_LOCK, AuditWriterBusy, WriterLock
from aidr_gate.demo.model_server import build_model_app
from aidr_gate.errors import ConfigError
from aidr_gate.settings.audit import AuditConfig, FileSinkConfig
from aidr_gate.settings.loader import load_config
from support.audit_support import audit_files, event, file_config, records
from support.environment import ROOT
from support.gate_env import IP, make_gate_env
from support.servers import free_port, serve, wait_until_serving

ROOT = ROOT
EXAMPLES = ROOT / "policies" / "examples"


def test_a_second_trail_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        first = AuditTrail(file_config(tmp_path))
        await first.start()
        assert await first.submit(event(1))
        second = AuditTrail(file_config(tmp_path))
        with pytest.raises(AuditWriterBusy) as info:
            await second.start()
        text = str(info.value)
        assert f"the audit directory {tmp_path}" in text
        assert f"(pid {os.getpid()})" in text
        assert "one writer" in text
        await second.close()
        await first.close()
        third = AuditTrail(file_config(tmp_path))  # the lock went with the first trail's close
        await third.start()
        assert await third.submit(event(2))
        await third.close()

    asyncio.run(main())
    result = verify_files(audit_files(tmp_path))
    assert result.ok, result.findings
    assert result.records == 2


def test_two_directories_sharing_one_journal_are_refused(tmp_path: Path) -> None:
    journal = tmp_path / "shared" / "audit.jsonl"

    def config(name: str) -> AuditConfig:
        base = file_config(tmp_path / name)
        sink = FileSinkConfig(name="file", path=journal, rotate_seconds=None)
        return replace(base, sinks=(sink,))

    async def main() -> None:
        first = AuditTrail(config("a"))
        await first.start()
        second = AuditTrail(config("b"))
        with pytest.raises(AuditWriterBusy, match=f"the audit journal {journal}"):
            await second.start()
        await second.close()
        await first.close()

    asyncio.run(main())


WRITER = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from aidr_gate.audit import AuditTrail
    from aidr_gate.settings.audit import FsyncPolicy
    from support.audit_support import event, file_config

    async def main():
        trail = AuditTrail(file_config(Path(sys.argv[1]), fsync=FsyncPolicy.ALWAYS))
        await trail.start()
        for i in range(5):
            await trail.submit(event(i))
        print("ready", flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


def test_another_process_holds_the_chain_until_it_dies(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path), str(ROOT / "tests")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"

        async def start() -> AuditTrail:
            trail = AuditTrail(file_config(tmp_path))
            try:
                await trail.start()
            except AuditWriterBusy:
                await trail.close()
                raise
            return trail

        with pytest.raises(AuditWriterBusy, match=f"pid {child.pid}"):
            asyncio.run(start())
        child.send_signal(signal.SIGKILL)  # no cleanup: the kernel drops the lock
        child.wait(timeout=10)

        async def resume() -> None:
            trail = await start()
            assert trail.chain.next_seq == 5  # the dead writer's chain goes on
            assert await trail.submit(event(9))
            await trail.close()

        asyncio.run(resume())
    finally:
        child.kill()
        child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()
    result = verify_files(audit_files(tmp_path))
    assert result.ok, result.findings
    assert result.records == 6
    assert {p.name for p in tmp_path.glob("*.jsonl*")} == {"audit.jsonl"}  # no lock file
    assert (tmp_path / ".audit.writer-lock").exists()


def test_a_gate_that_cannot_start_answers_503_until_it_can(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With lifespan off, the gate starts on the first request: while another process holds its
    audit directory it answers 503 GATE_NOT_READY (never 500, never the app), then recovers."""
    env = make_gate_env(tmp_path)
    holder = WriterLock()  # another writer, as far as the gate can tell
    holder.acquire(env.audit_dir / DIRECTORY_LOCK, "the audit directory")
    app = build_model_app(token_delay=0)
    app.add_middleware(AIDRGateMiddleware, config=str(env.config))
    headers = {"authorization": f"Bearer {env.token('lab-us')}", "x-forwarded-for": IP["US"]}
    body = {"model": "aurora-mini", "messages": [{"role": "user", "content": "hi"}]}
    with serve(app, lifespan="off", proxy_headers=False) as server:
        url = f"{server.url}/v1/chat/completions"
        for _ in range(3):  # the first tries to start; the next two wait out the retry interval
            refused = httpx.post(url, json=body, headers=headers, timeout=10)
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            error = refused.json()["error"]
            assert error["code"] == "GATE_NOT_READY"
            assert "pid" not in error["message"] and str(tmp_path) not in error["message"]
        assert "is being written by another process" in caplog.text  # the cause, in the log
        holder.release()
        deadline = time.monotonic() + 10
        while True:
            answer = httpx.post(url, json=body, headers=headers, timeout=10)
            if answer.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert answer.status_code == 200
        assert answer.json()["choices"][0]["message"]["content"].startswith("Hello from")
    assert env.audit_records()[-1]["event"]["id"] == answer.headers["x-aidr-decision-id"]


def test_a_websocket_to_a_gate_that_cannot_start_is_told_to_try_again(tmp_path: Path) -> None:
    """Its handshake gets 503 GATE_NOT_READY; a server without the websocket.http.response
    extension gets an accept and a close 1013, never a close before accepting (a 403)."""
    env = make_gate_env(tmp_path)
    holder = WriterLock()
    holder.acquire(env.audit_dir / DIRECTORY_LOCK, "the audit directory")
    reached: list[str] = []

    async def echo(websocket: WebSocket) -> None:
        reached.append("app")
        await websocket.accept()

    app = Starlette(routes=[WebSocketRoute("/v1/realtime", echo)])
    app.add_middleware(AIDRGateMiddleware, config=str(env.config))
    client = TestClient(app)  # no "with": no lifespan, the gate starts on the first connection
    try:
        with (
            pytest.raises(WebSocketDenialResponse) as denied,
            client.websocket_connect("/v1/realtime"),
        ):
            pass
        assert denied.value.status_code == 503
        assert denied.value.headers["retry-after"] == "1"
        assert denied.value.json()["error"]["code"] == "GATE_NOT_READY"

        sent: list[dict[str, object]] = []
        inbox: list[dict[str, object]] = [{"type": "websocket.connect"}]

        async def receive() -> dict[str, object]:
            return inbox.pop(0)

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        gate = AIDRGateMiddleware(echo, config=str(env.config))  # type: ignore[arg-type]
        scope = {"type": "websocket", "path": "/v1/realtime", "headers": [], "extensions": {}}
        asyncio.run(gate(scope, receive, send))  # type: ignore[arg-type]
        assert sent == [
            {"type": "websocket.accept"},
            {"type": "websocket.close", "code": WS_TRY_AGAIN_LATER},
        ]
        assert not reached
    finally:
        holder.release()
        client.close()


def test_per_process_slots_give_each_process_its_own_chain(tmp_path: Path) -> None:
    """With per_process, writers on one directory take slots p0, p1, ...: a chain each. A writer
    started after one closed takes the lowest free slot and continues that slot's chain."""
    shared = replace(file_config(tmp_path), per_process=True)

    async def main() -> None:
        first, second = AuditTrail(shared), AuditTrail(shared)
        await first.start()
        await second.start()
        assert first.journal is not None and second.journal is not None
        assert first.journal.path == tmp_path / "p0" / "audit.jsonl"
        assert second.journal.path == tmp_path / "p1" / "audit.jsonl"
        for i in range(3):
            assert await first.submit(event(i))
            assert await second.submit(event(10 + i))
        await first.close()
        third = AuditTrail(shared)
        await third.start()
        assert third.journal is not None
        assert third.journal.path == tmp_path / "p0" / "audit.jsonl"
        assert third.chain.next_seq == 3  # p0's chain goes on
        assert await third.submit(event(20))
        await third.close()
        await second.close()

    asyncio.run(main())
    for slot, count in (("p0", 4), ("p1", 3)):
        result = verify_files(audit_files(tmp_path / slot))
        assert result.ok, result.findings
        assert result.records == count


def test_per_process_needs_the_journal_inside_the_directory(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"policy: {{pack: aidr-2025-01}}\nregistry: {EXAMPLES}/entities.yaml\n"
        f"catalog: {EXAMPLES}/models.yaml\n"
        f"audit:\n  directory: {tmp_path / 'audit'}\n  per_process: true\n"
        f"  sinks:\n    - {{type: file, path: {tmp_path / 'elsewhere' / 'audit.jsonl'}}}\n"
    )
    with pytest.raises(ConfigError, match=r"must be inside audit\.directory"):
        audit_config(load_config(config))
    config.write_text(config.read_text().replace("elsewhere", "audit"))
    assert audit_config(load_config(config)).per_process


GATED_APP = """
from aidr_gate.demo.model_server import build_model_app
from aidr_gate.asgi.middleware import AIDRGateMiddleware

app = build_model_app(token_delay=0)
app.add_middleware(AIDRGateMiddleware)  # as vLLM adds it: the configuration from the environment
"""


def test_uvicorn_workers_each_write_their_own_chain(tmp_path: Path) -> None:
    audit_dir = tmp_path / "audit"
    env = make_gate_env(
        tmp_path,
        audit=f"audit:\n  directory: {audit_dir}\n  per_process: true\n"
        f"  sinks:\n    - {{type: file, path: {audit_dir / 'audit.jsonl'}, fsync: always}}\n",
    )
    (tmp_path / "gated_app.py").write_text(GATED_APP)
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable, "-m", "uvicorn", "gated_app:app", "--app-dir", str(tmp_path),
            "--workers", "2", "--host", "127.0.0.1", "--port", str(port), "--no-proxy-headers",
            "--log-level", "warning",
        ],
        env={**os.environ, "AIDR_GATE_CONFIG": str(env.config)},
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(f"{url}/health", server)
        deadline = time.monotonic() + 20
        while len(list(audit_dir.glob("p*/audit.jsonl"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)  # both workers have claimed a slot once both journals exist
        headers = {"authorization": f"Bearer {env.token('lab-us')}", "x-forwarded-for": IP["US"]}
        body = {"model": "aurora-mini", "messages": [{"role": "user", "content": "hi"}]}
        ids = set()
        for _ in range(40):  # a new connection each: the kernel spreads them over the workers
            answer = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers)
            assert answer.status_code == 200
            ids.add(answer.headers["x-aidr-decision-id"])
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=30)[1].decode()
    assert sorted(p.name for p in audit_dir.iterdir() if p.is_dir()) == ["p0", "p1"], output
    recorded = set()
    for slot in ("p0", "p1"):
        result = verify_files(audit_files(audit_dir / slot))
        assert result.ok, (slot, result.findings)
        recorded |= {r["event"]["id"] for r in records(audit_files(audit_dir / slot))}
    assert recorded == ids  # every answered request, once, in one of the two chains
