"""A vLLM-like model server that says what it received, for the hardening tests and bench/hostile.py.

Like vLLM it serves its default model (:data:`DEFAULT_MODEL`, a controlled one) when a request names
none, and reads a request as Starlette does: the JSON body with ``json.loads`` (the last of repeated
keys), a form with ``request.form()``, the model of a KServe path from the path. Every answer is
JSON: the model it served and every header it received, plus how a WSGI server would fold them into
``environ`` (``x_aidr_entity`` and ``x-aidr-entity`` both become ``HTTP_X_AIDR_ENTITY``).

Run in-process behind the middleware (:data:`app`) or as its own process, the sidecar's upstream:
``python tests/support/hostile_app.py --port N``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

DEFAULT_MODEL = "aurora-frontier"


def _report(request: Request, served: str | None) -> dict[str, Any]:
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]]
    environ: dict[str, list[str]] = {}
    for name, value in headers:
        environ.setdefault("HTTP_" + name.upper().replace("-", "_"), []).append(value)
    return {"served": served, "headers": headers, "environ": environ}


async def chat(request: Request) -> Response:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except ValueError:
        return JSONResponse({"error": "not json"}, status_code=400)
    model = body.get("model") if isinstance(body, dict) else None
    return JSONResponse(_report(request, model if isinstance(model, str) else DEFAULT_MODEL))


async def transcribe(request: Request) -> Response:
    form = await request.form()
    model = form.get("model")
    served = model if isinstance(model, str) and model else DEFAULT_MODEL
    return JSONResponse(_report(request, served))


async def infer(request: Request) -> Response:
    return JSONResponse(_report(request, request.path_params["name"]))


async def anything(request: Request) -> Response:
    await request.body()
    return JSONResponse(_report(request, None))


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/audio/transcriptions", transcribe, methods=["POST"]),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/health", health),
        Route("/{rest:path}", anything, methods=["GET", "POST"]),
    ]
)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--gate", help="serve behind AIDRGateMiddleware with this configuration")
    args = parser.parse_args()
    served: Any = app
    if args.gate:
        from aidr_gate.asgi.middleware import AIDRGateMiddleware

        served = AIDRGateMiddleware(app, config=args.gate)
    uvicorn.run(served, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
