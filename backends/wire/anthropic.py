"""Anthropic's Messages format <-> the internal chat-completions shape, both directions.

Client side (``/v1/messages`` in front of a backend of another format):
  ``to_chat`` (request in), ``to_message`` (whole answer out), ``MessageEvents`` (chat chunks -> Anthropic's
  stream events: message_start, content_block_start/delta/stop with text, thinking and input_json deltas,
  message_delta with usage, message_stop), ``error_body``.
Upstream side (an Anthropic deployment behind the chat shape):
  ``to_anthropic`` (request out), ``from_anthropic`` (whole answer in), ``ChatChunks`` (Anthropic's stream
  events -> chat chunks), ``error_from``, ``usage_of``.

What one side cannot carry is translated or dropped by the rules in docs/agents.md: ``system`` messages
anywhere in the conversation become system messages in place; signed thinking blocks ride in the chat
shape's ``thinking_blocks`` (back to Anthropic upstreams only, ``reasoning.py``); server tools (web search, code execution, …) are left out and named in ``dropped``;
``context_management``, ``output_config``, ``cache_control`` and ``service_tier`` only mean something to
Anthropic and are passed through only on the native path.
"""

from __future__ import annotations

from typing import Any

import orjson

from errors import GatewayError, InvalidRequest, UpstreamError, from_upstream

from .. import sse
from ..shape import (
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
from . import chunks
from .reasoning import MIN_BUDGET, THINKING_BLOCKS, budget_of, effort_of, in_tool_loop, signed_blocks

# --- client side: an Anthropic request served by a chat-format backend ------------------------------------

# The client's ``anthropic-beta`` header, carried in a native request's body to the backend (which pops it
# and sends it as the header again): the backend interface passes one payload per request.
BETAS = "__anthropic_beta"
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(exc: GatewayError) -> dict[str, Any]:
    """A gateway error in Anthropic's error format."""
    return {"type": "error", "error": {"type": error_type(exc.status), "message": exc.message}}


def event(kind: str, data: dict[str, Any]) -> bytes:
    return sse.encode(orjson.dumps(data), event=kind)


def anthropic_usage(usage: Any) -> dict[str, int]:
    """OpenAI usage -> Anthropic's: input_tokens excludes the cache reads and writes counted apart."""
    usage = usage if isinstance(usage, dict) else {}
    details = (
        usage.get("prompt_tokens_details") if isinstance(usage.get("prompt_tokens_details"), dict) else {}
    )
    read = int(details.get("cached_tokens") or 0)
    written = int(details.get("cache_creation_tokens") or 0)
    return {
        "input_tokens": max(int(usage.get("prompt_tokens") or 0) - read - written, 0),
        "output_tokens": int(usage.get("completion_tokens") or 0),
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": read,
    }


def message_id(openai_id: Any) -> str:
    text = str(openai_id or "")
    return text if text.startswith("msg_") else f"msg_{text.removeprefix('chatcmpl-') or 'gateway'}"


# A content_block_delta event up to its value: index, delta type, the value's field name.
_DELTA = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,"delta":{"type":"%s","%s":'
)


class MessageEvents(chunks.ChunkReader):
    """OpenAI chunks (first choice) -> Anthropic stream events, one content block open at a time."""

    def __init__(self, model: str, stops: Any = None) -> None:
        super().__init__()
        self.model = model
        self.stops = stops  # the request's stop_sequences
        self.id: str | None = None
        self._blocks = 0
        self._open: int | None = None  # index of the open content block
        self._kind: str | None = None  # its kind when it takes deltas of text: text | thinking
        self._tools: dict[int, int] = {}  # OpenAI tool call index -> block index
        self._delta_head = b""  # the open block's delta event up to its text

    def _start(self, chunk: dict[str, Any]) -> bytes:
        self.id = message_id(chunk.get("id"))
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": anthropic_usage(None),
        }
        return event("message_start", {"type": "message_start", "message": message}) + event(
            "ping", {"type": "ping"}
        )

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        index, self._open, self._kind = self._open, None, None
        return event("content_block_stop", {"type": "content_block_stop", "index": index})

    def _open_block(self, block: dict[str, Any]) -> bytes:
        out = self._close()
        self._open = self._blocks
        self._blocks += 1
        return out + event(
            "content_block_start",
            {"type": "content_block_start", "index": self._open, "content_block": block},
        )

    def _text(self, kind: str, text: str) -> bytes:
        out = b""
        if self._kind != kind:
            out = self._open_block(
                {"type": "text", "text": ""}
                if kind == "text"
                else {"type": "thinking", "thinking": "", "signature": ""}
            )
            self._kind = kind
            self._delta_head = _DELTA % (
                self._open,
                b"text_delta" if kind == "text" else b"thinking_delta",
                b"text" if kind == "text" else b"thinking",
            )
        # A byte template: the same bytes as ``event`` writes, without a dict and a dumps of it per delta.
        return out + self._delta_head + orjson.dumps(text) + b"}}\n\n"

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        out = self._start(chunk) if self.id is None else b""
        return out + self.read(chunk)

    def text(self, text: str) -> bytes:
        return self._text("text", text)

    def reasoning(self, text: str) -> bytes:
        return self._text("thinking", text)

    def signed(self, blocks: list[dict[str, Any]]) -> bytes:
        out = b""
        for block in blocks:
            if block["type"] == "thinking" and self._kind == "thinking":
                out += event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": self._open,
                        "delta": {"type": "signature_delta", "signature": block["signature"]},
                    },
                )
                out += self._close()  # the next thinking text is another block, as it was upstream
            else:  # a redacted block, or a signed one whose text never came as deltas: a block of its own
                out += self._open_block(block) + self._close()
        return out

    def tool_start(self, tool: int, call_id: Any, name: str) -> bytes:
        out = self._open_block(
            {"type": "tool_use", "id": str(call_id or f"toolu_{tool}"), "name": name, "input": {}}
        )
        self._tools[tool] = self._blocks - 1
        return out

    def tool_arguments(self, tool: int, fragment: str) -> bytes:
        return (
            _DELTA % (self._tools[tool], b"input_json_delta", b"partial_json")
            + orjson.dumps(fragment)
            + b"}}\n\n"
        )

    def finish(self) -> bytes:
        out = self._start({}) if self.id is None else b""
        out += self._close()
        sequence = chunks.stop_sequence(self.finish_reason, self.stop_reason, self.stops)
        stop = "stop_sequence" if sequence else STOP_REASONS.get(self.finish_reason or "stop", "end_turn")
        out += event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": sequence},
                "usage": anthropic_usage(self.usage),
            },
        )
        return out + event("message_stop", {"type": "message_stop"})


