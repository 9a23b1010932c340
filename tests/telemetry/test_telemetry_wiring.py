"""The ``telemetry:`` section wired end to end, from the configuration file alone.

A real Prometheus (Debian's package) scrapes a real ``aidr-gate serve`` process on its metrics
port of its own and a middleware app under a real uvicorn that answers ``/metrics`` on its main
port; real tokens, GeoIP files written at test time, the demo model server as the upstream. The
series Prometheus returns are the traffic the test sent: decisions by effect and reason, the
upstream's statuses, readiness by check, reloads by component and a restart-only change. OTLP goes
to a local receiver decoding the protobuf payloads. ``validate`` and ``serve`` refuse a bad section,
and one that asks for an exporter the install lacks, with the same problem.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import httpx
import pytest

from aidr_gate import AIDRGateMiddleware, Runtime
from aidr_gate.cli import main
from aidr_gate.demo.model_server import build_model_app
from aidr_gate.settings.loader import load_config
from aidr_gate.sidecar.app import build_sidecar
from support.environment import EXAMPLES
from support.gate_env import IP, GateEnv, make_gate_env
from support.otlp_receiver import Receiver, attrs, last_metrics, spans
from support.prometheus_server import PrometheusServer
from support.servers import free_port, serve
from support.sidecar_support import model_server, run_cli, sidecar
from support.telemetry_support import samples

CHAT = {"model": "aurora-frontier", "messages": [{"role": "user", "content": "hi"}]}
# (entity, network country, answer): allowed from the US, denied from Sweden.
ALLOWED = ("lab-us", "US", 200)
DENIED = ("nordlys-se", "SE", 451)


def gate_with(root: Path, telemetry: str) -> GateEnv:
    """A gate on disk (its own copy of the example registry) with *telemetry* appended."""
    root.mkdir(parents=True, exist_ok=True)
    registry = root / "entities.yaml"
    shutil.copy(EXAMPLES / "entities.yaml", registry)
    env = make_gate_env(root, registry=registry)
    env.config.write_text(env.config.read_text() + textwrap.dedent(telemetry))
    return env


def ask(
    client: httpx.Client, env: GateEnv, case: tuple[str, str, int], **headers: str
) -> httpx.Response:
    """One chat completion as *case*'s entity from its country; its answer is the expected one."""
    entity, country, status = case
    answer = client.post(
        "/v1/chat/completions",
        json=CHAT,
        headers={
            "authorization": f"Bearer {env.token(entity)}",
            "x-forwarded-for": IP[country],
            **headers,
        },
    )
    assert answer.status_code == status, answer.text
    return answer


def reason_of(answer: httpx.Response) -> str:
    """The reason code of a deny answer."""
    code: str = answer.json()["error"]["code"]
    return code


def value(prometheus: PrometheusServer, expr: str) -> float:
    """The one value of an instant query that returns one series."""
    series = prometheus.query(expr)
    assert len(series) == 1, (expr, series)
    return float(series[0]["value"][1])


