"""A fleet: two ``aidr-gate serve`` processes share one PostgreSQL registry (a real server started
here). Streams through both are cut when the agreement is revoked with SQL, both replicas deny the
next request, and every kind of change is in force on both without a reload; a database that
goes away is served from the cache until ``max_staleness``, then refused, then served again."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from aidr_gate.asgi.middleware import AIDRGateMiddleware
from aidr_gate.cli import main as cli_main
from aidr_gate.demo.model_server import build_model_app
from aidr_gate.runtime import Runtime
from aidr_gate.stores.postgres import PostgresStore
from support.gate_env import IP, GateEnv
from support.postgres_server import PostgresServer, postgres_server, wait_until
from support.registry_gate_support import StreamWatch, database_gate_env, import_examples
from support.servers import free_port, openai_client, serve
from support.sidecar_support import Process, model_server, sidecar

DSN_VARIABLE = "AIDR_TEST_REGISTRY_DSN"
_COUNTER = iter(range(1_000_000))


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the module."""
    with postgres_server() as running:
        yield running


@pytest.fixture(scope="module")
def database(server: PostgresServer) -> str:
    """A database holding the example registry; its name."""
    name = f"fleet{next(_COUNTER)}"
    url = server.create_database(name)
    import_examples(url)
    return name


@pytest.fixture(scope="module")
def fleet(
    server: PostgresServer, database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[GateEnv], list[Process]]]:
    """Two sidecars (each with its own audit chain) in front of one model server."""
    root = tmp_path_factory.mktemp("fleet")
    with pytest.MonkeyPatch.context() as patch:
        # The configuration names env:NAME: the connection string is not in the file.
        patch.setenv(DSN_VARIABLE, server.dsn(database))
        for i in (0, 1):
            (root / f"r{i}").mkdir()
        envs = [database_gate_env(root / f"r{i}", f"env:{DSN_VARIABLE}") for i in (0, 1)]
        with model_server(root, token_delay=0.3) as upstream:
            gates = [sidecar(env.root, env.config, upstream.url).start() for env in envs]
            try:
                yield envs, gates
            finally:
                for gate in gates:
                    gate.stop()


def _client(env: GateEnv, gate: Process, entity: str, country: str) -> openai.OpenAI:
    return openai_client(f"{gate.url}/v1", env.token(entity), IP[country])


def _code(env: GateEnv, gate: Process, entity: str, country: str) -> str:
    """``ok``, or the reason code the gate refused with."""
    try:
        _client(env, gate, entity, country).chat.completions.create(
            model="aurora-frontier", messages=[{"role": "user", "content": "hi"}]
        )
    except openai.APIStatusError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        return str(body.get("code"))
    return "ok"


def _everywhere(fleet: tuple[list[GateEnv], list[Process]], entity: str, country: str) -> set[str]:
    envs, gates = fleet
    return {_code(env, gate, entity, country) for env, gate in zip(envs, gates, strict=True)}


def test_a_revocation_ends_the_streams_on_both_replicas_and_both_deny(
    server: PostgresServer, database: str, fleet: tuple[list[GateEnv], list[Process]]
) -> None:
    envs, gates = fleet
    assert _everywhere(fleet, "merlion-sg", "SG") == {"ok"}
    watches = [
        StreamWatch(_client(env, gate, "merlion-sg", "SG")).start()
        for env, gate in zip(envs, gates, strict=True)
    ]
    server.psql(
        "UPDATE aidr_registry.agreements SET status = 'revoked' WHERE id = 'SA-2025-014'",
        database,
    )
    try:
        for watch in watches:
            watch.wait()
            assert not watch.finished and watch.chunks > 0
            assert watch.code == "ACCESS_REVOKED"
        assert _everywhere(fleet, "merlion-sg", "SG") == {"NO_VALID_AGREEMENT"}
        for env, watch in zip(envs, watches, strict=True):
            assert wait_until(
                lambda env=env, watch=watch: any(
                    (r["aidr"]["request"] or {}).get("cut_of") == watch.decision_id
                    for r in env.audit_records()
                ),
                10,
            )
    finally:
        server.psql(
            "UPDATE aidr_registry.agreements SET status = 'active' WHERE id = 'SA-2025-014'",
            database,
        )
    assert wait_until(lambda: _everywhere(fleet, "merlion-sg", "SG") == {"ok"}, 10)


