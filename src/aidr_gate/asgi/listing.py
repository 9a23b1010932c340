"""A model listing (``GET /v1/models``) filtered to the models the caller may use, so listing and
invoking agree. The listing is the one response the gate buffers, up to
``middleware.max_listing_bytes``; anything unreadable or larger lists nothing."""

from __future__ import annotations

import json
import logging

from aidr_gate.asgi.deciding import unknown_origin
from aidr_gate.asgi.types import Message, Send
from aidr_gate.decision import Decision, Effect
from aidr_gate.runtime import Runtime, Serving

logger = logging.getLogger("aidr_gate.middleware")

_EMPTY_LISTING = b'{"object":"list","data":[]}'


class ListingFilter:
    """Wraps *send* so a model listing only names models this caller may use."""

    __slots__ = ("_chunks", "_decision", "_runtime", "_send", "_serving", "_size", "_start")

    def __init__(self, runtime: Runtime, serving: Serving, decision: Decision, send: Send) -> None:
        self._runtime = runtime
        self._serving = serving
        self._decision = decision
        self._send = send
        self._start: Message | None = None
        self._chunks: list[bytes] = []
        self._size = 0

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if message.get("status") != 200:
                self._start = None
                await self._send(message)
                return
            self._start = message
            return
        start = self._start
        if kind != "http.response.body" or start is None:
            await self._send(message)
            return
        chunk = message.get("body", b"")
        self._size += len(chunk)
        limit = self._serving.settings.max_listing_bytes
        if self._size <= limit:
            self._chunks.append(chunk)
        if message.get("more_body", False):
            return
        payload = self._filtered(b"".join(self._chunks) if self._size <= limit else b"")
        headers = [(k, v) for k, v in start.get("headers", ()) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(payload)).encode()))
        await self._send({**start, "headers": headers})
        await self._send({"type": "http.response.body", "body": payload, "more_body": False})

    def _filtered(self, payload: bytes) -> bytes:
        """Keep only the listed models this caller may use; anything unreadable lists nothing."""
        try:
            listing = json.loads(payload)
            data = listing["data"]
            if not isinstance(data, list):
                raise TypeError("data is not a list")
        except (ValueError, KeyError, TypeError):
            logger.warning("model listing is not the OpenAI shape; returning an empty list")
            return _EMPTY_LISTING
        evidence = self._decision.evidence
        state = self._serving.state
        origin = evidence.origin or unknown_origin({})
        keep = []
        for item in data:
            model_id = item.get("id") if isinstance(item, dict) else None
            if not isinstance(model_id, str):
                continue
            verdict = self._runtime.gate.verdict(
                identity=evidence.identity,
                origin=origin,
                model=state.catalog.get(model_id),
                at=self._decision.at,
                state=state,
                entity=evidence.entity,  # as resolved for the decision: no second lookup
            )
            if verdict.outcome.effect is not Effect.DENY:
                keep.append(item)
        return json.dumps({**listing, "data": keep}, separators=(",", ":")).encode()