@pytest.mark.timeout(240)
def test_prometheus_scrapes_the_sidecar_and_a_middleware_app_configured_by_their_files(
    tmp_path: Path,
) -> None:
    metrics_port = free_port()
    side = gate_with(tmp_path / "sidecar", f"telemetry:\n  prometheus: {{port: {metrics_port}}}\n")
    hosted = gate_with(tmp_path / "hosted", "telemetry:\n  prometheus: {on_main_port: true}\n")
    app = build_model_app(token_delay=0)
    app.add_middleware(AIDRGateMiddleware, config=str(hosted.config))
    with (
        model_server(tmp_path) as upstream,
        sidecar(tmp_path, side.config, upstream.url) as gate,
        serve(app) as host,
    ):
        side_at = f'instance="127.0.0.1:{metrics_port}"'
        host_at = f'instance="127.0.0.1:{host.port}"'
        with (
            httpx.Client(base_url=gate.url, timeout=10) as to_sidecar,
            httpx.Client(base_url=host.url, timeout=10) as to_host,
        ):
            sidecar_denials = Counter(reason_of(ask(to_sidecar, side, DENIED)) for _ in range(2))
            for _ in range(3):
                ask(to_sidecar, side, ALLOWED)
            ask(to_sidecar, side, (*ALLOWED[:2], 500), **{"x-demo-status": "500"})
            host_denials = Counter([reason_of(ask(to_host, hosted, DENIED))])
            for _ in range(2):
                ask(to_host, hosted, ALLOWED)
            # The middleware answers its path itself on the main port, without a token.
            own = to_host.get("/metrics")
            assert own.status_code == 200 and "aidr_gate_decisions_total" in own.text
            with PrometheusServer(
                tmp_path / "prometheus",
                [f"127.0.0.1:{metrics_port}", f"127.0.0.1:{host.port}"],
            ) as prometheus:
                for where in (side_at, host_at):
                    prometheus.wait_until(f"up{{{where}}} == 1")
                for where, denials, allowed in (
                    (side_at, sidecar_denials, 4),
                    (host_at, host_denials, 2),
                ):
                    query = (
                        f"sum by (aidr_effect, aidr_reason) (aidr_gate_decisions_total{{{where}}})"
                    )
                    got = {
                        (s["metric"]["aidr_effect"], s["metric"]["aidr_reason"]): float(
                            s["value"][1]
                        )
                        for s in prometheus.wait_until(query)
                    }
                    assert {k: v for k, v in got.items() if k[0] == "deny"} == {
                        ("deny", reason): float(n) for reason, n in denials.items()
                    }, where
                    assert sum(v for k, v in got.items() if k[0] == "allow") == allowed, where
                statuses = {
                    s["metric"]["http_response_status_code"]: float(s["value"][1])
                    for s in prometheus.query(f"aidr_gate_upstream_responses_total{{{side_at}}}")
                }
                assert statuses == {"200": 3.0, "500": 1.0}
                assert (
                    value(prometheus, f"aidr_gate_upstream_duration_seconds_count{{{side_at}}}")
                    == 4
                )
                # Readiness by check: the sidecar probes its upstream; the middleware has none.
                prometheus.wait_until(
                    f'aidr_gate_readiness_check{{{side_at},aidr_check="upstream"}} == 1'
                )
                assert value(prometheus, f"aidr_gate_ready{{{side_at}}}") == 1
                assert value(prometheus, f"aidr_gate_ready{{{host_at}}}") == 1
                for where, records in ((side_at, 6), (host_at, 3)):
                    written = f"aidr_gate_audit_records_written_total{{{where}}}"
                    assert value(prometheus, written) >= records
                    loaded = f'aidr_gate_keys_loaded{{{where},aidr_keys_source="file"}}'
                    assert value(prometheus, loaded) == 1
                    age = f'aidr_gate_geoip_build_age_seconds{{{where},aidr_geoip_role="country"}}'
                    assert value(prometheus, age) > 0
                # Every request the upstream saw is one the gate let through: no scrape reached it.
                seen = httpx.get(upstream.url + "/demo/stats", timeout=5).json()
                assert seen["requests"] == 4

                # A restart-only change (the telemetry section's) is reloaded as pending, not
                # applied; a trusted proxy added beside it is applied in place.
                text = side.config.read_text()
                assert text.rstrip().endswith("}") and "\ntelemetry:\n" in text
                side.config.write_text(
                    text.replace("trusted_proxies: [", "trusted_proxies: [10.0.0.0/8, ")
                    + "  max_series: 3000\n"
                )
                prometheus.wait_until(f"aidr_gate_reload_restart_pending{{{side_at}}} == 1")
                ok = 'aidr_component="{}",aidr_result="ok"'
                for component in ("policy", "registry", "catalog"):
                    prometheus.wait_until(
                        f"aidr_gate_reloads_total{{{side_at},{ok.format(component)}}} >= 1"
                    )
                # A broken registry file is refused (the last good one serves), counted as such.
                (tmp_path / "sidecar" / "entities.yaml").write_text("entities: [unclosed\n")
                failed = 'aidr_component="registry",aidr_result="failed"'
                prometheus.wait_until(f"aidr_gate_reloads_total{{{side_at},{failed}}} >= 1")
                # SIGHUP also reloads the key file and the GeoIP databases.
                gate.signal(signal.SIGHUP)
                for component in ("keys", "geoip"):
                    prometheus.wait_until(
                        f"aidr_gate_reloads_total{{{side_at},{ok.format(component)}}} >= 1"
                    )
                ask(to_sidecar, side, ALLOWED)  # still serving, with the last good registry
        assert gate.stop() == 0
    with socket.socket() as probe:  # the metrics listener closed with the process
        assert probe.connect_ex(("127.0.0.1", metrics_port)) != 0


