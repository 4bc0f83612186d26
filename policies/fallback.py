"""Which error classes an upstream failure falls in (what a fallback chain reacts to), and whether a
prompt fits a context window."""

from __future__ import annotations

from typing import Any

from errors import ContextWindowExceeded, GatewayError, UpstreamError, UpstreamTimeout

from .resilience_config import ErrorClass

_CONTENT_POLICY_CODES = frozenset({"content_filter", "content_policy_violation", "content_filtered"})
_CONTEXT_PHRASES = (
    "context length",
    "context window",
    "maximum context",
    "too many tokens",
    "prompt is too long",
)


def error_classes(exc: GatewayError) -> frozenset[ErrorClass]:
    """``any`` for every upstream failure (and for no usable deployment); then the specific ones."""
    classes: set[ErrorClass] = {"any"}
    if isinstance(exc, ContextWindowExceeded):
        classes.add("context_window")
        return frozenset(classes)
    if exc.status == 429:
        classes.add("rate_limited")
    if isinstance(exc, UpstreamTimeout) or exc.status in (408, 504):
        classes.add("timeout")
    if isinstance(exc, UpstreamError):
        code = exc.code or ""
        if code == "context_length_exceeded" or (
            exc.status in (400, 413) and any(p in exc.message.lower() for p in _CONTEXT_PHRASES)
        ):
            classes.add("context_window")
        if code in _CONTENT_POLICY_CODES:
            classes.add("content_policy")
    return frozenset(classes)


def estimate_tokens(body: dict[str, Any]) -> int:
    """A cheap, deliberately simple estimate of a request's size in tokens: characters of the messages'
    text (or the prompt) divided by 4, plus the completion tokens it asks for. OpenAI counts prompt and
    ``max_tokens`` together against the window, so this does too."""
    chars = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        chars += len(part["text"])
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            chars = len(prompt)
        elif isinstance(prompt, list):
            chars = sum(len(p) for p in prompt if isinstance(p, str))
    completion = body.get("max_completion_tokens") or body.get("max_tokens") or 0
    return chars // 4 + (completion if isinstance(completion, int) else 0)
