"""Where the middleware's time goes, in-process: the demo model app bare and gated, and gated with
one stage of the request's path replaced by its answer (measured from a first request).

No server and no sockets: each request is driven through ASGI on uvloop, as uvicorn would (the
bench's configuration: an Ed25519 token, the embedded GeoIP data, ``X-Forwarded-For`` from a
loopback peer), the audit trail cut out as bench/middleware.py's ``no-audit`` variant cuts it.
Rounds of 400 requests alternate bare and gated; this process's CPU per request; printed: the
median of the per-round differences for the gate whole, then for each stage what replacing it
saves (the stage's own cost, and the code it brings into the caches). A variant's rounds run in a
process of their own, so a replaced stage cannot leak into the next.

Run: .venv/bin/python bench/middleware_stages.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from metrics import call, headers_for
from middleware import setup
from serving import describe_machine

CHUNK = 400
STAGES = {
    "whole": "the gate, whole",
    "decide": "the decision (headers, origin, caller, body, Gate.decide)",
    "body": "the body read, its JSON model and its replay",
    "policy": "Gate.decide",
    "origin": "the client IP and GeoIP",
    "caller": "the token (a cache hit)",
}


def _replace(stage: str, runtime: Any, decision: Any) -> None:
    """Replace *stage* with the answer it gave the first request (bench only)."""
    import aidr_gate.asgi.deciding as deciding
    import aidr_gate.asgi.http as http

    evidence = decision.evidence
    if stage == "decide":

        async def decided(*_: Any) -> tuple[Any, None]:
            return decision, None

        setattr(http, "decide_request", decided)  # noqa: B010 - the bench's stand-in
    elif stage == "body":

        async def named(asked: Any, *_: Any) -> None:
            asked.named.append(evidence.model_requested)
            asked.model_id = evidence.model_requested

        setattr(deciding, "_model_named_in_the_body", named)  # noqa: B010
    elif stage == "policy":
        runtime.gate.decide = lambda **_: decision
    elif stage == "origin":
        type(runtime.serving.origin).resolve = lambda *_: evidence.origin
    elif stage == "caller":

        async def known(*_: Any) -> Any:
            return evidence.identity

        type(runtime.serving.identity).authenticate = known
        type(runtime.serving.identity).known = lambda *_, **__: evidence.identity


async def _measure(stage: str, rounds: int) -> list[float]:
    from aidr_gate.asgi.middleware import AIDRGateMiddleware
    from aidr_gate.demo.model_server import build_model_app
    from aidr_gate.runtime import Runtime

    with tempfile.TemporaryDirectory(prefix="aidr-stages-") as scratch:
        config, token = setup(Path(scratch))
        runtime = Runtime.from_config(str(config))
        runtime.audit = None  # as bench/middleware.py's no-audit variant
        await runtime.start()
        bare = build_model_app(token_delay=0)
        gated = AIDRGateMiddleware(build_model_app(token_delay=0), runtime=runtime)
        headers = headers_for(token)
        statuses = [await call(gated, headers) for _ in range(1000)]  # warm: token, caches
        if set(statuses) != {200}:
            raise SystemExit(f"the gated demo app answered {sorted(set(statuses))}")
        scopes: list[Any] = []

        async def watched(scope: Any, receive: Any, send: Any) -> None:
            await gated(scope, receive, send)
            scopes.append(scope)

        await call(watched, headers)  # the decision the stages are replaced with
        _replace(stage, runtime, scopes[0]["state"][runtime.serving.settings.state_key])
        differences = []
        for _ in range(rounds):
            started = time.process_time()
            for _ in range(CHUNK):
                await call(bare, headers)
            base = time.process_time() - started
            started = time.process_time()
            for _ in range(CHUNK):
                await call(gated, headers)
            differences.append((time.process_time() - started - base) / CHUNK * 1e6)
        await runtime.close()
        return differences


def main() -> None:
    """Run each variant in a process of its own and print the medians."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage is not None:
        got = uvloop.run(_measure(args.stage, args.rounds))
        print(" ".join(f"{x:.3f}" for x in got))
        return
    print(f"aidr_gate middleware stages, in-process: {describe_machine()}")
    print(f"{args.rounds} rounds of {CHUNK} bare and {CHUNK} gated requests a variant\n")
    whole: float | None = None
    for stage, label in STAGES.items():
        out = subprocess.run(
            [sys.executable, __file__, "--rounds", str(args.rounds), "--stage", stage],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        added = statistics.median(float(x) for x in out.split())
        if whole is None:
            whole = added
            print(f"   {label:66} +{added:5.1f} µs")
        else:
            print(f"   without {label:58} +{added:5.1f} µs  (saves {whole - added:5.1f})")


if __name__ == "__main__":
    main()
