"""OpenAI-compatible HTTP server over an :class:`AsyncEngine` (aiohttp).

Besides OpenAI's routes, ``POST /v1/batch`` takes many chat/completions requests in one body and answers
them as NDJSON, a line per request as each finishes (docs/local_engine.md, "Many requests in one call").
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from local_engine.async_engine import AsyncEngine, EngineClosedError
from local_engine.kv_transfer import KVTransferError
from local_engine.lora import LoRAError, LoRAInfo
from local_engine.openai_api import OpenAIError, complete_response, error_body, stream_response

ENGINE = web.AppKey("engine", AsyncEngine)
HTTP_REQUESTS = web.AppKey("http_requests", Counter[str])  # requests by route, in /metrics
log = logging.getLogger("local_engine.server")
BATCH_MAX_BYTES = 64 * 1024 * 1024  # the largest /v1/batch body


def _error(
    status: int, message: str, type: str, param: str | None = None, code: str | None = None
) -> web.Response:
    return web.json_response(error_body(message, type, param, code), status=status)


def _failure(exc: Exception) -> tuple[int, dict[str, Any]]:
    """The status and OpenAI error body a request that raised ``exc`` is answered with."""
    if isinstance(exc, OpenAIError):
        return exc.status, exc.body()
    if isinstance(exc, EngineClosedError):
        return 503, error_body(str(exc), "service_unavailable", code="engine_unavailable")
    if isinstance(exc, KVTransferError):
        return 502, error_body(str(exc), "service_unavailable", code="kv_transfer_failed")
    log.error("internal error", exc_info=exc)
    return 500, error_body("internal error in the local engine", "server_error")


@web.middleware
async def _openai_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    resource = request.match_info.route.resource
    request.app[HTTP_REQUESTS][resource.canonical if resource is not None else "unmatched"] += 1
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        kind = "not_found_error" if e.status == 404 else "invalid_request_error"
        return _error(e.status, e.reason, kind, code=str(e.status))
    except Exception as e:
        status, body = _failure(e)
        return web.json_response(body, status=status)


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise OpenAIError("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise OpenAIError("request body must be a JSON object")
    return body


async def _completion(request: web.Request, chat: bool) -> web.StreamResponse:
    engine = request.app[ENGINE]
    body = await _json_body(request)
    if not body.get("stream"):
        return web.json_response(await complete_response(engine, body, chat=chat))
    chunks = stream_response(engine, body, chat=chat)
    try:
        # Pull the first chunk before sending headers, so a bad request still gets a JSON error.
        first = await anext(chunks, None)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        if first is not None:
            await resp.write(b"data: " + json.dumps(first).encode() + b"\n\n")
        try:
            async for chunk in chunks:
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        except (OpenAIError, EngineClosedError, KVTransferError) as e:
            # Headers are gone already: the error travels as a last event, as OpenAI does.
            err = e.body() if isinstance(e, OpenAIError) else error_body(str(e), "service_unavailable")
            await resp.write(b"data: " + json.dumps(err).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
    finally:
        # A client that went away (write fails or the handler is cancelled) aborts the request.
        await chunks.aclose()


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _completion(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _completion(request, chat=False)


_BATCH_ROUTES = {"/v1/chat/completions": True, "/v1/completions": False}  # url -> chat


def _batch_items(raw: bytes) -> list[Any]:
    """A ``/v1/batch`` body's requests: a JSON array, or NDJSON (one JSON value a line)."""
    try:
        text = raw.decode()
        if text.lstrip().startswith("["):
            items = json.loads(text)
        else:
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise OpenAIError("request body is neither a JSON array nor NDJSON") from None
    if not isinstance(items, list) or not items:
        raise OpenAIError("request body must hold at least one request")
    return items


async def _batch_line(engine: AsyncEngine, index: int, item: Any) -> dict[str, Any]:
    """One ``/v1/batch`` request's answer line: what its own route would answer, as status and body."""
    custom_id = item.get("custom_id") if isinstance(item, dict) else None
    line: dict[str, Any] = {"index": index, "custom_id": custom_id}
    try:
        if not isinstance(item, dict) or not isinstance(item.get("body"), dict):
            raise OpenAIError("each request must be an object with a 'body' object", param="body")
        url = item.get("url", "/v1/chat/completions")
        if url not in _BATCH_ROUTES:
            raise OpenAIError(
                f"/v1/batch carries only {' and '.join(_BATCH_ROUTES)}, not {url!r}",
                status=404,
                type="not_found_error",
                param="url",
            )
        if item["body"].get("stream"):
            raise OpenAIError("requests in /v1/batch cannot stream", param="stream")
        return {
            **line,
            "status": 200,
            "body": await complete_response(engine, item["body"], chat=_BATCH_ROUTES[url]),
        }
    except Exception as e:
        status, body = _failure(e)
        return {**line, "status": status, "body": body}


