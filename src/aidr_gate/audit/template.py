"""Records from per-class templates: the bytes of ``fields()`` with the per-request values cut out.

A renderer's :meth:`~aidr_gate.audit.record.RecordRenderer.fields` states its record as a dict, and
is its definition. Building that dict and serialising it costs 10 to 17 µs a record, most of it
spent on dicts whose content is the same for every request of the same kind. So a
:class:`TemplateRenderer` compiles, once per class of decision (the same shared facts, status, mode
and whatever else its :meth:`~TemplateRenderer.template_key` adds), the record's bytes with every
per-request value cut out, and :meth:`~TemplateRenderer.fill` puts the request's own values into
the gaps, each serialised on its own.

The template is made from ``fields`` itself, by serialising its dict with markers in the
per-request places, so the two cannot drift apart in key order or shared content. The per-request
values are serialised by ``fill``: a change to how ``fields`` computes one must be made there too,
and tests that compare both paths' bytes over many generated events say so.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import orjson

from aidr_gate.audit.record import (
    AuditEvent,
    ObjectCache,
    RecordRenderer,
    Redactor,
    RequestContext,
    Shared,
)
from aidr_gate.facts import Identity, Origin

logger = logging.getLogger("aidr_gate.audit")

# orjson escapes every control character inside strings, so a raw 0x01 byte in its output can only
# come from a marker fragment.
_MARK = 0x01
_FIRST_SLOT = 0x41  # a slot number is written as one byte from "A" on
_NULL = b"null"

Template = tuple[bytes, ...]
# Where ``fields`` places each per-request value, in the record's order: (key path, slot number).
Places = tuple[tuple[tuple[str, ...], int], ...]


def _marker(slot: int) -> orjson.Fragment:
    return orjson.Fragment(bytes((_MARK, _FIRST_SLOT + slot, _MARK)))


class TemplateRenderer(RecordRenderer):
    """A renderer whose records come from compiled templates (see the module docstring)."""

    places: ClassVar[Places]
    # The format's members for a record without a verified caller, and without a client address.
    no_user: ClassVar[bytes]
    no_client: ClassVar[bytes]

    def __init__(self, redactor: Redactor | None = None, limit: int = 4096) -> None:
        super().__init__(redactor)
        self._limit = limit
        # The token cache and the origin resolver hand out one object per caller and per address.
        # Each is cached with the format's member and the evidence renderer's JSON of the same
        # object (whose bytes are the evidence cache's own): one lookup a record.
        evidence = self.evidence
        self._users: ObjectCache[Identity] = ObjectCache(
            lambda i: (self.user_member(i), evidence.identity_json(i)), limit
        )
        self._clients: ObjectCache[Origin] = ObjectCache(
            lambda o: (self.client_member(o), evidence.origin_json(o)), limit
        )
        self._order = tuple(slot for _, slot in self.places)
        # template_key -> (shared, template); the strong reference keeps ids unique.
        self._templates: dict[tuple[Any, ...], tuple[Shared, Template]] = {}
        self.compiled = True  # False once a template could not be made: every record uses fields

    def template_key(self, event: AuditEvent, shared: Shared) -> tuple[Any, ...]:
        """What every record of one template has in common: the shared facts (by identity; the
        cache keeps them alive, so the id stays theirs), the status and the mode."""
        decision = event.decision
        return (id(shared), decision.status, decision.mode)

    def user_member(self, identity: Identity) -> bytes:
        """The format's member for the verified caller, serialised."""
        raise NotImplementedError

    def client_member(self, origin: Origin) -> bytes:
        """The format's member for the client address, serialised."""
        raise NotImplementedError

    def parties(self, event: AuditEvent) -> tuple[bytes, bytes, bytes, bytes]:
        """The caller's member and ``aidr.identity``, the client's member and ``aidr.origin``."""
        evidence = event.decision.evidence
        identity = evidence.identity
        origin = evidence.origin
        user, identity_json = (
            (self.no_user, _NULL) if identity is None else self._users.get(identity)
        )
        client, origin_json = (
            (self.no_client, _NULL) if origin is None else self._clients.get(origin)
        )
        return user, identity_json, client, origin_json

    def request_values(
        self, event: AuditEvent, request: RequestContext
    ) -> tuple[bytes, bytes, dict[str, str], bytes, bytes, bytes]:
        """What every format's record takes from the request, serialised: the decision's time
        and id, the recorded headers (a dict), and the ``aidr`` tree's ``request``, ``gate`` and
        ``upstream`` members as ``aidr()`` puts them."""
        decision = event.decision
        evidence = self.evidence
        dumps = orjson.dumps
        headers = evidence.redactor.headers(request.headers)
        return (
            evidence.clock.json(decision.at),
            dumps(decision.decision_id),
            headers,
            dumps({"ending": request.ending, "headers": headers, "body_bytes": request.body_bytes}),
            dumps({"added_us": request.gate_us}),
            dumps(
                {
                    "status": request.upstream_status,
                    "duration_us": request.upstream_duration_us,
                    "error": request.upstream_error,
                }
            ),
        )

    def fill(
        self, event: AuditEvent, request: RequestContext, shared: Shared, template: Template
    ) -> bytes:
        """The record: *template*'s parts with this request's values in its gaps, in order."""
        raise NotImplementedError

    def compile(self, event: AuditEvent) -> Template:
        """The bytes of *event*'s record between its per-request values.

        Raises ``RuntimeError`` if :meth:`fields` no longer places the values in :attr:`places`.
        """
        doc = self.document(event)
        for path, slot in self.places:
            parent = doc
            for key in path[:-1]:
                parent = parent[key]
            parent[path[-1]] = _marker(slot)
        parts = orjson.dumps(doc).split(bytes((_MARK,)))
        slots = tuple(part[0] - _FIRST_SLOT for part in parts[1::2])
        if slots != self._order:
            raise RuntimeError(f"the {self.name} record's per-request fields moved: {slots}")
        return tuple(parts[0::2])

    def render(self, event: AuditEvent) -> bytes:
        """The record's JSON object: the same bytes as ``orjson.dumps(self.document(event))``."""
        request = event.request
        if request is None or not self.compiled:
            return super().render(event)
        shared = self.evidence.shared(event.decision)
        key = self.template_key(event, shared)
        hit = self._templates.get(key)
        if hit is not None and hit[0] is shared:
            return self.fill(event, request, shared, hit[1])
        try:
            template = self.compile(event)
        except RuntimeError:
            logger.exception("audit: no %s template; records are rendered the slow way", self.name)
            self.compiled = False
            return super().render(event)
        if len(self._templates) >= self._limit:
            self._templates.clear()
        self._templates[key] = (shared, template)
        return self.fill(event, request, shared, template)
