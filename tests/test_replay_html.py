"""The HTML report: self-contained, accessible, and rendered by headless Chromium without errors."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import pytest

from aidr_gate.policy.pack import load_pack
from aidr_gate.replay import ReplayOptions, build_report, render_html, replay_files
from replay_support import decide, gate_for, requests, write_trail
from support.environment import require_tool

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--enable-logging=stderr",
    "--v=0",
)


@dataclass
class Element:
    """One element of the parsed page: tag, attributes, text directly inside it."""

    tag: str
    attrs: dict[str, str]
    text: str = ""
    children: list[Element] = field(default_factory=list)

    def find_all(self, predicate: Any) -> list[Element]:
        out = [self] if predicate(self) else []
        for child in self.children:
            out.extend(child.find_all(predicate))
        return out

    def all_text(self) -> str:
        return self.text + "".join(c.all_text() for c in self.children)


VOID = {"meta", "link", "br", "img", "input", "hr", "rect", "line"}


class Tree(HTMLParser):
    """A small DOM built with the standard library's parser (enough to query a report)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Element(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for index in range(len(self.stack) - 1, 0, -1):
            if self.stack[index].tag == tag:
                del self.stack[index:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].text += data


def parse(page: str) -> Element:
    tree = Tree()
    tree.feed(page)
    tree.close()
    return tree.root


def by_id(root: Element, element_id: str) -> Element:
    found = root.find_all(lambda e: e.attrs.get("id") == element_id)
    assert len(found) == 1, element_id
    return found[0]


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


def render(chromium: str, page: str, tmp_path: Path) -> tuple[Element, str]:
    """Load *page* from a file in headless Chromium; its DOM after scripts ran, and its log."""
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    done = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", path.as_uri()],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return parse(done.stdout), done.stderr


def console_problems(log: str) -> list[str]:
    return [
        line
        for line in log.splitlines()
        if "CONSOLE" in line or "Uncaught" in line or "Refused to" in line
    ]


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
