"""``aidr-gate demo``: the built-in model server, the sidecar in front of it, and a scripted tour.

Everything runs in this process on 127.0.0.1 and needs no network and no licence key:

- an Ed25519 key made for this run signs the callers' tokens; the gate reads its public half from a
  JWKS file in a temporary directory, as it would read an issuer's keys;
- GeoIP is the embedded ``iptocc`` registration data (real public addresses, registration country),
  plus one static override that marks a documentation range (RFC 5737) as a VPN exit: no free
  database carries anonymizer flags, and the override table is how operators label ranges they know;
- the policy, registry and catalogue are the bundled examples (``aidr-2025-01``);
- the client is aiohttp, sending each request with the caller's token and, as a proxy on loopback
  would, the caller's address in ``X-Forwarded-For``.

Decisions are made at the current time. The requests are chosen to show the same thing for years:
the agreement that makes the Tier 2 caller's request pass (SA-2025-052) runs until 2028-01-20. Each
row says what it is meant to show; if a decision ever differs (an example agreement expired), the
demo says so and exits 1, so the examples get updated rather than silently showing something else.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519
from jwt.algorithms import OKPAlgorithm

from aidr_gate.audit import verify_files
from aidr_gate.audit.reader import RecordReader
from aidr_gate.demo.model_server import build_model_app
from aidr_gate.settings.loader import embedded_config_path, load_config
from aidr_gate.sidecar.app import SidecarApp, UvicornServer, build_sidecar, uvicorn_config

__all__ = ["ROWS", "Row", "run_demo", "signing_key", "token", "write_setup"]

ISSUER = "https://idp.demo.invalid/"
AUDIENCE = "aidr-gate-demo"
KEY_ID = "demo-ed25519"
VPN_NETWORK = "203.0.113.0/24"  # TEST-NET-3 (RFC 5737): never a real client


@dataclass(frozen=True, slots=True)
class Row:
    """One scripted request and what it is meant to show."""

    caller: str  # entity id in the token
    about: str  # who that is, in a few words
    ip: str  # the client address the request comes from
    model: str
    expect: str  # "allow", "log" or "deny <status>"
    shows: str  # the point of the row
    forged: bool = False  # the token is signed with a key the gate does not know
    stream: bool = False


ROWS: tuple[Row, ...] = (
    Row("lab-us", "Tier 1 lab (US)", "8.8.8.8", "aurora-frontier", "allow",
        "a Tier 1 lab may use a controlled model; the answer streams", stream=True),
    Row("petronas-my", "Tier 2 (MY), agreement", "60.48.0.1", "aurora-frontier", "allow",
        "a Tier 2 company with an active agreement covering MY"),
    Row("andes-br", "Tier 2 (BR), no agreement", "200.160.0.8", "aurora-frontier", "deny 403",
        "a Tier 2 company without an agreement: no controlled model"),
    Row("andes-br", "Tier 2 (BR), no agreement", "200.160.0.8", "llama-3.1-405b", "allow",
        "open weights are not controlled: allowed to anyone not embargoed"),
    Row("nordlys-se", "SE subsidiary, CN parent", "194.71.11.70", "aurora-frontier", "deny 451",
        "the ultimate parent's country counts: Tier 3"),
    Row("lab-us", "Tier 1 lab, via a VPN", "203.0.113.7", "aurora-frontier", "deny 451",
        "an anonymizer in front of a controlled model is a red flag"),
    Row("sakura-jp", "Tier 1 (JP), calls from SG", "203.116.1.1", "aurora-mini", "log",
        "allowed, but the origin is in a worse tier than the headquarters: logged"),
    Row("pars-ir", "embargoed (IR)", "78.38.0.1", "embed-small", "deny 451",
        "a comprehensive embargo covers every model"),
    Row("lab-us", "forged token", "8.8.8.8", "aurora-mini", "deny 401",
        "a token signed with another key is refused", forged=True),
)  # fmt: skip


@dataclass(slots=True)
class Outcome:
    """What came back for one row."""

    status: int
    decision_id: str | None
    chunks: int = 0
    error_code: str | None = None


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def signing_key(jwks: Path, kid: str = KEY_ID) -> ed25519.Ed25519PrivateKey:
    """A fresh Ed25519 key; its public half is written to *jwks* (the private one stays in memory)."""
    key = ed25519.Ed25519PrivateKey.generate()
    jwk = OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update({"kid": kid, "alg": "EdDSA", "use": "sig"})
    jwks.write_text(json.dumps({"keys": [jwk]}))
    return key


def token(
    key: ed25519.Ed25519PrivateKey,
    entity: str,
    *,
    issuer: str = ISSUER,
    audience: str = AUDIENCE,
    kid: str = KEY_ID,
    lifetime: int = 300,
) -> str:
    """A bearer token naming *entity*, signed with *key*."""
    now = int(time.time())
    claims = {"iss": issuer, "aud": audience, "sub": entity, "iat": now, "exp": now + lifetime}
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid})


def write_setup(root: Path, *, fsync: str = "always") -> tuple[Path, ed25519.Ed25519PrivateKey]:
    """A fresh signing key, its JWKS, and the demo configuration under *root* (also the bench's).

    The configuration names absolute paths: the loader resolves relative ones against the file's
    own directory, not the working directory a relative *root* was given in.
    """
    root = root.resolve()
    key = signing_key(root / "jwks.json")
    examples = embedded_config_path().parent
    audit = root / "audit"
    config = root / "config.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            # Written by `aidr-gate demo`: the embedded example policy, a key made for this run.
            policy: {{pack: aidr-2025-01}}
            mode: enforce
            registry: {json.dumps(str(examples / "entities.yaml"))}
            catalog: {json.dumps(str(examples / "models.yaml"))}
            identity:
              issuer: {ISSUER}
              audience: {AUDIENCE}
              algorithms: [EdDSA]
              key_file: jwks.json
            network:
              # The demo client plays a proxy on loopback and forwards the caller's address.
              trusted_proxies: [127.0.0.1/32]
            geoip:
              # No country_database: the embedded iptocc registration data answers.
              overrides:
                - network: {VPN_NETWORK}
                  country: US
                  anonymizer: [vpn]
                  note: "demo: a VPN exit (a documentation range, RFC 5737)"
            audit:
              directory: {json.dumps(str(audit))}
              sinks:
                - {{type: file, path: {json.dumps(str(audit / "audit.jsonl"))}, fsync: {fsync}}}
            """
        )
    )
    return config, key


