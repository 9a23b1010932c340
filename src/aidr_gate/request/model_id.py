"""Where a request names its model: a header, the path (KServe/Triton), the JSON body (OpenAI), or a
multipart form field (OpenAI audio and image uploads; parsed in ``form_model.py``).

The body is read up to a limit and handed back to the app byte for byte: the app sees an untouched
request. Nothing here decides anything; it only finds the model id or says why it cannot.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from aidr_gate.asgi.deadlines import Deadlines
from aidr_gate.asgi.types import Message, Receive
from aidr_gate.bounded import store_bounded
from aidr_gate.errors import (
    BodyIncomplete,
    BodyNotJSON,
    BodyTimeout,
    BodyTooComplex,
    BodyTooLarge,
    BufferBudgetExhausted,
    ModelMissing,
)
from aidr_gate.limits import BufferBudget, Limits

# OpenAI-compatible endpoints (and vLLM's extras) that carry ``"model"`` in a JSON body.
DEFAULT_JSON_PATHS: tuple[str, ...] = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/messages",
    "/v1/rerank",
    "/v2/rerank",
    "/rerank",
    "/v1/score",
    "/score",
    "/pooling",
    "/classify",
    "/tokenize",
    "/detokenize",
)
# OpenAI-compatible endpoints that upload a file and carry ``model`` as a multipart form field.
DEFAULT_FORM_PATHS: tuple[str, ...] = (
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/v1/images/edits",
    "/v1/images/variations",
)
# KServe v1/v2 and Triton put the model in the path.
DEFAULT_PATH_PATTERNS: tuple[str, ...] = (
    "/v2/models/{model}/infer",
    "/v2/models/{model}/versions/{version}/infer",
    "/v2/models/{model}/generate",
    "/v2/models/{model}/generate_stream",
    "/v2/models/{model}/ready",
    "/v2/models/{model}",
    "/v1/models/{model}:predict",
    "/v1/models/{model}",
)
MAX_MODEL_ID = 256
# Multipart uploads carry files (OpenAI accepts audio up to 25 MB) and are read whole, to check that
# the form names one model: they get their own, larger limit than JSON bodies.
DEFAULT_MAX_FORM_BYTES = 32 * 1024 * 1024
# Paths up to this length have their answer cached, at most PATH_CACHE_SIZE of them (cleared when
# full, like the client-IP caches): a server sees a few paths over and over.
MAX_CACHED_PATH = 512
PATH_CACHE_SIZE = 1024
_MISS = ""  # never a model id (valid_model_id refuses it): marks a path not yet seen


def compile_path_pattern(pattern: str) -> re.Pattern[str]:
    """``/v2/models/{model}/infer`` -> a regex with a ``model`` group; other ``{names}`` match a segment."""
    out = ["^"]
    for piece in re.split(r"(\{[a-z_]+\})", pattern):
        if piece == "{model}":
            out.append(r"(?P<model>[^/:]+)")
        elif piece.startswith("{") and piece.endswith("}"):
            out.append(r"[^/]+")
        else:
            out.append(re.escape(piece))
    out.append("$")
    return re.compile("".join(out))


def valid_model_id(value: object) -> str | None:
    """The model id if it is a printable string of sane length, else ``None``."""
    if isinstance(value, str) and 0 < len(value) <= MAX_MODEL_ID and value.isprintable():
        return value
    return None


@dataclass(frozen=True, slots=True)
class ModelSources:
    """The configured places a model id comes from, compiled once."""

    json_paths: frozenset[str]
    path_patterns: tuple[re.Pattern[str], ...]
    header: bytes | None
    max_body_bytes: int
    form_paths: frozenset[str] = frozenset()
    max_form_bytes: int = DEFAULT_MAX_FORM_BYTES

    # path -> its answer; the patterns never change, so an answer never goes stale.
    _found: dict[str, str | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def from_path(self, path: str) -> str | None:
        """The model named by a path pattern, or ``None``."""
        found = self._found.get(path, _MISS)
        if found != _MISS:
            return found
        model = self._match(path)
        if len(path) <= MAX_CACHED_PATH:
            store_bounded(self._found, PATH_CACHE_SIZE, path, model)
        return model

    def _match(self, path: str) -> str | None:
        for pattern in self.path_patterns:
            match = pattern.match(path)
            if match:
                return valid_model_id(match.group("model"))
        return None

    def wants_body(self, method: str, path: str) -> bool:
        """True when this request's model is in its JSON body."""
        return method == "POST" and path in self.json_paths

    def wants_form(self, method: str, path: str) -> bool:
        """True when this request's model is a field of its multipart form."""
        return method == "POST" and path in self.form_paths


