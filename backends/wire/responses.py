"""OpenAI's Responses format <-> the internal chat-completions shape, both directions.

Request in (``to_chat``): ``instructions`` and input items (messages of any role with ``input_text``,
``input_image`` and ``output_text`` parts; ``function_call`` and ``function_call_output`` items; ``reasoning``
items, dropped unless they hold the gateway's sealed signed thinking, ``reasoning.py``), function tools, ``tool_choice``,
``parallel_tool_calls``, ``text.format``, ``max_output_tokens``, ``reasoning.effort``, ``prompt_cache_key``.
Hosted tools (``web_search``, ``namespace``, ``custom``, ``file_search``, …) have no chat equivalent: they are
left out and named in ``dropped``.
Answer out: ``to_response`` (a whole ``response``) and ``ResponseEvents`` (chat chunks -> the Responses
stream: created, in_progress, output_item.added/done, content_part.added/done, output_text.delta/done,
function_call_arguments.delta/done, reasoning summary events, completed; every event numbered).
Usage both ways: ``chat_usage`` (a Responses usage, from a native upstream) and ``responses_usage``.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from errors import GatewayError, InvalidRequest

from .. import sse
from ..shape import new_id
from . import chunks
from .reasoning import THINKING_BLOCKS, seal, unseal

_PART_TEXT = ("input_text", "output_text", "text", "summary_text", "reasoning_text")


def item_id(prefix: str) -> str:
    return new_id(prefix)


def check(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model")
    source = body.get("input")
    if source is not None and not isinstance(source, (str, list)):
        raise InvalidRequest(
            "Invalid type for 'input': expected a string or an array of input items.", param="input"
        )
    return body


def input_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's ``input`` as a list of items, each with an id (as ``input_items`` lists them)."""
    source = body.get("input")
    if source is None:
        return []
    if isinstance(source, str):
        return [
            {
                "type": "message",
                "id": item_id("msg_"),
                "role": "user",
                "status": "completed",
                "content": [{"type": "input_text", "text": source}],
            }
        ]
    items = []
    for i, item in enumerate(source):
        if not isinstance(item, dict):
            raise InvalidRequest(f"Invalid type for 'input[{i}]': expected an object.", param=f"input[{i}]")
        kind = item.get("type", "message")
        out = {**item, "type": kind}
        if "id" not in out:
            out["id"] = item_id("msg_" if kind == "message" else "item_")
        if kind == "message" and isinstance(out.get("content"), str):
            text_type = "output_text" if out.get("role") == "assistant" else "input_text"
            out["content"] = [{"type": text_type, "text": out["content"]}]
        items.append(out)
    return items


def to_chat(body: dict[str, Any], items: list[dict[str, Any]], dropped: list[str]) -> dict[str, Any]:
    """A Responses request as the internal chat body; ``items`` is the conversation (earlier turns of a
    ``previous_response_id`` first, then this request's input)."""
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    for i, item in enumerate(items):
        _item(item, i, messages)
    # a reasoning item's turn that had neither text nor a call (nothing for a chat upstream to take)
    messages = [
        m for m in messages if m["role"] != "assistant" or m.get("content") is not None or m.get("tool_calls")
    ]
    chat: dict[str, Any] = {"model": body["model"], "messages": messages}
    limit = body.get("max_output_tokens")
    if isinstance(limit, int) and not isinstance(limit, bool):
        chat["max_completion_tokens"] = limit
    for name in ("temperature", "top_p", "parallel_tool_calls", "prompt_cache_key", "service_tier"):
        if body.get(name) is not None:
            chat[name] = body[name]
    user = body.get("safety_identifier") or body.get("user")
    if isinstance(user, str):
        chat["user"] = user
    reasoning = body.get("reasoning")
    if (
        isinstance(reasoning, dict)
        and isinstance(reasoning.get("effort"), str)
        and reasoning["effort"] != "none"
    ):
        chat["reasoning_effort"] = reasoning["effort"]
    tools = [_tool(tool, i, dropped) for i, tool in enumerate(body.get("tools") or ())]
    functions = [tool for tool in tools if tool is not None]
    if functions:
        chat["tools"] = functions
        choice = _tool_choice(body.get("tool_choice"))
        if choice is not None:
            chat["tool_choice"] = choice
    elif "parallel_tool_calls" in chat:
        del chat["parallel_tool_calls"]  # chat refuses it without tools
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = {"name": fmt.get("name") or "output", "schema": fmt.get("schema") or {}}
        if fmt.get("strict") is not None:
            schema["strict"] = fmt["strict"]
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        chat["response_format"] = {"type": "json_object"}
    if body.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}  # response.completed carries the usage
    return chat


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"Invalid type for '{where}': expected a string or an array.", param=where)
    return "".join(
        str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") in _PART_TEXT
    )


