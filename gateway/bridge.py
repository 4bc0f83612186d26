"""What the handlers of other APIs' formats (``/v1/messages``, ``/v1/responses``) share: errors in the
client's format, the native-or-translated choice, and writing a whole answer or a stream of events."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from backends import sse
from backends.wire.chunks import Relayed
from errors import GatewayError, ModelNotFound, UpstreamConnectionError
from policies.call import Call
from policies.router import Router

from . import logbodies
from .auth import Caller
from .keys import GATEWAY, RECORD
from .logs import get_logger
from .proxy import _SSE_HEADERS, _read_json, end
from .security.network import PEER

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ErrorBody = Callable[[GatewayError], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Incoming:
    """A request on another API's route, authenticated and checked, its alias one the tenant may use."""

    caller: Caller
    body: dict[str, Any]
    alias: str
    stream: bool


def caller(request: web.Request) -> Caller:
    """The request's key, authenticated; its tenant and key id go on the record."""
    found = request.app[GATEWAY].auth.authenticate(request.headers, request.get(PEER))
    record = request[RECORD]
    record.tenant, record.key_id = found.tenant.name, found.key_id
    return found


async def incoming(
    request: web.Request, check: Callable[[Any], dict[str, Any]], unknown: Callable[[str], str]
) -> Incoming:
    """Auth, the JSON body (``check``: the format's required fields, ``model`` among them) and the alias:
    unknown or not the tenant's is a 404 whose message ``unknown`` words in the format's way."""
    gateway = request.app[GATEWAY]
    who = caller(request)
    body = check(await _read_json(request, gateway.loaded.config.server.max_body_bytes))
    alias = body["model"]
    if alias not in gateway.router or not who.tenant.allows(alias):
        raise ModelNotFound(unknown(alias), param="model")
    record = request[RECORD]
    record.alias = alias
    record.stream = body.get("stream") is True
    return Incoming(who, body, alias, record.stream)


def in_format(handler: Handler, error_body: ErrorBody) -> Handler:
    """``handler`` with every failure answered in the client's error format."""

    async def handle(request: web.Request) -> web.StreamResponse:
        record = request[RECORD]
        try:
            return await handler(request)
        except GatewayError as exc:
            failure = exc
        except web.HTTPException as exc:
            failure = GatewayError(exc.reason or "HTTP error", status=exc.status)
        except Exception:  # a bug: answer in the client's format, keep the worker alive
            get_logger().exception("unhandled error", request_id=record.request_id, path=request.path)
            failure = GatewayError(
                f"Internal error; request id {record.request_id}."
            )  # the class stays in the log
        record.status, record.error = failure.status, failure.message
        record.overhead_s = time.perf_counter() - record.started - record.upstream_s
        return web.Response(
            body=orjson.dumps(error_body(failure)),
            status=failure.status,
            content_type="application/json",
            headers={"x-request-id": record.request_id, "request-id": record.request_id, **failure.headers},
        )

    return handle


def native(request: web.Request, alias: str, providers: tuple[str, ...]) -> bool:
    """True when every deployment of ``alias`` speaks the client's format: the request then goes as it is."""
    return speaks(request.app[GATEWAY].router, alias, providers)


def speaks(router: Router, alias: str, providers: tuple[str, ...]) -> bool:
    """``native`` for a request that is no HTTP request (a batch line)."""
    routes = router.routes(alias)
    return all(route.deployment.provider in providers and not route.deployment.in_process for route in routes)


def headers(call: Call, dropped: list[str] | None = None) -> dict[str, str]:
    record = call.record
    out = {"x-request-id": record.request_id, "request-id": record.request_id, **record.response_headers}
    if record.deployment is not None:
        out["x-gateway-deployment"] = record.deployment
    if dropped:
        out["x-gateway-dropped-tools"] = ",".join(dropped)
    return out


def whole(call: Call, body: bytes, extra: dict[str, str]) -> web.Response:
    record = call.record
    record.status = 200
    record.overhead_s = time.perf_counter() - record.started - record.upstream_s
    return web.Response(
        body=body,
        status=200,
        content_type="application/json",
        headers={**extra, "x-gateway-overhead-ms": f"{record.overhead_s * 1000:.3f}"},
    )


async def stream(
    request: web.Request,
    call: Call,
    events: AsyncIterator[bytes],
    extra: dict[str, str],
    failed: Callable[[GatewayError], bytes],
    relayed: Relayed | None = None,
) -> web.StreamResponse:
    """Writes ``events`` to the client as they come; a failure after the headers went out becomes the
    client format's error event (``failed``). A stream that broke off before its usage came is ledgered at
    what went out (``relayed``, the pipeline's ``broken``)."""
    record = call.record
    response = web.StreamResponse(status=200, headers={**_SSE_HEADERS, **extra})
    record.overhead_s = time.perf_counter() - record.started - record.upstream_s
    response.headers["x-gateway-overhead-ms"] = f"{record.overhead_s * 1000:.3f}"
    await response.prepare(request)
    record.status = 200
    sent = record.started + record.overhead_s
    logged = logbodies.streamed(request)  # folded after each write: the client never waits on it
    try:
        async for out in events:
            if out:
                if record.ttft_s is None:
                    record.ttft_s = time.perf_counter() - record.started
                await response.write(out)
                if logged is not None:
                    logged.feed(out)
    except GatewayError as exc:
        record.error, record.status = exc.message, exc.status
        if relayed is not None:
            await request.app[GATEWAY].pipeline.broken(call, relayed)
        failure = failed(exc)
        await response.write(failure)
        if logged is not None:
            logged.feed(failure)
    else:
        if relayed is not None and not call.completed:
            # it ended without its last event (a native stream's response.failed or error event, which the
            # client has seen): a broken stream, ledgered as one
            record.error, record.status = "The upstream ended its stream before it was complete.", 502
            await request.app[GATEWAY].pipeline.broken(call, relayed)
    record.upstream_s = time.perf_counter() - sent
    await end(response)
    return response


async def chat_chunks(pieces: AsyncIterator[bytes]) -> AsyncIterator[tuple[list[dict[str, Any]], bool]]:
    """The chunks of an OpenAI chat stream, those of one piece together (their translation is then one
    write, as the pass-through's is), and whether ``[DONE]`` ended them (the writer's closing events then go
    in the same write); an error chunk fails it, and so does an end before ``[DONE]``."""
    decoder = sse.Decoder()
    loads = orjson.loads
    async for piece in pieces:
        batch: list[dict[str, Any]] = []
        for event in decoder.feed(piece):
            if event.done:
                yield batch, True
                return
            try:
                chunk = loads(event.data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(chunk, dict):
                if "error" in chunk and isinstance(chunk["error"], dict):
                    raise GatewayError(str(chunk["error"].get("message") or "upstream error"), status=502)
                batch.append(chunk)
        if batch:
            yield batch, False
    raise UpstreamConnectionError("The upstream ended its stream before it was complete.")


def cache_hit(call: Call) -> bool:
    """Whether the response cache answered ``call``."""
    return bool(call.record.cache and call.record.cache.startswith("hit"))


async def once(events: bytes) -> AsyncIterator[bytes]:
    """A stream written in one piece (a cached answer's events)."""
    yield events


def take_usage(call: Call, usage: dict[str, Any]) -> None:
    """Usage (chat shape) of an answer the pipeline could not read itself (a native format's)."""
    call.usage = usage
    call.record.take_usage(usage)
    call.completed = True
