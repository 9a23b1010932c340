"""Sidecar cost: direct to the model server, through the plain proxy (gate off), and through the gate.

Run: ``.venv/bin/python bench/sidecar.py [--requests N] [--seconds S] [--concurrency C]``.

Everything runs on 127.0.0.1 in separate processes, measured in one run:

- the upstream: the demo model server (``python -m aidr_gate.demo.model_server``);
- gate off: the plain :class:`~aidr_gate.proxy.UpstreamProxy` under uvicorn, built here in the bench
  (no command-line switch anywhere turns the gate off);
- gate on: ``aidr-gate serve`` with the demo's configuration (JWT keys from a file, the example
  registry and catalogue, embedded GeoIP data, an audit file sink with the default fsync policy);
- the load generator: ``bench/loadgen.py``, in its own process (aiohttp, C concurrent workers,
  bounded by a request count and a time limit), sending non-streaming chat completions with a
  valid token and an ``X-Forwarded-For`` address.

Two phases per target: throughput at C concurrent requests, and latency one request at a time (at
C concurrent requests, latency is queueing: what the sidecar adds to one request shows unloaded).
Each target is measured in alternating rounds and the best round is kept, to damp noise on a
shared machine. Prints requests/s, p50/p99 for each, the ratios, and p50 added latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import loadgen
from loadgen import cpu_seconds, free_port

PAYLOAD = json.dumps(
    {"model": "aurora-mini", "messages": [{"role": "user", "content": "hello bench"}]}
).encode()


# -- roles run in child processes ------------------------------------------------------------------


def role_proxy_off(upstream: str, port: int) -> None:
    """The plain proxy, no gate: what the sidecar costs without any decision."""
    from aidr_gate.cli.serve import loop_factory
    from aidr_gate.proxy import UpstreamProxy
    from aidr_gate.sidecar import UvicornServer, uvicorn_config

    server = UvicornServer(uvicorn_config(UpstreamProxy(upstream), port=port, log_level="warning"))
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(server.serve())


# -- the orchestrator ------------------------------------------------------------------------------


def write_gate(root: Path) -> tuple[Path, str]:
    """The demo's gate configuration (its audit file with the default fsync policy), and a token."""
    from aidr_gate.demo.tour import token, write_setup

    config, key = write_setup(root, fsync="interval")
    return config, token(key, "lab-us", lifetime=3600)


def start(args: list[str], port: int, ready: str, log: Path) -> subprocess.Popen[bytes]:
    """Start a child and wait until GET *ready* answers."""
    import urllib.request

    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{args} exited:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready}", timeout=1) as answer:
                if answer.status in (200, 404, 405):
                    return proc
        except OSError as exc:
            code = getattr(exc, "code", None)
            if code in (404, 405):
                return proc
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"{args} did not start:\n{log.read_text()}")
        time.sleep(0.05)


def load(url: str, token: str, concurrency: int, requests: int, seconds: float) -> dict[str, Any]:
    """Run the shared load generator in its own process; every request must succeed."""
    result = loadgen.load(
        url, token, concurrency=concurrency, requests=requests, seconds=seconds, body=PAYLOAD
    )
    if result["failures"]:
        raise RuntimeError(f"{url}: {result['failures']} requests failed")
    return result


