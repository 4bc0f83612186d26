"""OpenAI's chat-completions shape, built by the adapters of other wire formats.

``ChunkWriter`` emits the stream the way clients rely on it: every chunk with ``id``/``object``/``created``/
``model``, ``role`` in the first delta, a tool call's ``id``/``type``/``name`` in its first delta and its
arguments in fragments after, a finish chunk, a usage chunk (``choices: []``) and ``[DONE]``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from errors import InvalidRequest

from .sse import DONE as DONE  # the adapters end their streams with it
from .sse import data


def new_id(prefix: str) -> str:
    # 96 random bits from the OS, as uuid4's are, at a seventh of its cost (several ids per translated answer)
    return f"{prefix}{os.urandom(12).hex()}"


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI carries it


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0  # all of them: uncached + cache reads + cache writes
    completion_tokens: int = 0
    cached_tokens: int | None = None  # prompt tokens read from the provider's cache
    cache_creation_tokens: int | None = None
    reasoning_tokens: int | None = None

    def openai(self) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        if self.cached_tokens is not None or self.cache_creation_tokens is not None:
            details: dict[str, Any] = {"cached_tokens": self.cached_tokens or 0}
            if self.cache_creation_tokens is not None:
                details["cache_creation_tokens"] = self.cache_creation_tokens
            usage["prompt_tokens_details"] = details
        if self.reasoning_tokens is not None:
            usage["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return usage


@dataclass(slots=True)
class Choice:
    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = "stop"
    stop_reason: str | None = None  # the stop sequence that ended it, as vLLM reports it (``stop_reason``)
    reasoning: str = ""  # reasoning text, as vLLM / DeepSeek-style servers give it (reasoning_content)


def completion(id_: str, model: str, choices: Iterable[Choice], usage: Usage) -> dict[str, Any]:
    """A ``chat.completion`` object."""
    out = []
    for index, choice in enumerate(choices):
        message: dict[str, Any] = {"role": "assistant", "content": choice.text or None, "refusal": None}
        if choice.tool_calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in choice.tool_calls
            ]
        elif not choice.text:
            message["content"] = ""
        if choice.reasoning:
            message["reasoning_content"] = choice.reasoning
        out.append(
            {"index": index, "message": message, "finish_reason": choice.finish_reason, "logprobs": None}
        )
        if choice.stop_reason is not None:
            out[-1]["stop_reason"] = choice.stop_reason
    return {
        "id": id_,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": out,
        "usage": usage.openai(),
    }


class ChunkWriter:
    """OpenAI stream chunks for one answer; each method returns one SSE event (bytes)."""

    def __init__(self, id_: str, model: str) -> None:
        self.id = id_
        self.model = model
        self.created = int(time.time())
        self._started: set[int] = set()

    def _event(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            chunk["usage"] = usage
        return data(orjson.dumps(chunk))

    def _delta(self, index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        if index not in self._started:
            self._started.add(index)
            delta = {"role": "assistant", **({"content": ""} if not delta else delta)}
        return self._event([{"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}])

    def delta(self, delta: dict[str, Any], index: int = 0) -> bytes:
        """Any other delta (an adapter's extra field, such as Anthropic's signed ``thinking_blocks``)."""
        return self._delta(index, delta)

    def role(self, index: int = 0) -> bytes:
        return self._delta(index, {})

    def started(self, index: int = 0) -> bool:
        return index in self._started

    def text(self, text: str, index: int = 0) -> bytes:
        return self._delta(index, {"content": text})

    def reasoning(self, text: str, index: int = 0) -> bytes:
        """Reasoning text, as vLLM and DeepSeek-style servers stream it (``reasoning_content``)."""
        return self._delta(index, {"reasoning_content": text})

    def tool_start(self, tool_index: int, call_id: str, name: str, index: int = 0) -> bytes:
        return self._delta(
            index,
            {
                "tool_calls": [
                    {
                        "index": tool_index,
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }
                ]
            },
        )

    def tool_arguments(self, tool_index: int, fragment: str, index: int = 0) -> bytes:
        return self._delta(
            index, {"tool_calls": [{"index": tool_index, "function": {"arguments": fragment}}]}
        )

    def finish(self, reason: str, index: int = 0, stop_reason: str | None = None) -> bytes:
        prefix = b"" if index in self._started else self.role(index)
        choice: dict[str, Any] = {"index": index, "delta": {}, "finish_reason": reason, "logprobs": None}
        if stop_reason is not None:
            choice["stop_reason"] = stop_reason
        return prefix + self._event([choice])

    def usage(self, usage: Usage) -> bytes:
        return self._event([], usage.openai())


def tool_arguments(arguments: Any, where: str) -> Any:
    """A tool call's ``function.arguments`` (JSON text) as the object other providers want."""
    if isinstance(arguments, dict):
        return arguments
    if arguments in (None, ""):
        return {}
    try:
        value = orjson.loads(arguments)
    except (orjson.JSONDecodeError, TypeError) as exc:
        raise InvalidRequest(
            f"Invalid '{where}': tool call arguments are not valid JSON.", param=where
        ) from exc
    if not isinstance(value, dict):
        raise InvalidRequest(f"Invalid '{where}': tool call arguments must be a JSON object.", param=where)
    return value


