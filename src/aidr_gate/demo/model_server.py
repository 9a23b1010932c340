"""A small OpenAI-compatible model server for the demo and the tests: no weights, deterministic text.

Chat and text completions (streamed as server-sent events, one word per chunk, with a configurable
pause so streaming is visible), embeddings, model listing, and a KServe v2 ``infer`` endpoint. It
answers what a real server would in shape, so the openai SDK works against it unchanged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

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


def build_model_app(
    models: Sequence[str] = DEFAULT_MODELS,
    *,
    token_delay: float = 0.02,
    echo_digest: bool = False,
) -> Starlette:
    """The model server as an ASGI app. *echo_digest* adds the received body's SHA-256 as a header."""
    served = tuple(models)
    created = int(time.time())

    async def body_of(request: Request) -> tuple[dict[str, Any] | None, bytes]:
        raw = await request.body()
        try:
            parsed = json.loads(raw)
        except ValueError:
            return None, raw
        return (parsed if isinstance(parsed, dict) else None), raw

    def headers_for(raw: bytes) -> dict[str, str]:
        return {"x-received-body-sha256": hashlib.sha256(raw).hexdigest()} if echo_digest else {}

    async def list_models(request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": created, "owned_by": "aidr-gate-demo"}
                    for m in served
                ],
            }
        )

    async def chat(request: Request) -> Response:
        return await _complete(request, chat=True)

    async def completions(request: Request) -> Response:
        return await _complete(request, chat=False)

    async def _complete(request: Request, *, chat: bool) -> Response:
        body, raw = await body_of(request)
        if body is None:
            return _error(400, "body must be a JSON object", "invalid_json")
        model = body.get("model")
        if model not in served:
            return _error(404, f"model {model!r} does not exist", "model_not_found")
        words = _reply_words(str(model), _prompt_of(body))
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{hashlib.sha1(raw).hexdigest()[:12]}"  # noqa: S324
        if body.get("stream"):
            return StreamingResponse(
                _stream(ident, str(model), words, chat=chat),
                media_type="text/event-stream",
                headers=headers_for(raw),
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
            headers=headers_for(raw),
        )

    async def _stream(
        ident: str, model: str, words: list[str], *, chat: bool
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
            if token_delay:
                await asyncio.sleep(token_delay)
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

    async def embeddings(request: Request) -> Response:
        body, raw = await body_of(request)
        if body is None:
            return _error(400, "body must be a JSON object", "invalid_json")
        model = body.get("model")
        if model not in served:
            return _error(404, f"model {model!r} does not exist", "model_not_found")
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
            headers=headers_for(raw),
        )

    async def kserve_infer(request: Request) -> Response:
        model = request.path_params["model"]
        body, raw = await body_of(request)
        if model not in served:
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
            headers=headers_for(raw),
        )

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v2/models/{model}/infer", kserve_infer, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ]
    )
