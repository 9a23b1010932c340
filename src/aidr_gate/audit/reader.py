"""Reading audit files back: their lines (:class:`FileLines`, :func:`first_seq`, :func:`read_tail`)
and any schema's line as the whole evidence tree ``replay`` and auditors use (:class:`RecordReader`).

Every reader of chain files goes through the first part: ``audit verify``, ``replay``, the journal's
recovery on start and a sink's backfill. A file is decompressed when its first bytes say gzip or
zstd (never by its name), split at ``\n`` only (what the writer ends every record with), and read
in large blocks. A final piece without its newline is a torn record: no line, but kept aside as
:attr:`FileLines.torn` for whoever reports it.

Schema 1 records (before the compact record) carry the whole tree under ``aidr`` (ECS) or
``unmapped.aidr`` (OCSF). Schema 2 records carry each fact once: the standard fields hold what they
can, ``aidr`` the rest, and ``aidr.facts`` what the record's class of decisions shares (``facts.py``):
inline in the class's first record of a file, by id in the others. :class:`RecordReader` reads
lines in file order, keeps the facts it meets (bounded), and gives every record's tree in schema
1's shape (``facts.full_tree``), so code that reads evidence reads one shape whatever wrote it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from aidr_gate.audit.chain import parse_link
from aidr_gate.audit.compression import READ_ERRORS, compressed, decompress, reading
from aidr_gate.bounded import store_bounded

# Where the ``aidr`` tree starts in a rendered schema 1 line: ECS puts it last before the chain
# member, OCSF inside ``unmapped``. JSON escapes every quote inside strings, so this byte sequence
# can only be structure.
_AIDR_AT = b'"aidr":{"schema":'
_COMPACT_AT = b'"aidr":{"schema":2,'
_CHAIN_AT = b',"chain":{"seq":'
FACTS_LIMIT = 65_536
BLOCK = 4 << 20  # bytes read per call: large enough that per-read overhead vanishes
PEEK_LIMIT = 4 << 20  # bytes read to find the first record of a file
TAIL_READ = 256 * 1024  # bytes read from the end of a plain file to find its last record

logger = logging.getLogger("aidr_gate.audit")


# -- the lines of a chain file -------------------------------------------------------------------


def open_file(path: Path) -> tuple[BinaryIO, BinaryIO]:
    """The raw file and the stream to read records from (decompressing gzip and zstd).

    The caller closes the raw file; raises what :data:`~aidr_gate.audit.compression.READ_ERRORS`
    names.
    """
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    try:
        return raw, reading(raw)
    except BaseException:
        raw.close()
        raise


def open_bytes(path: Path) -> bytes:
    """The whole content of an audit file, decompressed when it is gzip or zstd."""
    with open(path, "rb") as handle:
        data = handle.read()
    return decompress(data)


class FileLines:
    """The lines of one audit file, in order, a block at a time; see the module docstring."""

    def __init__(
        self,
        path: Path,
        *,
        block: int = BLOCK,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self.path = path
        self.block = block
        self.on_bytes = on_bytes  # hears how far into the (compressed) file the reading is
        self.torn = b""  # after the blocks: the bytes after the last newline (a torn record)

    def blocks(self) -> Iterator[list[bytes]]:
        """Lists of complete lines, each without its newline; raises ``READ_ERRORS``."""
        raw, stream = open_file(self.path)
        block, on_bytes = self.block, self.on_bytes
        with raw:
            carry = b""
            while True:
                data = stream.read(block)
                if on_bytes is not None:
                    on_bytes(raw.tell())
                if not data:
                    break
                lines = (carry + data).split(b"\n") if carry else data.split(b"\n")
                carry = lines.pop()
                yield lines
        self.torn = carry

    def lines(self) -> list[bytes]:
        """Every complete line of the file (a whole file in memory: for bounded files)."""
        return [line for lines in self.blocks() for line in lines]


def first_seq(path: Path) -> int | None:
    """The sequence number of a file's first chained record (read without hashing), or ``None``.

    Reads the file's head only; a damaged first line does not hide the records after it.
    """
    try:
        raw, stream = open_file(path)
        with raw:
            head = stream.read(PEEK_LIMIT)
    except READ_ERRORS:
        return None
    for line in head.split(b"\n"):
        link = parse_link(line, check=False)
        if link is not None:
            return link.seq
    return None


@dataclass(frozen=True, slots=True)
class Tail:
    """Where a file's chain ends: the last complete record, and any torn bytes after it."""

    seq: int
    hash: str
    torn: int  # bytes after the last complete record (0 when the file ends cleanly)
    valid: bool  # the last record's stored hash matches its bytes


