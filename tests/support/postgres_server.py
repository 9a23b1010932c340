"""A real PostgreSQL server for tests: initdb and pg_ctl in a temporary folder, on 127.0.0.1.

The server listens on a free port of 127.0.0.1 and on a unix socket inside its own folder, runs with
durability off (tests need speed, not crash safety), and is stopped at the end. PostgreSQL refuses
to run as root: under root (this machine and CI), the folder is given to an unprivileged user
(``nobody``) and every server command runs as that user through ``runuser``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from support.environment import require_tool
from support.servers import free_port

SUPERUSER = "aidr"
_UNPRIVILEGED = "nobody"


def _bin(name: str) -> str:
    """A PostgreSQL server program: Debian keeps them under /usr/lib/postgresql/N/bin."""
    versions = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[4]) if Path(p).parts[4].isdigit() else 0,
    )
    return require_tool(name, *reversed(versions))


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder; ``dsn(db)`` once started."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="aidr-pg-"))  # not under pytest's 0700 tmp
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.port = free_port()
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            self._as_user = [require_tool("runuser"), "-u", _UNPRIVILEGED, "--"]
            os.chmod(self.root, 0o755)  # noqa: S103 (the server's user must reach its folder)
            shutil.chown(self.root, _UNPRIVILEGED)
        self._run([_bin("initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
                   "--encoding=UTF8", "--locale=C", "-N"])  # fmt: skip
        self._run(["mkdir", "-p", str(self.socket_dir)])

    def _run(self, command: list[str]) -> None:
        done = subprocess.run(
            [*self._as_user, *command], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {done.stdout}\n{done.stderr}")

    def start(self) -> None:
        """Start (or restart after :meth:`stop`) the server and wait until it accepts connections."""
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.socket_dir} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=60 "
            "-c shared_buffers=64MB"
        )
        log = self.root / "server.log"
        self._run([_bin("pg_ctl"), "-D", str(self.data), "-l", str(log), "-o", options,
                   "-w", "-t", "60", "start"])  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: connections are cut, as when a database goes away)."""
        self._run([_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"])

    def running(self) -> bool:
        """True while the server's postmaster is up."""
        return (self.data / "postmaster.pid").exists()

    def dsn(self, database: str = "postgres") -> str:
        """A connection string for *database*, over TCP to 127.0.0.1."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run *sql* with psql (autocommit), return its output; raises on an SQL error."""
        done = subprocess.run(
            [require_tool("psql", _bin("psql")), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-d", self.dsn(database), "-c", sql],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(done.stderr)
        return done.stdout.strip()

    def create_database(self, name: str) -> str:
        """Create an empty database; return its connection string."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def close(self) -> None:
        """Stop the server if it runs and remove its folder."""
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            if self.running():
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A started server, stopped and removed at the end."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


def wait_until(predicate: object, timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll *predicate* (a callable) until true or *timeout*; the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if callable(predicate) and predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
