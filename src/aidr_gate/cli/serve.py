"""``aidr-gate serve``: the sidecar, gating every request to an upstream model server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from typing import Any

import uvicorn

from aidr_gate.config import load_config
from aidr_gate.sidecar import SidecarApp, build_sidecar, parse_sidecar_settings

logger = logging.getLogger("aidr_gate.serve")


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="run the sidecar: the gate in front of an upstream model server",
        description=(
            "Gate every request to an upstream HTTP model server. /healthz and /readyz serve "
            "Kubernetes probes. SIGTERM drains in-flight streams within the shutdown timeout; "
            "SIGHUP (or a change to the files) reloads the policy, registry and catalogue."
        ),
    )
    parser.add_argument(
        "--config",
        help="configuration file (default: $AIDR_GATE_CONFIG, /etc/aidr-gate/config.yaml, then the embedded example)",
    )
    parser.add_argument(
        "--upstream", help="the model server, e.g. http://127.0.0.1:8000 (default: proxy.upstream)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=None,
        help="seconds to drain streams on SIGTERM (default: proxy.shutdown_timeout, 30)",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="also write uvicorn's access log (the audit trail already records every request)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``serve`` until SIGTERM or SIGINT."""
    config = load_config(args.config)
    settings = parse_sidecar_settings(config)
    app = build_sidecar(config, args.upstream, settings)
    timeout = (
        args.shutdown_timeout if args.shutdown_timeout is not None else settings.shutdown_timeout
    )
    asyncio.run(
        serve(
            app,
            host=args.host,
            port=args.port,
            shutdown_timeout=timeout,
            access_log=args.access_log,
        )
    )
    return 0


async def serve(
    app: SidecarApp,
    *,
    host: str,
    port: int,
    shutdown_timeout: float,
    access_log: bool = False,
) -> None:
    """Serve *app* under uvicorn; SIGHUP reloads, SIGTERM drains and stops."""
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            lifespan="on",
            # The gate resolves client IPs behind trusted proxies itself; uvicorn must not rewrite
            # the peer address from X-Forwarded-For first.
            proxy_headers=False,
            server_header=False,
            access_log=access_log,
            timeout_graceful_shutdown=max(1, round(shutdown_timeout)),
            log_level="info",
        )
    )
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[Any]] = set()

    def on_hangup() -> None:
        task = loop.create_task(app.runtime.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        await server.serve()
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGHUP)
