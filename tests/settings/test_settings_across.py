"""Checks across two sections: ``aidr-gate validate`` warns when the process-wide body budget
(``limits.max_buffered_bytes``) is smaller than a body the middleware accepts, naming the line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aidr_gate.settings.loader import load_config
from support.gate_env import GateEnv, make_gate_env


def _validate(config: Path) -> tuple[int, dict[str, object], str]:
    done = subprocess.run(
        [sys.executable, "-m", "aidr_gate", "validate", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    text = subprocess.run(
        [sys.executable, "-m", "aidr_gate", "validate", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = json.loads(done.stdout)
    # The pack's own warnings (its legal window) are not this file's business.
    report["warnings"] = [w for w in report["warnings"] if w["path"] != "effective"]
    return done.returncode, report, text.stdout + text.stderr


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> GateEnv:
    return make_gate_env(tmp_path_factory.mktemp("across"))


def _with(env: GateEnv, name: str, extra: str) -> Path:
    """The baseline plus *extra*, beside it (its key and GeoIP paths are relative to it)."""
    config = env.config.with_name(f"{name}.yaml")
    config.write_text(env.config.read_text() + extra)
    return config


def test_a_budget_below_the_largest_upload_is_a_warning_at_its_line(
    env: GateEnv,
) -> None:
    config = _with(env, "upload", "limits:\n  body_timeout: 30\n  max_buffered_bytes: 4194304\n")
    line = config.read_text().splitlines().index("  max_buffered_bytes: 4194304") + 1
    code, report, text = _validate(config)
    assert code == 0, text  # a warning: the configuration still loads and serves
    assert report["ok"] is True and report["errors"] == []
    warnings = report["warnings"]
    assert isinstance(warnings, list) and len(warnings) == 1, warnings
    (warning,) = warnings
    assert warning["path"] == "limits.max_buffered_bytes" and warning["line"] == line
    assert "middleware.max_form_bytes (32 MiB)" in warning["text"]
    assert "BUFFER_BUDGET_EXHAUSTED" in warning["text"]
    assert f"{config}:{line}: limits.max_buffered_bytes: 4 MiB is less than" in text


def test_a_budget_below_the_json_limit_names_that_key(env: GateEnv) -> None:
    assert "\nmiddleware:" not in env.config.read_text()
    path = _with(
        env,
        "json-limit",
        "limits:\n  max_buffered_bytes: 1048576\nmiddleware:\n  max_form_bytes: 524288\n",
    )
    warnings: list[object] = []
    load_config(path, warnings=warnings)  # type: ignore[arg-type]
    texts = [str(w) for w in warnings if "max_buffered_bytes" in str(w)]
    assert len(texts) == 1 and "middleware.max_body_bytes (8 MiB)" in texts[0], texts


def test_a_budget_that_holds_the_largest_body_says_nothing(env: GateEnv) -> None:
    config = _with(env, "roomy", "limits:\n  max_buffered_bytes: 67108864\n")
    code, report, text = _validate(config)
    assert code == 0 and report["warnings"] == [], text
    # The defaults hold each other: the baseline warns about nothing.
    assert _validate(env.config)[1]["warnings"] == []
