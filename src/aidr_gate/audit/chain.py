"""The hash chain: every record carries its sequence number, the previous record's hash and its own.

A record line is the renderer's JSON object with one member appended at the end::

    {...record...,"chain":{"seq":41,"prev":"<64 hex>","hash":"<64 hex>"}}\\n

``hash`` is SHA-256 of the line's exact bytes up to (not including) ``,"hash":``, which include
``seq`` and ``prev``. A verifier therefore never re-serialises anything: it cuts the fixed-length
suffix off the line and hashes the bytes as they sit on disk. The first record of a chain has
``prev`` = 64 zeros. Optional checkpoint records carry an Ed25519 signature over the sequence number
and hash of the record before them, so a holder of the public key can prove who wrote the chain.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from aidr_gate.audit.record import DATASET, _Clock

GENESIS = "0" * 64
_EMPTY = hashlib.sha256()
# hashlib's HASHLIB_GIL_MINSIZE is 2048: smaller updates keep the GIL.
_UNDER_GIL_RELEASE = 2047
_HASH_AT = b',"hash":"'
_MEMBER = b',"chain":{"seq":%d,"prev":"%b"'
_LINE_END = b'"}}\n'
# ,"hash":"<64 hex>"}}\n
SUFFIX_LEN = len(_HASH_AT) + 64 + 4
_CHAIN_AT = b'"chain":{"seq":'
CHECKPOINT_ACTION = "audit-checkpoint"
SIGNATURE_CONTEXT = b"aidr-gate-audit-checkpoint-v1"


@dataclass(frozen=True, slots=True)
class Link:
    """The chain position of one parsed line."""

    seq: int
    prev: str
    hash: str
    valid: bool  # the stored hash equals the hash of the line's bytes


def parse_link(line: bytes, *, check: bool = True) -> Link | None:
    """The chain member of a line (with or without its newline); ``None`` if the line has none.

    Reads only the end of the line: the JSON body is not parsed. With ``check=False`` the hash is
    not recomputed (``valid`` is then True): for reading sequence numbers only.
    """
    if line.endswith(b"\n"):
        line = line[:-1]
    if len(line) < SUFFIX_LEN or not line.endswith(b'"}}'):
        return None
    cut = len(line) - SUFFIX_LEN + 1
    if line[cut : cut + len(_HASH_AT)] != _HASH_AT:
        return None
    stored = line[cut + len(_HASH_AT) : cut + len(_HASH_AT) + 64]
    head = line[:cut]
    at = head.rfind(_CHAIN_AT)
    if at < 0:
        return None
    rest = head[at + len(_CHAIN_AT) :]
    comma = rest.find(b',"prev":"')
    if comma <= 0 or not rest.endswith(b'"') or len(rest) != comma + len(b',"prev":"') + 65:
        return None
    try:
        seq = int(rest[:comma])
        prev = rest[comma + 9 : comma + 9 + 64].decode("ascii")
        stored_hex = stored.decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return None
    valid = not check or hashlib.sha256(head).hexdigest() == stored_hex
    return Link(seq, prev, stored_hex, valid)


class Chain:
    """Links record bodies into the chain. Not thread-safe: one writer owns it."""

    def __init__(self, next_seq: int = 0, prev: str = GENESIS) -> None:
        self.next_seq = next_seq
        self._prev_bytes = prev.encode("ascii")

    @property
    def last_seq(self) -> int:
        """The sequence number of the last record linked (``-1`` before the first)."""
        return self.next_seq - 1

    def link(self, body: bytes) -> bytes:
        """The full line for one JSON object *body*: chain member appended, newline included."""
        pieces: list[bytes | memoryview] = []
        self.extend(pieces, (body,))
        return b"".join(pieces)

    def extend(self, out: list[bytes | memoryview], bodies: Sequence[bytes]) -> None:
        """Append the pieces of each body's line to *out*, in order; ``b"".join(out)`` gives the lines.

        The trail links a whole batch this way and joins it once: no line is copied on its own.
        """
        copy = _EMPTY.copy  # cheaper than constructing a new hash object
        seq = self.next_seq
        prev = self._prev_bytes
        append = out.append
        for body in bodies:
            member = _MEMBER % (seq, prev)
            end = len(body) - 1
            view = memoryview(body)  # no copy: hashed and joined in place
            if end < 2 or body[end] != 0x7D:  # not an object with members (never rendered)
                view, member, end = memoryview(b"{"), member[1:], 1
            # Fed in pieces under 2 KiB: hashlib releases the GIL for each update of 2 KiB or
            # more, and handing the GIL to the I/O thread and back for every record costs more
            # than the hashing itself (bench/audit.py).
            digest = copy()
            update = digest.update
            # A record of up to 4 KB (a typical one is 3) is fed without a loop: the general loop
            # costs about 0.5 µs more a record, a sixth of the chain's cost.
            if end <= _UNDER_GIL_RELEASE:
                update(view[:end])
            elif end <= 2 * _UNDER_GIL_RELEASE:
                update(view[:_UNDER_GIL_RELEASE])
                update(view[_UNDER_GIL_RELEASE:end])
            else:
                for start in range(0, end, _UNDER_GIL_RELEASE):
                    update(view[start : min(start + _UNDER_GIL_RELEASE, end)])
            update(member)
            prev = digest.hexdigest().encode("ascii")
            append(view[:end])
            append(member)
            append(_HASH_AT)
            append(prev)
            append(_LINE_END)
            seq += 1
        self.next_seq = seq
        self._prev_bytes = prev

    def position(self) -> tuple[int, str]:
        """The last sequence number and hash linked."""
        return self.next_seq - 1, self._prev_bytes.decode("ascii")


# -- reading files ---------------------------------------------------------------------------------


# -- signing ---------------------------------------------------------------------------------------


def key_id(public: Ed25519PublicKey) -> str:
    """A short stable id of a public key: the first 16 hex of SHA-256 of its raw bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def signed_message(seq: int, digest: str) -> bytes:
    """The bytes a checkpoint signs: a context string, the sequence number and the hash."""
    return b"%b\n%d\n%b" % (SIGNATURE_CONTEXT, seq, digest.encode("ascii"))


