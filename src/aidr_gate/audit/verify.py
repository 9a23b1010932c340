"""Checks audit files: the hash chain, the sequence, and (with public keys) the signed checkpoints.

Files may be given in any order, rotated and compressed ones included; they are ordered by the
first sequence number they hold. Each line's hash is recomputed over its exact bytes (nothing is
re-serialised). The first problem named is the first place the chain breaks: a record that was
changed, removed, reordered or inserted, with its file and line. A torn final line (a crash
mid-write) is reported as a warning: the chain continues past it in the next file.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aidr_gate.audit.chain import (
    CHECKPOINT_ACTION,
    GENESIS,
    Link,
    check_signature,
    key_id,
    parse_link,
)
from aidr_gate.audit.compression import READ_ERRORS
from aidr_gate.audit.reader import FileLines

MAX_ERRORS = 20
_CHECKPOINT_MARK = b'"action":"' + CHECKPOINT_ACTION.encode() + b'"'


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem (or warning) found, and where."""

    kind: str  # changed, removed, reordered, inserted, torn, unreadable, signature, unsigned, start
    file: str
    line: int
    seq: int | None
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.kind}: {self.message}"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "kind": self.kind,
            "file": self.file,
            "line": self.line,
            "seq": self.seq,
            "message": self.message,
            "severity": self.severity,
        }


