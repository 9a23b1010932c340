"""tests/support/environment.py: a missing tool or test data folder skips, but fails under CI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from support import environment
from support.environment import require_testdata, require_tool


def _testdata(tmp_path: Path, present: bool) -> object:
    folder = tmp_path / "maxmind"
    if present:
        folder.mkdir()
    return require_testdata(folder, "MaxMind test databases")


def _tool(tmp_path: Path, present: bool) -> object:
    program = tmp_path / "present"
    if present:
        program.write_text("")
    return require_tool("no-such-tool-xyz", str(program))


CHECKS: list[tuple[Callable[[Path, bool], object], str]] = [
    (_testdata, r"MaxMind test databases absent \(.*maxmind; ../shared/testdata/maxmind\)"),
    (_tool, r"no-such-tool-xyz is not installed \(.ci/run installs it\)"),
]


@pytest.mark.parametrize(("check", "message"), CHECKS, ids=["testdata", "tool"])
@pytest.mark.parametrize(
    ("in_ci", "outcome"), [(True, pytest.fail.Exception), (False, pytest.skip.Exception)]
)
def test_missing_fails_under_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    check: Callable[[Path, bool], object],
    message: str,
    in_ci: bool,
    outcome: type[BaseException],
) -> None:
    monkeypatch.setattr(environment, "IN_CI", in_ci)
    with pytest.raises(outcome, match=message):
        check(tmp_path, False)
    assert check(tmp_path, True) == (
        tmp_path / "maxmind" if check is _testdata else str(tmp_path / "present")
    )
