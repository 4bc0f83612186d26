"""What identifies an answer: the exact key of a whole request, and for the semantic cache the question
(the last user turn) apart from the fingerprint of everything else that decides the answer.

Every field of the request body counts (messages, tools, response_format, sampling parameters, seed, ...)
except those that change only how the answer is delivered or billed, listed in ``DELIVERY_ONLY``; a field
OpenAI adds tomorrow therefore splits the cache rather than being served from another request's answer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

# Fields that never change the answer's content.
DELIVERY_ONLY = frozenset(
    {"stream", "stream_options", "user", "metadata", "store", "service_tier", "model", "priority"}
)


@dataclass(frozen=True, slots=True)
class Identity:
    key: str  # hash of the whole canonical request
    fingerprint: str  # hash of everything but the last user turn's text
    question: str | None  # the last user turn's text; None when the request has none (not semantic)


def _numbers(value: Any) -> Any:
    """JSON does not tell 0 from 0.0: neither does the key."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def _canonical(value: Any) -> bytes:
    # sorted keys and no whitespace: the same request written differently has the same bytes
    return orjson.dumps(_numbers(value), option=orjson.OPT_SORT_KEYS)


def _hash(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def question_text(message: Any) -> str | None:
    """The text of a user message (a string, or text parts only), else None."""
    if not isinstance(message, dict) or message.get("role") != "user":
        return None
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        texts = []
        for part in content:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                return None
            texts.append(part["text"])
        return "\n".join(texts)
    return None


def identify(tenant: str, alias: str, endpoint: str, body: dict[str, Any]) -> Identity:
    """The exact key and the semantic fingerprint + question of one request."""
    kept = {k: v for k, v in body.items() if k not in DELIVERY_ONLY}
    head = (tenant.encode(), alias.encode(), endpoint.encode())
    key = _hash(*head, _canonical(kept))
    messages = kept.get("messages")
    question = None
    fingerprint = key
    if isinstance(messages, list) and messages:
        question = question_text(messages[-1])
        if question is not None:
            last = {k: v for k, v in messages[-1].items() if k != "content"}
            rest = {**kept, "messages": [*messages[:-1], last]}
            fingerprint = _hash(*head, _canonical(rest))
    return Identity(key=key, fingerprint=fingerprint, question=question)