@dataclass(slots=True)
class VerifyResult:
    """What verification found."""

    files: int = 0
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str | None = None
    checkpoints: int = 0
    signed_upto: int | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        """The findings that break the chain."""
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        """The findings that do not break it (a torn final line, an unsigned tail)."""
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when the chain is intact."""
        return not self.errors

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "ok": self.ok,
            "files": self.files,
            "records": self.records,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "last_hash": self.last_hash,
            "checkpoints": self.checkpoints,
            "signed_upto": self.signed_upto,
            "findings": [f.to_dict() for f in self.findings],
        }


@dataclass(slots=True)
class _Line:
    file: str
    number: int
    raw: bytes  # without its newline
    link: Link | None
    last: bool  # the final line of its file
    terminated: bool  # ends with a newline


def _read(path: Path, result: VerifyResult) -> list[_Line]:
    name = str(path)
    reader = FileLines(path)
    try:
        complete = reader.lines()
    except READ_ERRORS as exc:
        result.findings.append(Finding("unreadable", name, 0, None, f"cannot read the file: {exc}"))
        return []
    out = [
        _Line(name, index, raw, parse_link(raw), False, True)
        for index, raw in enumerate(complete, 1)
    ]
    if reader.torn:
        out.append(_Line(name, len(out) + 1, reader.torn, None, True, False))
    elif out:
        out[-1].last = True
    return out


def chains_of(files: Sequence[Path]) -> dict[str, list[Path]]:
    """Files grouped per process slot when every file sits in a slot directory (``.../p<N>/``,
    see ``audit.per_process``) of one audit directory; otherwise one group, the files of one chain.
    Keys are the slot directories (``""`` for the single group)."""
    parents = {Path(f).parent for f in files}
    slotted = all(p.name[:1] == "p" and p.name[1:].isdigit() for p in parents)
    if len(parents) < 2 or not slotted or len({p.parent for p in parents}) != 1:
        return {"": [Path(f) for f in files]}
    return {
        str(parent): [Path(f) for f in files if Path(f).parent == parent]
        for parent in sorted(parents, key=lambda p: int(p.name[1:]))
    }


def verify_files(
    paths: Sequence[Path], public_keys: Iterable[Ed25519PublicKey] = ()
) -> VerifyResult:
    """Verify the chain across *paths* (any order); with keys, the signed checkpoints too."""
    result = VerifyResult(files=len(paths))
    keys = {key_id(k): k for k in public_keys}
    per_file: list[tuple[int, int, list[_Line]]] = []
    for order, path in enumerate(paths):
        lines = _read(Path(path), result)
        first = next((ln.link.seq for ln in lines if ln.link is not None), None)
        per_file.append((first if first is not None else 1 << 62, order, lines))
    per_file.sort(key=lambda item: (item[0], item[1]))
    ordered = [line for _, _, lines in per_file for line in lines]
    seen: dict[int, _Line] = {}
    for line in ordered:
        if line.link is not None and line.link.valid:
            seen.setdefault(line.link.seq, line)
    _walk(ordered, seen, keys, result)
    return result


def _error(result: VerifyResult, finding: Finding) -> bool:
    """Record an error; False once enough were found to stop."""
    result.findings.append(finding)
    return len(result.errors) < MAX_ERRORS


@dataclass(slots=True)
class _Walk:
    """Where the walk through the chain is: what comes next, the record before, the seqs met."""

    seen: dict[int, _Line]  # the first valid record of each seq, wherever it is
    keys: dict[str, Ed25519PublicKey]
    result: VerifyResult
    expected: int | None = None  # None until the first record
    prev_hash: str | None = None
    prev_line: _Line | None = None
    positions: set[int] = field(default_factory=set)


def _walk(
    ordered: list[_Line],
    seen: dict[int, _Line],
    keys: dict[str, Ed25519PublicKey],
    result: VerifyResult,
) -> None:
    walk = _Walk(seen, keys, result)
    for line in ordered:
        link = line.link
        if link is None:
            finding = _unchained(line, walk)
        else:
            result.records += 1
            finding = _link_error(line, link, walk)
        if finding is not None and not _error(result, finding):
            return  # enough errors named: the first ones are what matter
        if link is not None:
            _advance(line, link, walk)
    if keys:
        _signed_coverage(ordered, walk)


def _unchained(line: _Line, walk: _Walk) -> Finding | None:
    """A line without a chain member: a torn or blank end of file is no error, anything else is."""
    if not line.last or (line.terminated and line.raw.strip()):
        return Finding(
            "changed",
            line.file,
            line.number,
            None,
            "not a chained record (the line was changed or inserted)",
        )
    if line.raw.strip():
        expected = walk.expected
        after = f"after seq {expected - 1}" if expected is not None else "at the start"
        walk.result.findings.append(
            Finding(
                "torn",
                line.file,
                line.number,
                None,
                f"torn final line ({len(line.raw)} bytes) {after}: a write cut short "
                "(crash) or a truncated file",
                "warning",
            )
        )
    return None


def _link_error(line: _Line, link: Link, walk: _Walk) -> Finding | None:
    """The error a chained record makes where it stands, if any: the first of these that holds."""
    if not link.valid:
        return _content_changed(line, link)
    expected = walk.expected
    if expected is None:
        _start(line, link, walk)
        return None
    if link.seq == expected:
        return _replaced(line, link, walk) if link.prev != walk.prev_hash else None
    if link.seq > expected:
        return _ahead(line, link, walk, expected)
    return _behind(line, link, walk, expected)


def _content_changed(line: _Line, link: Link) -> Finding:
    return Finding(
        "changed",
        line.file,
        line.number,
        link.seq,
        f"record seq {link.seq} does not match its hash: its content was changed",
    )


def _start(line: _Line, link: Link, walk: _Walk) -> None:
    """The first record: a warning when it is not the chain's genesis."""
    if link.seq != 0 or link.prev != GENESIS:
        walk.result.findings.append(
            Finding(
                "start",
                line.file,
                line.number,
                link.seq,
                f"the files begin at seq {link.seq}: earlier records were not given "
                "(rotated away, or removed)",
                "warning",
            )
        )
    walk.result.first_seq = link.seq


def _replaced(line: _Line, link: Link, walk: _Walk) -> Finding:
    """The expected seq, but not chained to the record before it."""
    before = walk.prev_line
    where = f"{before.file}:{before.number}" if before else "before it"
    return Finding(
        "changed",
        line.file,
        line.number,
        link.seq,
        f"record seq {link.seq} does not follow the record before it ({where}): "
        "that record was replaced or inserted",
    )


