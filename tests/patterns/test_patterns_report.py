"""``aidr-gate patterns``: signals over time from real audit trails, rendered in a real browser."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aidr_gate.catalog import Model, Weights
from aidr_gate.cli import main
from aidr_gate.decision import Decision
from aidr_gate.facts import AnonymizerFlag, CountrySource, Identity, Origin
from aidr_gate.gate import Gate, state_for
from aidr_gate.policy.pack import load_pack
from aidr_gate.registry import Entity
from support.environment import EXAMPLES, require_tool
from support.html_dom import by_id, console_problems, parse, render
from support.replay_support import write_trail

T0 = 1_767_225_600.0  # 2026-01-01T00:00Z
CLIENTS = [f"client-{i:02d}" for i in range(12)]
MODELS = [Model("aurora-frontier", training_ops=4e26, weights=Weights.CLOSED),
          Model("aurora-mini", training_ops=6e25, weights=Weights.CLOSED)]  # fmt: skip


def _origin(country: str, ip: str, *, vpn: bool = False) -> Origin:
    return Origin(
        ip=ip,
        country=country,
        country_source=CountrySource.GEOIP,
        anonymizer=frozenset({AnonymizerFlag.VPN}) if vpn else frozenset(),
    )


def traffic() -> list[Decision]:
    """Three hours of decisions: steady customers, one token hopping countries, a reseller's
    network fronting twelve organisations, and an entity drifting onto a VPN."""
    entities = [Entity("acme-us", "US"), Entity("steady-jp", "JP"), Entity("drift-de", "DE")]
    entities += [Entity(c, "US") for c in CLIENTS]
    gate = Gate(state_for(load_pack(EXAMPLES / "patterns.yaml"), entities=entities, models=MODELS))
    out = []
    for minute in range(180):
        at = T0 + minute * 60
        steady = Identity("steady-jp", subject="batch")
        out.append(
            gate.decide(
                identity=steady, origin=_origin("JP", "1.0.16.5"), model_id="aurora-mini", at=at
            )
        )
        if minute % 3 == 0:
            who = Identity("acme-us", subject="alice")
            out.append(
                gate.decide(
                    identity=who, origin=_origin("US", "8.8.8.8"), model_id="aurora-mini", at=at + 1
                )
            )
        drift = Identity("drift-de", subject="ops")
        vpn = minute >= 120
        out.append(
            gate.decide(
                identity=drift,
                origin=_origin("DE", "5.1.0.5" if not vpn else "8.8.8.200", vpn=vpn),
                model_id="aurora-mini",
                at=at + 2,
            )
        )
    hop = Identity("acme-us", subject="alice")
    for i, (country, ip) in enumerate(
        [("DE", "5.1.0.9"), ("SE", "89.160.20.10"), ("JP", "1.0.16.9"), ("US", "8.8.8.9")]
    ):
        out.append(
            gate.decide(
                identity=hop,
                origin=_origin(country, ip),
                model_id="aurora-frontier",
                at=T0 + 3600 + i * 10,
            )
        )
    for i, client in enumerate(CLIENTS):
        ident = Identity(client, subject="svc")
        out.append(
            gate.decide(
                identity=ident,
                origin=_origin("US", f"198.51.100.{i + 1}"),
                model_id="aurora-mini",
                at=T0 + 7200 + i,
            )
        )
    return sorted(out, key=lambda d: d.at)  # fmt: skip


@pytest.fixture(scope="module")
def trail(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two per-process slots (p0, p1) of rotated, gzipped journal files."""
    root = tmp_path_factory.mktemp("trail")
    decisions = traffic()
    for slot in (0, 1):
        directory = root / f"p{slot}"
        directory.mkdir()
        files = write_trail(directory, decisions[slot::2], max_bytes=40_000, compress=True)
        assert len(files) > 2 and any(f.name.endswith(".gz") for f in files)
    return root


