"""The metric table and what reads it: the exposition (both formats, under a real uvicorn), bounded
labels, the observed sources, the host-SDK bridge, the README, and a core without the extra."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aidr_gate.cli import main
from aidr_gate.decision import Effect
from aidr_gate.facts import Identity, declared_origin
from aidr_gate.request.geo import MaxMindCountryResolver, OverrideCountryResolver, OverrideEntry
from aidr_gate.request.jwks import FileKeys, StaticKeys
from aidr_gate.request.keys import build_key_set
from aidr_gate.stores import FileStore, open_store, registry_view
from aidr_gate.stores.cache import CacheSettings, EntityCache
from aidr_gate.stores.sqlite import SqliteStore
from aidr_gate.telemetry import (
    METRICS,
    Kind,
    LabelSettings,
    PrometheusSettings,
    Telemetry,
    TelemetrySettings,
)
from aidr_gate.telemetry.prometheus import metrics_app
from aidr_gate.telemetry.table import BY_NAME, metrics_markdown
from support.environment import ROOT
from support.jwks_server import jwks_of, rsa_key
from support.mmdb_files import BUILD_EPOCH, write_country_db
from support.registry_support import until, write_yaml_registry
from support.servers import closed_after_test, serve
from support.telemetry_support import decisions, gate

PROMETHEUS = TelemetrySettings(prometheus=PrometheusSettings())
OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


def busy_telemetry(settings: TelemetrySettings = PROMETHEUS) -> Telemetry:
    """Telemetry that has recorded every kind of event and watches real objects."""
    telemetry = Telemetry(settings)
    for decision in decisions():
        telemetry.record(decision, 0.00004, "/v1/chat/completions")
    telemetry.reload("policy", ok=False)
    telemetry.restart_pending(2)
    telemetry.upstream(200, 0.2, None)
    telemetry.upstream(None, 5.0, "UPSTREAM_TIMEOUT")
    telemetry.stream_cut("ACCESS_REVOKED")
    telemetry.truncated("value")
    keys = StaticKeys(build_key_set(jwks_of(rsa_key()), ["RS256"], source="test"))
    telemetry.watch_keys(lambda: keys)
    telemetry.watch_readiness(lambda: {"keys": True, "upstream": False})
    registry = registry_view(FileStore(str(ROOT / "policies" / "examples" / "entities.yaml")))
    telemetry.watch_registry(lambda: registry)  # not started: the "starting" state
    return telemetry


def families(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Parsed exposition: family name -> (labels, value) of every sample."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        out.setdefault(family.name, []).extend((s.labels, s.value) for s in family.samples)
    return out


def exposed(telemetry: Telemetry) -> str:
    """The text exposition, as a scraper without an Accept header gets it (in process)."""
    with serve(metrics_app(telemetry, path="/metrics")) as server:
        client = closed_after_test(httpx.Client(base_url=server.url))
        return client.get("/metrics").text


# -- the table --------------------------------------------------------------------------------


def test_the_table_is_well_formed() -> None:
    names = [spec.name for spec in METRICS]
    assert len(names) == len(set(names)) == len(BY_NAME)
    for spec in METRICS:
        assert re.fullmatch(r"aidr_gate(\.[a-z_]+)+", spec.name), spec.name
        assert re.fullmatch(r"aidr_gate_[a-z_]+", spec.prometheus_name), spec
        assert not spec.prometheus_name.endswith("_total")
        assert spec.unit in ("s", "By", "") or re.fullmatch(r"\{[a-z]+\}", spec.unit), spec
        assert spec.help and not spec.help[0].islower() and not spec.help.endswith(".")
        assert spec.kind is not Kind.HISTOGRAM or list(spec.buckets) == sorted(spec.buckets)
        assert len(spec.labels) == len(set(spec.labels)) <= 4
        # Never an IP address or a decision id as a label; entities only opted in.
        assert not {"client.address", "aidr.decision.id"} & set(spec.labels)
        assert ("enduser.id" in spec.labels) is spec.opt_in


def test_readme_lists_every_metric_from_the_table() -> None:
    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- metrics-table: generated -->\n", "<!-- /metrics-table -->"
    assert start in readme and end in readme
    table = readme.split(start, 1)[1].split(end, 1)[0]
    assert table == metrics_markdown(), "regenerate with aidr_gate.telemetry.table.metrics_markdown"
    from aidr_gate.telemetry.settings import KEYS

    section = readme.split("## Observability", 1)[1].split("\n## ", 1)[0]
    for key in KEYS:
        assert f"{key.name}:" in section, key.name
        for sub in key.keys:
            assert f"{sub.name}:" in section, f"{key.name}.{sub.name}"
    rules = json.dumps(
        sorted(re.findall(r"alert: (\w+)", (ROOT / "deploy/prometheus/alerts.yaml").read_text()))
    )
    for name in json.loads(rules):
        assert name in section, name
    board = json.loads((ROOT / "deploy/grafana/aidr-gate.json").read_text())
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["title"] in section, panel["title"]


# -- the exposition ---------------------------------------------------------------------------


def test_every_metric_is_exposed_with_the_labels_of_the_table() -> None:
    found = families(exposed(busy_telemetry()))
    for spec in METRICS:
        if spec.opt_in:
            assert spec.prometheus_name not in found
            continue
        assert spec.prometheus_name in found, spec.name
        for labels, _ in found[spec.prometheus_name]:
            assert set(labels) - {"le"} == set(spec.prometheus_labels), (spec.name, labels)
    decided = found["aidr_gate_decisions"]
    assert sum(v for _, v in decided) == len(decisions())
    assert {lbl["aidr_effect"] for lbl, _ in decided} == {"allow", "deny"}
    assert found["aidr_gate_ready"] == [({}, 0.0)]
    assert ({"aidr_check": "upstream"}, 0.0) in found["aidr_gate_readiness_check"]
    assert found["aidr_gate_keys_loaded"] == [({"aidr_keys_source": "static"}, 1.0)]
    shadow = found["aidr_gate_shadow_disagreements"]
    assert shadow and all(
        lbl["aidr_shadow_policy_id"] == "aidr-2025-05-rescinded" for lbl, _ in shadow
    )


def test_openmetrics_when_asked_text_otherwise_and_only_get_at_the_path() -> None:
    with serve(metrics_app(busy_telemetry(), path="/metrics")) as server:
        client = closed_after_test(httpx.Client(base_url=server.url))
        plain = client.get("/metrics")
        assert plain.status_code == 200
        assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "# EOF" not in plain.text and "aidr_gate_decisions_total{" in plain.text
        om = client.get("/metrics", headers={"Accept": OPENMETRICS})
        assert om.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
        assert om.text.endswith("# EOF\n")
        assert "# UNIT aidr_gate_decision_duration_seconds seconds" in om.text
        head = client.head("/metrics")
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["content-length"]) > 0
        assert client.post("/metrics").status_code == 405
        assert client.get("/other").status_code == 404


def test_a_large_exposition_is_gzipped_when_the_scraper_accepts_it() -> None:
    telemetry = busy_telemetry()
    for index in range(200):  # many reasons: many series
        decision = msgspec.structs.replace(decisions()[0], reasons=(f"PACK_REASON_{index}",))
        telemetry.record(decision, 0.00004, None)
    app = metrics_app(telemetry)  # mounted: answers any path
    with serve(app) as server:
        client = closed_after_test(httpx.Client(base_url=server.url))
        raw = client.get("/", headers={"Accept-Encoding": "gzip"})  # httpx decodes it
        assert raw.headers["content-encoding"] == "gzip"
        assert "PACK_REASON_199" in raw.text
        assert int(raw.headers["content-length"]) < len(raw.text) / 3
        plain = client.get("/", headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in plain.headers
        assert gzip.decompress(gzip.compress(plain.content)) == plain.content


# -- bounded labels ---------------------------------------------------------------------------


def test_label_values_are_bounded_and_nothing_is_lost_past_the_bound() -> None:
    telemetry = Telemetry(TelemetrySettings(prometheus=PrometheusSettings(), max_series=50))
    base = decisions()[0]
    for index in range(2000):
        origin = declared_origin(None)
        if index % 2:
            origin = msgspec.structs.replace(origin, country=f"Q{index}")  # not ISO: unknown
        decision = msgspec.structs.replace(
            base,
            reasons=(f"REASON_{index}",),
            evidence=msgspec.structs.replace(base.evidence, origin=origin),
        )
        telemetry.record(decision, 0.00004, None)
    collected = {c.spec.name: c for c in telemetry.collect()}
    reasons = collected["aidr_gate.decisions"].points
    assert len(reasons) == 51  # 50 series and the rest as _other
    assert sum(v for _, v in reasons) == 2000
    assert (("_other",) * 4, 1950) in reasons
    network = collected["aidr_gate.network.decisions"].points
    assert [(labels, value) for labels, value in network] == [((str(base.effect), "unknown"), 2000)]
    # Hot-path keys are bounded too (several keys may share a series, up to 4 per series).
    assert len(telemetry.cells["aidr_gate.decisions"].series) <= 4 * 50
    assert len(telemetry.cells["aidr_gate.network.decisions"].series) <= 4 * 50


def test_entities_only_when_opted_in_and_at_most_max_entities() -> None:
    text = exposed(busy_telemetry())
    assert "us-lab" not in text and "enduser" not in text
    for address in re.findall(r"\d+\.\d+\.\d+\.\d+", text):
        pytest.fail(f"an IP address in the exposition: {address}")
    settings = TelemetrySettings(
        prometheus=PrometheusSettings(), labels=LabelSettings(entities=True, max_entities=3)
    )
    telemetry = Telemetry(settings)
    for index in range(10):
        decision = gate().decide(
            identity=Identity(f"entity-{index}", method="declared"),
            origin=declared_origin("US"),
            model_id="small",
        )
        telemetry.record(decision, 0.00004, None)
    (entities,) = [c for c in telemetry.collect() if c.spec.name == "aidr_gate.entity.decisions"]
    named = {labels[1]: value for labels, value in entities.points}
    assert named == {"entity-0": 1, "entity-1": 1, "entity-2": 1, "_other": 7}


def test_nothing_is_counted_while_nothing_reads_the_metrics() -> None:
    """No exporter and no host SDK: the request path does no work. In a process of its own: a
    host SDK is per process, and other tests set one."""
    out = run_script(
        """\
        from aidr_gate.telemetry import Telemetry
        from support.telemetry_support import decisions

        telemetry = Telemetry()
        for decision in decisions():
            telemetry.record(decision, 0.00004, None)
            telemetry.upstream(200, 0.1, None)
            telemetry.reload("policy", ok=False)
        assert all(not cells.labelled for cells in telemetry.cells.values())
        print("ok")
        """
    )
    assert out == "ok"


# -- observed sources -------------------------------------------------------------------------


def test_key_file_loads_and_age_follow_the_provider(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks_of(rsa_key("k1"))))
    keys = FileKeys(path, ["RS256"], reload_interval=0)
    telemetry = Telemetry(PROMETHEUS)
    telemetry.watch_keys(lambda: keys)

    def keys_metrics() -> dict[str, float]:
        out = {}
        for c in telemetry.collect():
            for labels, value in c.points:
                if c.spec.name.startswith("aidr_gate.keys."):
                    out[c.spec.name + ":" + ",".join(labels)] = value
        return out

    before = keys_metrics()
    assert before["aidr_gate.keys.loaded:file"] == 0
    assert before["aidr_gate.keys.fetches:file,ok"] == 0
    asyncio.run(keys.start())
    time.sleep(0.05)
    path.write_text(json.dumps(jwks_of(rsa_key("k1"), rsa_key("k2", index=1))))
    assert asyncio.run(keys.reload())
    after = keys_metrics()
    assert after["aidr_gate.keys.fetches:file,ok"] == 2
    assert after["aidr_gate.keys.loaded:file"] == 2
    assert after["aidr_gate.keys.age:file"] < 0.05 < before["aidr_gate.keys.age:file"] + 0.05


def test_geoip_build_age_through_an_override_table(tmp_path: Path) -> None:
    database = MaxMindCountryResolver(write_country_db(tmp_path / "c.mmdb", {"8.8.8.0/24": "US"}))
    resolver = OverrideCountryResolver(
        [OverrideEntry(ipaddress.ip_network("203.0.113.0/24"), country="JP")], database
    )
    telemetry = Telemetry(PROMETHEUS)
    telemetry.watch_geoip(lambda: resolver)
    (ages,) = [c.points for c in telemetry.collect() if c.spec.name == "aidr_gate.geoip.build.age"]
    ((labels, age),) = ages
    assert labels == ("country",)
    assert abs(age - (time.time() - BUILD_EPOCH)) < 60
    database.close()


def registry_metrics(telemetry: Telemetry) -> dict[str, float]:
    """The registry's series now: ``state:sqlite:ready``, ``lookups:hit``, ``entries``..."""
    out = {}
    for c in telemetry.collect():
        if c.spec.name.startswith("aidr_gate.registry."):
            for labels, value in c.points:
                out[":".join((c.spec.name.removeprefix("aidr_gate.registry."), *labels))] = value
    return out


