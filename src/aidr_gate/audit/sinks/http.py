"""HTTP batches: Splunk HTTP Event Collector (``hec``) or Elasticsearch ``_bulk`` (``elasticsearch``).

Records are embedded as they are, never re-serialised. Elasticsearch gets ``create`` actions whose
``_id`` is the record's chain hash, so a batch delivered twice (a retry after a lost response)
cannot duplicate anything: the second copy is answered 409 and counted as delivered. Splunk HEC has
no such idempotence: a response lost after Splunk indexed the batch leads to a duplicate on retry
(the chain's ``seq`` and ``hash`` let a search drop it).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator, Sequence
from typing import Any

import aiohttp
import orjson

from aidr_gate.audit.chain import SUFFIX_LEN
from aidr_gate.audit.sinks import SinkError, SinkRejected
from aidr_gate.settings.audit import HttpSinkConfig

DEFAULT_INDEX = "aidr-gate-audit"
_RETRY_STATUS = frozenset({401, 403, 404, 408, 425, 429})


def record_id(line: bytes) -> bytes:
    """The record's id for receivers: its chain hash (unique, and the same on every redelivery)."""
    end = len(line) - (4 if line.endswith(b"\n") else 3)
    return line[end - 64 : end] if len(line) >= SUFFIX_LEN else b""


class HttpSink:
    """Posts batches to a collector with aiohttp."""

    kind = "http"

    def __init__(self, config: HttpSinkConfig) -> None:
        self.config = config
        self.name = config.name
        self._session: aiohttp.ClientSession | None = None
        self._headers: dict[str, str] = dict(config.headers)
        index = (config.index or DEFAULT_INDEX).encode()
        if config.format == "elasticsearch":
            url = config.url.rstrip("/")
            self._url = url if url.endswith("/_bulk") else url + "/_bulk"
            self._headers.setdefault("Content-Type", "application/x-ndjson")
            self._index = index
        else:
            self._url = config.url
            self._headers.setdefault("Content-Type", "application/json")
            self._hec_prefix = b'{"sourcetype":"_json","source":"aidr-gate",' + (
                b'"index":"%b",' % index if config.index else b""
            )

    async def open(self) -> None:
        """Read the token and open the client session."""
        config = self.config
        if config.token_file is not None:
            token = config.token_file.read_text().strip()
            scheme = config.auth_scheme or ("Splunk" if config.format == "hec" else "ApiKey")
            self._headers["Authorization"] = f"{scheme} {token}"
        context: ssl.SSLContext | bool = True
        if config.url.startswith("https://"):
            context = ssl.create_default_context(
                cafile=str(config.ca_file) if config.ca_file else None
            )
            if not config.verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=config.timeout),
            connector=aiohttp.TCPConnector(ssl=context, limit=4),
            headers=self._headers,
        )

    def _chunks(self, lines: Sequence[bytes]) -> Iterator[Sequence[bytes]]:
        limit = self.config.max_batch_bytes
        start = size = 0
        for index, line in enumerate(lines):
            if size and size + len(line) > limit:
                yield lines[start:index]
                start, size = index, 0
            size += len(line) + 96
        if start < len(lines):
            yield lines[start:]

    def body(self, lines: Sequence[bytes]) -> bytes:
        """The request body for a batch, in the configured shape."""
        if self.config.format == "elasticsearch":
            return b"".join(
                b'{"create":{"_index":"%b","_id":"%b"}}\n%b' % (self._index, record_id(line), line)
                for line in lines
            )
        prefix = self._hec_prefix
        return b"".join(b'%b"event":%b}\n' % (prefix, line.rstrip(b"\n")) for line in lines)

    async def send(self, lines: Sequence[bytes]) -> None:
        """Deliver the batch (split by ``max_batch_bytes``); partial progress is reported."""
        done = 0
        rejected = 0
        for chunk in self._chunks(lines):
            try:
                rejected += await self._post(chunk)
            except SinkError as exc:
                raise SinkError(str(exc), delivered=done) from None
            done += len(chunk)
        if rejected:
            raise SinkRejected(f"{self.name}: the collector refused {rejected} records", rejected)

    async def _post(self, lines: Sequence[bytes]) -> int:
        session = self._session
        if session is None:
            raise SinkError(f"{self.name}: not open")
        try:
            async with session.post(self._url, data=self.body(lines)) as response:
                status = response.status
                text = await response.read()
                if status >= 500 or status in _RETRY_STATUS:
                    raise SinkError(f"{self.name}: HTTP {status}")
                if status >= 400:
                    # The records themselves were refused (malformed for this receiver): retrying
                    # cannot help. They stay in the journal; the loss for this sink is counted.
                    return len(lines)
                if self.config.format == "elasticsearch":
                    return self._bulk_result(text)
                return 0
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise SinkError(f"{self.name}: {type(exc).__name__}: {exc}") from None

    def _bulk_result(self, text: bytes) -> int:
        try:
            result: dict[str, Any] = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise SinkError(f"{self.name}: the _bulk response is not JSON") from None
        if not result.get("errors"):
            return 0
        rejected = 0
        retry = False
        for item in result.get("items", []):
            entry: dict[str, Any] = next(iter(item.values()), {})
            status = int(entry.get("status", 500))
            if status < 300 or status == 409:  # 409: already indexed by an earlier attempt
                continue
            if status == 429 or status >= 500:
                retry = True
            else:
                rejected += 1
        if retry:  # create is idempotent by _id: resend the whole batch
            raise SinkError(f"{self.name}: some bulk items must be retried")
        return rejected

    async def close(self) -> None:
        """Close the session."""
        if self._session is not None:
            await self._session.close()
            self._session = None