# (entity, caller's country, the change, its undoing, the reason both replicas then give)
CHANGES = {
    "agreement-suspended": (
        "merlion-sg",
        "SG",
        "UPDATE aidr_registry.agreements SET status = 'suspended' WHERE id = 'SA-2025-014'",
        "UPDATE aidr_registry.agreements SET status = 'active' WHERE id = 'SA-2025-014'",
        "NO_VALID_AGREEMENT",
    ),
    "agreement-expired": (
        "merlion-sg",
        "SG",
        "UPDATE aidr_registry.agreements SET valid_from = now() - interval '30 days', "
        "valid_until = now() - interval '1 day' WHERE id = 'SA-2025-014'",
        "UPDATE aidr_registry.agreements SET valid_from = '2025-01-15', "
        "valid_until = '2027-01-15' WHERE id = 'SA-2025-014'",
        "NO_VALID_AGREEMENT",
    ),
    "agreement-narrowed": (
        "merlion-sg",
        "SG",
        "UPDATE aidr_registry.agreements SET countries = '{MY}' WHERE id = 'SA-2025-014'",
        "UPDATE aidr_registry.agreements SET countries = '{SG}' WHERE id = 'SA-2025-014'",
        "NO_VALID_AGREEMENT",
    ),
    "entity-denied": (
        "lab-us",
        "US",
        "UPDATE aidr_registry.entities SET denied = true, denied_reason = 'listed' "
        "WHERE id = 'lab-us'",
        "UPDATE aidr_registry.entities SET denied = false, denied_reason = NULL "
        "WHERE id = 'lab-us'",
        "ENTITY_DENIED",
    ),
    "headquarters-changed": (
        "lab-us",
        "US",
        "UPDATE aidr_registry.entities SET headquarters = 'CN' WHERE id = 'lab-us'",
        "UPDATE aidr_registry.entities SET headquarters = 'US' WHERE id = 'lab-us'",
        "TIER3_CONTROLLED_MODEL",
    ),
    "parent-changed": (
        "lab-us",
        "US",
        "UPDATE aidr_registry.entities SET parent = 'CN' WHERE id = 'lab-us'",
        "UPDATE aidr_registry.entities SET parent = NULL WHERE id = 'lab-us'",
        "TIER3_CONTROLLED_MODEL",
    ),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_every_kind_of_change_is_in_force_on_both_replicas(
    change: str,
    server: PostgresServer,
    database: str,
    fleet: tuple[list[GateEnv], list[Process]],
) -> None:
    entity, country, apply, undo, reason = CHANGES[change]
    assert _everywhere(fleet, entity, country) == {"ok"}  # cached on both now
    server.psql(apply, database)
    try:
        assert wait_until(lambda: _everywhere(fleet, entity, country) != {"ok"}, 10)
        assert _everywhere(fleet, entity, country) == {reason}
    finally:
        server.psql(undo, database)
    assert wait_until(lambda: _everywhere(fleet, entity, country) == {"ok"}, 10)


def test_readyz_names_the_registry_and_its_revision(
    fleet: tuple[list[GateEnv], list[Process]],
) -> None:
    _, gates = fleet
    for gate in gates:
        answer = httpx.get(f"{gate.url}/readyz").json()
        registry = answer["checks"]["registry"]
        assert registry["state"] == "ready" and registry["kind"] == "postgres"
        assert registry["revision"] and "password" not in str(registry)


def test_an_outage_serves_the_cache_until_max_staleness_then_refuses_then_recovers(
    tmp_path: Path,
) -> None:
    with postgres_server() as own:
        url = own.create_database("outage")
        import_examples(url)
        env = database_gate_env(tmp_path, url, max_staleness=3)
        with (
            model_server(tmp_path) as upstream,
            sidecar(env.root, env.config, upstream.url) as gate,
        ):
            assert _code(env, gate, "lab-us", "US") == "ok"  # cached
            own.stop()
            # Within max_staleness the cached entity is still served...
            assert _code(env, gate, "lab-us", "US") == "ok"
            # ...then refused, and /readyz says why.
            assert wait_until(
                lambda: _code(env, gate, "lab-us", "US") == "REGISTRY_UNAVAILABLE", 15
            )
            ready = httpx.get(f"{gate.url}/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["registry"]["state"] == "unavailable"
            own.start()
            assert wait_until(lambda: _code(env, gate, "lab-us", "US") == "ok", 20)
            assert httpx.get(f"{gate.url}/readyz").status_code == 200


def test_the_revision_in_the_records_is_the_database_revision(
    server: PostgresServer, database: str, fleet: tuple[list[GateEnv], list[Process]]
) -> None:
    envs, gates = fleet
    assert _code(envs[0], gates[0], "lab-us", "US") == "ok"
    store = PostgresStore(server.dsn(database))

    async def revision() -> str:
        await store.open()
        try:
            return await store.revision()
        finally:
            await store.close()

    now = asyncio.run(revision())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        last = envs[0].audit_records()[-1]["aidr"]
        if last["registry"]["revision"] == now:
            break
        time.sleep(0.05)
    assert last["registry"]["revision"] == now


def test_check_reads_the_entity_from_postgresql(
    server: PostgresServer,
    database: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(DSN_VARIABLE, server.dsn(database))
    flags = ("--entity", "lab-us", "--country", "US", "--model", "aurora-frontier", "--compact")
    for store in (server.dsn(database), f"env:{DSN_VARIABLE}"):
        assert cli_main(["check", "--registry", store, *flags]) == 0
        decision = json.loads(capsys.readouterr().out)
        assert decision["evidence"]["entity"]["known"] is True
        assert decision["registry"]["revision"]
    nowhere = f"postgresql://aidr@127.0.0.1:{free_port()}/registry"  # nothing listens there
    assert cli_main(["check", "--registry", nowhere, *flags]) == 1
    decision = json.loads(capsys.readouterr().out)
    assert decision["reasons"] == ["REGISTRY_UNAVAILABLE"]


def test_the_middleware_in_process_on_postgresql_cuts_and_denies(
    server: PostgresServer, tmp_path: Path
) -> None:
    name = f"inproc{next(_COUNTER)}"
    import_examples(server.create_database(name))
    env = database_gate_env(tmp_path, server.dsn(name))
    runtime = Runtime.from_config(str(env.config))
    app = build_model_app(token_delay=0.3)
    app.add_middleware(AIDRGateMiddleware, runtime=runtime)
    with serve(app, proxy_headers=False) as served:
        client = openai_client(f"{served.url}/v1", env.token("merlion-sg"), IP["SG"])
        watch = StreamWatch(client).start()
        server.psql(
            "UPDATE aidr_registry.agreements SET status = 'revoked' WHERE id = 'SA-2025-014'", name
        )
        watch.wait()
        assert watch.code == "ACCESS_REVOKED" and not watch.finished
        with pytest.raises(openai.PermissionDeniedError) as denied:
            client.chat.completions.create(
                model="aurora-frontier", messages=[{"role": "user", "content": "hi"}]
            )
        assert isinstance(denied.value.body, dict)
        assert denied.value.body["code"] == "NO_VALID_AGREEMENT"
        assert runtime.registry is not None and runtime.registry.health().kind == "postgres"
