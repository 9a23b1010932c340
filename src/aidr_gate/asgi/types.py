"""The ASGI interface's types, named once for the middleware, the proxy, the sidecar and body reading.

The shapes of the ASGI specification (``scope``, ``receive``, ``send``, an application), kept as
plain mappings and callables, as starlette's ``types.py`` does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeAlias

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]
