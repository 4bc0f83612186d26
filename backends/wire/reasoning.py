"""Reasoning controls across formats: OpenAI's effort (``reasoning_effort``, Responses ``reasoning.effort``)
<-> a thinking budget in tokens (Anthropic ``thinking.budget_tokens``, Gemini ``thinkingConfig.thinkingBudget``,
Bedrock's Claude ``reasoning_config``). One table, read both ways."""

from __future__ import annotations

import base64
from typing import Any

import orjson

# effort -> budget, from the budgets Anthropic's and Google's guides give for light to deep reasoning
BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576, "xhigh": 32768}
MIN_BUDGET = 1024  # Anthropic's smallest thinking budget


def budget_of(effort: Any) -> int | None:
    """The thinking budget for an effort; None for ``none`` or anything unknown."""
    return BUDGETS.get(effort) if isinstance(effort, str) else None


def effort_of(budget: Any) -> str | None:
    """The smallest effort whose budget holds ``budget`` tokens."""
    if not isinstance(budget, int) or isinstance(budget, bool) or budget <= 0:
        return None
    for effort, tokens in BUDGETS.items():
        if budget <= tokens:
            return effort
    return "xhigh"


def in_tool_loop(messages: list[dict[str, Any]], *, signed: bool = False) -> bool:
    """Whether a chat conversation ends with tool results answering an assistant's tool calls: Claude (on
    Anthropic or Bedrock) then wants that turn's signed thinking block back, so thinking is not asked for
    (docs/agents.md). With ``signed`` (the upstream takes ``thinking_blocks`` back) a turn whose message
    carries its signed blocks is no such loop: thinking goes on."""
    for message in reversed(messages):
        if message.get("role") != "tool":
            if message.get("role") != "assistant" or not message.get("tool_calls"):
                return False
            return not (signed and signed_blocks(message.get(THINKING_BLOCKS)))
    return False


# --- signed thinking across formats ------------------------------------------------------------------------
# Anthropic signs each thinking block (``signature``; a ``redacted_thinking`` block is opaque ``data``) and,
# with tools, wants the turn's blocks back unchanged. The chat shape carries them in the assistant message's
# (and stream delta's) ``thinking_blocks``, the field LiteLLM gives them; a Responses ``reasoning`` item
# carries them sealed in ``encrypted_content`` (opaque to the client, as OpenAI's own is).

THINKING_BLOCKS = "thinking_blocks"
_SEAL = "gwthink1."  # marks the gateway's encrypted_content apart from OpenAI's own (which another model can't use)


def signed_blocks(value: Any) -> list[dict[str, Any]]:
    """The well-formed signed blocks of ``value`` (anything a client sent): a thinking block with a non-empty
    signature, a redacted_thinking block with its data; unsigned thinking (another model's) is left out."""
    out: list[dict[str, Any]] = []
    for block in value if isinstance(value, list) else ():
        if not isinstance(block, dict):
            continue
        if (
            block.get("type") == "thinking"
            and isinstance(block.get("thinking"), str)
            and isinstance(block.get("signature"), str)
            and block["signature"]
        ):
            out.append({"type": "thinking", "thinking": block["thinking"], "signature": block["signature"]})
        elif (
            block.get("type") == "redacted_thinking" and isinstance(block.get("data"), str) and block["data"]
        ):
            out.append({"type": "redacted_thinking", "data": block["data"]})
    return out


def seal(blocks: list[dict[str, Any]]) -> str:
    """Signed blocks as a Responses reasoning item's ``encrypted_content``."""
    return _SEAL + base64.urlsafe_b64encode(orjson.dumps(blocks)).decode()


def unseal(content: Any) -> list[dict[str, Any]]:
    """The signed blocks a reasoning item's ``encrypted_content`` holds: none unless the gateway sealed it."""
    if not isinstance(content, str) or not content.startswith(_SEAL):
        return []
    try:
        return signed_blocks(orjson.loads(base64.urlsafe_b64decode(content[len(_SEAL) :])))
    except (ValueError, orjson.JSONDecodeError):
        return []
