"""Other callers while the gate is attacked: their latency with each attack of issue 12 beside the
same without it, and the sidecar's memory during the body attacks.

Run: ``.venv/bin/python bench/hostile.py [--seconds 4] [--rounds 2] [--connections 4]``.

Everything runs on 127.0.0.1 in separate processes: the demo model server (the upstream) and
``aidr-gate serve`` with the demo's configuration and every limit at its default
(``aidr_gate.limits``). Other callers are ``wrk`` (``serving.py``; the aiohttp load generator when
wrk is absent) sending allowed chat completions on a few keep-alive connections. Each attack runs
from this process, on its own event loop in a thread, while wrk measures; each attack's phase is
paired with a phase without any attack, in the same round and order (without, with; rounds
repeat), so the two sides see the same machine. The result per attack: the median over rounds of
other callers' p50 and p99 without and with it, the p99 added, and the sidecar's peak RSS above
its idle figure (sampled every 20 ms from ``/proc``) with what it is back to afterwards, and how
many of the other callers' requests failed (not 2xx) while it ran.

Targets: p99 added under 50 ms; RSS under +64 MiB during the body attacks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadgen import CLIENT_IP, free_port
from serving import WRK_HINT, Load, LoadGenerator, describe_machine, stop_all
from sidecar import PATH, PAYLOAD, server_stack, start, write_gate

MIB = 1024 * 1024
Attack = Callable[["Stage"], Coroutine[Any, Any, None]]


@dataclass
class Stage:
    """Where an attack aims, with what, until when."""

    port: int
    token: str
    stop: threading.Event
    sent: int = 0  # requests (or connections) the attack made
    answered: dict[int, int] | None = None  # status -> count


async def _exchange(stage: Stage, head: bytes, body: bytes = b"", *, rate: float = 0.0) -> None:
    """One request on its own connection; *rate* > 0 sends the body at that many bytes a second
    (in 64 KiB pieces). Reads the status line, records it, closes."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", stage.port)
    except OSError:
        return
    stage.sent += 1
    try:
        writer.write(head)
        if rate <= 0:
            writer.write(body)
            await writer.drain()
        else:
            for start_at in range(0, len(body), 64 * 1024):
                if stage.stop.is_set():
                    return
                writer.write(body[start_at : start_at + 64 * 1024])
                await writer.drain()
                await asyncio.sleep(64 * 1024 / rate)
        line = await asyncio.wait_for(reader.readline(), 30)
        status = int(line.split(b" ")[1]) if line.startswith(b"HTTP/") else 0
        answered = stage.answered if stage.answered is not None else {}
        answered[status] = answered.get(status, 0) + 1
        stage.answered = answered
    except (OSError, TimeoutError, ValueError, IndexError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _head(
    path: str, length: int, *, token: str | None, extra: bytes = b"", kind: str = ""
) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: bench\r\nX-Forwarded-For: {CLIENT_IP}\r\n".encode()
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n".encode()
    head += f"Content-Type: {kind or 'application/json'}\r\nContent-Length: {length}\r\n".encode()
    return head + extra + b"Connection: close\r\n\r\n"


async def _repeat(stage: Stage, workers: int, one: Callable[[], Awaitable[None]]) -> None:
    async def worker() -> None:
        while not stage.stop.is_set():
            await one()

    await asyncio.gather(*(worker() for _ in range(workers)))


async def header_flood(stage: Stage) -> None:
    """12,000 User-Agent lines of 512 bytes (6 MB of headers), no token, 4 at a time."""
    lines = b"".join(b"User-Agent: " + b"a" * 500 + b"\r\n" for _ in range(12_000))
    head = _head(PATH, 2, token=None, extra=lines)
    await _repeat(stage, 4, lambda: _exchange(stage, head, b"{}"))


async def header_lines(stage: Stage) -> None:
    """150 header lines of 200 bytes (under the byte cap, past the line cap), no token."""
    lines = b"".join(b"User-Agent: " + b"u" * 188 + b"\r\n" for _ in range(150))
    head = _head(PATH, 2, token=None, extra=lines)
    await _repeat(stage, 8, lambda: _exchange(stage, head, b"{}"))


async def slow_headers(stage: Stage) -> None:
    """300 connections trickling header bytes, one every half second, reopened when closed."""

    async def trickle() -> None:
        while not stage.stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", stage.port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            stage.sent += 1
            try:
                writer.write(b"GET /v1/models HTTP/1.1\r\nHost: bench\r\nX-Slow: ")
                while not stage.stop.is_set() and not reader.at_eof():
                    writer.write(b"a")
                    await writer.drain()
                    await asyncio.sleep(0.5)
            except OSError:
                pass
            finally:
                writer.close()

    await asyncio.gather(*(trickle() for _ in range(300)))


def _json_body(size: int) -> bytes:
    prefix = b'{"model":"aurora-mini","messages":[{"role":"user","content":"'
    return prefix + b"x" * (size - len(prefix) - 4) + b'"}]}'


async def slow_bodies(stage: Stage) -> None:
    """16 verified callers uploading 8 MiB JSON bodies at 512 KiB/s (each held as it arrives)."""
    body = _json_body(8 * MIB - 1024)
    head = _head(PATH, len(body), token=stage.token)
    await _repeat(stage, 16, lambda: _exchange(stage, head, body, rate=512 * 1024))


async def big_bodies(stage: Stage) -> None:
    """8 verified callers sending whole 8 MiB JSON bodies as fast as they can."""
    body = _json_body(8 * MIB - 1024)
    head = _head(PATH, len(body), token=stage.token)
    await _repeat(stage, 8, lambda: _exchange(stage, head, body))


async def tiny_json(stage: Stage) -> None:
    """8 MiB of {"model":1} objects (the JSON slow path), 4 at a time."""
    objects = b",".join([b'{"model":1}'] * ((8 * MIB - 4096) // 12))
    body = b'{"model":"aurora-mini","x":[' + objects + b"]}"
    head = _head(PATH, len(body), token=stage.token)
    await _repeat(stage, 4, lambda: _exchange(stage, head, body))


async def ambiguous_forms(stage: Stage) -> None:
    """Forms with two Content-Disposition headers in a part, 8 at a time."""
    body = (
        b'--b\r\nContent-Disposition: form-data; name="model"\r\n'
        b'Content-Disposition: form-data; name="x"\r\n\r\naurora-mini\r\n--b--\r\n'
    )
    head = _head("/v1/audio/transcriptions", len(body), token=stage.token,
                 kind="multipart/form-data; boundary=b")  # fmt: skip
    await _repeat(stage, 8, lambda: _exchange(stage, head, body))


ATTACKS: dict[str, Attack] = {
    "header flood (6 MB)": header_flood,
    "150 header lines": header_lines,
    "300 slow headers": slow_headers,
    "16 slow 8 MiB bodies": slow_bodies,
    "8 fast 8 MiB bodies": big_bodies,
    "8 MiB of {} objects": tiny_json,
    "ambiguous forms": ambiguous_forms,
}
BODY_ATTACKS = ("16 slow 8 MiB bodies", "8 fast 8 MiB bodies", "8 MiB of {} objects")


def rss_mib(pid: int) -> float:
    """Resident memory of *pid* in MiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Sampler:
    """The peak RSS of a process while the block runs (every 20 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mib(self.pid))
            time.sleep(0.02)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_attack(attack: Attack | None, stage: Stage, measure: Callable[[], Load]) -> Load:
    """Run *measure* (the other callers) with *attack* going on beside it (None: alone)."""
    if attack is None:
        return measure()
    thread = threading.Thread(target=lambda: asyncio.run(attack(stage)), daemon=True)
    thread.start()
    time.sleep(0.5)  # the attack takes hold before the measurement starts
    try:
        return measure()
    finally:
        stage.stop.set()
        thread.join(60)


@dataclass
class Phase:
    """One attack's measurements over the rounds."""

    without: list[Load]
    with_: list[Load]
    peak_rss: list[float]
    after_rss: list[float]
    answered: dict[int, int]


def main() -> int:
    """Start the upstream and the sidecar, run each attack beside a phase without, print."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="each phase's measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=4, help="other callers' connections")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aidr-hostile-") as scratch:
        root = Path(scratch)
        load = LoadGenerator(root)
        print(f"aidr_gate hostile bench: {describe_machine()}")
        print(f"{server_stack()}; other callers: {load.name}, {args.connections} connections")
        if load.wrk is None:
            print(WRK_HINT)
        config, token = write_gate(root)
        up_port, gate_port = free_port(), free_port()
        upstream = f"http://127.0.0.1:{up_port}"
        procs = [
            start(["-m", "aidr_gate.demo.model_server", "--port", str(up_port),
                   "--token-delay", "0"], up_port, "/health", root / "upstream.log"),
            start(["-m", "aidr_gate", "serve", "--config", str(config), "--upstream", upstream,
                   "--port", str(gate_port)], gate_port, "/healthz", root / "gate.log"),
        ]  # fmt: skip
        gate_pid = procs[1].pid
        url = f"http://127.0.0.1:{gate_port}{PATH}"

        def measure() -> Load:
            return load.run(
                url, token=token, body=PAYLOAD, connections=args.connections,
                seconds=args.seconds,
            )  # fmt: skip

        phases = {name: Phase([], [], [], [], {}) for name in ATTACKS}
        try:
            load.run(url, token=token, body=PAYLOAD, connections=8, seconds=1)  # warm up
            idle = rss_mib(gate_pid)
            print(f"sidecar idle RSS {idle:.1f} MiB")
            for number in range(1, max(1, args.rounds) + 1):
                for name, attack in ATTACKS.items():
                    phase = phases[name]
                    phase.without.append(
                        run_attack(None, Stage(gate_port, token, threading.Event()), measure)
                    )
                    stage = Stage(gate_port, token, threading.Event())
                    with Sampler(gate_pid) as sampler:
                        phase.with_.append(run_attack(attack, stage, measure))
                    time.sleep(1.0)  # the attack's connections close; memory is handed back
                    phase.peak_rss.append(sampler.peak - idle)
                    phase.after_rss.append(rss_mib(gate_pid) - idle)
                    for status, count in (stage.answered or {}).items():
                        phase.answered[status] = phase.answered.get(status, 0) + count
                    print(
                        f"   round {number} {name:22} p99 {phase.without[-1].p99_ms:7.2f} -> "
                        f"{phase.with_[-1].p99_ms:7.2f} ms; RSS peak +{phase.peak_rss[-1]:.1f} "
                        f"MiB; failures {phase.with_[-1].failures}; attack answers "
                        f"{dict(sorted((stage.answered or {}).items()))}",
                        flush=True,
                    )  # fmt: skip
        finally:
            stop_all(procs)
        report(phases, idle)
    return 0


def report(phases: dict[str, Phase], idle: float) -> None:
    """Medians over rounds, side by side, with the targets."""
    median = statistics.median
    print(f"\nother callers, median over rounds (sidecar idle RSS {idle:.1f} MiB):")
    print(
        f"   {'attack':22} {'p50 without':>11} {'p50 with':>9} {'p99 without':>11} "
        f"{'p99 with':>9} {'p99 added':>9} {'failed':>6} {'RSS peak':>9} {'RSS after':>9}  "
        "attack answered"
    )
    worst_p99 = 0.0
    worst_rss = 0.0
    for name, phase in phases.items():
        p99_without = median(x.p99_ms for x in phase.without)
        p99_with = median(x.p99_ms for x in phase.with_)
        added = p99_with - p99_without
        worst_p99 = max(worst_p99, added)
        peak = max(phase.peak_rss)
        if name in BODY_ATTACKS:
            worst_rss = max(worst_rss, peak)
        print(
            f"   {name:22} {median(x.p50_ms for x in phase.without):9.2f}ms "
            f"{median(x.p50_ms for x in phase.with_):7.2f}ms {p99_without:9.2f}ms "
            f"{p99_with:7.2f}ms {added:+8.2f}ms {sum(x.failures for x in phase.with_):6d} "
            f"{peak:+7.1f}MiB "
            f"{median(phase.after_rss):+7.1f}MiB  {json.dumps(dict(sorted(phase.answered.items())))}"
        )
    print(
        f"   worst p99 added {worst_p99:.1f} ms (target < 50 ms); worst RSS above idle during "
        f"body attacks +{worst_rss:.1f} MiB (target < 64 MiB)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
