"""A small OpenAI-compatible model server for the demo and the tests: no weights, deterministic text.

Chat and text completions (streamed as server-sent events, one word per chunk, with a configurable
pause so streaming is visible), embeddings, model listing, and a KServe v2 ``infer`` endpoint. It
answers what a real server would in shape, so the openai SDK works against it unchanged.

With ``faults=True`` (``--faults``) it also plays a misbehaving upstream for tests: a request header
``x-demo-status: 500`` answers that status with an error body, ``x-demo-delay: 2.5`` waits that many
seconds before answering, ``x-demo-token-delay: 0.2`` sets the pause between streamed words, and
``GET /demo/stats`` tells what it saw: requests, the last request's headers (credentials redacted),
and how many streams were started, completed, and cancelled by the client going away.

Run it alone with ``python -m aidr_gate.demo.model_server --port 8000`` (loopback only by default).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

DEFAULT_MODELS: tuple[str, ...] = (
    "aurora-frontier",
    "aurora-mini",
    "aurora-ft-custom",
    "llama-3.1-405b",
    "open-giant",
    "embed-small",
)


MAX_FAULT_DELAY = 600.0


@dataclass
class ServerStats:
    """What the server saw, for tests: counts, and the last request's headers."""

    requests: int = 0
    streams_started: int = 0
    streams_completed: int = 0
    streams_cancelled: int = 0
    last_headers: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "requests": self.requests,
            "streams_started": self.streams_started,
            "streams_completed": self.streams_completed,
            "streams_cancelled": self.streams_cancelled,
            "last_headers": [list(pair) for pair in self.last_headers],
        }


def _reply_words(model: str, prompt: str) -> list[str]:
    said = " ".join(prompt.split()[:12]) or "nothing"
    return f"Hello from {model}. You said: {said}".split(" ")


def _prompt_of(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list) and messages:
        last = messages[-1]
        if isinstance(last, dict):
            content = last.get("content")
            if isinstance(content, str):
                return content
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else ""


def _error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        },
        status_code=status,
    )


async def _body_of(request: Request) -> tuple[dict[str, Any] | None, bytes]:
    raw = await request.body()
    try:
        parsed = json.loads(raw)
    except ValueError:
        return None, raw
    return (parsed if isinstance(parsed, dict) else None), raw


async def _pieces(
    ident: str, model: str, words: list[str], *, chat: bool, delay: float
) -> AsyncIterator[bytes]:
    for index, word in enumerate(words):
        piece = word if index == 0 else " " + word
        delta: dict[str, Any] = (
            {"index": 0, "delta": {"content": piece}, "finish_reason": None}
            if chat
            else {"index": 0, "text": piece, "finish_reason": None, "logprobs": None}
        )
        chunk = {
            "id": ident,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": [delta],
        }
        yield f"data: {json.dumps(chunk)}\n\n".encode()
        if delay:
            await asyncio.sleep(delay)
    final: dict[str, Any] = (
        {"index": 0, "delta": {}, "finish_reason": "stop"}
        if chat
        else {"index": 0, "text": "", "finish_reason": "stop", "logprobs": None}
    )
    done = {
        "id": ident,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [final],
    }
    yield f"data: {json.dumps(done)}\n\n".encode()
    yield b"data: [DONE]\n\n"


