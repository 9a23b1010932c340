"""Reloading every section of a running ``aidr-gate serve``: through SIGHUP and a ConfigMap swap.

Each case changes one section of a configuration mounted as the kubelet mounts a ConfigMap
(``config.yaml -> ..data/config.yaml``, ``..data`` a symlink to a timestamped directory) and checks
that the next request is decided under the change: a removed issuer's token is refused, a removed
proxy's ``X-Forwarded-For`` is ignored, a new GeoIP database answers. Through ``..data``, the
swap is what the gate notices; through SIGHUP, the file is rewritten in place with its size,
mtime and inode kept, so only the signal can make the gate see it. A restart-only change is
reported as waiting for a restart, in the log and ``/readyz``, and not applied.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from aidr_gate.runtime import Runtime
from aidr_gate.settings.audit import AUDIT
from support.gate_env import IP, GateEnv, make_gate_env
from support.jwks_server import ISSUER
from support.mmdb_files import write_country_db
from support.sidecar_support import Process, model_server, sidecar

OLD_ISSUER = "https://old-idp.test/"
# Room for any one change: the SIGHUP case rewrites the file at the very same size.
PADDING = 800


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> GateEnv:
    """Keys, GeoIP databases (and a second country database) and a configuration on disk."""
    gate = make_gate_env(tmp_path_factory.mktemp("gate"))
    # The new database: 8.8.8.0/24 is now Iran's.
    write_country_db(gate.root / "country-2.mmdb", {"8.8.8.0/24": "IR"})
    return gate


@pytest.fixture(scope="module")
def upstream(env: GateEnv) -> Iterator[Process]:
    """The demo model server."""
    with model_server(env.root) as process:
        yield process


def baseline(env: GateEnv) -> str:
    """The gate's configuration with absolute paths, two issuers and a proxy section."""
    text = env.config.read_text()
    for name in ("jwks.json", "country.mmdb", "anonymous.mmdb"):
        text = text.replace(f": {name}", f": {env.root / name}")
    text = text.replace(f"issuer: {ISSUER}", f"issuer: [{ISSUER}, {OLD_ISSUER}]")
    return text + "proxy:\n  pool_size: 16\n"


def padded(text: str) -> str:
    assert len(text) < PADDING * 4
    return text + "# " + "." * (PADDING * 4 - len(text)) + "\n"


class Mount:
    """A ConfigMap volume: versions in timestamped directories, ``..data`` pointing at one."""

    def __init__(self, root: Path, text: str) -> None:
        self.root = root
        self.versions = 0
        root.mkdir()
        self._write(text)
        (root / "..data").symlink_to(self._name())
        (root / "config.yaml").symlink_to("..data/config.yaml")

    @property
    def config(self) -> Path:
        """The stable name the gate is given."""
        return self.root / "config.yaml"

    def _name(self) -> str:
        return f"..2026_12_02_10_00_{self.versions:02d}.{self.versions}"

    def _write(self, text: str) -> None:
        self.versions += 1
        folder = self.root / self._name()
        folder.mkdir()
        (folder / "config.yaml").write_text(padded(text))

    def swap(self, text: str) -> None:
        """What the kubelet does: a new version, ``..data`` replaced atomically, the old deleted."""
        old = os.readlink(self.root / "..data")
        self._write(text)
        (self.root / "..data_tmp").symlink_to(self._name())
        os.replace(self.root / "..data_tmp", self.root / "..data")
        (self.root / old / "config.yaml").unlink()
        (self.root / old).rmdir()

    def edit_unseen(self, text: str) -> None:
        """Rewrite the file in place at the same size, mtime and inode: no stat shows it."""
        path = self.config
        before = os.stat(path)
        path.write_text(padded(text))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = os.stat(path)
        assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
            before.st_size,
            before.st_mtime_ns,
            before.st_ino,
        )


def ask(
    gate: Process,
    env: GateEnv,
    *,
    entity: str = "lab-us",
    model: str = "aurora-mini",
    ip: str = IP["US"],
    issuer: str = ISSUER,
    content: str = "x",
) -> int:
    """One chat completion through the gate, as *entity* from *ip*; the status."""
    return httpx.post(
        f"{gate.url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": content}]},
        headers={
            "authorization": f"Bearer {env.token(entity, iss=issuer)}",
            "x-forwarded-for": ip,
        },
        timeout=10,
    ).status_code


@dataclass(frozen=True)
class Case:
    """One section's change and the request that shows it."""

    section: str
    change: Callable[[str, GateEnv], str]
    request: Callable[[Process, GateEnv], int]
    before: int
    after: int


