"""The gate as pure ASGI: the middleware in front of any ASGI app, and what it answers with.

``middleware`` runs one request through the stages (:mod:`aidr_gate.request`), the gate and the
audit trail; ``responses`` holds the refusal bodies, ``streams`` the admitted event streams a
change can end, ``server_limits`` what uvicorn needs added against hostile callers, and ``types``
the ASGI type aliases every layer uses.
"""