def read_tail(path: Path) -> Tail | None:
    """The last record of a file; ``None`` when the file holds no complete record.

    Plain files are read from the end (a bounded window); compressed ones whole. A file that cannot
    be read (a corrupt compressed one included) is logged and counts as holding no record.
    """
    try:
        with open(path, "rb") as handle:
            packed = compressed(handle.read(4))
            if not packed:
                size = handle.seek(0, os.SEEK_END)
                start = max(0, size - TAIL_READ)
                handle.seek(start)
                data = handle.read()
                if start > 0:  # the window began mid-line: drop that partial line
                    data = data[data.find(b"\n") + 1 :]
        if packed:
            data = open_bytes(path)
    except READ_ERRORS as exc:
        logger.error("audit file %s cannot be read (%s); no chain tail taken from it", path, exc)
        return None
    torn = 0
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        torn = len(data) - cut
        data = data[:cut]
    lines = data.split(b"\n")
    lines.pop()  # the empty string after the final newline
    for raw in reversed(lines):
        link = parse_link(raw)
        if link is None:
            torn += len(raw) + 1  # a damaged line at the end counts as torn
            continue
        return Tail(link.seq, link.hash, torn, link.valid)
    return None


# -- the evidence tree of a line ----------------------------------------------------------------


def aidr_tree(line: bytes) -> dict[str, Any] | None:
    """The schema 1 ``aidr`` tree of one line, or ``None`` when the line is not a JSON object.

    Parses only the tree's own bytes when the line has the rendered layout (about a third less
    JSON to read); anything else is parsed whole, so an odd but valid record still works. A JSON
    object without a tree gives ``{}``.
    """
    start = line.find(_AIDR_AT)
    if start >= 0:
        end = line.rfind(_CHAIN_AT)
        if end > start:
            body = line[start + 7 : end]
            # OCSF closes ``unmapped`` before the chain member: drop that one brace.
            if body.endswith(b"}}") and line.startswith(b'{"class_uid"'):
                body = body[:-1]
            try:
                tree = orjson.loads(body)
            except orjson.JSONDecodeError:
                pass
            else:
                if isinstance(tree, dict):
                    return tree
    record = _object(line)
    if record is None:
        return None
    tree = record.get("aidr")
    if tree is None and isinstance(record.get("unmapped"), dict):
        tree = record["unmapped"].get("aidr")
    return tree if isinstance(tree, dict) else {}


def _object(line: bytes) -> dict[str, Any] | None:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _get(tree: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(tree, dict):
            return None
        tree = tree.get(key)
    return tree


class RecordReader:
    """Gives each line's evidence tree in schema 1's shape; feed it lines in file order."""

    def __init__(self) -> None:
        self.facts: dict[str, dict[str, Any]] = {}

    def tree(self, line: bytes) -> dict[str, Any] | None:
        """The line's tree: ``None`` for a line that is not a JSON object, ``{}`` for an object
        that is no record (a checkpoint). A record whose facts were not read (an earlier file of
        the chain is missing) has ``facts_missing``: the id it names."""
        if _COMPACT_AT in line:
            record = _object(line)
            if record is None:
                return None
            return self.expand(record)
        return aidr_tree(line)

    def expand(self, record: dict[str, Any]) -> dict[str, Any]:
        """A schema 2 record (parsed) as the whole tree."""
        ocsf = "class_uid" in record
        aidr = _get(record, "unmapped", "aidr") if ocsf else record.get("aidr")
        if not isinstance(aidr, dict):
            return {}
        if "render_error" in aidr:  # a minimal record after a renderer failure: no evidence
            return aidr
        facts_ref = aidr.get("facts")
        facts: dict[str, Any] | None = None
        if isinstance(facts_ref, dict) and isinstance(facts_ref.get("id"), str):
            facts = facts_ref  # the first record of its class in the file: kept for the others
            facts_ref = facts_ref["id"]
            store_bounded(self.facts, FACTS_LIMIT, facts_ref, facts)
        elif isinstance(facts_ref, str):
            facts = self.facts.get(facts_ref)
        tree = _ocsf_parts(record, aidr) if ocsf else _ecs_parts(record, aidr)
        decision = tree["decision"]
        decision["mode"] = _get(aidr, "decision", "mode") or "enforce"
        decision["status"] = _get(aidr, "decision", "status")
        more = _get(aidr, "decision", "reasons")
        decision["reasons"] = more if isinstance(more, list) else tree.pop("first_reason")
        tree.pop("first_reason", None)
        decision["blocked"] = decision["effect"] == "deny" and decision["mode"] == "enforce"
        if facts is None:
            tree["facts_missing"] = facts_ref
            facts = {}
        out: dict[str, Any] = {
            "schema": aidr.get("schema"),
            "decision": decision,
            "policy": facts.get("policy"),
            "shadow": facts.get("shadow"),
            "identity": _identity(tree, aidr, facts),
            "origin": _origin(tree, aidr, facts),
            "entity": facts.get("entity"),
            "model": facts.get("model"),
            "jurisdiction": facts.get("jurisdiction"),
            "agreement": facts.get("agreement"),
            "registry": facts.get("registry"),
            "screening": facts.get("screening"),
            "request": _request(tree, aidr),
            "gate": {"added_us": tree["gate_us"]},
            "upstream": {
                "status": _get(aidr, "upstream", "status"),
                "duration_us": _get(aidr, "upstream", "duration_us"),
                "error": _get(aidr, "upstream", "error"),
            },
            "signals": aidr.get("signals") if isinstance(aidr.get("signals"), dict) else None,
        }
        if "facts_missing" in tree:
            out["facts_missing"] = tree["facts_missing"]
        return out


def _reasons(first: Any) -> list[Any]:
    return [] if first is None else [first]


def _ecs_parts(record: dict[str, Any], aidr: dict[str, Any]) -> dict[str, Any]:
    """What a schema 2 ECS record says in its ECS fields."""
    duration = _get(record, "event", "duration")
    return {
        "decision": {
            "id": _get(record, "event", "id"),
            "at": record.get("@timestamp"),
            "effect": _get(aidr, "decision", "effect"),
            "rule": _get(record, "rule", "id"),
        },
        "first_reason": _reasons(_get(record, "event", "reason")),
        "entity_id": _get(record, "organization", "id"),
        "subject": _get(record, "user", "id"),
        "ip": _get(record, "client", "ip"),
        "country": _get(record, "client", "geo", "country_iso_code"),
        "user_agent": _get(record, "user_agent", "original"),
        "body_bytes": _get(record, "http", "request", "body", "bytes"),
        "gate_us": duration // 1000 if isinstance(duration, int) else None,
    }


def _iso_millis(millis: int) -> str:
    """Epoch milliseconds as the records' ISO 8601 text (``...T08:03:20.447Z``)."""
    return "%s.%03dZ" % (  # noqa: UP031 - the renderer's own layout
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000)),
        millis % 1000,
    )


