"""``aidr-gate check``, ``validate`` and ``packs`` on the embedded defaults, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aidr_gate.cli import EXIT_DENY, EXIT_LOG, EXIT_OK, EXIT_USAGE, main


def run_check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object]]:
    """Run ``check`` in-process and parse its JSON."""
    code = main(["check", "--compact", *args])
    out = capsys.readouterr().out
    return code, json.loads(out)


@pytest.mark.parametrize(
    ("args", "code", "effect", "reason"),
    [
        (
            ["--entity", "lab-us", "--country", "US", "--model", "aurora-frontier"],
            EXIT_OK,
            "allow",
            "ALLOWED",
        ),
        (
            ["--entity", "nordlys-se", "--country", "SE", "--model", "aurora-frontier"],
            EXIT_DENY,
            "deny",
            "TIER3_CONTROLLED_MODEL",
        ),
        (
            ["--entity", "sakura-jp", "--country", "SG", "--model", "llama-3.1-405b"],
            EXIT_LOG,
            "log",
            "ORIGIN_TIER_WORSE_THAN_HEADQUARTERS",
        ),
        (
            [
                "--entity",
                "merlion-sg",
                "--country",
                "SG",
                "--model",
                "aurora-frontier",
                "--at",
                "2026-06-01",
            ],
            EXIT_OK,
            "allow",
            "ALLOWED",
        ),
        (
            [
                "--entity",
                "lumen-in",
                "--country",
                "IN",
                "--model",
                "aurora-frontier",
                "--at",
                "2026-06-01",
            ],
            EXIT_DENY,
            "deny",
            "NO_VALID_AGREEMENT",
        ),
        (
            [
                "--entity",
                "lab-us",
                "--country",
                "US",
                "--model",
                "aurora-frontier",
                "--anonymizer",
                "vpn",
            ],
            EXIT_DENY,
            "deny",
            "ANONYMIZED_ORIGIN",
        ),
        (
            [
                "--entity",
                "mekong-kh",
                "--country",
                "KH",
                "--model",
                "aurora-frontier",
                "--at",
                "2026-01-01",
            ],
            EXIT_DENY,
            "deny",
            "TIER3_CONTROLLED_MODEL",
        ),
        (
            [
                "--entity",
                "mekong-kh",
                "--country",
                "KH",
                "--model",
                "aurora-frontier",
                "--at",
                "2026-03-01",
            ],
            EXIT_DENY,
            "deny",
            "NO_VALID_AGREEMENT",
        ),
        (
            [
                "--entity",
                "nordlys-se",
                "--country",
                "se",
                "--model",
                "aurora-frontier",
                "--pack",
                "aidr-2025-05-rescinded",
            ],
            EXIT_DENY,
            "deny",
            "D5_HEADQUARTERED_CONTROLLED_MODEL",
        ),
        (
            [
                "--entity",
                "andes-br",
                "--country",
                "BR",
                "--model",
                "aurora-frontier",
                "--pack",
                "aidr-2025-05-rescinded",
            ],
            EXIT_OK,
            "allow",
            "ALLOWED",
        ),
    ],
)
def test_check_decides(
    capsys: pytest.CaptureFixture[str], args: list[str], code: int, effect: str, reason: str
) -> None:
    got_code, decision = run_check(capsys, *args)
    assert got_code == code
    assert decision["effect"] == effect
    assert isinstance(decision["reasons"], list) and decision["reasons"][0] == reason


def test_check_output_has_policy_and_evidence(capsys: pytest.CaptureFixture[str]) -> None:
    _, decision = run_check(
        capsys, "--entity", "nordlys-se", "--country", "SE", "--model", "aurora-frontier"
    )
    assert set(decision) >= {
        "effect",
        "status",
        "reasons",
        "rule",
        "policy",
        "evidence",
        "decision_id",
    }
    policy = decision["policy"]
    assert isinstance(policy, dict)
    assert policy["id"] == "aidr-2025-01" and str(policy["digest"]).startswith("sha256:")
    evidence = decision["evidence"]
    assert isinstance(evidence, dict)
    assert set(evidence) >= {"identity", "origin", "entity", "model", "jurisdiction", "agreement"}


@pytest.mark.parametrize(
    "args",
    [
        ["--country", "Sweden"],
        ["--at", "yesterday"],
        ["--claimed-headquarters", "XX", "--entity", "e"],
        ["--pack", "no-such-pack"],
        ["--config", "/nonexistent/config.yaml"],
    ],
)
def test_check_usage_errors(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    assert main(["check", *args]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "configuration problems" in err and "Traceback" not in err


def test_config_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, examples_dir: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"policy: aidr-2025-05-rescinded\nregistry: {examples_dir / 'entities.yaml'}\n"
        f"catalog: {examples_dir / 'models.yaml'}\n"
    )
    monkeypatch.setenv("AIDR_GATE_CONFIG", str(config))
    assert (
        main(["check", "--entity", "andes-br", "--country", "BR", "--model", "aurora-frontier"])
        == EXIT_OK
    )


def test_console_script_runs() -> None:
    script = Path(sys.executable).with_name("aidr-gate")
    result = subprocess.run(
        [str(script), "check", "--entity", "pars-ir", "--country", "DE", "--model", "embed-small"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "AIDR_GATE_CONFIG": ""},
    )
    assert result.returncode == EXIT_DENY
    assert json.loads(result.stdout)["reasons"] == ["EMBARGOED_JURISDICTION"]


def test_packs_lists_bundled(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["packs"]) == 0
    out = capsys.readouterr().out
    for pack in (
        "us-embargo-baseline",
        "aidr-2025-01",
        "aidr-2025-05-rescinded",
        "strict-hypothetical",
    ):
        assert pack in out


def test_check_resolves_token_and_forwarded_ip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from support.gate_env import IP, make_gate_env

    env = make_gate_env(tmp_path)
    token = env.token("nordlys-se")
    code, decision = run_check(
        capsys,
        "--config",
        str(env.config),
        "--token",
        token,
        "--peer",
        "127.0.0.1",
        "--header",
        f"X-Forwarded-For: 6.6.6.6, {IP['SE']}",
        "--model",
        "aurora-frontier",
    )
    assert code == EXIT_DENY
    assert decision["reasons"] == ["TIER3_CONTROLLED_MODEL"]
    evidence = decision["evidence"]
    assert isinstance(evidence, dict)
    assert evidence["identity"]["entity_id"] == "nordlys-se"
    assert evidence["identity"]["key_id"] == "gate-test"
    assert evidence["identity"]["method"] == "jwt"
    assert token not in json.dumps(decision)
    origin = evidence["origin"]
    assert origin["ip"] == IP["SE"]
    assert origin["resolved_by"] == "x-forwarded-for[-1]"
    assert origin["country"] == "SE"
    assert origin["country_source"] == "geoip"
    assert origin["database"] == "GeoIP2-Country"


def test_check_with_a_bad_token_is_a_401(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from support.gate_env import IP, make_gate_env

    env = make_gate_env(tmp_path)
    expired = env.token("lab-us", exp=1_000_000)
    code, decision = run_check(
        capsys, "--config", str(env.config), "--token", expired, "--ip", IP["US"], "--model", "x"
    )
    assert code == EXIT_DENY
    assert (decision["status"], decision["reasons"]) == (401, ["TOKEN_EXPIRED"])


def test_check_reads_the_token_from_stdin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    from support.gate_env import IP, make_gate_env

    env = make_gate_env(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO(env.token("lab-us") + "\n"))
    code, decision = run_check(
        capsys,
        "--config",
        str(env.config),
        "--token",
        "-",
        "--ip",
        IP["US"],
        "--model",
        "aurora-frontier",
    )
    assert code == EXIT_OK
    assert decision["evidence"]["origin"]["country"] == "US"  # type: ignore[index]


def test_check_refuses_country_and_ip_together(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--country", "US", "--ip", "8.8.8.8"]) == EXIT_USAGE
    assert "--country" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        # "What if this address were behind a VPN?" must not quietly answer for the bare address.
        (["--ip", "8.8.8.8", "--anonymizer", "vpn"], "--anonymizer"),
        (["--peer", "127.0.0.1", "--anonymizer", "tor"], "--anonymizer"),
        (["--header", "X-Forwarded-For: 8.8.8.8", "--anonymizer", "vpn"], "--anonymizer"),
        # Claimed countries belong to an entity: without one they would be ignored.
        (["--claimed-headquarters", "US", "--country", "US"], "--claimed-headquarters"),
        (["--claimed-parent", "CN", "--country", "US"], "--claimed-parent"),
    ],
)
def test_check_refuses_flags_it_would_ignore(
    capsys: pytest.CaptureFixture[str], args: list[str], flag: str
) -> None:
    assert main(["check", "--model", "aurora-frontier", *args]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "configuration problems" in err and flag in err


def test_check_anonymizer_with_a_declared_country_still_counts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, decision = run_check(
        capsys,
        "--entity",
        "lab-us",
        "--country",
        "US",
        "--anonymizer",
        "vpn",
        "--model",
        "aurora-frontier",
    )
    assert code == EXIT_DENY
    assert decision["reasons"] == ["ANONYMIZED_ORIGIN"]


def test_exit_codes_live_in_one_module() -> None:
    from aidr_gate import cli
    from aidr_gate.cli import exit as exit_codes

    assert (cli.EXIT_OK, cli.EXIT_DENY, cli.EXIT_USAGE, cli.EXIT_LOG) == (
        exit_codes.EXIT_OK,
        exit_codes.EXIT_DENY,
        exit_codes.EXIT_USAGE,
        exit_codes.EXIT_LOG,
    )


def test_a_closed_stdout_pipe_ends_quietly() -> None:
    """``aidr-gate packs | head -1``: the reader leaves early; no traceback, no noise."""
    env = {k: v for k, v in os.environ.items() if k != "AIDR_GATE_CONFIG"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "aidr_gate", "packs"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    proc.stderr.close()
    code = proc.wait(timeout=60)
    assert "BrokenPipeError" not in err and "Traceback" not in err, err
    assert err == ""
    assert code == 141  # 128 + SIGPIPE, what a shell reports for a reader that left
