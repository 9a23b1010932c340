"""The ``proxy:`` section: the sidecar's upstream, its connection pool, timeouts and drain time.

Every key is optional, and ``serve`` flags override them::

    proxy:
      upstream: http://127.0.0.1:8000   # the model server (or --upstream)
      connect_timeout: 5                # seconds to open a connection to it: then 504
      read_timeout: 120                 # seconds without a byte from it: 504, or a cut stream
      pool_size: 256                    # connections kept to it at most
      keepalive_timeout: 30             # seconds an idle pooled connection is kept
      forward_client_ip: true           # append X-Forwarded-For / Forwarded
      shutdown_timeout: 30              # seconds SIGTERM waits for in-flight streams
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yarl import URL

from aidr_gate.document import Checker, join
from aidr_gate.settings.middleware import DEFAULT_DECISION_HEADER, DEFAULT_STATE_KEY
from aidr_gate.settings.schema import EVERY_KEY, KeyDoc, Section

MAX_POOL_SIZE = 65_536
MAX_SECONDS = 86_400.0


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """Upstream connection pooling and timeouts, and the headers the upstream is told."""

    connect_timeout: float = 5.0
    # Seconds without a byte from the upstream (before the headers or between chunks): 504 before
    # the response started, a cut stream after.
    read_timeout: float = 120.0
    pool_size: int = 256
    pool_size_per_host: int = 0  # 0: no per-host limit (there is one upstream)
    keepalive_timeout: float = 30.0
    forward_client_ip: bool = True
    decision_header: str = DEFAULT_DECISION_HEADER
    entity_header: str = "x-aidr-entity"
    effect_header: str = "x-aidr-effect"
    # Where the middleware leaves the decision (``middleware.state_key``).
    state_key: str = DEFAULT_STATE_KEY


@dataclass(frozen=True, slots=True)
class SidecarSettings:
    """The ``proxy:`` section (and ``serve`` flags): upstream, pooling, timeouts, shutdown."""

    upstream: str | None = None
    proxy: ProxySettings = field(default_factory=ProxySettings)
    shutdown_timeout: float = 30.0


KEYS = (
    KeyDoc("upstream", "the model server, http(s) (or --upstream)"),
    KeyDoc("connect_timeout", "seconds to connect to it before answering 504"),
    KeyDoc("read_timeout", "seconds without a byte from it: 504, or a cut stream"),
    KeyDoc("pool_size", "connections kept to it at most"),
    KeyDoc("keepalive_timeout", "seconds an idle pooled connection is kept"),
    KeyDoc("forward_client_ip", "append X-Forwarded-For and Forwarded"),
    KeyDoc("shutdown_timeout", "seconds SIGTERM waits for in-flight streams"),
)


def upstream_problem(upstream: str) -> str | None:
    """What is wrong with an upstream URL, or ``None``: http(s), a host, no query or fragment."""
    try:
        base = URL(upstream)
    except (TypeError, ValueError) as exc:
        return f"upstream {upstream!r} is not a URL: {exc}"
    if base.scheme not in ("http", "https") or not base.host:
        return f"upstream must be an http(s) URL, not {upstream!r}"
    if base.query_string or base.fragment:
        return f"upstream {upstream!r} must not have a query or fragment"
    try:
        base.port  # noqa: B018 - a port out of range raises here
    except ValueError as exc:
        return f"upstream {upstream!r} has a bad port: {exc}"
    return None


def read_proxy(check: Checker, raw: Any, base_dir: Path) -> SidecarSettings | None:
    """Read the ``proxy:`` section (absent: the defaults); problems go to *check*."""
    defaults = SidecarSettings()
    if raw is None:
        return defaults
    data = check.mapping(raw, "proxy", keys=[k.name for k in KEYS])
    if data is None:
        return None
    pool = defaults.proxy

    def seconds(key: str, default: float) -> float:
        if data.get(key) is None:
            return default
        value = check.number(data[key], join("proxy", key), minimum=0.001)
        if value is not None and value > MAX_SECONDS:
            check.error(join("proxy", key), f"must be at most {MAX_SECONDS:g} seconds")
            return default
        return default if value is None else value

    upstream = None
    if data.get("upstream") is not None:
        upstream = check.string(data["upstream"], "proxy.upstream")
        problem = upstream_problem(upstream) if upstream is not None else None
        if problem is not None:
            check.error("proxy.upstream", problem)
    size = pool.pool_size
    if data.get("pool_size") is not None:
        got = check.integer(data["pool_size"], "proxy.pool_size", minimum=1)
        if got is not None and got > MAX_POOL_SIZE:
            check.error("proxy.pool_size", f"must be at most {MAX_POOL_SIZE}")
        elif got is not None:
            size = got
    forward = pool.forward_client_ip
    if data.get("forward_client_ip") is not None:
        read = check.boolean(data["forward_client_ip"], "proxy.forward_client_ip")
        forward = forward if read is None else read
    return SidecarSettings(
        upstream=upstream,
        proxy=ProxySettings(
            connect_timeout=seconds("connect_timeout", pool.connect_timeout),
            read_timeout=seconds("read_timeout", pool.read_timeout),
            pool_size=size,
            keepalive_timeout=seconds("keepalive_timeout", pool.keepalive_timeout),
            forward_client_ip=forward,
        ),
        shutdown_timeout=seconds("shutdown_timeout", defaults.shutdown_timeout),
    )


# The pool is opened at start and SIGTERM's drain time is set then: a restart applies them.
PROXY: Section[SidecarSettings] = Section("proxy", read_proxy, KEYS, restart=(EVERY_KEY,))