def server_stack() -> str:
    """Which HTTP parser and event loop uvicorn picks here ("auto" prefers the C ones)."""
    import importlib.util

    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return f"uvicorn http={http} loop={loop}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=["bench", "proxy-off"], default="bench")
    parser.add_argument("--requests", type=int, default=3000, help="per throughput round")
    parser.add_argument("--seconds", type=float, default=8.0, help="time limit per round")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--upstream")
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    if args.role == "proxy-off":
        role_proxy_off(args.upstream, args.port)
        return 0

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; {server_stack()}")
    with tempfile.TemporaryDirectory(prefix="aidr-bench-") as scratch:
        root = Path(scratch)
        config, token = write_gate(root)
        ports = {name: free_port() for name in ("upstream", "off", "on")}
        upstream = f"http://127.0.0.1:{ports['upstream']}"
        procs = [
            start(
                ["-m", "aidr_gate.demo.model_server", "--port", str(ports["upstream"]),
                 "--token-delay", "0"],
                ports["upstream"], "/health", root / "upstream.log",
            ),
            start(
                [__file__, "--role", "proxy-off", "--upstream", upstream, "--port",
                 str(ports["off"])],
                ports["off"], "/health", root / "off.log",
            ),
            start(
                ["-m", "aidr_gate", "serve", "--config", str(config), "--upstream", upstream,
                 "--port", str(ports["on"])],
                ports["on"], "/healthz", root / "on.log",
            ),
        ]  # fmt: skip
        try:
            targets = {
                "direct": upstream,
                "gate off": f"http://127.0.0.1:{ports['off']}",
                "gate on": f"http://127.0.0.1:{ports['on']}",
            }
            best: dict[str, dict[str, Any]] = {}
            quiet: dict[str, dict[str, Any]] = {}
            for base in targets.values():  # warm up: connections, keys, caches
                load(base + "/v1/chat/completions", token, args.concurrency, 300, 5)
            servers = {"direct": procs[0], "gate off": procs[1], "gate on": procs[2]}
            for _ in range(args.rounds):
                for name, base in targets.items():
                    url = base + "/v1/chat/completions"
                    pid = servers[name].pid
                    cpu = cpu_seconds(pid)
                    run = load(url, token, args.concurrency, args.requests, args.seconds)
                    run["cpu_us"] = 1e6 * (cpu_seconds(pid) - cpu) / max(1, run["requests"])
                    if name not in best or run["rps"] > best[name]["rps"]:
                        best[name] = run
                    one = load(url, token, 1, args.latency_requests, args.seconds)
                    if name not in quiet or one["p50_ms"] < quiet[name]["p50_ms"]:
                        quiet[name] = one
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        report(best, quiet, args.concurrency)
    return 0


def report(best: dict[str, dict[str, Any]], quiet: dict[str, dict[str, Any]], c: int) -> None:
    """Print the table, the ratios and the targets."""
    print(f"\nthroughput at {c} concurrent (best of the rounds), and one request at a time:")
    print(
        f"{'target':<10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11}   "
        f"{'1-at-a-time p50 ms':>19} {'p99 ms':>8}"
    )
    for name in ("direct", "gate off", "gate on"):
        b, q = best[name], quiet[name]
        print(
            f"{name:<10} {b['rps']:>8.0f} {b['p50_ms']:>8.2f} {b['p99_ms']:>8.2f} "
            f"{b['cpu_us']:>11.0f}   {q['p50_ms']:>19.3f} {q['p99_ms']:>8.3f}"
        )
    print(
        "(CPU us/req: of the serving process alone: the model server for direct, the sidecar "
        "for the others)"
    )
    on_off = best["gate on"]["rps"] / best["gate off"]["rps"]
    off_direct = best["gate off"]["rps"] / best["direct"]["rps"]
    added = quiet["gate on"]["p50_ms"] - quiet["direct"]["p50_ms"]
    gate_only = quiet["gate on"]["p50_ms"] - quiet["gate off"]["p50_ms"]
    cpu_ratio = best["gate off"]["cpu_us"] / best["gate on"]["cpu_us"]
    print(f"\ngate on / gate off throughput: {on_off:.1%}   (target >= 90%)")
    print(f"gate off / direct throughput:  {off_direct:.1%}")
    print(
        f"sidecar CPU per request: gate off {best['gate off']['cpu_us']:.0f} us, gate on "
        f"{best['gate on']['cpu_us']:.0f} us (the gate adds "
        f"{best['gate on']['cpu_us'] - best['gate off']['cpu_us']:.0f} us; off/on {cpu_ratio:.1%})"
    )
    print(f"p50 added latency, whole sidecar vs direct: {added:.3f} ms   (target < 1 ms)")
    print(f"p50 added latency, the gate alone (on vs off): {gate_only:.3f} ms")
    print(
        "targets: "
        + ("met" if on_off >= 0.9 and added < 1.0 else "MISSED")
        + f" (throughput {'ok' if on_off >= 0.9 else 'missed'}, "
        f"latency {'ok' if added < 1.0 else 'missed'})"
    )


if __name__ == "__main__":
    sys.exit(main())