def _parts(content: Any, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"Invalid type for '{where}': expected a string or an array.", param=where)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _PART_TEXT:
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str):
                raise InvalidRequest(
                    f"Invalid '{where}[{j}]': input_image needs an image_url (file ids are not "
                    "supported by this gateway).",
                    param=f"{where}[{j}]",
                )
            parts.append(
                {"type": "image_url", "image_url": {"url": url, "detail": part.get("detail") or "auto"}}
            )
        else:
            raise InvalidRequest(
                f"Invalid '{where}[{j}]': content part type {kind!r} is not supported.", param=f"{where}[{j}]"
            )
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _item(item: dict[str, Any], i: int, messages: list[dict[str, Any]]) -> None:
    kind = item.get("type", "message")
    where = f"input[{i}]"
    if kind == "message":
        role = item.get("role")
        if role in ("system", "developer"):
            messages.append({"role": "system", "content": _text(item.get("content"), f"{where}.content")})
        elif role == "user":
            messages.append({"role": "user", "content": _parts(item.get("content"), f"{where}.content")})
        elif role == "assistant":
            text = _text(item.get("content"), f"{where}.content")
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and not last.get("tool_calls"):
                last["content"] = (last.get("content") or "") + text
            else:
                messages.append({"role": "assistant", "content": text})
        else:
            raise InvalidRequest(f"Invalid value for '{where}.role': {role!r}.", param=f"{where}.role")
    elif kind == "function_call":
        call = {
            "id": str(item.get("call_id") or item.get("id")),
            "type": "function",
            "function": {"name": str(item.get("name")), "arguments": str(item.get("arguments") or "{}")},
        }
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        messages.append(
            {
                "role": "tool",
                "tool_call_id": str(item.get("call_id")),
                "content": output if isinstance(output, str) else _text(output, f"{where}.output"),
            }
        )
    elif kind == "reasoning":
        # The gateway's own sealed blocks (an Anthropic upstream's signed thinking) go back on the assistant
        # turn they came with; anything else (OpenAI's encrypted reasoning) means nothing to another model.
        signed = unseal(item.get("encrypted_content"))
        if signed:
            messages.append({"role": "assistant", "content": None, THINKING_BLOCKS: signed})
    elif kind in ("item_reference", "compaction"):
        return
    else:
        raise InvalidRequest(
            f"Invalid '{where}': input item type {kind!r} is not supported for this model.", param=where
        )


def _tool(tool: Any, i: int, dropped: list[str]) -> dict[str, Any] | None:
    if not isinstance(tool, dict):
        raise InvalidRequest(f"Invalid type for 'tools[{i}]': expected an object.", param=f"tools[{i}]")
    if tool.get("type") != "function":
        dropped.append(str(tool.get("name") or tool.get("type")))
        return None
    if not isinstance(tool.get("name"), str):
        raise InvalidRequest(f"Missing required parameter: 'tools[{i}].name'.", param=f"tools[{i}].name")
    function: dict[str, Any] = {
        "name": tool["name"],
        "parameters": tool.get("parameters") or {"type": "object", "properties": {}},
    }
    if tool.get("description"):
        function["description"] = tool["description"]
    if tool.get("strict") is not None:
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    return None  # a hosted tool's choice: the tools it names were left out


# --- answers ---------------------------------------------------------------------------------------------


def responses_usage(usage: Any) -> dict[str, Any]:
    usage = usage if isinstance(usage, dict) else {}
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    prompt_details = (
        usage.get("prompt_tokens_details") if isinstance(usage.get("prompt_tokens_details"), dict) else {}
    )
    completion_details = (
        usage.get("completion_tokens_details")
        if isinstance(usage.get("completion_tokens_details"), dict)
        else {}
    )
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": int(prompt_details.get("cached_tokens") or 0),
            "cache_write_tokens": int(prompt_details.get("cache_creation_tokens") or 0),
        },
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": int(completion_details.get("reasoning_tokens") or 0)},
        "total_tokens": prompt + completion,
    }


