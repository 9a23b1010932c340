"""Where the tests find the project's files, and what they need from the machine.

A test that needs an external program (:func:`require_tool`) or the shared test data
(:func:`require_testdata`) skips without it, naming what is missing, except under ``CI=true``:
CI installs the programs (``.ci/run``) and always has ``../shared``, so there a missing one fails.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
POLICIES = ROOT / "policies"
EXAMPLES = POLICIES / "examples"
SHARED_TESTDATA = ROOT.parent / "shared" / "testdata"

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing(message: str) -> NoReturn:
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def require_tool(name: str, *candidates: str) -> str:
    """The path of an external program; skip when absent, but fail under CI (CI installs them)."""
    for candidate in (name, *candidates):
        found = shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)
        if found:
            return found
    _missing(f"{name} is not installed (.ci/run installs it)")


def require_testdata(folder: Path, what: str) -> Path:
    """A folder of ``../shared/testdata``; skip when absent, but fail under CI (CI has it)."""
    if not folder.is_dir():
        _missing(f"{what} absent ({folder}; ../shared/testdata/{folder.name})")
    return folder
