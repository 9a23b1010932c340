"""``aidr-gate demo`` runs to completion as a real process, offline, and shows what it says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aidr_gate.audit import verify_files
from aidr_gate.demo.tour import ROWS, write_setup
from aidr_gate.settings.audit import audit_config
from aidr_gate.settings.loader import load_config
from support.sidecar_support import run_cli

# What each row's decision column must say: the demo's whole point.
EXPECTED = [
    ("lab-us", "allow", "ALLOWED; streamed 11 chunks"),
    ("petronas-my", "allow", "ALLOWED (agreement SA-2025-052)"),
    ("andes-br", "deny 403", "NO_VALID_AGREEMENT"),
    ("andes-br", "allow", "ALLOWED"),
    ("nordlys-se", "deny 451", "TIER3_CONTROLLED_MODEL"),
    ("lab-us", "deny 451", "ANONYMIZED_ORIGIN"),
    ("sakura-jp", "log", "ORIGIN_TIER_WORSE_THAN_HEADQUARTERS"),
    ("pars-ir", "deny 451", "EMBARGOED_JURISDICTION"),
    ("lab-us", "deny 401", "TOKEN_SIGNATURE_INVALID"),
]


def check_output(stdout: str, audit_dir: Path) -> None:
    """The table rows, the chain line, and the records behind them."""
    lines = stdout.splitlines()
    rows = [line for line in lines if line[:2].strip().isdigit()]
    assert len(rows) == len(ROWS) == len(EXPECTED)
    records = {}
    for path in sorted(audit_dir.glob("*.jsonl*")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            records[record["event"]["id"]] = record
    for row, (caller, decision, reasons) in zip(rows, EXPECTED, strict=True):
        assert f" {caller} " in row
        assert f"  {decision}  " in row, row
        assert reasons in row, row
        decision_id = row.split()[-2]
        # A forged token names nobody: the record has no verified entity.
        verified = None if "TOKEN_" in reasons else caller
        assert records[decision_id].get("organization", {}).get("id") == verified
    assert "the hash chain verifies (seq 0..8)" in stdout
    assert "203.0.113.7 US vpn (static override)" in stdout
    assert "stopped: sidecar drained" in stdout
    assert verify_files(sorted(audit_dir.glob("*.jsonl*"))).ok


def test_demo_runs_to_completion(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_cli("demo", "--keep", str(tmp_path), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - started < 20
    assert "Traceback" not in result.stderr
    check_output(result.stdout, tmp_path / "audit")
    # Nothing is left listening or running: the process exited on its own, and the key it made
    # stays private to the run (only the public JWKS is on disk).
    assert json.loads((tmp_path / "jwks.json").read_text())["keys"][0]["kty"] == "OKP"
    assert "PRIVATE" not in "".join(p.read_text() for p in tmp_path.glob("*") if p.is_file())


# Run the demo with an audit hook that refuses any connection or name lookup leaving the machine:
# the demo must get through on loopback alone. Portable (no namespaces or privileges needed).
_OFFLINE = """
import ipaddress, sys

def _local(host):
    if host in ("localhost", "", None):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False

def hook(event, args):
    if event in ("socket.connect", "socket.sendto") and isinstance(args[1], tuple):
        if not _local(args[1][0]):
            raise ConnectionRefusedError(f"demo tried to reach {args[1][0]!r}")
    elif event == "socket.getaddrinfo" and not _local(args[0]):
        raise ConnectionRefusedError(f"demo tried to resolve {args[0]!r}")

sys.addaudithook(hook)
from aidr_gate.cli import main
raise SystemExit(main(["demo", "--keep", sys.argv[1]]))
"""


def test_demo_needs_no_network(tmp_path: Path) -> None:
    """Every connection and name lookup the demo makes stays on loopback."""
    result = subprocess.run(
        [sys.executable, "-c", _OFFLINE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo tried to" not in result.stdout + result.stderr
    check_output(result.stdout, tmp_path / "audit")


def test_the_offline_hook_catches_a_connection(tmp_path: Path) -> None:
    """The hook in the test above is not vacuous: an outside address is refused."""
    probe = _OFFLINE.split("sys.addaudithook(hook)")[0] + (
        "sys.addaudithook(hook)\nimport socket\nsocket.socket().connect(('192.0.2.1', 80))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode != 0
    assert "demo tried to reach '192.0.2.1'" in result.stderr


def test_demo_keeps_its_files_under_a_relative_directory(tmp_path: Path) -> None:
    """``--keep run`` from some working directory: the audit records land in ``run/audit``."""
    env = {k: v for k, v in os.environ.items() if k != "AIDR_GATE_CONFIG"}
    result = subprocess.run(
        [sys.executable, "-m", "aidr_gate", "demo", "--keep", "run"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    check_output(result.stdout, tmp_path / "run" / "audit")


def test_setup_under_a_relative_root_loads_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    config_path, _ = write_setup(Path("run"))
    monkeypatch.chdir("/")
    audit = audit_config(load_config(str(tmp_path / config_path)))
    assert audit.directory == tmp_path / "run" / "audit"
