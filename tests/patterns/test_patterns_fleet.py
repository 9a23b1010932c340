"""Two ``aidr-gate serve`` replicas sharing one real Redis: patterns seen across the fleet.

Realistic traffic through the openai SDK: a token hopping between three countries across both
replicas is flagged (and, for a controlled model, denied) on both within a second; one network
fronting many entities is flagged; ordinary traffic is not; Redis stopped mid-test degrades both
replicas to local counts, visibly (``/readyz`` detail, the ``patterns_degraded`` fact the pack
denies controlled models on), and they come back when Redis does, without a restart.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from aidr_gate.audit.reader import RecordReader
from support.environment import EXAMPLES
from support.gate_env import _ANONYMOUS, _NETWORKS, IP
from support.jwks_server import AUDIENCE, ISSUER, SigningKey, claims, jwks_of, rsa_key
from support.mmdb_files import write_anonymous_db, write_country_db
from support.redis_server import RedisServer, redis_server
from support.servers import openai_client
from support.sidecar_support import Process, model_server, sidecar

ENTITIES = [f"reseller-client-{i:02d}" for i in range(12)]
FLAG_WITHIN = 1.0  # seconds: the issue's bound for a pattern to show on every replica
PACK = """\
id: fleet-patterns
title: the example pattern rules, and no controlled model on one replica's counts alone
status: hypothetical
extends: {example}
rules:
  - id: patterns-degraded-controlled
    when: {{patterns_degraded: true, model_tier: [controlled]}}
    then: {{effect: deny, status: 403, reason: PATTERNS_DEGRADED}}
"""


@dataclass
class Fleet:
    """The shared pieces: keys, Redis, the upstream and two replicas with their audit folders."""

    key: SigningKey
    redis: RedisServer
    replicas: list[Process]
    audit_dirs: list[Path]

    def token(self, user: str, entity: str = "acme-us") -> str:
        return self.key.sign(claims(sub=user, org=entity))

    def client(self, replica: int, token: str, ip: str) -> openai.OpenAI:
        return openai_client(f"{self.replicas[replica].url}/v1", token, ip)

    def records(self, replica: int) -> list[dict[str, Any]]:
        reader = RecordReader()
        out = []
        for path in sorted(self.audit_dirs[replica].glob("*.jsonl*")):
            for line in path.read_bytes().splitlines():
                tree = reader.tree(line)
                if tree and "decision" in tree:
                    out.append(tree)
        return out


def _config(root: Path, audit: Path, redis_url: str) -> Path:
    registry = root / "entities.yaml"
    registry.write_text(
        "version: 1\nentities:\n  acme-us: {name: Acme (Tier 1), headquarters: US}\n"
        + "".join(f"  {e}: {{name: Client {e}, headquarters: US}}\n" for e in ENTITIES)
    )
    pack = root / "fleet-patterns.yaml"
    pack.write_text(PACK.format(example=EXAMPLES / "patterns.yaml"))
    config = root / f"config-{audit.name}.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            policy: {{pack: {pack}}}
            registry: {registry}
            catalog: {EXAMPLES / "models.yaml"}
            identity:
              issuer: {ISSUER}
              audience: {AUDIENCE}
              algorithms: [RS256]
              key_file: jwks.json
              entity_claim: org
            network:
              trusted_proxies: [127.0.0.0/8]
            geoip:
              country_database: country.mmdb
              anonymous_ip_database: anonymous.mmdb
            audit:
              directory: {audit}
              sinks:
                - {{type: file, path: {audit / "audit.jsonl"}}}
            patterns:
              windows: [1m]
              record: [origin_countries, network_entities]
              redis: {{url: "{redis_url}", interval: 0.1, timeout: 0.3, stale_after: 0.6}}
            """
        )
    )
    return config


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    key = rsa_key("fleet")
    (root / "jwks.json").write_text(json.dumps(jwks_of(key)))
    write_country_db(root / "country.mmdb", _NETWORKS)
    write_anonymous_db(root / "anonymous.mmdb", _ANONYMOUS)
    with redis_server() as redis, model_server(root, token_delay=0.0) as upstream:
        audit_dirs = [root / "audit-a", root / "audit-b"]
        configs = []
        for audit in audit_dirs:
            audit.mkdir()
            configs.append(_config(root, audit, redis.url))
        with (
            sidecar(root, configs[0], upstream.url) as a,
            sidecar(root, configs[1], upstream.url) as b,
        ):
            yield Fleet(key, redis, [a, b], audit_dirs)


def _ask(client: openai.OpenAI, model: str = "aurora-frontier") -> str:
    """The reason of a denied request, or ``allowed``."""
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    except openai.APIStatusError as exc:
        return str(exc.code)
    return "allowed"


def _readyz(process: Process) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(process.url + "/readyz", timeout=5).json()
    return body


