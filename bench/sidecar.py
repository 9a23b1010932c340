"""Sidecar cost: direct to the model server, through the plain proxy (gate off), and through the gate.

Run: ``.venv/bin/python bench/sidecar.py [--rounds 5] [--seconds 5] [--connections 32]``.

Everything runs on 127.0.0.1 in separate processes, measured in one run:

- the upstream: the demo model server (``python -m aidr_gate.demo.model_server``);
- gate off: the plain :class:`~aidr_gate.sidecar.proxy.UpstreamProxy` under uvicorn, built here in the bench
  (no command-line switch anywhere turns the gate off);
- gate on: ``aidr-gate serve`` with the demo's configuration (JWT keys from a file, the example
  registry and catalogue, embedded GeoIP data, an audit file sink with the default fsync policy);
- the load: ``wrk`` (``serving.py``; the aiohttp load generator when wrk is absent) sending
  non-streaming chat completions with a valid token and an ``X-Forwarded-For`` address.

The measure is the serving process's CPU per request (from /proc): the model server's for direct,
the sidecar's for the others. Targets are measured in interleaved rounds (direct, gate off, gate
on, direct, ...) and the result is the median of the per-round differences, with the spread:
gate on minus gate off is what the gate adds to the sidecar (target <= 60 µs). Requests per second
and latency at C connections, and p50 with one connection (what the sidecar adds to one request,
unloaded), are printed beside.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadgen import free_port
from serving import (
    WRK_HINT,
    LoadGenerator,
    Round,
    describe_machine,
    differences,
    median_spread,
    stop_all,
)

PATH = "/v1/chat/completions"
PAYLOAD = json.dumps(
    {"model": "aurora-mini", "messages": [{"role": "user", "content": "hello bench"}]}
).encode()


# -- roles run in child processes ------------------------------------------------------------------


def role_proxy_off(upstream: str, port: int) -> None:
    """The plain proxy, no gate: what the sidecar costs without any decision."""
    from aidr_gate.cli.serve import loop_factory
    from aidr_gate.sidecar.app import UvicornServer, uvicorn_config
    from aidr_gate.sidecar.proxy import UpstreamProxy

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


def server_stack() -> str:
    """Which HTTP parser and event loop uvicorn picks here ("auto" prefers the C ones)."""
    import importlib.util

    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return f"uvicorn http={http} loop={loop}"


def main() -> int:
    """Start the three targets, measure them in interleaved rounds, print the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--role", choices=["bench", "proxy-off"], default="bench")
    parser.add_argument("--seconds", type=float, default=5.0, help="load per round and target")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (at least 4)")
    parser.add_argument("--upstream")
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    if args.role == "proxy-off":
        role_proxy_off(args.upstream, args.port)
        return 0
    rounds = max(4, args.rounds)
    with tempfile.TemporaryDirectory(prefix="aidr-bench-") as scratch:
        root = Path(scratch)
        load = LoadGenerator(root)
        print(f"aidr_gate sidecar bench: {describe_machine()}")
        print(f"python {sys.version.split()[0]}; {server_stack()}; {load.name}")
        if load.wrk is None:
            print(WRK_HINT)
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
        targets = {
            "direct": (upstream, procs[0].pid),
            "gate off": (f"http://127.0.0.1:{ports['off']}", procs[1].pid),
            "gate on": (f"http://127.0.0.1:{ports['on']}", procs[2].pid),
        }
        runs: dict[str, list[Round]] = {name: [] for name in targets}
        single: dict[str, list[float]] = {name: [] for name in targets}
        try:
            for base, _ in targets.values():  # warm up: connections, keys, caches
                load.run(base + PATH, token=token, body=PAYLOAD, connections=8, seconds=1)
            for number in range(1, rounds + 1):
                for name, (base, pid) in targets.items():
                    url = base + PATH
                    got = Round.measure(
                        pid,
                        lambda url=url: load.run(  # type: ignore[misc]
                            url, token=token, body=PAYLOAD,
                            connections=args.connections, seconds=args.seconds,
                        ),
                    )  # fmt: skip
                    if got.load.failures:
                        raise RuntimeError(f"{name}: {got.load.failures} requests failed")
                    runs[name].append(got)
                    one = load.run(url, token=token, body=PAYLOAD, connections=1, seconds=1)
                    single[name].append(one.p50_ms)
                    print(
                        f"   round {number} {name:9} {got.load.rps:7.0f} req/s  p50 "
                        f"{got.load.p50_ms:5.2f} ms  CPU {got.cpu_us:6.1f} µs/request;  "
                        f"one connection p50 {one.p50_ms:6.3f} ms",
                        flush=True,
                    )
        finally:
            stop_all(procs)
        report(runs, single)
    return 0


def report(runs: dict[str, list[Round]], single: dict[str, list[float]]) -> None:
    """Medians of the per-round differences, the ratios, and the target."""
    print("\nmedian of per-round values and differences (serving process CPU per request):")
    for name, rounds in runs.items():
        mid, low, high = median_spread([r.cpu_us for r in rounds])
        rps = median_spread([r.load.rps for r in rounds])[0]
        print(
            f"   {name:9} CPU {mid:6.1f} µs (rounds {low:.1f} .. {high:.1f}), {rps:7.0f} req/s, "
            f"one connection p50 {median_spread(single[name])[0]:.3f} ms"
        )
    added = differences(runs, "gate on", "gate off")
    mid, low, high = median_spread(added)
    print(
        f"   gate on - gate off: the gate adds {mid:.1f} µs of sidecar CPU a request "
        f"(rounds {low:.1f} .. {high:.1f})   target <= 60 µs   {'OK' if mid <= 60 else 'MISSED'}"
    )
    speed = {name: median_spread([r.load.rps for r in rounds])[0] for name, rounds in runs.items()}
    print(f"   gate on / gate off requests per second: {speed['gate on'] / speed['gate off']:.1%}")
    latency = median_spread(
        [a - b for a, b in zip(single["gate on"], single["direct"], strict=True)]
    )[0]
    print(f"   one connection, p50 added by the whole sidecar vs direct: {latency:.3f} ms")


if __name__ == "__main__":
    sys.exit(main())