def _ocsf_effect(record: dict[str, Any]) -> str:
    """The gate's effect from OCSF's action and disposition (see ``ocsf._disposition``)."""
    if record.get("action_id") == 2 or record.get("disposition_id") == 15:
        return "deny"
    return "log" if record.get("disposition_id") == 17 else "allow"


def _ocsf_parts(record: dict[str, Any], aidr: dict[str, Any]) -> dict[str, Any]:
    """What a schema 2 OCSF record says in its OCSF attributes."""
    millis = record.get("time")
    return {
        "decision": {
            "id": _get(record, "metadata", "uid"),
            "at": _iso_millis(millis) if isinstance(millis, int) else None,
            "effect": _ocsf_effect(record),
            "rule": _get(record, "firewall_rule", "uid"),
        },
        "first_reason": _reasons(record.get("status_code")),
        "entity_id": _get(record, "actor", "user", "org", "uid"),
        "subject": _get(record, "actor", "user", "uid"),
        "ip": _get(record, "src_endpoint", "ip"),
        "country": _get(record, "src_endpoint", "location", "country"),
        "user_agent": _get(record, "http_request", "user_agent"),
        "body_bytes": _get(record, "http_request", "length"),
        "gate_us": aidr.get("gate_us"),
    }


def _identity(tree: dict[str, Any], aidr: dict[str, Any], facts: dict[str, Any]) -> Any:
    own = aidr.get("identity")
    if not isinstance(own, dict):
        return None
    shared = facts.get("identity") or {}
    return {
        "entity_id": tree["entity_id"],
        "subject": tree["subject"],
        "issuer": shared.get("issuer"),
        "key_id": shared.get("key_id"),
        "algorithm": shared.get("algorithm"),
        "expires_at": own.get("expires_at"),
        "claimed_headquarters": shared.get("claimed_headquarters"),
        "claimed_parent": shared.get("claimed_parent"),
        "method": shared.get("method"),
    }


def _origin(tree: dict[str, Any], aidr: dict[str, Any], facts: dict[str, Any]) -> Any:
    own = aidr.get("origin")
    if not isinstance(own, dict):
        return None
    shared = facts.get("origin") or {}
    return {
        "ip": tree["ip"],
        "resolved_by": shared.get("resolved_by"),
        "peer": own["peer"] if "peer" in own else tree["ip"],
        "country": tree["country"],
        "country_source": shared.get("country_source"),
        "anonymizer": shared.get("anonymizer", []),
        "database": shared.get("database"),
        "database_build": shared.get("database_build"),
        "anonymizer_database": shared.get("anonymizer_database"),
        "anonymizer_database_build": shared.get("anonymizer_database_build"),
        "notes": own.get("notes", []),
        "region": shared.get("region"),
        "region_source": shared.get("region_source", "none"),
    }


def _request(tree: dict[str, Any], aidr: dict[str, Any]) -> Any:
    own = aidr.get("request")
    if not isinstance(own, dict):
        return None
    headers = dict(own.get("headers") or {})
    if tree["user_agent"] is not None:
        headers["user-agent"] = tree["user_agent"]
    return {
        "ending": own.get("ending"),
        "headers": headers,
        "body_bytes": tree["body_bytes"],
        "cut_of": own.get("cut_of"),
    }
