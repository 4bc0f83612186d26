"""Anthropic's Messages API (``POST /v1/messages``, ``x-api-key``, ``anthropic-version``), behind OpenAI's shape.

Requests: system/developer messages -> ``system``; tool results -> ``tool_result`` blocks in a user turn;
images (data: URLs -> base64 source, other URLs -> url source); tools, ``tool_choice``,
``parallel_tool_calls``; ``stop`` -> ``stop_sequences``; ``max_tokens`` defaulted (Anthropic requires it).
Streams: Anthropic's events (message_start, content_block_*, input_json_delta, message_delta, message_stop,
ping, error) become OpenAI chunks; usage (cache reads and writes included) is counted from message_start
and message_delta and sent in the final usage chunk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from .base import Backend, Endpoint, UpstreamResponse
from .config import DeploymentConfig
from .errors import InvalidRequest, UpstreamConnectionError, UpstreamError, from_upstream
from .http import (
    client_timeout,
    expect_stream,
    plain_error,
    post,
    primed,
    read_error,
    read_json,
    sse_events,
    stream_json,
)
from .pool import SessionPool
from .shape import (
    DONE,
    Choice,
    ChunkWriter,
    Image,
    ToolCall,
    Usage,
    append_turn,
    completion,
    convert_content,
    function_of,
    max_tokens,
    new_id,
    safe_tool_id,
    single_choice,
    stop_list,
    text_of,
    tool_arguments,
)

FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
                  "model_context_window_exceeded": "length",
                  "tool_use": "tool_calls", "refusal": "content_filter"}
# Anthropic error type -> OpenAI (type, code); the upstream's status is kept (429 and 529 drive retries).
ERROR_TYPES: dict[str, tuple[str, str | None]] = {
    "invalid_request_error": ("invalid_request_error", None),
    "authentication_error": ("invalid_request_error", "invalid_api_key"),
    "permission_error": ("invalid_request_error", "permission_denied"),
    "not_found_error": ("invalid_request_error", "not_found"),
    "request_too_large": ("invalid_request_error", "request_too_large"),
    "billing_error": ("insufficient_quota", "insufficient_quota"),
    "rate_limit_error": ("rate_limit_error", "rate_limit_exceeded"),
    "api_error": ("server_error", None),
    "timeout_error": ("timeout", "upstream_timeout"),
    "overloaded_error": ("server_error", "overloaded"),
}
_ERROR_STATUS = {"overloaded_error": 529, "rate_limit_error": 429, "api_error": 500, "timeout_error": 504,
                 "invalid_request_error": 400}


class AnthropicBackend(Backend):
    def __init__(self, deployment: DeploymentConfig, pool: SessionPool) -> None:
        self.id = deployment.id
        self.deployment = deployment
        self._pool = pool
        self._timeout = client_timeout(deployment)
        self._url = f"{deployment.base_url}/messages"
        self._headers = {"content-type": "application/json", "anthropic-version": deployment.anthropic_version,
                         **deployment.headers}
        if deployment.api_key:
            self._headers["x-api-key"] = deployment.api_key

    @asynccontextmanager
    async def send(self, endpoint: Endpoint, payload: dict[str, Any], *,
                   stream: bool) -> AsyncIterator[UpstreamResponse]:
        if endpoint is not Endpoint.CHAT:
            raise InvalidRequest(f"Anthropic deployments serve chat completions only, not /v1/{endpoint.value}.")
        request = to_anthropic(payload, self.deployment.model, self.deployment.default_max_tokens)
        if stream:
            request["stream"] = True
        session = self._pool.get(self.deployment.base_url, self.deployment.proxy)
        response = await post(session, self._url, orjson.dumps(request), self._headers, self._timeout, self.id)
        try:
            if response.status >= 400:
                data, raw, headers = await read_error(response, self.deployment.timeouts.read_s)
                raise error_from(data, response.status, headers, self.id) if isinstance(data, dict) else \
                    plain_error(self.id, response.status, raw, headers)
            if stream:
                expect_stream(response, "text/event-stream", self.id)
                yield UpstreamResponse(status=200, chunks=await primed(self._chunks(response), self.id))
            else:
                data = await read_json(response, self.id)
                if data.get("type") == "error":
                    raise error_from(data, 502, {}, self.id)
                answer = from_anthropic(data)
                yield UpstreamResponse(status=200, body=orjson.dumps(answer), data=answer)
        finally:
            response.release()

    async def _chunks(self, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        writer = ChunkWriter(new_id("msg_"), self.deployment.model)
        tools: dict[int, int] = {}  # content block index -> OpenAI tool call index
        usage = Usage()
        finish = "stop"
        async for name, data in sse_events(response, self.id):
            event = stream_json(data, self.id)
            kind = event.get("type", name)
            if kind == "message_start":
                message = event.get("message") or {}
                writer.id = str(message.get("id") or writer.id)
                writer.model = str(message.get("model") or writer.model)
                _count(usage, message.get("usage"))
                yield writer.role()
            elif kind == "content_block_start":
                block = event.get("content_block") or {}
                if block.get("type") == "tool_use":
                    tools[event.get("index", 0)] = len(tools)
                    yield writer.tool_start(len(tools) - 1, str(block.get("id")), str(block.get("name")))
                elif block.get("type") == "text" and block.get("text"):
                    yield writer.text(block["text"])
            elif kind == "content_block_delta":
                delta = event.get("delta") or {}
                if delta.get("type") == "text_delta" and delta.get("text"):
                    yield writer.text(delta["text"])
                elif delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                    tool = tools.get(event.get("index", 0))
                    if tool is None:
                        raise UpstreamError(f"upstream {self.id} sent tool input for a block it never started")
                    yield writer.tool_arguments(tool, delta["partial_json"])
            elif kind == "message_delta":
                reason = (event.get("delta") or {}).get("stop_reason")
                if reason:
                    finish = FINISH_REASONS.get(reason, "stop")
                _count(usage, event.get("usage"))
            elif kind == "message_stop":
                yield writer.finish(finish) + writer.usage(usage) + DONE
                return
            elif kind == "error":
                raise error_from(event, _ERROR_STATUS.get(str((event.get("error") or {}).get("type")), 502), {},
                                 self.id)
        raise UpstreamConnectionError(f"upstream {self.id} ended its stream before message_stop")


def _count(usage: Usage, raw: Any) -> None:
    """Anthropic's usage is cumulative: message_start has the prompt, message_delta the final output (and,
    from newer API versions, the prompt again). A field left out keeps its earlier value."""
    if not isinstance(raw, dict):
        return
    uncached = usage.prompt_tokens - (usage.cached_tokens or 0) - (usage.cache_creation_tokens or 0)
    if isinstance(raw.get("input_tokens"), int):
        uncached = raw["input_tokens"]
    if isinstance(raw.get("cache_read_input_tokens"), int):
        usage.cached_tokens = raw["cache_read_input_tokens"]
    if isinstance(raw.get("cache_creation_input_tokens"), int):
        usage.cache_creation_tokens = raw["cache_creation_input_tokens"]
    usage.prompt_tokens = uncached + (usage.cached_tokens or 0) + (usage.cache_creation_tokens or 0)
    if isinstance(raw.get("output_tokens"), int):
        usage.completion_tokens = raw["output_tokens"]


def usage_of(raw: Any) -> Usage:
    usage = Usage()
    _count(usage, raw)
    return usage


def error_from(data: dict[str, Any], status: int, headers: dict[str, str], backend_id: str) -> UpstreamError:
    error = data.get("error")
    if not isinstance(error, dict):
        return from_upstream(UpstreamError(f"upstream {backend_id} returned HTTP {status}", status=status,
                                           headers=headers), backend_id)
    kind = str(error.get("type") or "api_error")
    type_, code = ERROR_TYPES.get(kind, ("server_error" if status >= 500 else "invalid_request_error", None))
    message = str(error.get("message") or f"upstream {backend_id} returned {kind}")
    return from_upstream(UpstreamError(message, status=status, error_type=type_, code=code, headers=headers),
                         backend_id)


def from_anthropic(data: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic ``message`` as an OpenAI ``chat.completion``."""
    choice = Choice(finish_reason=FINISH_REASONS.get(str(data.get("stop_reason")), "stop"))
    texts = []
    for block in data.get("content") or ():
        if block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            choice.tool_calls.append(ToolCall(str(block.get("id")), str(block.get("name")),
                                              orjson.dumps(block.get("input") or {}).decode()))
    choice.text = "".join(texts)
    return completion(str(data.get("id") or new_id("msg_")), str(data.get("model", "")), [choice],
                      usage_of(data.get("usage")))


