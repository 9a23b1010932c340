"""The sidecar beside the peer users pick for gating model access: the LiteLLM proxy.

Three targets in front of the same upstream (the demo model server), under the same load, in
interleaved rounds: direct to the upstream; ``aidr-gate serve`` (the sidecar, default audit
trail); and the LiteLLM proxy with a master key and no database (its lightest gated setup: a
virtual-key database would add a lookup per request). Two workloads: chat completions, and
streamed chat completions (server-sent events, one chunk a word). Load from ``wrk``
(``serving.py``); measured per round: requests per second, p50 latency, and the serving process's
CPU per request (all its threads, from /proc). Printed: every round, the medians, and the ratios
sidecar / LiteLLM.

LiteLLM is heavy (hundreds of packages) and never part of this project: it runs from a virtual
environment of its own that the bench is pointed at, with ``--litellm-venv DIR`` or
``$AIDR_BENCH_LITELLM_VENV``. To make one::

    python3 -m venv /tmp/litellm-venv
    /tmp/litellm-venv/bin/pip install 'litellm[proxy]'

Without it the bench measures direct and the sidecar only, and says so.

Run: .venv/bin/python bench/peers.py [--litellm-venv DIR] [--rounds 4] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from loadgen import free_port
from serving import WRK_HINT, LoadGenerator, Round, describe_machine, median_spread, stop_all
from sidecar import start, write_gate

PATH = "/v1/chat/completions"
MODEL = "aurora-mini"
WORKLOADS = {
    "chat": json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}),
    "stream": json.dumps(
        {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hello"}]}
    ),
}
HOW_TO = (
    "LiteLLM is not measured: no virtual environment with it was given (--litellm-venv or "
    "$AIDR_BENCH_LITELLM_VENV). Make one, then point the bench at it:\n"
    "    python3 -m venv /tmp/litellm-venv\n"
    "    /tmp/litellm-venv/bin/pip install 'litellm[proxy]'\n"
    "    .venv/bin/python bench/peers.py --litellm-venv /tmp/litellm-venv"
)


def litellm_binary(venv: str | None) -> Path | None:
    """The ``litellm`` command of *venv*, when it has one."""
    if not venv:
        return None
    binary = Path(venv) / "bin" / "litellm"
    return binary if binary.is_file() else None


def start_litellm(
    binary: Path, upstream: str, port: int, root: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """The LiteLLM proxy with a master key, no database, one model routed to *upstream*."""
    key = "sk-bench-" + secrets.token_hex(8)
    config = root / "litellm.yaml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "model_list": [
                    {
                        "model_name": MODEL,
                        "litellm_params": {
                            "model": f"openai/{MODEL}",
                            "api_base": f"{upstream}/v1",
                            "api_key": "unused",
                        },
                    }
                ],
                "general_settings": {"master_key": key},
                "litellm_settings": {"telemetry": False, "drop_params": True},
            }
        )
    )
    log = root / "litellm.log"
    env = {**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False"}
    env.pop("DATABASE_URL", None)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + 180  # it imports a great deal
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"litellm exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/health/liveliness", timeout=1
            ) as answer:
                if answer.status == 200:
                    return process, key
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise TimeoutError(f"litellm did not start:\n{log.read_text()[-3000:]}")


def main() -> int:
    """Measure every target under both workloads, interleaved, and print the ratios."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--litellm-venv", default=os.environ.get("AIDR_BENCH_LITELLM_VENV"))
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (at least 4)")
    parser.add_argument("--seconds", type=float, default=5.0, help="load per round and target")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    rounds = max(4, args.rounds)
    binary = litellm_binary(args.litellm_venv)
    with tempfile.TemporaryDirectory(prefix="aidr-peers-") as scratch:
        root = Path(scratch)
        load = LoadGenerator(root)
        print(f"aidr_gate peers bench: {describe_machine()}")
        print(f"python {sys.version.split()[0]}; {load.name}")
        if load.wrk is None:
            print(WRK_HINT)
        if binary is None:
            print(HOW_TO)
        config, token = write_gate(root)
        ports = {name: free_port() for name in ("upstream", "sidecar", "litellm")}
        upstream = f"http://127.0.0.1:{ports['upstream']}"
        procs: list[subprocess.Popen[bytes]] = []
        try:
            procs.append(
                start(
                    ["-m", "aidr_gate.demo.model_server", "--port", str(ports["upstream"]),
                     "--token-delay", "0"],
                    ports["upstream"], "/health", root / "upstream.log",
                )
            )  # fmt: skip
            procs.append(
                start(
                    ["-m", "aidr_gate", "serve", "--config", str(config), "--upstream",
                     upstream, "--port", str(ports["sidecar"])],
                    ports["sidecar"], "/healthz", root / "sidecar.log",
                )
            )  # fmt: skip
            targets = {
                "direct": (upstream, procs[0].pid, token),
                "sidecar": (f"http://127.0.0.1:{ports['sidecar']}", procs[1].pid, token),
            }
            if binary is not None:
                litellm, key = start_litellm(binary, upstream, ports["litellm"], root)
                procs.append(litellm)
                version = subprocess.run(
                    [str(binary.parent / "python"), "-c",
                     "import importlib.metadata as m; print(m.version('litellm'))"],
                    capture_output=True, text=True, check=False,
                ).stdout.strip()  # fmt: skip
                print(f"LiteLLM proxy {version} from {binary.parent.parent}")
                targets["litellm"] = (f"http://127.0.0.1:{ports['litellm']}", litellm.pid, key)
            results = measure(load, targets, rounds, args.seconds, args.connections)
        finally:
            stop_all(procs)
        report(results)
    return 0


