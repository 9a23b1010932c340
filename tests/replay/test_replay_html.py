"""The HTML report: self-contained, accessible, and rendered by headless Chromium without errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from aidr_gate.policy.pack import load_pack
from aidr_gate.replay import ReplayOptions, build_report, render_html, replay_files
from support.environment import require_tool
from support.html_dom import (
    Element,
    by_id,
    console_problems,
    parse,
    render,
)
from support.replay_support import decide, gate_for, requests, write_trail


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A replay of a real trail with one broken link and one record without evidence."""
    directory = tmp_path_factory.mktemp("html-trail")
    gate = gate_for("aidr-2025-01")
    files = write_trail(
        directory,
        [decide(gate, r) for r in requests(2000, seed=31)],
        max_bytes=700_000,
        legacy=True,  # an older gate's records: the evidence sits in one tree to edit
    )
    assert len(files) >= 2
    # Someone inserts a record without its entity (and without a chain member).
    lines = files[0].read_bytes().splitlines(keepends=True)
    record = orjson.loads(lines[10])
    del record["aidr"]["entity"]
    del record["chain"]
    record["aidr"]["decision"]["id"] = "inserted-record-0001"
    lines.insert(11, orjson.dumps(record) + b"\n")
    files[0].write_bytes(b"".join(lines))
    return build_report(replay_files(files, ReplayOptions(load_pack("strict-hypothetical"))))


@pytest.fixture(scope="module")
def page(report: dict[str, Any]) -> str:
    return render_html(report)


def test_the_page_is_self_contained(page: str) -> None:
    # Nothing is fetched: no external scripts, styles, images or fonts, and a CSP forbidding them.
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page)
    assert "@import" not in page and "url(" not in page
    assert "default-src 'none'" in page
    root = parse(page)
    assert not root.find_all(lambda e: e.tag in ("link", "iframe", "object", "embed", "img"))


def test_charts_have_text_alternatives_and_tables(page: str, report: dict[str, Any]) -> None:
    root = parse(page)
    charts = root.find_all(lambda e: e.tag == "svg")
    assert {c.attrs["id"] for c in charts} >= {
        "chart-effects",
        "chart-by-country",
        "chart-by-model-tier",
        "chart-by-effective-tier",
    }
    for chart in charts:
        assert chart.attrs["role"] == "img"
        for label in chart.attrs["aria-labelledby"].split():
            assert by_id(root, label).all_text().strip()
    for table in root.find_all(lambda e: e.tag == "table"):
        assert table.find_all(lambda e: e.tag == "caption") or table.attrs["id"] == "packs"
    # Every number a chart shows is in the table beside it.
    table = by_id(root, "table-by-country")
    cells = [row.all_text() for row in table.find_all(lambda e: e.tag == "tr")]
    for row in report["flips"]["by_country"]:
        assert any(c.startswith(row["value"]) and f"{row['total']:,}" in c for c in cells)


def check_dom(root: Element, report: dict[str, Any]) -> None:
    """The charts' bars and the key numbers, as the browser (or the parser) sees them."""
    effects = by_id(root, "chart-effects")
    bars = effects.find_all(lambda e: "bar" in e.attrs.get("class", "").split())
    assert len(bars) == 6
    for bar in bars:
        series, effect = bar.attrs["data-series"], bar.attrs["data-group"]
        assert int(bar.attrs["data-value"]) == report["effects"][series][effect]
        assert bar.find_all(lambda e: e.tag == "rect")
    labels = {
        e.all_text() for e in effects.find_all(lambda e: "group-label" in e.attrs.get("class", ""))
    }
    assert labels == {"allow", "log", "deny"}
    for chart_id, name in (
        ("chart-by-country", "by_country"),
        ("chart-by-model-tier", "by_model_tier"),
    ):
        rows = by_id(root, chart_id).find_all(lambda e: e.attrs.get("class") == "row")
        expected = report["flips"][name][:15]
        assert [(r.attrs["data-label"], int(r.attrs["data-total"])) for r in rows] == [
            (row["value"], row["total"]) for row in expected
        ]
        for row in rows:
            values = [
                int(b.attrs["data-value"])
                for b in row.find_all(lambda e: "bar" in e.attrs.get("class", "").split())
            ]
            assert sum(values) == int(row.attrs["data-total"])
    totals = report["totals"]
    assert f"{totals['flips']:,}" in by_id(root, "total-flips").all_text()
    assert f"{totals['records']:,}" in by_id(root, "total-records").all_text()
    assert f"{totals['cannot_decide']:,}" in by_id(root, "total-cannot").all_text()
    dirs = report["flips"]["by_direction"]
    assert f"{dirs['cut_off']:,}" in by_id(root, "total-cut_off").all_text()
    assert by_id(root, "range-first").all_text() == report["range"]["first"]
    assert by_id(root, "range-last").all_text() == report["range"]["last"]
    packs = by_id(root, "packs").all_text()
    assert report["pack"]["digest"] in packs and report["recorded_packs"][0]["digest"] in packs
    entities = by_id(root, "table-top-entities").find_all(lambda e: e.tag == "tr")
    assert len(entities) == 1 + len(report["top_entities"])
    assert "inserted-record-0001" in by_id(root, "table-cannot-records").all_text()
    assert "missing aidr.entity" in by_id(root, "table-cannot-why").all_text()
    chain = by_id(root, "table-chain").all_text()
    assert "changed" in chain


def test_the_page_holds_the_charts_and_numbers(page: str, report: dict[str, Any]) -> None:
    assert report["totals"]["cannot_decide"] == 1
    assert not report["chain"]["ok"]
    check_dom(parse(page), report)


def test_chromium_renders_the_report_without_errors(
    page: str, report: dict[str, Any], tmp_path: Path
) -> None:
    chromium = require_tool("chromium", "/usr/bin/chromium")
    root, log = render(chromium, page, tmp_path)
    html = root.find_all(lambda e: e.tag == "html")[0]
    assert html.attrs.get("data-ready") == "1", "the page's script ran to the end"
    assert "data-js-errors" not in html.attrs, html.attrs.get("data-js-errors")
    assert console_problems(log) == []
    check_dom(root, report)
    # The sort script made the tables sortable in the browser.
    headers = by_id(root, "table-top-entities").find_all(lambda e: e.tag == "th")
    assert headers and all(h.attrs.get("aria-sort") == "none" for h in headers)


def test_the_harness_sees_a_script_error(page: str, tmp_path: Path) -> None:
    chromium = require_tool("chromium", "/usr/bin/chromium")
    broken = page.replace("</main>", "<script>undefinedFunction();</script></main>", 1)
    root, log = render(chromium, broken, tmp_path)
    html = root.find_all(lambda e: e.tag == "html")[0]
    assert "undefinedFunction" in html.attrs.get("data-js-errors", "")
    assert console_problems(log)