@dataclass(slots=True)
class BufferedBody:
    """A request body read ahead of the app, replayed to it unchanged."""

    chunks: list[bytes]
    complete: bool  # False: the limit stopped the read; the rest is still in the original receive
    disconnected: bool = False
    size: int = -1  # bytes read (-1: the sum of the chunks)
    budget: BufferBudget | None = None  # what the bytes were taken from, given back by release()

    def __post_init__(self) -> None:
        if self.size < 0:
            self.size = sum(len(c) for c in self.chunks)

    @property
    def data(self) -> bytes:
        """The bytes read so far, as one bytes object: the chunks are joined once and kept
        joined (the copy replaces them rather than doubling what the request holds)."""
        chunks = self.chunks
        if len(chunks) == 1:
            return chunks[0]
        joined = b"".join(chunks)
        self.chunks = [joined] if joined else []
        return joined

    def release(self) -> None:
        """Give the bytes back to the budget (once): the app has them, or the request is over."""
        budget, self.budget = self.budget, None
        if budget is not None:
            budget.give_back(self.size)


async def read_body_within(
    receive: Receive,
    limit: int,
    budget: BufferBudget,
    limits: Limits,
    deadlines: Deadlines | None = None,
) -> BufferedBody:
    """:func:`read_body` within ``limits.body_timeout`` (else :class:`BodyTimeout`, 408) and the
    process-wide *budget* (else :class:`BufferBudgetExhausted`, 503); the bytes read stay taken
    from the budget until :meth:`BufferedBody.release`. *deadlines*: the runtime's one timer for
    every read in flight (else a timer of this read's own)."""
    body = BufferedBody([], False, size=0, budget=budget)
    seconds = limits.body_timeout
    try:
        async with asyncio.timeout(seconds) if deadlines is None else deadlines.within(seconds):
            await read_body(receive, limit, body)
    except TimeoutError:
        body.release()
        raise BodyTimeout(
            f"the body did not arrive within {limits.body_timeout:g} seconds"
        ) from None
    except BufferBudgetExhausted:
        body.release()
        budget.refused += 1
        raise
    return body


async def read_body(receive: Receive, limit: int, into: BufferedBody | None = None) -> BufferedBody:
    """Read the body until its end or just past *limit* bytes, keeping every chunk as it came.

    Into *into* when given, taking each chunk from its budget first (raising
    :class:`BufferBudgetExhausted` when the budget cannot hold it).
    """
    body = into if into is not None else BufferedBody([], False, size=0)
    chunks = body.chunks
    budget = body.budget
    while True:
        message = await receive()
        kind = message.get("type")
        if kind == "http.disconnect":
            body.disconnected = True
            return body
        if kind != "http.request":
            continue
        chunk = message.get("body", b"")
        if chunk:
            if budget is not None and not budget.take(len(chunk), body.size):
                raise BufferBudgetExhausted(
                    f"the gate holds {budget.limit} bytes of request bodies already"
                )
            chunks.append(chunk)
            body.size += len(chunk)
        # Past the limit is too large even in the last chunk (a server's chunk can be 64 KiB):
        # left incomplete, so it is refused as too large.
        if body.size > limit:
            return body
        if not message.get("more_body", False):
            body.complete = True
            return body


