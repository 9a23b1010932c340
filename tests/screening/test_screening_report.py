"""``aidr-gate screen`` on the real lists: the summary, the CSV, the JSON, and the HTML review page
rendered in headless Chromium; a decision recorded as the report says is applied on the next run."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest

from aidr_gate.cli import main
from support.environment import require_tool
from support.html_dom import by_id, console_problems, parse, render
from support.screening_support import require_sanctions

REGISTRY = """\
entities:
  acme-ru:
    name: ООО Ачим Девелопмент
    aliases: [Achim Development LLC]
    headquarters: RU
    ownership: complete
    owners: [{name: Elena Khusyaynova, country: RU, share: 100}]
  bank-pa:
    name: Banco Nacional de Cuba S.A.
    headquarters: PA
    screening_reviews:
      - {entry: "sdn:306", decision: confirmed, by: j.doe, at: 2026-12-01, why: same bank}
  sub-pa: {name: Panama Widgets, headquarters: PA, owners: [{entity: bank-pa, share: 60}]}
  clean-de: {name: Nordic Data Systems GmbH, headquarters: DE}
"""


@pytest.fixture(scope="module")
def lists() -> Path:
    return require_sanctions()


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    path = tmp_path / "entities.yaml"
    path.write_text(REGISTRY)
    return path


def screen(registry: Path, lists: Path, *extra: str) -> int:
    return main(["screen", str(registry), "--lists", str(lists), *extra])


def test_the_reports_explain_each_hit(
    registry: Path, lists: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = {k: tmp_path / f"report.{k}" for k in ("csv", "html", "json")}
    args = [f"--{k}={v}" for k, v in out.items()]
    assert screen(registry, lists, *args) == 0
    text = capsys.readouterr().out
    assert "Hits: 3 to review, 1 confirmed" in text
    assert "acme-ru name 'ООО Ачим Девелопмент' ~ ssi:19692" in text
    assert "sub-pa: owned 60% by listed parties: sub-pa <- bank-pa (60%, listed: sdn:306)" in text
    rows = list(csv.DictReader(io.StringIO(out["csv"].read_text())))
    owner = next(r for r in rows if r["name_field"] == "owners[0].name")
    assert (owner["entry"], owner["state"], owner["method"]) == (
        "sdn:26233",
        "potential",
        "name-parts",
    )
    assert owner["entry_countries"] == "RU" and owner["countries_agree"] == "true"
    confirmed = next(r for r in rows if r["state"] == "confirmed")
    assert (confirmed["entity"], confirmed["reviewed_by"]) == ("bank-pa", "j.doe")
    report = json.loads(out["json"].read_text())
    assert report["totals"]["owned_by_listed"] == 1 and report["totals"]["listed"] == 1
    assert report["lists"]["digest"].startswith("sha256:")
    assert not any(r["entity"] == "clean-de" for r in rows)
    # --fail-on-hits: hits await review, so the run fails.
    assert screen(registry, lists, "--quiet", "--fail-on-hits") == 1


def test_the_page_is_self_contained_and_renders(
    registry: Path, lists: Path, tmp_path: Path
) -> None:
    page_path = tmp_path / "review.html"
    assert screen(registry, lists, "--quiet", f"--html={page_path}") == 0
    page = page_path.read_text()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page)
    assert "default-src 'none'" in page
    root = parse(page)
    hits = root.find_all(lambda e: e.tag == "article" and "hit" in e.attrs.get("class", ""))
    assert {h.attrs["data-entry"] for h in hits} == {"ssi:19692", "sdn:26233"}
    snippet = by_id(root, "hit-0").all_text()
    assert (
        'entry: "ssi:19692"' in snippet and "decision: confirmed  # or: false-positive" in snippet
    )
    assert "sub-pa" in by_id(root, "table-ownership").all_text()
    chromium = require_tool("chromium", "/usr/bin/chromium")
    dom, log = render(chromium, page, tmp_path)
    html = dom.find_all(lambda e: e.tag == "html")[0]
    assert html.attrs.get("data-ready") == "1" and "data-js-errors" not in html.attrs
    assert console_problems(log) == []
    assert "3" in by_id(dom, "total-potential").all_text()
    headers = by_id(dom, "table-pending").find_all(lambda e: e.tag == "th")
    assert headers and all(h.attrs.get("aria-sort") == "none" for h in headers)


def test_a_decision_recorded_as_the_report_says_is_applied(
    registry: Path, lists: Path, tmp_path: Path
) -> None:
    report_path = tmp_path / "r.json"
    assert screen(registry, lists, "--quiet", f"--json={report_path}") == 0
    hit = next(h for h in json.loads(report_path.read_text())["hits"] if h["entry"] == "sdn:26233")
    snippet = hit["snippet"].replace("confirmed  # or: false-positive", "false-positive")
    text = registry.read_text().replace(
        "    owners: [{name: Elena Khusyaynova", snippet + "    owners: [{name: Elena Khusyaynova"
    )
    registry.write_text(text)
    assert screen(registry, lists, "--quiet", f"--json={report_path}") == 0
    report = json.loads(report_path.read_text())
    cleared = next(h for h in report["hits"] if h["entry"] == "sdn:26233")
    assert cleared["state"] == "cleared" and cleared["review"]["by"] == "your.name"
    assert report["totals"]["potential"] == 2


def test_broken_inputs_are_usage_errors(
    registry: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "sdn.csv"
    bad.write_text('1,"ONLY TWO"\n')
    assert main(["screen", str(registry), "--lists", str(bad)]) == 2
    assert "sdn.csv:1: sdn row has 2 columns, not 12" in capsys.readouterr().err
    unknown = tmp_path / "list.csv"
    unknown.write_text("just,some,words\n")
    assert main(["screen", str(registry), "--lists", str(unknown)]) == 2
    assert "neither a CSL file" in capsys.readouterr().err
    assert main(["screen", str(registry), "--lists", str(bad), "--threshold", "20"]) == 2
    assert "--threshold: must be 50 to 100" in capsys.readouterr().err
    missing = tmp_path / "nope" / "r.csv"
    assert main(["screen", str(registry), "--lists", str(bad), f"--csv={missing}"]) == 2
    assert "does not exist" in capsys.readouterr().err
