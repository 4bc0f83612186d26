"""The OpenAI-shaped endpoints: authenticate, validate, route, call the upstream, relay its answer."""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from backends import Endpoint
from backends.errors import GatewayError, InvalidRequest, ModelNotFound, PayloadTooLarge

from .keys import GATEWAY, RECORD
from .validate import validate

_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no"}


def handler(endpoint: Endpoint) -> Any:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await proxy(request, endpoint)
    return handle


async def proxy(request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    record = request[RECORD]
    caller = gateway.auth.authenticate(request.headers)
    record.tenant, record.key_id = caller.tenant.name, caller.key_id
    body = await _read_json(request, gateway.loaded.config.server.max_body_bytes)
    validate(endpoint, body)
    alias = body["model"]
    if alias not in gateway.router or not caller.tenant.allows(alias):
        raise ModelNotFound(f"The model `{alias}` does not exist or you do not have access to it.", param="model")
    record.alias = alias
    if gateway.loaded.config.server.log_prompts:
        record.prompt = body.get("messages") or body.get("prompt") or body.get("input")
    backend = gateway.router.pick(alias)
    record.deployment = backend.id
    stream = endpoint is not Endpoint.EMBEDDINGS and body.get("stream") is True
    record.stream = stream

    sent = time.perf_counter()
    async with backend.send(endpoint, body, stream=stream) as upstream:
        answered = time.perf_counter()
        record.upstream_s = answered - sent
        headers = {"x-request-id": record.request_id, "x-gateway-deployment": backend.id}
        if upstream.chunks is None:
            assert upstream.data is not None
            record.take_usage(upstream.data.get("usage"))
            record.status = upstream.status
            record.overhead_s = time.perf_counter() - record.started - record.upstream_s
            headers["x-gateway-overhead-ms"] = _ms(record.overhead_s)
            return web.Response(body=upstream.body, status=upstream.status, headers=headers,
                                content_type="application/json")

        response = web.StreamResponse(status=200, headers={**_SSE_HEADERS, **headers})
        # A stream's overhead is what the gateway added before the first byte could go out.
        record.overhead_s = time.perf_counter() - record.started - record.upstream_s
        response.headers["x-gateway-overhead-ms"] = _ms(record.overhead_s)
        await response.prepare(request)
        record.status = 200
        scanner = _UsageScanner()
        try:
            async for chunk in upstream.chunks:
                if record.ttft_s is None:
                    record.ttft_s = time.perf_counter() - record.started
                await response.write(chunk)
                scanner.feed(chunk)
        except GatewayError as exc:
            # Headers are gone: the client learns of the failure from an error event, as OpenAI sends one.
            record.error = exc.message
            record.status = exc.status
            await response.write(b"data: " + orjson.dumps(exc.body()) + b"\n\n")
        record.take_usage(scanner.usage)
        record.upstream_s = time.perf_counter() - sent
        await response.write_eof()
        return response


async def _read_json(request: web.Request, limit: int) -> Any:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"Request body of {request.content_length} bytes exceeds the limit of {limit} bytes.")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.") from exc
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
            "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
        ) from exc


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


class _UsageScanner:
    """Finds the ``usage`` object in an SSE stream without holding more than one partial line."""

    __slots__ = ("_tail", "usage")

    def __init__(self) -> None:
        self._tail = b""
        self.usage: Any = None

    def feed(self, chunk: bytes) -> None:
        data = self._tail + chunk if self._tail else chunk
        if b'"usage"' not in data:
            newline = data.rfind(b"\n")
            self._tail = data[newline + 1:] if newline >= 0 else data[-65536:]
            return
        lines = data.split(b"\n")
        self._tail = lines.pop()
        for line in lines:
            if line.startswith(b"data: {") and b'"usage"' in line:
                try:
                    usage = orjson.loads(line[6:]).get("usage")
                except (orjson.JSONDecodeError, AttributeError):
                    continue
                if usage:
                    self.usage = usage
