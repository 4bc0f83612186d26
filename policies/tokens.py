"""Token counts before the call: the prompt with the model's tokenizer where one is known (OpenAI's BPEs,
bundled by ``bpe-openai``), else about four characters a token; plus the completion tokens reserved.

An estimated prompt is reserved with a margin (``reserve_estimate``): real tokenizers differ from four
characters a token, and a reservation below the upstream's count lets concurrent requests pass a budget.
"""

from __future__ import annotations

import asyncio
import math
import warnings
from collections.abc import Iterable
from functools import cache
from typing import Any

import orjson

from backends import Endpoint, sse

_PER_MESSAGE = 3  # OpenAI's chat format adds about 3 tokens per message and 3 for the reply
_OFF_LOOP_CHARS = 32_000  # longer prompts are tokenized in a worker thread
ESTIMATE_MARGIN = 0.25  # an estimated prompt is reserved at 125% of the estimate ...
ESTIMATE_MARGIN_MIN = 16  # ... and at least 16 tokens above it
_CL100K_EMBEDDINGS = ("text-embedding-3-", "text-embedding-ada-002")  # OpenAI's embedding models' tokenizer


@cache
def encoding_for(model: str) -> Any | None:
    """The tokenizer of an upstream model name, or None (estimated then)."""
    with warnings.catch_warnings():  # bpe_openai 0.1.4 reads its data with a deprecated importlib call
        warnings.simplefilter("ignore", DeprecationWarning)
        import bpe_openai  # 0.4 s: imported once, at start, by the first gateway that needs it

        name = model.rsplit("/", 1)[-1]
        try:
            if name.startswith(_CL100K_EMBEDDINGS):  # bpe-openai's model table lists no embedding model
                return bpe_openai.get_encoding("cl100k_base")
            return bpe_openai.encoding_for_model(name)
        except (KeyError, ValueError, bpe_openai.UnsupportedModelError):
            return None


def encoding_of(models: Iterable[str]) -> Any | None:
    """The tokenizer every one of these upstream models uses, or None (then prompts are estimated)."""
    encodings = [encoding_for(model) for model in models]
    first = encodings[0] if encodings else None
    if first is None or any(e is None or e.name != first.name for e in encodings):
        return None
    return first


def reserve_estimate(tokens: int) -> int:
    """What to reserve for a prompt estimated at ``tokens`` (no tokenizer): the estimate and its margin."""
    return tokens + max(ESTIMATE_MARGIN_MIN, math.ceil(tokens * ESTIMATE_MARGIN))


def prompt_text(endpoint: Endpoint, body: dict[str, Any]) -> tuple[list[str], int]:
    """The prompt's texts and the count of framing tokens around them."""
    texts: list[str] = []
    if endpoint is Endpoint.CHAT:
        messages = body.get("messages") or []
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                texts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
            for call in message.get("tool_calls") or ():
                if isinstance(call, dict):
                    texts.append(str(call.get("function", "")))
        if body.get("tools"):
            texts.append(str(body["tools"]))
        return texts, _PER_MESSAGE * (len(messages) + 1)
    if endpoint in (Endpoint.RESPONSES, Endpoint.MESSAGES):
        turns = body.get("input") if endpoint is Endpoint.RESPONSES else body.get("messages")
        for name in ("instructions", "system", "tools"):
            _strings(body.get(name), texts)
        _strings(turns, texts)
        return texts, _PER_MESSAGE * ((len(turns) if isinstance(turns, list) else 1) + 1)
    source = body.get("prompt") if endpoint is Endpoint.COMPLETIONS else body.get("input")
    if isinstance(source, str):
        texts.append(source)
    elif isinstance(source, list):
        for item in source:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, list):  # token ids
                texts.append("x" * 4 * len(item))
    return texts, 0


# Fields of a Responses input item or a Messages content block that carry no text the model reads.
_NOT_TEXT = frozenset(
    {
        "type",
        "id",
        "role",
        "call_id",
        "tool_use_id",
        "status",
        "signature",
        "data",
        "source",
        "image_url",
        "url",
        "file_id",
        "media_type",
        "cache_control",
        "detail",
        "encrypted_content",
    }
)


def _strings(value: Any, texts: list[str]) -> None:
    """Every text in a Responses input or a Messages conversation (nested items, parts and blocks)."""
    if isinstance(value, str):
        texts.append(value)
    elif isinstance(value, list):
        for item in value:
            _strings(item, texts)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in _NOT_TEXT:
                _strings(item, texts)


def _count(texts: list[str], encoding: Any | None) -> int:
    if encoding is None:
        return sum((len(t) + 3) // 4 for t in texts)
    return sum(len(encoding.encode_ordinary(t)) for t in texts)


async def count_prompt(endpoint: Endpoint, body: dict[str, Any], encoding: Any | None) -> int:
    texts, framing = prompt_text(endpoint, body)
    if sum(len(t) for t in texts) > _OFF_LOOP_CHARS:
        return framing + await asyncio.to_thread(_count, texts, encoding)
    return framing + _count(texts, encoding)


def choices(endpoint: Endpoint, body: dict[str, Any]) -> int:
    """How many completions the upstream generates (and bills): ``n``, or completions' ``best_of``; none
    for embeddings and token counting."""
    if endpoint is Endpoint.EMBEDDINGS or endpoint is Endpoint.COUNT_TOKENS:
        return 0
    count = 1
    for name in ("n", "best_of") if endpoint is Endpoint.COMPLETIONS else ("n",):
        value = body.get(name)
        if isinstance(value, int) and value > count:
            count = value
    return count


def completion_limit(body: dict[str, Any]) -> int | None:
    """The completion tokens per choice the request set (``max_completion_tokens``, ``max_tokens``,
    responses' ``max_output_tokens``), if any."""
    limit = body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens")
    return limit if isinstance(limit, int) and limit > 0 else None


def limit_field(endpoint: Endpoint) -> str:
    """The field that caps a completion upstream: OpenAI's current one for chat (the provider adapters read
    it too), ``max_output_tokens`` for responses, ``max_tokens`` for legacy completions and messages."""
    return _LIMIT_FIELDS.get(endpoint, "max_tokens")


_LIMIT_FIELDS = {Endpoint.CHAT: "max_completion_tokens", Endpoint.RESPONSES: "max_output_tokens"}


def count_text(text: str, encoding: Any | None) -> int:
    """Tokens of ``text``: with ``encoding`` where known, else about four characters a token."""
    return _count([text], encoding) if text else 0


def count_completion(events: list[bytes], encoding: Any | None) -> int:
    """Completion tokens of a stream that ended without usage, counted from its events' text."""
    texts: list[str] = []
    for event in sse.decode(b"".join(events)):
        if event.data[:1] != b"{":
            continue
        try:
            chunk = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(chunk, dict):
            continue
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content") if isinstance(delta, dict) else None
            text = text if isinstance(text, str) else choice.get("text")
            if isinstance(text, str):
                texts.append(text)
            for call in (delta.get("tool_calls") if isinstance(delta, dict) else None) or ():
                texts.append(str((call.get("function") or {}).get("arguments", "")))
    return _count(["".join(texts)], encoding) if texts else 0
