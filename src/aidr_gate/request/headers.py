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
