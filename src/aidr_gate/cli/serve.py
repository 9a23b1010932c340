"""``aidr-gate serve``: the sidecar, gating every request to an upstream model server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from aidr_gate.limits import hand_back_large_allocations
from aidr_gate.sidecar.app import (
    SidecarApp,
    SidecarSettings,
    UvicornServer,
    build_sidecar,
    uvicorn_config,
)

logger = logging.getLogger("aidr_gate.serve")

EXIT_START_FAILED = 1


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="run the sidecar: the gate in front of an upstream model server",
        description=(
            "Gate every request to an upstream HTTP model server. /healthz and /readyz serve "
            "Kubernetes probes. SIGTERM (or Ctrl-C) stops accepting, drains in-flight streams "
            "within the shutdown timeout, flushes the audit trail and exits 0; a second one stops "
            "at once. SIGHUP (or a change to the files) reloads the policy, registry and "
            "catalogue; SIGHUP also reloads the key file and GeoIP databases. With "
            "telemetry.prometheus in the configuration, metrics are served on a port of their own "
            "(127.0.0.1:9464 by default) or at their path on the main port (on_main_port)."
        ),
    )
    parser.add_argument(
        "--config",
        help=(
            "configuration file (default: $AIDR_GATE_CONFIG, /etc/aidr-gate/config.yaml, "
            "then the embedded example)"
        ),
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
        type=_positive,
        default=None,
        metavar="SECONDS",
        help="seconds to drain streams on SIGTERM (default: proxy.shutdown_timeout, 30)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=_positive,
        default=None,
        metavar="SECONDS",
        help="seconds to connect to the upstream before answering 504 (default: 5)",
    )
    parser.add_argument(
        "--read-timeout",
        type=_positive,
        default=None,
        metavar="SECONDS",
        help="seconds without a byte from the upstream before 504 or a cut stream (default: 120)",
    )
    parser.add_argument(
        "--pool-size",
        type=int,
        default=None,
        metavar="N",
        help="connections kept to the upstream at most (default: 256)",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="also write uvicorn's access log (the audit trail already records every request)",
    )
    parser.set_defaults(run=run)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def run(args: argparse.Namespace) -> int:
    """Run ``serve`` until SIGTERM or SIGINT; a bad configuration raises ``ConfigError`` (exit 2)."""
    if args.pool_size is not None and args.pool_size < 1:
        print("aidr-gate serve: --pool-size must be at least 1", file=sys.stderr)
        return 2

    def adjust(settings: SidecarSettings) -> SidecarSettings:
        proxy = settings.proxy
        if args.connect_timeout is not None:
            proxy = replace(proxy, connect_timeout=args.connect_timeout)
        if args.read_timeout is not None:
            proxy = replace(proxy, read_timeout=args.read_timeout)
        if args.pool_size is not None:
            proxy = replace(proxy, pool_size=args.pool_size)
        drain = settings.shutdown_timeout
        if args.shutdown_timeout is not None:
            drain = args.shutdown_timeout
        return replace(settings, proxy=proxy, shutdown_timeout=drain)

    app = build_sidecar(args.config, args.upstream, adjust=adjust)
    hand_back_large_allocations()  # buffered bodies' memory goes back to the system when freed
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            started = runner.run(
                serve(app, host=args.host, port=args.port, access_log=args.access_log)
            )
    except OSError as exc:
        print(f"aidr-gate serve: cannot start: {exc}", file=sys.stderr)
        return EXIT_START_FAILED
    return 0 if started else EXIT_START_FAILED


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (as uvicorn would pick), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def serve(app: SidecarApp, *, host: str, port: int, access_log: bool = False) -> bool:
    """Serve *app* under uvicorn until SIGTERM/SIGINT; True when it started and stopped cleanly.

    uvicorn's own handlers re-raise the signal after a graceful stop, so the process would end
    killed by SIGTERM (exit 143) after draining properly; these handlers let it exit 0.
    """
    # Load keys and start the audit trail before listening: a bad key file is a clear error here.
    await app.startup()
    server = UvicornServer(
        uvicorn_config(
            app,
            host=host,
            port=port,
            access_log=access_log,
            shutdown_timeout=app.settings.shutdown_timeout,
            limits=app.runtime.limits,
        )
    )
    loop = asyncio.get_running_loop()
    background: set[asyncio.Task[Any]] = set()

    def on_stop(name: str) -> None:
        if server.should_exit:
            logger.warning("%s again: stopping now, without waiting for streams", name)
            server.force_exit = True
            return
        logger.info(
            "%s: draining in-flight requests (at most %gs), then stopping",
            name,
            app.settings.shutdown_timeout,
        )
        server.should_exit = True

    def on_hangup() -> None:
        logger.info("SIGHUP: reloading")
        task = loop.create_task(app.reload())
        background.add(task)
        task.add_done_callback(background.discard)

    handlers = {
        signal.SIGTERM: lambda: on_stop("SIGTERM"),
        signal.SIGINT: lambda: on_stop("SIGINT"),
        signal.SIGHUP: on_hangup,
    }
    installed = []
    for signum, handler in handlers.items():
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, handler)
            installed.append(signum)
    try:
        await server.serve()
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        # Startup may have failed before uvicorn's lifespan ran the shutdown.
        await app.shutdown()
    return server.started
