"""The OpenAI-shaped endpoints: authenticate, validate, route, call the upstream, relay its answer."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
from aiohttp import web

from backends import Endpoint, UpstreamResponse, sse
from errors import GatewayError, InvalidRequest, ModelNotFound, PayloadTooLarge, RequestTimeout
from policies.call import Call

from . import fine_tuning, logbodies
from .auth import Caller
from .keys import GATEWAY, RECORD
from .security import screening
from .security.network import PEER
from .validate import validate

# orjson writes at most 254 levels: deeper bodies would fail when sent upstream; none of the APIs needs 64.
MAX_NESTING = 64
_SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def handler(endpoint: Endpoint) -> Any:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await proxy(request, endpoint)

    return handle


async def proxy(request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    record = request[RECORD]
    caller = gateway.auth.authenticate(request.headers, request.get(PEER))
    record.tenant, record.key_id = caller.tenant.name, caller.key_id
    body = await _read_json(request, gateway.loaded.config.server.max_body_bytes)
    validate(endpoint, body)
    alias = body["model"] = await fine_tuning.served_as(request, caller.tenant.name, body["model"])
    if alias not in gateway.router:
        alias = gateway.router.adapter_alias(alias) or alias  # ALIAS:ADAPTER, the body keeps the adapter
    if alias not in gateway.router or not caller.tenant.allows(alias):
        raise ModelNotFound(
            f"The model `{alias}` does not exist or you do not have access to it.", param="model"
        )
    record.alias = alias
    stream = endpoint is not Endpoint.EMBEDDINGS and body.get("stream") is True
    record.stream = stream
    call, screen = await screened_call(request, caller, alias, endpoint, body, stream)
    async with gateway.pipeline.answer(call) as answer:
        return await relay(request, call, await screen.outbound(answer))


async def screened_call(
    request: web.Request, caller: Caller, alias: str, endpoint: Endpoint, body: dict[str, Any], stream: bool
) -> tuple[Call, screening.Screen]:
    """The call the pipeline answers: the body as the tenant's screening leaves it (PII, guardrail), the
    prompt logged when ``server.log_prompts`` is on."""
    gateway, record = request.app[GATEWAY], request[RECORD]
    screen = await screening.inbound(gateway.pipeline, caller.tenant, caller.key_id, endpoint, body, record)
    if gateway.loaded.config.server.log_prompts:
        logged = screen.logged
        record.prompt = logged.get("messages") or logged.get("prompt") or logged.get("input")
    call = Call(
        record=record,
        tenant=caller.tenant.name,
        key_id=caller.key_id,
        alias=alias,
        endpoint=endpoint,
        body=screen.body,
        stream=stream,
        headers=request.headers,
    )
    return call, screen


async def relay(request: web.Request, call: Call, answer: UpstreamResponse) -> web.StreamResponse:
    """Writes an OpenAI-shaped answer to the client: the body as it is, or the stream as it comes."""
    record = call.record
    headers = {"x-request-id": record.request_id, **record.response_headers}
    if record.deployment is not None:
        headers["x-gateway-deployment"] = record.deployment
    if answer.chunks is None:
        record.status = answer.status
        record.overhead_s = time.perf_counter() - record.started - record.upstream_s
        headers["x-gateway-overhead-ms"] = _ms(record.overhead_s)
        body = answer.body if answer.body is not None else orjson.dumps(answer.data)
        return web.Response(body=body, status=answer.status, headers=headers, content_type="application/json")

    response = web.StreamResponse(status=200, headers={**_SSE_HEADERS, **headers})
    # A stream's overhead is what the gateway added before the first byte could go out.
    record.overhead_s = time.perf_counter() - record.started - record.upstream_s
    response.headers["x-gateway-overhead-ms"] = _ms(record.overhead_s)
    await response.prepare(request)
    record.status = 200
    sent = record.started + record.overhead_s
    logged = logbodies.streamed(request)  # folded after each write: the client never waits on it
    try:
        async for chunk in answer.chunks:
            if record.ttft_s is None:
                record.ttft_s = time.perf_counter() - record.started
            await response.write(chunk)
            if logged is not None:
                logged.feed(chunk)
            if chunk.endswith(sse.DONE):  # the SDKs close at [DONE]: the upstream's own end is not waited for
                break
    except GatewayError as exc:
        # Headers are gone: the client learns of the failure from an error event, as OpenAI sends one.
        record.fail(exc)
        failure = sse.data(orjson.dumps(exc.body()))
        await response.write(failure)
        if logged is not None:
            logged.feed(failure)
    record.upstream_s = time.perf_counter() - sent
    await end(response)
    return response


async def end(response: web.StreamResponse) -> None:
    """Ends a stream whose last event went out; a client already gone had the whole answer."""
    with contextlib.suppress(ConnectionResetError):  # aiohttp's ClientConnectionResetError
        await response.write_eof()


async def _read_json(request: web.Request, limit: int) -> Any:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(
            f"Request body of {request.content_length} bytes exceeds the limit of {limit} bytes."
        )
    timeout = request.app[GATEWAY].loaded.config.server.limits.body_timeout_s
    try:
        async with asyncio.timeout(timeout):
            raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.") from exc
    except TimeoutError as exc:
        raise RequestTimeout(f"The request body did not arrive within {timeout:g} s.") from exc
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
            "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
        ) from exc
    # Counting brackets is C-speed; only a body that could be deep is walked.
    if raw.count(b"[") + raw.count(b"{") > MAX_NESTING and _deeper_than(body, MAX_NESTING):
        raise InvalidRequest(f"The JSON body is nested more than {MAX_NESTING} levels deep.")
    return body


def _deeper_than(value: Any, limit: int) -> bool:
    level: list[Any] = [value]
    for _ in range(limit):
        level = [
            child
            for node in level
            if isinstance(node, (dict, list))
            for child in (node.values() if isinstance(node, dict) else node)
        ]
        if not level:
            return False
    return any(isinstance(node, (dict, list)) for node in level)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"
