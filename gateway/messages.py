"""Anthropic's Messages API in front of any backend: ``POST /v1/messages``.

The Anthropic-shaped request is translated into the internal chat-completions body, goes through the same
pipeline as ``/v1/chat/completions`` (admission, cache, resilience, any backend), and the OpenAI-shaped answer
is rendered back as an Anthropic ``message`` or as Anthropic's stream events (message_start,
content_block_start/delta/stop with text_delta and input_json_delta, message_delta with usage, message_stop;
an ``error`` event when the upstream fails mid-stream). Errors on this route use Anthropic's error format.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from backends import Endpoint, UpstreamResponse
from backends.errors import GatewayError, InvalidRequest, ModelNotFound
from policies.call import Call

from .keys import GATEWAY, RECORD
from .logs import get_logger
from .proxy import _SSE_HEADERS, _read_json
from .security import screening
from .security.network import PEER

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                403: "permission_error", 404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error"}


def error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(exc: GatewayError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(exc.status), "message": exc.message}}


async def handle(request: web.Request) -> web.StreamResponse:
    record = request[RECORD]
    try:
        return await _messages(request)
    except GatewayError as exc:
        failure = exc
    except web.HTTPException as exc:
        failure = GatewayError(exc.reason or "HTTP error", status=exc.status)
    except Exception:  # a bug: answer in Anthropic's format, keep the worker alive
        get_logger().exception("unhandled error", request_id=record.request_id, path=request.path)
        failure = GatewayError(f"Internal error; request id {record.request_id}.")
    record.status, record.error = failure.status, failure.message
    record.overhead_s = time.perf_counter() - record.started - record.upstream_s
    return web.Response(body=orjson.dumps(error_body(failure)), status=failure.status,
                        content_type="application/json",
                        headers={"x-request-id": record.request_id, "request-id": record.request_id,
                                 **failure.headers})


async def _messages(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    record = request[RECORD]
    caller = gateway.auth.authenticate(request.headers, request.get(PEER))
    record.tenant, record.key_id = caller.tenant.name, caller.key_id
    body = await _read_json(request, gateway.loaded.config.server.max_body_bytes)
    chat = to_chat(body)
    alias = chat["model"]
    if alias not in gateway.router or not caller.tenant.allows(alias):
        raise ModelNotFound(f"model: {alias}", param="model")
    record.alias = alias
    screen = await screening.inbound(gateway.pipeline, caller.tenant, caller.key_id, Endpoint.CHAT, chat, record)
    if gateway.loaded.config.server.log_prompts:
        record.prompt = screen.logged["messages"]
    stream = chat.get("stream") is True
    record.stream = stream
    call = Call(record=record, tenant=caller.tenant.name, key_id=caller.key_id, alias=alias, endpoint=Endpoint.CHAT,
                body=screen.body, stream=stream, headers=request.headers)
    async with gateway.pipeline.answer(call) as answer:
        answer = await screen.outbound(answer)
        if answer.chunks is None:
            return _whole(call, answer, alias)
        return await _stream(request, call, answer, alias)


def _headers(call: Call) -> dict[str, str]:
    record = call.record
    headers = {"x-request-id": record.request_id, "request-id": record.request_id, **record.response_headers}
    if record.deployment is not None:
        headers["x-gateway-deployment"] = record.deployment
    return headers


def _whole(call: Call, answer: UpstreamResponse, alias: str) -> web.Response:
    record = call.record
    data = answer.data if answer.data is not None else orjson.loads(answer.body or b"{}")
    record.status = 200
    record.overhead_s = time.perf_counter() - record.started - record.upstream_s
    headers = {**_headers(call), "x-gateway-overhead-ms": f"{record.overhead_s * 1000:.3f}"}
    return web.Response(body=orjson.dumps(to_message(data, alias)), status=200, headers=headers,
                        content_type="application/json")


async def _stream(request: web.Request, call: Call, answer: UpstreamResponse, alias: str) -> web.StreamResponse:
    record = call.record
    assert answer.chunks is not None
    response = web.StreamResponse(status=200, headers={**_SSE_HEADERS, **_headers(call)})
    record.overhead_s = time.perf_counter() - record.started - record.upstream_s
    response.headers["x-gateway-overhead-ms"] = f"{record.overhead_s * 1000:.3f}"
    await response.prepare(request)
    record.status = 200
    sent = record.started + record.overhead_s
    events = EventWriter(alias)
    lines = LineSplitter()
    try:
        async for piece in answer.chunks:
            out = b"".join(events.chunk(chunk) for chunk in lines.feed(piece))
            if out:
                if record.ttft_s is None:
                    record.ttft_s = time.perf_counter() - record.started
                await response.write(out)
        if not lines.done:
            raise GatewayError("The upstream ended its stream before it was complete.", status=502)
        await response.write(events.finish())
    except GatewayError as exc:
        record.error, record.status = exc.message, exc.status
        await response.write(sse("error", error_body(exc)))
    record.upstream_s = time.perf_counter() - sent
    await response.write_eof()
    return response


class LineSplitter:
    """OpenAI SSE bytes, in whatever pieces they come, -> parsed chunks; notes ``[DONE]`` and error events."""

    def __init__(self) -> None:
        self._tail = b""
        self.done = False

    def feed(self, piece: bytes) -> list[dict[str, Any]]:
        data = self._tail + piece
        events, _, self._tail = data.rpartition(b"\n\n")
        chunks: list[dict[str, Any]] = []
        for event in events.split(b"\n\n"):
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    self.done = True
                    continue
                try:
                    chunk = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(chunk, dict) and isinstance(chunk.get("error"), dict):
                    error = chunk["error"]
                    raise GatewayError(str(error.get("message") or "upstream error"), status=502)
                if isinstance(chunk, dict):
                    chunks.append(chunk)
        return chunks


def sse(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def anthropic_usage(usage: Any) -> dict[str, int]:
    """OpenAI usage -> Anthropic's: input_tokens excludes the cache reads and writes counted apart."""
    usage = usage if isinstance(usage, dict) else {}
    details = usage.get("prompt_tokens_details") if isinstance(usage.get("prompt_tokens_details"), dict) else {}
    read = int(details.get("cached_tokens") or 0)
    written = int(details.get("cache_creation_tokens") or 0)
    return {"input_tokens": max(int(usage.get("prompt_tokens") or 0) - read - written, 0),
            "output_tokens": int(usage.get("completion_tokens") or 0),
            "cache_creation_input_tokens": written, "cache_read_input_tokens": read}


