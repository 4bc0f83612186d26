"""OpenAI's Responses API in front of any backend: ``POST /v1/responses``, ``GET``/``DELETE
/v1/responses/{id}``, ``GET /v1/responses/{id}/input_items``.

In front of OpenAI and Azure deployments the request goes as it is (native); in front of any other backend
it is translated to the chat shape, runs the same pipeline, and the answer is translated back
(``backends.wire.responses``). ``store`` (true unless the client says false) keeps the response for the
caller's tenant; ``previous_response_id`` continues from it on any backend.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from backends import Endpoint, UpstreamResponse, sse
from backends.shape import new_id
from backends.wire import responses as wire
from backends.wire.chunks import Relayed
from errors import GatewayError, InvalidRequest, NotFound
from policies.cache import ResponseCache
from policies.call import Call
from policies.record import RequestRecord
from policies.stored_responses import Sealer, Stored, StoredResponses
from policies.stores.keyvalue import KeyValue

from . import bridge
from .config import TenantConfig
from .keys import GATEWAY, RECORD
from .security import screening
from .security.retention import retention_s
from .state import Gateway

STORE = web.AppKey("stored_responses", StoredResponses)
_NATIVE = ("openai", "azure")


def _unknown(alias: str) -> str:
    return f"The model `{alias}` does not exist or you do not have access to it."


@dataclass(slots=True)
class Turn:
    """One Responses request made ready for the pipeline (a live request's or a batch line's): its call, its
    screening, and what keeping its answer needs."""

    call: Call
    body: dict[str, Any]
    items: list[dict[str, Any]]
    context: list[dict[str, Any]]
    dropped: list[str]
    store: StoredResponses
    screen: screening.Screen
    retention_s: float | None

    async def kept(self, response: dict[str, Any]) -> None:
        if self.body.get("store") is not False and isinstance(response.get("id"), str):
            await self.store.put(
                self.call.tenant, response["id"], Stored(response, self.items, self.context), self.retention_s
            )

    async def answered(self, answer: UpstreamResponse) -> dict[str, Any]:
        """A whole (screened) answer as the Response object, kept when asked; call it inside the pipeline's
        answer, so that a native answer's usage is read before it is settled."""
        data = answer.data if answer.data is not None else orjson.loads(answer.body or b"{}")
        if answer.status >= 400:
            return data  # an upstream error, in OpenAI's error shape already
        if self.call.endpoint is Endpoint.RESPONSES:
            if bridge.cache_hit(self.call):  # a response of its own: stored (and continued) under its own id
                data = wire.replayed(data, new_id("resp_"), int(time.time()))
            bridge.take_usage(self.call, wire.chat_usage(data.get("usage")))
            response = data
        else:
            response = wire.to_response(data, new_id("resp_"), self.body, self.call.alias, int(time.time()))
        await self.kept(response)
        return response

    async def whole(self, answer: UpstreamResponse) -> dict[str, Any]:
        """``answered`` after the screening's look at the answer (a batch line's)."""
        return await self.answered(await self.screen.outbound(answer))


async def turn(
    gateway: Gateway,
    store: StoredResponses,
    record: RequestRecord,
    tenant: TenantConfig,
    key_id: str,
    body: dict[str, Any],
    stream: bool,
    headers: Mapping[str, str],
) -> Turn:
    """``body`` (checked, its alias the tenant's) as a call, screened by the tenant's PII and guardrail policies:
    as it is in front of OpenAI and Azure deployments, in the chat shape in front of any other;
    ``previous_response_id`` continued from ``store``."""
    alias = body["model"]
    screen = await screening.inbound(gateway.pipeline, tenant, key_id, Endpoint.RESPONSES, body, record)
    body = screen.body  # masked where the tenant's PII policy masks: the upstream and the store see that
    items = wire.input_items(body)
    context: list[dict[str, Any]] = []
    native = bridge.speaks(gateway.router, alias, _NATIVE)
    previous = body.get("previous_response_id")
    if previous is not None:
        earlier = await store.get(tenant.name, str(previous))
        if earlier is not None:
            context = [*earlier.context, *earlier.input, *earlier.response.get("output", ())]
        elif not native:
            store.require_reachable()  # read from this process's memory while Redis is away: no proof
            raise NotFound(f"Previous response with id '{previous}' not found.", param="previous_response_id")
    dropped: list[str] = []
    if native:
        endpoint, payload = Endpoint.RESPONSES, dict(body)
        if context:  # continued here, not upstream: the upstream gets the whole conversation
            payload.pop("previous_response_id")
            payload["input"] = [_unstored(item) for item in (*context, *items)]
    else:
        endpoint, payload = Endpoint.CHAT, wire.to_chat(body, [*context, *items], dropped)
    if gateway.loaded.config.server.log_prompts:
        record.prompt = screen.logged.get("input")
    call = Call(
        record=record,
        tenant=tenant.name,
        key_id=key_id,
        alias=alias,
        endpoint=endpoint,
        body=payload,
        stream=stream,
        headers=headers,
    )
    return Turn(call, body, items, context, dropped, store, screen, retention_s(tenant))