def test_a_token_hopping_three_countries_is_denied_on_both_replicas(fleet: Fleet) -> None:
    token = fleet.token("alice")
    assert _ask(fleet.client(0, token, IP["DE"])) == "allowed"
    assert _ask(fleet.client(1, token, IP["SE"])) == "allowed"
    _ask(fleet.client(0, token, IP["US"]))  # the third country: denied here once B's SE is seen
    hopped = time.monotonic()
    verdicts = ["", ""]
    while time.monotonic() - hopped < FLAG_WITHIN * 3:
        verdicts = [_ask(fleet.client(r, token, IP["US"])) for r in (0, 1)]
        if verdicts == ["ORIGIN_VELOCITY", "ORIGIN_VELOCITY"]:
            break
        time.sleep(0.05)
    elapsed = time.monotonic() - hopped
    assert verdicts == ["ORIGIN_VELOCITY", "ORIGIN_VELOCITY"], verdicts
    assert elapsed <= FLAG_WITHIN, f"flagged on both replicas only after {elapsed:.2f} s"
    # An uncontrolled model is allowed, and the record says why it was flagged.
    logged_ids = []
    for replica in (0, 1):
        reply = fleet.client(replica, token, IP["US"]).chat.completions.with_raw_response.create(
            model="aurora-mini", messages=[{"role": "user", "content": "hi"}]
        )
        logged_ids.append(reply.headers["x-aidr-decision-id"])
    for replica in (0, 1):
        # Records reach the file in batches, in order: once this one is there, so are the denies.
        logged = _wait_record(fleet, replica, logged_ids[replica])
        assert logged["decision"]["effect"] == "log"
        assert logged["decision"]["reasons"] == ["ORIGIN_VELOCITY"]
        denied = [
            r
            for r in fleet.records(replica)
            if r["decision"]["reasons"] == ["ORIGIN_VELOCITY"] and r["decision"]["effect"] == "deny"
        ]
        assert denied, f"replica {replica} recorded no ORIGIN_VELOCITY deny"
        assert denied[-1]["signals"]["origin_countries_1m"] == 3
        assert denied[-1]["signals"]["patterns_degraded"] == 0


def _wait_record(fleet: Fleet, replica: int, decision_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for record in fleet.records(replica):
            if record["decision"]["id"] == decision_id:
                return record
        time.sleep(0.05)
    raise AssertionError(f"no record of {decision_id}")


def test_one_network_fronting_many_entities_is_flagged(fleet: Fleet) -> None:
    # Twelve organisations' tokens, all from one /24 (5.1.7.0/24: DE), spread over both replicas.
    for i, entity in enumerate(ENTITIES[:10]):
        client = fleet.client(i % 2, fleet.token("svc", entity), f"5.1.7.{i + 1}")
        assert _ask(client, "aurora-mini") == "allowed"
        time.sleep(0.03)
    time.sleep(0.3)  # both replicas have exchanged their view
    for replica in (0, 1):
        client = fleet.client(replica, fleet.token("svc", ENTITIES[10 + replica]), "5.1.7.50")
        reply = client.chat.completions.with_raw_response.create(
            model="aurora-mini", messages=[{"role": "user", "content": "hi"}]
        )
        record = _wait_record(fleet, replica, reply.headers["x-aidr-decision-id"])
        assert record["decision"]["effect"] == "log"
        assert record["decision"]["reasons"] == ["INTERMEDIARY_SUSPECTED"]
        assert record["signals"]["network_entities_1h"] >= 11


def test_ordinary_traffic_is_not_flagged(fleet: Fleet) -> None:
    token = fleet.token("bob")
    for i in range(20):
        assert _ask(fleet.client(i % 2, token, IP["US"])) == "allowed"
    deadline = time.monotonic() + 10
    bobs: list[dict[str, Any]] = []
    while len(bobs) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
        records = [r for replica in (0, 1) for r in fleet.records(replica)]
        bobs = [r for r in records if (r.get("identity") or {}).get("subject") == "bob"]
    assert len(bobs) == 20
    assert all(r["decision"]["reasons"] == ["ALLOWED"] for r in bobs)
    assert all(r["signals"]["origin_countries_1m"] == 1 for r in bobs)


def test_redis_stopped_degrades_visibly_and_recovers_without_restart(fleet: Fleet) -> None:
    token = fleet.token("carol")
    assert _ask(fleet.client(0, token, IP["US"])) == "allowed"
    assert all(_readyz(p)["checks"]["patterns"]["state"] == "shared" for p in fleet.replicas)
    fleet.redis.stop()
    try:
        deadline = time.monotonic() + 10
        states = []
        while time.monotonic() < deadline:
            states = [_readyz(p)["checks"]["patterns"] for p in fleet.replicas]
            if all(s["degraded"] for s in states):
                break
            time.sleep(0.1)
        assert all(s["state"] == "degraded" and s["degraded"] for s in states), states
        assert all(_readyz(p)["status"] == "ready" for p in fleet.replicas)  # degraded, serving
        # The pack says controlled models wait for the fleet's view; the rest carries on.
        assert _ask(fleet.client(0, token, IP["US"])) == "PATTERNS_DEGRADED"
        assert _ask(fleet.client(1, token, IP["US"]), "aurora-mini") == "allowed"
    finally:
        fleet.redis.start()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if all(not _readyz(p)["checks"]["patterns"]["degraded"] for p in fleet.replicas):
            break
        time.sleep(0.1)
    assert all(_readyz(p)["checks"]["patterns"]["state"] == "shared" for p in fleet.replicas)
    assert _ask(fleet.client(0, token, IP["US"])) == "allowed"
    assert _ask(fleet.client(1, token, IP["US"])) == "allowed"
    for process in fleet.replicas:
        assert process.proc is not None and process.proc.poll() is None  # never restarted
        assert "Traceback" not in process.output()