def test_a_file_registry_is_ready_with_every_entity_in_memory(tmp_path: Path) -> None:
    path = write_yaml_registry(tmp_path / "entities.yaml", 20)
    telemetry = Telemetry(PROMETHEUS)

    async def scenario() -> dict[str, float]:
        view = registry_view(open_store(str(path)))
        telemetry.watch_registry(lambda: view)
        await view.start()
        try:
            return registry_metrics(telemetry)
        finally:
            await view.close()

    got = asyncio.run(scenario())
    assert got["state:file:ready"] == 1
    assert got["state:file:starting"] == got["state:file:stale"] == 0
    assert (got["entries"], got["staleness"], got["lookups:miss"]) == (20, 0, 0)


def test_registry_state_staleness_and_cache_counters_follow_a_database_store(
    tmp_path: Path,
) -> None:
    """A SQLite store behind the bounded cache: hits and misses are counted; when the store's
    change log cannot be read the cache serves stale entities, then refuses; then recovers."""
    import sqlite3

    name = str(tmp_path / "registry.db")
    assert main(["registry", "migrate", name]) == 0
    assert (
        main(["registry", "import", str(write_yaml_registry(tmp_path / "e.yaml", 30)), name]) == 0
    )
    telemetry = Telemetry(PROMETHEUS)
    settings = CacheSettings(max_staleness=0.5, feed_timeout=0.3, retry_min=0.05, retry_max=0.1)

    def rename(old: str, new: str) -> None:
        with sqlite3.connect(name) as conn:
            conn.execute(f"ALTER TABLE {old} RENAME TO {new}")

    async def scenario() -> None:
        cache = EntityCache(SqliteStore(name, poll_interval=0.05), settings)
        telemetry.watch_registry(lambda: cache)
        assert registry_metrics(telemetry)["state:sqlite:starting"] == 1
        await cache.start()
        got = registry_metrics(telemetry)
        assert got["state:sqlite:ready"] == 1 and got["staleness"] == 0
        assert await cache.fetch("org-0000001") is not None  # a miss, read from the store
        assert cache.lookup("org-0000001") is not None  # a hit
        got = registry_metrics(telemetry)
        assert (got["lookups:hit"], got["lookups:miss"], got["entries"]) == (1, 1, 1)
        rename("state", "state_away")  # the change feed's reads now fail
        assert await until(lambda: registry_metrics(telemetry)["state:sqlite:stale"] == 1, 5)
        assert 0 < registry_metrics(telemetry)["staleness"] < 5
        assert await until(lambda: registry_metrics(telemetry)["state:sqlite:unavailable"], 5)
        assert sum(v for k, v in registry_metrics(telemetry).items() if k.startswith("state")) == 1
        rename("state_away", "state")
        assert await until(lambda: registry_metrics(telemetry)["state:sqlite:ready"] == 1, 5)
        assert registry_metrics(telemetry)["staleness"] == 0
        await cache.close()

    asyncio.run(scenario())