@pytest.fixture(scope="module")
def outputs(trail: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("out")
    paths = sorted(str(p) for p in trail.glob("p*/*.jsonl*"))
    code = main(["patterns", *paths, "--json", str(out / "r.json"), "--html", str(out / "r.html"),
                 "--window", "1h", "--bucket", "30m"])  # fmt: skip
    assert code == 0
    return json.loads((out / "r.json").read_text()), (out / "r.html").read_text()


def test_every_request_of_both_slots_is_read_in_time_order(
    outputs: tuple[dict[str, Any], str],
) -> None:
    report, _ = outputs
    assert report["totals"]["records"] == len(traffic())
    assert report["chain_ok"], report["chain_findings"]
    assert len({Path(f["path"]).parent.name for f in report["files"]}) == 2


def test_the_hopping_token_ranks_first_with_the_requests_behind_it(
    outputs: tuple[dict[str, Any], str],
) -> None:
    report, _ = outputs
    first = report["entities"][0]
    assert first["entity"] == "acme-us"
    peak = first["peaks"]["token_countries"]
    # Alice's usual US within the hour, then DE, SE and JP: the fourth country at the third hop.
    assert peak["value"] == 4 and peak["at"] == T0 + 3600 + 20
    behind = [r for r in peak["requests"] if r["subject"] == "alice"]
    assert [r["country"] for r in behind[-4:]] == ["DE", "US", "SE", "JP"]  # US: her usual call
    assert behind[-1]["effect"] == "deny" and behind[-1]["reason"] == "ORIGIN_VELOCITY"


def test_ordinary_traffic_scores_nothing_and_the_drift_shows(
    outputs: tuple[dict[str, Any], str],
) -> None:
    report, _ = outputs
    rows = {r["entity"]: r for r in report["entities"]}
    assert rows["steady-jp"]["score"] == 0
    assert rows["drift-de"]["peaks"]["anonymizer_share"]["value"] > 0.5
    assert rows["drift-de"]["score"] > rows["steady-jp"]["score"]
    assert rows["steady-jp"]["series"] and all(
        b["countries"] == ["JP"] for b in rows["steady-jp"]["series"]
    )


def test_the_network_fronting_many_entities_is_listed(outputs: tuple[dict[str, Any], str]) -> None:
    report, _ = outputs
    top = report["networks"][0]
    assert top["network"] == "198.51.100.0/24"
    assert top["peak_entities"] == 12


def test_the_summary_and_bad_options(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["patterns", str(trail / "p0"), str(trail / "p1"), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "acme-us" in out and "198.51.100.0/24" in out
    assert main(["patterns", str(trail / "p0"), "--window", "1y"]) == 2
    assert "--window" in capsys.readouterr().err
    assert main(["patterns", str(trail / "nowhere")]) == 2


def test_chromium_renders_the_page_without_errors(
    outputs: tuple[dict[str, Any], str], tmp_path: Path
) -> None:
    _, page = outputs
    chromium = require_tool("chromium", "/usr/bin/chromium")
    root, log = render(chromium, page, tmp_path)
    html = root.find_all(lambda e: e.tag == "html")[0]
    assert html.attrs.get("data-ready") == "1", "the page's script ran to the end"
    assert "data-js-errors" not in html.attrs, html.attrs.get("data-js-errors")
    assert console_problems(log) == []
    ranking = by_id(root, "table-entities").all_text()
    assert "acme-us" in ranking
    chart = by_id(root, "chart-countries-0")
    values = [int(p.attrs["data-value"]) for p in chart.find_all(lambda e: e.tag == "g")
              if "data-value" in p.attrs]  # fmt: skip
    assert max(values) == 4  # acme-us's four countries in one step
    bars = by_id(root, "chart-networks").find_all(lambda e: e.attrs.get("data-value") == "12")
    assert bars
    assert "Content-Security-Policy" in page and "http" not in page.split("<body>")[1].replace(
        "http://www.w3.org/2000/svg", ""
    )


def test_the_page_parses_offline(outputs: tuple[dict[str, Any], str]) -> None:
    _, page = outputs
    root = parse(page)
    assert by_id(root, "table-networks").all_text().count("198.51.100.0/24") == 1