def to_anthropic(payload: dict[str, Any], model: str, default_max_tokens: int) -> dict[str, Any]:
    """An OpenAI chat-completions request as an Anthropic Messages request."""
    single_choice(payload, "Anthropic")
    system, messages = _messages(payload["messages"])
    request: dict[str, Any] = {"model": model, "messages": messages,
                               "max_tokens": max_tokens(payload) or default_max_tokens}
    if system:
        request["system"] = system
    if isinstance(payload.get("temperature"), (int, float)):
        request["temperature"] = min(float(payload["temperature"]), 1.0)  # Anthropic's range is 0..1
    if isinstance(payload.get("top_p"), (int, float)):
        request["top_p"] = payload["top_p"]
    if isinstance(payload.get("top_k"), int):
        request["top_k"] = payload["top_k"]
    stop = stop_list(payload.get("stop"))
    if stop:
        request["stop_sequences"] = stop
    if isinstance(payload.get("user"), str):
        request["metadata"] = {"user_id": payload["user"]}
    tools = payload.get("tools")
    if tools:
        request["tools"] = [_tool(tool, i) for i, tool in enumerate(tools)]
        choice = _tool_choice(payload.get("tool_choice"), payload.get("parallel_tool_calls"))
        if choice is not None:
            request["tool_choice"] = choice
    return request


