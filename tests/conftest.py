"""Fixtures every test may use; the shared helpers themselves are in tests/support/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# Re-exported for tests that import them from here; new ones import tests/support/environment.
from support.environment import EXAMPLES as EXAMPLES
from support.environment import IN_CI as IN_CI
from support.environment import POLICIES as POLICIES
from support.environment import ROOT as ROOT
from support.environment import SHARED_TESTDATA as SHARED_TESTDATA
from support.environment import require_tool as require_tool
from support.servers import close_test_clients


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Clients a test opened through servers.closed_after_test are closed when it ends."""
    yield
    close_test_clients()


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    """The bundled example configuration, registry and catalogue."""
    return EXAMPLES
