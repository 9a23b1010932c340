"""What the server benchmarks share: wrk as the load generator, and CPU read from /proc.

The measure is the server's CPU per request (user + system time of the server process, from
``/proc/<pid>/stat``), not requests per second: on a machine whose cores the load generator shares,
throughput says as much about the load generator as about the server, while the CPU a server
spends on one request does not depend on who is the bottleneck. Rounds are interleaved (bare,
gated, bare, gated, ...) and the result is the median of the per-round differences, with the
spread printed beside it.

The load comes from ``wrk`` (https://github.com/wg/wrk; ``apt-get install wrk`` on Debian and
Ubuntu, ``brew install wrk`` on macOS), a C program that spends a few microseconds a request.
Without it, the aiohttp load generator in ``loadgen.py`` runs instead (it costs ten times more CPU
per request, so with two cores its own CPU limits the rate; CPU per request stays comparable).

Threads are read one by one too (``/proc/<pid>/task/<tid>/``): their CPU, and their voluntary
context switches (how often a thread went to sleep and was woken), which is what the audit I/O
thread's wake-ups are counted from. The trail names that thread ``aidr-audit-io``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import loadgen

WRK_HINT = (
    "wrk not found: the aiohttp load generator is used instead (slower, so rates are lower). "
    "Install wrk for the measurements the README quotes: apt-get install wrk (Debian, Ubuntu), "
    "brew install wrk (macOS), or build it from https://github.com/wg/wrk."
)
IO_THREAD = "aidr-audit-io"
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ThreadSample:
    """One thread's counters at one moment."""

    name: str
    cpu: float  # seconds, user + system
    voluntary: int  # voluntary context switches


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads); NaN when unreadable."""
    return loadgen.cpu_seconds(pid)


def threads(pid: int) -> dict[int, ThreadSample]:
    """Every thread of *pid*: name, CPU seconds and voluntary context switches."""
    out: dict[int, ThreadSample] = {}
    base = Path(f"/proc/{pid}/task")
    try:
        tids = [int(entry.name) for entry in base.iterdir()]
    except OSError:
        return out
    for tid in tids:
        try:
            stat = (base / str(tid) / "stat").read_text()
            status = (base / str(tid) / "status").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        voluntary = 0
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                voluntary = int(line.split()[1])
        out[tid] = ThreadSample(name, (int(fields[11]) + int(fields[12])) / _TICK, voluntary)
    return out


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A server's counters before or after a round."""

    cpu: float
    main_cpu: float  # the event loop's thread (its tid is the pid)
    io_cpu: float
    io_switches: int

    @classmethod
    def take(cls, pid: int) -> Snapshot:
        """Read the counters of *pid* now."""
        sample = threads(pid)
        main = sample.get(pid)
        io = [s for s in sample.values() if s.name.startswith(IO_THREAD)]
        return cls(
            cpu=process_cpu(pid),
            main_cpu=main.cpu if main else math.nan,
            io_cpu=sum(s.cpu for s in io) if io else math.nan,
            io_switches=sum(s.voluntary for s in io) if io else -1,
        )


@dataclass(frozen=True, slots=True)
class Load:
    """What one round of load did."""

    requests: int
    failures: int  # non-2xx answers and socket errors
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0


