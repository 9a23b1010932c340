"""List snapshots and the list store: a set of list files loaded whole, reloaded, kept when broken.

A :class:`ListSnapshot` is every entry of a set of list files, keyed ``list:id``, with the
:class:`ListVersion` a decision records. The same key from two files (an SDN entry in OFAC's set
and in the CSL) is one party: its names, addresses and programs are merged.

:class:`ListStore` loads the set and reloads it when a file changes. A reload that fails (a file
missing, truncated or garbled) keeps the last good snapshot and says so, as every store of the gate
does; the first load's failure is the caller's startup error.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aidr_gate.errors import ConfigError, Problem
from aidr_gate.screening.csl import is_csl_header, read_csl
from aidr_gate.screening.csvfile import RawFile, read_list_file, rows
from aidr_gate.screening.entries import DateBasis, ListEntry, ListVersion, SourceVersion
from aidr_gate.screening.ofac import OfacFiles, read_ofac

logger = logging.getLogger("aidr_gate.screening")

OFAC_SDN = "ofac-sdn"
CSL = "csl"
FORMATS = (OFAC_SDN, CSL)
_OFAC_PART_COLUMNS = {5: "alt", 6: "add", 2: "sdn_comments"}


@dataclass(frozen=True, slots=True)
class ListSource:
    """One list to load: a CSL file, or an OFAC set named by its ``sdn.csv``."""

    path: Path
    format: str  # OFAC_SDN or CSL
    date: str | None = None  # the publication date, when the operator knows it (ISO date)


@dataclass(frozen=True, slots=True)
class ListSnapshot:
    """Every entry of a set of lists, and the version that names them."""

    entries: Mapping[str, ListEntry]
    version: ListVersion
    notes: tuple[str, ...] = ()  # what loading noticed but accepted (orphan rows, merged copies)

    def get(self, key: str) -> ListEntry | None:
        """The entry with this ``list:id`` key, or ``None``."""
        return self.entries.get(key)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[ListEntry]:
        return iter(self.entries.values())


def detect_format(path: Path) -> str:
    """``csl``, ``ofac-sdn``, or the OFAC part (``alt``, ``add``, ``sdn_comments``) a file holds."""
    raw = read_list_file(path)
    for _, row in rows(raw):
        if is_csl_header(row):
            return CSL
        if path.name.lower().endswith("sdn.csv") and not path.name.lower().endswith(
            "_comments.csv"
        ):
            return OFAC_SDN  # named as OFAC names it: its reader says what is wrong, by line
        if row[0].strip().isdigit():
            if len(row) == 12:
                return OFAC_SDN
            if len(row) in _OFAC_PART_COLUMNS:
                return _OFAC_PART_COLUMNS[len(row)]
        break
    raise ConfigError(
        Problem(str(path), "", "neither a CSL file (header row) nor a file of OFAC's SDN CSV set")
    )


def sources_for(paths: Iterable[str | Path], date: str | None = None) -> list[ListSource]:
    """The list sources that files (or directories of ``.csv`` files) hold, by their content.

    OFAC's alt, add and comments files belong to the ``sdn.csv`` beside them and are read with it;
    one whose ``sdn.csv`` is not there is an error.
    """
    files: list[Path] = []
    problems: list[Problem] = []
    for item in map(Path, paths):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.suffix.lower() == ".csv" and p.is_file())
        elif item.is_file():
            files.append(item)
        else:
            problems.append(Problem(str(item), "", "no such file or directory"))
    sources: dict[Path, ListSource] = {}
    for path in files:
        try:
            kind = detect_format(path)
        except ConfigError as exc:
            problems += exc.problems
            continue
        if kind in FORMATS:
            sources.setdefault(path.resolve(), ListSource(path, kind, date))
            continue
        sdn = _sdn_beside(path)
        if sdn is None:
            problems.append(Problem(str(path), "", f"an OFAC {kind} file without its sdn.csv"))
        else:
            sources.setdefault(sdn.resolve(), ListSource(sdn, OFAC_SDN, date))
    if problems:
        raise ConfigError(problems)
    return list(sources.values())


def _sdn_beside(part: Path) -> Path | None:
    for suffix in ("sdn_comments.csv", "alt.csv", "add.csv"):
        if part.name.lower().endswith(suffix):
            candidate = part.with_name(part.name[: -len(suffix)] + "sdn.csv")
            return candidate if candidate.is_file() else None
    return None


def _file_date(raw: RawFile) -> str:
    return datetime.fromtimestamp(raw.mtime, UTC).date().isoformat()


def _set_digest(raws: Sequence[RawFile]) -> str:
    digest = hashlib.sha256()
    for raw in raws:
        digest.update(f"{raw.digest}\n".encode())
    return "sha256:" + digest.hexdigest()


def _read_source(source: ListSource) -> tuple[list[ListEntry], SourceVersion, list[str]]:
    notes: list[str] = []
    if source.format == OFAC_SDN:
        read = read_ofac(OfacFiles.beside(source.path))
        entries, raws = read.entries, read.files
        notes += [
            f"{source.path}: {count} {part} row(s) name no entry of the sdn file"
            for part, count in read.orphans.items()
            if count
        ]
        basis, date = DateBasis.FILE_MODIFIED, _file_date(raws[0])
    elif source.format == CSL:
        entries, raw = read_csl(str(source.path))
        raws = [raw]
        dates = [e.start_date for e in entries if e.start_date]
        basis = DateBasis.NEWEST_ENTRY if dates else DateBasis.FILE_MODIFIED
        date = max(dates) if dates else _file_date(raw)
    else:
        raise ConfigError(Problem(str(source.path), "", f"unknown list format {source.format!r}"))
    if source.date is not None:
        basis, date = DateBasis.STATED, source.date
    version = SourceVersion(
        name=str(source.path),
        format=source.format,
        digest=raws[0].digest if len(raws) == 1 else _set_digest(raws),
        date=date,
        date_basis=basis,
        entries=len(entries),
        files=tuple(r.path for r in raws),
    )
    return entries, version, notes


def load_snapshot(sources: Sequence[ListSource]) -> ListSnapshot:
    """Read every source; raise :class:`ConfigError` with every problem of every file."""
    if not sources:
        raise ConfigError(Problem("<lists>", "", "no list files to screen against"))
    errors: list[ConfigError] = []
    merged: dict[str, ListEntry] = {}
    versions: list[SourceVersion] = []
    notes: list[str] = []
    copies = 0
    for source in sources:
        try:
            entries, version, source_notes = _read_source(source)
        except ConfigError as exc:
            errors.append(exc)
            continue
        versions.append(version)
        notes += source_notes
        for entry in entries:
            known = merged.get(entry.key)
            if known is not None:
                copies += 1
            merged[entry.key] = entry if known is None else known.merged(entry)
    if errors:
        raise ConfigError.merge(errors)
    if copies:
        notes.append(f"{copies} entries listed in more than one file were merged by key")
    digest = hashlib.sha256(
        "\n".join(sorted(f"{v.format} {v.digest}" for v in versions)).encode()
    ).hexdigest()
    snapshot_version = ListVersion(
        "sha256:" + digest, min(v.date for v in versions), tuple(versions)
    )
    return ListSnapshot(merged, snapshot_version, tuple(notes))


@dataclass(frozen=True, slots=True)
class ListReload:
    """The outcome of one reload: whether it succeeded, whether the lists changed, and why."""

    ok: bool
    changed: bool
    detail: str


class ListStore:
    """A set of list files loaded into a snapshot, reloaded when a file changes.

    Reads are lock-free (the snapshot is swapped whole); reloads run one at a time, off the
    request path (a caller on an event loop runs :meth:`reload` in a thread).
    """

    def __init__(self, sources: Sequence[ListSource]) -> None:
        self.sources = tuple(sources)
        self._snapshot: ListSnapshot | None = None
        self._stamp: tuple[tuple[int, int, int], ...] | None = None
        self._lock = threading.Lock()
        self.last_error: ConfigError | None = None

    @property
    def snapshot(self) -> ListSnapshot:
        """The current snapshot; :meth:`load` must have succeeded once."""
        if self._snapshot is None:
            raise RuntimeError("the screening lists were never loaded")
        return self._snapshot

    def _files(self) -> list[Path]:
        out: list[Path] = []
        for source in self.sources:
            if source.format == OFAC_SDN:
                out += OfacFiles.beside(source.path).paths()
            else:
                out.append(source.path)
        return out

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        stamps = []
        for path in self._files():
            try:
                info = os.stat(path)
                stamps.append((info.st_ino, info.st_size, info.st_mtime_ns))
            except OSError:
                stamps.append((-1, -1, -1))
        return tuple(stamps)

    def load(self) -> ListSnapshot:
        """Load every source now; a failure raises :class:`ConfigError` (a startup error)."""
        with self._lock:
            stamp = self._stat()
            snapshot = load_snapshot(self.sources)
            self._snapshot, self._stamp, self.last_error = snapshot, stamp, None
        logger.info(
            "screening lists loaded: %d entries, version %s", len(snapshot), snapshot.version.label
        )
        return snapshot

    def reload(self) -> ListReload:
        """Load the sources again; on failure keep the last good snapshot and say so."""
        with self._lock:
            old = self._snapshot
            stamp = self._stat()
            try:
                snapshot = load_snapshot(self.sources)
            except ConfigError as exc:
                self.last_error, self._stamp = exc, stamp
                kept = f"version {old.version.label}" if old is not None else "no lists at all"
                detail = (
                    f"screening list reload refused, keeping the last good lists ({kept}): {exc}"
                )
                logger.warning("%s", detail)
                return ListReload(False, False, detail)
            self._snapshot, self._stamp, self.last_error = snapshot, stamp, None
        changed = old is None or old.version.digest != snapshot.version.digest
        detail = (
            f"screening lists reloaded: {len(snapshot)} entries, version {snapshot.version.label}"
        )
        logger.info("%s", detail)
        return ListReload(True, changed, detail)

    def reload_if_changed(self) -> ListReload | None:
        """Reload when a file's inode, size or modification time changed; ``None`` when none did."""
        if self._stamp is not None and self._stat() == self._stamp:
            return None
        return self.reload()