def _ahead(line: _Line, link: Link, walk: _Walk, expected: int) -> Finding:
    """A seq past the expected one: the records between were moved elsewhere, or removed."""
    seen = walk.seen
    missing = [s for s in range(expected, min(link.seq, expected + 1000)) if s in seen]
    if missing:
        other = seen[missing[0]]
        return Finding(
            "reordered",
            line.file,
            line.number,
            link.seq,
            f"record seq {link.seq} comes before seq {missing[0]} "
            f"({other.file}:{other.number}): records were reordered",
        )
    gap = f"{expected}" if link.seq == expected + 1 else f"{expected}..{link.seq - 1}"
    before = walk.prev_line
    resumes = (
        f" (the chain resumes in another file after {before.file})"
        if before and before.file != line.file
        else ""
    )
    return Finding(
        "removed",
        line.file,
        line.number,
        link.seq,
        f"record(s) seq {gap} are missing before seq {link.seq}: removed" + resumes,
    )


def _behind(line: _Line, link: Link, walk: _Walk, expected: int) -> Finding:
    """A seq already passed: a second record at a position, or one out of order."""
    if link.seq in walk.positions:
        return Finding(
            "inserted",
            line.file,
            line.number,
            link.seq,
            f"a second record with seq {link.seq}: inserted",
        )
    return Finding(
        "reordered",
        line.file,
        line.number,
        link.seq,
        f"record seq {link.seq} comes after seq {expected - 1}: records were reordered",
    )


def _advance(line: _Line, link: Link, walk: _Walk) -> None:
    """Past a chained record: check it if it is a checkpoint, and expect the one after it."""
    walk.positions.add(link.seq)
    if _CHECKPOINT_MARK in line.raw:
        _checkpoint(line, walk.prev_line, walk.keys, walk.result)
    walk.expected = link.seq + 1
    walk.prev_hash = link.hash
    walk.prev_line = line
    walk.result.last_seq = link.seq
    walk.result.last_hash = link.hash


def _signed_coverage(ordered: list[_Line], walk: _Walk) -> None:
    """With keys: an error when no checkpoint was signed, a warning for an unsigned tail."""
    result = walk.result
    if result.signed_upto is None:
        _error(
            result,
            Finding(
                "unsigned",
                ordered[-1].file if ordered else "-",
                ordered[-1].number if ordered else 0,
                None,
                "no checkpoint signed by the given key",
            ),
        )
    elif result.last_seq is not None and result.signed_upto < result.last_seq - 1:
        before = walk.prev_line
        result.findings.append(
            Finding(
                "unsigned",
                before.file if before else "-",
                before.number if before else 0,
                result.last_seq,
                f"{result.last_seq - result.signed_upto - 1} records after the last signed "
                f"checkpoint (seq {result.signed_upto}) are covered by the chain only",
                "warning",
            )
        )


def _checkpoint(
    line: _Line,
    prev_line: _Line | None,
    keys: dict[str, Ed25519PublicKey],
    result: VerifyResult,
) -> None:
    try:
        checkpoint = orjson.loads(line.raw)["checkpoint"]
        seq = int(checkpoint["seq"])
        digest = str(checkpoint["hash"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        _error(result, Finding("changed", line.file, line.number, None, "malformed checkpoint"))
        return
    result.checkpoints += 1
    before = prev_line.link if prev_line is not None else None
    if before is None or before.seq != seq or before.hash != digest:
        _error(
            result,
            Finding(
                "changed",
                line.file,
                line.number,
                line.link.seq if line.link else None,
                f"checkpoint over seq {seq} does not match the record before it",
            ),
        )
        return
    if not keys:
        return
    key = keys.get(str(checkpoint.get("key_id")))
    if key is None:
        _error(
            result,
            Finding(
                "signature",
                line.file,
                line.number,
                seq,
                f"checkpoint signed by key {checkpoint.get('key_id')!r}, not a given key",
            ),
        )
        return
    if not check_signature(key, checkpoint):
        _error(
            result,
            Finding("signature", line.file, line.number, seq, "checkpoint signature is invalid"),
        )
        return
    result.signed_upto = seq