async def batch(request: web.Request) -> web.StreamResponse:
    """``POST /v1/batch``: many chat/completions requests (``{"custom_id", "url", "body"}`` each, as a batch
    input file's lines; a JSON array or NDJSON) given to the engine at once, answered as NDJSON, a line per
    request as each finishes: ``{"index", "custom_id", "status", "body"}`` with the status and body its own
    route would answer. Leaving before the end aborts the requests not yet answered."""
    if request.content_length is not None and request.content_length > BATCH_MAX_BYTES:
        raise OpenAIError(f"request body is over {BATCH_MAX_BYTES} bytes", status=413)
    raw = bytearray()
    async for chunk in request.content.iter_any():
        raw += chunk
        if len(raw) > BATCH_MAX_BYTES:
            raise OpenAIError(f"request body is over {BATCH_MAX_BYTES} bytes", status=413)
    items = _batch_items(bytes(raw))
    engine = request.app[ENGINE]
    tasks = [asyncio.ensure_future(_batch_line(engine, i, item)) for i, item in enumerate(items)]
    try:
        resp = web.StreamResponse(
            headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        for finished in asyncio.as_completed(tasks):
            await resp.write(json.dumps(await finished).encode() + b"\n")
        await resp.write_eof()
        return resp
    finally:
        # a client that went away: the requests still running are aborted (their generators closed)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def models(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    created = int(time.time())
    entry = {"id": engine.model_name, "object": "model", "created": created, "owned_by": "local_engine"}
    adapters = [
        {
            "id": a.name,
            "object": "model",
            "created": created,
            "owned_by": "local_engine",
            "parent": engine.model_name,
        }
        for a in engine.list_loras()
    ]
    return web.json_response({"object": "list", "data": [entry, *adapters]})


def _lora_view(info: LoRAInfo) -> dict[str, Any]:
    return {
        "object": "lora_adapter",
        "name": info.name,
        "path": info.path,
        "rank": info.rank,
        "alpha": info.alpha,
        "target_modules": list(info.target_modules),
    }


def _lora_field(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise OpenAIError(f"'{key}' must be a non-empty string", param=key)
    return value


async def load_lora_adapter(request: web.Request) -> web.Response:
    """vLLM's ``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}`` (docs/lora.md)."""
    body = await _json_body(request)
    name, path = _lora_field(body, "lora_name"), _lora_field(body, "lora_path")
    try:
        info = await request.app[ENGINE].add_lora(name, path)
    except LoRAError as e:
        raise OpenAIError(str(e), param="lora_path") from None
    return web.json_response(_lora_view(info))


async def unload_lora_adapter(request: web.Request) -> web.Response:
    """vLLM's ``POST /v1/unload_lora_adapter`` ``{"lora_name"}``."""
    name = _lora_field(await _json_body(request), "lora_name")
    try:
        request.app[ENGINE].remove_lora(name)
    except LoRAError as e:
        raise OpenAIError(
            str(e), status=404, type="not_found_error", param="lora_name", code="lora_not_found"
        ) from None
    return web.json_response({"object": "lora_adapter", "name": name, "deleted": True})


async def metrics(request: web.Request) -> web.Response:
    counts: Counter[str] = request.app[HTTP_REQUESTS]
    return web.json_response({**request.app[ENGINE].metrics, "http_requests_total": dict(counts)})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_app(
    engine_factory: Callable[[], Awaitable[AsyncEngine]], *, close_engine: bool = True
) -> web.Application:
    """The server app; the engine is created at start-up and (unless shared) closed at shutdown."""
    app = web.Application(middlewares=[_openai_errors])
    app[HTTP_REQUESTS] = Counter()

    async def engine_ctx(app: web.Application) -> AsyncIterator[None]:
        app[ENGINE] = await engine_factory()
        yield
        if close_engine:
            await app[ENGINE].close()

    app.cleanup_ctx.append(engine_ctx)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/batch", batch)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/load_lora_adapter", load_lora_adapter)
    app.router.add_post("/v1/unload_lora_adapter", unload_lora_adapter)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    return app
