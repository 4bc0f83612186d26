"""Cached answers in and out: a completed stream's SSE events assembled into one ``chat.completion``, and a
stored completion given back as a JSON body or replayed as a valid SSE stream (role chunk, content chunks,
tool calls, finish chunk, usage chunk when the client asked for it, ``[DONE]``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson

from backends import sse

_PIECE = 48  # characters per replayed content chunk


def assemble(events: list[bytes], usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``chat.completion`` a stream of ``chat.completion.chunk`` events amounts to; None if the events
    are not one whole, successful, single-choice answer."""
    head: dict[str, Any] = {}
    message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
    content: list[str] = []
    refusal: list[str] = []
    tools: dict[int, dict[str, Any]] = {}
    finish: str | None = None
    for event in sse.decode(b"".join(events)):
        if event.done:
            continue
        try:
            chunk = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(chunk, dict) or "error" in chunk:
            return None
        if not head:
            head = {k: chunk.get(k) for k in ("id", "model", "created", "system_fingerprint")}
        if isinstance(chunk.get("usage"), dict):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                return None
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                content.append(delta["content"])
            if isinstance(delta.get("refusal"), str):
                refusal.append(delta["refusal"])
            for call in delta.get("tool_calls") or ():
                slot = tools.setdefault(
                    int(call.get("index", 0)),
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                if call.get("id"):
                    slot["id"] = call["id"]
                function = call.get("function") or {}
                slot["function"]["name"] += function.get("name") or ""
                slot["function"]["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
    if finish is None or not head:
        return None
    if content:
        message["content"] = "".join(content)
    if refusal:
        message["refusal"] = "".join(refusal)
    if tools:
        message["tool_calls"] = [tools[i] for i in sorted(tools)]
    completion: dict[str, Any] = {
        "id": head.get("id") or "chatcmpl-cached",
        "object": "chat.completion",
        "created": head.get("created") or int(time.time()),
        "model": head.get("model") or "",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
    }
    if head.get("system_fingerprint"):
        completion["system_fingerprint"] = head["system_fingerprint"]
    if usage is not None:
        completion["usage"] = usage
    return completion


def fresh(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored answer with a new id and creation time (a replay is a new response)."""
    prefix = "chatcmpl" if stored.get("object") == "chat.completion" else "cache"
    return {**stored, "id": f"{prefix}-{uuid.uuid4().hex}", "created": int(time.time())}


def chunks(completion: dict[str, Any], include_usage: bool) -> list[bytes]:
    """A stored ``chat.completion`` as the SSE events of a stream."""
    base = {
        "id": completion["id"],
        "object": "chat.completion.chunk",
        "created": completion["created"],
        "model": completion["model"],
    }
    if completion.get("system_fingerprint"):
        base["system_fingerprint"] = completion["system_fingerprint"]
    choice = completion["choices"][0]
    message = choice.get("message") or {}

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        body = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        return sse.data(orjson.dumps(body))

    out = [event({"role": "assistant", "content": ""})]
    text = message.get("content")
    if isinstance(text, str):
        out.extend(event({"content": text[i : i + _PIECE]}) for i in range(0, len(text), _PIECE))
    if isinstance(message.get("refusal"), str):
        out.append(event({"refusal": message["refusal"]}))
    for index, call in enumerate(message.get("tool_calls") or ()):
        out.append(
            event(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call.get("id"),
                            "type": "function",
                            "function": call.get("function"),
                        }
                    ]
                }
            )
        )
    out.append(event({}, choice.get("finish_reason") or "stop"))
    if include_usage and isinstance(completion.get("usage"), dict):
        out.append(sse.data(orjson.dumps({**base, "choices": [], "usage": completion["usage"]})))
    out.append(sse.DONE)
    return out


async def stream(events: list[bytes]) -> AsyncIterator[bytes]:
    for event in events:
        yield event
