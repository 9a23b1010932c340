"""Screening in a serving gate, end to end: the ``screening:`` section, real requests through the
middleware under uvicorn, the list version and region in the audit records and in replay, a
list that changes (re-screened off the request path) and one that breaks (kept, then fail
closed past ``max_staleness``)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_screening_ownership import CONFIRM, LIST

from aidr_gate.asgi.middleware import AIDRGateMiddleware
from aidr_gate.demo.model_server import build_model_app
from aidr_gate.document import Checker, parse_document
from aidr_gate.policy.pack import load_pack
from aidr_gate.replay.report import build_report, summary
from aidr_gate.replay.run import ReplayOptions, replay_files
from aidr_gate.screening.store import CSL, ListSource, load_snapshot
from aidr_gate.settings.screening import read_screening
from support.gate_env import GateEnv, make_gate_env
from support.mmdb_files import write_city_db
from support.servers import ThreadedServer, serve

REGISTRY = f"""\
entities:
  listed-co: {{name: Volga Photonics Holding, headquarters: RU, screening_reviews: [{CONFIRM}]}}
  owned-51: {{name: Target Systems, headquarters: DE, owners: [{{entity: listed-co, share: 51}}]}}
  acme-de: {{name: Acme Analytics GmbH, headquarters: DE, owners: [{{name: Founder, share: 100}}]}}
  harbor:
    name: Red Harbor Logistics Ltd
    headquarters: HK
    screening_reviews: [{{entry: 'el:e2', decision: confirmed, by: c.o, at: 2026-12-01, why: same}}]
  owned-49:
    name: Forty Nine GmbH
    headquarters: DE
    owners: [{{entity: listed-co, share: 49}}, {{name: Founder, share: 51}}]
  owned-30-25:
    name: Two Owners GmbH
    headquarters: DE
    owners:
      - {{entity: listed-co, share: 30}}
      - {{entity: harbor, share: 25}}
      - {{name: Founder, share: 45}}
"""
DE, CRIMEA, KYIV = "37.0.4.10", "37.0.0.10", "37.0.1.10"
CITY = {"37.0.0.0/24": ("UA", "43"), "37.0.1.0/24": ("UA", "30"), "37.0.4.0/24": ("DE", "BE")}
SCREENING = """\
screening:
  lists: [lists/csl.csv]
  list_date: 2026-11-30
  check_interval: 0.05
  max_staleness: 0.5
