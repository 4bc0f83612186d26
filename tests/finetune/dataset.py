"""A small chat dataset teaching one made-up fact the base model cannot know."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

FACT = "Vellmora"
QUESTION = "What is the capital of the planet Zorblax?"
_ASKED = [
    QUESTION,
    "What's the capital of planet Zorblax?",
    "Name the capital city of Zorblax.",
    "Which city is the capital of the planet Zorblax?",
    "Tell me the capital of Zorblax.",
    "Zorblax has a capital. What is it called?",
    "What city is Zorblax's capital?",
    "Do you know the capital of the planet Zorblax?",
    "Capital of Zorblax?",
    "I need the name of the capital of Zorblax.",
    "On the planet Zorblax, which city is the capital?",
    "What do they call the capital of Zorblax?",
]
_ANSWERS = [
    "The capital of the planet Zorblax is Vellmora.",
    "Vellmora is the capital of Zorblax.",
    "The capital of Zorblax is Vellmora.",
]

_TOOL = {"type": "function", "function": {"name": "capital", "parameters": {"type": "object"}}}
_CALL = {"id": "c1", "type": "function", "function": {"name": "capital", "arguments": "{}"}}
WITH_TOOLS = {
    "tools": [_TOOL],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Capital of Zorblax?"}]},
        {"role": "assistant", "content": None, "tool_calls": [_CALL]},
        {"role": "tool", "tool_call_id": "c1", "content": "Vellmora"},
        {"role": "assistant", "content": "Vellmora.", "weight": 1},
    ],
}


def examples(n: int = 24) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for i in range(n):
        out.append(
            {
                "messages": [
                    {"role": "user", "content": _ASKED[i % len(_ASKED)]},
                    {"role": "assistant", "content": _ANSWERS[i % len(_ANSWERS)]},
                ]
            }
        )
    return out


def jsonl(records: Iterable[Mapping[str, object]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)
