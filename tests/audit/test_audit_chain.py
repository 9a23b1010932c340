"""The hash chain: linking, parsing without re-serialising, tail recovery, signed checkpoints."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aidr_gate.audit.chain import (
    GENESIS,
    Chain,
    Signer,
    check_signature,
    key_id,
    load_private_key,
    load_public_key,
    parse_link,
)
from aidr_gate.audit.reader import read_tail
from support.audit_support import encrypted_key_file

# An EC key on secp112r1, a curve the cryptography library does not support (made for the tests).
UNSUPPORTED_PRIVATE = b"""-----BEGIN PRIVATE KEY-----
ME4CAQAwEAYHKoZIzj0CAQYFK4EEAAYENzA1AgEBBA5etVUstvmcciHtEfKa7qEg
Ax4ABB/aReACSK24MlqDgx7Zzas5eivMjHU3wAP5d4c=
-----END PRIVATE KEY-----
"""
UNSUPPORTED_PUBLIC = b"""-----BEGIN PUBLIC KEY-----
MDIwEAYHKoZIzj0CAQYFK4EEAAYDHgAEH9pF4AJIrbgyWoODHtnNqzl6K8yMdTfA
A/l3hw==
-----END PUBLIC KEY-----
"""


def test_link_appends_seq_prev_and_hash_of_the_exact_bytes() -> None:
    chain = Chain()
    first = chain.link(b'{"a":1}')
    second = chain.link(b'{"b":"x"}')
    assert first.endswith(b"\n")
    doc = orjson.loads(first)
    assert doc["a"] == 1
    assert doc["chain"]["seq"] == 0
    assert doc["chain"]["prev"] == GENESIS
    head = first[: first.index(b',"hash":')]
    assert doc["chain"]["hash"] == hashlib.sha256(head).hexdigest()
    assert orjson.loads(second)["chain"]["prev"] == doc["chain"]["hash"]
    assert chain.position() == (1, orjson.loads(second)["chain"]["hash"])


@pytest.mark.parametrize("size", [0, 2040, 2047, 2048, 3000, 4094, 4095, 9000])
def test_a_batch_linked_in_pieces_equals_the_lines_linked_one_by_one(size: int) -> None:
    """``extend`` feeds the hash in pieces under 2 KiB: every body size hashes its exact bytes."""
    bodies = [b'{"pad":"' + b"p" * size + b'","n":%d}' % n for n in range(3)] + [b"{}"]
    one_by_one = Chain(7, "cd" * 32)
    expected = b"".join(one_by_one.link(body) for body in bodies)
    batched = Chain(7, "cd" * 32)
    pieces: list[bytes | memoryview] = []
    batched.extend(pieces, bodies)
    assert b"".join(pieces) == expected
    assert batched.position() == one_by_one.position()
    for number, line in enumerate(expected.splitlines(keepends=True)):
        link = parse_link(line)
        assert link is not None and link.valid and link.seq == 7 + number
        head = line[: line.index(b',"hash":')]
        assert link.hash == hashlib.sha256(head).hexdigest()


def test_parse_link_reads_the_tail_only() -> None:
    chain = Chain(41, "ab" * 32)
    line = chain.link(b'{"x":"' + b"y" * 3000 + b'"}')
    link = parse_link(line)
    assert link is not None
    assert (link.seq, link.prev, link.valid) == (41, "ab" * 32, True)
    changed = line.replace(b"yyy", b"yyz", 1)
    bad = parse_link(changed)
    assert bad is not None
    assert not bad.valid
    assert parse_link(changed, check=False) is not None


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"{}\n",
        b"not json at all\n",
        b'{"chain":{"seq":1,"prev":"00","hash":"' + b"0" * 64 + b'"}}\n',
        b'{"chain":{"seq":x,"prev":"' + b"0" * 64 + b'","hash":"' + b"0" * 64 + b'"}}\n',
    ],
)
def test_parse_link_rejects_what_is_not_a_link(line: bytes) -> None:
    assert parse_link(line) is None


def test_empty_body_still_links() -> None:
    line = Chain().link(b"{}")
    assert orjson.loads(line)["chain"]["seq"] == 0
    assert parse_link(line) is not None


def test_read_tail_reports_a_torn_line(tmp_path: Path) -> None:
    chain = Chain()
    path = tmp_path / "a.jsonl"
    lines = [chain.link(b'{"n":%d}' % i) for i in range(5)]
    path.write_bytes(b"".join(lines) + lines[0][:17])
    tail = read_tail(path)
    assert tail is not None
    assert (tail.seq, tail.torn, tail.valid) == (4, 17, True)
    path.write_bytes(b"".join(lines))
    clean = read_tail(path)
    assert clean is not None
    assert clean.torn == 0
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert read_tail(tmp_path / "empty.jsonl") is None


def test_read_tail_of_a_large_file(tmp_path: Path) -> None:
    chain = Chain()
    path = tmp_path / "big.jsonl"
    body = b'{"pad":"' + b"p" * 4000 + b'"}'
    path.write_bytes(b"".join(chain.link(body) for _ in range(200)))
    tail = read_tail(path)
    assert tail is not None
    assert tail.seq == 199


def test_checkpoint_signature_verifies_only_with_the_right_key() -> None:
    key = Ed25519PrivateKey.generate()
    signer = Signer(key, every_records=3, every_seconds=3600)
    assert not signer.due()
    signer.note(3)
    assert signer.due()
    body = signer.checkpoint(7, "cd" * 32)
    checkpoint = orjson.loads(body)["checkpoint"]
    assert checkpoint["key_id"] == key_id(key.public_key())
    assert check_signature(key.public_key(), checkpoint)
    assert not check_signature(Ed25519PrivateKey.generate().public_key(), checkpoint)
    assert not check_signature(key.public_key(), {**checkpoint, "seq": 8})
    assert not signer.pending


def test_key_loaders_raise_value_error_for_keys_they_cannot_use(tmp_path: Path) -> None:
    """Callers catch (OSError, ValueError): an encrypted or unsupported key must not escape that."""
    encrypted = encrypted_key_file(tmp_path / "encrypted.pem")
    (tmp_path / "weak.pem").write_bytes(UNSUPPORTED_PRIVATE)
    (tmp_path / "weak.pub.pem").write_bytes(UNSUPPORTED_PUBLIC)
    for path in (encrypted, tmp_path / "weak.pem"):
        with pytest.raises(ValueError, match=r"\S"):
            load_private_key(path)
    for path in (encrypted, tmp_path / "weak.pem", tmp_path / "weak.pub.pem"):
        with pytest.raises(ValueError, match=r"\S"):
            load_public_key(path)