async def _send(session: aiohttp.ClientSession, base: str, row: Row, token: str) -> Outcome:
    body: dict[str, Any] = {
        "model": row.model,
        "messages": [{"role": "user", "content": "Hello from the aidr-gate demo"}],
    }
    if row.stream:
        body["stream"] = True
    headers = {"authorization": f"Bearer {token}", "x-forwarded-for": row.ip}
    async with session.post(f"{base}/v1/chat/completions", json=body, headers=headers) as resp:
        outcome = Outcome(resp.status, resp.headers.get("x-aidr-decision-id"))
        if resp.status >= 400:
            try:
                outcome.error_code = (await resp.json())["error"]["code"]
            except (ValueError, KeyError, TypeError, aiohttp.ContentTypeError):
                outcome.error_code = None
        elif row.stream:
            async for line in resp.content:
                if line.startswith(b"data: {"):
                    outcome.chunks += 1
        else:
            await resp.read()
        return outcome


async def _serve(app: Any, sock: socket.socket) -> tuple[UvicornServer, asyncio.Task[None]]:
    server = UvicornServer(uvicorn_config(app, log_level="warning", shutdown_timeout=5))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    deadline = time.monotonic() + 20
    while not server.started:
        if task.done():
            await task  # raises what stopped it
            raise RuntimeError("a demo server stopped during startup")
        if time.monotonic() > deadline:
            raise TimeoutError("a demo server did not start")
        await asyncio.sleep(0.01)
    return server, task


def _records(audit_dir: Path) -> dict[str, dict[str, Any]]:
    """The records by decision id, each with its whole evidence tree under ``aidr``."""
    out: dict[str, dict[str, Any]] = {}
    reader = RecordReader()  # compact records name the shared facts written once per file
    for path in sorted(audit_dir.glob("*.jsonl*")):
        for line in path.read_bytes().splitlines():
            if line.strip():
                record = json.loads(line)
                record["aidr"] = reader.tree(line)
                out[record["event"]["id"]] = record
    return out


def _verdict(record: dict[str, Any] | None, outcome: Outcome) -> str:
    if record is None:
        return f"? {outcome.status}"
    decision = record["aidr"]["decision"]
    if decision["effect"] == "deny":
        return f"deny {decision['status']}"
    return str(decision["effect"])


def _reasons(record: dict[str, Any] | None, outcome: Outcome, row: Row) -> str:
    if record is None:
        return outcome.error_code or "(no audit record)"
    aidr = record["aidr"]
    text = ", ".join(aidr["decision"]["reasons"])
    agreement = (aidr.get("agreement") or {}).get("id")
    if agreement and aidr["decision"]["effect"] != "deny":
        text += f" (agreement {agreement})"
    if row.stream:
        text += f"; streamed {outcome.chunks} chunks"
    return text


def _origin(record: dict[str, Any] | None, row: Row) -> str:
    origin = (record or {}).get("aidr", {}).get("origin") if record else None
    if not origin:
        return row.ip
    text = f"{origin['ip']} {origin['country'] or '??'}"
    if origin.get("anonymizer"):
        text += " " + "+".join(origin["anonymizer"])
    override = origin.get("database") == "static-overrides"
    source = "static override" if override else "RIR registration"
    return f"{text} ({source})"


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]


async def run_demo(out: TextIO = sys.stdout, *, keep: Path | None = None) -> int:
    """Run the tour; print the table; 0 when every row showed what it is meant to show."""
    with tempfile.TemporaryDirectory(prefix="aidr-gate-demo-") as scratch:
        root = (keep if keep is not None else Path(scratch)).resolve()
        root.mkdir(parents=True, exist_ok=True)
        return await _tour(root, out)