def _load_pem(data: bytes, public: bool = False) -> object:
    """A key from PEM bytes; every way a key can be unusable raises ``ValueError``.

    The library raises ``TypeError`` for an encrypted key and ``UnsupportedAlgorithm`` for a key
    type or curve it does not know; callers catch ``(OSError, ValueError)`` only.
    """
    try:
        if public:
            return serialization.load_pem_public_key(data)
        return serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # "Password was not given but private key is encrypted"
        raise ValueError(f"cannot use the key: {exc}") from None
    except UnsupportedAlgorithm as exc:
        raise ValueError(f"unsupported key: {exc}") from None


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM (PKCS#8) file; raises ``ValueError`` for anything else."""
    key = _load_pem(path.read_bytes())
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (a private key file gives its public half)."""
    data = path.read_bytes()
    if b"PRIVATE KEY" in data:
        private = _load_pem(data)
        if not isinstance(private, Ed25519PrivateKey):
            raise ValueError("not an Ed25519 key")
        return private.public_key()
    key = _load_pem(data, public=True)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


class Signer:
    """Emits a signed checkpoint every *every_records* records or *every_seconds* seconds."""

    def __init__(
        self,
        key: Ed25519PrivateKey,
        *,
        every_records: int = 1000,
        every_seconds: float = 60.0,
        clock: Any = time.time,
    ) -> None:
        self._key = key
        self.key_id = key_id(key.public_key())
        self.every_records = every_records
        self.every_seconds = every_seconds
        self._clock = clock
        self._timestamp = _Clock().format
        self._since = 0
        self._last = clock()

    def note(self, count: int) -> None:
        """Count records linked since the last checkpoint."""
        self._since += count

    @property
    def pending(self) -> bool:
        """True when records were linked since the last checkpoint."""
        return self._since > 0

    def due(self) -> bool:
        """True when a checkpoint should be written now."""
        if self._since == 0:
            return False
        return self._since >= self.every_records or self._clock() - self._last >= self.every_seconds

    def checkpoint(self, seq: int, digest: str) -> bytes:
        """The JSON body of a checkpoint over the record (*seq*, *digest*)."""
        now = self._clock()
        signature = self._key.sign(signed_message(seq, digest))
        body = orjson.dumps(
            {
                "@timestamp": self._timestamp(now),
                "event": {
                    "kind": "state",
                    "action": CHECKPOINT_ACTION,
                    "dataset": DATASET,
                    "provider": "aidr-gate",
                },
                "checkpoint": {
                    "alg": "Ed25519",
                    "key_id": self.key_id,
                    "seq": seq,
                    "hash": digest,
                    "records": self._since,
                    "pid": os.getpid(),
                    "signature": base64.b64encode(signature).decode("ascii"),
                },
            }
        )
        self._since = 0
        self._last = now
        return body


def check_signature(public: Ed25519PublicKey, checkpoint: dict[str, Any]) -> bool:
    """True when a checkpoint's signature verifies under *public*."""
    try:
        signature = base64.b64decode(checkpoint["signature"], validate=True)
        public.verify(signature, signed_message(int(checkpoint["seq"]), str(checkpoint["hash"])))
    except (InvalidSignature, KeyError, ValueError, TypeError):
        return False
    return True