def to_message(data: dict[str, Any], model: str, stops: Any = None) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` as an Anthropic ``message`` (``stops``: the request's stop_sequences)."""
    choices = data.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    signed = chunks.message_signed(message)
    reasoning = chunks.message_reasoning(message)
    if signed:  # an Anthropic upstream's blocks, signatures and all
        content.extend(signed)
    elif reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            arguments = {"_raw_arguments": function.get("arguments")}
        content.append(
            {
                "type": "tool_use",
                "id": str(call.get("id")),
                "name": str(function.get("name")),
                "input": arguments if isinstance(arguments, dict) else {"value": arguments},
            }
        )
    sequence = chunks.stop_sequence(choice.get("finish_reason"), choice.get("stop_reason"), stops)
    stop = "stop_sequence" if sequence else STOP_REASONS.get(str(choice.get("finish_reason")), "end_turn")
    return {
        "id": message_id(data.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": sequence,
        "usage": anthropic_usage(data.get("usage")),
    }


def check(body: Any) -> dict[str, Any]:
    """The fields every Messages request must have, checked as Anthropic checks them."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model, limit, messages = body.get("model"), body.get("max_tokens"), body.get("messages")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: Field required", param="model")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise InvalidRequest("max_tokens: Field required (an integer of at least 1)", param="max_tokens")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: at least one message is required", param="messages")
    return body


def to_chat(body: Any, dropped: list[str] | None = None) -> dict[str, Any]:
    """An Anthropic Messages request as the internal chat-completions body; what it left out is appended to
    ``dropped`` (server tools no chat backend can run)."""
    body = check(body)
    chat: dict[str, Any] = {"model": body["model"], "max_tokens": body["max_tokens"], "messages": []}
    system = body.get("system")
    if system:
        chat["messages"].append({"role": "system", "content": _text(system, "system")})
    for i, message in enumerate(body["messages"]):
        chat["messages"].extend(_message(message, i))
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise InvalidRequest(f"{name}: Input should be a valid number", param=name)
            chat[name] = value
    stop = body.get("stop_sequences")
    if stop:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise InvalidRequest("stop_sequences: Input should be a list of strings", param="stop_sequences")
        chat["stop"] = stop
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        chat["user"] = metadata["user_id"][:256]
    effort = _effort(body.get("thinking"))
    if effort is not None:
        chat["reasoning_effort"] = effort
    if body.get("tools"):
        tools = [
            tool for i, tool in enumerate(_list(body["tools"], "tools")) if _client_tool(tool, i, dropped)
        ]
        if tools:
            chat["tools"] = [_tool(tool) for tool in tools]
            if body.get("tool_choice") is not None:
                chat.update(_tool_choice(body["tool_choice"]))
    if body.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}  # message_delta carries the usage
    return chat


def _effort(thinking: Any) -> str | None:
    """``thinking: enabled`` with a budget asks for reasoning of that depth; ``adaptive`` leaves it to the
    model (so a chat model that cannot reason is not sent a reasoning field it would refuse)."""
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        return effort_of(thinking.get("budget_tokens"))
    return None


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidRequest(f"{where}: Input should be a valid list", param=where)
    return value


def _text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    texts = []
    for j, block in enumerate(_list(value, where)):
        if (
            not isinstance(block, dict)
            or block.get("type") != "text"
            or not isinstance(block.get("text"), str)
        ):
            raise InvalidRequest(f"{where}.{j}: expected a text block", param=where)
        texts.append(block["text"])
    return "\n".join(texts)


def _message(message: Any, i: int) -> list[dict[str, Any]]:
    where = f"messages.{i}"
    role = message.get("role") if isinstance(message, dict) else None
    if role not in ("user", "assistant", "system"):
        raise InvalidRequest(
            f"{where}.role: Input should be 'user', 'assistant' or 'system'", param=f"{where}.role"
        )
    content = message.get("content")
    if role == "system":  # mid-conversation system message (beta mid-conversation-system): kept in place
        return [{"role": "system", "content": _text(content, f"{where}.content")}]
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    blocks = _list(content, f"{where}.content")
    if role == "assistant":
        texts, calls, signed = [], [], []
        for j, block in enumerate(blocks):
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                texts.append(str(block.get("text", "")))
            elif kind == "tool_use":
                calls.append(
                    {
                        "id": str(block.get("id")),
                        "type": "function",
                        "function": {
                            "name": str(block.get("name")),
                            "arguments": orjson.dumps(block.get("input") or {}).decode(),
                        },
                    }
                )
            elif kind in ("thinking", "redacted_thinking"):
                signed.extend(signed_blocks([block]))  # back to an Anthropic upstream; others leave them out
            else:
                raise InvalidRequest(
                    f"{where}.content.{j}: block type {kind!r} is not supported", param=f"{where}.content"
                )
        out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
        if calls:
            out["tool_calls"] = calls
        if signed:
            out[THINKING_BLOCKS] = signed
        return [out]
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            parts.append(
                {"type": "image_url", "image_url": {"url": _image_url(block, f"{where}.content.{j}")}}
            )
        elif kind == "tool_result":
            result = block.get("content")
            text = result if isinstance(result, str) else _result_text(result or [])
            if block.get("is_error") is True:
                text = f"Error: {text}"
            results.append({"role": "tool", "tool_call_id": str(block.get("tool_use_id")), "content": text})
        else:
            raise InvalidRequest(
                f"{where}.content.{j}: block type {kind!r} is not supported", param=f"{where}.content"
            )
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        results.append({"role": "user", "content": "".join(p["text"] for p in parts) if only_text else parts})
    return results


def _result_text(blocks: list[Any]) -> str:
    """A tool result's blocks as text: images in a tool result have no place in a chat tool message."""
    return "\n".join(
        str(b.get("text", "")) for b in blocks if isinstance(b, dict) and b.get("type") == "text"
    )


def _image_url(block: dict[str, Any], where: str) -> str:
    source = block.get("source")
    if (
        isinstance(source, dict)
        and source.get("type") == "base64"
        and source.get("media_type")
        and source.get("data")
    ):
        return f"data:{source['media_type']};base64,{source['data']}"
    if isinstance(source, dict) and source.get("type") == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    raise InvalidRequest(f"{where}.source: expected a base64 or url image source", param=where)


def _client_tool(tool: Any, i: int, dropped: list[str] | None) -> bool:
    """True for a client tool (the caller runs it); a server tool is left out and named in ``dropped``."""
    if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
        raise InvalidRequest(f"tools.{i}.name: Field required", param=f"tools.{i}")
    if tool.get("type") in (None, "custom"):
        return True
    if dropped is not None:
        dropped.append(str(tool["name"]))
    return False


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    function: dict[str, Any] = {
        "name": tool["name"],
        "parameters": tool.get("input_schema") or {"type": "object", "properties": {}},
    }
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
        raise InvalidRequest(
            "tool_choice: expected type auto, any, tool (with a name) or none", param="tool_choice"
        )
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False
    return out


# --- upstream side: a chat request served by an Anthropic deployment --------------------------------------

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
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
ERROR_STATUS = {
    "overloaded_error": 529,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "invalid_request_error": 400,
}


def count_usage(usage: Usage, raw: Any) -> None:
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
    count_usage(usage, raw)
    return usage


def error_from(data: dict[str, Any], status: int, headers: dict[str, str], backend_id: str) -> UpstreamError:
    error = data.get("error")
    if not isinstance(error, dict):
        return from_upstream(
            UpstreamError(f"upstream {backend_id} returned HTTP {status}", status=status, headers=headers),
            backend_id,
        )
    kind = str(error.get("type") or "api_error")
    type_, code = ERROR_TYPES.get(kind, ("server_error" if status >= 500 else "invalid_request_error", None))
    message = str(error.get("message") or f"upstream {backend_id} returned {kind}")
    return from_upstream(
        UpstreamError(message, status=status, error_type=type_, code=code, headers=headers), backend_id
    )


def from_anthropic(data: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic ``message`` as an OpenAI ``chat.completion`` (thinking as ``reasoning_content``)."""
    choice = Choice(finish_reason=FINISH_REASONS.get(str(data.get("stop_reason")), "stop"))
    if data.get("stop_reason") == "stop_sequence" and isinstance(data.get("stop_sequence"), str):
        choice.stop_reason = data["stop_sequence"]
    texts, thoughts = [], []
    signed = signed_blocks(data.get("content"))
    for block in data.get("content") or ():
        if block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") == "thinking":
            thoughts.append(block.get("thinking", ""))
        elif block.get("type") == "tool_use":
            choice.tool_calls.append(
                ToolCall(
                    str(block.get("id")),
                    str(block.get("name")),
                    orjson.dumps(block.get("input") or {}).decode(),
                )
            )
    choice.text, choice.reasoning = "".join(texts), "".join(thoughts)
    out = completion(
        str(data.get("id") or new_id("msg_")),
        str(data.get("model", "")),
        [choice],
        usage_of(data.get("usage")),
    )
    if signed:  # for the next turn: Anthropic wants them back with tool results
        out["choices"][0]["message"][THINKING_BLOCKS] = signed
    return out


class ChatChunks:
    """Anthropic stream events -> OpenAI chunks (bytes); ``done`` once message_stop has come."""

    def __init__(self, model: str, backend_id: str) -> None:
        self.writer = ChunkWriter(new_id("msg_"), model)
        self.backend_id = backend_id
        self.done = False
        self._tools: dict[int, int] = {}  # content block index -> OpenAI tool call index
        self._usage = Usage()
        self._finish = "stop"
        self._stop_sequence: str | None = None
        self._thinking: dict[int, dict[str, Any]] = {}  # content block index -> the thinking block it builds

    def event(self, kind: str, event: dict[str, Any]) -> bytes:
        writer = self.writer
        if kind == "message_start":
            message = event.get("message") or {}
            writer.id = str(message.get("id") or writer.id)
            writer.model = str(message.get("model") or writer.model)
            count_usage(self._usage, message.get("usage"))
            return writer.role()
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                self._tools[event.get("index", 0)] = len(self._tools)
                return writer.tool_start(len(self._tools) - 1, str(block.get("id")), str(block.get("name")))
            if block.get("type") == "text" and block.get("text"):
                return writer.text(block["text"])
            if block.get("type") == "thinking":
                self._thinking[event.get("index", 0)] = {"type": "thinking", "thinking": "", "signature": ""}
            elif block.get("type") == "redacted_thinking":
                return writer.delta({THINKING_BLOCKS: signed_blocks([block])})
        elif kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                return writer.text(delta["text"])
            if delta.get("type") == "thinking_delta" and delta.get("thinking"):
                thinking = self._thinking.get(event.get("index", 0))
                if thinking is not None:
                    thinking["thinking"] += delta["thinking"]
                return writer.reasoning(delta["thinking"])
            if delta.get("type") == "signature_delta" and isinstance(delta.get("signature"), str):
                thinking = self._thinking.get(event.get("index", 0))
                if thinking is not None:
                    thinking["signature"] += delta["signature"]
            if delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                tool = self._tools.get(event.get("index", 0))
                if tool is None:
                    raise UpstreamError(
                        f"upstream {self.backend_id} sent tool input for a block it never started"
                    )
                return writer.tool_arguments(tool, delta["partial_json"])
        elif kind == "content_block_stop":
            # the whole signed block, once its signature came: the text went out as reasoning deltas already
            signed = signed_blocks([self._thinking.pop(event.get("index", 0), None)])
            if signed:
                return writer.delta({THINKING_BLOCKS: signed})
        elif kind == "message_delta":
            delta = event.get("delta") or {}
            reason = delta.get("stop_reason")
            if reason:
                self._finish = FINISH_REASONS.get(reason, "stop")
            if reason == "stop_sequence" and isinstance(delta.get("stop_sequence"), str):
                self._stop_sequence = delta["stop_sequence"]
            count_usage(self._usage, event.get("usage"))
        elif kind == "message_stop":
            self.done = True
            return (
                writer.finish(self._finish, stop_reason=self._stop_sequence)
                + writer.usage(self._usage)
                + DONE
            )
        elif kind == "error":
            raise error_from(
                event, ERROR_STATUS.get(str((event.get("error") or {}).get("type")), 502), {}, self.backend_id
            )
        return b""


def to_anthropic(payload: dict[str, Any], model: str, default_max_tokens: int) -> dict[str, Any]:
    """An OpenAI chat-completions request as an Anthropic Messages request."""
    single_choice(payload, "Anthropic")
    system, messages = _messages(payload["messages"])
    request: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens(payload) or default_max_tokens,
    }
    if system:
        request["system"] = system
    budget = budget_of(payload.get("reasoning_effort"))
    if budget is not None and in_tool_loop(payload["messages"], signed=True):
        budget = (
            None  # Anthropic wants the turn's signed thinking block back, which the chat shape cannot carry
        )
    if budget is not None:
        # Thinking counts against max_tokens and wants the default temperature.
        budget = max(MIN_BUDGET, min(budget, request["max_tokens"] - 1))
        if budget < request["max_tokens"]:
            request["thinking"] = {"type": "enabled", "budget_tokens": budget}
    if isinstance(payload.get("temperature"), (int, float)) and "thinking" not in request:
        request["temperature"] = min(float(payload["temperature"]), 1.0)  # Anthropic's range is 0..1
    if isinstance(payload.get("top_p"), (int, float)) and "thinking" not in request:
        request["top_p"] = payload["top_p"]
    if isinstance(payload.get("top_k"), int):
        request["top_k"] = payload["top_k"]
    stop = stop_list(payload.get("stop"))
    if stop:
        request["stop_sequences"] = stop
    if isinstance(payload.get("user"), str):
        request["metadata"] = {"user_id": payload["user"]}
    output = _output_config(payload.get("response_format"))
    if output is not None:
        request["output_config"] = output
    tools = payload.get("tools")
    if tools:
        request["tools"] = [_upstream_tool(tool, i) for i, tool in enumerate(tools)]
        choice = _upstream_tool_choice(payload.get("tool_choice"), payload.get("parallel_tool_calls"))
        if choice is not None:
            request["tool_choice"] = choice
    return request


def _output_config(response_format: Any) -> dict[str, Any] | None:
    """Chat's ``json_schema`` response format as Anthropic's structured output (``output_config.format``);
    ``json_object`` (any JSON, no schema) has no Anthropic equivalent and is left out."""
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise InvalidRequest(
            "Invalid 'response_format.json_schema': a schema object is required.", param="response_format"
        )
    return {"format": {"type": "json_schema", "schema": schema}}


def _upstream_tool(tool: Any, i: int) -> dict[str, Any]:
    function = function_of(tool, i)
    out: dict[str, Any] = {
        "name": function["name"],
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _upstream_tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
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
            result = {
                "type": "tool_result",
                "tool_use_id": safe_tool_id(message.get("tool_call_id")),
                "content": text_of(content),
            }
            append_turn(out, "user", "content", [result])
        elif role == "user":
            append_turn(out, "user", "content", _blocks(content, where, images=True))
        elif role == "assistant":
            # the turn's signed thinking first, as Anthropic returned it
            blocks = [*signed_blocks(message.get(THINKING_BLOCKS)), *_blocks(content, where, images=False)]
            for j, call in enumerate(message.get("tool_calls") or ()):
                function = call.get("function") or {}
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": safe_tool_id(call.get("id")),
                        "name": str(function.get("name")),
                        "input": tool_arguments(
                            function.get("arguments"), f"messages[{i}].tool_calls[{j}].function.arguments"
                        ),
                    }
                )
            append_turn(out, "assistant", "content", blocks)
        else:
            raise InvalidRequest(
                f"Invalid value for 'messages[{i}].role': {role!r} is not supported by "
                "Anthropic deployments.",
                param=f"messages[{i}].role",
            )
    return system, out


def _blocks(content: Any, where: str, *, images: bool) -> list[dict[str, Any]]:
    return convert_content(content, where, "Anthropic", _text_block, _image_block if images else None)


def _text_block(part: dict[str, Any]) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": part["text"]}
    if isinstance(part.get("cache_control"), dict):  # prompt caching, as Anthropic's own clients mark it
        block["cache_control"] = part["cache_control"]
    return block


def _image_block(image: Image, where: str) -> dict[str, Any]:
    source = (
        {"type": "url", "url": image.url}
        if image.url
        else {"type": "base64", "media_type": image.media_type, "data": image.data}
    )
    return {"type": "image", "source": source}


# --- native answers kept by the response cache ---------------------------------------------------------


class MessageOfEvents:
    """Anthropic's stream events -> the whole ``message`` they make (for the response cache to keep)."""

    def __init__(self) -> None:
        self.message: dict[str, Any] | None = None
        self._json: dict[int, list[str]] = {}  # a tool_use block's input fragments

    def event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "message_start":
            self.message = {**(data.get("message") or {}), "content": []}
            return
        message = self.message
        if message is None:
            return
        blocks = message["content"]
        index = data.get("index", 0)
        if kind == "content_block_start":
            blocks.append(dict(data.get("content_block") or {}))
        elif kind == "content_block_delta" and 0 <= index < len(blocks):
            block, delta = blocks[index], data.get("delta") or {}
            field = {
                "text_delta": "text",
                "thinking_delta": "thinking",
                "citations_delta": None,
                "signature_delta": "signature",
                "input_json_delta": None,
            }.get(str(delta.get("type")))
            if field is not None:
                block[field] = (block.get(field) or "") + str(delta.get(field) or "")
            elif delta.get("type") == "input_json_delta":
                self._json.setdefault(index, []).append(str(delta.get("partial_json") or ""))
        elif kind == "content_block_stop" and index in self._json and 0 <= index < len(blocks):
            text = "".join(self._json.pop(index))
            blocks[index]["input"] = orjson.loads(text) if text else {}
        elif kind == "message_delta":
            delta = data.get("delta") or {}
            message.update({k: delta[k] for k in ("stop_reason", "stop_sequence") if k in delta})
            message["usage"] = {**(message.get("usage") or {}), **(data.get("usage") or {})}


def replay_events(message: dict[str, Any]) -> bytes:
    """A whole ``message`` as the stream a client would have read (each block's text, thinking, signature or
    input whole in one delta)."""
    usage = message.get("usage") or {}
    out = [
        event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    **message,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {**usage, "output_tokens": min(int(usage.get("output_tokens") or 0), 1)},
                },
            },
        )
    ]
    for index, block in enumerate(message.get("content") or ()):
        kind = block.get("type")
        start: dict[str, Any]
        deltas: list[dict[str, Any]] = []
        if kind == "text":
            start = {**block, "text": ""}
            deltas.append({"type": "text_delta", "text": block.get("text", "")})
        elif kind == "thinking":
            start = {**block, "thinking": "", "signature": ""}
            deltas.append({"type": "thinking_delta", "thinking": block.get("thinking", "")})
            deltas.append({"type": "signature_delta", "signature": block.get("signature", "")})
        elif kind == "tool_use":
            start = {**block, "input": {}}
            deltas.append(
                {"type": "input_json_delta", "partial_json": orjson.dumps(block.get("input") or {}).decode()}
            )
        else:  # redacted thinking, server tools' blocks: whole in their start
            start = block
        out.append(
            event(
                "content_block_start", {"type": "content_block_start", "index": index, "content_block": start}
            )
        )
        for delta in deltas:
            out.append(
                event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
            )
        out.append(event("content_block_stop", {"type": "content_block_stop", "index": index}))
    out.append(
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": message.get("stop_reason"),
                    "stop_sequence": message.get("stop_sequence"),
                },
                "usage": usage,
            },
        )
    )
    out.append(event("message_stop", {"type": "message_stop"}))
    return b"".join(out)