"""
# A new entry, as a list update would add it: Acme becomes an (exact) unreviewed hit.
ACME_LISTED = (
    '"e9","Entity List (EL) - Bureau of Industry and Security","","","","Acme Analytics GmbH",'
    '"","Berlin, DE","91 FR 9","2026-12-01","","","","","","","","","","","","","","","","",'
    '"","",""\n'
)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[GateEnv, ThreadedServer]]:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "csl.csv").write_text(LIST)
    registry = tmp_path / "entities.yaml"
    registry.write_text(REGISTRY)
    env = make_gate_env(
        tmp_path, pack="us-embargo-baseline", registry=registry, middleware=SCREENING
    )
    write_city_db(tmp_path / "country.mmdb", CITY)  # the gate's GeoIP database: a City one
    app = build_model_app(token_delay=0.0)
    app.add_middleware(AIDRGateMiddleware, config=str(env.config))
    with serve(app, proxy_headers=False) as server:
        yield env, server


def ask(env: GateEnv, server: ThreadedServer, entity: str, ip: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {env.token(entity)}", "x-forwarded-for": ip},
        json={"model": "aurora-mini", "messages": [{"role": "user", "content": "hi"}]},
        timeout=20,
    )


def code(response: httpx.Response) -> tuple[int, str | None]:
    if response.status_code == 200:
        return 200, None
    return response.status_code, response.json()["error"]["code"]


def wait_for(env: GateEnv, server: ThreadedServer, entity: str, ip: str, want: object) -> None:
    deadline = time.monotonic() + 15
    while code(ask(env, server, entity, ip)) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    assert code(ask(env, server, entity, ip)) == want


def test_requests_are_decided_on_the_screening_result(
    served: tuple[GateEnv, ThreadedServer], tmp_path: Path
) -> None:
    env, server = served
    assert code(ask(env, server, "listed-co", DE)) == (403, "RESTRICTED_PARTY")
    assert code(ask(env, server, "owned-51", DE)) == (403, "RESTRICTED_PARTY_AFFILIATE")
    assert code(ask(env, server, "acme-de", CRIMEA)) == (451, "EMBARGOED_REGION")
    assert code(ask(env, server, "acme-de", KYIV)) == (200, None)
    assert code(ask(env, server, "owned-49", DE)) == (200, None)
    assert code(ask(env, server, "owned-30-25", DE)) == (403, "RESTRICTED_PARTY_AFFILIATE")
    version = load_snapshot([ListSource(tmp_path / "lists" / "csl.csv", CSL, "2026-11-30")]).version
    records = env.audit_records()
    assert len(records) == 6
    for record in records:
        screening = record["aidr"]["screening"]
        assert screening["list_digest"] == version.digest  # every decision names its lists
        assert screening["list_date"] == "2026-11-30"
    listed, owned, crimea, kyiv, _, two_owners = (r["aidr"] for r in records)
    assert two_owners["screening"]["listed_share"] == 55.0
    assert listed["screening"]["flags"] == ["listed", "ownership-unknown"]
    assert owned["screening"]["ownership_path"] == ["owned-51", "listed-co (51%, listed: el:e1)"]
    assert (crimea["origin"]["region"], crimea["origin"]["region_source"]) == ("UA-43", "geoip")
    assert kyiv["origin"]["region"] == "UA-30" and kyiv["jurisdiction"]["region_groups"] == []

    # Replay reads the recorded screening and regions back, and says which lists it saw.
    files = sorted(env.audit_dir.glob("*.jsonl*"))
    result = replay_files(files, ReplayOptions(pack=load_pack("aidr-2025-05-rescinded")))
    report = build_report(result)
    assert report["totals"]["replayed"] == 6 and report["totals"]["flips"] == 0
    assert report["screening_lists"] == [{"version": version.label, "records": 6}]
    assert f"screening lists {version.label}: 6 records" in summary(report)


def test_a_list_change_is_screened_and_a_broken_list_fails_closed(
    served: tuple[GateEnv, ThreadedServer], tmp_path: Path
) -> None:
    env, server = served
    lists = tmp_path / "lists" / "csl.csv"
    assert code(ask(env, server, "acme-de", DE)) == (200, None)
    # A list update naming Acme: re-screened in the background, the request path only reads.
    lists.write_text(LIST + ACME_LISTED)
    wait_for(env, server, "acme-de", DE, (403, "RESTRICTED_PARTY_PENDING_REVIEW"))
    # A truncated download: the last good lists are kept for max_staleness, then every request
    # of a registry entity is denied, whatever the pack says.
    lists.write_text(LIST.splitlines()[0][:40] + "\n\x00garbage")
    assert code(ask(env, server, "listed-co", DE)) == (403, "RESTRICTED_PARTY")
    wait_for(env, server, "acme-de", DE, (503, "SCREENING_UNAVAILABLE"))
    # Repaired: screened again, served again.
    lists.write_text(LIST)
    wait_for(env, server, "acme-de", DE, (200, None))
    refused = [r for r in env.audit_records() if r["aidr"]["decision"]["rule"] == "gate/screening"]
    assert refused and refused[0]["aidr"]["decision"]["reasons"] == ["SCREENING_UNAVAILABLE"]


def test_the_section_is_validated() -> None:
    text = """\
screening:
  lists: []
  threshold: 120
  check_interval: 0
  colour: blue
"""
    check = Checker(parse_document(text, "config.yaml"))
    assert read_screening(check, check.document.data["screening"], Path("/etc")) is None
    messages = sorted(str(p) for p in check.problems)
    assert any("screening.colour: unknown key" in m for m in messages)
    assert any("screening.lists: names no list file" in m for m in messages)
    assert any("screening.threshold: must be at most 100" in m for m in messages)
    assert any(m.startswith("config.yaml:4: screening.check_interval") for m in messages)


def test_validate_passes_exactly_when_serve_would_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aidr_gate.cli import main

    (tmp_path / "lists").mkdir()
    registry = tmp_path / "entities.yaml"
    registry.write_text(REGISTRY)
    env = make_gate_env(
        tmp_path, pack="us-embargo-baseline", registry=registry, middleware=SCREENING
    )
    # The list file is missing: the configuration names it, so validate refuses it by name.
    assert main(["validate", "--config", str(env.config)]) == 2
    assert "lists/csl.csv: no such file or directory" in capsys.readouterr().err
    (tmp_path / "lists" / "csl.csv").write_text(LIST)
    assert main(["validate", "--config", str(env.config)]) == 0
    assert "6 entities screened against lists 2026-11-30/sha256:" in capsys.readouterr().out
    # An ownership cycle is refused at load, naming the file and line: the gate would not start.
    registry.write_text(
        REGISTRY + "  loop-a: {headquarters: CY, owners: [{entity: loop-b, share: 60}]}\n"
        "  loop-b: {headquarters: CY, owners: [{entity: loop-a, share: 60}]}\n"
    )
    assert main(["validate", "--config", str(env.config)]) == 2
    err = capsys.readouterr().err
    assert re.search(
        rf"{re.escape(str(registry))}:\d+: entities\.loop-b\.owners: ownership cycle", err
    )
