"""Admitted streams, by entity: so a change that now denies one of them can end it.

The middleware registers a response when it starts as an event stream (``text/event-stream``) for
a caller with an entity, and forgets it when it ends; nothing is kept for other responses. When
the registry says entities changed (:meth:`StreamBook.changed`, an ``EntityCache.on_change``
listener) or the pack is reloaded (:meth:`StreamBook.recheck`), each affected stream is decided
again with the same identity, origin and model under the current state (and so is a stream
whose entity's agreement window opens or closes while it runs, at that instant); a deny (in enforce mode)
cuts it: the request's task is cancelled, which ends the app's (or the proxy's upstream) work where
it waits, and the middleware sends a final SSE event in the OpenAI error shape with reason
``ACCESS_REVOKED``, ends the response, and writes an audit record of the cut that names the
original decision. A key removed from the key set cuts the streams whose token it verified
(:meth:`StreamBook.keys_changed`, a key set listener): the token would now be refused. A registry
that cannot be read while rechecking cuts nothing: the outage is not a decision (new requests are
refused past ``max_staleness``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any

from msgspec.structs import replace

from aidr_gate.audit.record import Ending, RequestContext
from aidr_gate.decision import Decision
from aidr_gate.errors import AccessRevoked, TokenKeyUnknown
from aidr_gate.registry import Entity
from aidr_gate.stores.base import RegistryChange
from aidr_gate.stores.cache import MISS, Absent

if TYPE_CHECKING:
    from aidr_gate.gate import Gate
    from aidr_gate.request.keys import KeySet

logger = logging.getLogger("aidr_gate.streams")

EVENT_STREAM = b"text/event-stream"
# Streams rechecked at once at most (each may await one registry read).
RECHECK_BATCH = 256
# An agreement window that opens or closes within this many seconds of a stream's start gets a
# timer that rechecks the stream then (a stream outliving a day is rechecked on changes only).
WINDOW_HORIZON = 86_400.0


class AdmittedStream:
    """One streamed response in flight: its decision, its task, and how far it got."""

    __slots__ = ("active", "at_boundary", "cut", "decision", "task", "timer")

    def __init__(self, decision: Decision, task: asyncio.Task[object]) -> None:
        self.decision = decision
        self.task = task
        self.cut: Decision | None = None  # the deny that ended it
        self.active = True  # False once it sends its last chunk (or ends): never cut after
        self.timer: asyncio.TimerHandle | None = None  # an agreement window's next edge
        self.at_boundary = True  # the bytes sent so far end between two events

    def sent(self, chunk: bytes) -> None:
        """Note a body chunk on its way: whether the stream now ends between events."""
        if chunk:
            self.at_boundary = chunk.endswith((b"\n\n", b"\r\n\r\n", b"\r\r"))

    def final_event(self) -> bytes:
        """The last bytes of a cut stream: an SSE ``data:`` event with the OpenAI error shape
        (the openai SDKs raise it as an APIError), after a blank line if an event was cut."""
        from aidr_gate.asgi.responses import error_body

        cut = self.cut or self.decision
        prefix = b"" if self.at_boundary else b"\n\n"
        return prefix + b"data: " + error_body(cut) + b"\n\n"


class StreamBook:
    """The admitted streams of one runtime, by entity id; see the module docstring."""

    def __init__(
        self,
        gate: Gate,
        *,
        enabled: bool = True,
        on_cut: Callable[[AdmittedStream], None] | None = None,
    ) -> None:
        self.gate = gate
        self.enabled = enabled
        self._by_entity: dict[str, set[AdmittedStream]] = {}
        self._on_cut = on_cut
        self._pending: set[asyncio.Task[None]] = set()
        self.cuts = 0

    def __len__(self) -> int:
        return sum(len(s) for s in self._by_entity.values())

    # -- the request path ---------------------------------------------------------------------

    def admit(
        self, decision: Decision, headers: Iterable[tuple[bytes, bytes]]
    ) -> AdmittedStream | None:
        """Register the response that starts with *headers*, if it is an event stream of an
        entity (else ``None``: nothing is tracked)."""
        entity_id = decision.evidence.entity_id
        if not self.enabled or not entity_id:
            return None
        for name, value in headers:
            if name.lower() == b"content-type":
                if not value.lower().startswith(EVENT_STREAM):
                    return None
                break
        else:
            return None
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - ASGI servers run requests in tasks
            return None
        stream = AdmittedStream(decision, task)
        self._by_entity.setdefault(entity_id, set()).add(stream)
        self._arm(stream, decision.evidence.entity)
        return stream

    def _arm(self, stream: AdmittedStream, entity: Entity | None) -> None:
        """Recheck *stream* when the next agreement window of *entity* opens or closes: that
        changes the answer without any change to the registry."""
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        if entity is None or not entity.agreements:
            return
        now = time.time()
        edges = [
            t
            for a in entity.agreements
            for t in (a.valid_from, a.valid_until)
            if t is not None and now < t < now + WINDOW_HORIZON
        ]
        if edges:
            stream.timer = asyncio.get_running_loop().call_later(
                min(edges) - now + 0.01, self.recheck, (entity.id,)
            )

    def done(self, stream: AdmittedStream) -> None:
        """The stream ended (or is sending its last chunk): it can no longer be cut."""
        stream.active = False
        if stream.timer is not None:
            stream.timer.cancel()
        entity_id = stream.decision.evidence.entity_id or ""
        streams = self._by_entity.get(entity_id)
        if streams is not None:
            streams.discard(stream)
            if not streams:
                del self._by_entity[entity_id]

    # -- changes ------------------------------------------------------------------------------

    def changed(self, change: RegistryChange) -> None:
        """A registry change listener: recheck the streams of the entities that changed."""
        ids = change.entity_ids
        if ids is not None and not any(i in self._by_entity for i in ids):
            return
        self.recheck(ids)

    def recheck(self, entity_ids: Iterable[str] | None = None) -> None:
        """Decide again (in a task) the streams of *entity_ids*, or every stream."""
        if not self._by_entity:
            return
        wanted = list(self._by_entity) if entity_ids is None else entity_ids
        streams = [s for i in wanted for s in self._by_entity.get(i, ())]
        if not streams:
            return
        task = asyncio.get_running_loop().create_task(self._recheck(streams))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _recheck(self, streams: list[AdmittedStream]) -> None:
        state = self.gate.state
        registry = state.registry
        for start in range(0, len(streams), RECHECK_BATCH):
            batch = streams[start : start + RECHECK_BATCH]
            entities = {}
            for entity_id in {s.decision.evidence.entity_id or "" for s in batch}:
                found = registry.lookup(entity_id)
                if found is MISS:
                    found = await registry.fetch(entity_id)
                entities[entity_id] = found
            for stream in batch:
                found = entities[stream.decision.evidence.entity_id or ""]
                if isinstance(found, Absent) or not stream.active or stream.task.done():
                    continue
                evidence = stream.decision.evidence
                if evidence.origin is None:
                    continue
                now = self.gate.decide(
                    identity=evidence.identity,
                    origin=evidence.origin,
                    model_id=evidence.model_requested,
                    state=state,
                    entity=found,
                )
                if now.blocks:
                    self.cut(stream, now)
                else:  # still allowed: follow the windows of the entity as it is now
                    self._arm(stream, found)

    def keys_changed(self, old: KeySet | None, new: KeySet) -> None:
        """A key set listener: cut the streams whose token was verified with a key the new set
        no longer holds (the token would now be refused, TOKEN_KEY_UNKNOWN)."""
        if not self._by_entity:
            return
        known = frozenset(new.key_ids)
        for stream in [s for streams in self._by_entity.values() for s in streams]:
            evidence = stream.decision.evidence
            identity = evidence.identity
            if identity is None or identity.key_id is None or identity.key_id in known:
                continue
            refused = self.gate.refuse(
                TokenKeyUnknown("the key that verified the token was removed"),
                identity=identity,
                origin=evidence.origin,
                model_id=evidence.model_requested,
            )
            if refused.blocks:
                self.cut(stream, refused)

    def cut(self, stream: AdmittedStream, because: Decision) -> None:
        """End *stream*: its task is cancelled; the middleware sends the final event."""
        if stream.cut is not None or not stream.active or stream.task.done():
            return
        stream.cut = replace(because, reasons=(AccessRevoked.reason, *because.reasons))
        self.done(stream)
        self.cuts += 1
        logger.info(
            "stream of decision %s (entity %s) cut: %s",
            stream.decision.decision_id,
            stream.decision.evidence.entity_id,
            ", ".join(stream.cut.reasons),
        )
        if self._on_cut is not None:
            self._on_cut(stream)
        stream.task.cancel()

    async def close(self) -> None:
        """Wait for rechecks under way to finish (at close)."""
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)


# -- the middleware's side of a cut ------------------------------------------------------------


def cancelled_otherwise() -> bool:
    """Withdraw the stream book's cancellation of this task; True if another one (a shutdown)
    remains, so the caller re-raises."""
    task = asyncio.current_task()
    return task is None or task.uncancel() > 0


async def finish_cut(
    stream: AdmittedStream,
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    record: Callable[[Decision, RequestContext], Awaitable[bool]],
    scope: MutableMapping[str, Any],
    headers: tuple[tuple[str, str], ...],
) -> bool:
    """End a cut stream: the cut's own audit record (linked to the admitted decision by
    ``cut_of``), then the final error event. False when the record was not stored: the stream
    is then left incomplete, as every response whose record was not stored (``fsync: always``).
    The app may have absorbed the cancellation (anyio task groups do) and returned: it is
    withdrawn here too."""
    task = asyncio.current_task()
    if task is not None and task.cancelling() == 1:
        task.uncancel()
    cut = stream.cut
    if cut is None:  # pragma: no cover - only called for a cut stream
        return True
    context = RequestContext(
        scope.get("method", "GET"),
        scope.get("path", ""),
        scope.get("scheme", "http"),
        scope.get("http_version", "1.1"),
        headers,
        cut.status,
        ending=Ending.CUT,
        cut_of=stream.decision.decision_id,
    )
    # Recorded before the final event, so the client never has a complete answer whose record
    # was not stored. Shielded: a cancellation arriving now (a shutdown) must not lose it.
    try:
        stored = await asyncio.shield(asyncio.ensure_future(record(cut, context)))
    except Exception:  # said in the log, not to the server; the stream is left incomplete
        logger.exception("writing the audit record of a cut failed")
        return False
    if not stored:
        return False
    # The client may have left meanwhile: the cut is recorded all the same.
    with contextlib.suppress(OSError):
        await send({"type": "http.response.body", "body": stream.final_event(), "more_body": False})
    return True
