"""SIGKILL under load through the real middleware: every answered request has its record on disk.

A model app with ``AIDRGateMiddleware`` runs under uvicorn in its own process, with the audit file
sink on ``fsync: always`` (the middleware holds each response's last byte until its record is on
disk). Clients call it with real tokens until the process is killed mid-load; then every decision
id a client received in full must be in the audit files, and the chain must verify.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import orjson

from aidr_gate.audit import verify_files
from support.gate_env import IP, GateEnv, make_gate_env
from support.servers import free_port, sigkill_under_load

SERVER = """
import sys
import uvicorn
from aidr_gate.demo.model_server import build_model_app
from aidr_gate.asgi.middleware import AIDRGateMiddleware

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


def sender(env: GateEnv) -> Callable[[httpx.AsyncClient, int, int], Awaitable[tuple[str, int]]]:
    """Requests from every caller in turn, allowed and denied; each answer's decision id and status."""
    tokens = {entity: env.token(entity) for entity, _, _ in CALLERS}

    async def send(http: httpx.AsyncClient, client: int, number: int) -> tuple[str, int]:
        entity, country, model = CALLERS[(client + number) % len(CALLERS)]
        response = await http.post(
            "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {tokens[entity]}", "x-forwarded-for": IP[country]},
        )
        orjson.loads(response.content)  # the whole body arrived
        return response.headers["x-aidr-decision-id"], response.status_code

    return send


def test_sigkill_through_the_middleware_loses_no_answered_request(tmp_path: Path) -> None:
    env = make_gate_env(tmp_path)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(env.config), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    answered = sigkill_under_load(
        server, f"http://127.0.0.1:{port}", "/health", sender(env), answers=200, seconds=6.0
    )
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
