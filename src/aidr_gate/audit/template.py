"""Records from per-class templates: the bytes of ``fields()`` with the per-request values cut out.

A renderer's :meth:`~TemplateRenderer.fields` states its record as a dict, and is its definition.
Building that dict and serialising it costs 10 to 17 µs a record, most of it spent on members that
are the same for every request of the same kind. So a :class:`TemplateRenderer` compiles, once per
class of decision (the same shared facts, status and mode, the same members present, and whatever
else its :meth:`~TemplateRenderer.template_key` adds), the record's bytes with every per-request
value cut out, and :meth:`~TemplateRenderer.render` puts the request's own values into the gaps.

The per-request values come from one method, :meth:`~TemplateRenderer.slot_values`, which both
paths use: ``fields`` places each value that is present as a raw JSON fragment, and a template is
``fields``' output with markers in those places. A member whose value is absent (``None``) is left
out of the record, so the template depends on which members are present: that is part of its key.
Tests compare both paths' bytes over many generated events.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from operator import itemgetter
from typing import Any, ClassVar

import orjson

from aidr_gate.audit.facts import FactsBook, Shared
from aidr_gate.audit.record import AuditEvent, ObjectCache, Redactor, _Clock, renderable
from aidr_gate.bounded import store_bounded
from aidr_gate.facts import Identity, Origin

logger = logging.getLogger("aidr_gate.audit")

# orjson escapes every control character inside strings, so a raw 0x01 byte in its output can only
# come from a marker fragment.
_MARK = 0x01
_FIRST_SLOT = 0x41  # a slot number is written as one byte from "A" on

# A template: the record's bytes with a ``%b`` for each value (``%`` escaped), and what picks the
# values out of a slot list in that order: one bytes-formatting call fills it, in C.
Template = tuple[bytes, Callable[[Any], tuple[bytes, ...]]]
# Where ``fields`` places each per-request value: (key path, slot number).
Places = tuple[tuple[tuple[str, ...], int], ...]
# One value per slot (``None``: the member is left out).
Values = list[bytes | None]


def presence(values: Values) -> tuple[type, ...]:
    """Which values are present (their types: bytes, or None's), as a template key part."""
    return tuple(map(type, values))


def _marker(slot: int) -> orjson.Fragment:
    return orjson.Fragment(bytes((_MARK, _FIRST_SLOT + slot, _MARK)))


def fragment(value: bytes | None) -> orjson.Fragment | None:
    """A slot's value as ``fields`` places it (``None`` stays ``None``: the member is left out)."""
    return None if value is None else orjson.Fragment(value)


def put(doc: dict[str, Any], key: str, value: bytes | None) -> None:
    """Set *key* in *doc* to the raw JSON *value*, unless it is absent."""
    if value is not None:
        doc[key] = orjson.Fragment(value)


class TemplateRenderer:
    """A renderer whose records come from compiled templates (see the module docstring)."""

    name: str
    places: ClassVar[Places]

    def __init__(self, redactor: Redactor | None = None, limit: int = 4096) -> None:
        self.redactor = redactor or Redactor()
        self.clock = _Clock()
        self.book = FactsBook(limit)
        self._limit = limit
        # The token cache and the origin resolver hand out one object per caller and per address:
        # each one's members are serialised once.
        self._identities: ObjectCache[Identity] = ObjectCache(self.identity_members, limit)
        self._origins: ObjectCache[Origin] = ObjectCache(self.origin_members, limit)
        self._slots = len(self.places)
        # template_key -> (shared, template); the strong reference keeps ids unique.
        self._templates: dict[tuple[Any, ...], tuple[Shared, Template]] = {}
        self.compiled = True  # False once a template could not be made: every record uses fields

    # -- what a format defines -------------------------------------------------------------------

    def identity_members(self, identity: Identity) -> tuple[bytes | None, ...]:
        """The format's per-caller values, serialised (cached per identity object)."""
        raise NotImplementedError

    def origin_members(self, origin: Origin) -> tuple[bytes | None, ...]:
        """The format's per-address values, serialised (cached per origin object)."""
        raise NotImplementedError

    def slot_values(
        self, event: AuditEvent, shared: Shared, *, facts_inline: bool = False
    ) -> tuple[Values, tuple[type, ...]]:
        """Every per-request value, serialised, by slot; and which are present (:func:`presence`).

        ``aidr.facts`` is the facts object with *facts_inline* (the class's first record in a
        file), its id otherwise.
        """
        raise NotImplementedError

    def fields(self, event: AuditEvent, shared: Shared, values: Values) -> dict[str, Any]:
        """The record of *event*: its *shared* facts and its per-request *values* (fragments)."""
        raise NotImplementedError

    def template_key(
        self, event: AuditEvent, shared: Shared, mask: tuple[type, ...]
    ) -> tuple[Any, ...]:
        """What every record of one template has in common: the shared facts (by identity; the
        cache keeps them alive, so the id stays theirs), the status, the mode, the members."""
        decision = event.decision
        return (id(shared), decision.status, decision.mode, mask)

    # -- rendering -------------------------------------------------------------------------------

    def identity_of(self, identity: Identity | None) -> tuple[bytes | None, ...] | None:
        """The cached per-caller values (``None`` without a verified caller)."""
        return None if identity is None else self._identities.get(identity)

    def origin_of(self, origin: Origin | None) -> tuple[bytes | None, ...] | None:
        """The cached per-address values (``None`` without a client address)."""
        return None if origin is None else self._origins.get(origin)

    def document(self, event: AuditEvent, *, facts_inline: bool = False) -> dict[str, Any]:
        """The record as a dict (``render`` gives its bytes); values are ``orjson.Fragment``."""
        shared = self.book.shared(event.decision)
        values, _ = self.slot_values(event, shared, facts_inline=facts_inline)
        return self.fields(event, shared, values)

    def compile(self, event: AuditEvent, shared: Shared, values: Values) -> Template:
        """The bytes of *event*'s record between its per-request values, and their slots.

        Raises ``RuntimeError`` if :meth:`fields` does not place the values where
        :attr:`places` says.
        """
        doc = self.fields(event, shared, values)
        expected = []
        for path, slot in self.places:
            parent: Any = doc
            for key in path[:-1]:
                parent = parent.get(key) if isinstance(parent, dict) else None
            present = isinstance(parent, dict) and path[-1] in parent
            if present != (values[slot] is not None):
                raise RuntimeError(f"the {self.name} record's {'.'.join(path)} moved")
            if present:
                parent[path[-1]] = _marker(slot)
                expected.append(slot)
        parts = orjson.dumps(doc).split(bytes((_MARK,)))
        slots = tuple(part[0] - _FIRST_SLOT for part in parts[1::2])
        if sorted(slots) != sorted(expected) or len(slots) < 2:
            raise RuntimeError(f"the {self.name} record's per-request fields moved: {slots}")
        text = b"%b".join(part.replace(b"%", b"%%") for part in parts[0::2])
        return text, itemgetter(*slots)

    def render(self, event: AuditEvent) -> bytes:
        """The record's JSON object: the same bytes as ``orjson.dumps(self.document(event))``
        (with ``facts_inline`` for the first record of its class in the current file).

        A record whose strings JSON cannot hold (a lone surrogate in a token's claim) or that is
        larger than ``max_record`` bytes is rendered again from :func:`renderable`: its strings
        escaped and cut to their caps, marked and counted; the record keeps its evidence.
        """
        book = self.book
        shared: Shared | None = None
        inline = False
        try:
            shared = book.shared(event.decision)
            inline = book.due(shared)
            body = self._fill(event, shared, inline)
            if len(body) <= self.redactor.max_record:
                return body
            self.redactor.record_cut()
        except TypeError:  # orjson: "str is not valid UTF-8: surrogates not allowed"
            pass
        if inline and shared is not None:
            book.undue(shared)  # the facts record was not written: the next record carries it
        event = renderable(event, self.redactor)
        shared = book.shared(event.decision)
        inline = book.due(shared)
        try:
            return self._fill(event, shared, inline)
        except BaseException:
            if inline:
                book.undue(shared)
            raise

    def _fill(self, event: AuditEvent, shared: Shared, facts_inline: bool) -> bytes:
        values, mask = self.slot_values(event, shared, facts_inline=facts_inline)
        if not self.compiled:
            return orjson.dumps(self.fields(event, shared, values))
        key = self.template_key(event, shared, mask)
        hit = self._templates.get(key)
        if hit is None or hit[0] is not shared:
            try:
                template = self.compile(event, shared, values)
            except RuntimeError:
                logger.exception(
                    "audit: no %s template; records are rendered the slow way", self.name
                )
                self.compiled = False
                return orjson.dumps(self.fields(event, shared, values))
            hit = (shared, template)
            store_bounded(self._templates, self._limit, key, hit)
        text, pick = hit[1]
        return text % pick(values)

    def new_file(self) -> None:
        """The journal starts a new file: each class's facts are written again there."""
        self.book.forget()
