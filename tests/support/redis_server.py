"""A real Redis server for tests: Debian's redis-server in a temporary folder, on 127.0.0.1.

The server listens on a free port of 127.0.0.1 only (no unix socket, protected mode on, no
persistence: tests need a server, not its files), and is stopped at the end. ``stop`` and
``start`` again on the same port are what an outage and its end look like to a client.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from support.environment import require_tool
from support.servers import free_port


class RedisServer:
    """One redis-server process in a temporary folder; ``url`` once started."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="aidr-redis-"))
        self.port = free_port()
        self._binary = require_tool("redis-server")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's redis:// URL (database 0)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        """Start (or restart after :meth:`stop`) the server; wait until it answers PING."""
        config = self.root / "redis.conf"
        config.write_text(
            f"bind 127.0.0.1\nport {self.port}\nunixsocket ''\ndir {self.root}\n"
            'save ""\nappendonly no\ndaemonize no\nprotected-mode yes\n'
            f"logfile {self.root / 'server.log'}\n"
        )
        self._process = subprocess.Popen(
            [self._binary, str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log()}")
            if self.ping():
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer within {timeout:g} s: {self.log()}")

    def ping(self) -> bool:
        """True when the server answers PING (a raw RESP exchange, no client library needed)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server now (SIGKILL: to a client, the server is simply gone)."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=20)
        self._process = None

    def running(self) -> bool:
        """True while the server process runs."""
        return self._process is not None and self._process.poll() is None

    def log(self) -> str:
        """The server's log so far (for failure messages)."""
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def close(self) -> None:
        """Stop the server if it runs and remove its folder."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A started server, stopped and removed at the end."""
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.close()