class _ModelServer:
    """The routes' handlers, over what :func:`build_model_app` was given and what they saw."""

    def __init__(
        self,
        models: Sequence[str],
        *,
        token_delay: float,
        echo_digest: bool,
        faults: bool,
        stats: ServerStats | None,
    ) -> None:
        self.served = tuple(models)
        self.created = int(time.time())
        self.token_delay = token_delay
        self.echo_digest = echo_digest
        self.faults = faults
        self.seen = stats if stats is not None else ServerStats()

    async def fault(self, request: Request) -> Response | None:
        """Count the request; with *faults*, the delay and the status it asks for."""
        self.seen.requests += 1
        # Never echo credentials, even in a test server's stats.
        self.seen.last_headers = [
            (name, "<redacted>" if name == "authorization" else value)
            for name, value in (
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw
            )
        ]
        if not self.faults:
            return None
        delay = request.headers.get("x-demo-delay")
        if delay:
            with contextlib.suppress(ValueError):
                await asyncio.sleep(min(max(float(delay), 0.0), MAX_FAULT_DELAY))
        status = request.headers.get("x-demo-status")
        if status and status.isdigit() and 400 <= int(status) <= 599:
            return _error(int(status), "fault injected by x-demo-status", "demo_fault")
        return None

    async def model_request(self, request: Request) -> Response | tuple[dict[str, Any], bytes, str]:
        """An injected fault or an error answer, or the body, its bytes and the served model."""
        injected = await self.fault(request)
        if injected is not None:
            return injected
        body, raw = await _body_of(request)
        if body is None:
            return _error(400, "body must be a JSON object", "invalid_json")
        model = body.get("model")
        if not isinstance(model, str) or model not in self.served:
            return _error(404, f"model {model!r} does not exist", "model_not_found")
        return body, raw, model

    def headers_for(self, raw: bytes) -> dict[str, str]:
        return (
            {"x-received-body-sha256": hashlib.sha256(raw).hexdigest()} if self.echo_digest else {}
        )

    async def list_models(self, request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": m,
                        "object": "model",
                        "created": self.created,
                        "owned_by": "aidr-gate-demo",
                    }
                    for m in self.served
                ],
            }
        )

    async def chat(self, request: Request) -> Response:
        return await self._complete(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._complete(request, chat=False)

    async def _complete(self, request: Request, *, chat: bool) -> Response:
        checked = await self.model_request(request)
        if isinstance(checked, Response):
            return checked
        body, raw, model = checked
        words = _reply_words(str(model), _prompt_of(body))
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{hashlib.sha1(raw).hexdigest()[:12]}"  # noqa: S324
        if body.get("stream"):
            return StreamingResponse(
                self._stream(ident, str(model), words, chat=chat, delay=self._token_delay(request)),
                media_type="text/event-stream",
                headers=self.headers_for(raw),
            )
        text = " ".join(words)
        usage = {"prompt_tokens": len(_prompt_of(body).split()), "completion_tokens": len(words)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            if chat
            else {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
        )
        return JSONResponse(
            {
                "id": ident,
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": model,
                "choices": [choice],
                "usage": usage,
            },
            headers=self.headers_for(raw),
        )

    def _token_delay(self, request: Request) -> float:
        asked = request.headers.get("x-demo-token-delay") if self.faults else None
        if asked:
            with contextlib.suppress(ValueError):
                return min(max(float(asked), 0.0), MAX_FAULT_DELAY)
        return self.token_delay

    async def _stream(
        self, ident: str, model: str, words: list[str], *, chat: bool, delay: float
    ) -> AsyncIterator[bytes]:
        self.seen.streams_started += 1
        finished = False
        try:
            async for piece in _pieces(ident, model, words, chat=chat, delay=delay):
                yield piece
            finished = True
        finally:
            # A stream that did not finish was cancelled: the client (or the sidecar) went away.
            if finished:
                self.seen.streams_completed += 1
            else:
                self.seen.streams_cancelled += 1

    async def embeddings(self, request: Request) -> Response:
        checked = await self.model_request(request)
        if isinstance(checked, Response):
            return checked
        body, raw, model = checked
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = []
        for index, item in enumerate(items):
            digest = hashlib.sha256(str(item).encode()).digest()
            data.append(
                {"object": "embedding", "index": index, "embedding": [b / 255 for b in digest[:8]]}
            )
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": len(items), "total_tokens": len(items)},
            },
            headers=self.headers_for(raw),
        )

    async def transcribe(self, request: Request) -> Response:
        """OpenAI's audio transcription: a multipart form with ``file`` and ``model``."""
        injected = await self.fault(request)
        if injected is not None:
            return injected
        raw = await request.body()  # cached by Starlette: form() below parses the same bytes
        async with request.form() as form:
            model = form.get("model")
            upload = form.get("file")
            if not isinstance(model, str) or model not in self.served:
                return _error(404, f"model {model!r} does not exist", "model_not_found")
            if upload is None or isinstance(upload, str):
                return _error(400, "the form has no file", "invalid_request")
            audio = await upload.read()
        text = f"{model} heard {len(audio)} bytes of {upload.filename or 'audio'}"
        return JSONResponse({"text": text}, headers=self.headers_for(raw))

    async def kserve_infer(self, request: Request) -> Response:
        model = request.path_params["model"]
        body, raw = await _body_of(request)
        if model not in self.served:
            return _error(404, f"model {model!r} does not exist", "model_not_found")
        inputs = (body or {}).get("inputs", [])
        return JSONResponse(
            {
                "model_name": model,
                "id": (body or {}).get("id", "0"),
                "outputs": [
                    {"name": "output0", "shape": [1], "datatype": "INT64", "data": [len(inputs)]}
                ],
            },
            headers=self.headers_for(raw),
        )

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def demo_stats(self, request: Request) -> Response:
        return JSONResponse(self.seen.to_dict())


def build_model_app(
    models: Sequence[str] = DEFAULT_MODELS,
    *,
    token_delay: float = 0.02,
    echo_digest: bool = False,
    faults: bool = False,
    stats: ServerStats | None = None,
) -> Starlette:
    """The model server as an ASGI app. *echo_digest* adds the received body's SHA-256 as a header;
    *faults* honours the ``x-demo-*`` fault headers and serves ``/demo/stats`` (see the module)."""
    server = _ModelServer(
        models, token_delay=token_delay, echo_digest=echo_digest, faults=faults, stats=stats
    )
    extra = [Route("/demo/stats", server.demo_stats, methods=["GET"])] if faults else []
    return Starlette(
        routes=[
            *extra,
            Route("/v1/models", server.list_models, methods=["GET"]),
            Route("/v1/chat/completions", server.chat, methods=["POST"]),
            Route("/v1/completions", server.completions, methods=["POST"]),
            Route("/v1/embeddings", server.embeddings, methods=["POST"]),
            Route("/v1/audio/transcriptions", server.transcribe, methods=["POST"]),
            Route("/v2/models/{model}/infer", server.kserve_infer, methods=["POST"]),
            Route("/health", server.health, methods=["GET"]),
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m aidr_gate.demo.model_server``: serve the demo model server under uvicorn."""
    parser = argparse.ArgumentParser(
        prog="python -m aidr_gate.demo.model_server", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--token-delay", type=float, default=0.02, help="seconds between streamed words"
    )
    parser.add_argument("--echo-digest", action="store_true", help="echo the body's SHA-256")
    parser.add_argument("--faults", action="store_true", help="honour x-demo-* fault headers")
    parser.add_argument("--log-level", default="warning", help="uvicorn log level")
    args = parser.parse_args(argv)
    app = build_model_app(
        token_delay=args.token_delay, echo_digest=args.echo_digest, faults=args.faults
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, server_header=False)


if __name__ == "__main__":
    main()
