"""The middleware under a real uvicorn process: a bad configuration stops the server at startup.

uvicorn's default ``--lifespan auto`` treats an exception from the app's lifespan as "lifespan
unsupported" and serves anyway; the gate answers ``lifespan.startup.failed`` with the problem list
instead, so uvicorn prints the problems and exits non-zero (uvicorn's startup-failure code, 3),
with no traceback, before it serves a request.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from support.gate_env import make_gate_env
from support.servers import free_port

APP = """\
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from aidr_gate import AIDRGateMiddleware


async def hello(request):
    return PlainTextResponse("hello")


app = Starlette(routes=[Route("/v2/models/{name}/infer", hello, methods=["POST"])])
app.add_middleware(AIDRGateMiddleware)
"""
PLAIN_APP = """\
from aidr_gate import AIDRGateMiddleware


async def plain(scope, receive, send):
    assert scope["type"] == "http"  # an app that does not speak lifespan at all
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


app = AIDRGateMiddleware(plain)
"""
# uvicorn's exit status when the application's startup failed (uvicorn.main.STARTUP_FAILURE).
STARTUP_FAILURE = 3


def _uvicorn(
    tmp_path: Path, config: Path, app: str, *extra: str, port: int = 0
) -> subprocess.Popen[str]:
    (tmp_path / "gated_app.py").write_text(app)
    env = {**os.environ, "AIDR_GATE_CONFIG": str(config)}
    command = [sys.executable, "-m", "uvicorn", "gated_app:app", "--app-dir", str(tmp_path)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--no-proxy-headers", *extra]
    return subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _broken(tmp_path: Path) -> tuple[Path, int]:
    env = make_gate_env(tmp_path)
    text = env.config.read_text().replace("algorithms: [RS256]", "algorithms: [RS256]\n  levay: 5")
    env.config.write_text(text)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "levay" in row)
    return env.config, line


@pytest.mark.parametrize("lifespan", [(), ("--lifespan", "on")], ids=["auto", "on"])
@pytest.mark.parametrize("app", [APP, PLAIN_APP], ids=["starlette", "no-lifespan-app"])
def test_broken_configuration_stops_uvicorn(
    tmp_path: Path, lifespan: tuple[str, ...], app: str
) -> None:
    config, line = _broken(tmp_path)
    started = time.monotonic()
    process = _uvicorn(tmp_path, config, app, *lifespan)
    try:
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == STARTUP_FAILURE, output
    assert time.monotonic() - started < 30
    assert f"{config}:{line}: identity.levay: unknown key; did you mean 'leeway'?" in output
    assert "Traceback" not in output
    assert "appears unsupported" not in output
    assert "Uvicorn running" not in output


@pytest.mark.parametrize("app", [APP, PLAIN_APP], ids=["starlette", "no-lifespan-app"])
def test_good_configuration_says_what_it_loaded(tmp_path: Path, app: str) -> None:
    env = make_gate_env(tmp_path)
    port = free_port()
    process = _uvicorn(tmp_path, env.config, app, port=port)
    try:
        deadline = time.monotonic() + 30
        answer = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                answer = httpx.post(
                    f"http://127.0.0.1:{port}/v2/models/aurora-mini/infer",
                    headers={"authorization": f"Bearer {env.token('lab-us')}"},
                    timeout=5,
                )
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert answer is not None and answer.status_code == 200, answer
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    ready = [row for row in output.splitlines() if "aidr-gate ready: pack aidr-2025-01" in row]
    assert len(ready) == 1, output
    assert ready[0].startswith("INFO:")
    assert "Traceback" not in output
