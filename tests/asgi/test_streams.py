"""The stream book on its own: what it tracks, and the final event of a cut."""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from typing import Any

from aidr_gate.asgi.streams import StreamBook, finish_cut
from aidr_gate.audit.record import Ending, RequestContext
from aidr_gate.decision import Decision
from aidr_gate.facts import Identity, declared_origin
from aidr_gate.gate import Gate, state_for
from aidr_gate.policy.pack import load_pack
from aidr_gate.registry import Entity

SSE = [(b"content-type", b"text/event-stream; charset=utf-8")]
JSON = [(b"content-type", b"application/json")]


def _gate(entities: list[Entity]) -> Gate:
    return Gate(state_for(load_pack("aidr-2025-01"), entities=entities))


def test_only_event_streams_of_entities_are_tracked_and_the_cut_event_is_an_openai_error() -> None:
    async def run() -> None:
        gate = _gate([Entity(id="lab-us", headquarters="US")])
        book = StreamBook(gate)
        allowed = gate.decide(
            identity=Identity("lab-us"), origin=declared_origin("US"), model_id="m"
        )
        anonymous = gate.decide(identity=None, origin=declared_origin("US"), model_id="m")
        assert book.admit(allowed, JSON) is None
        assert book.admit(anonymous, SSE) is None
        assert StreamBook(gate, enabled=False).admit(allowed, SSE) is None
        stream = book.admit(allowed, SSE)
        assert stream is not None and len(book) == 1
        stream.task = asyncio.create_task(
            asyncio.sleep(30)
        )  # the request's task, cancelled on a cut
        stream.sent(b'data: {"x": 1}\n\ndata: {"x"')  # an event cut in the middle
        denied = gate.decide(
            identity=Identity("lab-us"), origin=declared_origin("IR"), model_id="m"
        )
        book.cut(stream, denied)
        assert len(book) == 0 and book.cuts == 1
        final = stream.final_event()
        assert final.startswith(b"\n\ndata: ") and final.endswith(b"\n\n")
        error = json.loads(final.strip().removeprefix(b"data: "))["error"]
        assert error["code"] == "ACCESS_REVOKED" and error["decision_id"] == denied.decision_id
        assert error["reasons"] == ["ACCESS_REVOKED", *denied.reasons]
        # A stream that sent its last chunk is not cut.
        other = book.admit(allowed, SSE)
        assert other is not None
        book.done(other)
        book.cut(other, denied)
        assert other.cut is None and book.cuts == 1
        await asyncio.sleep(0)
        assert stream.task.cancelled()

    asyncio.run(run())


def test_a_recheck_cuts_only_what_the_state_now_denies() -> None:
    async def run() -> None:
        gate = _gate(
            [Entity(id="lab-us", headquarters="US"), Entity(id="sakura", headquarters="JP")]
        )
        book = StreamBook(gate)
        streams = {}
        for entity, country in (("lab-us", "US"), ("sakura", "JP")):
            decision = gate.decide(
                identity=Identity(entity),
                origin=declared_origin(country),
                model_id="aurora-frontier",
            )
            assert decision.allowed
            # Each stream's task is a task of its own, as each request is.
            task = asyncio.create_task(asyncio.sleep(30))
            streams[entity] = book.admit(decision, SSE)
            assert streams[entity] is not None
            streams[entity].task = task  # type: ignore[union-attr]
        gate.swap(
            state_for(
                load_pack("aidr-2025-01"),
                entities=[
                    Entity(id="lab-us", headquarters="CN"),
                    Entity(id="sakura", headquarters="JP"),
                ],
            )
        )
        book.recheck()
        await asyncio.sleep(0.05)
        assert streams["lab-us"].cut is not None and streams["sakura"].cut is None  # type: ignore[union-attr]
        assert streams["lab-us"].task.cancelled() or streams["lab-us"].task.cancelling()  # type: ignore[union-attr]
        for stream in streams.values():
            stream.task.cancel()  # type: ignore[union-attr]
        await book.close()

    asyncio.run(run())


def test_a_cut_whose_record_was_not_stored_is_left_incomplete() -> None:
    """``fsync: always``: the cut's record is written before the final event, and a record the
    trail did not store leaves the stream without its last chunk (the server closes it)."""

    async def run(stored: bool) -> list[dict[str, Any]]:
        gate = _gate([Entity(id="lab-us", headquarters="US")])
        book = StreamBook(gate)
        allowed = gate.decide(
            identity=Identity("lab-us"), origin=declared_origin("US"), model_id="m"
        )
        stream = book.admit(allowed, SSE)
        assert stream is not None
        stream.task = asyncio.create_task(asyncio.sleep(30))  # the request's, cancelled
        denied = gate.decide(
            identity=Identity("lab-us"), origin=declared_origin("IR"), model_id="m"
        )
        book.cut(stream, denied)
        events: list[dict[str, Any]] = []

        async def send(message: MutableMapping[str, Any]) -> None:
            events.append({"send": message})

        async def record(decision: Decision, context: RequestContext) -> bool:
            events.append({"record": decision, "context": context})
            return stored

        done = await finish_cut(stream, send, record, {"path": "/v1/chat/completions"}, ())
        assert done is stored
        return events

    events = asyncio.run(run(True))
    assert [next(iter(e)) for e in events] == ["record", "send"]
    context = events[0]["context"]
    assert context.ending is Ending.CUT and context.cut_of is not None
    assert events[1]["send"]["more_body"] is False
    assert [next(iter(e)) for e in asyncio.run(run(False))] == ["record"]