def test_the_sidecar_answers_the_scrape_on_its_main_port_and_never_forwards_it(
    tmp_path: Path,
) -> None:
    """``on_main_port``: the path (exempt from the gate by default) is the gate's own answer, in
    both exposition formats; the upstream sees the gated request only."""
    env = gate_with(tmp_path, "telemetry:\n  prometheus: {on_main_port: true}\n")
    upstream_app = build_model_app(token_delay=0, faults=True)
    with serve(upstream_app) as upstream:
        app = build_sidecar(load_config(env.config), upstream.url)
        with serve(app) as gate, httpx.Client(base_url=gate.url, timeout=10) as client:
            ask(client, env, ALLOWED)
            text = client.get("/metrics")
            open_metrics = client.get(
                "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
            )
            assert client.post("/metrics").status_code == 405
        stats = httpx.get(upstream.url + "/demo/stats", timeout=5).json()
    assert stats["requests"] == 1
    assert text.status_code == 200
    assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
    assert open_metrics.text.endswith("# EOF\n")
    got = samples(text.text)
    assert (
        got[
            "aidr_gate_upstream_responses_total",
            (("error_type", ""), ("http_response_status_code", "200")),
        ]
        == 1
    )


def test_a_middleware_host_gets_the_listener_of_its_own_for_its_lifespan(tmp_path: Path) -> None:
    """Without ``on_main_port`` the middleware's runtime listens on ``prometheus.port`` as the
    sidecar does, from the host's lifespan startup to its shutdown; the main port's ``/metrics``
    stays the app's (exempt from the gate by default, and this app has none)."""
    port = free_port()
    env = gate_with(tmp_path, f"telemetry:\n  prometheus: {{port: {port}}}\n")
    app = build_model_app(token_delay=0)
    app.add_middleware(AIDRGateMiddleware, config=str(env.config))
    with serve(app) as host, httpx.Client(base_url=host.url, timeout=10) as client:
        ask(client, env, DENIED)
        scrape = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert client.get("/metrics").status_code == 404  # the app's answer
    assert scrape.status_code == 200
    decided = {
        dict(labels)["aidr_effect"]: n
        for (name, labels), n in samples(scrape.text).items()
        if name == "aidr_gate_decisions_total"
    }
    assert decided == {"deny": 1}
    with socket.socket() as probe:  # closed with the host's lifespan shutdown
        assert probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.timeout(90)
def test_otlp_from_the_configuration_gets_spans_and_counters_of_served_requests(
    tmp_path: Path,
) -> None:
    with Receiver() as receiver:
        env = gate_with(
            tmp_path,
            f"""\
            telemetry:
              otlp:
                endpoint: {receiver.url}
                interval: 0.2
                timeout: 0.2
                resource: {{service.name: hosted-gate}}
            """,
        )
        app = build_model_app(token_delay=0)
        app.add_middleware(AIDRGateMiddleware, config=str(env.config))
        with serve(app) as host, httpx.Client(base_url=host.url, timeout=10) as client:
            answers = [ask(client, env, ALLOWED), ask(client, env, DENIED)]
        # The server's lifespan shutdown closed the runtime: the last export and the span batch.
    ids = {a.headers["x-aidr-decision-id"]: a for a in answers}
    decided = {attrs(s.attributes)["aidr.decision.id"]: s for s in spans(receiver)}
    assert set(decided) == set(ids)
    for decision_id, answer in ids.items():
        effect = attrs(decided[decision_id].attributes)["aidr.effect"]
        assert effect == ("allow" if answer.status_code == 200 else "deny")
    counted = Counter(
        attrs(p.attributes)["aidr.effect"]
        for p in last_metrics(receiver)["aidr_gate.decisions"].sum.data_points
        for _ in range(int(p.as_int or p.as_double))
    )
    assert counted == Counter({"allow": 1, "deny": 1})
    resource = attrs(receiver.metrics[-1].resource_metrics[0].resource.attributes)
    assert resource["service.name"] == "hosted-gate"


