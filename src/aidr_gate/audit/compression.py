"""Rotated journal files, compressed: zstd (the default) or gzip, and read back either way.

zstd at level 1 costs under a microsecond a record and makes files smaller than gzip at level 9,
which cost 20 µs a record (bench/audit.py measures both); gzip stays for tools that only read gzip.
The codec is told by the file's first bytes, not its name, wherever files are read (``audit
verify``, ``replay``, the chain's recovery, a sink's backfill). zstd comes from the standard
library from Python 3.14 (``compression.zstd``), from its backport (``backports.zstd``) before.
"""

from __future__ import annotations

import gzip
import os
import shutil
import zlib
from pathlib import Path
from typing import BinaryIO

try:  # Python 3.14+
    from compression import zstd  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - the backport on 3.11 to 3.13
    from backports import zstd  # type: ignore[no-redef,unused-ignore]

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
SUFFIXES = {"gzip": ".gz", "zstd": ".zst"}
# What reading a damaged compressed file may raise.
READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    zlib.error,
    gzip.BadGzipFile,
    zstd.ZstdError,
)


def compressed(head: bytes) -> bool:
    """True when a file starting with *head* (4 bytes or more) is compressed."""
    return head[:2] == GZIP_MAGIC or head[:4] == ZSTD_MAGIC


def decompress(data: bytes) -> bytes:
    """A whole file's content, decompressed when it is gzip or zstd."""
    if data[:2] == GZIP_MAGIC:
        return gzip.decompress(data)
    if data[:4] == ZSTD_MAGIC:
        return bytes(zstd.decompress(data))
    return data


def reading(raw: BinaryIO) -> BinaryIO:
    """The stream to read records from, over an open file at its start (decompressing)."""
    head = raw.read(4)
    raw.seek(0)
    if head[:2] == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if head[:4] == ZSTD_MAGIC:
        return zstd.ZstdFile(raw, mode="rb")  # type: ignore[no-any-return]
    return raw


def compress_file(path: Path, codec: str, level: int) -> Path:
    """Write *path* compressed beside it (through a ``.part`` file, synced); the new path.

    Raises ``OSError``; the caller removes the original once this returns.
    """
    suffix = SUFFIXES[codec]
    part = path.with_name(path.name + suffix + ".part")
    with open(path, "rb") as src, open(part, "wb") as raw:
        if codec == "zstd":
            with zstd.ZstdFile(raw, mode="wb", level=level) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        else:
            with gzip.GzipFile(
                filename=path.name, fileobj=raw, mode="wb", mtime=0, compresslevel=level
            ) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        raw.flush()
        os.fsync(raw.fileno())
    target = path.with_name(path.name + suffix)
    os.replace(part, target)
    return target
