"""Broken configurations, one mistake each, covering every section: ``aidr-gate validate`` and
``aidr-gate serve``, run as processes, report the same problems at the same lines and both exit
2; the valid baseline passes ``validate`` and ``serve`` starts on it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from aidr_gate.settings.sections import SECTIONS
from support.environment import EXAMPLES
from support.gate_env import GateEnv, make_gate_env
from support.servers import free_port

EXIT_USAGE = 2
BASELINE_EXTRA = """\
middleware:
  max_body_bytes: 1048576
proxy:
  upstream: http://127.0.0.1:9
  pool_size: 16
"""


@dataclass(frozen=True)
class Broken:
    """One mistake: how the baseline text changes, and where the problem must be reported."""

    id: str
    edit: Callable[[str], str]
    path: str  # the key path reported
    message: str  # a part of the message
    marker: str | None = None  # text on the reported line (default: the last part of path)
    file: str | None = None  # the file reported, when not the configuration itself


def replace(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, 1)

    return edit


def append(extra: str) -> Callable[[str], str]:
    return lambda text: text + extra


ALGORITHMS = "algorithms: [RS256]"
KEY_FILE = "key_file: jwks.json"
PROXIES = 'trusted_proxies: [127.0.0.0/8, "::1/128"]'
COUNTRY_DB = "country_database: country.mmdb"
SINKS = "  sinks:\n"
CASES = [
    # -- the top level and policy --
    Broken("top-typo", append("telemetri: {}\n"), "telemetri", "did you mean 'telemetry'?"),
    Broken(
        "pack-id",
        replace("pack: aidr-2025-01", "pack: aidr-2025-1"),
        "policy.pack",
        "did you mean 'aidr-2025-01'?",
        marker="policy:",
    ),
    Broken(
        "shadow-id",
        replace("pack: aidr-2025-01", "pack: aidr-2025-01, shadow: strict-hypotetical"),
        "policy.shadow",
        "did you mean 'strict-hypothetical'?",
        marker="policy:",
    ),
    Broken(
        "policy-typo",
        replace("pack: aidr-2025-01", "pack: aidr-2025-01, shadw: x"),
        "policy.shadw",
        "did you mean 'shadow'?",
        marker="policy:",
    ),
    Broken(
        "pack-file",
        replace("pack: aidr-2025-01", "pack: packs/mine.yaml"),
        "policy.pack",
        "no such pack file",
        marker="policy:",
    ),
    Broken("mode", replace("mode: enforce", "mode: enforcing"), "mode", "is not one of"),
    Broken(
        "registry-missing", replace("entities.yaml", "entitys.yaml"), "registry", "no such file"
    ),
    # A database store: named, never connected to; what no retry can fix is refused by both.
    Broken(
        "registry-store-variable",
        replace(f"registry: {EXAMPLES / 'entities.yaml'}", "registry:\n  store: env:AIDR_NO_DSN"),
        "registry.store",
        "environment variable AIDR_NO_DSN is not set",
        marker="store: env:AIDR_NO_DSN",
    ),
    Broken(
        "registry-cache-bound",
        replace(
            f"registry: {EXAMPLES / 'entities.yaml'}",
            "registry:\n  store: sqlite:registry.db\n  cache_size: 0",
        ),
        "registry.cache_size",
        "must be at least 1, not 0",
        marker="cache_size: 0",
    ),
    Broken("catalog-missing", replace("models.yaml", "model.yaml"), "catalog", "no such file"),
    Broken(
        "registry-content",
        replace(str(EXAMPLES / "entities.yaml"), "bad-entities.yaml"),
        "entities.lab-us.headquarters",
        "is not an ISO 3166-1",
        marker="headquarters: ZZ",
        file="bad-entities.yaml",
    ),
    Broken(
        "search",
        replace("pack: aidr-2025-01", "pack: aidr-2025-01, search: ./packs"),
        "policy.search",
        "must be a list",
        marker="policy:",
    ),
    # -- identity --
    Broken(
        "identity-levay",
        replace(ALGORITHMS, ALGORITHMS + "\n  levay: 30"),
        "identity.levay",
        "did you mean 'leeway'?",
    ),
    Broken(
        "identity-audiance",
        replace("  audience:", "  audiance:"),
        "identity.audiance",
        "did you mean 'audience'?",
    ),
    Broken(
        "identity-hs256",
        replace(ALGORITHMS, "algorithms: [HS256]"),
        "identity.algorithms[0]",
        "is refused",
        marker="algorithms",
    ),
    Broken(
        "jwks-http",
        replace(KEY_FILE, "jwks_url: http://idp.example.com/jwks.json"),
        "identity.jwks_url",
        "must be an https:// URL",
    ),
    Broken(
        "jwks-syntax", replace(KEY_FILE, "jwks_url: https://"), "identity.jwks_url", "has no host"
    ),
    Broken(
        "key-file-missing",
        replace(KEY_FILE, "key_file: nokeys.json"),
        "identity.key_file",
        "no such file",
    ),
    Broken(
        "key-file-garbage",
        replace(KEY_FILE, "key_file: garbage.pem"),
        "identity.key_file",
        "garbage.pem",
    ),
    Broken(
        "key-both",
        replace(KEY_FILE, KEY_FILE + "\n  jwks_url: https://idp.example.com/jwks.json"),
        "identity",
        "give exactly one of jwks_url and key_file",
        marker="  issuer:",  # a section's own problems are reported at its first line
    ),
    Broken(
        "identity-leeway",
        replace(ALGORITHMS, ALGORITHMS + "\n  leeway: -1"),
        "identity.leeway",
        "at least 0",
    ),
    Broken(
        "identity-cache",
        replace(ALGORITHMS, ALGORITHMS + "\n  cache_size: lots"),
        "identity.cache_size",
        "whole number",
    ),
    Broken(
        "identity-absent",
        lambda text: text.replace(text[text.index("identity:") : text.index("network:")], ""),
        "identity",
        "is required to verify tokens",
        marker="policy:",
    ),
    # -- network --
    Broken(
        "network-typo",
        replace("trusted_proxies:", "trusted_proxys:"),
        "network.trusted_proxys",
        "did you mean 'trusted_proxies'?",
    ),
    Broken(
        "network-cidr",
        replace(PROXIES, "trusted_proxies: [10.0.0.0/33]"),
        "network.trusted_proxies[0]",
        "is not a CIDR",
        marker="trusted_proxies",
    ),
    Broken(
        "network-header",
        replace(PROXIES, PROXIES + "\n  trusted_headers: [x-real-ip]"),
        "network.trusted_headers[0]",
        "is not one of",
        marker="trusted_headers",
    ),
    # -- geoip --
    Broken(
        "geoip-missing",
        replace(COUNTRY_DB, "country_database: GeoIP2-City.mmdb"),
        "geoip.country_database",
        "no such file",
    ),
    Broken(
        "geoip-corrupt",
        replace(COUNTRY_DB, "country_database: corrupt.mmdb"),
        "geoip.country_database",
        "corrupt.mmdb",
    ),
    Broken(
        "geoip-type",
        replace("anonymous_ip_database: anonymous.mmdb", "anonymous_ip_database: country.mmdb"),
        "geoip.anonymous_ip_database",
        "is not an Anonymous IP database",
    ),
    Broken(
        "geoip-cache",
        replace(COUNTRY_DB, COUNTRY_DB + "\n  cache_size: 0"),
        "geoip.cache_size",
        "at least 1",
    ),
    Broken(
        "geoip-override",
        replace(
            COUNTRY_DB, COUNTRY_DB + "\n  overrides:\n    - {network: 198.51.100.0/24, country: se}"
        ),
        "geoip.overrides[0].country",
        "use upper case",
        marker="country: se",
    ),
    # -- middleware --
    Broken(
        "middleware-body",
        replace("max_body_bytes: 1048576", "max_body_bytes: 10"),
        "middleware.max_body_bytes",
        "at least 1024",
    ),
    Broken(
        "middleware-exempt",
        replace("max_body_bytes: 1048576", "max_body_bytes: 1048576\n  exempt_paths: [healthz]"),
        "middleware.exempt_paths[0]",
        "must start with '/'",
        marker="exempt_paths",
    ),
    Broken(
        "middleware-pattern",
        replace(
            "max_body_bytes: 1048576",
            "max_body_bytes: 1048576\n  path_model_patterns: [/v2/models/infer]",
        ),
        "middleware.path_model_patterns[0]",
        "must contain '{model}'",
        marker="path_model_patterns",
    ),
    Broken(
        "middleware-typo",
        replace("max_body_bytes: 1048576", "max_body_bytes: 1048576\n  model_headr: x-model"),
        "middleware.model_headr",
        "did you mean 'model_header'?",
    ),
    # -- audit --
    Broken(
        "audit-syslog-port",
        replace(SINKS, SINKS + "    - {type: syslog, host: 127.0.0.1, port: 99999}\n"),
        "audit.sinks[0].port",
        "at most 65535",
        marker="port: 99999",
    ),
    Broken(
        "audit-syslog-host",
        replace(SINKS, SINKS + "    - {type: syslog, host: 'siem example com'}\n"),
        "audit.sinks[0].host",
        "is not a host name",
        marker="siem example com",
    ),
    Broken(
        "audit-http-url",
        replace(SINKS, SINKS + "    - {type: http, format: hec, url: 'ftp://siem'}\n"),
        "audit.sinks[0].url",
        "is not an http:// or https:// URL",
        marker="ftp://siem",
    ),
    Broken(
        "audit-sink-type",
        replace(SINKS, SINKS + "    - {type: carrier-pigeon}\n"),
        "audit.sinks[0].type",
        "is not one of",
        marker="carrier-pigeon",
    ),
    Broken(
        "audit-dir",
        replace("  directory: ", "  directory: plain-file/"),
        "audit.directory",
        "is not a directory",
    ),
    Broken(
        "audit-format",
        replace("  directory: ", "  format: cef\n  directory: "),
        "audit.format",
        "is not one of",
    ),
    Broken(
        "audit-failure",
        replace("  directory: ", "  on_failure: maybe\n  directory: "),
        "audit.on_failure",
        "is not one of",
    ),
    # -- proxy --
    Broken(
        "proxy-pool", replace("pool_size: 16", "pool_size: -1"), "proxy.pool_size", "at least 1"
    ),
    Broken(
        "proxy-upstream",
        replace("upstream: http://127.0.0.1:9", "upstream: ftp://model"),
        "proxy.upstream",
        "must be an http(s) URL",
    ),
    Broken(
        "proxy-timeout",
        replace("pool_size: 16", "pool_size: 16\n  read_timeout: 0"),
        "proxy.read_timeout",
        "at least 0.001",
    ),
    Broken(
        "proxy-typo",
        replace("pool_size: 16", "pool_size: 16\n  conect_timeout: 5"),
        "proxy.conect_timeout",
        "did you mean 'connect_timeout'?",
    ),
    # -- limits --
    Broken(
        "limits-header-lines",
        append("limits:\n  max_header_lines: 2\n"),
        "limits.max_header_lines",
        "at least 8",
    ),
    Broken(
        "limits-timeout",
        append("limits:\n  body_timeout: 0\n"),
        "limits.body_timeout",
        "at least 0.01",
    ),
    Broken(
        "limits-typo",
        append("limits:\n  max_conections: 10\n"),
        "limits.max_conections",
        "did you mean 'max_connections'?",
    ),
    # -- telemetry --
    Broken(
        "telemetry-port",
        append("telemetry:\n  prometheus: {port: 70000}\n"),
        "telemetry.prometheus.port",
        "at most 65535",
        marker="port: 70000",
    ),
    Broken(
        "telemetry-endpoint",
        append("telemetry:\n  otlp: {endpoint: collector}\n"),
        "telemetry.otlp.endpoint",
        "is not an http",
        marker="endpoint: collector",
    ),
    Broken(
        "telemetry-typo",
        append("telemetry:\n  max_serie: 10\n"),
        "telemetry.max_serie",
        "did you mean 'max_series'?",
    ),
    # -- screening --
    Broken(
        "screening-threshold",
        append("screening:\n  lists: [sdn.csv]\n  threshold: 20\n"),
        "screening.threshold",
        "at least 50",
    ),
    Broken(
        "screening-typo",
        append("screening:\n  lists: [sdn.csv]\n  treshold: 90\n"),
        "screening.treshold",
        "did you mean 'threshold'?",
    ),
    # -- patterns --
    Broken(
        "patterns-window",
        append("patterns:\n  windows: [1m, 1y]\n"),
        "patterns.windows[1]",
        "is not a window",
        marker="windows:",
    ),
    Broken(
        "patterns-redis-url",
        append("patterns:\n  redis: {url: 'http://127.0.0.1:6379'}\n"),
        "patterns.redis.url",
        "is not a redis://",
        marker="redis:",
    ),
    # -- the file itself --
    Broken(
        "duplicate-key",
        append("mode: enforce\n"),
        "mode",
        "key appears more than once",
        marker="mode: enforce\n$",
    ),
]


def _line(text: str, case: Broken) -> int:
    if case.marker is not None and case.marker.endswith("\n$"):  # the last occurrence
        wanted = case.marker[:-2]
        return max(i for i, row in enumerate(text.splitlines(), 1) if row == wanted)
    marker = case.marker or case.path.rsplit(".", 1)[-1].split("[")[0] + ":"
    return next(i for i, row in enumerate(text.splitlines(), 1) if marker in row)


@dataclass
class Run:
    code: int
    output: str
    stdout: str = ""

    def problems(self) -> list[str]:
        """The problem lines, as printed under "configuration problems:"."""
        return sorted(row.strip() for row in self.output.splitlines() if row.startswith("  /"))


def _run(args: list[str], timeout: float = 60) -> Run:
    done = subprocess.run(
        [sys.executable, "-m", "aidr_gate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Run(done.returncode, done.stdout + done.stderr, done.stdout)


# A process that imports the command line once, then forks one child per run: each run is a
# process of its own (its own pid, exit status, stdout and stderr) running ``aidr-gate``'s entry
# point, without paying an interpreter start and the imports a hundred times.
FORKER = """\
import json, os, sys
from aidr_gate.cli import main
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        out = os.open(job["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        err = os.open(job["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(out, 1)
        os.dup2(err, 2)
        sys.stdout = os.fdopen(1, "w")
        sys.stderr = os.fdopen(2, "w")
        code = 1
        try:
            code = main(job["argv"])
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)
"""


class Forker:
    """Runs ``aidr-gate ARGS`` in forked children of one warm process."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.runs = 0
        self.process = subprocess.Popen(
            [sys.executable, "-c", FORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def run(self, args: list[str]) -> Run:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.runs += 1
        out, err = self.folder / f"run-{self.runs}.out", self.folder / f"run-{self.runs}.err"
        job = {"argv": args, "out": str(out), "err": str(err)}
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        code = int(self.process.stdout.readline())
        stdout = out.read_text()
        return Run(code, stdout + err.read_text(), stdout)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(30)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> GateEnv:
    gate = make_gate_env(tmp_path_factory.mktemp("broken"))
    gate.config.write_text(gate.config.read_text() + BASELINE_EXTRA)
    (gate.root / "garbage.pem").write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n")
    (gate.root / "corrupt.mmdb").write_bytes(b"\x00" * 4096)
    (gate.root / "plain-file").write_text("not a directory\n")
    bad = (EXAMPLES / "entities.yaml").read_text()
    anchor = "  lab-us:\n"
    start = bad.index(anchor)
    hq = bad.index("headquarters: US", start)
    (gate.root / "bad-entities.yaml").write_text(bad[:hq] + "headquarters: ZZ" + bad[hq + 16 :])
    return gate


@pytest.fixture(scope="module")
def runs(env: GateEnv) -> dict[str, tuple[Path, Run, Run]]:
    """Every case through validate and serve, each run a process of its own."""
    base = env.config.read_text()
    forker = Forker(env.root)
    out: dict[str, tuple[Path, Run, Run]] = {}
    try:
        for case in CASES:
            config = env.root / f"case-{case.id}.yaml"
            config.write_text(case.edit(base))
            validate = forker.run(["validate", "--config", str(config)])
            serve = forker.run(["serve", "--config", str(config), "--port", str(free_port())])
            out[case.id] = (config, validate, serve)
    finally:
        forker.close()
    return out


def test_there_are_enough_cases_for_every_section() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)
    heads = {c.path.split(".")[0].split("[")[0] for c in CASES}
    assert {"policy", "mode", "registry", "catalog"} <= heads | {"entities"}
    assert {s.name for s in SECTIONS} <= heads


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_validate_and_serve_report_the_same_problem(
    case: Broken, env: GateEnv, runs: dict[str, tuple[Path, Run, Run]]
) -> None:
    config, validate, serve = runs[case.id]
    assert validate.code == EXIT_USAGE, validate.output
    assert serve.code == EXIT_USAGE, serve.output
    assert validate.problems() == serve.problems()
    assert "Traceback" not in validate.output + serve.output
    file = env.root / case.file if case.file else config
    line = _line(file.read_text(), case)
    expected = f"{file}:{line}: {case.path}:"
    hits = [p for p in validate.problems() if p.startswith(expected)]
    assert hits, (expected, validate.problems())
    assert any(case.message in p for p in hits), (case.message, hits)


def test_validate_json_names_the_same_problems(
    env: GateEnv, runs: dict[str, tuple[Path, Run, Run]]
) -> None:
    config, validate, _ = runs["identity-levay"]
    result = _run(["validate", "--config", str(config), "--json"])
    assert result.code == EXIT_USAGE
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["file"] == str(config)
    assert sorted(p["text"] for p in report["errors"]) == validate.problems()
    (levay,) = [p for p in report["errors"] if p["path"] == "identity.levay"]
    assert levay["line"] == _line(
        config.read_text(), next(c for c in CASES if c.id == "identity-levay")
    ) and levay["file"] == str(config)


def test_the_baseline_passes_validate_and_serve_starts(env: GateEnv) -> None:
    validate = _run(["validate", "--config", str(env.config)])
    assert validate.code == 0, validate.output
    assert validate.output.startswith("ok: ")
    as_json = json.loads(_run(["validate", "--config", str(env.config), "--json"]).stdout)
    assert as_json["ok"] is True and as_json["errors"] == []
    assert as_json["loaded"]["pack"] == "aidr-2025-01"
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aidr_gate",
            "serve",
            "--config",
            str(env.config),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
