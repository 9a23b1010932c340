"""SIGKILL under load through the real middleware: every answered request has its record on disk.

A model app with ``AIDRGateMiddleware`` runs under uvicorn in its own process, with the audit file
sink on ``fsync: always`` (the middleware holds each response's last byte until its record is on
disk). Clients call it with real tokens until the process is killed mid-load; then every decision
id a client received in full must be in the audit files, and the chain must verify.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson

from aidr_gate.audit import verify_files
from gate_env import IP, GateEnv, make_gate_env
from servers import free_port, wait_until_serving

SERVER = """
import sys
import uvicorn
from aidr_gate.demo.model_server import build_model_app
from aidr_gate.middleware import AIDRGateMiddleware

app = build_model_app(token_delay=0)
app.add_middleware(AIDRGateMiddleware, config=sys.argv[1])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", proxy_headers=False)
"""

CALLERS = [
    ("lab-us", "US", "aurora-frontier"),  # allowed
    ("andes-br", "BR", "aurora-frontier"),  # 403: no agreement
    ("nordlys-se", "SE", "aurora-frontier"),  # 451: Tier 3 parent
    ("sakura-jp", "SG", "llama-3.1-405b"),  # log
]


async def load(env: GateEnv, port: int, answered: list[tuple[str, int]], deadline: float) -> None:
    """16 clients sending allowed and denied requests until *deadline* or the server dies."""
    tokens = {entity: env.token(entity) for entity, _, _ in CALLERS}

    async def client(number: int) -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            for sent in range(400):
                if time.monotonic() > deadline:
                    return
                entity, country, model = CALLERS[(number + sent) % len(CALLERS)]
                try:
                    response = await http.post(
                        "/v1/chat/completions",
                        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                        headers={
                            "authorization": f"Bearer {tokens[entity]}",
                            "x-forwarded-for": IP[country],
                        },
                    )
                    orjson.loads(response.content)  # the whole body arrived
                except (httpx.HTTPError, orjson.JSONDecodeError):
                    return  # the server is gone
                answered.append((response.headers["x-aidr-decision-id"], response.status_code))

    await asyncio.gather(*(client(n) for n in range(16)))


def test_sigkill_through_the_middleware_loses_no_answered_request(tmp_path: Path) -> None:
    env = make_gate_env(tmp_path)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(env.config), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    answered: list[tuple[str, int]] = []
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/health", server)

        async def run() -> None:
            deadline = time.monotonic() + 6.0
            clients = asyncio.create_task(load(env, port, answered, deadline))
            while len(answered) < 200 and time.monotonic() < deadline - 1.0:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            os.kill(server.pid, signal.SIGKILL)  # mid-load: no chance to flush anything
            await clients

        asyncio.run(run())
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
        if server.stderr:
            server.stderr.close()
    assert server.returncode == -signal.SIGKILL
    assert len(answered) >= 50, len(answered)
    files = sorted(env.audit_dir.glob("*.jsonl*"))
    result = verify_files(files)
    assert result.ok, result.errors
    assert all(f.kind == "torn" for f in result.findings), result.findings
    on_disk = {
        record["event"]["id"]
        for path in files
        for line in path.read_bytes().splitlines()
        if line.strip() and line.endswith(b"}")
        for record in [orjson.loads(line)]
    }
    missing = [decision for decision, _ in answered if decision not in on_disk]
    assert not missing, f"{len(missing)} of {len(answered)} answered requests have no record"
    assert {status for _, status in answered} >= {200, 403, 451}  # allowed and denied alike