_LUA = """\
wrk.method = "{method}"
wrk.body = {body}
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {{\\"requests\\":%d,\\"failures\\":%d,\\"seconds\\":%f,\\"p50_ms\\":%f,\\"p99_ms\\":%f}}\\n",
    summary.requests, e.status + e.connect + e.read + e.write + e.timeout,
    summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class LoadGenerator:
    """Runs a bounded round of load against a URL: wrk when installed, aiohttp otherwise."""

    def __init__(self, directory: Path) -> None:
        self.wrk = shutil.which("wrk")
        self._directory = directory
        self._scripts: dict[tuple[str, bytes, tuple[tuple[str, str], ...]], Path] = {}

    @property
    def name(self) -> str:
        """What makes the load, for the report."""
        if self.wrk is None:
            return "aiohttp (bench/loadgen.py; wrk not installed)"
        version = subprocess.run(
            [self.wrk, "-v"], capture_output=True, text=True, check=False
        ).stdout.split("\n")[0]
        return version.split(" [")[0] or "wrk"

    def _script(self, method: str, body: bytes, headers: Mapping[str, str]) -> Path:
        key = (method, body, tuple(sorted(headers.items())))
        path = self._scripts.get(key)
        if path is None:
            lines = "\n".join(
                f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items()
            )
            text = _LUA.format(method=method, body=_lua_string(body.decode()), headers=lines)
            fd, name = tempfile.mkstemp(suffix=".lua", dir=self._directory)
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            path = self._scripts[key] = Path(name)
        return path

    def run(
        self,
        url: str,
        *,
        token: str,
        body: bytes,
        connections: int,
        seconds: float,
        headers: Mapping[str, str] | None = None,
    ) -> Load:
        """One round: *connections* keep-alive connections for *seconds*."""
        sent = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "X-Forwarded-For": loadgen.CLIENT_IP,
            **(headers or {}),
        }
        if self.wrk is None:
            result = loadgen.load(
                url,
                token,
                concurrency=connections,
                requests=10**9,
                seconds=seconds,
                body=body,
            )
            return Load(
                int(result["requests"]),
                int(result["failures"]),
                float(result["seconds"]),
                float(result["p50_ms"]),
                float(result["p99_ms"]),
            )
        script = self._script("POST", body, sent)
        threads_used = 1  # one wrk thread: the other core is the server's
        args = [self.wrk, "-t", str(threads_used), "-c", str(connections)]
        args += ["-d", f"{seconds:g}s", "--timeout", "10s", "-s", str(script), url]
        out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60, check=True)
        for line in out.stdout.splitlines():
            if line.startswith("WRKJSON "):
                got: dict[str, Any] = json.loads(line[len("WRKJSON ") :])
                return Load(
                    int(got["requests"]),
                    int(got["failures"]),
                    float(got["seconds"]),
                    float(got["p50_ms"]),
                    float(got["p99_ms"]),
                )
        raise RuntimeError(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")


@dataclass(frozen=True, slots=True)
class Round:
    """One measured round against one server: the load, and its CPU per request."""

    load: Load
    cpu_us: float  # whole process, per request
    main_us: float  # the event loop's thread, per request
    io_us: float  # the audit I/O thread, per request (NaN without one)
    io_wakeups_per_s: float  # voluntary context switches of the I/O thread, per second

    @classmethod
    def measure(cls, pid: int, run: Callable[[], Load]) -> Round:
        """Run one round of load against the server *pid* and read its counters around it."""
        before = Snapshot.take(pid)
        load = run()
        after = Snapshot.take(pid)
        count = max(1, load.requests)
        switches = after.io_switches - before.io_switches if before.io_switches >= 0 else -1
        return cls(
            load=load,
            cpu_us=(after.cpu - before.cpu) / count * 1e6,
            main_us=(after.main_cpu - before.main_cpu) / count * 1e6,
            io_us=(after.io_cpu - before.io_cpu) / count * 1e6,
            io_wakeups_per_s=switches / load.seconds if switches >= 0 else math.nan,
        )


def median_spread(values: Sequence[float]) -> tuple[float, float, float]:
    """Median, least and greatest of *values* (NaN for none)."""
    clean = [v for v in values if not math.isnan(v)]
    if not clean:
        return math.nan, math.nan, math.nan
    return statistics.median(clean), min(clean), max(clean)


def differences(
    rounds: Mapping[str, Sequence[Round]], name: str, base: str, field: str = "cpu_us"
) -> list[float]:
    """Per-round differences of *field* between *name* and *base* (rounds paired in order)."""
    return [
        getattr(a, field) - getattr(b, field)
        for a, b in zip(rounds[name], rounds[base], strict=False)
    ]


def describe_machine() -> str:
    """CPU model, cores and load average, for the report."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()
    return f"{model}, {os.cpu_count()} CPUs; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


def stop_all(processes: Sequence[subprocess.Popen[bytes]], timeout: float = 20.0) -> None:
    """SIGTERM every process, then wait for each (killing one that outlives *timeout*)."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
