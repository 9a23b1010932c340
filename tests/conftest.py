"""Fixtures every test may use; the shared helpers themselves are in tests/support/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.environment import EXAMPLES
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
