"""Reading one header of an ASGI request, for the gate and the app alike."""

from __future__ import annotations

from collections.abc import Iterable

from aidr_gate.errors import AidrGateError


def single_header_value(
    headers: Iterable[tuple[bytes, bytes]], name: bytes, error: type[AidrGateError]
) -> bytes | None:
    """The value of a header the gate reads for the app's sake (the token, the model, the content
    type); a repeated one is ambiguous and refused with *error* (the gate and the app could each
    read a different one). *name* is lower case; ASGI names are too, a stray spelling is lowered."""
    found: bytes | None = None
    size = len(name)
    for key, value in headers:
        # Compared before lowering, which allocates: only a non-conforming server's names are.
        if len(key) == size and (key == name or key.lower() == name):
            if found is not None:
                raise error(f"more than one {name.decode('latin-1')} header")
            found = value
    return found


# Where a collected header goes in :attr:`SeenHeaders.values`; the trusted forwarding headers are
# kept apart, every line in request order (:meth:`TrustedProxies.resolve` walks them).
AUTHORIZATION, MODEL, CONTENT_TYPE = 0, 1, 2
_FORWARDING = 3


class HeaderPlan:
    """The headers one pass over a request collects: the token, the model header, the content type
    and the trusted forwarding headers. Built once per serving state, read by every request."""

    __slots__ = ("_lengths", "_slots", "names")

    def __init__(self, model_header: bytes | None, forwarding: Iterable[bytes]) -> None:
        self.names: tuple[bytes | None, ...] = (b"authorization", model_header, b"content-type")
        slots: dict[bytes, tuple[int, ...]] = {}
        named = [(slot, name) for slot, name in enumerate(self.names) if name is not None]
        named += [(_FORWARDING, name) for name in sorted(forwarding)]
        for slot, name in named:  # a name may serve twice (a model header named like another)
            slots[name] = (*slots.get(name, ()), slot)
        self._slots = slots
        self._lengths = frozenset(len(name) for name in slots)

    def scan(self, headers: Iterable[tuple[bytes, bytes]]) -> SeenHeaders:
        """Every collected header and the headers' size, in one pass."""
        seen = SeenHeaders()
        values = seen.values
        get = self._slots.get
        lengths = self._lengths
        size = 0
        for name, value in headers:
            size += len(name) + len(value)
            slots = get(name)
            if slots is None:
                # ASGI names are lower case; lowering (which allocates) keeps a stray spelling.
                if len(name) not in lengths or name.islower():
                    continue
                slots = get(name.lower())
                if slots is None:
                    continue
            for slot in slots:
                if slot == _FORWARDING:
                    seen.forwarded.append((name, value))
                elif values[slot] is None:
                    values[slot] = value
                else:
                    seen.repeated |= 1 << slot
        seen.size = size
        return seen


class SeenHeaders:
    """What one pass over a request's headers found."""

    __slots__ = ("forwarded", "repeated", "size", "values")

    def __init__(self) -> None:
        self.values: list[bytes | None] = [None, None, None]
        self.repeated = 0  # bit per slot of a header that came more than once
        self.forwarded: list[tuple[bytes, bytes]] = []  # the forwarding lines, in request order
        self.size = 0  # bytes of names and values

    def single(self, slot: int, names: HeaderPlan, error: type[AidrGateError]) -> bytes | None:
        """The header's one value, as :func:`single_header_value` reads it: a repeated one raises
        *error*."""
        if self.repeated >> slot & 1:
            name = names.names[slot] or b""
            raise error(f"more than one {name.decode('latin-1')} header")
        return self.values[slot]
