"""tests/support/environment.py: a missing tool or test data folder skips, but fails under CI."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import environment
from support.environment import require_testdata, require_tool


@pytest.mark.parametrize(
    ("in_ci", "outcome"), [(True, pytest.fail.Exception), (False, pytest.skip.Exception)]
)
def test_missing_testdata_fails_under_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, in_ci: bool, outcome: type[BaseException]
) -> None:
    monkeypatch.setattr(environment, "IN_CI", in_ci)
    folder = tmp_path / "maxmind"
    with pytest.raises(
        outcome, match=r"MaxMind test databases absent \(.*maxmind; ../shared/testdata/maxmind\)"
    ):
        require_testdata(folder, "MaxMind test databases")
    folder.mkdir()
    assert require_testdata(folder, "MaxMind test databases") == folder


@pytest.mark.parametrize(
    ("in_ci", "outcome"), [(True, pytest.fail.Exception), (False, pytest.skip.Exception)]
)
def test_missing_tool_fails_under_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, in_ci: bool, outcome: type[BaseException]
) -> None:
    monkeypatch.setattr(environment, "IN_CI", in_ci)
    with pytest.raises(outcome, match=r"no-such-tool-xyz is not installed \(.ci/run installs it\)"):
        require_tool("no-such-tool-xyz", str(tmp_path / "absent"))
    program = tmp_path / "present"
    program.write_text("")
    assert require_tool("no-such-tool-xyz", str(program)) == str(program)