def replay(body: BufferedBody, receive: Receive) -> Receive:
    """A receive callable that yields the buffered chunks as they came, then defers to *receive*.

    The body keeps none of the chunks: once the app has taken the last one, it holds them alone.
    """
    pending = body.chunks[::-1]  # popped from the end: O(1) a chunk
    body.chunks = []
    return _Replayed(pending or [b""], not body.complete, receive)


class _Replayed:
    """The buffered chunks, then the server's receive (a class: no closure per request)."""

    __slots__ = ("_more_after", "_pending", "_receive")

    def __init__(self, pending: list[bytes], more_after: bool, receive: Receive) -> None:
        self._pending = pending
        self._more_after = more_after
        self._receive = receive

    async def __call__(self) -> Message:
        pending = self._pending
        if pending:
            chunk = pending.pop()
            more = bool(pending) or self._more_after
            return {"type": "http.request", "body": chunk, "more_body": more}
        return await self._receive()


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two "model" keys could let the gate and the app read different models: refuse repeats.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


# An escaped letter of "model" (m o d e l are U+006D, U+006F, U+0064, U+0065, U+006C): a key
# spelled with escapes could repeat "model" unseen by a plain byte search.
_ESCAPED_MODEL_LETTER = re.compile(rb"\\u006[45cCdDfF]")
_MODEL_KEY = re.compile(rb'"model"')
# Above this many bytes the regex engine's literal search beats bytes.count (measured: 1.7 KB).
_LONG_BODY = 2048


def _parse_object(data: bytes) -> Any:
    """Parse a JSON body, refusing a repeated ``model`` key (the gate and the app must agree)."""
    if len(data) < _LONG_BODY:
        one_model_key = data.count(b'"model"') <= 1
    else:  # the same test, stopping at a second match (non-overlapping, as count counts)
        first = _MODEL_KEY.search(data)
        one_model_key = first is None or _MODEL_KEY.search(data, first.end()) is None
    if one_model_key and not _ESCAPED_MODEL_LETTER.search(data):
        try:
            return orjson.loads(data)  # ten times faster than json; last key wins, like json
        except orjson.JSONDecodeError:
            pass  # the careful parser below says why, or accepts what orjson is stricter about
    return json.loads(data, object_pairs_hook=_reject_duplicates)


# Above this many bytes a body's containers are counted before it is parsed (below it, parsing
# costs less than a millisecond whatever it holds).
_COUNT_CONTAINERS_ABOVE = 64 * 1024


def model_from_json(body: BufferedBody, limit: int, max_containers: int = 100_000) -> str:
    """The ``model`` field of a complete JSON-object body; raises a :class:`RequestError`.

    Parsing costs about a microsecond per object or array, on the event loop: a large body's
    ``{`` and ``[`` bytes are counted first (``bytes.count``, a few milliseconds for 8 MiB) and
    past *max_containers* it is refused unparsed (strings' brackets count too: a bound, not a
    parse).
    """
    if body.disconnected:
        raise BodyIncomplete("the client disconnected before sending the whole body")
    if not body.complete:
        raise BodyTooLarge(f"request body is larger than {limit} bytes")
    if body.size > _COUNT_CONTAINERS_ABOVE:  # counted in the chunks: no joined copy to refuse
        containers = sum(chunk.count(b"{") for chunk in body.chunks)
        if containers <= max_containers:
            containers += sum(chunk.count(b"[") for chunk in body.chunks)
        if containers > max_containers:
            raise BodyTooComplex(
                f"request body holds more than {max_containers} JSON objects and arrays"
            )
    try:
        parsed = _parse_object(body.data)
    except (ValueError, RecursionError):
        raise BodyNotJSON("request body is not valid JSON (or repeats a key)") from None
    if not isinstance(parsed, dict):
        raise BodyNotJSON("request body is not a JSON object")
    model = parsed.get("model")
    if model is None:
        raise ModelMissing("request names no model")
    valid = valid_model_id(model)
    if valid is None:
        raise ModelMissing("the model field must be a printable string of at most 256 characters")
    return valid