class EventWriter:
    """OpenAI chunks (first choice) -> Anthropic stream events, one content block open at a time."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.id: str | None = None
        self._blocks = 0
        self._open: int | None = None      # index of the open content block
        self._text: int | None = None      # the open block, when it is text
        self._tools: dict[int, int] = {}   # OpenAI tool call index -> block index
        self._stop = "end_turn"
        self._usage: Any = None

    def _start(self, chunk: dict[str, Any]) -> bytes:
        self.id = message_id(chunk.get("id"))
        message: dict[str, Any] = {"id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
                   "stop_reason": None, "stop_sequence": None, "usage": anthropic_usage(None)}
        return sse("message_start", {"type": "message_start", "message": message}) + sse("ping", {"type": "ping"})

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        index, self._open, self._text = self._open, None, None
        return sse("content_block_stop", {"type": "content_block_stop", "index": index})

    def _open_block(self, block: dict[str, Any]) -> bytes:
        out = self._close()
        self._open = self._blocks
        self._blocks += 1
        return out + sse("content_block_start", {"type": "content_block_start", "index": self._open,
                                                 "content_block": block})

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        out = self._start(chunk) if self.id is None else b""
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                if self._text is None:
                    out += self._open_block({"type": "text", "text": ""})
                    self._text = self._open
                out += sse("content_block_delta", {"type": "content_block_delta", "index": self._text,
                                                   "delta": {"type": "text_delta", "text": text}})
            for call in delta.get("tool_calls") or ():
                function = call.get("function") or {}
                tool = call.get("index", 0)
                if tool not in self._tools:
                    out += self._open_block({"type": "tool_use", "id": str(call.get("id") or f"toolu_{tool}"),
                                             "name": str(function.get("name") or ""), "input": {}})
                    self._tools[tool] = self._blocks - 1
                if function.get("arguments"):
                    out += sse("content_block_delta", {
                        "type": "content_block_delta", "index": self._tools[tool],
                        "delta": {"type": "input_json_delta", "partial_json": function["arguments"]}})
            if choice.get("finish_reason"):
                self._stop = STOP_REASONS.get(choice["finish_reason"], "end_turn")
        return out

    def finish(self) -> bytes:
        out = self._start({}) if self.id is None else b""
        out += self._close()
        out += sse("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": self._stop, "stop_sequence": None},
                                     "usage": anthropic_usage(self._usage)})
        return out + sse("message_stop", {"type": "message_stop"})


def message_id(openai_id: Any) -> str:
    text = str(openai_id or "")
    return text if text.startswith("msg_") else f"msg_{text.removeprefix('chatcmpl-') or 'gateway'}"


def to_message(data: dict[str, Any], model: str) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` as an Anthropic ``message``."""
    choices = data.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            arguments = {"_raw_arguments": function.get("arguments")}
        content.append({"type": "tool_use", "id": str(call.get("id")), "name": str(function.get("name")),
                        "input": arguments if isinstance(arguments, dict) else {"value": arguments}})
    return {"id": message_id(data.get("id")), "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": STOP_REASONS.get(str(choice.get("finish_reason")), "end_turn"),
            "stop_sequence": None, "usage": anthropic_usage(data.get("usage"))}


