"""A careless upstream that writes the credential it was sent into its streams, in OpenAI's chat, Anthropic's
Messages and OpenAI's Responses formats (each as that provider streams it).

The credential (``Authorization: Bearer …`` or ``x-api-key``) is streamed as a model streams text: split across
two text deltas, and each of those events is itself written in two network writes split inside the secret.
The text then ends with the credential's first two characters (a block that ends holding back text). The
model ``leak-error`` then fails the stream with an error event quoting the ``Authorization`` header.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

PREFIX = "Your key is "


def credential(request: web.Request) -> str:
    return request.headers.get("x-api-key") or request.headers.get("Authorization", "").removeprefix(
        "Bearer "
    )


def pieces(secret: str) -> list[str]:
    """The text deltas: the secret split in two, and a text ending with the secret's start."""
    half = len(secret) // 2
    return [PREFIX, secret[:half], secret[half:], " and again ", secret[:2]]


def expected_text(secret: str) -> str:
    """What a client should read: the secret redacted, the rest as sent."""
    return f"{PREFIX}[redacted] and again {secret[:2]}"


async def _write_split(response: web.StreamResponse, event: bytes) -> None:
    cut = len(event) // 2
    await response.write(event[:cut])
    await response.write(event[cut:])


def _sse(data: dict[str, Any], name: str | None = None) -> bytes:
    head = b"event: " + name.encode() + b"\n" if name else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


async def _chat(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    secret = credential(request)
    if not body.get("stream"):
        return web.json_response(
            {
                "id": "chatcmpl-leak",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(pieces(secret))},
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
            }
        )
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse(
            {
                "id": "chatcmpl-leak",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )

    await response.write(chunk({"role": "assistant", "content": ""}))
    for piece in pieces(secret):
        await _write_split(response, chunk({"content": piece}))
    if body["model"] == "leak-error":
        await _write_split(
            response,
            _sse({"error": {"message": f"Authorization: Bearer {secret} expired", "type": "server_error"}}),
        )
        return response
    await response.write(chunk({}, "stop"))
    await response.write(b"data: [DONE]\n\n")
    return response


async def _messages(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    secret = credential(request)
    if not body.get("stream"):
        return web.json_response(
            {
                "id": "msg_leak",
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": [{"type": "text", "text": "".join(pieces(secret))}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 5, "output_tokens": 5},
            }
        )
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    usage = {"input_tokens": 5, "output_tokens": 1}
    await response.write(
        _sse(
            {
                "type": "message_start",
                "message": {
                    "id": "msg_leak",
                    "type": "message",
                    "role": "assistant",
                    "model": body["model"],
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": usage,
                },
            },
            "message_start",
        )
    )
    await response.write(
        _sse(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            "content_block_start",
        )
    )
    for piece in pieces(secret):
        await _write_split(
            response,
            _sse(
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
                "content_block_delta",
            ),
        )
    if body["model"] == "leak-error":
        await _write_split(
            response,
            _sse(
                {
                    "type": "error",
                    "error": {"type": "api_error", "message": f"x-api-key {secret} was rejected"},
                },
                "error",
            ),
        )
        return response
    await response.write(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
    await response.write(
        _sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 5},
            },
            "message_delta",
        )
    )
    await response.write(_sse({"type": "message_stop"}, "message_stop"))
    return response


async def _responses(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    secret = credential(request)
    seq = 0

    async def send(kind: str, split: bool = False, **data: Any) -> None:
        nonlocal seq
        event = _sse({"type": kind, "sequence_number": seq, **data}, kind)
        seq += 1
        await (_write_split(response, event) if split else response.write(event))

    whole = "".join(pieces(secret))
    item = {
        "id": "msg_leak",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": whole, "annotations": []}],
    }
    final = {
        "id": "resp_leak",
        "object": "response",
        "created_at": int(time.time()),
        "model": body["model"],
        "status": "completed",
        "output": [item],
        "error": None,
        "incomplete_details": None,
        "usage": {
            "input_tokens": 5,
            "output_tokens": 5,
            "total_tokens": 10,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }
    if not body.get("stream"):
        return web.json_response(final)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    start = {**final, "status": "in_progress", "output": [], "usage": None}
    await send("response.created", response=start)
    await send(
        "response.output_item.added", output_index=0, item={**item, "status": "in_progress", "content": []}
    )
    await send(
        "response.content_part.added",
        item_id="msg_leak",
        output_index=0,
        content_index=0,
        part={"type": "output_text", "text": "", "annotations": []},
    )
    for piece in pieces(secret):
        await send(
            "response.output_text.delta",
            True,
            item_id="msg_leak",
            output_index=0,
            content_index=0,
            delta=piece,
        )
    if body["model"] == "leak-error":
        await send(
            "error", True, code="server_error", message=f"Authorization: Bearer {secret} expired", param=None
        )
        return response
    await send("response.output_text.done", item_id="msg_leak", output_index=0, content_index=0, text=whole)
    await send(
        "response.content_part.done",
        item_id="msg_leak",
        output_index=0,
        content_index=0,
        part=item["content"][0],
    )
    await send("response.output_item.done", output_index=0, item=item)
    await send("response.completed", response=final)
    return response


def build_app() -> web.Application:
    async def route(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        handler = {"/v1/chat/completions": _chat, "/v1/messages": _messages, "/v1/responses": _responses}
        return await handler[request.path](request, body)

    app = web.Application()
    for path in ("/v1/chat/completions", "/v1/messages", "/v1/responses"):
        app.router.add_post(path, route)
    return app
