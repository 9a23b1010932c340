"""Real servers for tests: an ASGI app under uvicorn on 127.0.0.1, in a thread, on a free port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol, TypeVar

import httpx
import openai
import orjson
import uvicorn

T = TypeVar("T")
C = TypeVar("C", bound="Closable")


class Closable(Protocol):
    def close(self) -> None: ...


# Clients a test opened, closed when it ends (see closed_after_test).
_OPEN_CLIENTS: list[Closable] = []


def closed_after_test(client: C) -> C:
    """Close *client* (an openai SDK client, an httpx client...) when the running test ends.

    A client left to the garbage collector closes its pooled keep-alive sockets whenever it is
    collected: inside whatever test runs then, where ``filterwarnings = error`` turns the
    ResourceWarning into that test's failure.
    """
    _OPEN_CLIENTS.append(client)
    return client


def openai_client(base_url: str, token: str, ip: str, **options: Any) -> openai.OpenAI:
    """An openai SDK client calling *base_url* as if from *ip* (the tests' loopback is a trusted
    proxy), with no retries; closed when the running test ends."""
    return closed_after_test(
        openai.OpenAI(
            base_url=base_url,
            api_key=token,
            default_headers={"X-Forwarded-For": ip},
            max_retries=0,
            timeout=options.pop("timeout", 20),
            **options,
        )
    )


def close_test_clients() -> None:
    """Close every client registered by :func:`closed_after_test` (conftest calls it)."""
    while _OPEN_CLIENTS:
        _OPEN_CLIENTS.pop().close()


START_TIMEOUT = 15.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ThreadedServer:
    """uvicorn running *app* in a background thread; ``url`` once started."""

    def __init__(self, app: Any, **options: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan=options.pop("lifespan", "on"),
            **options,
        )
        # uvicorn installs signal handlers only in the main thread: the test process keeps its own.
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ThreadedServer:
        """Start and wait until the server accepts connections."""
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server thread died during startup")
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not start in time")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Ask the server to exit and wait for its thread."""
        self.server.should_exit = True
        self.thread.join(timeout=START_TIMEOUT)


@contextlib.contextmanager
def serve(app: Any, **options: Any) -> Iterator[ThreadedServer]:
    """Run *app* under uvicorn on 127.0.0.1 for the duration of the block."""
    server = ThreadedServer(app, **options).start()
    try:
        yield server
    finally:
        server.stop()


def wait_until_serving(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Poll *url* until the server process answers; fail with its stderr if it dies or stalls."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stderr.read().decode() if process.stderr else ""
                raise AssertionError(f"the server did not come up: {output}") from None
            time.sleep(0.05)


def sigkill_under_load(
    server: subprocess.Popen[bytes],
    url: str,
    ready: str,
    send: Callable[[httpx.AsyncClient, int, int], Awaitable[T]],
    *,
    answers: int,
    seconds: float,
) -> list[T]:
    """Load *server* with 16 clients, SIGKILL it mid-load, and return what each answer gave.

    ``send(http, client, number)`` makes one request and returns what to remember of its answer;
    an HTTP error or a body cut short means the server is gone and ends that client. The kill
    comes once *answers* requests were answered, or one second before *seconds* run out; each
    client sends at most 400 requests. The server is always reaped.
    """
    answered: list[T] = []
    try:
        wait_until_serving(url + ready, server)

        async def client(number: int, deadline: float) -> None:
            async with httpx.AsyncClient(base_url=url, timeout=5) as http:
                for sent in range(400):
                    if time.monotonic() > deadline:
                        return
                    try:
                        answered.append(await send(http, number, sent))
                    except (httpx.HTTPError, orjson.JSONDecodeError):
                        return  # the server is gone

        async def run() -> None:
            deadline = time.monotonic() + seconds
            clients = asyncio.gather(*(client(n, deadline) for n in range(16)))
            while len(answered) < answers and time.monotonic() < deadline - 1.0:  # noqa: ASYNC110
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
    return answered
