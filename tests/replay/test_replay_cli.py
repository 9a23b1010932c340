"""``aidr-gate replay`` from the command line: arguments, outputs, exit codes, progress bar."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from aidr_gate.cli import main
from aidr_gate.cli.replay import audit_paths
from aidr_gate.replay import run
from aidr_gate.replay.report import ProgressBar
from support.replay_support import decide, gate_for, requests, write_trail

COUNT = 1200


@pytest.fixture(scope="module")
def trail_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("cli-trail")
    gate = gate_for("aidr-2025-01")
    write_trail(
        directory,
        [decide(gate, r) for r in requests(COUNT, seed=21)],
        max_bytes=500_000,
        compress=True,
    )
    return directory


def test_replay_writes_the_summary_json_and_html(
    trail_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    json_path, html_path = tmp_path / "r.json", tmp_path / "r.html"
    code = main(
        [
            "replay",
            "--pack",
            "strict-hypothetical",
            "--json",
            str(json_path),
            "--html",
            str(html_path),
            "--no-progress",
            str(trail_dir),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    report = json.loads(json_path.read_text())
    assert report["format"] == "aidr-gate.replay/1"
    assert report["totals"]["lines"] == COUNT
    assert len(report["files"]) >= 2
    flips = report["totals"]["flips"]
    assert flips > 0
    assert "Replay under strict-hypothetical (hypothetical" in out
    assert f"Flips: {flips:,} of {report['totals']['replayed']:,} re-decided" in out
    assert "Top entities affected" in out
    assert "Chain: intact" in out
    assert f"HTML report: {html_path}" in out
    html = html_path.read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert "strict-hypothetical" in html and report["pack"]["digest"] in html


def test_json_on_stdout_keeps_the_summary_on_stderr(
    trail_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["replay", "--pack", "aidr-2025-05-rescinded", "--json", "-", str(trail_dir)])
    captured = capsys.readouterr()
    assert code == 0
    report = json.loads(captured.out)
    assert report["pack"]["id"] == "aidr-2025-05-rescinded"
    assert "Replay under aidr-2025-05-rescinded" in captured.err


def test_fail_on_flips_and_quiet(trail_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(str(p) for p in trail_dir.iterdir() if p.name.startswith("audit"))
    assert main(["replay", "--pack", "aidr-2025-01", "--quiet", "--fail-on-flips", *files]) == 0
    assert (
        main(["replay", "--pack", "strict-hypothetical", "--quiet", "--fail-on-flips", *files]) == 1
    )
    assert capsys.readouterr().out == ""


def test_at_and_overrides_on_the_command_line(
    trail_dir: Path, tmp_path: Path, examples_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "replay",
            "--pack",
            "aidr-2025-01",
            "--at",
            "2026-06-01",
            "--registry",
            str(examples_dir / "entities.yaml"),
            "--catalog",
            str(examples_dir / "models.yaml"),
            "--json",
            "-",
            "--quiet",
            str(trail_dir),
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["at"] == "2026-06-01T00:00:00.000Z"
    assert report["registry"].endswith("entities.yaml")
    assert report["catalog"].endswith("models.yaml")
    assert report["totals"]["flips"] > 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--pack", "no-such-pack"], "no such policy pack"),
        (["--pack", "aidr-2025-01", "--at", "someday"], "'someday' is not a date"),
        (["--pack", "aidr-2025-01", "--top", "0"], "must be at least 1"),
        (["--pack", "aidr-2025-01", "--registry", "/nonexistent/entities.yaml"], "entities.yaml"),
    ],
)
def test_bad_arguments_exit_2_with_every_problem(
    trail_dir: Path, arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", *arguments, str(trail_dir)]) == 2
    assert message in capsys.readouterr().err


def test_missing_files_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["replay", "--pack", "aidr-2025-01", str(tmp_path / "nope.jsonl"), str(empty)])
    assert code == 2
    err = capsys.readouterr().err
    assert "no such file or directory" in err and "holds no audit files" in err


@pytest.mark.parametrize(
    ("flag", "target"),
    [
        ("--json", "missing/r.json"),
        ("--html", "missing/r.html"),
        ("--json", "."),  # a directory, not a file
        ("--html", "a-file/r.html"),  # under a file, not a directory
    ],
)
def test_unwritable_report_paths_exit_2_before_replaying(
    trail_dir: Path,
    tmp_path: Path,
    flag: str,
    target: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "a-file").write_text("")

    def replay_files(*args: object, **kwargs: object) -> None:
        raise AssertionError("replayed before checking where the reports go")

    monkeypatch.setattr("aidr_gate.cli.replay.replay_files", replay_files)
    path = str(tmp_path / target)
    code = main(["replay", "--pack", "aidr-2025-01", flag, path, "--no-progress", str(trail_dir)])
    assert code == 2
    err = capsys.readouterr().err
    assert flag in err and "configuration problems" in err


def test_forced_progress_bar_draws_on_stderr(
    trail_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", "--pack", "aidr-2025-01", "--progress", "--quiet", str(trail_dir)]) == 0
    err = capsys.readouterr().err
    assert "100%" in err and f"{COUNT:,} records" in err
    assert err.endswith("\n")


def test_progress_bar_is_silent_off_a_terminal() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream)
    bar.update(10, 10, 5, 1)
    bar.close()
    assert stream.getvalue() == ""
    forced = ProgressBar(stream, enabled=True, interval=3600)
    forced.update(1, 10, 100, 0)
    forced.update(2, 10, 200, 0)  # within the interval: not redrawn
    forced.update(10, 10, 1000, 7)  # 100% is always drawn
    forced.close()
    text = stream.getvalue()
    assert text.count("\r") == 2
    assert "100% 1,000 records, 7 flips" in text


def test_at_past_the_year_9999_exits_2(trail_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    at = "9999-12-31T23:59:59-05:00"
    assert main(["replay", "--pack", "aidr-2025-01", "--at", at, str(trail_dir)]) == 2
    err = capsys.readouterr().err
    assert f"{at!r} is not a date or ISO 8601 time" in err and "Traceback" not in err


def test_an_unreadable_file_fails_the_replay_even_when_quiet(
    trail_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for path in trail_dir.iterdir():
        if path.is_file():
            (tmp_path / path.name).write_bytes(path.read_bytes())
    damaged = next(p for p in sorted(tmp_path.iterdir()) if p.name.endswith(".gz"))
    damaged.write_bytes(damaged.read_bytes()[:-200])
    arguments = ["replay", "--pack", "aidr-2025-01", "--no-progress", str(tmp_path)]
    assert main([*arguments, "--quiet", "--fail-on-flips"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "1 audit file(s) could not be read to the end" in captured.err
    assert f"  {damaged}: " in captured.err
    assert "chain error: " in captured.err and "unreadable" in captured.err
    assert "Traceback" not in captured.err

    assert main(arguments) == 2
    captured = capsys.readouterr()
    assert "could not be read to the end: the records after the damage were not replayed" in (
        captured.out
    )
    assert f"  {damaged}: " in captured.err

    page = tmp_path / "report.html"
    assert main([*arguments, "--quiet", "--html", str(page)]) == 2
    capsys.readouterr()
    assert "1 file(s) could not be read to the end" in page.read_text()
    assert "replayed all the same" not in page.read_text()


def test_html_to_stdout_is_refused_before_replaying(
    trail_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def replay_files(*args: object, **kwargs: object) -> None:
        raise AssertionError("replayed before checking where the reports go")

    monkeypatch.setattr("aidr_gate.cli.replay.replay_files", replay_files)
    monkeypatch.chdir(tmp_path)
    assert main(["replay", "--pack", "aidr-2025-01", "--html", "-", str(trail_dir)]) == 2
    assert "--html: '-': only --json writes to stdout" in capsys.readouterr().err
    assert not (tmp_path / "-").exists()


def test_a_directory_without_write_permission_is_refused_before_replaying(
    trail_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Through os.access, so the check holds when the tests run as root, whom no mode stops.
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access

    def access(path: object, mode: int, **kwargs: object) -> bool:
        if Path(str(path)) == locked and mode & os.W_OK:
            return False
        return real_access(path, mode)  # type: ignore[arg-type]

    def replay_files(*args: object, **kwargs: object) -> None:
        raise AssertionError("replayed before checking where the reports go")

    monkeypatch.setattr("aidr_gate.cli.report_files.os.access", access)
    monkeypatch.setattr("aidr_gate.cli.replay.replay_files", replay_files)
    target = str(locked / "r.json")
    assert main(["replay", "--pack", "aidr-2025-01", "--json", target, str(trail_dir)]) == 2
    assert f"the directory {str(locked)!r} is not writable" in capsys.readouterr().err


def test_a_report_that_cannot_be_written_is_a_clear_error(
    trail_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The directory is there when the options are checked and gone when the report is written."""
    gone = tmp_path / "gone"
    gone.mkdir()
    real = run.replay_files

    def replay_files(*args: Any, **kwargs: Any) -> Any:
        gone.rmdir()
        return real(*args, **kwargs)

    monkeypatch.setattr("aidr_gate.cli.replay.replay_files", replay_files)
    target = str(gone / "r.html")
    code = main(["replay", "--pack", "aidr-2025-01", "--html", target, str(trail_dir)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"--html: {target!r}: cannot write the report: No such file or directory" in err
    assert "Traceback" not in err


def test_a_file_named_twice_is_read_once(
    trail_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = audit_paths([trail_dir])[0]
    (tmp_path / "link").symlink_to(trail_dir)
    again = tmp_path / "link" / first.name
    assert audit_paths([trail_dir, first, again]) == audit_paths([trail_dir])
    assert audit_paths([first, trail_dir])[0] == first  # where it first appears
    code = main(["replay", "--pack", "aidr-2025-01", "--json", "-", str(trail_dir), str(first)])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["totals"]["lines"] == COUNT
    assert report["chain"]["ok"] and not report["chain"]["findings"]
