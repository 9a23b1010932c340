"""SIGKILL under load: every request that got a response has its record on disk; the chain holds.

The serving process is uvicorn running a tiny ASGI app that decides with the real ``Gate`` and
awaits ``AuditTrail.submit`` (``fsync: always``) before sending the response body, which is what
the middleware does; tests/asgi/test_middleware_sigkill.py does the same through the real middleware.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import orjson

from aidr_gate.audit import AuditTrail, verify_files
from support.audit_support import audit_files, event, file_config, free_port, records
from support.servers import sigkill_under_load

APP = """
from __future__ import annotations

import os
import time
from pathlib import Path

import orjson

from aidr_gate.audit import AuditEvent, AuditTrail, Ending, RequestContext
from aidr_gate.settings.audit import AuditConfig, FileSinkConfig, FsyncPolicy
from aidr_gate.facts import CountrySource, Identity, Origin
from aidr_gate.gate import Gate

DIRECTORY = Path(os.environ["AIDR_AUDIT_DIR"])
gate = Gate.from_path(None)
trail = AuditTrail(
    AuditConfig(
        directory=DIRECTORY,
        sinks=(
            FileSinkConfig(
                name="file",
                path=DIRECTORY / "audit.jsonl",
                fsync=FsyncPolicy.ALWAYS,
                max_bytes=300_000,
                rotate_seconds=None,
                compress=False,
            ),
        ),
    )
)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await trail.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await trail.close(5)
                await send({"type": "lifespan.shutdown.complete"})
                return
    started = time.perf_counter_ns()
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    headers = dict(scope["headers"])
    identity = Identity(entity_id=headers.get(b"x-entity", b"merlion-sg").decode(), subject="svc")
    origin = Origin(
        ip=scope["client"][0],
        country=headers.get(b"x-country", b"SG").decode(),
        country_source=CountrySource.DECLARED,
    )
    decision = gate.decide(identity=identity, origin=origin, model_id="aurora-frontier")
    status = decision.status if decision.blocks and decision.status else 200
    if not trail.accepting:
        status = 503
    context = RequestContext(
        method=scope["method"],
        path=scope["path"],
        http_version=scope["http_version"],
        headers=trail.redactor.select(scope["headers"]),
        status=status,
        gate_us=(time.perf_counter_ns() - started) // 1000,
        ending=Ending.DENIED if decision.blocks else Ending.COMPLETED,
        body_bytes=size,
    )
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    durable = await trail.submit(AuditEvent(decision, context))  # before the final chunk
    body = orjson.dumps({"decision_id": decision.decision_id, "durable": durable})
    await send({"type": "http.response.body", "body": body})
"""


COUNTRIES = ["SG", "BR", "US", "CN"]


async def send(http: httpx.AsyncClient, client: int, number: int) -> str:
    """One request; the decision id of its answer, which must say its record was on disk."""
    response = await http.post(
        "/v1/chat/completions",
        content=b'{"model":"aurora-frontier"}',
        headers={
            "x-country": COUNTRIES[(number + 1) % 4],
            "authorization": "Bearer not-a-real-token",
        },
    )
    data = orjson.loads(response.content)
    assert data["durable"] is True
    decision_id: str = data["decision_id"]
    return decision_id


def test_sigkill_under_load_loses_no_answered_request(tmp_path: Path) -> None:
    directory = tmp_path / "audit"
    (tmp_path / "sigkill_app.py").write_text(APP)
    port = free_port()
    env = {**os.environ, "AIDR_AUDIT_DIR": str(directory)}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "sigkill_app:app",
            "--app-dir",
            str(tmp_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    answered = sigkill_under_load(
        server, f"http://127.0.0.1:{port}", "/ready", send, answers=300, seconds=4.0
    )
    assert len(answered) >= 100, len(answered)

    files = audit_files(directory)
    result = verify_files(files)
    assert result.ok, result.errors
    assert all(f.kind in ("torn",) for f in result.findings), result.findings
    on_disk = {r["event"]["id"] for r in records(files) if r.get("event", {}).get("id")}
    missing = [d for d in answered if d not in on_disk]
    assert not missing, f"{len(missing)} answered requests have no record"
    # Tokens sent in Authorization never reached the disk.
    assert b"not-a-real-token" not in b"".join(p.read_bytes() for p in files)

    # The next start recovers the tail and the chain goes on, across the crash.
    async def restart() -> None:
        trail = AuditTrail(file_config(directory))
        await trail.start()
        assert all(await asyncio.gather(*(trail.submit(event(i)) for i in range(5))))
        await trail.close(5)

    asyncio.run(restart())
    after = verify_files(audit_files(directory))
    assert after.ok, after.errors
    assert after.last_seq == (result.last_seq or 0) + 5
    assert (
        orjson.loads((directory / "audit.jsonl").read_bytes().splitlines()[-1])["chain"]["seq"]
        == after.last_seq
    )