def _tool(tool: Any, i: int) -> dict[str, Any]:
    function = function_of(tool, i)
    out: dict[str, Any] = {"name": function["name"],
                           "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    out: dict[str, Any]
    if choice is None or choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        out = {"type": "tool", "name": choice["function"].get("name")}
    else:
        raise InvalidRequest("Invalid 'tool_choice'.", param="tool_choice")
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    elif choice is None:
        return None
    return out


def _messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        where = f"messages[{i}].content"
        if role in ("system", "developer"):
            system.extend(_blocks(content, where, images=False))
        elif role == "tool":
            result = {"type": "tool_result", "tool_use_id": safe_tool_id(message.get("tool_call_id")),
                      "content": text_of(content)}
            append_turn(out, "user", "content", [result])
        elif role == "user":
            append_turn(out, "user", "content", _blocks(content, where, images=True))
        elif role == "assistant":
            blocks = _blocks(content, where, images=False)
            for j, call in enumerate(message.get("tool_calls") or ()):
                function = call.get("function") or {}
                blocks.append({"type": "tool_use", "id": safe_tool_id(call.get("id")), "name": str(function.get("name")),
                               "input": tool_arguments(function.get("arguments"),
                                                       f"messages[{i}].tool_calls[{j}].function.arguments")})
            append_turn(out, "assistant", "content", blocks)
        else:
            raise InvalidRequest(f"Invalid value for 'messages[{i}].role': {role!r} is not supported by "
                                 "Anthropic deployments.", param=f"messages[{i}].role")
    return system, out


def _blocks(content: Any, where: str, *, images: bool) -> list[dict[str, Any]]:
    return convert_content(content, where, "Anthropic", _text_block, _image_block if images else None)


def _text_block(part: dict[str, Any]) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": part["text"]}
    if isinstance(part.get("cache_control"), dict):  # prompt caching, as Anthropic's own clients mark it
        block["cache_control"] = part["cache_control"]
    return block


def _image_block(image: Image, where: str) -> dict[str, Any]:
    source = {"type": "url", "url": image.url} if image.url else \
        {"type": "base64", "media_type": image.media_type, "data": image.data}
    return {"type": "image", "source": source}
