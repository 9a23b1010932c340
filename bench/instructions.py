"""What the middleware and the sidecar cost in instructions: nearly the same on any machine.

Server CPU per request (bench/middleware.py) is the measure the targets are stated in, but it moves
with the machine: on a two-core VM about twice as slow as the one the targets were set on, bare
costs 230 µs instead of 131, and two runs of the same code an hour apart differ by 30 µs. An
instruction count does not: ``valgrind --tool=callgrind`` counts the instructions every thread of
the process executes, the same for the same code and inputs whatever else the machine does, but
for the audit writer's batches: they are timed, so how many records a batch holds (and what
per-batch work weighs per record) follows the process's speed. Repeated runs agree within about
1% (seen: 500,747 and 501,319 for the sidecar's gate; 497,864 with the test suite running
beside). A change of a few thousand instructions a request can be judged here before the slower
wrk rounds confirm it.

Each variant drives N chat completions through ASGI on uvloop in one process (the demo model app;
bench/middleware.py's configuration: an Ed25519 token, the embedded GeoIP data, X-Forwarded-For):
bare; gated with the audit trail cut out (``no-audit``); gated with the default audit trail (a
file journal, ``fsync: interval``, ECS records), its writer thread counted too, lingering 1 s for
a batch instead of 50 ms (see ``drive``: under callgrind the program runs 50 times slower, and
batches should hold as many records as at full speed). Each runs twice
under callgrind, with N = LOW and N = HIGH requests; the difference over HIGH - LOW is the
instructions per request, start-up and shutdown cancelling out. The sidecar's two variants drive
``aidr-gate serve``'s app the same way, in front of the demo model server in a process of its own
(not counted): the plain proxy (``sidecar-off``) and the gate with the demo's configuration
(``sidecar-on``, as bench/sidecar.py runs them). Printed: each variant's count and what the gate,
and the audit trail within it, add. No server: uvicorn's and the kernel's share of a request is
not in these counts (bench/middleware.py and bench/sidecar.py have it).

Run: .venv/bin/python bench/instructions.py [--low 200] [--high 1200] [--variant gated ...]
(needs valgrind: apt-get install valgrind; runs two at a time, about 4 minutes for all five variants)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from loadgen import free_port
from metrics import call, headers_for
from middleware import setup
from serving import describe_machine, stop_all
from sidecar import start as start_child

VARIANTS = ("bare", "no-audit", "gated", "sidecar-off", "sidecar-on")
SIDECAR = ("sidecar-off", "sidecar-on")
VALGRIND_HINT = "valgrind not found: apt-get install valgrind (Debian, Ubuntu)"


def linger_long(config: Path) -> None:
    """Set the audit trail of *config* (its last section) to linger 1 s for a batch.

    The writer takes a batch at most once per linger. Under callgrind a process runs some 50
    times slower, so the default 50 ms would gather about 2 records a batch where full speed
    gathers a hundred: per-batch costs would weigh 50 times too much. The maximum linger (1 s)
    gathers about 40 here, within a few percent of full speed.
    """
    text = config.read_text()
    if text.rstrip().splitlines()[-1].startswith(" ") and "\naudit:\n" in text:
        config.write_text(text.rstrip("\n") + "\n  batch_linger: 1.0\n")
    else:  # the bench's own configurations end with their audit section
        raise SystemExit(f"{config}: the audit section is not the last")


async def drive_sidecar(variant: str, count: int, upstream: str) -> None:
    """Send *count* chat completions through the sidecar, to the model server at *upstream*
    (a process of its own, not counted): the plain proxy (``sidecar-off``) or ``aidr-gate
    serve``'s app with the demo's configuration (``sidecar-on``, as bench/sidecar.py runs it)."""
    from aidr_gate.demo.tour import token as demo_token
    from aidr_gate.demo.tour import write_setup
    from aidr_gate.sidecar.app import build_sidecar
    from aidr_gate.sidecar.proxy import UpstreamProxy

    with tempfile.TemporaryDirectory(prefix="aidr-instructions-") as scratch:
        config, key = write_setup(Path(scratch), fsync="interval")
        linger_long(config)
        headers = headers_for(demo_token(key, "lab-us", lifetime=3600))
        if variant == "sidecar-off":
            proxy = UpstreamProxy(upstream)
            await proxy.start()
            statuses = {await call(proxy, headers) for _ in range(count)}
            await proxy.close()
        else:
            app = build_sidecar(config, upstream)
            await app.startup()
            statuses = {await call(app, headers) for _ in range(count)}
            await app.shutdown()  # the writer's last batches are in the count
        if statuses != {200}:
            raise SystemExit(f"{variant} answered {sorted(statuses)}")


async def drive(variant: str, count: int) -> None:
    """Send *count* chat completions through *variant*'s app, then close it."""
    from aidr_gate.asgi.middleware import AIDRGateMiddleware
    from aidr_gate.demo.model_server import build_model_app
    from aidr_gate.runtime import Runtime

    with tempfile.TemporaryDirectory(prefix="aidr-instructions-") as scratch:
        config, token = setup(Path(scratch))
        linger_long(config)
        headers = headers_for(token)
        runtime: Any = None
        app: Any = build_model_app(token_delay=0)
        if variant != "bare":
            runtime = Runtime.from_config(str(config))
            if variant == "no-audit":
                runtime.audit = None  # as bench/middleware.py's no-audit variant
            await runtime.start()
            app = AIDRGateMiddleware(app, runtime=runtime)
        statuses = {await call(app, headers) for _ in range(count)}
        if statuses != {200}:
            raise SystemExit(f"{variant} answered {sorted(statuses)}")
        if runtime is not None:
            await runtime.close()  # the writer's last batches are in the count


