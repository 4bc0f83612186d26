"""The OpenAI fake's Responses API (``POST /v1/responses``), written from OpenAI's OpenAPI spec: a whole
``response`` or its event stream (created, in_progress, output_item.added/done, content_part.added/done,
output_text.delta/done, function_call_arguments.delta/done, completed; numbered). Answers come from
tests/fakes/scenario.py: the model ``agent`` runs a coding agent's tool loop, any other model echoes the last
user text, or quotes the tool output it was given. The model ``cut-stream`` drops the connection after its
second text delta (``CUT_AFTER_DELTAS``), as the chat fake's does after two words."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from .scenario import AGENT_MODEL, Answer, agent, split_arguments

REASONING_TOKENS = 5
CUT_AFTER_DELTAS = 2


def _texts(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(str(p.get("text", "")) for p in content or () if isinstance(p, dict))


def plan(body: dict[str, Any]) -> Answer:
    source = body.get("input")
    items = (
        [{"type": "message", "role": "user", "content": source}] if isinstance(source, str) else source or []
    )
    results: list[str] = []
    for item in reversed(items):
        if item.get("type") != "function_call_output":
            break
        results.insert(0, _texts(item.get("output")))
    tools = [t.get("name") for t in body.get("tools") or () if t.get("type") == "function"]
    if body["model"] == AGENT_MODEL:
        return agent([str(t) for t in tools], results)
    if results:
        return Answer(words=["Tool:", *" ".join(results).split()])
    users = [i for i in items if i.get("type", "message") == "message" and i.get("role") == "user"]
    return Answer(words=["Echo:", *_texts(users[-1]["content"] if users else "").split()][:64])


def _usage(body: dict[str, Any], plan: Answer) -> dict[str, Any]:
    prompt = len(orjson.dumps(body.get("input") or "")) // 4 + 1
    reasoning = REASONING_TOKENS if body.get("reasoning") else 0
    output = plan.output_tokens + reasoning
    cached = min(2, prompt) if body.get("prompt_cache_key") else 0  # as the chat fake's CACHED
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + output,
    }


def _response(body: dict[str, Any], output: list[dict[str, Any]], status: str, usage: Any) -> dict[str, Any]:
    return {
        "id": f"resp_{uuid.uuid4().hex[:24]}",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": body["model"],
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True),
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "metadata": body.get("metadata") or {},
    }


def _items(answer: Answer) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if answer.words:
        items.append(
            {
                "type": "message",
                "id": f"msg_{uuid.uuid4().hex[:16]}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": answer.text, "annotations": [], "logprobs": []}],
            }
        )
    for i, (name, arguments) in enumerate(answer.calls):
        items.append(
            {
                "type": "function_call",
                "id": f"fc_{uuid.uuid4().hex[:16]}",
                "call_id": f"call_fake{i}",
                "name": name,
                "arguments": orjson.dumps(arguments).decode(),
                "status": "completed",
            }
        )
    return items


def whole(body: dict[str, Any]) -> dict[str, Any]:
    """The whole Response object answering ``body``."""
    answer = plan(body)
    return _response(body, _items(answer), "completed", _usage(body, answer))


async def handle(
    request: web.Request, body: dict[str, Any], lingered: Callable[[], Awaitable[None]]
) -> web.StreamResponse:
    """The answer to ``body``, whole or streamed; a stream's connection ends once ``lingered()`` is done."""
    answer = plan(body)
    items = _items(answer)
    final = _response(body, items, "completed", _usage(body, answer))
    if not body.get("stream"):
        return web.Response(body=orjson.dumps(final), content_type="application/json")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    seq = 0
    deltas = 0

    async def send(kind: str, **data: Any) -> None:
        nonlocal seq, deltas
        if kind == "response.output_text.delta" and body["model"] == "cut-stream":
            if deltas == CUT_AFTER_DELTAS:
                assert request.transport is not None
                request.transport.abort()
                raise ConnectionResetError("cut-stream")
            deltas += 1
        payload = {"type": kind, "sequence_number": seq, **data}
        seq += 1
        await response.write(b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n")

    try:
        await _stream(send, final, items, answer)
    except ConnectionResetError:
        return response
    await lingered()
    await response.write_eof()
    return response


async def _stream(send: Any, final: dict[str, Any], items: list[dict[str, Any]], answer: Answer) -> None:
    start = {**final, "status": "in_progress", "output": []}
    del start["usage"]
    await send("response.created", response=start)
    await send("response.in_progress", response=start)
    for index, item in enumerate(items):
        empty: dict[str, Any] = {"content": []} if "content" in item else {"arguments": ""}
        await send(
            "response.output_item.added", output_index=index, item={**item, "status": "in_progress", **empty}
        )
        if item["type"] == "message":
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            await send(
                "response.content_part.added",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=part,
            )
            for piece in answer.pieces():
                await send(
                    "response.output_text.delta",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    delta=piece,
                    logprobs=[],
                )
            await send(
                "response.output_text.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                text=answer.text,
                logprobs=[],
            )
            await send(
                "response.content_part.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=item["content"][0],
            )
        else:
            for piece in split_arguments(item["arguments"]):
                await send(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=index,
                    delta=piece,
                )
            await send(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                name=item["name"],
                arguments=item["arguments"],
            )
        await send("response.output_item.done", output_index=index, item=item)
    await send("response.completed", response=final)
