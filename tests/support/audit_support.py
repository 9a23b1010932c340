"""Shared builders for the audit tests: real decisions from the example configuration, real files."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import resource
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from aidr_gate.audit import AuditEvent, Ending, RequestContext
from aidr_gate.audit.chain import SUFFIX_LEN
from aidr_gate.audit.reader import open_bytes
from aidr_gate.facts import AnonymizerFlag, CountrySource, Identity, Origin
from aidr_gate.gate import Gate
from aidr_gate.settings.audit import (
    AuditConfig,
    FileSinkConfig,
    FsyncPolicy,
    SinkConfig,
)

TOKEN = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJzdmMtMTIzIn0.c2VjcmV0LXNpZ25hdHVyZQ"

_GATE: Gate | None = None


def gate() -> Gate:
    """The gate of the embedded example configuration (loaded once)."""
    global _GATE
    if _GATE is None:
        _GATE = Gate.from_path(None)
    return _GATE


def event(
    index: int = 0,
    *,
    entity: str = "merlion-sg",
    country: str | None = "SG",
    model: str | None = "aurora-frontier",
    headers: tuple[tuple[str, str], ...] = (("user-agent", "pytest"),),
    path: str = "/v1/chat/completions",
    anonymizer: frozenset[AnonymizerFlag] = frozenset(),
) -> AuditEvent:
    """One real decision and its request context."""
    identity = Identity(
        entity_id=entity,
        subject=f"svc-{index}",
        issuer="https://idp.example",
        key_id="key-1",
        algorithm="RS256",
    )
    origin = Origin(
        ip=f"198.51.100.{index % 250}",
        resolved_by="x-forwarded-for[-1]",
        peer="10.0.0.2",
        country=country,
        country_source=CountrySource.GEOIP if country else CountrySource.NONE,
        anonymizer=anonymizer,
        database="GeoIP2-Country",
        database_build="2025-06-03",
        anonymizer_database="GeoIP2-Anonymous-IP",
        anonymizer_database_build="2025-06-02",
    )
    decision = gate().decide(identity=identity, origin=origin, model_id=model)
    return AuditEvent(
        decision,
        RequestContext(
            method="POST",
            path=path,
            headers=headers,
            status=decision.status or 200,
            upstream_status=200 if decision.allowed else None,
            upstream_duration_us=1200 if decision.allowed else None,
            gate_us=40,
            ending=Ending.COMPLETED if decision.allowed else Ending.DENIED,
            body_bytes=321,
        ),
    )


def file_config(
    directory: Path,
    *,
    sinks: tuple[SinkConfig, ...] = (),
    fsync: FsyncPolicy = FsyncPolicy.NEVER,
    max_bytes: int = 1 << 30,
    compress: bool = False,
    compression: str = "gzip",
    spool_max_bytes: int = 1 << 30,
    **kwargs: Any,
) -> AuditConfig:
    """A trail configuration with a file journal in *directory* plus *sinks* (rotated files
    gzipped, which the damage tests know how to break; zstd is the default elsewhere)."""
    journal = FileSinkConfig(
        name="file",
        path=directory / "audit.jsonl",
        max_bytes=max_bytes,
        rotate_seconds=None,
        fsync=fsync,
        compress=compress,
        compression=compression,
        spool_max_bytes=spool_max_bytes,
    )
    return AuditConfig(directory=directory, sinks=(journal, *sinks), **kwargs)


def audit_files(directory: Path) -> list[Path]:
    """The journal's files (rotated ones and the active one)."""
    return sorted(p for p in directory.iterdir() if p.name.startswith("audit") and p.is_file())


def records(paths: list[Path]) -> list[dict[str, Any]]:
    """Every record in the files, parsed."""
    out = []
    for path in paths:
        for line in open_bytes(path).splitlines():
            if line.strip():
                out.append(orjson.loads(line))
    return out


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate and key for localhost and 127.0.0.1, generated now (TLS tests)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "server.pem"
    key_path = directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def signing_key_files(directory: Path, name: str = "audit-key") -> tuple[Path, Path]:
    """A fresh Ed25519 key pair written as PEM files: (private PKCS#8, public SPKI)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    directory.mkdir(parents=True, exist_ok=True)
    private = directory / f"{name}.pem"
    public = directory / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def encrypted_key_file(path: Path) -> Path:
    """An Ed25519 private key in an encrypted PKCS#8 PEM (the gate cannot use it)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    return path


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past *limit* bytes fail as on a filling disk: a short write, then an error (EFBIG).

    The limit holds for every file this process writes: keep the block to the one write under test,
    on the main thread.
    """
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the error, not the signal's kill
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def rehash(line: bytes) -> bytes:
    """What a forger would do: recompute a changed line's own hash."""
    head = line[: len(line) - SUFFIX_LEN]
    return head + b',"hash":"' + hashlib.sha256(head).hexdigest().encode() + b'"}}\n'