async def _tour(root: Path, out: TextIO) -> int:
    started = time.perf_counter()
    config_path, key = write_setup(root)
    upstream_sock, gate_sock = _free_socket(), _free_socket()
    upstream_url = f"http://127.0.0.1:{upstream_sock.getsockname()[1]}"
    gate_url = f"http://127.0.0.1:{gate_sock.getsockname()[1]}"
    app: SidecarApp = await asyncio.to_thread(build_sidecar, load_config(config_path), upstream_url)
    model_server, model_task = await _serve(build_model_app(token_delay=0.005), upstream_sock)
    gate_server: UvicornServer | None = None
    gate_task: asyncio.Task[None] | None = None
    outcomes: list[Outcome] = []
    try:
        await app.startup()
        gate_server, gate_task = await _serve(app, gate_sock)
        _print_setup(app, root, upstream_url, gate_url, out)
        outcomes = await _send_rows(gate_url, key)
    finally:
        if gate_server is not None and gate_task is not None:
            gate_server.should_exit = True
            await gate_task
        await app.shutdown()  # flushes the audit trail
        model_server.should_exit = True
        await model_task
    audit_dir = root / "audit"
    records = _records(audit_dir)
    lines, surprises = _result_rows(outcomes, records)
    for line in _table(lines):
        print(line, file=out)
    print(file=out)
    verified = _print_chain(audit_dir, out)
    print("what each row shows:", file=out)
    for index, row in enumerate(ROWS, start=1):
        print(f"  {index}. {row.shows}", file=out)
    print(
        f"stopped: sidecar drained, model server stopped ({time.perf_counter() - started:.1f} s)",
        file=out,
    )
    if surprises:
        print("\nSome rows did not show what they are meant to (update the examples?):", file=out)
        for line in surprises:
            print(line, file=out)
    return 0 if verified and not surprises and len(records) >= len(ROWS) else 1


def _print_setup(
    app: SidecarApp, root: Path, upstream_url: str, gate_url: str, out: TextIO
) -> None:
    """What is running where, and under which pack."""
    pack = app.runtime.gate.state.pack
    print("aidr-gate demo: the gate in front of a model server, on loopback", file=out)
    print(f"  model server  {upstream_url}  (built in, OpenAI-compatible)", file=out)
    print(f"  sidecar       {gate_url}  (aidr-gate serve, example registry)", file=out)
    window = "in its legal window" if pack.in_window(time.time()) else "outside its window"
    print(
        f"  policy        {pack.id} ({pack.status}, {window} today: enforced as configured)",
        file=out,
    )
    geo = app.runtime.origin.describe().removeprefix("GeoIP ")
    print(f"  GeoIP         {geo}", file=out)
    print(f"  tokens        EdDSA, signed with a key made for this run ({root})", file=out)
    print(file=out)


async def _send_rows(gate_url: str, key: ed25519.Ed25519PrivateKey) -> list[Outcome]:
    """Each row's request, in order; a forged row signs with a key the gate does not know."""
    forged = ed25519.Ed25519PrivateKey.generate()
    outcomes: list[Outcome] = []
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for row in ROWS:
            signer = forged if row.forged else key
            outcomes.append(await _send(session, gate_url, row, token(signer, row.caller)))
    return outcomes


def _result_rows(
    outcomes: list[Outcome], records: dict[str, dict[str, Any]]
) -> tuple[list[list[str]], list[str]]:
    """The table (heading first) and the rows that did not show what they are meant to."""
    lines = [["#", "caller", "who", "from", "model", "decision", "reasons", "audit record"]]
    surprises: list[str] = []
    for index, (row, outcome) in enumerate(zip(ROWS, outcomes, strict=True), start=1):
        record = records.get(outcome.decision_id or "")
        verdict = _verdict(record, outcome)
        if verdict != row.expect:
            surprises.append(
                f"  row {index}: meant to show {row.expect} ({row.shows}), got {verdict}"
            )
        lines.append(
            [
                str(index),
                row.caller,
                row.about,
                _origin(record, row),
                row.model,
                verdict,
                _reasons(record, outcome, row),
                f"{outcome.decision_id} #{record['chain']['seq']}"
                if record is not None and "chain" in record
                else str(outcome.decision_id),
            ]
        )
    return lines, surprises


def _print_chain(audit_dir: Path, out: TextIO) -> bool:
    """Verify the run's audit files; True when the hash chain verifies."""
    files = sorted(audit_dir.glob("*.jsonl*"))
    result = verify_files(files)
    if result.ok:
        print(
            f"audit: {result.records} records in {audit_dir / 'audit.jsonl'}; "
            f"the hash chain verifies (seq {result.first_seq}..{result.last_seq})",
            file=out,
        )
    else:
        print("audit: the hash chain does NOT verify:", file=out)
        for finding in result.errors:
            print(f"  {finding}", file=out)
    return result.ok


def quiet_logs() -> None:
    """The demo prints a table; routine startup logs would only bury it."""
    for name in ("aidr_gate", "uvicorn", "uvicorn.error"):
        logging.getLogger(name).setLevel(logging.WARNING)
