"""RFC 5424 syslog over UDP, TCP with RFC 6587 octet counting, or TLS (RFC 5425).

The record's JSON line is the MSG; the header carries facility and a severity from the effect
(deny: warning, log: notice, allow: informational). UDP gives no delivery guarantee and datagrams
are limited in size (rsyslog's default maximum message size is 8 KiB): prefer TCP or TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import ssl
import time
from collections.abc import Sequence

from aidr_gate.audit.sinks import SinkError, SinkRejected
from aidr_gate.settings.audit import SyslogSinkConfig

SEVERITY_WARNING = 4
SEVERITY_NOTICE = 5
SEVERITY_INFO = 6


def _field(value: str, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, or the nil value ``-``."""
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def tls_context(config: SyslogSinkConfig) -> ssl.SSLContext:
    """The client TLS context: system or configured CAs, optional client certificate."""
    context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not config.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if config.cert_file:
        context.load_cert_chain(
            str(config.cert_file), str(config.key_file) if config.key_file else None
        )
    return context


class SyslogSink:
    """Sends each record as one syslog message."""

    kind = "syslog"

    def __init__(self, config: SyslogSinkConfig) -> None:
        self.config = config
        self.name = config.name
        host = config.hostname or socket.gethostname()
        self._header_tail = (
            f" {_field(host, 255)} {_field(config.app_name, 48)} {os.getpid()} audit - "
        ).encode("ascii")
        self._udp: socket.socket | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tls = tls_context(config) if config.transport == "tls" else None

    async def open(self) -> None:
        """Nothing to do: connections open on the first send."""

    def message(self, line: bytes) -> bytes:
        """One RFC 5424 message (no framing) for a record line."""
        if b'"effect":"deny"' in line:
            severity = SEVERITY_WARNING
        elif b'"effect":"log"' in line:
            severity = SEVERITY_NOTICE
        else:
            severity = SEVERITY_INFO
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        micros = int((now % 1) * 1_000_000)
        pri = self.config.facility * 8 + severity
        body = line[:-1] if line.endswith(b"\n") else line
        return b"<%d>1 %b.%06dZ%b%b" % (pri, stamp.encode(), micros, self._header_tail, body)

    async def send(self, lines: Sequence[bytes]) -> None:
        """Deliver the lines, one message each."""
        if self.config.transport == "udp":
            self._send_udp(lines)
            return
        await self._send_stream(lines)

    def _send_udp(self, lines: Sequence[bytes]) -> None:
        if self._udp is None:
            try:
                family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_DGRAM)
                sock.connect((self.config.host, self.config.port))
            except OSError as exc:
                raise SinkError(
                    f"syslog udp {self.config.host}:{self.config.port}: {exc}"
                ) from None
            self._udp = sock
        rejected = 0
        for index, line in enumerate(lines):
            try:
                self._udp.send(self.message(line))
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    rejected += 1
                    continue
                self._udp.close()
                self._udp = None
                raise SinkError(f"syslog udp: {exc}", delivered=index) from None
        if rejected:
            raise SinkRejected(f"{rejected} records larger than a UDP datagram", rejected)

    async def _connect(self) -> asyncio.StreamWriter:
        current, alive = self._writer, self._reader
        if current is not None and not current.is_closing() and not (alive and alive.at_eof()):
            return current
        await self._drop()
        config = self.config
        try:
            async with asyncio.timeout(config.timeout):
                reader, writer = await asyncio.open_connection(
                    config.host,
                    config.port,
                    ssl=self._tls,
                    server_hostname=(config.server_name or config.host) if self._tls else None,
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise SinkError(
                f"syslog {config.transport} {config.host}:{config.port}: {exc}"
            ) from None
        self._reader, self._writer = reader, writer
        return writer

    async def _send_stream(self, lines: Sequence[bytes]) -> None:
        writer = await self._connect()
        frames = []
        for line in lines:
            message = self.message(line)
            frames.append(b"%d %b" % (len(message), message))
        try:
            writer.write(b"".join(frames))
            async with asyncio.timeout(self.config.timeout):
                await writer.drain()
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            await self._drop()
            raise SinkError(f"syslog {self.config.transport}: {exc}") from None

    async def _drop(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def close(self) -> None:
        """Close the connection or socket."""
        await self._drop()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
