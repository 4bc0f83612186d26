"""Anthropic's Messages API in front of any backend: ``POST /v1/messages`` and ``/v1/messages/count_tokens``.

In front of Anthropic deployments the request goes as it is (native: thinking signatures, ``cache_control``,
``context_management``, ``anthropic-beta`` all reach the upstream). In front of any other backend it is
translated to the chat shape, runs the same pipeline, and the answer is translated back
(``backends.wire.anthropic``). Errors on these routes use Anthropic's error format.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

from backends import Endpoint, UpstreamResponse, sse
from backends.wire import anthropic as wire
from backends.wire.chunks import Relayed
from errors import GatewayError
from policies import tokens
from policies.cache import ResponseCache
from policies.call import Call

from . import bridge
from .keys import GATEWAY, RECORD
from .proxy import screened_call

_NATIVE = ("anthropic",)


def _unknown(alias: str) -> str:
    return f"model: {alias}"


def _counted(body: Any) -> dict[str, Any]:
    if isinstance(body, dict):
        body.setdefault("max_tokens", 1)  # count_tokens takes no max_tokens; the shared check wants one
    return wire.check(body)


def _failed(exc: GatewayError) -> bytes:
    return wire.event("error", wire.error_body(exc))


async def _messages(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    asked = await bridge.incoming(request, wire.check, _unknown)
    body, alias, stream, caller = asked.body, asked.alias, asked.stream, asked.caller
    dropped: list[str] = []
    if bridge.native(request, alias, _NATIVE):
        endpoint, payload = Endpoint.MESSAGES, {**body, wire.BETAS: request.headers.get("anthropic-beta")}
    else:
        endpoint, payload = Endpoint.CHAT, wire.to_chat(body, dropped)
    call, screen = await screened_call(request, caller, alias, endpoint, payload, stream)
    async with gateway.pipeline.answer(call) as answer:
        answer = await screen.outbound(answer)
        extra = bridge.headers(call, dropped)
        if endpoint is Endpoint.MESSAGES:
            if answer.chunks is None:
                data = {**_whole_of(answer), "model": alias}
                bridge.take_usage(call, wire.usage_of(data.get("usage")).openai())
                if stream:  # only a hit is whole for a stream: written as the stream it was
                    return await bridge.stream(
                        request, call, bridge.once(wire.replay_events(data)), extra, _failed
                    )
                return bridge.whole(call, orjson.dumps(data), extra)
            cache = gateway.pipeline.cache
            relayed = Relayed()
            return await bridge.stream(
                request,
                call,
                _native_events(call, answer.chunks, alias, cache if cache.wants(call) else None, relayed),
                extra,
                _failed,
                relayed,
            )
        if answer.chunks is None:
            data = answer.data if answer.data is not None else orjson.loads(answer.body or b"{}")
            return bridge.whole(
                call, orjson.dumps(wire.to_message(data, alias, body.get("stop_sequences"))), extra
            )
        events = wire.MessageEvents(alias, body.get("stop_sequences"))
        return await bridge.stream(
            request, call, _translated_events(answer.chunks, events), extra, _failed, events.relayed
        )


async def _translated_events(
    chunks: AsyncIterator[bytes], events: wire.MessageEvents
) -> AsyncIterator[bytes]:
    async for batch, done in bridge.chat_chunks(chunks):
        yield events.read_all(batch) + events.finish() if done else events.read_all(batch)


async def _native_events(
    call: Call, chunks: AsyncIterator[bytes], alias: str, cache: ResponseCache | None, relayed: Relayed
) -> AsyncIterator[bytes]:
    """Anthropic's own stream, passed on with the alias as its model; its usage (message_start,
    message_delta) and the text relayed (``relayed``: what a stream that breaks off is ledgered at) are
    read on the way, and with a ``cache`` that wants it the whole message is kept, all before message_stop
    goes out, which ends the stream."""
    decoder = sse.Decoder()
    usage = wire.usage_of(None)
    whole = wire.MessageOfEvents() if cache is not None else None
    async for piece in chunks:
        out = []
        for event in decoder.feed(piece):
            if event.event == "message_start":
                data = orjson.loads(event.data)
                message = data.get("message") or {}
                wire.count_usage(usage, message.get("usage"))
                relayed.usage = usage.openai()
                data = {**data, "message": {**message, "model": alias}}
                if whole is not None:
                    whole.event(event.event, data)
                out.append(wire.event("message_start", data))
                continue
            if event.event == "content_block_delta":
                delta = orjson.loads(event.data)
                _relayed_text(relayed, delta.get("delta"))
                if whole is not None:
                    whole.event(event.event, delta)
            elif whole is not None and event.event.startswith(("content_block_", "message_delta")):
                whole.event(event.event, orjson.loads(event.data))
            if event.event == "message_delta":
                wire.count_usage(usage, orjson.loads(event.data).get("usage"))
            elif event.event == "message_stop":
                bridge.take_usage(call, usage.openai())
                if cache is not None and whole is not None and whole.message is not None:
                    cache.store(call, UpstreamResponse(status=200, data=whole.message))
            out.append(sse.encode(event.data, event=event.event))
        yield b"".join(out)
        if call.completed:  # message_stop went out: clients close there, the upstream's end is not waited for
            return


def _relayed_text(relayed: Relayed, delta: Any) -> None:
    """A content block delta's text, thinking or tool input, as the chat reader counts those."""
    if isinstance(delta, dict):
        text = delta.get("text") or delta.get("thinking") or delta.get("partial_json")
        if isinstance(text, str):
            relayed.texts.append(text)


async def _count_tokens(request: web.Request) -> web.StreamResponse:
    """Exact from an Anthropic deployment, estimated for others; ``x-gateway-token-count`` says which."""
    gateway = request.app[GATEWAY]
    record = request[RECORD]
    asked = await bridge.incoming(request, _counted, _unknown)
    body, alias = asked.body, asked.alias
    headers = {"x-request-id": record.request_id, "request-id": record.request_id}
    route = gateway.router.routes(alias)[0]
    if route.deployment.provider in _NATIVE:
        payload: dict[str, Any] = {k: v for k, v in body.items() if k not in ("max_tokens", "stream")}
        payload[wire.BETAS] = request.headers.get("anthropic-beta")
        async with route.backend.send(Endpoint.COUNT_TOKENS, payload, stream=False) as answer:
            result = _whole_of(answer)
        how = "exact"
    else:
        chat = wire.to_chat(body)
        result = {"input_tokens": await tokens.count_prompt(Endpoint.CHAT, chat, None)}
        how = "estimated"
    record.status = 200
    return web.Response(
        body=orjson.dumps(result),
        content_type="application/json",
        headers={**headers, "x-gateway-token-count": how},
    )


def _whole_of(answer: UpstreamResponse) -> dict[str, Any]:
    return answer.data if answer.data is not None else orjson.loads(answer.body or b"{}")


handle = bridge.in_format(_messages, wire.error_body)
count_tokens = bridge.in_format(_count_tokens, wire.error_body)