def instructions(variant: str, count: int, scratch: Path, upstream: str) -> int:
    """Instructions executed by every thread of one run of *variant* with *count* requests."""
    out = scratch / f"{variant}.{count}.cg"
    subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--drive",
            variant,
            str(count),
            upstream,
        ],
        check=True,
        # A fixed string hash: dict probes, so counts, are the same from run to run.
        env={**os.environ, "PYTHONHASHSEED": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    totals = re.findall(rb"^(?:summary|totals): (\d+)", out.read_bytes(), re.MULTILINE)
    if not totals:
        raise SystemExit(f"callgrind wrote no totals for {variant} ({count})")
    return int(totals[-1])


def main() -> None:
    """Count each variant at two sizes, two runs at a time, and print the differences."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--low", type=int, default=200)
    parser.add_argument("--high", type=int, default=1200)
    parser.add_argument("--variant", action="append", choices=VARIANTS)
    parser.add_argument("--drive", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive is not None:
        import uvloop

        variant, count, upstream = args.drive[0], int(args.drive[1]), args.drive[2]
        if variant in SIDECAR:
            uvloop.run(drive_sidecar(variant, count, upstream))
        else:
            uvloop.run(drive(variant, count))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit(VALGRIND_HINT)
    variants = args.variant or list(VARIANTS)
    print(f"aidr_gate instructions per request (callgrind, in-process): {describe_machine()}")
    print(f"N = {args.low} and {args.high} requests a variant; (I_high - I_low) / (high - low)\n")
    with contextlib.ExitStack() as stack:
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="aidr-callgrind-"))
        upstream = "-"
        if any(v in SIDECAR for v in variants):
            upstream = stack.enter_context(model_server(Path(scratch)))
        pool = stack.enter_context(ThreadPoolExecutor(2))
        runs = {
            (variant, count): pool.submit(instructions, variant, count, Path(scratch), upstream)
            for variant in variants
            for count in (args.low, args.high)
        }
        per_request = {
            variant: (runs[variant, args.high].result() - runs[variant, args.low].result())
            / (args.high - args.low)
            for variant in variants
        }
    for variant, count in per_request.items():
        print(f"   {variant:10} {count:>12,.0f} instructions/request")
    bare = per_request.get("bare")
    unaudited = per_request.get("no-audit")
    gated = per_request.get("gated")
    if bare is not None and gated is not None:
        print(
            f"\n   the gate adds            {gated - bare:>12,.0f}  ({gated / bare - 1:+.0%} of bare)"
        )
    if bare is not None and unaudited is not None:
        print(f"   of which the decision    {unaudited - bare:>12,.0f}")
    if unaudited is not None and gated is not None:
        print(f"   of which the audit trail {gated - unaudited:>12,.0f}  (loop and writer thread)")
    off, on = per_request.get("sidecar-off"), per_request.get("sidecar-on")
    if off is not None and on is not None:
        print(f"\n   the sidecar's gate adds  {on - off:>12,.0f}  (sidecar-on - sidecar-off)")


@contextlib.contextmanager
def model_server(scratch: Path) -> Iterator[str]:
    """The demo model server in a process of its own (not counted), started as bench/sidecar.py
    starts it; its URL."""
    port = free_port()
    args = ["-m", "aidr_gate.demo.model_server", "--port", str(port), "--token-delay", "0"]
    process = start_child(args, port, "/health", scratch / "upstream.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_all([process])


if __name__ == "__main__":
    main()
