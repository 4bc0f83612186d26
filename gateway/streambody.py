"""A streamed answer's response body for the request log (gateway/logbodies.py).

The relay feeds each piece it wrote to the client, after the write; the events are folded as they come into
the object the same request without ``stream`` would have answered: a ``chat.completion`` (or a legacy
``text_completion``) for ``/v1/chat/completions`` and ``/v1/completions``, the Responses API's ``response``
for ``/v1/responses`` and Anthropic's ``message`` for ``/v1/messages``. Only the envelope (ids, model, finish
or stop reason, usage) and the generated text are kept, the text up to a budget of characters (the request
log's cap plus its masking slack): a long answer costs no more memory than a cut one (a Responses stream's
final event, which carries the whole response, is kept as it came and cut when stored). A stream that broke off
is what was relayed, with no finish reason (chat), ``status: "incomplete"`` or ``"failed"`` (Responses) or no
``stop_reason`` (Messages); the error event the client got, if any, under ``error``.
"""

from __future__ import annotations

import abc
from typing import Any

import orjson

from backends import sse
from backends.wire.anthropic import MessageOfEvents


class StreamBody(abc.ABC):
    """One stream's body as it is relayed: ``feed`` what went out, ``body`` at the end."""

    __slots__ = ("_decoder", "room")

    def __init__(self, room: int) -> None:
        self._decoder = sse.Decoder()
        self.room = room  # characters of text still kept

    def feed(self, written: bytes) -> None:
        loads = orjson.loads
        for event in self._decoder.feed(written):
            if event.done:
                continue
            try:
                data = loads(event.data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(data, dict):
                self.event(data, len(event.data))

    def keep(self, parts: list[str], text: Any) -> None:
        """``text`` appended to ``parts`` while the budget lasts."""
        if isinstance(text, str) and text and self.room > 0:
            parts.append(text)
            self.room -= len(text)

    def body(self) -> bytes | None:
        """The assembled object as JSON; None when nothing was relayed."""
        whole = self.whole()
        return None if whole is None else orjson.dumps(whole)

    @abc.abstractmethod
    def event(self, data: dict[str, Any], size: int) -> None: ...

    @abc.abstractmethod
    def whole(self) -> dict[str, Any] | None: ...


class _Choice:
    __slots__ = ("content", "finish", "reasoning", "refusal", "text", "tools")

    def __init__(self) -> None:
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.refusal: list[str] = []
        self.text: list[str] = []  # a legacy completions choice's
        self.tools: dict[int, dict[str, Any]] = {}
        self.finish: Any = None


class ChatBody(StreamBody):
    """OpenAI chat (or legacy completions) chunks -> ``chat.completion`` (``text_completion``), every choice."""

    __slots__ = ("choices", "error", "head", "legacy", "usage")

    def __init__(self, room: int) -> None:
        super().__init__(room)
        self.head: dict[str, Any] = {}
        self.choices: dict[int, _Choice] = {}
        self.usage: Any = None
        self.error: Any = None
        self.legacy = False

    def event(self, data: dict[str, Any], size: int) -> None:
        if "error" in data:
            self.error = data["error"]
            return
        if not self.head:
            self.head = {k: data[k] for k in ("id", "created", "model", "system_fingerprint") if data.get(k)}
            self.legacy = data.get("object") == "text_completion"
        if isinstance(data.get("usage"), dict):
            self.usage = data["usage"]
        for choice in data.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            slot = self.choices.get(index)
            if slot is None:
                slot = self.choices[index] = _Choice()
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self.keep(slot.content, delta.get("content"))
                self.keep(slot.reasoning, delta.get("reasoning_content") or delta.get("reasoning"))
                self.keep(slot.refusal, delta.get("refusal"))
                for call in delta.get("tool_calls") or ():
                    self._tool(slot, call)
            else:
                self.keep(slot.text, choice.get("text"))
            if choice.get("finish_reason"):
                slot.finish = choice["finish_reason"]

    def _tool(self, slot: _Choice, call: Any) -> None:
        if not isinstance(call, dict):
            return
        tool = slot.tools.get(call.get("index", 0))
        function = call.get("function") or {}
        if tool is None:
            tool = slot.tools[call.get("index", 0)] = {
                "id": call.get("id"),
                "type": "function",
                "function": {"name": function.get("name") or "", "arguments": []},
            }
        self.keep(tool["function"]["arguments"], function.get("arguments"))

    def whole(self) -> dict[str, Any] | None:
        if not self.head and self.error is None:
            return None
        choices = []
        for index in sorted(self.choices):
            slot = self.choices[index]
            if self.legacy:
                choices.append({"index": index, "text": "".join(slot.text), "finish_reason": slot.finish})
                continue
            message: dict[str, Any] = {"role": "assistant", "content": "".join(slot.content) or None}
            if slot.refusal:
                message["refusal"] = "".join(slot.refusal)
            if slot.reasoning:
                message["reasoning_content"] = "".join(slot.reasoning)
            if slot.tools:
                message["tool_calls"] = [
                    {
                        **tool,
                        "function": {**tool["function"], "arguments": "".join(tool["function"]["arguments"])},
                    }
                    for _, tool in sorted(self.choices[index].tools.items())
                ]
            choices.append({"index": index, "message": message, "finish_reason": slot.finish})
        out: dict[str, Any] = {
            **self.head,
            "object": "text_completion" if self.legacy else "chat.completion",
            "choices": choices,
        }
        if self.usage is not None:
            out["usage"] = self.usage
        if self.error is not None:
            out["error"] = self.error
        return out


_RESPONSE_DELTAS = {
    "response.output_text.delta": "output_text",
    "response.refusal.delta": "refusal",
    "response.function_call_arguments.delta": "arguments",
}
_RESPONSE_ENDS = ("response.completed", "response.incomplete", "response.failed")


class ResponseBody(StreamBody):
    """Responses API events -> the final ``response`` (its ``response.completed`` event's), or, for a stream
    that broke off, the response it started with holding the output items relayed so far."""

    __slots__ = ("error", "final", "items", "parts", "started")

    def __init__(self, room: int) -> None:
        super().__init__(room)
        self.started: dict[str, Any] | None = None
        self.final: dict[str, Any] | None = None
        self.items: dict[int, dict[str, Any]] = {}
        self.parts: dict[tuple[int, int, str], list[str]] = {}  # (item, content, kind) -> its deltas
        self.error: Any = None

    def event(self, data: dict[str, Any], size: int) -> None:
        kind = data.get("type")
        if kind in _RESPONSE_DELTAS:
            key = (data.get("output_index", 0), data.get("content_index", 0), _RESPONSE_DELTAS[kind])
            parts = self.parts.get(key)
            if parts is None:
                parts = self.parts[key] = []
            self.keep(parts, data.get("delta"))
        elif kind == "response.output_item.added" or kind == "response.output_item.done":
            item = data.get("item")
            index = data.get("output_index", 0)
            if isinstance(item, dict) and (kind.endswith("added") or self.room > 0):
                self.items[index] = item
                if kind.endswith("done"):  # whole now: its deltas go
                    self.room -= size
                    for key in [key for key in self.parts if key[0] == index]:
                        del self.parts[key]
        elif kind in _RESPONSE_ENDS:
            self.final = data.get("response")
        elif kind in ("response.created", "response.in_progress"):
            self.started = data.get("response")
        elif kind == "error":
            self.error = {"code": data.get("code"), "message": data.get("message")}

    def whole(self) -> dict[str, Any] | None:
        if isinstance(self.final, dict):
            return self.final
        if self.started is None and self.error is None:
            return None
        output = []
        for index in sorted(self.items):
            item = dict(self.items[index])
            parts = sorted((key, text) for key, text in self.parts.items() if key[0] == index)
            if item.get("type") == "function_call":
                item["arguments"] = "".join("".join(text) for _, text in parts)
            elif parts:
                item["content"] = [
                    {"type": "refusal", "refusal": "".join(text)}
                    if kind == "refusal"
                    else {"type": "output_text", "text": "".join(text), "annotations": []}
                    for (_, _, kind), text in parts
                ]
            output.append(item)
        out = {**(self.started or {}), "status": "failed" if self.error else "incomplete", "output": output}
        if self.error is not None:
            out["error"] = self.error
        return out


class MessageBody(StreamBody):
    """Anthropic Messages events -> the ``message`` (the response cache's own fold, ``MessageOfEvents``), its
    deltas kept while the budget lasts."""

    __slots__ = ("error", "message")

    def __init__(self, room: int) -> None:
        super().__init__(room)
        self.message = MessageOfEvents()
        self.error: Any = None

    def event(self, data: dict[str, Any], size: int) -> None:
        kind = data.get("type")
        if kind == "error":
            self.error = data.get("error")
            return
        if kind == "content_block_delta":
            if self.room <= 0:
                return
            delta = data.get("delta") or {}
            text = delta.get("text") or delta.get("thinking") or delta.get("partial_json") or ""
            self.room -= len(text) if isinstance(text, str) else size
        elif kind == "content_block_stop" and self.room <= 0:
            return  # a tool input cut by the budget stays unparsed
        if isinstance(kind, str):
            try:
                self.message.event(kind, data)
            except orjson.JSONDecodeError:  # a tool input that never came whole
                pass

    def whole(self) -> dict[str, Any] | None:
        message = self.message.message
        if message is None:
            return None if self.error is None else {"type": "error", "error": self.error}
        return message if self.error is None else {**message, "error": self.error}


def of(path: str, room: int) -> StreamBody:
    """The fold for the API a request's path names."""
    if path.endswith("/responses"):
        return ResponseBody(room)
    if path.endswith("/messages"):
        return MessageBody(room)
    return ChatBody(room)