async def create(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    asked = await bridge.incoming(request, wire.check, _unknown)
    ready = await turn(
        gateway,
        request.app[STORE],
        request[RECORD],
        asked.caller.tenant,
        asked.caller.key_id,
        asked.body,
        asked.stream,
        request.headers,
    )
    call = ready.call
    async with gateway.pipeline.answer(call) as answer:
        answer = await ready.screen.outbound(answer)
        extra = bridge.headers(call, ready.dropped)
        if answer.chunks is None:
            response = await ready.answered(answer)
            if call.endpoint is not Endpoint.RESPONSES:
                return bridge.whole(call, orjson.dumps(response), extra)
            hit = bridge.cache_hit(call)
            if call.stream:  # only a hit is whole for a stream: written as the stream it was
                return await bridge.stream(
                    request, call, bridge.once(wire.replay_events(response)), extra, _failed
                )
            return bridge.whole(
                call, orjson.dumps(response) if hit else answer.body or orjson.dumps(response), extra
            )
        if call.endpoint is Endpoint.RESPONSES:
            relayed = Relayed()
            events = _native_events(call, answer.chunks, ready.kept, gateway.pipeline.cache, relayed)
            return await bridge.stream(request, call, events, extra, _failed, relayed)
        writer = wire.ResponseEvents(new_id("resp_"), ready.body, call.alias)
        return await bridge.stream(
            request,
            call,
            _translated_events(writer, answer.chunks, ready.kept),
            extra,
            writer.failed,
            writer.relayed,
        )


def _unstored(item: dict[str, Any]) -> dict[str, Any]:
    """An earlier turn's item as new input: ids the gateway made mean nothing upstream."""
    return {k: v for k, v in item.items() if k not in ("id", "status")}


# The events whose ``delta`` is text the model generated (and the upstream bills): answer, reasoning, tools.
_TEXT_DELTAS = ("text.delta", "refusal.delta", "arguments.delta")


def _failed(exc: GatewayError) -> bytes:
    return sse.encode(
        orjson.dumps(
            {
                "type": "error",
                "code": exc.code or exc.type,
                "message": exc.message,
                "param": exc.param,
                "sequence_number": 0,
            }
        ),
        event="error",
    )


async def _translated_events(
    writer: wire.ResponseEvents, chunks: AsyncIterator[bytes], kept: Any
) -> AsyncIterator[bytes]:
    yield writer.start()
    async for batch, done in bridge.chat_chunks(chunks):
        if not done:
            yield writer.read_all(batch)
            continue
        out = writer.read_all(batch) + writer.finish()
        if writer.final is not None:  # kept before it goes out: a client may close at the final event
            await kept(writer.final)
        yield out


# A stream's final events (the type sniffed from the data where the upstream names no event); a client may
# close as soon as it has read one.
_FINAL = ("response.completed", "response.incomplete", "response.failed")
_FINAL_TYPES = tuple(b'"type":"' + kind.encode() + b'"' for kind in _FINAL)


async def _native_events(
    call: Call, chunks: AsyncIterator[bytes], kept: Any, cache: ResponseCache, relayed: Relayed
) -> AsyncIterator[bytes]:
    """OpenAI's own Responses stream, passed on; the final response is read on the way (usage, store, and
    the response cache, which keeps it whole) before it goes out, and once it went out the stream is over
    for the gateway: the upstream's own end is not waited for. The text relayed (``relayed``) is what a
    stream that breaks off is ledgered at."""
    decoder = sse.Decoder()
    async for piece in chunks:
        last = False
        for event in decoder.feed(piece):
            if event.event.endswith(_TEXT_DELTAS):
                delta = orjson.loads(event.data).get("delta")
                if isinstance(delta, str):
                    relayed.texts.append(delta)
            elif event.event in _FINAL or any(kind in event.data[:40] for kind in _FINAL_TYPES):
                last = True
                final = orjson.loads(event.data)
                kind = event.event if event.event in _FINAL else final.get("type")
                if kind != "response.failed":  # a failed one is a broken stream (bridge.stream)
                    response = final.get("response") or {}
                    bridge.take_usage(call, wire.chat_usage(response.get("usage")))
                    await kept(response)
                    cache.store(call, UpstreamResponse(status=200, data=response))
        yield piece
        if last:
            return


async def _stored(request: web.Request) -> tuple[str, Stored]:
    tenant = bridge.caller(request).tenant.name
    response_id = request.match_info["id"]
    stored = await request.app[STORE].get(tenant, response_id)
    if stored is None:
        request.app[STORE].require_reachable()
        raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
    return tenant, stored


async def retrieve(request: web.Request) -> web.Response:
    _, stored = await _stored(request)
    request[RECORD].status = 200
    return _json(request, stored.response)


async def delete(request: web.Request) -> web.Response:
    tenant, _ = await _stored(request)
    await request.app[STORE].delete(tenant, request.match_info["id"])
    request[RECORD].status = 200
    return _json(request, {"id": request.match_info["id"], "object": "response.deleted", "deleted": True})


async def input_items(request: web.Request) -> web.Response:
    _, stored = await _stored(request)
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("Invalid 'order': expected 'asc' or 'desc'.", param="order")
    try:
        limit = int(request.query.get("limit", "20"))
    except ValueError:
        raise InvalidRequest("Invalid 'limit': expected an integer.", param="limit") from None
    items = list(stored.input if order == "asc" else reversed(stored.input))
    after = request.query.get("after")
    if after is not None:
        ids = [item.get("id") for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[: max(1, min(limit, 100))]
    request[RECORD].status = 200
    return _json(
        request,
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > len(page),
        },
    )


def _json(request: web.Request, data: Any) -> web.Response:
    return web.Response(
        body=orjson.dumps(data),
        content_type="application/json",
        headers={"x-request-id": request[RECORD].request_id},
    )


def new_store(kv: KeyValue, ttl_s: float, sealer: Sealer | None = None) -> StoredResponses:
    return StoredResponses(kv, ttl_s, sealer)