def measure(
    load: LoadGenerator,
    targets: dict[str, tuple[str, int, str]],
    rounds: int,
    seconds: float,
    connections: int,
) -> dict[tuple[str, str], list[Round]]:
    """Interleaved rounds: every workload against every target, in turn."""
    results: dict[tuple[str, str], list[Round]] = {}
    for base, _, key in targets.values():  # warm
        for body in WORKLOADS.values():
            load.run(base + PATH, token=key, body=body.encode(), connections=4, seconds=2)
    for number in range(1, rounds + 1):
        for workload, body in WORKLOADS.items():
            for name, (base, pid, key) in targets.items():
                url = base + PATH
                got = Round.measure(
                    pid,
                    lambda url=url, key=key, body=body: load.run(  # type: ignore[misc]
                        url, token=key, body=body.encode(),
                        connections=connections, seconds=seconds,
                    ),
                )  # fmt: skip
                if got.load.failures:
                    raise RuntimeError(f"{name} {workload}: {got.load.failures} requests failed")
                results.setdefault((workload, name), []).append(got)
                print(
                    f"   round {number} {workload:6} {name:8} {got.load.rps:7.0f} req/s  p50 "
                    f"{got.load.p50_ms:7.2f} ms  CPU {got.cpu_us:7.1f} µs/request",
                    flush=True,
                )
    return results


def report(results: dict[tuple[str, str], list[Round]]) -> None:
    """Medians per target and workload, and the sidecar's ratios to LiteLLM."""
    print("\nmedians of the rounds (serving process CPU per request, all its threads):")
    medians: dict[tuple[str, str], tuple[float, float, float]] = {}
    for (workload, name), rounds in results.items():
        rps, low, high = median_spread([r.load.rps for r in rounds])
        cpu = median_spread([r.cpu_us for r in rounds])[0]
        p50 = median_spread([r.load.p50_ms for r in rounds])[0]
        medians[(workload, name)] = (rps, cpu, p50)
        print(
            f"   {workload:6} {name:8} {rps:8.0f} req/s (rounds {low:.0f} .. {high:.0f})  "
            f"p50 {p50:7.2f} ms  CPU {cpu:7.1f} µs/request"
        )
    for workload in WORKLOADS:
        ours, peer = medians.get((workload, "sidecar")), medians.get((workload, "litellm"))
        if ours is None or peer is None:
            continue
        print(
            f"   {workload}: the sidecar serves {ours[0] / peer[0]:.1f}x LiteLLM's requests/s, "
            f"with {peer[1] / ours[1]:.1f}x less CPU a request, p50 {peer[2] / ours[2]:.1f}x lower"
        )


if __name__ == "__main__":
    sys.exit(main())