def chat_usage(usage: Any) -> dict[str, Any]:
    """A Responses usage in the chat shape the policies read."""
    usage = usage if isinstance(usage, dict) else {}
    prompt, completion = int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    details = usage.get("input_tokens_details")
    if isinstance(details, dict) and details.get("cached_tokens") is not None:
        out["prompt_tokens_details"] = {"cached_tokens": int(details["cached_tokens"])}
        if details.get("cache_write_tokens"):
            out["prompt_tokens_details"]["cache_creation_tokens"] = int(details["cache_write_tokens"])
    details = usage.get("output_tokens_details")
    if isinstance(details, dict) and details.get("reasoning_tokens") is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": int(details["reasoning_tokens"])}
    return out


def response_object(
    id_: str,
    body: dict[str, Any],
    alias: str,
    created: int,
    *,
    status: str,
    output: list[dict[str, Any]],
    usage: Any = None,
    incomplete: str | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``response`` object: the request's settings echoed as OpenAI echoes them."""
    tools = [tool for tool in body.get("tools") or () if isinstance(tool, dict)]
    text: dict[str, Any] = body["text"] if isinstance(body.get("text"), dict) else {}
    reasoning: dict[str, Any] = body["reasoning"] if isinstance(body.get("reasoning"), dict) else {}
    return {
        "id": id_,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": alias,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}, **text},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": tools,
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation") or "disabled",
        **({"usage": responses_usage(usage)} if usage is not None else {}),
        "metadata": body.get("metadata") or {},
        **({"user": body["user"]} if isinstance(body.get("user"), str) else {}),
    }


def _message_item(id_: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "message",
        "id": id_,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def _call_item(
    id_: str, call_id: str, name: str, arguments: str, status: str = "completed"
) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": id_,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def _reasoning_item(id_: str, text: str, signed: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "type": "reasoning",
        "id": id_,
        "summary": [{"type": "summary_text", "text": text}] if text else [],
    }
    if signed:
        item["encrypted_content"] = seal(signed)
    return item


_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def to_response(
    data: dict[str, Any], id_: str, body: dict[str, Any], alias: str, created: int
) -> dict[str, Any]:
    """A ``chat.completion`` as a ``response``."""
    choice = (data.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    reasoning, signed = chunks.message_reasoning(message), chunks.message_signed(message)
    if reasoning or signed:
        output.append(_reasoning_item(item_id("rs_"), reasoning or "", signed))
    if message.get("content"):
        output.append(_message_item(item_id("msg_"), str(message["content"])))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        output.append(
            _call_item(
                item_id("fc_"),
                str(call.get("id")),
                str(function.get("name")),
                str(function.get("arguments") or "{}"),
            )
        )
    incomplete = _INCOMPLETE.get(str(choice.get("finish_reason")))
    return response_object(
        id_,
        body,
        alias,
        created,
        status="incomplete" if incomplete else "completed",
        output=output,
        usage=data.get("usage") or {},
        incomplete=incomplete,
    )


def _head(kind: str) -> bytes:
    """An event's bytes up to its sequence number: the start of a byte template for the events written once
    per delta (built without a dict or a ``dumps`` of the whole event; the same bytes ``_event`` writes)."""
    return b'event: %s\ndata: {"type":"%s","sequence_number":' % (kind.encode(), kind.encode())


_TEXT_DELTA = _head("response.output_text.delta")
_SUMMARY_DELTA = _head("response.reasoning_summary_text.delta")
_ARGUMENTS_DELTA = _head("response.function_call_arguments.delta")


class ResponseEvents(chunks.ChunkReader):
    """Chat chunks (first choice) -> the Responses stream's events, numbered from 0."""

    def __init__(self, id_: str, body: dict[str, Any], alias: str) -> None:
        super().__init__()
        self.id = id_
        self.body = body
        self.alias = alias
        self.created = int(time.time())
        self.output: list[dict[str, Any]] = []
        self._seq = 0
        self._open: dict[str, Any] | None = None  # the open text or reasoning item
        self._kind: str | None = None  # its kind: message | reasoning
        self._delta_head = b""  # its delta events' template: head, middle, end
        self._delta_middle = b""
        self._delta_end = b""
        self._text: list[str] = []
        self._signed: list[dict[str, Any]] = []  # the open reasoning item's signed thinking blocks
        self._tools: dict[int, dict[str, Any]] = {}  # chat tool call index -> its function_call item
        self._args: dict[int, list[str]] = {}
        self._args_middle: dict[int, bytes] = {}  # its arguments delta events' template middle
        self.final: dict[str, Any] | None = None

    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        payload = {"type": kind, "sequence_number": self._seq, **data}
        self._seq += 1
        return sse.encode(orjson.dumps(payload), event=kind)

    def _snapshot(self, status: str, **extra: Any) -> dict[str, Any]:
        return response_object(
            self.id, self.body, self.alias, self.created, status=status, output=list(self.output), **extra
        )

    def start(self) -> bytes:
        snapshot = self._snapshot("in_progress")
        return self._event("response.created", {"response": snapshot}) + self._event(
            "response.in_progress", {"response": snapshot}
        )

    def _add(self, item: dict[str, Any]) -> bytes:
        self.output.append(item)
        return self._event(
            "response.output_item.added",
            {"output_index": len(self.output) - 1, "item": {**item, "status": "in_progress"}},
        )

    def _close_open(self) -> bytes:
        item, self._open, self._kind = self._open, None, None
        if item is None:
            return b""
        index, text = self.output.index(item), "".join(self._text)
        self._text = []
        part: dict[str, Any]
        if item["type"] == "reasoning":
            part = {"type": "summary_text", "text": text}
            item["summary"] = [part]
            if self._signed:
                item["encrypted_content"], self._signed = seal(self._signed), []
            out = self._event(
                "response.reasoning_summary_text.done",
                {"item_id": item["id"], "output_index": index, "summary_index": 0, "text": text},
            )
            out += self._event(
                "response.reasoning_summary_part.done",
                {"item_id": item["id"], "output_index": index, "summary_index": 0, "part": part},
            )
        else:
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            item["content"] = [part]
            item["status"] = "completed"
            out = self._event(
                "response.output_text.done",
                {
                    "item_id": item["id"],
                    "output_index": index,
                    "content_index": 0,
                    "text": text,
                    "logprobs": [],
                },
            )
            out += self._event(
                "response.content_part.done",
                {"item_id": item["id"], "output_index": index, "content_index": 0, "part": part},
            )
        return out + self._event("response.output_item.done", {"output_index": index, "item": item})

    def _open_item(self, kind: str) -> bytes:
        out = self._close_open()
        index = len(self.output)
        item: dict[str, Any]
        if kind == "reasoning":
            item = {"type": "reasoning", "id": item_id("rs_"), "summary": []}
            out += self._add(item)
            out += self._event(
                "response.reasoning_summary_part.added",
                {
                    "item_id": item["id"],
                    "output_index": index,
                    "summary_index": 0,
                    "part": {"type": "summary_text", "text": ""},
                },
            )
            self._delta_head, self._delta_end = _SUMMARY_DELTA, b"}\n\n"
            where = b',"summary_index":0,"delta":'
        else:
            item = _message_item(item_id("msg_"), "", status="in_progress")
            item["content"] = []
            out += self._add(item)
            out += self._event(
                "response.content_part.added",
                {
                    "item_id": item["id"],
                    "output_index": index,
                    "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                },
            )
            self._delta_head, self._delta_end = _TEXT_DELTA, b',"logprobs":[]}\n\n'
            where = b',"content_index":0,"delta":'
        self._delta_middle = b',"item_id":%s,"output_index":%d%s' % (orjson.dumps(item["id"]), index, where)
        self._open, self._kind = item, kind
        return out

    def _delta(self, kind: str, text: str) -> bytes:
        out = self._open_item(kind) if self._kind != kind else b""
        self._text.append(text)
        seq = self._seq
        self._seq = seq + 1
        return out + b"%s%d%s%s%s" % (
            self._delta_head,
            seq,
            self._delta_middle,
            orjson.dumps(text),
            self._delta_end,
        )

    def text(self, text: str) -> bytes:
        return self._delta("message", text)

    def reasoning(self, text: str) -> bytes:
        return self._delta("reasoning", text)

    def signed(self, blocks: list[dict[str, Any]]) -> bytes:
        # kept on the reasoning item (opened for a redacted block that had no text), sealed at its close
        out = self._open_item("reasoning") if self._kind != "reasoning" else b""
        assert self._open is not None
        self._signed.extend(blocks)
        return out

    def tool_start(self, tool: int, call_id: Any, name: str) -> bytes:
        out = self._close_open()
        item = _call_item(item_id("fc_"), str(call_id or item_id("call_")), name, "", status="in_progress")
        self._tools[tool], self._args[tool] = item, []
        self._args_middle[tool] = b',"item_id":%s,"output_index":%d,"delta":' % (
            orjson.dumps(item["id"]),
            len(self.output),
        )
        return out + self._add(item)

    def tool_arguments(self, tool: int, fragment: str) -> bytes:
        self._args[tool].append(fragment)
        seq = self._seq
        self._seq = seq + 1
        return b"%s%d%s%s}\n\n" % (_ARGUMENTS_DELTA, seq, self._args_middle[tool], orjson.dumps(fragment))

    def finish(self) -> bytes:
        out = self._close_open()
        for tool, item in self._tools.items():
            item["arguments"] = "".join(self._args[tool]) or "{}"
            item["status"] = "completed"
            index = self.output.index(item)
            out += self._event(
                "response.function_call_arguments.done",
                {
                    "item_id": item["id"],
                    "output_index": index,
                    "name": item["name"],
                    "arguments": item["arguments"],
                },
            )
            out += self._event("response.output_item.done", {"output_index": index, "item": item})
        incomplete = _INCOMPLETE.get(str(self.finish_reason))
        self.final = self._snapshot(
            "incomplete" if incomplete else "completed", usage=self.usage or {}, incomplete=incomplete
        )
        kind = "response.incomplete" if incomplete else "response.completed"
        return out + self._event(kind, {"response": self.final})

    def failed(self, exc: GatewayError) -> bytes:
        # a failed response's error code is one of the spec's few (the error event before it keeps ours)
        code = "rate_limit_exceeded" if exc.status == 429 else "server_error"
        return self._event(
            "error", {"code": exc.code or code, "message": exc.message, "param": exc.param}
        ) + self._event(
            "response.failed",
            {"response": self._snapshot("failed", error={"code": code, "message": exc.message})},
        )


def error_body(exc: GatewayError) -> dict[str, Any]:
    return exc.body()


def replayed(response: dict[str, Any], id_: str, created: int) -> dict[str, Any]:
    """A stored ``response`` served again (the response cache): a response of its own, with its own id."""
    return {**response, "id": id_, "created_at": created}


def replay_events(response: dict[str, Any]) -> bytes:
    """A whole ``response`` as the Responses stream a client would have read: created, in_progress, each
    output item (its parts and text, arguments or summary whole in one delta), then completed."""
    seq = 0
    out: list[bytes] = []

    def event(kind: str, data: dict[str, Any]) -> None:
        nonlocal seq
        out.append(sse.encode(orjson.dumps({"type": kind, "sequence_number": seq, **data}), event=kind))
        seq += 1

    started = {k: v for k, v in response.items() if k != "usage"} | {"status": "in_progress", "output": []}
    event("response.created", {"response": started})
    event("response.in_progress", {"response": started})
    for index, item in enumerate(response.get("output") or ()):
        kind, item_id_ = item.get("type"), item.get("id")
        where = {"item_id": item_id_, "output_index": index}
        if kind == "message":
            event(
                "response.output_item.added",
                {"output_index": index, "item": {**item, "status": "in_progress", "content": []}},
            )
            for j, part in enumerate(item.get("content") or ()):
                text = str(part.get("text") or part.get("refusal") or "")
                empty = {**part, "text": ""} if "text" in part else {**part, "refusal": ""}
                event("response.content_part.added", {**where, "content_index": j, "part": empty})
                if part.get("type") == "output_text":
                    event(
                        "response.output_text.delta",
                        {**where, "content_index": j, "delta": text, "logprobs": []},
                    )
                    event(
                        "response.output_text.done",
                        {**where, "content_index": j, "text": text, "logprobs": []},
                    )
                event("response.content_part.done", {**where, "content_index": j, "part": part})
        elif kind == "function_call":
            event(
                "response.output_item.added",
                {"output_index": index, "item": {**item, "status": "in_progress", "arguments": ""}},
            )
            arguments = str(item.get("arguments") or "")
            event("response.function_call_arguments.delta", {**where, "delta": arguments})
            event(
                "response.function_call_arguments.done",
                {**where, "name": item.get("name"), "arguments": arguments},
            )
        elif kind == "reasoning":
            event("response.output_item.added", {"output_index": index, "item": {**item, "summary": []}})
            for j, part in enumerate(item.get("summary") or ()):
                text = str(part.get("text") or "")
                event(
                    "response.reasoning_summary_part.added",
                    {**where, "summary_index": j, "part": {**part, "text": ""}},
                )
                event("response.reasoning_summary_text.delta", {**where, "summary_index": j, "delta": text})
                event("response.reasoning_summary_text.done", {**where, "summary_index": j, "text": text})
                event("response.reasoning_summary_part.done", {**where, "summary_index": j, "part": part})
        else:  # hosted tools' items (web search, …): whole, as added and done
            event("response.output_item.added", {"output_index": index, "item": item})
        event("response.output_item.done", {"output_index": index, "item": item})
    final = "response.incomplete" if response.get("status") == "incomplete" else "response.completed"
    event(final, {"response": response})
    return b"".join(out)