def test_validate_and_serve_refuse_a_bad_telemetry_section_alike(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = gate_with(tmp_path, "telemetry:\n  prometheus: {prot: 9464}\n  max_series: 1\n")
    assert main(["validate", "--config", str(env.config)]) == 2
    validated = capsys.readouterr().err
    assert main(["serve", "--config", str(env.config), "--upstream", "http://127.0.0.1:9"]) == 2
    served = capsys.readouterr().err
    for problem in ("telemetry.prometheus.prot", "telemetry.max_series: must be at least 10"):
        assert problem in validated and problem in served
    assert f"{env.config}:" in validated


# The extra's modules made unimportable, as in an install without aidr-gate[telemetry].
WITHOUT_EXTRA = (
    "import sys\n"
    "for name in ('prometheus_client', 'opentelemetry.sdk', 'opentelemetry.exporter'):\n"
    "    sys.modules[name] = None\n"
    "from aidr_gate.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.mark.parametrize("section", ["prometheus: true", "otlp: {endpoint: 'http://127.0.0.1:9'}"])
def test_an_exporter_without_the_extra_is_a_validate_error(tmp_path: Path, section: str) -> None:
    env = gate_with(tmp_path, f"telemetry:\n  {section}\n")
    for command in (
        ["validate", "--config", str(env.config)],
        ["serve", "--config", str(env.config), "--upstream", "http://127.0.0.1:9"],
    ):
        done = subprocess.run(
            [sys.executable, "-c", WITHOUT_EXTRA, *command],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        key = section.split(":")[0]
        assert f"telemetry.{key}: needs" in done.stderr
        assert "pip install 'aidr-gate[telemetry]'" in done.stderr
        assert "Traceback" not in done.stderr
    assert main(["validate", "--config", str(env.config)]) == 0  # here the extra is installed


def test_a_metrics_port_in_use_stops_serve_with_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = gate_with(tmp_path, f"telemetry:\n  prometheus: {{port: {port}}}\n")
        done = run_cli(
            "serve", "--config", str(env.config), "--upstream", "http://127.0.0.1:9",
            "--port", str(free_port()),
        )  # fmt: skip
    assert done.returncode == 1
    assert f"the metrics listener cannot bind 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def reloads(runtime: Runtime) -> dict[tuple[str, str], float]:
    """The reload counters now, by (component, result)."""
    return {
        (str(labels[0]), str(labels[1])): value
        for labels, value in runtime.telemetry.points("aidr_gate.reloads")
    }


def test_reloads_are_counted_by_component_and_result(tmp_path: Path) -> None:
    """Real files broken one at a time: each refused reload is counted for the component it is in,
    and a good one for every component it read again."""
    env = gate_with(tmp_path, "telemetry:\n  prometheus: {on_main_port: true}\n")

    async def scenario() -> None:
        runtime = Runtime.from_config(str(env.config))
        await runtime.start()
        try:
            counts = Counter[tuple[str, str]]()
            assert set(reloads(runtime).values()) == {0.0}  # every series from the start
            assert (await runtime.reload()).ok
            counts.update([("policy", "ok"), ("registry", "ok"), ("catalog", "ok")])
            good = env.config.read_text()
            env.config.write_text(good.replace("mode: enforce", "mode: [enforce"))
            assert not (await runtime.reload()).ok
            counts["config", "failed"] += 1
            env.config.write_text(good.replace("pack: aidr-2025-01", "pack: aidr-1999-01"))
            assert not (await runtime.reload()).ok
            counts["policy", "failed"] += 1  # no such pack
            env.config.write_text(good)
            registry = tmp_path / "entities.yaml"
            kept = registry.read_text()
            registry.write_text("entities: [unclosed\n")
            assert not (await runtime.reload()).ok
            counts["registry", "failed"] += 1
            registry.write_text(kept)
            keys, country = tmp_path / "jwks.json", tmp_path / "country.mmdb"
            kept_keys, kept_country = keys.read_bytes(), country.read_bytes()
            keys.write_text("not a key set")
            country.write_bytes(b"not a database")
            # The configuration names both: its reload is refused, for identity and GeoIP; the
            # key file and the databases refuse their own reloads too, the last good ones kept.
            assert not (await runtime.reload_all()).ok
            counts.update([("identity", "failed"), ("geoip", "failed")])
            counts.update([("keys", "failed"), ("geoip", "failed")])  # the country database
            counts["geoip", "ok"] += 1  # the anonymous-IP one, reopened as SIGHUP does
            assert {k: v for k, v in reloads(runtime).items() if v} == dict(counts)
            keys.write_bytes(kept_keys)
            country.write_bytes(kept_country)
            assert runtime.telemetry.points("aidr_gate.reload.restart_pending") == [((), 0.0)]
            # Applied in place: a second algorithm.
            env.config.write_text(good.replace("algorithms: [RS256]", "algorithms: [RS256, ES256]"))
            assert (await runtime.reload()).ok
            counts.update([("policy", "ok"), ("registry", "ok"), ("catalog", "ok")])
            counts["identity", "ok"] += 1
            now = reloads(runtime)  # the key file's and databases' own watches may count too
            for component in ("policy", "registry", "catalog", "identity"):
                assert now[component, "ok"] == counts[component, "ok"], component
            assert runtime.telemetry.points("aidr_gate.reload.restart_pending") == [((), 0.0)]
            # Restart-only: the exporters' settings.
            env.config.write_text(good + "  max_series: 3000\n")
            assert (await runtime.reload()).ok
            assert runtime.telemetry.points("aidr_gate.reload.restart_pending") == [((), 1.0)]
            env.config.write_text(good)  # back as it started: nothing waits for a restart
            assert (await runtime.reload()).ok
            assert runtime.telemetry.points("aidr_gate.reload.restart_pending") == [((), 0.0)]
        finally:
            await runtime.close()

    asyncio.run(scenario())
