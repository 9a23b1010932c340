"""Both ways the gate serves, for the hardening tests: the middleware in front of a vLLM-like app
under a real uvicorn, and ``aidr-gate serve`` in front of the same app as its own process.

A :class:`Target` is either one, with what the tests need of it: its URL, its audit records by
decision id, and (the sidecar) its log. The app (``hostile_app.py``) says which model it served and
what it received, so a test can compare what the gate decided with what the app did.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from aidr_gate.asgi.middleware import AIDRGateMiddleware
from aidr_gate.asgi.server_limits import server_options
from aidr_gate.limits import LIMITS as LIMITS_SECTION
from aidr_gate.settings.loader import load_config
from support import hostile_app
from support.gate_env import _NETWORKS, IP, GateEnv, make_gate_env
from support.jwks_server import claims
from support.mmdb_files import write_country_db
from support.servers import ThreadedServer, free_port
from support.sidecar_support import Process, sidecar

TESTS = Path(__file__).parent
IPV6_BR = "2804:14c::1"  # Brazil in the tests' GeoIP database
MODEL_HEADER = "x-model-id"
# Small enough that the tests reach them quickly; the defaults are in aidr_gate.limits.
LIMITS = """\
limits:
  max_buffered_bytes: 4194304
  body_timeout: 1.5
  header_timeout: 1.5
  max_connections: 200
"""
MIDDLEWARE = f"""\
middleware:
  model_header: {MODEL_HEADER}
"""
AUDIT_HEADERS = ("user-agent", "referer", "x-request-id")


def hostile_env(root: Path, *, limits: str = LIMITS) -> GateEnv:
    """A gate that reads a model header, records Referer, and has the tests' small limits."""
    root.mkdir(parents=True, exist_ok=True)
    audit_dir = root / "audit"
    audit = textwrap.dedent(
        f"""\
        audit:
          directory: {audit_dir}
          headers: [{", ".join(AUDIT_HEADERS)}]
          sinks:
            - {{type: file, path: {audit_dir / "audit.jsonl"}, fsync: always}}
        """
    )
    env = make_gate_env(root, middleware=MIDDLEWARE + limits, audit=audit)
    # An IPv6 network too (Brazil's 2804::/16 in this database), for zone ids in hops.
    write_country_db(root / "country.mmdb", {**_NETWORKS, "2804::/16": "BR"})
    # The entity in a claim of its own: ``sub`` is then any string the issuer chose.
    text = env.config.read_text()
    env.config.write_text(
        text.replace("  algorithms: [RS256]\n", "  algorithms: [RS256]\n  entity_claim: org\n")
    )
    return env


def token(env: GateEnv, entity: str = "andes-br", **overrides: Any) -> str:
    """A valid token for *entity* (in ``org``; ``sub`` names a user of it)."""
    return env.key.sign(claims(**{"sub": f"user@{entity}", "org": entity, **overrides}))


def upstream_process(root: Path) -> Process:
    """The vLLM-like app as its own process (the sidecar's upstream)."""
    port = free_port()
    args = [str(TESTS / "hostile_app.py"), "--port", str(port)]
    return Process(args, port, root / f"hostile-app-{port}.log", ready_path="/health")


@dataclass
class Target:
    """One way of serving the gate; ``url`` is where callers send requests."""

    kind: str
    url: str
    env: GateEnv
    process: Process | None = None

    def record(self, decision_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The audit record of *decision_id* (waiting for it to be written)."""
        deadline = time.monotonic() + timeout
        while True:
            for record in self.env.audit_records():
                if record.get("event", {}).get("id") == decision_id:
                    return record
            if time.monotonic() > deadline:
                raise AssertionError(f"no audit record for {decision_id}")
            time.sleep(0.05)

    def log(self) -> str:
        """What the sidecar wrote to its log (the middleware's log is the test's own)."""
        return self.process.output() if self.process is not None else ""

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@contextlib.contextmanager
def middleware_target(env: GateEnv, **options: Any) -> Iterator[Target]:
    """The middleware in front of the vLLM-like app, under uvicorn on 127.0.0.1."""
    gated = AIDRGateMiddleware(hostile_app.app, config=str(env.config))
    # The host's uvicorn with the server limits the gate offers hosts (server_limits.py).
    limits = load_config(str(env.config)).get(LIMITS_SECTION)
    server = ThreadedServer(gated, **{**server_options(limits), **options}).start()
    try:
        yield Target("middleware", server.url, env)
    finally:
        server.stop()


@contextlib.contextmanager
def sidecar_target(env: GateEnv, *extra: str) -> Iterator[Target]:
    """``aidr-gate serve`` in front of the vLLM-like app, each its own process."""
    with (
        upstream_process(env.root) as upstream,
        sidecar(env.root, env.config, upstream.url, *extra) as gate,
    ):
        yield Target("sidecar", gate.url, env, gate)


@contextlib.contextmanager
def target(kind: str, env: GateEnv, *extra: str) -> Iterator[Target]:
    """:func:`middleware_target` or :func:`sidecar_target` by name."""
    if kind == "middleware":
        with middleware_target(env) as found:
            yield found
    else:
        with sidecar_target(env, *extra) as found:
            yield found


def caller(env: GateEnv, entity: str = "andes-br", ip: str = IP["BR"]) -> dict[str, str]:
    """Headers of a legitimate caller: a valid token, from *ip* (loopback is a trusted proxy)."""
    return {"authorization": f"Bearer {token(env, entity)}", "x-forwarded-for": ip}


def form_body(parts: list[tuple[list[bytes], bytes]], boundary: bytes = b"gate") -> bytes:
    """A multipart body from (header lines, value) pairs, written byte for byte."""
    out = b""
    for headers, value in parts:
        out += b"--" + boundary + b"\r\n" + b"".join(h + b"\r\n" for h in headers)
        out += b"\r\n" + value + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send *data* on a fresh connection and read until the server closes it (or *timeout*)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        out = b""
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):  # refused before all was sent
            with contextlib.suppress(OSError):
                return sock.recv(65536)
            return out
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := sock.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out and _complete(out):
                    break
        return out


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def status_of(response: bytes) -> int:
    """The status code of a raw HTTP/1.1 response (0 when there is none)."""
    if not response.startswith(b"HTTP/1."):
        return 0
    return int(response.split(b" ", 2)[1])


def get(url: str, **options: Any) -> httpx.Response:
    """One request on its own client (no pooled connection outlives it)."""
    with httpx.Client(timeout=options.pop("timeout", 10.0)) as client:
        return client.request(options.pop("method", "GET"), url, **options)


__all__ = ["IP", "sys"]
