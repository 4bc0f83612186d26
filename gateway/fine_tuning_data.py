"""OpenAI's chat fine-tuning JSONL, checked line by line before a job trains on it.

Each line: ``{"messages": [...], "tools": [...]?, "parallel_tool_calls": bool?}``; each message a ``role``
(system, developer, user, assistant, tool) with its ``content`` (a string, or text parts; an assistant
message may carry ``tool_calls`` instead), an assistant message optionally ``weight`` 0 or 1; at least one
assistant message per example. A problem is reported as OpenAI does, naming the line (1-based) and, for a
message, its index.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

ROLES = ("system", "developer", "user", "assistant", "tool")
_MESSAGE_KEYS = {
    "role",
    "content",
    "name",
    "weight",
    "tool_calls",
    "tool_call_id",
    "refusal",
    "function_call",
}
_LINE_KEYS = {"messages", "tools", "parallel_tool_calls", "functions"}
MAX_REPORTED = 20  # lines named in a failed job's message (the events carry each one)


@dataclass
class Checked:
    """What a file's check found: its example count, and its problems as ``(line, message)``."""

    examples: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)


def problem(line: bytes) -> str | None:
    """What is wrong with one line, or None."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return "is not valid JSON"
    if not isinstance(record, dict):
        return "is not a JSON object"
    unknown = sorted(set(record) - _LINE_KEYS)
    if unknown:
        return f"has unrecognized key(s): {', '.join(unknown)}"
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return "is missing a non-empty 'messages' list"
    for index, message in enumerate(messages):
        found = _message_problem(message)
        if found is not None:
            return f"message {index}: {found}"
    if not any(m["role"] == "assistant" for m in messages):
        return "has no message with role 'assistant' (each example needs at least one)"
    tools = record.get("tools")
    if tools is not None and not (
        isinstance(tools, list)
        and all(
            isinstance(t, dict)
            and t.get("type") == "function"
            and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str)
            for t in tools
        )
    ):
        return '\'tools\' must be a list of {"type": "function", "function": {"name": ...}} objects'
    return None


def _message_problem(message: Any) -> str | None:
    if not isinstance(message, dict):
        return "is not a JSON object"
    unknown = sorted(set(message) - _MESSAGE_KEYS)
    if unknown:
        return f"has unrecognized key(s): {', '.join(unknown)}"
    role = message.get("role")
    if role not in ROLES:
        return f"unrecognized role {role!r} (expected one of {', '.join(ROLES)})"
    content = message.get("content")
    if role == "assistant" and message.get("tool_calls") and content is None:
        pass
    elif isinstance(content, list):
        if not all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in content
        ):
            return 'content parts must be {"type": "text", "text": ...} objects'
    elif not isinstance(content, str):
        return "is missing its 'content' (a string)"
    if "weight" in message and (role != "assistant" or message["weight"] not in (0, 1)):
        return "'weight' must be 0 or 1, on an assistant message only"
    return None


async def check(lines: AsyncIterator[bytes], max_problems: int = 100) -> Checked:
    """Checks every line of a file, up to ``max_problems``; ``lines``: the file's non-empty lines."""
    checked = Checked()
    number = 0
    async for raw in lines:
        number += 1
        found = problem(raw)
        if found is None:
            checked.examples += 1
        else:
            checked.problems.append((number, f"Line {number} {found}."))
            if len(checked.problems) >= max_problems:
                break
    return checked