def to_chat(body: Any) -> dict[str, Any]:
    """An Anthropic Messages request as the internal chat-completions body."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model, limit, messages = body.get("model"), body.get("max_tokens"), body.get("messages")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: Field required", param="model")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise InvalidRequest("max_tokens: Field required (an integer of at least 1)", param="max_tokens")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: at least one message is required", param="messages")
    chat: dict[str, Any] = {"model": model, "max_tokens": limit, "messages": []}
    system = body.get("system")
    if system:
        chat["messages"].append({"role": "system", "content": _text(system, "system")})
    for i, message in enumerate(messages):
        chat["messages"].extend(_message(message, i))
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p")):
        value = body.get(theirs)
        if value is not None:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise InvalidRequest(f"{theirs}: Input should be a valid number", param=theirs)
            chat[ours] = value
    stop = body.get("stop_sequences")
    if stop:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise InvalidRequest("stop_sequences: Input should be a list of strings", param="stop_sequences")
        chat["stop"] = stop
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        chat["user"] = metadata["user_id"]
    if body.get("tools"):
        chat["tools"] = [_tool(tool, i) for i, tool in enumerate(_list(body["tools"], "tools"))]
    if body.get("tool_choice") is not None:
        chat.update(_tool_choice(body["tool_choice"]))
    if body.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}  # message_delta carries the usage
    return chat


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidRequest(f"{where}: Input should be a valid list", param=where)
    return value


def _text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    texts = []
    for j, block in enumerate(_list(value, where)):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise InvalidRequest(f"{where}.{j}: expected a text block", param=where)
        texts.append(block["text"])
    return "\n".join(texts)


def _message(message: Any, i: int) -> list[dict[str, Any]]:
    where = f"messages.{i}"
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
        raise InvalidRequest(f"{where}.role: Input should be 'user' or 'assistant'", param=f"{where}.role")
    role, content = message["role"], message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    blocks = _list(content, f"{where}.content")
    if role == "assistant":
        texts, calls = [], []
        for j, block in enumerate(blocks):
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                texts.append(str(block.get("text", "")))
            elif kind == "tool_use":
                calls.append({"id": str(block.get("id")), "type": "function",
                              "function": {"name": str(block.get("name")),
                                           "arguments": orjson.dumps(block.get("input") or {}).decode()}})
            elif kind not in ("thinking", "redacted_thinking"):  # reasoning of earlier turns is not sent back
                raise InvalidRequest(f"{where}.content.{j}: block type {kind!r} is not supported",
                                     param=f"{where}.content")
        out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
        if calls:
            out["tool_calls"] = calls
        return [out]
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block, f"{where}.content.{j}")}})
        elif kind == "tool_result":
            result = block.get("content")
            text = result if isinstance(result, str) else _text(result or [], f"{where}.content.{j}.content")
            if block.get("is_error") is True:
                text = f"Error: {text}"
            results.append({"role": "tool", "tool_call_id": str(block.get("tool_use_id")), "content": text})
        else:
            raise InvalidRequest(f"{where}.content.{j}: block type {kind!r} is not supported", param=f"{where}.content")
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        results.append({"role": "user",
                        "content": "".join(p["text"] for p in parts) if only_text else parts})
    return results


def _image_url(block: dict[str, Any], where: str) -> str:
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "base64" and source.get("media_type") and source.get("data"):
        return f"data:{source['media_type']};base64,{source['data']}"
    if isinstance(source, dict) and source.get("type") == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    raise InvalidRequest(f"{where}.source: expected a base64 or url image source", param=where)


def _tool(tool: Any, i: int) -> dict[str, Any]:
    if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
        raise InvalidRequest(f"tools.{i}.name: Field required", param=f"tools.{i}")
    if tool.get("type") not in (None, "custom"):
        raise InvalidRequest(f"tools.{i}: server tool {tool['type']!r} is not supported by this gateway",
                             param=f"tools.{i}")
    function: dict[str, Any] = {"name": tool["name"],
                                "parameters": tool.get("input_schema") or {"type": "object", "properties": {}}}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> dict[str, Any]:
    kind = choice.get("type") if isinstance(choice, dict) else None
    out: dict[str, Any]
    if kind == "auto":
        out = {"tool_choice": "auto"}
    elif kind == "any":
        out = {"tool_choice": "required"}
    elif kind == "none":
        return {"tool_choice": "none"}
    elif kind == "tool" and isinstance(choice.get("name"), str):
        out = {"tool_choice": {"type": "function", "function": {"name": choice["name"]}}}
    else:
        raise InvalidRequest("tool_choice: expected type auto, any, tool (with a name) or none", param="tool_choice")
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False
    return out
