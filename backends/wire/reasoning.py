"""Reasoning controls across formats: OpenAI's effort (``reasoning_effort``, Responses ``reasoning.effort``)
<-> a thinking budget in tokens (Anthropic ``thinking.budget_tokens``, Gemini ``thinkingConfig.thinkingBudget``,
Bedrock's Claude ``reasoning_config``). One table, read both ways."""

from __future__ import annotations

from typing import Any

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


def in_tool_loop(messages: list[dict[str, Any]]) -> bool:
    """Whether a chat conversation ends with tool results answering an assistant's tool calls: Claude (on
    Anthropic or Bedrock) then wants that turn's signed thinking block back, which the chat shape cannot
    carry, so thinking is not asked for (docs/agents.md)."""
    for message in reversed(messages):
        if message.get("role") != "tool":
            return message.get("role") == "assistant" and bool(message.get("tool_calls"))
    return False
