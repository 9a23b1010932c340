"""Shared fixtures: paths to the bundled packs and examples, and tool checks that never skip in CI."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers import close_test_clients

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
EXAMPLES = POLICIES / "examples"
SHARED_TESTDATA = ROOT.parent / "shared" / "testdata"

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(name: str, *candidates: str) -> str:
    """The path of an external program; skip when absent, but fail under CI (CI installs them)."""
    for candidate in (name, *candidates):
        found = shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)
        if found:
            return found
    message = f"{name} is not installed (.ci/run installs it)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Clients a test opened through servers.closed_after_test are closed when it ends."""
    yield
    close_test_clients()


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    """The bundled example configuration, registry and catalogue."""
    return EXAMPLES
