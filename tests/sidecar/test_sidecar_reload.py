"""Reloading a running ``aidr-gate serve``: a Kubernetes-style ConfigMap swap, and SIGHUP.

The kubelet mounts a ConfigMap as ``config.yaml -> ..data/config.yaml`` with ``..data`` a symlink to
a timestamped directory, and updates it by writing a new directory and swapping ``..data``. The gate
must notice that without a restart, and SIGHUP must reload at once, even a change no stat shows.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.environment import EXAMPLES
from support.gate_env import IP, GateEnv, make_gate_env
from support.sidecar_support import Process, model_server, sidecar

AGREEMENT = """\
    agreements:
      - id: SA-TEST-001
        type: security-agreement
        status: active
        valid_from: 2025-01-01
        valid_until: 2035-01-01
        model_tiers: [controlled]
        countries: [BR]
"""


def registry(with_agreement: bool, country: str = "BR") -> str:
    """The example registry, with or without an agreement for andes-br."""
    text = (EXAMPLES / "entities.yaml").read_text()
    anchor = "    headquarters: BR\n"
    assert anchor in text
    if with_agreement:
        text = text.replace(anchor, anchor + AGREEMENT.replace("[BR]", f"[{country}]"), 1)
    return text


def write_version(mount: Path, name: str, env: GateEnv, entities: str) -> None:
    """One ConfigMap version: a timestamped directory holding every key."""
    version = mount / name
    version.mkdir()
    config = env.config.read_text()
    config = config.replace(f"registry: {EXAMPLES / 'entities.yaml'}", "registry: entities.yaml")
    config = config.replace(f"catalog: {EXAMPLES / 'models.yaml'}", "catalog: models.yaml")
    for absolute in ("jwks.json", "country.mmdb", "anonymous.mmdb"):
        config = config.replace(f": {absolute}", f": {env.root / absolute}")
    (version / "config.yaml").write_text(config)
    (version / "entities.yaml").write_text(entities)
    (version / "models.yaml").write_text((EXAMPLES / "models.yaml").read_text())


def mount_configmap(root: Path, env: GateEnv, entities: str) -> Path:
    """A ConfigMap mount as the kubelet lays it out; its config.yaml."""
    mount = root / "aidr-gate-config"
    mount.mkdir()
    write_version(mount, "..2026_11_26_10_00_00.1", env, entities)
    (mount / "..data").symlink_to("..2026_11_26_10_00_00.1")
    for key in ("config.yaml", "entities.yaml", "models.yaml"):
        (mount / key).symlink_to(f"..data/{key}")
    return mount / "config.yaml"


def swap(mount: Path, name: str) -> None:
    """What the kubelet does: point ``..data`` at the new version atomically, drop the old one."""
    old = os.readlink(mount / "..data")
    (mount / "..data_tmp").symlink_to(name)
    os.replace(mount / "..data_tmp", mount / "..data")
    for item in (mount / old).iterdir():
        item.unlink()
    (mount / old).rmdir()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> GateEnv:
    """Keys, GeoIP databases and a configuration on disk."""
    return make_gate_env(tmp_path_factory.mktemp("gate"))


@pytest.fixture(scope="module")
def upstream(env: GateEnv) -> Iterator[Process]:
    """The demo model server, with fault injection."""
    with model_server(env.root) as process:
        yield process


def status(gate: Process, env: GateEnv) -> int:
    """What andes-br (Tier 2, Brazil) gets for a controlled model."""
    return httpx.post(
        f"{gate.url}/v1/chat/completions",
        json={"model": "aurora-frontier", "messages": [{"role": "user", "content": "x"}]},
        headers={"authorization": f"Bearer {env.token('andes-br')}", "x-forwarded-for": IP["BR"]},
        timeout=10,
    ).status_code


def wait_for(gate: Process, env: GateEnv, wanted: int, timeout: float) -> float:
    """Seconds until andes-br's answer becomes *wanted*."""
    started = time.monotonic()
    while (got := status(gate, env)) != wanted:
        assert time.monotonic() - started < timeout, f"still {got}"
        time.sleep(0.1)
    return time.monotonic() - started


def test_configmap_swap_and_sighup(env: GateEnv, upstream: Process, tmp_path: Path) -> None:
    config = mount_configmap(tmp_path, env, registry(with_agreement=False))
    mount = config.parent
    with sidecar(env.root, config, upstream.url) as gate:
        assert status(gate, env) == 403  # no agreement
        # The ConfigMap gains an agreement for andes-br: the watch sees the swap.
        write_version(mount, "..2026_11_26_10_05_00.2", env, registry(with_agreement=True))
        swap(mount, "..2026_11_26_10_05_00.2")
        wait_for(gate, env, 200, timeout=10)
        # An edit no stat can see (same size, same mtime, same inode): only SIGHUP finds it.
        entities = mount / "entities.yaml"
        before = os.stat(entities)
        entities.write_text(registry(with_agreement=True, country="AR"))
        os.utime(entities, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = os.stat(entities)
        assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
            before.st_size,
            before.st_mtime_ns,
            before.st_ino,
        )
        time.sleep(2.2)  # longer than the watch interval (2 s): nothing changes on its own
        assert status(gate, env) == 200
        gate.signal(signal.SIGHUP)
        assert wait_for(gate, env, 403, timeout=5) < 5
        log = gate.output()
        assert "SIGHUP: reloading" in log
        assert log.count("reloaded: pack aidr-2025-01") >= 2


def test_a_bad_change_keeps_the_last_good_state(
    env: GateEnv, upstream: Process, tmp_path: Path
) -> None:
    config = mount_configmap(tmp_path, env, registry(with_agreement=True))
    mount = config.parent
    with sidecar(env.root, config, upstream.url) as gate:
        assert status(gate, env) == 200
        write_version(mount, "..v2", env, registry(with_agreement=True) + "  broken: [\n")
        swap(mount, "..v2")
        gate.signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while "reload refused" not in gate.output():
            assert time.monotonic() < deadline, gate.output()
            time.sleep(0.05)
        assert status(gate, env) == 200  # still the last good registry
        assert httpx.get(f"{gate.url}/readyz").status_code == 200
