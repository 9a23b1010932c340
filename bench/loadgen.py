"""The load generator and the process helpers the server benchmarks share.

``bench/middleware.py`` and ``bench/sidecar.py`` run this file in its own process, so the load it
makes is not charged to the server it measures:

    python bench/loadgen.py URL --token T [--concurrency C] [--requests N] [--seconds S]
        [--warmup W] [--body JSON]

It sends non-streaming chat completions with a bearer token and an ``X-Forwarded-For`` address
from C concurrent aiohttp workers, stops after N requests or S seconds (whichever comes first),
and prints one JSON line: ``requests``, ``failures`` (answers other than 200), ``seconds``,
``rps``, ``p50_ms`` and ``p99_ms``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CLIENT_IP = "8.8.8.8"  # registered to the US in the embedded iptocc data
CHAT = {"model": "aurora-frontier", "messages": [{"role": "user", "content": "Say hello."}]}


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(
    url: str,
    token: str,
    body: bytes,
    *,
    concurrency: int,
    requests: int,
    seconds: float,
    warmup: int = 0,
) -> dict[str, Any]:
    """POST *body* to *url* from *concurrency* workers, bounded by *requests* and *seconds*.

    *warmup* requests go first, one at a time, and are not counted: connections, keys and caches
    are warm when the clock starts.
    """
    import aiohttp

    headers = {
        "authorization": f"Bearer {token}",
        "content-type": "application/json",
        "x-forwarded-for": CLIENT_IP,
    }
    latencies: list[float] = []
    failures = 0
    issued = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(warmup):
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal issued, failures
            while issued < requests and time.perf_counter() < deadline:
                issued += 1
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        failures += 1
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    nan = float("nan")
    return {
        "requests": len(latencies),
        "failures": failures,
        "seconds": elapsed,
        "rps": len(latencies) / elapsed if elapsed else 0.0,
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else nan,
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        if latencies
        else nan,
    }


def load(
    url: str,
    token: str,
    *,
    concurrency: int,
    requests: int,
    seconds: float,
    warmup: int = 0,
    body: bytes | None = None,
) -> dict[str, Any]:
    """Run :func:`drive` in a process of its own and return its measurements."""
    args = [sys.executable, __file__, url, "--token", token, "--concurrency", str(concurrency)]
    args += ["--requests", str(requests), "--seconds", str(seconds), "--warmup", str(warmup)]
    if body is not None:
        args += ["--body", body.decode()]
    out = subprocess.run(
        args, capture_output=True, text=True, check=True, timeout=seconds + warmup + 60
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    """The load generator's own process: print one JSON line of measurements."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--token", default="")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--body", default=json.dumps(CHAT))
    args = parser.parse_args()
    result = asyncio.run(
        drive(
            args.url,
            args.token,
            args.body.encode(),
            concurrency=args.concurrency,
            requests=args.requests,
            seconds=args.seconds,
            warmup=args.warmup,
        )
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