def text_of(content: Any) -> str:
    """The text of an OpenAI message's content (a string or an array of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(
        part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
    )


@dataclass(frozen=True, slots=True)
class Image:
    url: str | None = None  # a URL the provider fetches itself
    media_type: str | None = None
    data: str | None = None  # base64, from a data: URL


def image_of(part: dict[str, Any], where: str) -> Image:
    """An ``image_url`` content part: an inline ``data:`` URL (base64) or a plain URL."""
    spec = part.get("image_url")
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"Invalid '{where}': image_url.url must be a string.", param=where)
    if not url.startswith("data:"):
        return Image(url=url, media_type=_guess_media_type(url))
    header, _, data = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if encoding != "base64" or not media_type:
        raise InvalidRequest(
            f"Invalid '{where}': a data URL must be 'data:<media type>;base64,<data>'.", param=where
        )
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"Invalid '{where}': the image data is not valid base64.", param=where) from exc
    return Image(media_type=media_type, data=data)


def _guess_media_type(url: str) -> str | None:
    path = url.split("?", 1)[0].lower()
    for suffix, media_type in (
        (".png", "image/png"),
        (".jpg", "image/jpeg"),
        (".jpeg", "image/jpeg"),
        (".gif", "image/gif"),
        (".webp", "image/webp"),
    ):
        if path.endswith(suffix):
            return media_type
    return None


def stop_list(stop: Any) -> list[str] | None:
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and stop:
        return [s for s in stop if isinstance(s, str)]
    return None


def max_tokens(payload: dict[str, Any]) -> int | None:
    value = payload.get("max_completion_tokens") or payload.get("max_tokens")
    return value if isinstance(value, int) else None


def single_choice(payload: dict[str, Any], provider: str) -> None:
    n = payload.get("n")
    if isinstance(n, int) and n > 1:
        raise InvalidRequest(f"'n' greater than 1 is not supported by {provider} deployments.", param="n")


def tool_names_by_id(messages: list[dict[str, Any]]) -> dict[str, str]:
    """tool_call_id -> function name, from the assistant messages (providers that match results by name)."""
    names: dict[str, str] = {}
    for message in messages:
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict) and isinstance(call.get("function"), dict):
                names[str(call.get("id"))] = str(call["function"].get("name", ""))
    return names


def function_of(tool: Any, i: int) -> dict[str, Any]:
    """The ``function`` of ``tools[i]``, checked."""
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidRequest(
            f"Invalid 'tools[{i}]': expected a function tool with a name.", param=f"tools[{i}]"
        )
    return function


def append_turn(turns: list[dict[str, Any]], role: str, key: str, items: list[dict[str, Any]]) -> None:
    """Adds a turn; providers that want user and model turns to alternate get consecutive ones merged."""
    if not items:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1][key].extend(items)
    else:
        turns.append({"role": role, key: items})


def convert_content(
    content: Any,
    where: str,
    provider: str,
    text: Callable[[dict[str, Any]], dict[str, Any]],
    image: Callable[[Image, str], dict[str, Any]] | None,
) -> list[dict[str, Any]]:
    """An OpenAI message's content as a provider's blocks: ``text`` and ``image`` build one from a part
    (``image`` None: images are refused here); empty text is dropped, other part types refused."""
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [text({"type": "text", "text": content})]
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):
                blocks.append(text(part))
        elif kind == "image_url" and image is not None:
            blocks.append(image(image_of(part, f"{where}[{j}]"), f"{where}[{j}]"))
        else:
            raise InvalidRequest(
                f"Invalid '{where}[{j}]': content part type {kind!r} is not supported here by "
                f"{provider} deployments.",
                param=f"{where}[{j}]",
            )
    return blocks


_UNSAFE_ID = re.compile(r"[^A-Za-z0-9_-]")


def safe_tool_id(call_id: Any, limit: int = 64) -> str:
    """A tool call id as Anthropic and Bedrock accept it (``[A-Za-z0-9_-]``, Bedrock: at most 64 characters).

    Ids made by other providers (a conversation that falls back from one to another) are rewritten the same
    way in the call and in its result, so the two still match."""
    text = str(call_id)
    safe = _UNSAFE_ID.sub("_", text)
    if safe == text and 0 < len(safe) <= limit:
        return safe
    return "toolu_" + hashlib.sha256(text.encode()).hexdigest()[:40]
