"""Syslog delivery to a real rsyslog daemon (UDP and TCP) and to a local TLS listener."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from aidr_gate.audit import AuditTrail, HttpSinkConfig, StdoutSinkConfig, SyslogSinkConfig
from aidr_gate.audit.sinks.stdout import StdoutSink
from aidr_gate.audit.sinks.syslog import SyslogSink
from aidr_gate.settings.audit import DeliveryConfig
from support.audit_support import TOKEN, event, file_config, free_port, self_signed_certificate
from support.environment import require_tool

FIELDS = (
    "%protocol-version%|%syslogfacility%|%syslogseverity%|%app-name%|%procid%|%msgid%"
    "|%inputname%|%msg%\\n"
)


class Rsyslog:
    """A private rsyslogd on 127.0.0.1 writing what it receives to a file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.out = root / "received.log"
        self.udp = free_port(socket.SOCK_DGRAM)
        self.tcp = free_port(socket.SOCK_STREAM)

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines() if self.out.exists() else []

    def wait_for(self, count: int, timeout: float = 15.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.lines()
            if len(got) >= count:
                return got
            time.sleep(0.05)
        return self.lines()


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Rsyslog]:
    binary = require_tool("rsyslogd", "/usr/sbin/rsyslogd")
    daemon = Rsyslog(tmp_path / "rsyslog")
    daemon.root.mkdir()
    conf = daemon.root / "rsyslog.conf"
    conf.write_text(
        f'global(workDirectory="{daemon.root}" maxMessageSize="64k")\n'
        'module(load="imudp")\n'
        'module(load="imtcp")\n'
        f'template(name="fields" type="string" string="{FIELDS}")\n'
        'ruleset(name="audit") {\n'
        f'  action(type="omfile" file="{daemon.out}" template="fields")\n'
        "}\n"
        f'input(type="imudp" address="127.0.0.1" port="{daemon.udp}" ruleset="audit")\n'
        f'input(type="imtcp" address="127.0.0.1" port="{daemon.tcp}" ruleset="audit")\n'
    )
    process = subprocess.Popen(
        [binary, "-n", "-f", str(conf), "-i", str(daemon.root / "rsyslogd.pid")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", daemon.tcp), timeout=0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stdout.read().decode() if process.stdout else ""
                    pytest.fail(f"rsyslogd did not start: {output}")
                time.sleep(0.05)
        yield daemon
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()


def test_records_reach_rsyslog_over_tcp_and_udp(tmp_path: Path, rsyslog: Rsyslog) -> None:
    count = 40
    sinks = (
        SyslogSinkConfig(name="syslog-tcp", transport="tcp", port=rsyslog.tcp, facility=16),
        SyslogSinkConfig(name="syslog-udp", transport="udp", port=rsyslog.udp, facility=16),
    )

    async def run() -> None:
        trail = AuditTrail(file_config(tmp_path / "audit", sinks=sinks))
        await trail.start()
        for index in range(count):
            kwargs = {"entity": "andes-br", "country": "BR"} if index % 5 == 0 else {}
            trail.submit(event(index, **kwargs))  # type: ignore[arg-type]
            if index % 10 == 9:
                await asyncio.sleep(0.01)  # UDP: do not overrun the daemon's socket buffer
        await trail.drain(sinks=True)
        stats = {s.name: s for s in trail.stats().sinks}
        assert stats["syslog-tcp"].delivered == count
        assert stats["syslog-udp"].delivered == count
        await trail.close(5)

    asyncio.run(run())
    journal = [
        line.rstrip(b"\n").decode()
        for line in (tmp_path / "audit" / "audit.jsonl").read_bytes().splitlines()
    ]
    received = rsyslog.wait_for(2 * count)
    by_input: dict[str, list[str]] = {"imtcp": [], "imudp": []}
    for line in received:
        version, facility, severity, app, procid, msgid, inputname, msg = line.split("|", 7)
        assert version == "1"  # parsed as RFC 5424
        assert facility == "16"  # local0
        assert app == "aidr-gate"
        assert msgid == "audit"
        assert procid.isdigit()
        record = orjson.loads(msg)  # the JSON record is the MSG, intact
        denied = record["aidr"]["decision"]["effect"] == "deny"
        assert severity == ("4" if denied else "6")
        by_input[inputname].append(msg)
    assert by_input["imtcp"] == journal  # TCP: every record, in order, exactly once
    assert sorted(by_input["imudp"]) == sorted(journal)  # UDP: every record once


async def _octet_counted(reader: asyncio.StreamReader, into: list[bytes]) -> None:
    while True:
        try:
            length = await reader.readuntil(b" ")
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        into.append(await reader.readexactly(int(length)))


def test_tls_delivery_with_octet_counting(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    received: list[bytes] = []

    async def run() -> None:
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_context.load_cert_chain(cert, key)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _octet_counted(reader, received)
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        sinks = (
            SyslogSinkConfig(
                name="syslog-tls", transport="tls", port=port, ca_file=cert, server_name="localhost"
            ),
        )
        trail = AuditTrail(file_config(tmp_path / "audit", sinks=sinks))
        await trail.start()
        await asyncio.gather(*(trail.submit(event(i)) for i in range(25)))
        await trail.drain(sinks=True)
        for _ in range(100):
            if len(received) >= 25:
                break
            await asyncio.sleep(0.02)
        await trail.close(5)
        server.close()
        await server.wait_closed()

    asyncio.run(run())
    journal = (tmp_path / "audit" / "audit.jsonl").read_bytes().splitlines()
    assert [m.split(b" - ", 1)[1] for m in received] == journal
    assert all(m.startswith(b"<134>1 ") for m in received)  # local0.info, version 1


def test_tls_refuses_an_unknown_certificate_and_spools(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    (tmp_path / "other").mkdir()
    other_cert, _ = self_signed_certificate(tmp_path / "other")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    stop = threading.Event()
    handshakes: list[str] = []

    def serve() -> None:  # a blocking TLS listener that closes every socket it accepts
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    with server_context.wrap_socket(conn, server_side=True):
                        handshakes.append("ok")
                except (ssl.SSLError, OSError) as exc:
                    handshakes.append(type(exc).__name__)

    thread = threading.Thread(target=serve)
    thread.start()

    async def run() -> None:
        sink = SyslogSinkConfig(
            name="syslog-tls",
            transport="tls",
            port=port,
            ca_file=other_cert,  # trusts a different certificate: the handshake must fail
            server_name="localhost",
            delivery=DeliveryConfig(retries=1, backoff_base=0.01, backoff_max=0.02),
        )
        trail = AuditTrail(file_config(tmp_path / "audit", sinks=(sink,)))
        await trail.start()
        await asyncio.gather(*(trail.submit(event(i)) for i in range(5)))
        for _ in range(500):
            if trail.stats().sinks[1].state == "down":
                break
            await asyncio.sleep(0.02)
        stats = trail.stats().sinks[1]
        assert stats.delivered == 0
        assert stats.failures >= 1
        assert stats.state == "down"
        await trail.close(0.5)

    try:
        asyncio.run(run())
    finally:
        stop.set()
        thread.join()
        listener.close()
    assert handshakes
    assert "ok" not in handshakes
    spool = tmp_path / "audit" / "spool" / "syslog-tls"
    spooled = b"".join(p.read_bytes() for p in sorted(spool.glob("*.spool")))
    assert spooled == (tmp_path / "audit" / "audit.jsonl").read_bytes()


def test_message_format() -> None:
    sink = SyslogSink(
        SyslogSinkConfig(name="s", hostname="gate 1", app_name="aidr gate", facility=4)
    )
    message = sink.message(b'{"aidr":{"decision":{"effect":"log"}}}\n')
    head, msg = message.split(b" - ", 1)
    pri_version, stamp, host, app, _pid, msgid = head.split(b" ")
    assert pri_version == b"<37>1"  # auth.notice
    assert stamp.endswith(b"Z")
    assert (host, app, msgid) == (b"gate1", b"aidrgate", b"audit")
    assert msg == b'{"aidr":{"decision":{"effect":"log"}}}'


def test_no_token_reaches_any_sink(tmp_path: Path, rsyslog: Rsyslog) -> None:
    """A token in any header, or in the query string, reaches no sink: file, stdout, syslog, HTTP."""
    port = free_port()
    posted: list[bytes] = []
    read_fd, write_fd = os.pipe()
    headers = (
        ("authorization", f"Bearer {TOKEN}"),
        ("cookie", f"session={TOKEN}"),
        ("x-api-key", TOKEN),
        ("x-custom-token", TOKEN),
        ("x-other-secret", f"Splunk {TOKEN[:20]}"),
        ("user-agent", "pytest"),
    )

    async def run() -> None:
        async def collect(request: web.Request) -> web.Response:
            posted.append(await request.read())
            return web.json_response({"text": "Success", "code": 0})

        app = web.Application()
        app.router.add_post("/services/collector/event", collect)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        sinks = (
            StdoutSinkConfig(name="stdout"),
            SyslogSinkConfig(name="syslog-tcp", transport="tcp", port=rsyslog.tcp),
            SyslogSinkConfig(name="syslog-udp", transport="udp", port=rsyslog.udp),
            HttpSinkConfig(
                name="splunk", format="hec", url=f"http://127.0.0.1:{port}/services/collector/event"
            ),
        )
        # Mis-configured on purpose: credential headers and a custom one allow-listed.
        allowed = ("authorization", "cookie", "x-custom-token", "x-other-secret", "user-agent")
        trail = AuditTrail(file_config(tmp_path / "audit", sinks=sinks, headers=allowed))
        stdout = trail.outboxes[0].sink
        assert isinstance(stdout, StdoutSink)
        stdout._fd = write_fd
        await trail.start()
        for index in range(10):
            trail.submit(event(index, headers=headers, path=f"/v1/chat?api_key={TOKEN}"))
        await trail.drain(sinks=True)
        await trail.close(5)
        await runner.cleanup()

    asyncio.run(run())
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        piped = pipe.read()
    received = "\n".join(rsyslog.wait_for(20)).encode()
    journal = (tmp_path / "audit" / "audit.jsonl").read_bytes()
    outputs = {"file": journal, "stdout": piped, "syslog": received, "http": b"".join(posted)}
    for name, data in outputs.items():
        assert data.count(b"pytest") >= 10, name  # every sink got the records ...
        assert TOKEN.encode() not in data, name  # ... and none of them the token
        assert TOKEN[:20].encode() not in data, name
        assert b"api_key" not in data, name
