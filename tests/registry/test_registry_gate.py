"""A database registry on the request path: the middleware under uvicorn in front of the model app,
the registry in SQLite behind the cache; entities resolved on a miss and cached, unknown ones
remembered, a revocation enforced without a reload, and an admitted stream cut when it comes."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from aidr_gate.asgi.middleware import AIDRGateMiddleware
from aidr_gate.cli import main as cli_main
from aidr_gate.demo.model_server import build_model_app
from aidr_gate.errors import ConfigError
from aidr_gate.runtime import Runtime
from support.environment import EXAMPLES
from support.gate_env import IP, GateEnv, make_gate_env
from support.jwks_server import jwks_of, rsa_key
from support.postgres_server import wait_until
from support.registry_gate_support import (
    StreamWatch,
    database_gate_env,
    import_examples,
    sqlite_exec,
)
from support.screening_support import CSL_CURRENT
from support.servers import ThreadedServer, openai_client, serve
from support.sidecar_support import model_server, sidecar


@pytest.fixture
def sqlite_gate(tmp_path: Path) -> Iterator[tuple[GateEnv, Path, Runtime, ThreadedServer]]:
    """The middleware with a SQLite registry, in front of the model app under uvicorn."""
    db = tmp_path / "registry.db"
    import_examples(f"sqlite:{db}")
    env = database_gate_env(tmp_path, f"sqlite:{db}")
    runtime = Runtime.from_config(str(env.config))
    runtime.telemetry.counting = True  # as with an exporter configured
    app = build_model_app(token_delay=0.3)
    app.add_middleware(AIDRGateMiddleware, runtime=runtime)
    with serve(app, proxy_headers=False) as server:
        yield env, db, runtime, server


def _client(env: GateEnv, server: ThreadedServer, entity: str, country: str) -> openai.OpenAI:
    return openai_client(f"{server.url}/v1", env.token(entity), IP[country])


def _ask(client: openai.OpenAI, model: str = "aurora-frontier") -> openai.APIStatusError | None:
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    except openai.APIStatusError as exc:
        return exc
    return None


def test_entities_are_read_once_then_served_from_the_cache(
    sqlite_gate: tuple[GateEnv, Path, Runtime, ThreadedServer],
) -> None:
    env, _, runtime, server = sqlite_gate
    assert runtime.registry is not None
    merlion = _client(env, server, "merlion-sg", "SG")
    for _ in range(3):
        assert _ask(merlion) is None
    unknown = openai_client(f"{server.url}/v1", env.token("nobody-zz"), IP["US"])
    for _ in range(3):
        denied = _ask(unknown)
        assert denied is not None and denied.status_code == 403
        assert denied.body["code"] == "HEADQUARTERS_UNKNOWN"  # type: ignore[index]
    health = runtime.registry.health()
    # One store read each: the entity is cached, the unknown id negative-cached.
    assert health.misses == 2 and health.entries >= 1 and health.negatives == 1
    assert health.hits >= 4
    records = [r["aidr"] for r in env.audit_records()]
    revisions = {r["registry"]["revision"] for r in records}
    assert revisions == {runtime.registry.revision} and runtime.registry.revision


def test_a_revocation_in_the_database_cuts_the_stream_and_denies_the_next_request(
    sqlite_gate: tuple[GateEnv, Path, Runtime, ThreadedServer],
) -> None:
    env, db, runtime, server = sqlite_gate
    watch = StreamWatch(_client(env, server, "merlion-sg", "SG")).start()
    before = runtime.registry.revision if runtime.registry else None
    sqlite_exec(db, "UPDATE agreements SET status = 'revoked' WHERE id = 'SA-2025-014'")
    watch.wait()
    assert not watch.finished and watch.chunks > 0
    assert isinstance(watch.error, openai.APIError) and watch.code == "ACCESS_REVOKED"
    denied = _ask(_client(env, server, "merlion-sg", "SG"))
    assert denied is not None and denied.status_code == 403
    assert wait_until(lambda: len(env.audit_records()) >= 3)
    records = [r["aidr"] for r in env.audit_records()]
    admitted = next(r for r in records if r["decision"]["id"] == watch.decision_id)
    cut = next(r for r in records if (r["request"] or {}).get("cut_of") == watch.decision_id)
    assert admitted["request"]["ending"] == "cut" and admitted["registry"]["revision"] == before
    assert cut["request"]["ending"] == "cut"
    assert cut["decision"]["reasons"][0] == "ACCESS_REVOKED" and cut["decision"]["effect"] == "deny"
    assert cut["agreement"]["status"] == "revoked"
    assert cut["registry"]["revision"] != before
    assert runtime.streams.cuts == 1 and len(runtime.streams) == 0
    counted = {
        labels: value
        for c in runtime.telemetry.collect()
        if c.spec.name == "aidr_gate.streams.cut"
        for labels, value in c.points
    }
    assert counted == {(cut["decision"]["reasons"][1],): 1}


def test_a_change_that_still_allows_leaves_the_stream_alone(
    sqlite_gate: tuple[GateEnv, Path, Runtime, ThreadedServer],
) -> None:
    env, db, runtime, server = sqlite_gate
    watch = StreamWatch(_client(env, server, "merlion-sg", "SG")).start()
    sqlite_exec(db, "UPDATE entities SET name = 'Merlion Data Pte Ltd' WHERE id = 'merlion-sg'")
    assert wait_until(
        lambda: runtime.registry is not None and runtime.registry.health().misses >= 1
    )
    watch.wait(30)
    assert watch.finished and watch.error is None and runtime.streams.cuts == 0


def test_unreadable_sqlite_file_denies_with_registry_unavailable(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    sqlite3.connect(db).close()  # a file with no schema: the store cannot open
    env = database_gate_env(tmp_path, f"sqlite:{db}")
    runtime = Runtime.from_config(str(env.config))
    app = build_model_app(token_delay=0.3)
    app.add_middleware(AIDRGateMiddleware, runtime=runtime)
    with serve(app, proxy_headers=False) as server:
        denied = _ask(_client(env, server, "lab-us", "US"))
        assert denied is not None and denied.status_code == 503
        assert denied.body["code"] == "REGISTRY_UNAVAILABLE"  # type: ignore[index]
        assert runtime.registry is not None and not runtime.registry.health().ready


def _cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = cli_main(list(args))
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return code, out


def test_check_and_replay_read_any_store(
    sqlite_gate: tuple[GateEnv, Path, Runtime, ThreadedServer],
    capsys: pytest.CaptureFixture[str],
) -> None:
    env, db, runtime, server = sqlite_gate
    for _ in range(3):
        assert _ask(_client(env, server, "merlion-sg", "SG")) is None
    decided_on = runtime.registry.revision if runtime.registry else None
    assert decided_on
    flags = ("--entity", "merlion-sg", "--country", "SG", "--model", "aurora-frontier")
    # The configured store (SQLite, through the cache), then the same store named on the line.
    code, decision = _cli_json(capsys, "check", "--config", str(env.config), "--compact", *flags)
    assert code == 0 and decision["registry"] == {"revision": decided_on}
    sqlite_exec(db, "UPDATE agreements SET status = 'revoked' WHERE id = 'SA-2025-014'")
    code, decision = _cli_json(capsys, "check", "--registry", f"sqlite:{db}", "--compact", *flags)
    assert code == 1 and decision["reasons"][0] == "NO_VALID_AGREEMENT"
    now = decision["registry"]["revision"]
    assert now != decided_on
    # A file store named with --registry is read whole, with the file's revision.
    code, decision = _cli_json(
        capsys, "check", "--registry", str(EXAMPLES / "entities.yaml"), "--compact", *flags
    )
    assert code == 0 and str(decision["registry"]["revision"]).startswith("sha256:")
    # replay re-decides the records with the store as it is now, and says on which revisions
    # they were decided.
    assert wait_until(lambda: len(env.audit_records()) >= 3)
    code = cli_main(
        [
            "replay",
            "--pack",
            "aidr-2025-01",
            "--registry",
            f"sqlite:{db}",
            "--json",
            "-",
            "--quiet",
            str(env.audit_dir),
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert report["registry_revision"] == now
    assert {r["revision"] for r in report["recorded_registries"]} == {decided_on}
    assert report["flips"]["by_kind"].get("allow->deny", 0) >= 3
    assert code in (0, 1)


def test_the_record_of_a_cut_keeps_to_the_record_caps(
    sqlite_gate: tuple[GateEnv, Path, Runtime, ThreadedServer],
) -> None:
    """The cut's own record is rendered like every record: an oversized allow-listed header is
    cut to ``limits.max_recorded_value`` with the marker, and counted."""
    env, db, runtime, server = sqlite_gate
    client = _client(env, server, "merlion-sg", "SG").with_options(
        default_headers={"User-Agent": "a" * 5000}
    )
    watch = StreamWatch(client).start()
    sqlite_exec(db, "UPDATE agreements SET status = 'revoked' WHERE id = 'SA-2025-014'")
    watch.wait()
    assert watch.code == "ACCESS_REVOKED"

    def cut() -> dict[str, Any] | None:
        for r in env.audit_records():
            if (r["aidr"]["request"] or {}).get("cut_of") == watch.decision_id:
                return r
        return None

    assert wait_until(lambda: cut() is not None, 10)
    record = cut()
    assert record is not None
    capped = "a" * runtime.limits.max_recorded_value + "...[TRUNCATED]"
    assert record["user_agent"]["original"] == capped
    assert len(json.dumps(record)) < runtime.limits.max_record_bytes + 8192

    def truncated() -> int:
        counted = {
            labels: value
            for c in runtime.telemetry.collect()
            if c.spec.name == "aidr_gate.audit.records.truncated"
            for labels, value in c.points
        }
        return int(counted.get(("value",), 0))

    # The admitted request's record (written when its task ends) and the cut's.
    assert wait_until(lambda: truncated() >= 2, 10)


def test_a_reloaded_registry_file_cuts_the_stream_it_now_denies(tmp_path: Path) -> None:
    registry = tmp_path / "entities.yaml"
    registry.write_text((EXAMPLES / "entities.yaml").read_text())
    env = make_gate_env(tmp_path, registry=registry)
    runtime = Runtime.from_config(str(env.config))  # the policy files are polled every 2 s
    app = build_model_app(token_delay=0.3)
    app.add_middleware(AIDRGateMiddleware, runtime=runtime)
    with serve(app, proxy_headers=False) as server:
        watch = StreamWatch(_client(env, server, "merlion-sg", "SG")).start()
        before = registry.read_text()
        text = before.replace(
            "SA-2025-014\n        type: security-agreement\n        status: active",
            "SA-2025-014\n        type: security-agreement\n        status: revoked",
        )
        assert text != before
        registry.write_text(text)
        watch.wait(20)
        assert watch.code == "ACCESS_REVOKED" and not watch.finished
        assert runtime.streams.cuts == 1


def test_a_listing_names_what_the_database_entity_may_use(
    sqlite_gate: tuple[GateEnv, Path, Runtime, ThreadedServer],
) -> None:
    env, db, _, server = sqlite_gate
    listed = {m.id for m in _client(env, server, "merlion-sg", "SG").models.list()}
    assert "aurora-frontier" in listed
    sqlite_exec(db, "UPDATE entities SET headquarters = 'CN' WHERE id = 'merlion-sg'")
    assert wait_until(
        lambda: (
            "aurora-frontier"
            not in {m.id for m in _client(env, server, "merlion-sg", "SG").models.list()}
        ),
        10,
    )


def test_a_removed_key_cuts_the_streams_its_tokens_opened(tmp_path: Path) -> None:
    """Through ``aidr-gate serve``: the key file rotated to another key only, then SIGHUP."""
    env = make_gate_env(tmp_path)
    with (
        model_server(tmp_path, token_delay=0.3) as upstream,
        sidecar(env.root, env.config, upstream.url) as gate,
    ):
        client = openai_client(f"{gate.url}/v1", env.token("lab-us"), IP["US"])
        watch = StreamWatch(client).start()
        (tmp_path / "jwks.json").write_text(json.dumps(jwks_of(rsa_key("next-key"))))
        gate.signal(signal.SIGHUP)
        watch.wait(20)
        assert watch.code == "ACCESS_REVOKED" and not watch.finished

        def cut_records() -> list[dict[str, Any]]:
            return [
                r["aidr"]
                for r in env.audit_records()
                if (r["aidr"]["request"] or {}).get("cut_of") == watch.decision_id
            ]

        assert wait_until(lambda: len(cut_records()) == 1, 10)
        assert cut_records()[0]["decision"]["reasons"] == ["ACCESS_REVOKED", "TOKEN_KEY_UNKNOWN"]


def test_an_agreement_that_expires_mid_stream_cuts_it_then(
    sqlite_gate: tuple[GateEnv, Path, Runtime, ThreadedServer],
) -> None:
    env, db, runtime, server = sqlite_gate
    ends = time.time() + 2.0
    sqlite_exec(db, "UPDATE agreements SET valid_until = ? WHERE id = 'SA-2025-014'", ends)
    watch = StreamWatch(_client(env, server, "merlion-sg", "SG")).start()
    watch.wait(20)
    assert watch.code == "ACCESS_REVOKED" and not watch.finished
    assert time.time() >= ends  # cut when the window closed, with no change to the registry
    assert runtime.streams.cuts == 1


def test_the_sidecar_on_sqlite_cuts_and_denies(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    import_examples(f"sqlite:{db}")
    env = database_gate_env(tmp_path, f"sqlite:{db}")
    with (
        model_server(tmp_path, token_delay=0.3) as upstream,
        sidecar(env.root, env.config, upstream.url) as gate,
    ):
        client = openai_client(f"{gate.url}/v1", env.token("merlion-sg"), IP["SG"])
        watch = StreamWatch(client).start()
        sqlite_exec(db, "UPDATE agreements SET status = 'suspended' WHERE id = 'SA-2025-014'")
        watch.wait()
        assert watch.code == "ACCESS_REVOKED" and not watch.finished
        denied = _ask(client)
        assert denied is not None and denied.body["code"] == "NO_VALID_AGREEMENT"  # type: ignore[index]
        # The upstream was told: its stream was cancelled, not run to the end.
        stats = httpx.get(f"{upstream.url}/demo/stats").json()
        assert stats["streams_cancelled"] >= 1


def test_an_agreement_shortened_mid_stream_cuts_it_when_the_new_window_closes(
    sqlite_gate: tuple[GateEnv, Path, Runtime, ThreadedServer],
) -> None:
    env, db, runtime, server = sqlite_gate
    watch = StreamWatch(_client(env, server, "merlion-sg", "SG")).start()
    ends = time.time() + 2.0  # still valid when the change arrives, closed before the stream ends
    sqlite_exec(db, "UPDATE agreements SET valid_until = ? WHERE id = 'SA-2025-014'", ends)
    watch.wait(20)
    assert watch.code == "ACCESS_REVOKED" and not watch.finished
    assert time.time() >= ends and runtime.streams.cuts == 1


def test_a_reload_keeps_the_store_it_started_on(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    import_examples(f"sqlite:{db}")
    env = database_gate_env(tmp_path, f"sqlite:{db}")
    original = env.config.read_text()

    async def run() -> None:
        runtime = Runtime.from_config(str(env.config))
        await runtime.start()
        try:
            env.config.write_text(original.replace(f"sqlite:{db}", f"sqlite:{tmp_path / 'o.db'}"))
            report = await runtime.reload()
            # Restart-only, like every such setting: the rest applies, the store keeps running.
            assert report.ok and report.restart_pending == ("registry.store",)
            assert "needs a restart" in report.detail
            assert runtime.registry is not None and runtime.registry.health().state == "ready"
            assert runtime.config is not None and runtime.config.registry_settings is not None
            assert runtime.config.registry_settings.store == f"sqlite:{db}"
            # What the stream book does is not the store: it is taken on reload.
            env.config.write_text(
                original.replace("negative_ttl: 30\n", "negative_ttl: 30\n  cut_streams: false\n")
            )
            report = await runtime.reload()
            assert report.ok and runtime.streams.enabled is False
        finally:
            await runtime.close()

    asyncio.run(run())


def test_screening_a_database_registry_is_refused_at_load(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    import_examples(f"sqlite:{db}")
    env = database_gate_env(tmp_path, f"sqlite:{db}")
    lists = f"screening:\n  lists: [{CSL_CURRENT}]\n  list_date: 2026-11-30\n"
    env.config.write_text(env.config.read_text() + lists)
    with pytest.raises(ConfigError, match="screening a registry held in a database"):
        Runtime.from_config(str(env.config))