CASES = [
    Case(  # the operator removes a compromised issuer: its tokens are refused at once
        "identity",
        lambda text, env: text.replace(f"[{ISSUER}, {OLD_ISSUER}]", ISSUER),
        lambda gate, env: ask(gate, env, issuer=OLD_ISSUER),
        200,
        401,
    ),
    Case(  # a proxy no longer trusted: its X-Forwarded-For (an embargoed country) is ignored
        "network",
        lambda text, env: text.replace(
            'trusted_proxies: [127.0.0.0/8, "::1/128"]', "trusted_proxies: []"
        ),
        lambda gate, env: ask(gate, env, ip=IP["IR"]),
        451,
        200,
    ),
    Case(  # a new GeoIP database answers: 8.8.8.8 is now in Iran
        "geoip",
        lambda text, env: text.replace(
            f"country_database: {env.root / 'country.mmdb'}",
            f"country_database: {env.root / 'country-2.mmdb'}",
        ),
        lambda gate, env: ask(gate, env, ip="8.8.8.8"),
        200,
        451,
    ),
    Case(  # a smaller body limit
        "middleware",
        lambda text, env: text + "middleware:\n  max_body_bytes: 1024\n",
        lambda gate, env: ask(gate, env, content="y" * 3000),
        200,
        413,
    ),
    Case(  # enforce to dry-run: the deny is recorded, not enforced
        "mode",
        lambda text, env: text.replace("mode: enforce", "mode: dry-run"),
        lambda gate, env: ask(gate, env, entity="andes-br", model="aurora-frontier", ip=IP["BR"]),
        403,
        200,
    ),
    Case(  # the enforced pack
        "policy",
        lambda text, env: text.replace("pack: aidr-2025-01", "pack: us-embargo-baseline"),
        lambda gate, env: ask(gate, env, entity="andes-br", model="aurora-frontier", ip=IP["BR"]),
        403,
        200,
    ),
]


def until(check: Callable[[], bool], timeout: float, what: Callable[[], Any]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what()
        time.sleep(0.1)


@pytest.mark.parametrize("trigger", ["configmap", "sighup"])
@pytest.mark.parametrize("case", CASES, ids=[c.section for c in CASES])
def test_a_change_is_in_force_on_the_next_request(
    env: GateEnv, upstream: Process, tmp_path: Path, case: Case, trigger: str
) -> None:
    text = baseline(env)
    mount = Mount(tmp_path / "aidr-gate-config", text)
    changed = case.change(text, env)
    assert changed != text
    with sidecar(env.root, mount.config, upstream.url) as gate:
        assert case.request(gate, env) == case.before
        if trigger == "configmap":
            mount.swap(changed)  # the gate's watch sees the new ..data
        else:
            mount.edit_unseen(changed)
            time.sleep(2.5)  # past the watch interval (2 s): nothing changes on its own
            assert case.request(gate, env) == case.before
            gate.signal(signal.SIGHUP)
        until(lambda: "reloaded: pack" in gate.output(), 15, gate.output)
        assert case.request(gate, env) == case.after, gate.output()
        if case.section not in ("mode", "policy"):
            assert f"sections changed: {case.section}" in gate.output()
        assert "needs a restart" not in gate.output()


@pytest.mark.parametrize("trigger", ["configmap", "sighup"])
def test_a_restart_only_change_is_reported_not_applied(
    env: GateEnv, upstream: Process, tmp_path: Path, trigger: str
) -> None:
    text = baseline(env)
    mount = Mount(tmp_path / "aidr-gate-config", text)
    # Two changes in one reload: the network one applies, the pool size waits for a restart.
    changed = text.replace("pool_size: 16", "pool_size: 32").replace(
        'trusted_proxies: [127.0.0.0/8, "::1/128"]', "trusted_proxies: []"
    )
    with sidecar(env.root, mount.config, upstream.url) as gate:
        assert ask(gate, env, ip=IP["IR"]) == 451
        ready = httpx.get(f"{gate.url}/readyz").json()
        assert "restart_pending" not in ready
        if trigger == "configmap":
            mount.swap(changed)
        else:
            mount.edit_unseen(changed)
            gate.signal(signal.SIGHUP)
        until(lambda: "needs a restart" in gate.output(), 15, gate.output)
        assert ask(gate, env, ip=IP["IR"]) == 200  # the network change is in force
        log = gate.output()
        warning = next(line for line in log.splitlines() if "needs a restart" in line)
        assert "WARNING" in warning and "proxy.pool_size" in warning
        reloaded = next(line for line in log.splitlines() if "reloaded: pack" in line)
        assert "sections changed: network" in reloaded and "proxy" not in reloaded
        ready = httpx.get(f"{gate.url}/readyz").json()
        assert ready["restart_pending"] == ["proxy.pool_size"]
        assert "pool 16" in log  # the start line: the pool it runs with


def test_runtime_counts_restart_pending_and_keeps_it_through_a_failed_reload(
    env: GateEnv, tmp_path: Path
) -> None:
    """In-process: the gauge, the report, and the audit trail left as it started."""
    config = tmp_path / "config.yaml"
    text = baseline(env)
    config.write_text(text)

    async def run() -> None:
        runtime = Runtime.from_config(config)
        await runtime.start()
        try:
            audit_dir = runtime.audit.config.directory if runtime.audit is not None else None
            config.write_text(
                text.replace(f"directory: {env.audit_dir}", f"directory: {tmp_path / 'elsewhere'}")
            )
            report = await runtime.reload()
            assert report.ok and report.restart_pending == ("audit.directory",)
            assert runtime.restart_pending == ("audit.directory",)
            assert runtime.telemetry.points("aidr_gate.reload.restart_pending") == [((), 1.0)]
            assert runtime.config is not None
            assert runtime.config.get(AUDIT).directory == audit_dir  # what runs, not the file
            config.write_text(text.replace("mode: enforce", "mode: sometimes"))
            refused = await runtime.reload()
            assert not refused.ok and "keeping the last good state" in refused.detail
            assert "mode: 'sometimes' is not one of" in refused.detail
            assert runtime.restart_pending == ("audit.directory",)
            config.write_text(text)  # back as it started: nothing waits any more
            again = await runtime.reload()
            assert again.ok and again.restart_pending == ()
            assert runtime.telemetry.points("aidr_gate.reload.restart_pending") == [((), 0.0)]
        finally:
            await runtime.close()

    asyncio.run(run())
