"""Real processes for sidecar tests: the demo model server and ``aidr-gate serve``, on 127.0.0.1.

Each runs as ``python -m ...`` in its own process with its output captured to a file, is waited for
until it answers, and is stopped by its own pid (SIGTERM, then SIGKILL after a deadline).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from support.servers import free_port

START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0


class Process:
    """A child process serving HTTP on 127.0.0.1:``port``, its output in ``log``."""

    def __init__(self, args: list[str], port: int, log: Path, *, ready_path: str) -> None:
        self.args = args
        self.port = port
        self.log = log
        self.ready_path = ready_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Process:
        """Start and wait until ``ready_path`` answers 200."""
        env = dict(os.environ)
        env.pop("AIDR_GATE_CONFIG", None)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, *self.args], stdout=out, stderr=subprocess.STDOUT, env=env
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.args} exited at start:\n{self.output()}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.args} did not answer in time:\n{self.output()}")
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        """Send *signum* to this process (by its pid)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """Wait for the exit; its code."""
        if self.proc is None:
            raise RuntimeError("not started")
        return self.proc.wait(timeout)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within the deadline; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        return self.proc.returncode

    def output(self) -> str:
        """Everything the process wrote so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> Process:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def model_server(root: Path, *extra: str, token_delay: float = 0.02) -> Process:
    """The demo model server with fault injection and body digests."""
    port = free_port()
    args = [
        "-m",
        "aidr_gate.demo.model_server",
        "--port",
        str(port),
        "--faults",
        "--echo-digest",
        "--token-delay",
        str(token_delay),
        *extra,
    ]
    return Process(args, port, root / f"model-server-{port}.log", ready_path="/health")


def sidecar(root: Path, config: Path, upstream: str, *extra: str) -> Process:
    """``aidr-gate serve`` with *config* in front of *upstream*."""
    port = free_port()
    args = [
        "-m",
        "aidr_gate",
        "serve",
        "--config",
        str(config),
        "--upstream",
        upstream,
        "--port",
        str(port),
        *extra,
    ]
    return Process(args, port, root / f"sidecar-{port}.log", ready_path="/healthz")


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``python -m aidr_gate ARGS`` to completion, output captured."""
    env = dict(os.environ)
    env.pop("AIDR_GATE_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "aidr_gate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


class CuttingUpstream:
    """A raw TCP upstream that sends headers and part of a chunked body, then hangs up or stalls."""

    def __init__(self, *, stall: bool) -> None:
        self.stall = stall
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"transfer-encoding: chunked\r\n\r\n"
                    b"d\r\ndata: first\n\n\r\n"
                )
                if self.stall:
                    conn.recv(1)  # waits until the proxy gives up and closes
                # else: hang up mid-stream

    def close(self) -> None:
        self.sock.close()