def test_a_failing_source_is_skipped_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    telemetry = Telemetry(PROMETHEUS)

    def broken() -> dict[str, bool]:
        raise RuntimeError("boom")

    telemetry.watch_readiness(broken)
    collected = {c.spec.name: c.points for c in telemetry.collect()}
    assert collected["aidr_gate.ready"] == ()
    assert "reading readiness failed (RuntimeError)" in caplog.text


# -- the host's SDK and the core without the extra --------------------------------------------


def run_script(script: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT / "tests",
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_host_sdk_gets_counters_gauges_and_histograms() -> None:
    out = run_script(
        """\
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from aidr_gate.telemetry import Telemetry
        from support.telemetry_support import decisions

        telemetry = Telemetry()
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        telemetry.watch_readiness(lambda: {"keys": True})
        made = decisions()
        for decision in made:
            telemetry.record(decision, 0.00004, None)
        data = reader.get_metrics_data()
        got = {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
        assert sum(p.value for p in got["aidr_gate.decisions"].data.data_points) == len(made)
        assert sum(p.count for p in got["aidr_gate.decision.duration"].data.data_points) == len(made)
        assert [p.value for p in got["aidr_gate.ready"].data.data_points] == [1.0]
        print("ok")
        """
    )
    assert out == "ok"


def test_a_host_counter_sums_every_telemetry_and_keeps_the_counts_of_one_gone() -> None:
    """Two runtimes' telemetries count the same series: the host sees their sum, and the counts
    of one that is collected stay, so a cumulative counter never goes down."""
    out = run_script(
        """\
        import gc
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from aidr_gate.telemetry import Telemetry
        from support.telemetry_support import decisions

        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

        def decided() -> float:
            data = reader.get_metrics_data()
            return sum(
                p.value
                for rm in data.resource_metrics
                for sm in rm.scope_metrics
                for m in sm.metrics
                if m.name == "aidr_gate.decisions"
                for p in m.data.data_points
            )

        made = decisions()
        first, second = Telemetry(), Telemetry()
        for telemetry in (first, second):
            for decision in made:
                telemetry.record(decision, 0.00004, None)
        assert decided() == 2 * len(made)
        del first
        gc.collect()
        assert decided() == 2 * len(made)
        for decision in made:
            second.record(decision, 0.00004, None)
        assert decided() == 3 * len(made)
        print("ok")
        """
    )
    assert out == "ok"


def test_the_core_needs_no_sdk_nor_exporter() -> None:
    """With the SDK, the exporters and prometheus_client unimportable, the gate imports, records
    and collects; asking for an exporter is a configuration error."""
    out = run_script(
        """\
        import sys

        class Blocked:
            def find_spec(self, name, path=None, target=None):
                for top in ("prometheus_client", "opentelemetry.sdk", "opentelemetry.exporter"):
                    if name == top or name.startswith(top + "."):
                        raise ImportError(f"{name} is not installed")
                return None

        sys.meta_path.insert(0, Blocked())
        import aidr_gate
        from aidr_gate.errors import ConfigError
        from aidr_gate.runtime import Runtime
        from aidr_gate.telemetry import PrometheusSettings, Telemetry, TelemetrySettings
        from aidr_gate.telemetry.export import Exporters
        from support.telemetry_support import decisions

        telemetry = Telemetry(TelemetrySettings(prometheus=PrometheusSettings()))
        for decision in decisions():
            telemetry.record(decision, 0.00004, None)
        assert telemetry.collect()[0].points
        try:
            Exporters(TelemetrySettings(prometheus=PrometheusSettings()))
        except ConfigError as exc:
            assert "aidr-gate[telemetry]" in str(exc)
        else:
            raise AssertionError("no error")
        assert not [m for m in sys.modules if m.startswith(("opentelemetry.sdk", "prometheus"))]
        print("ok")
        """
    )
    assert out == "ok"


def test_decisions_denied_and_allowed_are_both_in_the_traffic() -> None:
    effects = {d.effect for d in decisions()}
    assert effects == {Effect.ALLOW, Effect.DENY}
